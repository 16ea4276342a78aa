"""The night's comply and resolve: the migration's policy decision with facts from the legacy
state as of the night, and the migration's parent registry completed with what the target
already knows."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from handover.config.model import SourceConfig
from handover.core.contracts import Partition, RunContext
from handover.db import ledger
from handover.flows.common import _config, _lake, parent_tables
from handover.flows.migration_resolve import resolve_customers as migration_resolve_customers
from handover.flows.nightly_legacy import book_names
from handover.flows.nightly_plan import state_file
from handover.stages import identity
from handover.storage.lake import part_key, safe_run_id

log = logging.getLogger("handover")


# ---------------------------------------------------------------- comply
@lru_cache(maxsize=4)
def _facts(state_dir: str, system: str, exported_at: str, stamp: float):
    """Objections and consents as of the night's end, from the legacy state."""
    from handover.stages.comply import policy_facts

    cfg = _config(system)
    frames: dict[str, pd.DataFrame | None] = {"objection": None, "consent": None}
    for what in frames:
        spec = cfg.policy.get(what)
        if not spec:
            continue
        t = spec["table"]
        cols = (
            [cfg.table(t)["customer_column"], spec["column"]]
            if what == "objection"
            else [spec["customer_column"], spec["purpose_column"], spec["granted_column"]]
        )
        frames[what] = pd.read_csv(
            state_file(state_dir, t), usecols=cols, dtype=str, keep_default_na=False
        )
    obj = cfg.policy.get("objection")
    cust = cfg.table(obj["table"]).get("customer_column", "cust_id") if obj else "cust_id"
    return policy_facts(
        frames["objection"],
        frames["consent"],
        cfg.policy,
        pd.Timestamp(exported_at),
        customer_column=cust,
    )


def comply_partition(ctx: RunContext, part: Partition) -> Partition:
    """The migration's policy decision, with facts from the legacy state as of the night."""
    from handover.stages.comply import decide

    cfg = _config(ctx["system"])
    table, partition, run_id = part["table"], part["partition"], ctx["run_id"]
    lake = _lake()
    raw = lake.read_table(part_key(run_id, "raw", table, partition)).to_pandas()
    spec = cfg.table(table)
    state = Path(ctx["state_dir"]) / "export_manifest.json"
    facts = _facts(ctx["state_dir"], ctx["system"], ctx["exported_at"], state.stat().st_mtime)
    event_time = spec.get("event_time")
    cust_col = spec.get("customer_column")
    from handover.lifecycle.subject.lookup import erased_among

    erased = erased_among(raw[cust_col].tolist()) if cust_col in raw.columns else frozenset()
    res = decide(
        raw,
        table_spec=spec,
        category_policy=cfg.category_policy(table),
        policy=cfg.policy,
        facts=facts,
        erased=erased,
        event_time_format=cfg.rules(table).get("dates", {}).get(event_time) if event_time else None,
    )
    lake.write_table(
        part_key(run_id, "comply", table, partition),
        pa.Table.from_pandas(res.moved, preserve_index=False),
    )
    lake.write_table(
        part_key(run_id, "comply/_excluded", table, partition),
        pa.Table.from_pandas(res.excluded, preserve_index=False),
    )
    key = spec["key"]
    from handover.lifecycle.retention.run_end import count_purged

    counts = dict(res.counts)
    n_purged = count_purged(lake, run_id, table, partition, counts)  # destroyed at run end
    with ledger.connect() as conn, conn.transaction():
        keys = [
            str(k).strip() if isinstance(k, str) and k.strip() else f"row:{r}"
            for k, r in zip(res.excluded[key], res.excluded["_source_row"], strict=True)
        ]
        ledger.replace_exclusions(
            conn, run_id, table, partition, keys, res.excluded["_rule"], res.excluded["_destroy_by"]
        )
        ledger.record(
            conn,
            run_id=run_id,
            table=table,
            partition=partition,
            stage="comply",
            rows_in=len(raw) + n_purged,
            rows_out=len(res.moved),
            excluded=len(res.excluded) + n_purged,
            checksum=ledger.key_checksum(res.moved[key].to_numpy(dtype=object)),
            detail={"excluded_by_rule": counts, "destroyed_at_run_end": n_purged},
        )
    log.info(
        "comply %s %s: %d in, %d moved, %d excluded %s",
        table,
        partition,
        len(raw) + n_purged,
        len(res.moved),
        len(res.excluded) + n_purged,
        counts,
    )
    return {
        "table": table,
        "partition": partition,
        "rows": len(res.moved),
        "excluded": len(res.excluded) + n_purged,
    }


# ---------------------------------------------------------------- resolve
def resolve_customers(ctx: RunContext) -> dict[str, dict[str, Any]]:
    """The migration's parent registry for the night, completed with what the target knows.

    The night's own parents are validated and de-duplicated as in the migration; then a
    newcomer whose person (blind index) already lives in the target under another key is a
    DUPLICATE_PERSON (the sync never demotes a migrated customer), and parents the night's
    children refer to are looked up: alive in the target (or deleted only by a later
    night) is valid, else the fate an earlier run gave them.
    """
    from psycopg import sql

    summary = migration_resolve_customers(ctx)
    cfg, lake, run_id = _config(ctx["system"]), _lake(), ctx["run_id"]
    start = pd.Timestamp(ctx["interval_start"]).to_pydatetime()
    for table in parent_tables(cfg):
        path = f"runs/{safe_run_id(run_id)}/resolve/{table}.parquet"
        reg = lake.read_table(path).to_pandas()
        tmap = cfg.table_mapping(table)
        tgt, key = sql.Identifier(cfg.mapping["schema"], tmap["target"]), tmap["key"]
        referenced: set[str] = set()
        for child, rules in cfg.cleansing["tables"].items():
            parent = rules.get("parent")
            if not parent or parent["table"] != table:
                continue
            for k in lake.list(f"runs/{safe_run_id(run_id)}/comply/{child}/"):
                col = lake.read_table(k, columns=[parent["column"]]).to_pandas()[parent["column"]]
                referenced |= {v.strip() for v in col.dropna() if v.strip()}
        wanted = sorted(referenced | set(reg["key"]))
        with ledger.connect() as conn:
            losers = _duplicates_in_target(conn, ctx, cfg, table, reg)
            alive = {
                r[0]
                for r in conn.execute(
                    sql.SQL("SELECT {k} FROM {t} WHERE {k} = ANY(%s)").format(
                        k=sql.Identifier(key), t=tgt
                    ),
                    (wanted,),
                )
            }
            alive |= {
                r[0]
                for r in conn.execute(
                    "SELECT record_key FROM handover_meta.tombstone WHERE table_name=%s AND "
                    "record_key = ANY(%s) AND deleted_at >= %s",
                    (table, wanted, start),
                )
            }
            # The fate an earlier finished run gave a parent; "quarantined" sorts before
            # "x_excluded", so a key with both is quarantined, as ParentRegistry ranks them.
            # Books name destroyed rows (excluded rows after their run's end, erased ones)
            # by keyed hash: look a parent up under both names.
            named = book_names(table, referenced)
            earlier: dict[str, str] = {}
            for k, fate in conn.execute(
                "SELECT e.record_key, min(e.fate) FROM (SELECT run_id, record_key, "
                "'quarantined' AS fate FROM handover_meta.quarantine WHERE table_name=%s "
                "UNION ALL SELECT run_id, record_key, 'x_excluded' FROM "
                "handover_meta.exclusion WHERE table_name=%s) e JOIN handover_meta.run r "
                "USING (run_id) WHERE r.status = 'succeeded' AND r.run_id <> %s AND "
                "e.record_key = ANY(%s) GROUP BY 1",
                (table, table, run_id, sorted(named)),
            ).fetchall():
                k = named[k]
                earlier[k] = min(fate, earlier.get(k, fate))
            # A parent merged into a customer of the target in an earlier run (the same
            # person under another id: the acquirer's, or a duplicate): its children follow
            # that customer, as they did in the migration (handover.stages.identity).
            merged_before: dict[str, str] = {}
            if conn.execute("SELECT to_regclass('handover_meta.person_map')").fetchone()[0]:  # type: ignore[index]  # a SELECT of a value: one row
                merged_before = dict(
                    conn.execute(
                        "SELECT source_key, target_customer_id FROM handover_meta.person_map "
                        "WHERE source_system = %s AND source_key = ANY(%s) AND decision LIKE "
                        "'merged%%'",
                        (cfg.system, sorted(referenced)),
                    ).fetchall()
                )
        # merged tonight (into a target customer): not a duplicate to quarantine
        merged_now = set(reg.loc[reg["fate"] == "merged", "key"]) if "fate" in reg else set()
        dup = reg["key"].isin(losers - merged_now)
        reg.loc[dup, "fate"] = "quarantined"
        reg.loc[dup, "duplicate_loser"] = True
        # A parent whose row was quarantined tonight still lives in the target: its
        # children are fine.
        revived = reg["key"].isin(alive) & (reg["fate"] == "quarantined") & ~reg["duplicate_loser"]
        reg.loc[revived, "fate"] = "valid"
        extra = sorted(referenced - set(reg["key"]))
        fates = [
            "valid"
            if k in alive
            else "merged"
            if k in merged_before
            else earlier.get(k, "").removeprefix("x_")
            for k in extra
        ]
        more = pd.DataFrame(
            {
                "key": extra,
                "fate": fates,
                "duplicate_loser": False,
                "merged_into": [
                    merged_before.get(k) if f == "merged" else None
                    for k, f in zip(extra, fates, strict=True)
                ],
                "merge_rule": [identity.EXISTING if f == "merged" else None for f in fates],
            }
        )
        reg = pd.concat([reg, more[more["fate"] != ""]], ignore_index=True)
        for col in ("merged_into", "merge_rule"):  # text or null, never NaN
            reg[col] = reg[col].astype(object).where(reg[col].notna(), None)
        lake.write_table(path, pa.Table.from_pandas(reg, preserve_index=False))
        summary[table] = {
            **summary.get(table, {}),
            "duplicates_of_target": len(losers),
            "parents_in_target": int(len(alive & referenced)),
            "parents_unknown": int(sum(1 for f in fates if not f)),
        }
    log.info("resolved parents for the night: %s", summary)
    return summary


def _duplicates_in_target(
    conn, ctx: RunContext, cfg: SourceConfig, table: str, reg: pd.DataFrame
) -> set[str]:
    """Night-valid parents whose dedupe key (by blind index) belongs to another target row."""
    from psycopg import sql

    from handover.protection.fields import blind_index, field_domain, load_keyring
    from handover.stages.cleanse import validate

    rules, tmap = cfg.rules(table), cfg.table_mapping(table)
    dedupe = rules.get("dedupe")
    if not dedupe:
        return set()
    field = next(
        (
            f
            for f, s in tmap["fields"].items()
            if s.get("from") == dedupe["key"] and "blind_index" in s.get("protect", [])
        ),
        None,
    )
    valid = set(reg.loc[reg["fate"] == "valid", "key"])
    if field is None or not valid:
        return set()
    key = cfg.table(table)["key"]
    lake = _lake()
    frames = [
        lake.read_table(k).to_pandas()
        for k in lake.list(f"runs/{safe_run_id(ctx['run_id'])}/comply/{table}/")
    ]
    raw = pd.concat(frames, ignore_index=True).drop(columns=["_basis"], errors="ignore")
    typed, _ = validate(raw, rules, key=key, exported_at=pd.Timestamp(ctx["exported_at"]))
    typed = typed[typed[key].isin(valid)]
    bidx = blind_index(
        typed[dedupe["key"]].to_numpy(dtype=object),
        load_keyring(),
        field_domain(tmap["target"], field),
    )
    bcol = sql.Identifier(f"{field}_bidx")
    holders = dict(
        conn.execute(
            sql.SQL("SELECT {b}, {k} FROM {t} WHERE {b} = ANY(%s)").format(
                b=bcol,
                k=sql.Identifier(tmap["key"]),
                t=sql.Identifier(cfg.mapping["schema"], tmap["target"]),
            ),
            ([b for b in bidx if b],),
        ).fetchall()
    )
    return {k for k, b in zip(typed[key], bidx, strict=True) if b in holders and holders[b] != k}
