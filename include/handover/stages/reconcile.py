"""Reconcile: prove, per table, that what left the source arrived, and nothing else.

Four independent checks, each able to fail on its own:
1. the ledger balances: source rows = loaded + merged + quarantined + excluded (merged: a
   person's second record, merged into its survivor) (and the source
   count equals the export manifest's);
2. key sets: every key the run mapped is in the target, and the target holds no row
   the run did not send (migration mode);
3. field level: what landed equals what left, column by column, compared in the
   database (ciphertext through its blind index);
4. money: sums in fen per month, lake versus target.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
from psycopg import sql

from handover.config.model import SourceConfig
from handover.db.bulk_copy import copy_arrow
from handover.db.load import comparable_columns
from handover.storage.layout import safe_run_id
from handover.storage.objects import Lake

MONEY_COLUMNS = ("charge_fen", "amount_fen")
TIME_COLUMNS = ("started_at", "paid_at", "created_at", "occurred_at", "granted_at")


def _first(cur: psycopg.Cursor[Any]) -> Any:
    """The first value of the one row a to_regclass, count or max query returns."""
    return cur.fetchone()[0]  # type: ignore[index]  # such a query always returns a row


def reconcile(
    conn: psycopg.Connection,
    lake: Lake,
    cfg: SourceConfig,
    run_id: str,
    table: str,
    manifest_rows: int | None = None,
    manifest_sha256: str | None = None,
    version: str | None = None,
) -> dict:
    """`version`: the table's version column; a target row newer than the run's (a later
    night or export wrote it; the load left it alone as stale) is not a field mismatch."""
    tmap = cfg.table_mapping(table)
    schema, target, key = cfg.mapping["schema"], tmap["target"], tmap["key"]
    totals = {
        stage: dict(zip(("in", "out", "q", "x", "m"), r, strict=True))
        for stage, *r in conn.execute(
            "SELECT stage, sum(rows_in), sum(rows_out), sum(rows_quarantined), "
            "sum(rows_excluded), sum(rows_merged) FROM handover_meta.ledger WHERE "
            "run_id=%s AND "
            "table_name=%s GROUP BY stage",
            (run_id, table),
        ).fetchall()
    }
    for stage in ("extract", "comply", "cleanse", "map", "load"):
        if stage not in totals:
            raise RuntimeError(
                f"reconcile {table}: no ledger rows for stage '{stage}' in run "
                f"{run_id}; that stage did not complete — rerun it first"
            )
    source_rows = int(totals["extract"]["out"])
    excluded = int(totals["comply"]["x"])
    quarantined = int(totals["cleanse"]["q"])
    merged = int(totals["cleanse"]["m"])
    loaded = int(totals["load"]["out"])

    # Stage the run's mapped rows once, for key, field and money comparisons. An UNLOGGED
    # table made and dropped inside this transaction, not a TEMP one: PostgreSQL never
    # scans a temporary table with parallel workers, and the full join below runs about
    # twice as fast on two. If anything fails, the rollback takes the table with it.
    stage_tbl = sql.Identifier("handover_work", f"rec_{target}_{uuid.uuid4().hex[:12]}")
    conn.execute(
        sql.SQL("CREATE UNLOGGED TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(
            stage_tbl, sql.Identifier(schema, target)
        )
    )
    columns: list[str] = []
    for k in lake.list(f"runs/{safe_run_id(run_id)}/mapped/{table}/"):
        # Read and sent a slice at a time: a partition of ciphertext never sits whole here.
        columns = copy_arrow(conn, stage_tbl, lake.iter_batches(k, None)) or columns
    tgt = sql.Identifier(schema, target)
    kid = sql.Identifier(key)
    # One full join answers the key, field and money questions together (one pass over
    # both sides instead of four): per period of the source row, the keys missing from the
    # target, the target rows the run did not send (target_only), the rows whose fields
    # differ, and the money on each side of the matched rows.
    compare = [c for c in comparable_columns(columns) if c != key] if columns else []
    differs = (
        sql.SQL("({}) IS DISTINCT FROM ({})").format(
            sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in compare),
            sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in compare),
        )
        if compare
        else sql.SQL("false")
    )
    if version and version in columns:
        differs = sql.SQL("({d} AND NOT coalesce(t.{v} > s.{v}, false))").format(
            d=differs, v=sql.Identifier(version)
        )
    money_col = next((c for c in MONEY_COLUMNS if c in columns), None)
    time_col = next((c for c in TIME_COLUMNS if c in columns), None)
    period = (
        sql.SQL("to_char(s.{}, 'YYYY-MM')").format(sql.Identifier(time_col))
        if money_col and time_col
        else sql.SQL("'all'")
    )
    money = (
        sql.SQL("sum(s.{m}), sum(t.{m}) FILTER (WHERE s.{k} IS NOT NULL)").format(
            m=sql.Identifier(money_col), k=kid
        )
        if money_col
        else sql.SQL("NULL, NULL")
    )
    # A handful of groups (two sides x months): hash them; a sort of every joined row is
    # what the planner picks otherwise, and it costs more than the join.
    conn.execute("SET LOCAL enable_sort = off")
    rows = conn.execute(
        sql.SQL(
            "SELECT s.{k} IS NULL AS target_only, {p} AS period, "
            "count(*) FILTER (WHERE t.{k} IS NULL), count(*) FILTER (WHERE s.{k} IS NULL), "
            "count(*) FILTER (WHERE s.{k} IS NOT NULL AND t.{k} IS NOT NULL AND {d}), {money}, "
            "count(t.{k}) "
            "FROM {s} s FULL JOIN {t} t USING ({k}) GROUP BY 1, 2 ORDER BY 1, 2"
        ).format(k=kid, p=period, d=differs, money=money, s=stage_tbl, t=tgt)
    ).fetchall()
    conn.execute("RESET enable_sort")
    # Rows the person map gives to another system (the acquirer's own customers, another
    # operator's): in the target, not sent by this run, and not this run's to account for.
    foreign = 0
    from handover.config.shapes import shapes

    owner = shapes(cfg)[table].target_customer  # the row's customer, or the key itself
    if owner and _first(conn.execute("SELECT to_regclass('handover_meta.person_map')")):
        foreign = _first(
            conn.execute(
                sql.SQL(
                    "SELECT count(*) FROM {t} t WHERE EXISTS (SELECT 1 FROM handover_meta.person_map p "
                    "WHERE p.source_key = t.{c} AND p.source_system <> %s) "
                    "AND NOT EXISTS (SELECT 1 FROM {s} s WHERE s.{k} = t.{k})"
                ).format(t=tgt, c=sql.Identifier(owner), k=kid, s=stage_tbl),
                (cfg.system,),
            )
        )
    conn.execute(sql.SQL("DROP TABLE {}").format(stage_tbl))
    # every target row is in the full join once: its count is the table's (no second scan)
    target_rows = sum(r[7] for r in rows) - foreign
    missing = sum(r[2] for r in rows)
    extra = sum(r[3] for r in rows) - foreign
    mismatches = sum(r[4] for r in rows)
    money_source = money_target = None
    by_month: list[dict] = []
    if money_col:
        by_month = [
            {"period": p, "source_fen": int(a or 0), "target_fen": int(b or 0)}
            for target_only, p, _, _, _, a, b, _ in rows
            if not target_only
        ]
        money_source = sum(r["source_fen"] for r in by_month)
        money_target = sum(r["target_fen"] for r in by_month)

    accounted = loaded + merged + quarantined + excluded
    # An older run rerun after a newer one loaded the table: the target is the newer run's
    # truth, so only this run's own books are checked (its load wrote nothing: stale).
    superseded = _first(
        conn.execute(
            "SELECT max(detail->>'superseded_by') FROM handover_meta.ledger WHERE run_id=%s AND "
            "table_name=%s AND stage='load'",
            (run_id, table),
        )
    )
    if superseded:
        missing = extra = mismatches = 0
        target_rows = loaded
        money_source = money_target = None
    # the digest extract read is the one the operator's manifest gives
    # (a table read from several files is fingerprinted over all of them: not comparable)
    digests = {
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT detail->>'source_sha256' FROM handover_meta.ledger WHERE run_id=%s "
            "AND table_name=%s AND stage='extract' AND NOT detail ? 'source_files'",
            (run_id, table),
        ).fetchall()
    }
    checks = {
        "ledger_balances": source_rows == accounted,
        "manifest_matches": manifest_rows is None or manifest_rows == source_rows,
        "digest_matches": manifest_sha256 is None
        or not digests
        or digests == {manifest_sha256.lower()},
        "no_missing_keys": missing == 0,
        "no_extra_rows": extra == 0 and target_rows == loaded,
        "fields_equal": mismatches == 0,
        "money_equal": money_source == money_target,
    }
    balanced = all(checks.values())
    conn.execute(
        "INSERT INTO handover_meta.reconciliation (run_id, table_name, source_rows, loaded, "
        "quarantined, excluded, target_rows, missing_keys, field_mismatches, money_source, "
        "money_target, balanced, merged) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
        "ON CONFLICT (run_id, table_name) DO UPDATE SET source_rows=excluded.source_rows, "
        "loaded=excluded.loaded, quarantined=excluded.quarantined, excluded=excluded.excluded, "
        "target_rows=excluded.target_rows, missing_keys=excluded.missing_keys, "
        "field_mismatches=excluded.field_mismatches, money_source=excluded.money_source, "
        "money_target=excluded.money_target, balanced=excluded.balanced, "
        "merged=excluded.merged, checked_at=now()",
        (
            run_id,
            table,
            source_rows,
            loaded,
            quarantined,
            excluded,
            target_rows,
            missing,
            mismatches,
            money_source,
            money_target,
            balanced,
            merged,
        ),
    )
    result = {
        "table": table,
        "source_rows": source_rows,
        "loaded": loaded,
        "merged": merged,
        "quarantined": quarantined,
        "other_systems_rows": foreign,
        "excluded": excluded,
        "target_rows": int(target_rows),
        "missing_keys": int(missing),
        "extra_rows": int(extra),
        "field_mismatches": int(mismatches),
        "money_source": money_source,
        "money_target": money_target,
        "money": by_month,
        "checks": checks,
        "balanced": balanced,
        "superseded_by": superseded,
    }
    lake.write_json(f"runs/{safe_run_id(run_id)}/reconcile/{table}.json", result)
    conn.execute(
        "INSERT INTO handover_meta.audit_log (run_id, actor, action, detail, prev_hash, hash) "
        "VALUES (%s, 'handover', 'table_reconciled', %s, '', '')",
        (run_id, json.dumps({k: v for k, v in result.items() if k != "money"})),
    )
    return result
