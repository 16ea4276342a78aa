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
    stmt = sql.SQL(
        "INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM {staging} "
        "ON CONFLICT ({key}) DO UPDATE SET {sets} "
        "WHERE ({t_cmp}) IS DISTINCT FROM ({x_cmp}) "
        "RETURNING (xmax = 0) AS inserted"
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
    flags = [r[0] for r in conn.execute(stmt).fetchall()]
    inserted = sum(1 for f in flags if f)
    updated = len(flags) - inserted
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
