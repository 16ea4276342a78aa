"""The ledger: every stage's counts, in the target database's own schema.

Each stage records, per run, table and partition, rows in, out, quarantined and
excluded, and a key-set checksum. The table's CHECK constraint refuses a row that
does not balance, and reconciliation reads the ledger to prove that every source
row ended loaded, quarantined or excluded. Writes are upserts, so reruns replace
rather than add.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"


def connect(dsn: str | None = None) -> psycopg.Connection:
    from handover.connections import target_dsn

    return psycopg.connect(dsn or target_dsn(), connect_timeout=10)


def ensure_schema(conn: psycopg.Connection) -> None:
    """Create the target and handover_meta schemas (idempotent, serialised by a lock)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('handover_ddl'))")
        for name in ("meta.sql", "target.sql"):
            conn.execute((SQL_DIR / name).read_text(encoding="utf-8"))


def key_checksum(keys: Iterable[str] | pd.Series | np.ndarray) -> str:
    """Order-independent checksum of a key set: the sum of 64-bit key hashes, mod 2**64."""
    arr = np.asarray(list(keys) if not hasattr(keys, "__len__") else keys, dtype=object)
    if len(arr) == 0:
        return "0" * 16
    hashed = pd.util.hash_array(arr, categorize=False)
    total = int(np.sum(hashed, dtype=np.uint64))
    return f"{total:016x}"


def record(conn: psycopg.Connection, *, run_id: str, table: str, partition: str, stage: str,
           rows_in: int, rows_out: int, quarantined: int = 0, excluded: int = 0,
           checksum: str | None = None, detail: dict[str, Any] | None = None) -> None:
    if rows_in != rows_out + quarantined + excluded:
        raise AssertionError(
            f"ledger does not balance for {table} partition {partition} at {stage}: "
            f"in {rows_in} != out {rows_out} + quarantined {quarantined} + excluded {excluded}")
    conn.execute(
        """
        INSERT INTO handover_meta.ledger AS l (run_id, table_name, partition, stage, rows_in,
            rows_out, rows_quarantined, rows_excluded, checksum, detail)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (run_id, table_name, partition, stage) DO UPDATE SET
            rows_in = excluded.rows_in, rows_out = excluded.rows_out,
            rows_quarantined = excluded.rows_quarantined, rows_excluded = excluded.rows_excluded,
            checksum = excluded.checksum, detail = excluded.detail, recorded_at = now()
        """,
        (run_id, table, partition, stage, rows_in, rows_out, quarantined, excluded, checksum,
         json.dumps(detail or {})),
    )


def replace_quarantine(conn: psycopg.Connection, run_id: str, table: str, partition: str,
                       rows: Sequence[tuple[str, str, str | None]]) -> None:
    """Replace this partition's quarantine entries: (record key, reason, field)."""
    conn.execute("DELETE FROM handover_meta.quarantine WHERE run_id=%s AND table_name=%s "
                 "AND partition=%s", (run_id, table, partition))
    with conn.cursor().copy("COPY handover_meta.quarantine (run_id, table_name, partition, "
                            "record_key, reason, field) FROM STDIN") as cp:
        for key, reason, field in rows:
            cp.write_row((run_id, table, partition, key, reason, field))


def replace_exclusions(conn: psycopg.Connection, run_id: str, table: str, partition: str,
                       rows: Sequence[tuple[str, str, Any]]) -> None:
    """Replace this partition's exclusions: (record key, rule id, destroy-by date)."""
    conn.execute("DELETE FROM handover_meta.exclusion WHERE run_id=%s AND table_name=%s "
                 "AND partition=%s", (run_id, table, partition))
    with conn.cursor().copy("COPY handover_meta.exclusion (run_id, table_name, partition, "
                            "record_key, rule_id, destroy_by) FROM STDIN") as cp:
        for key, rule, destroy_by in rows:
            cp.write_row((run_id, table, partition, key, rule, destroy_by))


def audit(conn: psycopg.Connection, action: str, *, run_id: str | None = None,
          actor: str = "handover", detail: dict[str, Any] | None = None) -> None:
    conn.execute(
        "INSERT INTO handover_meta.audit_log (run_id, actor, action, detail, prev_hash, hash) "
        "VALUES (%s, %s, %s, %s, '', '')",
        (run_id, actor, action, json.dumps(detail or {}, ensure_ascii=False, default=str)),
    )


def verify_audit_chain(conn: psycopg.Connection) -> tuple[bool, int]:
    """Recompute the hash chain; returns (intact, entries checked)."""
    rows = conn.execute(
        "SELECT prev_hash, hash, encode(sha256(convert_to(prev_hash || '|' || at::text || '|' "
        "|| coalesce(run_id, '') || '|' || actor || '|' || action || '|' || detail::text, "
        "'UTF8')), 'hex') FROM handover_meta.audit_log ORDER BY id").fetchall()
    prev = "0" * 64
    for stored_prev, stored_hash, recomputed in rows:
        if stored_prev != prev or stored_hash != recomputed:
            return False, len(rows)
        prev = stored_hash
    return True, len(rows)


def stage_totals(conn: psycopg.Connection, run_id: str) -> dict[tuple[str, str], dict[str, int]]:
    rows = conn.execute(
        "SELECT table_name, stage, sum(rows_in), sum(rows_out), sum(rows_quarantined), "
        "sum(rows_excluded) FROM handover_meta.ledger WHERE run_id=%s GROUP BY 1, 2",
        (run_id,)).fetchall()
    return {(t, s): {"in": int(a), "out": int(b), "quarantined": int(c), "excluded": int(d)}
            for t, s, a, b, c, d in rows}
