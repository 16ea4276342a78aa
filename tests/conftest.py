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


# ---------------------------------------------------------------- S3 endpoint, workers
def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto_server(log_path: Path | None = None):
    """moto in server mode on a free loopback port: a real S3 endpoint over HTTP.

    Returns (process, endpoint_url); the caller terminates the process.
    """
    import subprocess
    import time
    import urllib.request

    port = free_port()
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "moto_server"), "-H",
                                 "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if log_path:
            out.close()
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode} on port {port}")
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"moto_server did not answer on {endpoint} within 30s")


def stop_process(proc, timeout: float = 10) -> None:
    """Terminate a process we started (and its session), then kill it if it lingers."""
    import signal
    import subprocess

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait(timeout=timeout)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """Endpoint URL of a moto S3 server that lives for the test session."""
    proc, endpoint = start_moto_server(tmp_path_factory.mktemp("moto") / "moto.log")
    yield endpoint
    stop_process(proc)


def lake_connection(endpoint: str, **extra) -> str:
    """AIRFLOW_CONN_HANDOVER_LAKE value (JSON) for an S3 endpoint with moto's dummy keys."""
    import json

    return json.dumps({"conn_type": "aws", "login": "testing", "password": "testing",
                       "extra": {"endpoint_url": endpoint, "region_name": "us-east-1",
                                 **extra}})


def worker_hostname() -> str:
    """`[core] hostname_callable` for test workers sharing one machine.

    Airflow records the hostname of the worker that ran a task instance; two Celery
    workers on one host would record the same name, so each gets its own through
    HANDOVER_WORKER_HOSTNAME.
    """
    import socket

    return os.environ.get("HANDOVER_WORKER_HOSTNAME") or socket.getfqdn()
