"""What a backup holds and how its content is compared: the tables of the backed-up
schemas, their columns, and a content checksum computed the same way at backup and at
restore (handover.lifecycle.restore checks one against the other).
"""

from __future__ import annotations

import hashlib

SCHEMAS = ("crm", "handover_meta")
# Not backed up: sealed identifiers of open data-subject requests. They live only until the
# request ends, and a backup would keep them past an erasure (the keyring is not shredded).
NOT_BACKED_UP = (("handover_meta", "subject_intake"),)
# Session settings under which checksums are computed, at backup and at restore alike.
SESSION = (
    "SET TimeZone = 'UTC'",
    "SET DateStyle = 'ISO, YMD'",
    "SET extra_float_digits = 1",
    "SET bytea_output = 'hex'",
    "SET IntervalStyle = 'postgres'",
)


def snapshot_tables(conn) -> list[tuple[str, str]]:
    """Every base table of the backed-up schemas, in a stable order."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "ORDER BY 1, 2",
        (list(SCHEMAS),),
    ).fetchall()
    return [(s, t) for s, t in rows if (s, t) not in NOT_BACKED_UP]


def table_columns(conn, schema: str, table: str) -> list[tuple[str, str]]:
    """(column, PostgreSQL type name) in table order, dropped columns left out."""
    from psycopg import sql

    rel = sql.Identifier(schema, table).as_string(conn)
    return [
        (n, t)
        for n, t in conn.execute(
            "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum",
            (rel,),
        ).fetchall()
    ]


def content_checksum(conn, schema: str, table: str, columns: list[str]) -> tuple[int, str]:
    """Row count and an order-independent checksum of the rows as PostgreSQL renders them
    (sum of 64-bit md5 prefixes): constant memory, equal iff the restored rows are equal."""
    from psycopg import sql

    row = sql.SQL("row({})").format(
        sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in columns)
    )
    count, total = conn.execute(
        sql.SQL(
            "SELECT count(*), coalesce(sum(('x' || left(md5({row}::text), 16))::bit(64)::bigint"
            "::numeric), 0)::text FROM {tbl} t"
        ).format(row=row, tbl=sql.Identifier(schema, table))
    ).fetchone()
    return int(count), hashlib.sha256(f"{count}:{total}".encode()).hexdigest()
