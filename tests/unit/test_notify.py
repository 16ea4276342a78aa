"""Failure notifications: one JSON line per failed task, to a webhook or by e-mail.

The receivers are real local servers started by the tests (an HTTP server, a minimal SMTP
server). The last test runs a small DAG through Airflow itself (`airflow dags test` on a
fresh database on the machine's PostgreSQL) to show that a task retried twice and a task
failed at once each notify exactly once, and retries never do.
"""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from handover.ops.notify import HandoverNotifier, failure_payload, one_line, webhook_url

ROOT = Path(__file__).resolve().parents[2]


class Receiver:
    """A local webhook: records every POST body."""

    def __init__(self) -> None:
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def _record(self):
                n = int(self.headers.get("Content-Length") or 0)
                bodies.append(self.rfile.read(n).decode("utf-8"))
                self.send_response(204)
                self.end_headers()

            do_POST = _record  # http.server dispatches a POST to do_POST

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _context(exc: BaseException | None, **ti) -> dict:
    ti = {
        "dag_id": "customer_migration",
        "task_id": "validate_intake",
        "map_index": 4,
        "run_id": "manual__2026-01-01T00:00:00+00:00",
        **ti,
    }
    return {"ti": SimpleNamespace(**ti), "exception": exc}


def test_payload_is_the_five_fields_and_one_line():
    exc = RuntimeError("intake gate failed for payments partition p00:\n  1 row fails x")

    payload = failure_payload(_context(exc))

    assert payload == {
        "dag": "customer_migration",
        "task": "validate_intake",
        "map_index": 4,
        "run": "manual__2026-01-01T00:00:00+00:00",
        "message": "RuntimeError: intake gate failed for payments partition p00: 1 row fails x",
    }


def test_message_of_a_data_fault_is_the_task_line_and_is_capped():
    from airflow.sdk.exceptions import AirflowFailException

    exc = AirflowFailException("GateFailed: quality gate failed")
    assert failure_payload(_context(exc))["message"] == "GateFailed: quality gate failed"
    assert len(one_line("x " * 2000)) == 1000


@pytest.mark.parametrize(
    ("conn", "url"),
    [
        (
            {"conn_type": "http", "host": "127.0.0.1", "port": 8080, "schema": "hooks/oncall"},
            "http://127.0.0.1:8080/hooks/oncall",
        ),
        (
            {"conn_type": "https", "host": "hooks.example.com", "schema": ""},
            "https://hooks.example.com/",
        ),
        (
            {
                "conn_type": "http",
                "host": "hooks.example.com",
                "schema": "https",
                "extra": {"endpoint": "/services/T0"},
            },
            "https://hooks.example.com/services/T0",
        ),
        (
            {
                "conn_type": "http",
                "host": "https://hooks.example.com",
                "schema": "",
                "extra": {"endpoint": "a/b"},
            },
            "https://hooks.example.com/a/b",
        ),
        ({"conn_type": "http", "extra": {"url": "http://x:1/y"}}, "http://x:1/y"),
    ],
)
def test_webhook_url_forms(conn, url):
    assert webhook_url(conn) == url


def test_notifier_posts_one_json_line(monkeypatch):
    with Receiver() as rx:
        monkeypatch.setenv(
            "AIRFLOW_CONN_HANDOVER_NOTIFY", f"http://127.0.0.1:{rx.port}/hooks/oncall"
        )
        HandoverNotifier()(_context(ValueError("quality gate failed for calls partition p01")))

    assert len(rx.bodies) == 1
    body = rx.bodies[0]
    assert "\n" not in body
    assert json.loads(body) == {
        "dag": "customer_migration",
        "task": "validate_intake",
        "map_index": 4,
        "run": "manual__2026-01-01T00:00:00+00:00",
        "message": "ValueError: quality gate failed for calls partition p01",
    }


def test_without_a_connection_nothing_is_sent_and_nothing_raises(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_HANDOVER_NOTIFY", raising=False)
    monkeypatch.setattr("handover.config.connections.connection_dict", lambda conn_id: None)

    HandoverNotifier()(_context(RuntimeError("boom")))


class _SMTPHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP to accept one message."""

    def handle(self):
        self.wfile.write(b"220 test ESMTP\r\n")
        while line := self.rfile.readline():
            cmd = line.decode().strip().upper()
            if cmd.startswith(("EHLO", "HELO")):
                self.wfile.write(b"250 test\r\n")
            elif cmd == "DATA":
                self.wfile.write(b"354 go ahead\r\n")
                data = b""
                while not data.endswith(b"\r\n.\r\n"):
                    data += self.rfile.readline()
                self.server.messages.append(data.decode())
                self.wfile.write(b"250 queued\r\n")
            elif cmd == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


def test_notifier_sends_mail_over_smtp(monkeypatch):
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SMTPHandler)
    server.messages = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(
            "AIRFLOW_CONN_HANDOVER_NOTIFY",
            json.dumps(
                {
                    "conn_type": "smtp",
                    "host": "127.0.0.1",
                    "port": server.server_address[1],
                    "extra": {"to": "oncall@example.com", "from": "handover@example.com"},
                }
            ),
        )
        HandoverNotifier()(_context(RuntimeError("load failed")))
    finally:
        server.shutdown()
        server.server_close()

    assert len(server.messages) == 1
    mail = server.messages[0]
    assert "Subject: [handover] customer_migration.validate_intake[4] failed" in mail
    assert '"message":"RuntimeError: load failed"' in mail


def test_default_args_notify_on_failure_only():
    from handover.ops.tasks import DEFAULT_ARGS

    callbacks = DEFAULT_ARGS["on_failure_callback"]
    assert [type(c) for c in callbacks] == [HandoverNotifier]
    assert "on_retry_callback" not in DEFAULT_ARGS


DAG_FILE = '''
"""Notifier check: one task fails after retries, one fails at once, one succeeds."""
from datetime import datetime, timedelta

from airflow.sdk import dag, task

from handover.ops.tasks import DEFAULT_ARGS


@dag(dag_id="notify_check", schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
     tags=["handover"], default_args={**DEFAULT_ARGS, "retries": 2,
     "retry_delay": timedelta(seconds=0), "retry_exponential_backoff": False})
def notify_check():
    @task
    def flaky():
        raise ConnectionError("target database unreachable")

    @task
    def bad():
        from handover.ops.tasks import call

        def gate():
            from handover.flows.migration import GateFailed
            raise GateFailed("intake gate failed for payments partition p00")

        call(gate)

    @task
    def fine():
        return 1

    flaky()
    bad()
    fine()


notify_check()
'''


@pytest.mark.e2e
def test_exactly_one_notification_per_failed_task_through_airflow(tmp_path):
    from tests.conftest import create_database, drop_database, pg_url

    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "notify_check.py").write_text(textwrap.dedent(DAG_FILE))
    db = create_database("handover_notify")
    airflow = str(Path(sys.executable).with_name("airflow"))
    try:
        with Receiver() as rx:
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
                "AIRFLOW_HOME": str(tmp_path / "home"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg_url(db, "postgresql+psycopg2"),
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(tmp_path / "no-plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW_CONN_HANDOVER_NOTIFY": f"http://127.0.0.1:{rx.port}/hook",
                "PYTHONPATH": str(ROOT / "include"),
                "PYTHONWARNINGS": "ignore",
            }
            migrate = subprocess.run(
                [airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300
            )
            assert migrate.returncode == 0, migrate.stderr[-2000:]
            run = subprocess.run(
                [airflow, "dags", "test", "notify_check"],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            out = run.stdout + run.stderr
            assert run.returncode != 0, out[-3000:]
            sent = [json.loads(b) for b in rx.bodies]
    finally:
        drop_database(db)

    by_task = {}
    for note in sent:
        by_task.setdefault(note["task"], []).append(note)
    assert sorted(by_task) == ["bad", "flaky"], out[-3000:]
    assert len(by_task["flaky"]) == 1 and len(by_task["bad"]) == 1
    assert by_task["flaky"][0]["message"] == "ConnectionError: target database unreachable"
    assert by_task["bad"][0]["message"] == (
        "GateFailed: intake gate failed for payments partition p00"
    )
    assert out.count("target database unreachable") >= 3  # it did retry: tries 1, 2 and 3
    assert {n["dag"] for n in sent} == {"notify_check"}
