"""Load: one partition into the target, in one transaction, idempotently.

Write-audit-publish at partition grain: COPY the mapped rows into a temporary staging
table, then one set-based upsert keyed on the natural key, then the ledger row, and
commit all three together. A rerun finds every row present and rewrites none of them
(rows whose non-ciphertext columns are unchanged are skipped), so the target ends the
same however often a task is cleared. Ciphertext is compared through the blind index:
a new random nonce must not count as a change.
"""

from __future__ import annotations

import io
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql


def _csv_ready(table: pa.Table) -> pa.Table:
    """Binary columns become PostgreSQL's bytea hex text (\\x...) for CSV COPY."""
    cols = []
    for name in table.column_names:
        col = table[name]
        if pa.types.is_binary(col.type):
            hexed = pa.array([None if v is None else "\\x" + v.hex() for v in col.to_pylist()],
                             pa.string())
            col = hexed
        cols.append(col)
    return pa.table(cols, names=table.column_names)


def copy_arrow(conn: psycopg.Connection, qualified: sql.Composable, table: pa.Table) -> None:
    """Stream an Arrow table into PostgreSQL with COPY ... (FORMAT csv)."""
    if table.num_rows == 0:
        return
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names)
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(qualified, columns)
    ready = _csv_ready(table)
    with conn.cursor().copy(stmt) as cp:
        for batch in ready.to_batches(max_chunksize=65536):
            buf = io.BytesIO()
            pacsv.write_csv(batch, buf, pacsv.WriteOptions(include_header=False,
                                                            quoting_style="needed"))
            cp.write(buf.getvalue())


def comparable_columns(columns: list[str]) -> list[str]:
    """Columns whose change means a real change (ciphertext and key ids excluded)."""
    return [c for c in columns if not (c.endswith("_enc") or c.endswith("_key_id"))]


def upsert_partition(conn: psycopg.Connection, schema: str, target: str, key: str,
                     table: pa.Table) -> dict[str, int]:
    """Stage and upsert; caller owns the transaction. Returns inserted/updated/unchanged."""
    staging = sql.Identifier(f"stg_{target}")
    conn.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) "
                         "ON COMMIT DELETE ROWS").format(staging, sql.Identifier(schema, target)))
    conn.execute(sql.SQL("TRUNCATE {}").format(staging))
    copy_arrow(conn, staging, table)
    cols = table.column_names
    ident = [sql.Identifier(c) for c in cols]
    compare = comparable_columns(cols)
    # Counted in the server: a row per written row sent back only to be counted would be
    # hundreds of thousands of round-trip values per partition.
    stmt = sql.SQL(
        "WITH written AS (INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM {staging} "
        "ON CONFLICT ({key}) DO UPDATE SET {sets} "
        "WHERE ({t_cmp}) IS DISTINCT FROM ({x_cmp}) "
        "RETURNING (xmax = 0) AS inserted) "
        "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) "
        "FROM written"
    ).format(
        target=sql.Identifier(schema, target),
        cols=sql.SQL(", ").join(ident),
        staging=staging,
        key=sql.Identifier(key),
        sets=sql.SQL(", ").join(
            sql.SQL("{} = excluded.{}").format(sql.Identifier(c), sql.Identifier(c))
            for c in cols if c != key),
        t_cmp=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in compare),
        x_cmp=sql.SQL(", ").join(sql.SQL("excluded.{}").format(sql.Identifier(c))
                                 for c in compare),
    )
    inserted, updated = conn.execute(stmt).fetchone()
    return {"inserted": inserted, "updated": updated,
            "unchanged": table.num_rows - inserted - updated}


def table_checksum(conn: psycopg.Connection, schema: str, target: str, key: str) -> tuple[int, str]:
    """Row count and a content checksum of a whole target table (order-independent)."""
    row = conn.execute(sql.SQL(
        "SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY t.{key})), '') "
        "FROM {tbl} t").format(key=sql.Identifier(key), tbl=sql.Identifier(schema, target))
    ).fetchone()
    return int(row[0]), row[1]


def key_column_values(table: pa.Table, key: str) -> list[str]:
    return pc.cast(table[key], pa.string()).to_pylist()


# ---------------------------------------------------------------- nightly sync
def upsert_newer(conn: psycopg.Connection, schema: str, target: str, key: str,
                 table: pa.Table, version: str | None) -> dict[str, int]:
    """`upsert_partition` for nights that may run out of order: older never beats newer.

    A staged row replaces the target's only if its `version` column (the legacy
    updated_at, mapped) is not older than the target's, so rerunning or backfilling an
    old night cannot undo a newer one. With no version column this is `upsert_partition`.
    Returns inserted / updated / unchanged / stale (older than the target, left alone).
    """
    if version is None:
        return {**upsert_partition(conn, schema, target, key, table), "stale": 0}
    staging = sql.Identifier(f"stg_newer_{target}")
    conn.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) "
                         "ON COMMIT DELETE ROWS").format(staging, sql.Identifier(schema, target)))
    conn.execute(sql.SQL("TRUNCATE {}").format(staging))
    copy_arrow(conn, staging, table)
    tgt, kid, ver = sql.Identifier(schema, target), sql.Identifier(key), sql.Identifier(version)
    stale = conn.execute(sql.SQL(
        "SELECT count(*) FROM {s} s JOIN {t} t USING ({k}) "
        "WHERE t.{v} IS NOT NULL AND (s.{v} IS NULL OR s.{v} < t.{v})"
    ).format(s=staging, t=tgt, k=kid, v=ver)).fetchone()[0]
    cols = table.column_names
    compare = comparable_columns(cols)
    stmt = sql.SQL(
        "INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM {staging} "
        "ON CONFLICT ({key}) DO UPDATE SET {sets} "
        "WHERE (t.{v} IS NULL OR excluded.{v} >= t.{v}) "
        "AND ({t_cmp}) IS DISTINCT FROM ({x_cmp}) "
        "RETURNING (xmax = 0) AS inserted"
    ).format(
        target=tgt, staging=staging, key=kid, v=ver,
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
        sets=sql.SQL(", ").join(
            sql.SQL("{} = excluded.{}").format(sql.Identifier(c), sql.Identifier(c))
            for c in cols if c != key),
        t_cmp=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in compare),
        x_cmp=sql.SQL(", ").join(sql.SQL("excluded.{}").format(sql.Identifier(c))
                                 for c in compare),
    )
    flags = [r[0] for r in conn.execute(stmt).fetchall()]
    inserted = sum(1 for f in flags if f)
    updated = len(flags) - inserted
    return {"inserted": inserted, "updated": updated, "stale": int(stale),
            "unchanged": table.num_rows - inserted - updated - int(stale)}


def delete_keys(conn: psycopg.Connection, schema: str, target: str, key: str,
                deletions: list[tuple[str, Any]], version: str | None) -> dict[str, int]:
    """Delete rows the legacy system deleted: (key, deleted_at) pairs; caller owns the txn.

    With a `version` column a row is deleted only if it is not newer than the deletion
    (a key re-created after it was deleted survives a replay of the older night).
    Returns deleted / absent (no such row in the target) / superseded (target is newer).
    """
    del_tbl = sql.Identifier(f"del_{target}")
    conn.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (k text PRIMARY KEY, "
                         "deleted_at timestamp) ON COMMIT DELETE ROWS").format(del_tbl))
    conn.execute(sql.SQL("TRUNCATE {}").format(del_tbl))
    with conn.cursor().copy(sql.SQL("COPY {} (k, deleted_at) FROM STDIN").format(del_tbl)) as cp:
        for k, at in deletions:
            cp.write_row((k, at))
    tgt, kid = sql.Identifier(schema, target), sql.Identifier(key)
    absent = conn.execute(sql.SQL(
        "SELECT count(*) FROM {d} d WHERE NOT EXISTS (SELECT 1 FROM {t} t WHERE t.{k} = d.k)"
    ).format(d=del_tbl, t=tgt, k=kid)).fetchone()[0]
    guard = (sql.SQL("AND (t.{v} IS NULL OR t.{v} <= d.deleted_at)").format(
        v=sql.Identifier(version)) if version else sql.SQL(""))
    deleted = len(conn.execute(sql.SQL(
        "DELETE FROM {t} t USING {d} d WHERE t.{k} = d.k {guard} RETURNING 1"
    ).format(t=tgt, d=del_tbl, k=kid, guard=guard)).fetchall())
    return {"deleted": deleted, "absent": int(absent),
            "superseded": len(deletions) - deleted - int(absent)}
