"""The gates between stages (intake, compliance, quality, contract) and the reconciliation
gate: run a table's suite on a partition, record the result, then check the shares a suite
cannot see (rows excluded, rows quarantined) and fail once, clearly."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from handover.core.contracts import Partition, RunContext, TableResult
from handover.core.errors import GateFailed
from handover.db import ledger
from handover.flows.common import ADOPT, META, SUITES_DIR, _config, _lake, _part
from handover.flows.publishing import docs_dir_for, publish_docs, ui_url
from handover.storage.lake import part_key, safe_run_id

log = logging.getLogger("handover")


def suites_dir_for(system: str, gate: str, table: str) -> Path:
    """Where a gate's suite lives: expectations/<system>/<gate>/<table>.json, else the shared
    expectations/<gate>/<table>.json (the layout before per-system folders)."""
    per_system = SUITES_DIR / _config(system).system
    if (per_system / gate / f"{table}.json").is_file():
        return per_system
    return SUITES_DIR


# ---------------------------------------------------------------- gates
GATE_INPUT = {"intake": "raw", "compliance": "comply", "quality": "cleanse", "contract": "mapped"}


def _validate(frame: pd.DataFrame, ctx: RunContext, gate: str, table: str, partition: str):
    """Run one gate, publish its docs page, record its result (counts only); raise on breach."""
    from handover.gates.validate import run_gate

    run_id, lake = ctx["run_id"], _lake()
    docs_dir = docs_dir_for(lake, run_id)
    result = run_gate(
        frame,
        gate=gate,
        table=table,
        partition=partition,
        run_id=run_id,
        suites_dir=suites_dir_for(ctx["system"], gate, table),
        docs_dir=docs_dir,
    )
    publish_docs(lake, run_id, docs_dir)
    with ledger.connect() as conn, conn.transaction():
        conn.execute(
            "INSERT INTO handover_meta.gate_result (run_id, gate, table_name, partition, success, "
            "evaluated, rows, failed, docs_path) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) "
            "ON CONFLICT (run_id, gate, table_name, partition) DO UPDATE SET "
            "success=excluded.success, evaluated=excluded.evaluated, rows=excluded.rows, "
            "failed=excluded.failed, docs_path=excluded.docs_path, checked_at=now()",
            (
                run_id,
                gate,
                table,
                partition,
                result.success,
                result.evaluated,
                result.rows,
                json.dumps(result.to_manifest().get("failed", [])),
                result.docs_path,
            ),
        )
    summary = result.summary()
    if result.docs_path:
        page = f"runs/{safe_run_id(run_id)}/docs/{result.docs_path}"
        summary = summary.replace(
            f"see {result.docs_path}", f"see {lake.uri(page)} (UI: {ui_url('handover/' + page)})"
        )
    log.info(summary)
    if not result.success:
        raise GateFailed(summary)
    return result


def _gate_frame(ctx: RunContext, gate: str, table: str, partition: str) -> pd.DataFrame:
    """What the gate validates: the stage's output, with real values only in the columns
    some expectation of the suite reads. The others keep their name, type and row count
    (all the suite can see of them) as all-null Arrow columns, so they cost no decoding
    and no Python objects: most intake and contract suites read a column or two of ten."""
    from handover.gates.suites import load_suite, read_columns

    key = part_key(ctx["run_id"], GATE_INPUT[gate], table, partition)
    needed = read_columns(load_suite(suites_dir_for(ctx["system"], gate, table), gate, table))
    frame = _gate_part(key, needed)
    side = part_key(ctx["run_id"], ADOPT.get(GATE_INPUT[gate], "-"), table, partition)
    if GATE_INPUT[gate] in ADOPT and _lake().exists(side):
        # merged records whose fields the target's customer takes are gated like the rows
        frame = pd.concat([frame, _gate_part(side, needed)[frame.columns]], ignore_index=True)
    return frame


def _gate_part(key: str, needed: set[str] | None) -> pd.DataFrame:
    if needed is None:
        df = _lake().read_table(key).to_pandas()
        return df.drop(columns=[c for c in (*META, "_into", "_fields") if c in df.columns])
    data, schema = _lake().read_projected(key, sorted(needed))
    df = data.to_pandas()
    cols = {}
    for f in schema:
        if f.name in META or f.name in ("_into", "_fields"):
            continue
        cols[f.name] = (
            df[f.name]
            if f.name in df.columns
            else pd.Series(
                pd.arrays.ArrowExtensionArray(pa.nulls(data.num_rows, f.type)), index=df.index
            )
        )
    return pd.DataFrame(cols, index=df.index)


# A partition whose cleanse quarantined more than this share of its rows fails the quality
# gate (catalog.yaml tables.<t>.max_quarantine_share overrides): an export in a form no rule
# reads (every amount "¥17,504.10") must not end green with nothing loaded.
MAX_QUARANTINE_SHARE = 0.5
# ... and fails when less than this share of the rows cleanse took in came out clean,
# whatever the reasons (catalog min_loaded_share); comply's exclusions are bounded apart,
# at the compliance gate (catalog max_excluded_share): a policy that lets nothing move
# is as red as a format nobody reads.
MIN_LOADED_SHARE = 0.5
MAX_EXCLUDED_SHARE = 0.95
MIN_QUARANTINED_FOR_SHARE = 20
NOT_FORMAT_REASONS = (
    "ORPHAN_RECORD",
    "PARENT_QUARANTINED",
    "PARENT_EXCLUDED",
    "DUPLICATE_KEY",
    "DUPLICATE_PERSON",
)


def run_gate_task(ctx: RunContext, part: Partition, gate: str) -> Partition:
    """Validate what the previous stage wrote for this partition; fail loudly on a breach."""
    table, partition = part["table"], part["partition"]
    df = _gate_frame(ctx, gate, table, partition)
    result = _validate(df, ctx, gate, table, partition)
    if gate == "quality":
        _check_quarantine_share(ctx, table, partition)
    if gate == "compliance":
        _check_excluded_share(ctx, table, partition)
    return _part(part, rows=result.rows, gate=gate, docs_path=result.docs_path)


def _bound(ctx: RunContext, table: str, name: str, default: float) -> float:
    """A table's share bound from catalog.yaml (max_quarantine_share, ...), else the default."""
    return float(_config(ctx["system"]).table(table).get(name, default))


def _top(counts: dict[str, int]) -> str:
    """The three largest counts, as a gate's one line names them."""
    return ", ".join(f"{r} {n:,}" for r, n in sorted(counts.items(), key=lambda kv: -kv[1])[:3])


def _check_excluded_share(ctx: RunContext, table: str, partition: str) -> None:
    bound = _bound(ctx, table, "max_excluded_share", MAX_EXCLUDED_SHARE)
    with ledger.connect() as conn:
        row = conn.execute(
            "SELECT rows_in, rows_excluded, detail->'excluded_by_rule' FROM "
            "handover_meta.ledger WHERE run_id=%s AND table_name=%s AND partition=%s AND "
            "stage='comply'",
            (ctx["run_id"], table, partition),
        ).fetchone()
    if not row or not row[0]:
        return
    rows_in, excluded, rules = int(row[0]), int(row[1]), dict(row[2] or {})
    share = excluded / rows_in
    if share > bound and excluded >= MIN_QUARANTINED_FOR_SHARE:
        raise GateFailed(
            f"compliance gate failed for {table} partition {partition}: the policy excluded "
            f"{excluded:,} of {rows_in:,} rows ({share:.1%} > {bound:.0%} allowed); top rules: "
            f"{_top(rules)}; check policy.yaml (consent purposes, "
            f"retention) and the consent export, or raise catalog.yaml "
            f"tables.{table}.max_excluded_share if this is right"
        )


def _check_quarantine_share(ctx: RunContext, table: str, partition: str) -> None:
    bound = _bound(ctx, table, "max_quarantine_share", MAX_QUARANTINE_SHARE)
    with ledger.connect() as conn:
        row = conn.execute(
            "SELECT l.rows_in, l.rows_quarantined, l.detail->'quarantined_by_reason', r.kind "
            "FROM handover_meta.ledger l LEFT JOIN handover_meta.run r USING (run_id) WHERE "
            "l.run_id=%s AND l.table_name=%s AND l.partition=%s AND l.stage='cleanse'",
            (ctx["run_id"], table, partition),
        ).fetchone()
    if not row or not row[0]:
        return
    rows_in, reasons = int(row[0]), dict(row[2] or {})
    nightly = row[3] == "nightly"
    # Only what the rows themselves fail counts: a child waiting for its parent (an orphan a
    # night takes in again) or a duplicate is no sign of a format nobody reads; nor is a
    # handful of rows in a small partition (a night's few changes).
    quarantined = sum(n for r, n in reasons.items() if r not in NOT_FORMAT_REASONS)
    share = quarantined / rows_in
    if share > bound and quarantined >= MIN_QUARANTINED_FOR_SHARE:
        raise GateFailed(
            f"quality gate failed for {table} partition {partition}: cleanse quarantined "
            f"{quarantined:,} of {rows_in:,} rows ({share:.1%} > {bound:.0%} allowed); top "
            f"reasons: {_top(reasons)}; the export's form is not "
            f"what cleansing.yaml reads (fix the rule, then clear cleanse) or the bound is "
            f"wrong (catalog.yaml tables.{table}.max_quarantine_share)"
        )
    floor = _bound(ctx, table, "min_loaded_share", MIN_LOADED_SHARE)
    # A night's orphans wait for the night that brings their parent (not lost): they do
    # not count against it; a migration's orphans have no parent in the export at all.
    all_out = sum(n for r, n in reasons.items() if not (nightly and r == "ORPHAN_RECORD"))
    if (rows_in - all_out) / rows_in < floor and all_out >= MIN_QUARANTINED_FOR_SHARE:
        raise GateFailed(
            f"quality gate failed for {table} partition {partition}: only "
            f"{rows_in - all_out:,} of {rows_in:,} rows came out of cleanse "
            f"({(rows_in - all_out) / rows_in:.1%} < {floor:.0%} required); top reasons: "
            f"{_top(reasons)}; fix the rule or the export, then "
            f"clear cleanse, or lower catalog.yaml tables.{table}.min_loaded_share"
        )


def reconciliation_gate(ctx: RunContext, table: str) -> TableResult:
    """Gate on the reconciliation row of one table (counts only)."""
    run_id = ctx["run_id"]
    with ledger.connect() as conn:
        cur = conn.execute(
            "SELECT table_name, source_rows, loaded, quarantined, excluded, target_rows, "
            "missing_keys, field_mismatches, money_source, money_target, balanced, merged "
            "FROM handover_meta.reconciliation WHERE run_id=%s AND table_name=%s",
            (run_id, table),
        )
        cols = [d.name for d in cur.description]  # type: ignore[union-attr]  # a SELECT has columns
        frame = pd.DataFrame(cur.fetchall(), columns=cols)
    frame["accounted"] = (
        frame["loaded"] + frame["merged"] + frame["quarantined"] + frame["excluded"]
    )
    frame["unaccounted"] = frame["source_rows"] - frame["accounted"]
    for c in ("money_source", "money_target"):  # numeric in the books (never overflows)
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("float64")
    frame["money_diff"] = frame["money_source"].fillna(0) - frame["money_target"].fillna(0)
    try:
        result = _validate(frame, ctx, "reconciliation", table, "all")
    except GateFailed as exc:
        raise GateFailed(f"{exc}; {reconciliation_failures(ctx, table, frame)}") from None
    return {"table": table, "partition": "all", "docs_path": result.docs_path}


def reconciliation_failures(ctx: RunContext, table: str, frame: pd.DataFrame) -> str:
    """The checks of the reconciliation that failed, with their counts, in words."""
    r: Any = frame.iloc[0] if len(frame) else None  # a word is asked only of a row's failed check
    key = f"runs/{safe_run_id(ctx['run_id'])}/reconcile/{table}.json"
    try:
        checks = _lake().read_json(key).get("checks", {})
    except (OSError, ValueError):
        checks = {}
    words = {
        "ledger_balances": lambda: (
            f"ledger: {int(r['source_rows']):,} in but "
            f"{int(r['accounted']):,} loaded+merged+quarantined+excluded"
        ),
        "manifest_matches": lambda: "row count differs from the export manifest",
        "digest_matches": lambda: "the export's sha256 differs from the manifest's",
        "no_missing_keys": lambda: (
            f"key set: {int(r['missing_keys']):,} keys sent are missing in the target"
        ),
        "no_extra_rows": lambda: (
            f"key set: the target holds {int(r['target_rows']):,} rows "
            f"but the run loaded {int(r['loaded']):,}"
        ),
        "fields_equal": lambda: (
            f"fields: {int(r['field_mismatches']):,} rows differ from what the run sent"
        ),
        "money_equal": lambda: (
            f"money: source {r['money_source']:,.0f} fen, target {r['money_target']:,.0f} fen"
        ),
    }
    failed = [words.get(k, lambda k=k: k)() for k, ok in checks.items() if not ok and r is not None]
    return (
        "failed checks: " + "; ".join(failed) if failed else "see the checks in"
    ) + f" ({_lake().uri(key)})"
