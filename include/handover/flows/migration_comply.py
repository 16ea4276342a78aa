"""The migration's compliance stage: the policy facts (objections, consents) from this run's
raw extract, subjects withdrawn elsewhere, and the decision per row (keep, exclude, hold)."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import pyarrow as pa

from handover.config.model import SourceConfig
from handover.core.contracts import Partition, RunContext
from handover.db import ledger
from handover.flows import partitioner
from handover.flows.common import _config, _lake, _part
from handover.storage.lake import Lake, part_key, safe_run_id

log = logging.getLogger("handover")


def _date_format(cfg: SourceConfig, table: str, column: str | None) -> str | None:
    if column is None:
        return None
    return cfg.rules(table).get("dates", {}).get(column)


# ---------------------------------------------------------------- comply
_facts_cache: dict[tuple, Any] = {}


def _policy_facts(run_id: str, system: str, exported_at: str):
    """Objections and consents, read from this run's raw extract.

    Every comply partition needs them, and reading them is most of a partition's cost (0.9
    of 2 s at 400,000 subscribers), so a process keeps the last facts it built: keyed by
    the extract ledger rows of the fact tables (partition, checksum, recorded_at), which a
    cleared and rerun extract rewrites, so rewritten raw data is never served stale.
    """
    from handover.stages.comply import facts_from_tables

    cfg = _config(system)
    tables = sorted({cfg.policy[w]["table"] for w in ("objection", "consent") if cfg.policy.get(w)})
    with ledger.connect() as conn:
        stamp = tuple(
            conn.execute(
                "SELECT table_name, partition, checksum, recorded_at FROM handover_meta.ledger "
                "WHERE run_id=%s AND stage='extract' AND table_name = ANY(%s) ORDER BY 1, 2",
                (run_id, tables),
            ).fetchall()
        )
    cache_key = (run_id, system, exported_at, stamp)
    if cache_key in _facts_cache:
        return _facts_cache[cache_key]
    lake = _lake()
    obj = cfg.policy.get("objection")
    cust_col = cfg.table(obj["table"]).get("customer_column", "cust_id") if obj else "cust_id"

    def slices(what: str):  # a fact table's raw rows, only the columns the rule reads
        spec = cfg.policy.get(what)
        if not spec:
            return
        t = spec["table"]
        cols = (
            [cust_col, spec["column"]]
            if what == "objection"
            else [spec["customer_column"], spec["purpose_column"], spec["granted_column"]]
        )
        for k in lake.list(f"runs/{safe_run_id(run_id)}/raw/{t}/"):
            yield from lake.iter_batches(k, cols)

    facts = facts_from_tables(
        slices("objection"),
        slices("consent"),
        cfg.policy,
        pd.Timestamp(exported_at),
        customer_column=cust_col,
    )
    facts = _withdrawn_elsewhere(cfg, lake, run_id, facts)
    _facts_cache.clear()  # one run's facts at a time: memory stays bounded
    _facts_cache[cache_key] = facts
    return facts


def _withdrawn_elsewhere(cfg: SourceConfig, lake: Lake, run_id: str, facts):
    """A consent this export grants but another system's record of the same person (a
    target customer, matched by blind index) withdrew is not given (handover.stages.identity)."""
    import pyarrow.compute as pc

    from handover.protection.fields import load_keyring
    from handover.stages import identity
    from handover.stages.comply import Members

    s = identity.settings(cfg)
    purposes = sorted(
        {
            c["consent_purpose"]
            for c in cfg.policy["categories"].values()
            if c.get("consent_purpose")
        }
    )
    if s is None or not purposes or not facts.consented:
        return facts
    with ledger.connect() as conn:
        if not identity.others_held(conn, cfg.system):
            return facts
    key = cfg.table(s["table"])["key"]
    keys: list[str] = []
    ids: list[pa.Array] = []
    for k in lake.list(f"runs/{safe_run_id(run_id)}/raw/{s['table']}/"):
        for batch in lake.iter_batches(k, [key, s["id_column"]]):
            keys += pc.utf8_trim_whitespace(batch.column(0).cast(pa.string())).to_pylist()
            ids.append(identity.normalised_ids(batch.column(1)))
    if not keys:
        return facts
    ring = load_keyring()
    bidx = identity.blind_indexes(cfg, ring, pa.concat_arrays(ids).to_pylist())
    with ledger.connect() as conn:
        gone = identity.withdrawn_elsewhere(conn, cfg, ring, keys, bidx, purposes)
    if not gone:
        return facts
    consented = dict(facts.consented)
    for purpose, members in gone.items():
        held = consented.get(purpose)
        if isinstance(held, Members):
            consented[purpose] = Members(
                pc.filter(
                    held.values,
                    pc.invert(
                        pc.is_in(held.values, value_set=pa.array(sorted(members), pa.string()))
                    ),
                )
            )
        elif held is not None:
            consented[purpose] = frozenset(held) - members
    log.info(
        "comply: %s consent(s) this export grants were withdrawn in another system's "
        "record of the same person (a target customer): not given",
        {p: len(m) for p, m in gone.items()},
    )
    return type(facts)(facts.exported_at, facts.objected, consented)


def comply_partition(ctx: RunContext, part: Partition) -> Partition:
    import pyarrow.compute as pc

    from handover.stages.cleanse import record_key_array
    from handover.stages.comply import decide

    cfg = _config(ctx["system"])
    table, partition, run_id = part["table"], part["partition"], ctx["run_id"]
    lake = _lake()
    raw_key = part_key(run_id, "raw", table, partition)
    schema = lake.schema(raw_key)
    spec = cfg.table(table)
    # The rules read the customer and the event time; the key and the row number name
    # what they exclude. Only those columns become pandas, and only a slice at a time: the
    # rest of the row stays in Arrow and is written from there, slice by slice, so the
    # task holds a slice, not the partition (the whole partition in Arrow, kept and
    # excluded copies beside it, was this task's peak: ~860 MB at 1.1 M call records).
    reads = [
        c
        for c in dict.fromkeys(
            [spec["key"], "_source_row", spec.get("customer_column"), spec.get("event_time")]
        )
        if c and c in schema.names
    ]
    facts = _policy_facts(run_id, ctx["system"], ctx["exported_at"])
    date_format = _date_format(cfg, table, spec.get("event_time"))
    cust_col = spec.get("customer_column")
    if cust_col and cust_col in schema.names:  # an erased person stays erased
        from handover.lifecycle.subject.lookup import erased_among

        erased = erased_among(lake.read_table(raw_key, columns=[cust_col]).column(0))
    else:
        erased = frozenset()
    moved_keys, ex_keys, ex_rules, ex_destroy = [], [], [], []
    counts: dict[str, int] = {}
    rows_in = 0
    with (
        lake.table_writer(
            part_key(run_id, "comply", table, partition),
            schema.append(pa.field("_basis", pa.string())),
        ) as moved_out,
        lake.table_writer(
            part_key(run_id, "comply/_excluded", table, partition),
            schema.append(pa.field("_rule", pa.large_string())).append(
                pa.field("_destroy_by", pa.date32())
            ),
        ) as excluded_out,
    ):
        for batch in lake.iter_batches(raw_key, None, batch_rows=partitioner.SLICE_ROWS):
            chunk = pa.Table.from_batches([batch])
            res = decide(
                chunk.select(reads).to_pandas(),
                table_spec=spec,
                category_policy=cfg.category_policy(table),
                policy=cfg.policy,
                facts=facts,
                event_time_format=date_format,
                erased=erased,
            )
            keep = pa.array(res.keep)
            moved, excluded = chunk.filter(keep), chunk.filter(pc.invert(keep))
            if moved.num_rows != len(res.moved) or excluded.num_rows != len(res.excluded):
                # the files and the ledger count the same rows
                raise AssertionError(
                    f"comply {table} {partition}: {moved.num_rows} rows kept and "
                    f"{excluded.num_rows} excluded in Arrow but {len(res.moved)} and "
                    f"{len(res.excluded)} decided; nothing was written"
                )
            moved_out.write_table(
                moved.append_column(
                    "_basis", pa.repeat(pa.scalar(res.basis, pa.string()), moved.num_rows)
                )
            )
            rule = pa.array(res.excluded["_rule"].to_numpy(dtype=object), pa.large_string())
            destroy = pa.array(res.excluded["_destroy_by"].to_numpy(dtype=object), pa.date32())
            excluded_out.write_table(
                excluded.append_column("_rule", rule).append_column("_destroy_by", destroy)
            )
            moved_keys.append(moved.column(spec["key"]))
            ex_keys.append(
                record_key_array(res.excluded[spec["key"]], res.excluded.get("_source_row"))
            )
            ex_rules.append(rule)
            ex_destroy.append(destroy)
            for r, n in res.counts.items():
                counts[r] = counts.get(r, 0) + n
            rows_in += chunk.num_rows
            del chunk, res, moved, excluded
        kept = pa.chunked_array(
            [c for k in moved_keys for c in k.chunks], schema.field(spec["key"]).type
        )
        excluded_keys = pa.chunked_array(ex_keys, pa.string())
        if rows_in != len(kept) + len(excluded_keys):  # every row leaves one way
            raise AssertionError(
                f"comply {table} {partition}: {rows_in} rows in but "
                f"{len(kept)} kept and {len(excluded_keys)} excluded; "
                "nothing was written"
            )
    # Rows this run already destroyed at its end (objection, no consent): no longer in raw,
    # still excluded, and still counted, so the ledger balances against extract's.
    from handover.lifecycle.retention.run_end import count_purged

    n_purged = count_purged(lake, run_id, table, partition, counts)
    rows_in += n_purged
    order = [r["id"] for r in cfg.policy["rules"]]  # as decide orders them: most rows first
    counts = dict(
        sorted(
            counts.items(),
            key=lambda kv: (-kv[1], order.index(kv[0]) if kv[0] in order else len(order)),
        )
    )
    with ledger.connect() as conn, conn.transaction():
        ledger.replace_exclusions(
            conn,
            run_id,
            table,
            partition,
            excluded_keys.combine_chunks(),
            pa.chunked_array(ex_rules, pa.large_string()).combine_chunks(),
            pa.chunked_array(ex_destroy, pa.date32()).combine_chunks(),
        )
        ledger.record(
            conn,
            run_id=run_id,
            table=table,
            partition=partition,
            stage="comply",
            rows_in=rows_in,
            rows_out=len(kept),
            excluded=len(excluded_keys) + n_purged,
            checksum=ledger.key_checksum(kept),
            detail={"excluded_by_rule": counts, "destroyed_at_run_end": n_purged},
        )
    log.info(
        "comply %s %s: %d in, %d moved, %d excluded %s",
        table,
        partition,
        rows_in,
        len(kept),
        len(excluded_keys) + n_purged,
        counts,
    )
    return _part(part, rows=len(kept), excluded=len(excluded_keys) + n_purged)
