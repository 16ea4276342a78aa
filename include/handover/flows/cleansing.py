"""Cleanse and map + protect one partition, for the migration and the nightly sync alike:
type and quarantine rows against the rules and the parent registry, then map to the target's
shape and protect its personal fields."""

from __future__ import annotations

import logging
from collections.abc import Collection

import pandas as pd
import pyarrow as pa

from handover.core.contracts import Partition, RunContext
from handover.db import ledger
from handover.flows.common import ADOPT, _config, _lake, _part, _read, parent_tables
from handover.flows.partitioner import _arrow_frame, _concat, _slices
from handover.storage.lake import part_key, safe_run_id

log = logging.getLogger("handover")


def _adopt_map(run_id: str, table: str) -> dict[str, tuple[str, str]] | None:
    """{merged export key: (target customer, fields it wins)}, None where resolve wrote no
    survivorship file for the table (no identity match runs on it)."""
    name = f"runs/{safe_run_id(run_id)}/resolve/{table}.adopt.parquet"
    lake = _lake()
    if not lake.exists(name):
        return None
    t = lake.read_table(name)
    return {
        k: (i, f)
        for k, i, f in zip(
            t.column("key").to_pylist(),
            t.column("into").to_pylist(),
            t.column("fields").to_pylist(),
            strict=True,
        )
    }


def _registry(run_id: str, table: str):
    import pyarrow.compute as pc

    from handover.stages.cleanse import ParentRegistry

    lake = _lake()
    reg = lake.read_table(f"runs/{safe_run_id(run_id)}/resolve/{table}.parquet")
    keys = reg.column("key")

    def where(mask) -> pa.Array:
        return keys.filter(pc.fill_null(mask, False)).combine_chunks()

    fate = reg.column("fate")
    # Arrow arrays, not Python sets: a set of 400,000 parent keys cost ~1 s and ~60 MB to
    # build for every child partition; the losers (duplicates only) stay a small set.
    loser_mask = reg.column("duplicate_loser")
    losers: Collection[str] = set(where(loser_mask).to_pylist())
    merged: dict[str, str] = {}
    if "merged_into" in reg.column_names:
        is_merged = pc.equal(fate, "merged")
        merged = dict(
            zip(
                where(is_merged).to_pylist(),
                reg.column("merged_into").filter(pc.fill_null(is_merged, False)).to_pylist(),
                strict=True,
            )
        )
    rules_of: dict[str, str] = {}
    if merged and "merge_rule" in reg.column_names:
        is_merged = pc.fill_null(pc.equal(fate, "merged"), False)
        rules_of = {
            k: r
            for k, r in zip(
                where(is_merged).to_pylist(),
                reg.column("merge_rule").filter(is_merged).to_pylist(),
                strict=True,
            )
            if r
        }
    if merged:
        losers = merged  # merged into their survivor, not quarantined
    same_key_file = f"runs/{safe_run_id(run_id)}/resolve/{table}.same_key.parquet"
    same_key = (
        set(lake.read_table(same_key_file).column("_source_row").to_pylist())
        if lake.exists(same_key_file)
        else set()
    )
    valid = where(pc.or_(pc.equal(fate, "valid"), pc.equal(fate, "merged")))
    return (
        ParentRegistry(
            valid, where(pc.equal(fate, "quarantined")), where(pc.equal(fate, "excluded")), merged
        ),
        losers,
        same_key,
        rules_of,
    )


def cleanse_partition(ctx: RunContext, part: Partition) -> Partition:
    from handover.stages.cleanse import cleanse, parent_fates, record_key_array

    cfg = _config(ctx["system"])
    table, partition, run_id = part["table"], part["partition"], ctx["run_id"]
    lake = _lake()
    spec, rules = cfg.table(table), cfg.rules(table)
    parent = losers = same_key = merge_rules = None
    if rules.get("parent"):
        parent, _, _, _ = _registry(run_id, rules["parent"]["table"])
    adopt = no_id_rows = None
    if table in parent_tables(cfg):
        _, losers, same_key, merge_rules = _registry(run_id, table)
        adopt = _adopt_map(run_id, table)
        nb_file = f"runs/{safe_run_id(run_id)}/resolve/{table}.name_birth.parquet"
        if lake.exists(nb_file):
            no_id_rows = set(lake.read_table(nb_file).column("_source_row").to_pylist())
    exported_at = pd.Timestamp(ctx["exported_at"])
    # The one rule that reads more than its row (an earlier row with the same key) over
    # the whole partition's keys; every other rule slice by slice.
    parent_col = rules["parent"]["column"] if parent is not None else None
    whole, dup, frames = _slices(
        lake,
        part_key(run_id, "comply", table, partition),
        spec["key"],
        drop=("_basis",),
        whole=(parent_col,) if parent_col else (),
    )
    # So are the parent rules: the registry is looked up once, not once a slice.
    fates = (
        parent_fates(parent, rules, whole.column(parent_col))
        if parent_col in whole.column_names
        else None
    )
    del whole
    clean_parts, quarantine_parts, keys, merged_parts, adopted_parts = [], [], [], [], []
    counts: dict[str, int] = {}
    normalised: dict[str, int] = {}
    rows_in = 0
    for start, raw in frames:
        rows_in += len(raw)
        res = cleanse(
            raw,
            rules,
            key=spec["key"],
            exported_at=exported_at,
            parent=parent,
            duplicate_losers=losers,
            duplicate_key=None if dup is None else dup[start : start + len(raw)],
            parent_fate=None if fates is None else fates[start : start + len(raw)],
            same_key_rows=same_key,
            merge_rules=merge_rules,
            no_id_rows=no_id_rows,
            adopt=None if adopt is None else set(adopt),
        )
        clean_parts.append(_arrow_frame(res.clean))
        if res.adopted is not None:
            adopted_parts.append(res.adopted)
        if len(res.merged):
            merged_parts.append(res.merged)
        q = res.quarantine
        keys.append(record_key_array(q["_key"], q.get("_source_row")))
        quarantine_parts.append(_arrow_frame(q))
        for reason, n in res.counts.items():
            counts[reason] = counts.get(reason, 0) + n
        for kind, n in res.normalised.items():
            normalised[kind] = normalised.get(kind, 0) + n
        del raw, res, q
    clean, quarantine = _concat(clean_parts), _concat(quarantine_parts)
    merged = (
        pd.concat(merged_parts, ignore_index=True)
        if merged_parts
        else pd.DataFrame({"_key": [], "_survivor": [], "_rule": []}, dtype=object)
    )
    del clean_parts, quarantine_parts, merged_parts
    if clean.num_rows + quarantine.num_rows + len(merged) != rows_in:  # one way out each
        raise AssertionError(
            f"cleanse {table} {partition}: {rows_in} rows in but "
            f"{clean.num_rows} clean, {quarantine.num_rows} quarantined and "
            f"{len(merged)} merged; nothing was written"
        )
    lake.write_table(part_key(run_id, "cleanse", table, partition), clean)
    lake.write_table(part_key(run_id, "cleanse/_quarantine", table, partition), quarantine)
    adopted = pd.concat(adopted_parts, ignore_index=True) if adopted_parts else None
    adopt_key = part_key(run_id, ADOPT["cleanse"], table, partition)
    if adopted is not None and len(adopted):
        assert adopt is not None  # rows are adopted only by the adopt map's keys
        key_values = adopted[spec["key"]].astype(object)
        adopted["_into"] = key_values.map(lambda k: adopt[k][0])
        adopted["_fields"] = key_values.map(lambda k: adopt[k][1])
        lake.write_table(adopt_key, _arrow_frame(adopted))
    else:  # a rerun that adopts nothing leaves no earlier attempt's file behind
        lake.delete_prefix(adopt_key)
    with ledger.connect() as conn, conn.transaction():
        ledger.replace_quarantine(
            conn,
            run_id,
            table,
            partition,
            pa.concat_arrays(keys) if keys else pa.array([], pa.string()),
            quarantine.column("_reason"),
            quarantine.column("_field"),
        )
        ledger.replace_merges(
            conn, run_id, table, partition, merged["_key"], merged["_survivor"], merged["_rule"]
        )
        merged_by_rule = {str(k): int(v) for k, v in merged["_rule"].value_counts().items()}
        ledger.record(
            conn,
            run_id=run_id,
            table=table,
            partition=partition,
            stage="cleanse",
            rows_in=rows_in,
            rows_out=clean.num_rows,
            quarantined=quarantine.num_rows,
            merged=len(merged),
            checksum=ledger.key_checksum(clean.column(spec["key"])),
            detail={
                "quarantined_by_reason": counts,
                "normalised": normalised,
                "merged_by_rule": merged_by_rule,
            },
        )
    log.info(
        "cleanse %s %s: %d in, %d clean, %d quarantined %s, %d merged %s%s",
        table,
        partition,
        rows_in,
        clean.num_rows,
        quarantine.num_rows,
        counts,
        len(merged),
        merged_by_rule,
        f", normalised {normalised}" if normalised else "",
    )
    return _part(part, rows=clean.num_rows, quarantined=quarantine.num_rows)


# ---------------------------------------------------------------- map + protect
def map_protect_partition(ctx: RunContext, part: Partition) -> Partition:
    from handover.protection.fields import load_keyring
    from handover.stages.mapping import map_partition

    cfg = _config(ctx["system"])
    table, partition, run_id = part["table"], part["partition"], ctx["run_id"]
    lake = _lake()
    clean = _read(lake, run_id, "cleanse", table, partition)
    tmap = cfg.table_mapping(table)
    needs_keys = any(
        set(f.get("protect", [])) & {"encrypt", "blind_index"} for f in tmap["fields"].values()
    )
    ring = load_keyring() if needs_keys else None
    mapped = map_partition(
        clean, table, tmap, cfg.table(table)["columns"], ring, partition=partition
    )
    lake.write_table(part_key(run_id, "mapped", table, partition), mapped)
    adopt_key = part_key(run_id, ADOPT["cleanse"], table, partition)
    lake.delete_prefix(part_key(run_id, ADOPT["mapped"], table, partition))
    if lake.exists(adopt_key):  # merged records' winning fields: mapped and protected alike
        side = lake.read_table(adopt_key)
        body = map_partition(
            side.drop_columns(["_into", "_fields"]).to_pandas(),
            table,
            tmap,
            cfg.table(table)["columns"],
            ring,
            partition=partition,
        )
        lake.write_table(
            part_key(run_id, ADOPT["mapped"], table, partition),
            body.append_column("_into", side.column("_into")).append_column(
                "_fields", side.column("_fields")
            ),
        )
    with ledger.connect() as conn, conn.transaction():
        ledger.record(
            conn,
            run_id=run_id,
            table=table,
            partition=partition,
            stage="map",
            rows_in=len(clean),
            rows_out=mapped.num_rows,
            checksum=ledger.key_checksum(mapped[tmap["key"]]),
            detail={
                "target": f"{cfg.mapping['schema']}.{tmap['target']}",
                "key_id": ring.active_key_id if ring else None,
            },
        )
    return _part(part, rows=mapped.num_rows)
