"""Shared test setup: the library on sys.path, and real services on loopback.

Integration and end-to-end tests use the machine's PostgreSQL (127.0.0.1:5432, trust
auth; PGHOST/PGPORT/PGUSER override) with a fresh database per test module, so runs
never see each other's rows.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

PG = {
    "host": os.environ.get("PGHOST", "127.0.0.1"),
    "port": os.environ.get("PGPORT", "5432"),
    "user": os.environ.get("PGUSER", "postgres"),
}


def pg_dsn(dbname: str) -> str:
    return f"host={PG['host']} port={PG['port']} user={PG['user']} dbname={dbname}"


def pg_url(dbname: str, driver: str = "postgresql") -> str:
    return f"{driver}://{PG['user']}@{PG['host']}:{PG['port']}/{dbname}"


def create_database(prefix: str) -> str:
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(pg_dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def target_db():
    """A fresh target database on the machine's PostgreSQL, dropped afterwards."""
    name = create_database("handover_test")
    yield name
    drop_database(name)


@pytest.fixture(scope="module")
def keyring_file(tmp_path_factory) -> Path:
    import json

    from handover.protect import Keyring

    path = tmp_path_factory.mktemp("keys") / "keys.json"
    path.write_text(json.dumps(Keyring.generate("k-test-1")))
    return path
