"""Access control in the target database: the loader, analyst and auditor roles.

PIPL Art. 51 asks for access control beside encryption and de-identification. The
roles and the analysts' masked views (schema `crm_masked`) are DDL, in
include/sql/roles.sql, applied by ledger.ensure_schema after the tables exist, so every
run re-asserts them. This module applies that file and answers "who can read what"
from the database's own catalog, for tests and for auditors.
"""

from __future__ import annotations

import psycopg

from handover.core.paths import SQL_DIR

SQL_FILE = SQL_DIR / "roles.sql"

LOADER = "handover_loader"
ANALYST = "handover_analyst"
AUDITOR = "handover_auditor"
ROLES = (LOADER, ANALYST, AUDITOR)
SCHEMAS = ("crm", "crm_masked", "handover_meta")


def apply_roles(conn: psycopg.Connection) -> None:
    """Create the roles if missing and (re)grant; the caller owns the transaction."""
    conn.execute(SQL_FILE.read_text(encoding="utf-8"))


def readable_relations(
    conn: psycopg.Connection, role: str, schemas: tuple[str, ...] = SCHEMAS
) -> list[str]:
    """Tables and views in `schemas` that `role` may SELECT from (schema usage included)."""
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'v', 'm', 'p', 'f') "
        "AND has_schema_privilege(%s, n.oid, 'USAGE') "
        "AND has_table_privilege(%s, c.oid, 'SELECT') ORDER BY 1",
        (list(schemas), role, role),
    ).fetchall()
    return [r[0] for r in rows]


def readable_columns(
    conn: psycopg.Connection, role: str, schemas: tuple[str, ...] = SCHEMAS
) -> list[str]:
    """Every column `role` can read (`schema.relation.column`), column grants included."""
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname || '.' || a.attname FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'v', 'm', 'p', 'f') "
        "AND a.attnum > 0 AND NOT a.attisdropped "
        "AND has_schema_privilege(%s, n.oid, 'USAGE') "
        "AND has_column_privilege(%s, c.oid, a.attnum, 'SELECT') ORDER BY 1",
        (list(schemas), role, role),
    ).fetchall()
    return [r[0] for r in rows]
