"""The ledger: every stage's counts, in the target database's own schema.

Each stage records, per run, table and partition, rows in, out, quarantined and
excluded, and a key-set checksum. The table's CHECK constraint refuses a row that
does not balance, and reconciliation reads the ledger to prove that every source
row ended loaded, merged (one person's second record, into its survivor), quarantined or
excluded. Writes are upserts, so reruns replace
rather than add.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa

from handover.core.paths import SQL_DIR
from handover.db import access


def connect(dsn: str | None = None, *, bulk: bool = False) -> psycopg.Connection:
    """A connection to the target. ``bulk``: for a session that stages a partition or a
    table in a temporary table and joins it (load, reconcile): ``temp_buffers`` and
    ``work_mem`` raised for this session only (HANDOVER_PG_TEMP_BUFFERS /
    HANDOVER_PG_WORK_MEM, default 256MB each), so the staged rows and the hash join stay in
    memory instead of spilling: reconciling 5 M call records took 24 s with the server's
    defaults (8MB / 4MB) and 16 s with these."""
    from handover.config.connections import target_dsn

    conn = psycopg.connect(dsn or target_dsn(), connect_timeout=10)
    if bulk:
        with conn.transaction():
            for name, env in (
                ("temp_buffers", "HANDOVER_PG_TEMP_BUFFERS"),
                ("work_mem", "HANDOVER_PG_WORK_MEM"),
            ):
                conn.execute(
                    "SELECT set_config(%s, %s, false)", (name, os.environ.get(env, "256MB"))
                )
    return conn


def ensure_schema(conn: psycopg.Connection) -> None:
    """Create the target and handover_meta schemas (idempotent, serialised by a lock)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('handover_ddl'))")
        for name in ("meta.sql", "target.sql"):
            conn.execute((SQL_DIR / name).read_text(encoding="utf-8"))
        access.apply_roles(conn)


def key_checksum(
    keys: Iterable[str] | pd.Series | np.ndarray | pa.Array | pa.ChunkedArray,
) -> str:
    """Order-independent checksum of a key set: the sum of 64-bit key hashes, mod 2**64.

    An Arrow column is hashed 65,536 keys at a time (the sum does not care), so a
    partition's keys never all become Python strings at once."""
    if isinstance(keys, (pa.Array, pa.ChunkedArray)):
        total = sum(
            _hash_sum(keys.slice(start, 65536).to_numpy(zero_copy_only=False))
            for start in range(0, len(keys), 65536)
        )
        return f"{total % (1 << 64):016x}" if len(keys) else "0" * 16
    arr = np.asarray(list(keys) if not hasattr(keys, "__len__") else keys, dtype=object)
    if len(arr) == 0:
        return "0" * 16
    return f"{_hash_sum(arr):016x}"


def _hash_sum(arr: np.ndarray) -> int:
    hashed = pd.util.hash_array(np.asarray(arr, dtype=object), categorize=False)
    return int(np.sum(hashed, dtype=np.uint64))


def record(
    conn: psycopg.Connection,
    *,
    run_id: str,
    table: str,
    partition: str,
    stage: str,
    rows_in: int,
    rows_out: int,
    quarantined: int = 0,
    excluded: int = 0,
    merged: int = 0,
    checksum: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """`merged`: rows of a person merged into a surviving record (cleanse; merge_map)."""
    if rows_in != rows_out + quarantined + excluded + merged:
        raise AssertionError(
            f"ledger does not balance for {table} partition {partition} at {stage}: "
            f"in {rows_in} != out {rows_out} + quarantined {quarantined} + excluded {excluded}"
            f" + merged {merged}"
        )
    conn.execute(
        """
        INSERT INTO handover_meta.ledger AS l (run_id, table_name, partition, stage, rows_in,
            rows_out, rows_quarantined, rows_excluded, rows_merged, checksum, detail)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (run_id, table_name, partition, stage) DO UPDATE SET
            rows_in = excluded.rows_in, rows_out = excluded.rows_out,
            rows_quarantined = excluded.rows_quarantined, rows_excluded = excluded.rows_excluded,
            rows_merged = excluded.rows_merged,
            checksum = excluded.checksum, detail = excluded.detail, recorded_at = now()
        """,
        (
            run_id,
            table,
            partition,
            stage,
            rows_in,
            rows_out,
            quarantined,
            excluded,
            merged,
            checksum,
            json.dumps(detail or {}),
        ),
    )


def replace_merges(
    conn: psycopg.Connection,
    run_id: str,
    table: str,
    partition: str,
    merged: Any,
    survivors: Any,
    rules: Any,
) -> None:
    """Replace this partition's merge-map entries: merged key, surviving key, rule."""
    conn.execute(
        "DELETE FROM handover_meta.merge_map WHERE run_id=%s AND table_name=%s AND partition=%s",
        (run_id, table, partition),
    )
    _copy_entries(
        conn,
        "merge_map",
        run_id,
        table,
        partition,
        {
            "merged_key": _column(merged, pa.string()),
            "survivor_key": _column(survivors, pa.string()),
            "rule": _column(rules, pa.string()),
        },
    )


def replace_quarantine(
    conn: psycopg.Connection,
    run_id: str,
    table: str,
    partition: str,
    keys: Any,
    reasons: Any,
    fields: Any,
) -> None:
    """Replace this partition's quarantine entries: record key, reason, field per row (equal
    lengths; Arrow arrays, pandas Series, numpy arrays or lists)."""
    conn.execute(
        "DELETE FROM handover_meta.quarantine WHERE run_id=%s AND table_name=%s AND partition=%s",
        (run_id, table, partition),
    )
    _copy_entries(
        conn,
        "quarantine",
        run_id,
        table,
        partition,
        {
            "record_key": _column(keys, pa.string()),
            "reason": _column(reasons, pa.string()),
            "field": _column(fields, pa.string()),
        },
    )


def replace_exclusions(
    conn: psycopg.Connection,
    run_id: str,
    table: str,
    partition: str,
    keys: Any,
    rules: Any,
    destroy_by: Any,
) -> None:
    """Replace this partition's exclusions: record key, rule id, destroy-by date per row.
    Evidence of rows already destroyed (key replaced by its keyed hash, 'destroyed:...')
    stays: a rerun of comply after the run's end no longer sees those rows (see
    retention.destroy_run_exclusions)."""
    conn.execute(
        "DELETE FROM handover_meta.exclusion WHERE run_id=%s AND table_name=%s "
        "AND partition=%s AND record_key NOT LIKE 'destroyed:%%'",
        (run_id, table, partition),
    )
    _copy_entries(
        conn,
        "exclusion",
        run_id,
        table,
        partition,
        {
            "record_key": _column(keys, pa.string()),
            "rule_id": _column(rules, pa.string()),
            "destroy_by": _column(destroy_by, pa.date32()),
        },
    )


def _column(values: Any, typ: pa.DataType) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values.cast(typ)
    if isinstance(values, pd.Series):
        values = values.astype(object).where(values.notna(), None).to_numpy()
    return pa.array(values, typ, from_pandas=True)


def _copy_entries(
    conn: psycopg.Connection,
    name: str,
    run_id: str,
    table: str,
    partition: str,
    columns: dict[str, pa.Array],
) -> None:
    """A partition's ledger entries in one COPY built in Arrow, with no Python step per
    entry. For 300,000 exclusions (a partition of browsing events, most without consent)
    the server's COPY, index included, stays the cost: ~0.5 s."""
    from psycopg import sql

    from handover.db.bulk_copy import copy_arrow

    lengths = {len(c) for c in columns.values()}
    if len(lengths) > 1:
        raise ValueError(
            f"{name} entries of {table} {partition}: columns of unequal length {sorted(lengths)}"
        )
    n = lengths.pop() if lengths else 0
    if not n:
        return
    fixed = {"run_id": run_id, "table_name": table, "partition": partition}
    entries = pa.table(
        {**{k: pa.repeat(pa.scalar(v, pa.string()), n) for k, v in fixed.items()}, **columns}
    )
    copy_arrow(conn, sql.Identifier("handover_meta", name), entries)


def audit(
    conn: psycopg.Connection,
    action: str,
    *,
    run_id: str | None = None,
    actor: str = "handover",
    detail: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        "INSERT INTO handover_meta.audit_log (run_id, actor, action, detail, prev_hash, hash) "
        "VALUES (%s, %s, %s, %s, '', '')",
        (run_id, actor, action, json.dumps(detail or {}, ensure_ascii=False, default=str)),
    )


class AuditCheck(tuple[bool, int]):
    """The result of verify_audit_chain: unpacks as (intact, entries checked), as before,
    and also names the first broken entry (`first_bad_id`), why (`reason`) and how many
    entries fail (`broken`)."""

    first_bad_id: int | None
    reason: str | None
    broken: int

    def __new__(
        cls,
        intact: bool,
        entries: int,
        first_bad_id: int | None = None,
        reason: str | None = None,
        broken: int = 0,
    ) -> AuditCheck:
        obj = super().__new__(cls, (intact, entries))
        obj.first_bad_id, obj.reason, obj.broken = first_bad_id, reason, broken
        return obj

    @property
    def intact(self) -> bool:
        return self[0]

    @property
    def entries(self) -> int:
        return self[1]


def verify_audit_chain(conn: psycopg.Connection) -> AuditCheck:
    """Recompute the hash chain; (intact, entries checked) plus the first broken entry id.

    An entry breaks when its stored hash is not the hash of its own content (it was edited)
    or its prev_hash is not the stored hash of the entry before it (one was deleted or
    inserted). Each entry is checked against its stored neighbours, so one edit breaks
    one entry and the count says how many were touched.
    """
    rows = conn.execute(
        "SELECT id, prev_hash, hash, encode(sha256(convert_to(prev_hash || '|' || "
        "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') || "
        "'|' || coalesce(run_id, '') || '|' || actor || '|' || action || '|' || detail::text, "
        "'UTF8')), 'hex') FROM handover_meta.audit_log ORDER BY id"
    ).fetchall()
    prev = "0" * 64
    first: tuple[int, str] | None = None
    broken = 0
    for entry_id, stored_prev, stored_hash, recomputed in rows:
        reason = None
        if stored_hash != recomputed:
            reason = "content does not match its hash"
        elif stored_prev != prev:
            reason = "does not link to the entry before it"
        if reason:
            broken += 1
            first = first or (entry_id, reason)
        prev = stored_hash
    if first is None:
        return AuditCheck(True, len(rows))
    return AuditCheck(False, len(rows), first[0], first[1], broken)


def stage_totals(conn: psycopg.Connection, run_id: str) -> dict[tuple[str, str], dict[str, int]]:
    rows = conn.execute(
        "SELECT table_name, stage, sum(rows_in), sum(rows_out), sum(rows_quarantined), "
        "sum(rows_excluded), sum(rows_merged) FROM handover_meta.ledger WHERE run_id=%s "
        "GROUP BY 1, 2",
        (run_id,),
    ).fetchall()
    return {
        (t, s): {
            "in": int(a),
            "out": int(b),
            "quarantined": int(c),
            "excluded": int(d),
            "merged": int(m),
        }
        for t, s, a, b, c, d, m in rows
    }
