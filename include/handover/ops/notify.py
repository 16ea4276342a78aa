"""Tell a person when a task has failed for good: one line, one message per failed task.

Wired as every task's ``on_failure_callback`` (see ``handover.ops.tasks.DEFAULT_ARGS``), so it
fires when a task instance ends *failed*: a data fault at once, a transient fault after its
last retry. Retries themselves stay quiet (Airflow calls ``on_retry_callback`` for those).

The channel is the Airflow connection ``handover_notify``:

* type ``http``/``https``: a POST of one line of JSON,
  ``{"dag", "task", "map_index", "run", "message"}``, to the webhook URL, e.g.
  ``AIRFLOW_CONN_HANDOVER_NOTIFY='https://hooks.example.com/services/T0/B0'`` (the URI's
  path is the endpoint; or give ``extra.endpoint``, ``extra.url``, ``extra.headers``;
  a password alone becomes a bearer token, a login and password basic auth);
* type ``smtp``/``email``: the same line as an e-mail body, with ``extra.to`` (comma
  separated), ``extra.from``, optional ``extra.starttls``; port 465 means SMTP over TLS.

With no such connection the notifier logs that it has nowhere to send and does nothing.
A notification that cannot be delivered is logged; it never changes the task's outcome.
The message is the task's own failure line, which by design names tables, partitions and
counts, never a row value.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from airflow.sdk import BaseNotifier

log = logging.getLogger("handover.ops.notify")

NOTIFY_CONN_ID = "handover_notify"
MESSAGE_MAX = 1000


def one_line(text: str, limit: int = MESSAGE_MAX) -> str:
    """Collapse whitespace to one line and cap its length."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def failure_payload(context: Any) -> dict[str, Any]:
    """The notification for a failed task instance, from its Airflow context."""
    ti = context.get("ti") or context.get("task_instance")
    dag = context.get("dag")
    exc = context.get("exception")
    message = f"{exc}" if exc is not None else "task failed (no exception recorded)"
    kind = type(exc).__name__
    # handover.ops.tasks.call already wraps data faults as "<Fault>: what, where, what to do".
    if exc is not None and kind not in message and not kind.startswith("Airflow"):
        message = f"{kind}: {message}"
    return {
        "dag": getattr(ti, "dag_id", None) or getattr(dag, "dag_id", None),
        "task": getattr(ti, "task_id", None),
        "map_index": getattr(ti, "map_index", -1),
        "run": getattr(ti, "run_id", None) or context.get("run_id"),
        "message": one_line(message),
    }


def webhook_url(conn: dict[str, Any]) -> str:
    """The webhook URL of an http connection (see the module docstring for the forms)."""
    extra = conn.get("extra") or {}
    if extra.get("url"):
        return str(extra["url"])
    host = conn.get("host") or ""
    schema = conn.get("schema") or ""
    if "://" in host:
        base = host.rstrip("/")
    else:
        if not host:
            raise ValueError(f"connection {NOTIFY_CONN_ID} has no host")
        scheme = (
            schema
            if schema in ("http", "https")
            else ("https" if conn.get("conn_type") == "https" else "http")
        )
        base = f"{scheme}://{host}" + (f":{conn['port']}" if conn.get("port") else "")
    endpoint = extra.get("endpoint")
    if endpoint is None:
        endpoint = schema if schema not in ("", "http", "https") else ""
    return f"{base}/{str(endpoint).lstrip('/')}" if endpoint else base + "/"


def post_webhook(conn: dict[str, Any], line: str, timeout: float = 10.0) -> int:
    """POST the line to the webhook; returns the HTTP status (raises on a non-2xx)."""
    import base64
    import urllib.request

    headers = {"Content-Type": "application/json", "User-Agent": "handover-notifier"}
    headers.update((conn.get("extra") or {}).get("headers") or {})
    login, password = conn.get("login"), conn.get("password")
    if password and login:
        token = base64.b64encode(f"{login}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    elif password:
        headers["Authorization"] = f"Bearer {password}"
    req = urllib.request.Request(
        webhook_url(conn), data=line.encode("utf-8"), headers=headers, method="POST"
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - configured URL
        return cast(int, resp.status)


def send_mail(
    conn: dict[str, Any], payload: dict[str, Any], line: str, timeout: float = 10.0
) -> None:
    import smtplib
    from email.message import EmailMessage

    extra = conn.get("extra") or {}
    to = [a.strip() for a in str(extra.get("to") or "").split(",") if a.strip()]
    if not to:
        raise ValueError(f"connection {NOTIFY_CONN_ID} (smtp) needs extra.to")
    msg = EmailMessage()
    msg["Subject"] = (
        f"[handover] {payload['dag']}.{payload['task']}"
        f"[{payload['map_index']}] failed in {payload['run']}"
    )
    msg["From"] = extra.get("from") or conn.get("login") or "handover@localhost"
    msg["To"] = ", ".join(to)
    msg.set_content(line + "\n")
    port = int(conn.get("port") or 25)
    smtp_cls = smtplib.SMTP_SSL if port == 465 else smtplib.SMTP
    with smtp_cls(conn.get("host") or "localhost", port, timeout=timeout) as smtp:
        if extra.get("starttls") and port != 465:
            smtp.starttls()
        if conn.get("login") and conn.get("password"):
            smtp.login(conn["login"], conn["password"])
        smtp.send_message(msg)


class HandoverNotifier(BaseNotifier):
    """Airflow notifier: one JSON line per failed task to a webhook or by e-mail."""

    def __init__(self, conn_id: str = NOTIFY_CONN_ID, timeout: float = 10.0):
        super().__init__()
        self.conn_id = conn_id
        self.timeout = timeout

    def notify(self, context: Any) -> None:
        from handover.config.connections import connection_dict

        payload = failure_payload(context)
        line = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)
        conn = connection_dict(self.conn_id)
        if conn is None:
            log.info(
                "no connection %s: failure of %s.%s[%s] not notified",
                self.conn_id,
                payload["dag"],
                payload["task"],
                payload["map_index"],
            )
            return
        kind = (conn.get("conn_type") or "").lower()
        if kind in ("http", "https"):
            post_webhook(conn, line, self.timeout)
        elif kind in ("smtp", "email"):
            send_mail(conn, payload, line, self.timeout)
        else:
            raise ValueError(
                f"connection {self.conn_id}: type {kind!r} not supported (use http, https or smtp)"
            )
        log.info(
            "notified failure of %s.%s[%s] via %s",
            payload["dag"],
            payload["task"],
            payload["map_index"],
            kind,
        )
