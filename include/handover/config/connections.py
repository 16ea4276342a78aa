"""Secrets by reference: code names a connection id, values come from the environment.

Connections are Airflow connections (`AIRFLOW_CONN_<ID>` as a URI or JSON, or a
secrets backend inside a task). The library also runs without a scheduler (tests,
the CLI), so the environment is read here first, the same way Airflow reads it.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

TARGET_CONN_ID = "handover_target"
KEYS_CONN_ID = "handover_keys"
LAKE_CONN_ID = "handover_lake"


def _parse_uri(uri: str) -> dict[str, Any]:
    parts = urlsplit(uri)
    extra = dict(parse_qsl(parts.query))
    if "__extra__" in extra:
        extra = json.loads(extra["__extra__"])
    return {
        "conn_type": parts.scheme,
        "host": unquote(parts.hostname or "") if parts.netloc else "",
        "port": parts.port,
        "login": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "schema": unquote(parts.path.lstrip("/")),
        "extra": extra,
    }


def _from_env(conn_id: str) -> dict[str, Any] | None:
    raw = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if not raw:
        return None
    raw = raw.strip()
    if raw.startswith("{"):
        data = json.loads(raw)
        extra = data.get("extra") or {}
        if isinstance(extra, str):
            extra = json.loads(extra)
        return {
            "conn_type": data.get("conn_type"),
            "host": data.get("host") or "",
            "port": data.get("port"),
            "login": data.get("login"),
            "password": data.get("password"),
            "schema": data.get("schema") or "",
            "extra": extra,
        }
    return _parse_uri(raw)


def connection_dict(conn_id: str) -> dict[str, Any] | None:
    """The connection as a plain dict, or None when it is not defined anywhere."""
    found = _from_env(conn_id)
    if found is not None:
        return found
    try:
        from airflow.sdk import BaseHook
    except ImportError:
        return None
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # noqa: BLE001 - "not defined" has several exception types across versions
        return None
    return {
        "conn_type": conn.conn_type,
        "host": conn.host or "",
        "port": conn.port,
        "login": conn.login,
        "password": conn.password,
        "schema": conn.schema or "",
        "extra": conn.extra_dejson,
    }


def target_dsn() -> str:
    """libpq conninfo of the target PostgreSQL (connection `handover_target`)."""
    if os.environ.get("HANDOVER_TARGET_DSN"):
        return os.environ["HANDOVER_TARGET_DSN"]
    conn = connection_dict(TARGET_CONN_ID)
    if conn is None:
        raise RuntimeError(
            f"no target database: define the Airflow connection '{TARGET_CONN_ID}' "
            f"(e.g. AIRFLOW_CONN_{TARGET_CONN_ID.upper()}=postgresql://user@host:5432/db) "
            "or run through `make demo`, which sets it to the embedded PostgreSQL"
        )
    from psycopg.conninfo import make_conninfo

    params = {
        "host": conn["host"] or None,
        "port": conn["port"] or None,
        "user": conn["login"] or None,
        "password": conn["password"] or None,
        "dbname": conn["schema"] or None,
    }
    return make_conninfo(**{k: v for k, v in params.items() if v is not None})
