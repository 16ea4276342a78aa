"""The night's reconciliation: the target against the legacy state as of the night, key by
key and field by field, then the migration's reconciliation gate and publishing."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from handover.core.contracts import RunContext, TableResult
from handover.core.errors import GateFailed
from handover.db import ledger
from handover.flows.common import VERSION_COLUMNS, _config, _lake
from handover.flows.gating import reconciliation_gate as migration_reconciliation_gate
from handover.flows.nightly_legacy import (
    _accounted,
    _by_book_name,
    _corrected,
    _latest_applied,
    _survivors,
    compare_fields,
    legacy_projection,
)
from handover.flows.nightly_plan import DELETED
from handover.flows.publishing import publish as migration_publish
from handover.stages import identity
from handover.storage.lake import safe_run_id

log = logging.getLogger("handover")


def reconcile_table(ctx: RunContext, table: str) -> TableResult:
    """The night's ledger balance, then old versus new for the whole table."""
    from psycopg import sql

    from handover.stages.diff import FrameSide, PostgresSide, diff_sides, sql_row_hash
    from handover.stages.reconcile import MONEY_COLUMNS

    cfg = _config(ctx["system"])
    run_id = ctx["run_id"]
    tmap = cfg.table_mapping(table)
    schema, target, key = cfg.mapping["schema"], tmap["target"], tmap["key"]
    with ledger.connect() as conn, conn.transaction():
        totals = {
            (stage, is_deleted): r
            for stage, is_deleted, *r in conn.execute(
                "SELECT stage, partition = %s AS d, sum(rows_in), sum(rows_out), "
                "sum(rows_quarantined), sum(rows_excluded), sum(rows_merged) FROM "
                "handover_meta.ledger WHERE "
                "run_id=%s AND table_name=%s GROUP BY 1, 2",
                (DELETED, run_id, table),
            ).fetchall()
        }
        need = [
            ("extract", False),
            ("extract", True),
            ("comply", False),
            ("cleanse", False),
            ("map", False),
            ("load", False),
            ("delete", True),
        ]
        for stage in need:
            if stage not in totals:
                raise RuntimeError(
                    f"reconcile {table}: no ledger rows for stage '{stage[0]}' "
                    f"in run {run_id}; that stage did not complete, rerun it"
                )
        t = {
            s: dict(zip(("in", "out", "q", "x", "m"), map(int, totals[s]), strict=True))
            for s in need
        }
        changed, deleted = t[("extract", False)]["in"], t[("extract", True)]["in"]
        # orphans of earlier nights taken in again are extra rows, not in tonight's file
        released = int(
            conn.execute(
                "SELECT coalesce(sum((detail->>'released_orphans')::int), 0) FROM "
                "handover_meta.ledger WHERE run_id=%s AND table_name=%s AND stage='extract'",
                (run_id, table),
            ).fetchone()[0]  # type: ignore[index]  # an aggregate always returns one row
        )
        loaded, quarantined = t[("load", False)]["out"], t[("cleanse", False)]["q"]
        merged = t[("cleanse", False)]["m"]  # into a customer the target already holds
        excluded = t[("comply", False)]["x"]
        chain = (
            t[("extract", False)]["out"] == t[("comply", False)]["in"]
            and t[("comply", False)]["out"] == t[("cleanse", False)]["in"]
            and t[("cleanse", False)]["out"] == t[("map", False)]["in"]
            and t[("map", False)]["out"] == t[("load", False)]["in"]
            and t[("delete", True)]["in"] == deleted
        )

        as_of, state_dir = _latest_applied(conn, ctx)
        parent = (cfg.rules(table).get("parent") or {}).get("table")
        reparent = _survivors(conn, parent) if parent else None
        legacy = legacy_projection(cfg, table, state_dir, as_of, reparent)
        q_at, x_at = _accounted(conn, table, run_id)
        has_version = table in VERSION_COLUMNS

        def covered(marks: dict, keys: pd.Series, versions: pd.Series) -> np.ndarray:
            """A run no older than the legacy row quarantined / excluded the key."""
            at = pd.to_datetime(_by_book_name(marks, table, keys))
            ok = at.notna()
            if has_version:
                ok &= (at >= pd.to_datetime(versions)) | versions.isna()
            return ok.to_numpy()

        in_quarantine = covered(q_at, legacy["key"], legacy["version"])
        in_exclusion = covered(x_at, legacy["key"], legacy["version"]) & ~in_quarantine
        # An erased person's rows are still in the legacy system; the new one must not
        # hold them: expected absences, not missing rows.
        from handover.lifecycle.subject.lookup import erased_among

        erased = erased_among(legacy["customer"].tolist())
        in_erasure = (
            (
                legacy["customer"].isin(erased).to_numpy()
                if erased
                else np.zeros(len(legacy), dtype=bool)
            )
            & ~in_quarantine
            & ~in_exclusion
        )
        in_exclusion = in_exclusion | in_erasure
        # A value the customer corrected in the new system (a subject request) differs from
        # the legacy row until the legacy row changes after the correction.
        in_correction = _corrected(conn, table, legacy) & ~in_quarantine & ~in_exclusion
        set_aside = legacy.loc[in_quarantine | in_correction, "key"].tolist()
        kept = legacy[~in_quarantine & ~in_exclusion & ~in_correction]

        aside = sql.Identifier(f"aside_{target}")
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} (k text PRIMARY KEY) ON COMMIT DROP").format(aside)
        )
        with conn.cursor().copy(sql.SQL("COPY {} (k) FROM STDIN").format(aside)) as cp:
            for k in set_aside:
                cp.write_row((k,))
        column_types = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE "
            "table_schema=%s AND table_name=%s",
            (schema, target),
        ).fetchall()
        types: dict[str, str] = dict(column_types)
        fields = [(f, types[f]) for f, _, _ in compare_fields(cfg, table)]
        tgt, kid = sql.Identifier(schema, target), sql.Identifier(key)
        # Rows the person map gives to another system (the acquirer's own customers and
        # their rows, another operator's) that the legacy system does not hold: not this
        # system's to agree with. A row of this system's re-parented to such a customer
        # is compared (the legacy side holds its key).
        theirs: sql.Composable = sql.SQL("")
        from handover.config.shapes import shapes

        owner = shapes(cfg)[table].target_customer
        if owner and identity.others_held(conn, cfg.system):
            ours = sql.Identifier(f"ours_{target}")
            conn.execute(
                sql.SQL("CREATE TEMP TABLE {} (k text PRIMARY KEY) ON COMMIT DROP").format(ours)
            )
            with conn.cursor().copy(sql.SQL("COPY {} (k) FROM STDIN").format(ours)) as cp:
                for k in legacy["key"]:
                    cp.write_row((k,))
            theirs = sql.SQL(
                " AND NOT (EXISTS (SELECT 1 FROM handover_meta.person_map p WHERE "
                "p.source_key = t.{c} AND p.source_system <> {me}) AND NOT EXISTS (SELECT 1 "
                "FROM {o} o WHERE o.k = t.{k}::text))"
            ).format(
                c=sql.Identifier(owner), me=sql.Literal(cfg.system), o=ours, k=sql.Identifier(key)
            )
        right = PostgresSide(
            conn,
            "target",
            sql.SQL(
                "SELECT t.{k} AS k, {h} AS h FROM {t} t WHERE NOT EXISTS "
                "(SELECT 1 FROM {a} a WHERE a.k = t.{k}){theirs}"
            ).format(k=kid, h=sql_row_hash(fields), t=tgt, a=aside, theirs=theirs),
        )
        left = FrameSide("legacy", kept["key"].tolist(), kept["hash"].tolist())
        result = diff_sides(left, right)

        money_col = next((f for f, _ in fields if f in MONEY_COLUMNS), None)
        money_source = money_target = None
        if money_col:
            money_source = int(np.nansum(kept["money"].astype(float)))
            money_target = int(
                conn.execute(
                    sql.SQL(
                        "SELECT coalesce(sum(t.{m}), 0) FROM {t} t WHERE NOT EXISTS "
                        "(SELECT 1 FROM {a} a WHERE a.k = t.{k})"
                    ).format(m=sql.Identifier(money_col), t=tgt, a=aside, k=kid)
                ).fetchone()[0]  # type: ignore[index]  # an aggregate always returns one row
            )
        target_rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(tgt)).fetchone()[0]  # type: ignore[index]  # an aggregate always returns one row

        checks = {
            "ledger_balances": changed + deleted
            == (loaded + merged + quarantined + excluded + deleted),
            "stages_chain": chain,
            "manifest_matches": (
                changed - released == ctx["manifest_rows"][table]
                and deleted == ctx["deleted_rows"][table]
            ),
            "old_new_agree": result.differing == 0,
            "money_equal": money_source == money_target,
        }
        balanced = all(checks.values())
        conn.execute(
            "INSERT INTO handover_meta.reconciliation (run_id, table_name, source_rows, loaded, "
            "quarantined, excluded, target_rows, missing_keys, field_mismatches, money_source, "
            "money_target, balanced, merged) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
            "ON CONFLICT (run_id, table_name) DO UPDATE SET source_rows=excluded.source_rows, "
            "loaded=excluded.loaded, quarantined=excluded.quarantined, merged=excluded.merged, "
            "excluded=excluded.excluded, target_rows=excluded.target_rows, "
            "missing_keys=excluded.missing_keys, field_mismatches=excluded.field_mismatches, "
            "money_source=excluded.money_source, money_target=excluded.money_target, "
            "balanced=excluded.balanced, checked_at=now()",
            (
                run_id,
                table,
                changed + deleted,
                loaded,
                quarantined,
                excluded + deleted,
                target_rows,
                len(result.only_left) + len(result.only_right),
                len(result.changed),
                money_source,
                money_target,
                balanced,
                merged,
            ),
        )
        report = {
            "table": table,
            "run_id": run_id,
            "as_of": str(as_of),
            "balanced": balanced,
            "checks": checks,
            "changed_rows": changed,
            "deleted_rows": deleted,
            "loaded": loaded,
            "merged": merged,
            "quarantined": quarantined,
            "excluded": excluded,
            "target_rows": int(target_rows),
            "money_source": money_source,
            "money_target": money_target,
            "old_vs_new": {
                **result.counts(),
                "legacy_rows": len(legacy),
                "set_aside_quarantined": int(in_quarantine.sum()),
                "set_aside_excluded": int(in_exclusion.sum()),
                "set_aside_erased": int(in_erasure.sum()),
                "set_aside_corrected": int(in_correction.sum()),
            },
            # keys only (identifiers, as in handover_meta.quarantine), never values
            "differing_keys_sample": result.keys()[:20],
        }
        _lake().write_json(f"runs/{safe_run_id(run_id)}/reconcile/{table}.json", report)
        ledger.audit(
            conn,
            "table_reconciled",
            run_id=run_id,
            detail={k: v for k, v in report.items() if k != "differing_keys_sample"},
        )
    log.info(
        "reconcile %s as of %s: old %d vs new %d rows compared (%d quarantined and %d "
        "excluded set aside), %d keys differ (%d missing in new, %d only in new, "
        "%d changed); %d segments, %d rows fetched",
        table,
        as_of,
        result.left_rows,
        result.right_rows,
        in_quarantine.sum(),
        in_exclusion.sum(),
        result.differing,
        len(result.only_left),
        len(result.only_right),
        len(result.changed),
        result.segments_compared,
        result.rows_fetched,
    )
    return {"table": table, "partition": "all", "balanced": balanced, "differing": result.differing}


def reconciliation_gate(ctx: RunContext, table: str) -> TableResult:
    """The migration's reconciliation gate; on failure, say how old and new disagree."""
    try:
        return migration_reconciliation_gate(ctx, table)
    except GateFailed as exc:
        key = f"runs/{safe_run_id(ctx['run_id'])}/reconcile/{table}.json"
        lake = _lake()
        rep = lake.read_json(key)
        d = rep["old_vs_new"]
        raise GateFailed(
            f"{exc}; old vs new as of {rep['as_of']}: {d['differing']} keys differ "
            f"({d['only_left']} missing in the target, {d['only_right']} only in the target, "
            f"{d['changed']} changed); failed checks: "
            f"{', '.join(k for k, ok in rep['checks'].items() if not ok)}; keys in "
            f"{lake.uri(key)}"
        ) from exc


def publish(ctx: RunContext) -> dict[str, Any]:
    return migration_publish(ctx)
