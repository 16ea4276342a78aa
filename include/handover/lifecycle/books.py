"""The lifecycle's books and the connection that has them in place.

`include/sql/lifecycle.sql` adds to `handover_meta` the backup catalogue (`backup`,
`backup_file`), `restore_drill`, `destruction_certificate`, and the data-subject books
(`subject_request`, `subject_intake`, `erased_subject`). Backup, restore, retention and
subject requests open their connections here, so the books exist before they are used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from handover.core.paths import SQL_DIR
from handover.db import ledger

SQL_FILE = SQL_DIR / "lifecycle.sql"


@contextlib.contextmanager
def lifecycle_connect() -> Iterator[Any]:
    """A connection to the target with the lifecycle's books in place (ensure_lifecycle_schema)."""
    with ledger.connect() as conn:
        ensure_lifecycle_schema(conn)
        yield conn


def ensure_lifecycle_schema(conn) -> None:
    """The migration's schemas, then the lifecycle's books (idempotent, serialised)."""
    ledger.ensure_schema(conn)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('handover_ddl'))")
        conn.execute(SQL_FILE.read_text(encoding="utf-8"))
