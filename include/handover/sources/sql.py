"""SQL sources: a table or query in a database reached through an Airflow connection
(PostgreSQL, SQLite, MySQL/MariaDB), read in chunks through a server-side cursor."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pyarrow as pa

from handover.core.errors import SourceReadError
from handover.sources.base import DEFAULT_CHUNK_ROWS, TableSource, _numbered

SQL_DIALECTS = {
    "postgres": "postgres",
    "postgresql": "postgres",
    "sqlite": "sqlite",
    "mysql": "mysql",
    "mariadb": "mysql",
}


def _sql_location(spec: dict[str, Any]) -> str:
    what = spec.get("table") or "query"
    return f"connection {spec.get('conn_id')} ({what})"


def _quote_ident(name: str, dialect: str) -> str:
    q = "`" if dialect == "mysql" else '"'
    return ".".join(q + part.replace(q, q + q) + q for part in name.split("."))


def _hash_column(sha: Any, col: pa.Array) -> None:
    """Feed a fresh string column to a hash: its value lengths (null = -1), then its bytes."""
    import numpy as np
    import pyarrow.compute as pc

    sha.update(pc.fill_null(pc.utf8_length(col), -1).to_numpy().astype(np.int64).tobytes())
    offsets = np.frombuffer(col.buffers()[1], dtype=np.int32)[
        col.offset : col.offset + len(col) + 1
    ]
    data = col.buffers()[2]
    if data is not None and len(offsets) and offsets[-1] > offsets[0]:
        sha.update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])


def _db_text(value: Any) -> str | None:
    """A DB-API value as text, the way the database would print it."""
    import datetime as dt
    from decimal import Decimal

    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


class SqlSource(TableSource):
    """A table or query in a SQL database reached through an Airflow connection, read in
    chunks of `chunk_rows` through a server-side cursor (PostgreSQL: a named cursor;
    MySQL/MariaDB: an unbuffered cursor; SQLite steps lazily), ordered by the table's key
    so row numbers are stable, optionally limited to a key or timestamp range
    (`start` inclusive, `end` exclusive). Values arrive as the database prints them."""

    what_columns = "query result"

    def __init__(
        self,
        conn_id: str,
        *,
        table: str,
        source_table: str | None = None,
        query: str | None = None,
        key: str | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        range_column: str | None = None,
        range_start: Any = None,
        range_end: Any = None,
    ) -> None:
        if bool(source_table) == bool(query):
            raise SourceReadError(
                f"table {table}: a sql source needs exactly one of 'table' or 'query'"
            )
        self.conn_id, self.table = conn_id, table
        self.source_table, self.query, self.key = source_table, query, key
        self.chunk_rows = chunk_rows
        self.range_column, self.range_start, self.range_end = range_column, range_start, range_end
        self.location = _sql_location({"conn_id": conn_id, "table": source_table})
        self.name = f"sql:{conn_id}/{source_table or 'query'}"
        self.columns = []
        self._conn: Any = None
        self._cur: Any = None
        self._sha = hashlib.sha256()
        self.dialect = ""

    # -- connecting
    def _connect(self) -> Any:
        from handover.config.connections import connection_dict

        conn = connection_dict(self.conn_id)
        if conn is None:
            raise SourceReadError(
                f"{self.location}: Airflow connection '{self.conn_id}' for table {self.table} "
                f"is not defined; set AIRFLOW_CONN_{self.conn_id.upper()} or add it in Airflow"
            )
        ctype = (conn.get("conn_type") or "").lower()
        self.dialect = SQL_DIALECTS.get(ctype, "")
        if not self.dialect:
            raise SourceReadError(
                f"{self.location}: connection type '{ctype}' is not supported "
                f"for reading; use one of {', '.join(sorted(SQL_DIALECTS))}"
            )
        try:
            if self.dialect == "postgres":
                import psycopg
                from psycopg.conninfo import make_conninfo
                from psycopg.types.string import TextLoader

                params = {
                    "host": conn["host"] or None,
                    "port": conn["port"] or None,
                    "user": conn["login"] or None,
                    "password": conn["password"] or None,
                    "dbname": conn["schema"] or None,
                }
                db = psycopg.connect(make_conninfo(**{k: v for k, v in params.items() if v}))
                for info in psycopg.postgres.types:  # every value as PostgreSQL prints it
                    db.adapters.register_loader(info.oid, TextLoader)
                return db
            if self.dialect == "sqlite":
                import sqlite3

                path = conn["host"] or conn["schema"]
                if not path or not Path(path).is_file():
                    raise SourceReadError(
                        f"{self.location}: SQLite database file {path!r} not found"
                    )
                return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                import pymysql
            except ImportError as exc:
                raise SourceReadError(
                    f"{self.location}: reading MySQL/MariaDB needs the "
                    "'pymysql' package, which is not installed"
                ) from exc
            return pymysql.connect(
                host=conn["host"] or "127.0.0.1",
                port=conn["port"] or 3306,
                user=conn["login"] or "root",
                password=conn["password"] or "",
                database=conn["schema"] or None,
                charset="utf8mb4",
            )
        except SourceReadError:
            raise
        except Exception as exc:  # noqa: BLE001 - drivers raise their own hierarchies
            raise SourceReadError(
                f"{self.location}: cannot connect "
                f"({type(exc).__name__}: {str(exc).splitlines()[0]})"
            ) from exc

    def statement(self) -> tuple[str, list[Any]]:
        """The SELECT this source runs, with its parameters."""
        mark = "?" if self.dialect == "sqlite" else "%s"
        base = (
            f"SELECT * FROM {_quote_ident(self.source_table, self.dialect)}"
            if self.source_table
            # __init__ allows exactly one of source_table and query
            else f"SELECT * FROM ({cast(str, self.query).strip().rstrip(';')}) handover_src"
        )
        where, params = [], []
        if self.range_column and self.range_start is not None:
            where.append(f"{_quote_ident(self.range_column, self.dialect)} >= {mark}")
            params.append(self.range_start)
        if self.range_column and self.range_end is not None:
            where.append(f"{_quote_ident(self.range_column, self.dialect)} < {mark}")
            params.append(self.range_end)
        stmt = base + (" WHERE " + " AND ".join(where) if where else "")
        if self.key:
            stmt += f" ORDER BY {_quote_ident(self.key, self.dialect)}"
        return stmt, params

    def open(self) -> None:
        self._conn = self._connect()
        try:
            if self.dialect == "postgres":
                self._cur = self._conn.cursor(name="handover_extract")
                self._cur.itersize = self.chunk_rows
            elif self.dialect == "mysql":
                import pymysql.cursors

                self._cur = self._conn.cursor(pymysql.cursors.SSCursor)
            else:
                self._cur = self._conn.cursor()
            stmt, params = self.statement()
            if self.dialect == "sqlite":
                self._cur.execute(stmt, params)
            else:  # no parameters: a '%' in the query is not a placeholder
                self._cur.execute(stmt, params or None)
            self.columns = [d[0] for d in self._cur.description]
        except SourceReadError:
            raise
        except Exception as exc:  # noqa: BLE001 - DB-API drivers raise their own hierarchies; re-raised as one SourceReadError
            self.close()
            raise SourceReadError(
                f"{self.location}: query failed ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            ) from exc

    def close(self) -> None:
        for thing in (self._cur, self._conn):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001, S110 - closing after a failure
                    pass
        self._cur = self._conn = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        row = 0
        text = _db_text if self.dialect != "postgres" else (lambda v: v)
        while True:
            try:
                rows = self._cur.fetchmany(self.chunk_rows)
            except Exception as exc:  # noqa: BLE001 - DB-API drivers raise their own hierarchies; re-raised as one SourceReadError
                raise SourceReadError(
                    f"{self.location}: reading failed near row {row + 1} "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0]})"
                ) from exc
            if not rows:
                return
            cols = [
                pa.array([text(v) for v in col], pa.string()) for col in zip(*rows, strict=True)
            ]
            for col in cols:
                _hash_column(self._sha, col)
            yield _numbered(cols, self.columns, row + 1)
            row += len(rows)

    def fingerprint(self) -> str:
        return self._sha.hexdigest()
