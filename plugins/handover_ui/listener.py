"""Task lifecycle events into the migration's own audit trail (handover_meta.audit_log).

Airflow calls these hooks in the task process (start, success, failure, retry) and in the
API server when someone marks a task by hand. Each event becomes one hash-chained audit
entry, so the auditor's trail shows who ran what and how it ended without reading
Airflow's database. Entries carry identifiers and states only: no rows, no values, no
error text (a message could quote data).

A listener must never change a task's outcome: every failure here (target database down,
schema not created yet on a brand-new target) is logged and swallowed.

One connection per process serves every event (a new one cost ~5 ms an event, two events
a task); a process forked from one that held it opens its own, and a connection the
server dropped is replaced once, on the event that finds it broken.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger("handover.audit")

ACTOR = "airflow"
CONNECT_TIMEOUT = 3  # seconds: a down target must not hold a task for long


def event_detail(
    task_instance: Any, state: str, error: BaseException | str | None = None
) -> dict[str, Any]:
    """What one audit entry says about a task instance: identifiers and state only."""
    detail: dict[str, Any] = {
        "dag_id": getattr(task_instance, "dag_id", None),
        "task_id": getattr(task_instance, "task_id", None),
        "map_index": getattr(task_instance, "map_index", -1),
        "run_id": getattr(task_instance, "run_id", None),
        "try_number": getattr(task_instance, "try_number", None),
        "state": state,
    }
    if isinstance(error, BaseException):
        detail["error_type"] = type(error).__name__
    return detail


def _state_of(task_instance: Any, default: str) -> str:
    state = getattr(task_instance, "state", None)
    value = getattr(state, "value", state)
    return value if value in ("failed", "up_for_retry") else default


_lock = threading.Lock()  # the API server calls hooks from several threads
_held: dict[str, Any] = {}  # this process's connection: {"pid", "dsn", "conn"}


def _connection(dsn: str) -> tuple[Any, bool]:
    """This process's connection to `dsn`, and whether it was opened just now."""
    import psycopg

    conn = _held.get("conn")
    if conn is not None and (
        _held["pid"] != os.getpid() or _held["dsn"] != dsn or conn.closed or conn.broken
    ):
        _forget()
        conn = None
    if conn is not None:
        return conn, False
    conn = psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT, autocommit=True)
    _held.update(pid=os.getpid(), dsn=dsn, conn=conn)
    return conn, True


def _forget() -> None:
    conn = _held.pop("conn", None)
    if conn is not None and _held.get("pid") == os.getpid():  # a parent's is the parent's
        conn.close()


def _append(conn: Any, detail: dict[str, Any]) -> None:
    import psycopg

    from handover.db import ledger

    try:
        with conn.transaction():
            ledger.audit(
                conn, f"task_{detail['state']}", run_id=detail["run_id"], actor=ACTOR, detail=detail
            )
    except psycopg.errors.UndefinedTable:
        # A brand-new target: plan_run creates the schema; do it now so the very first
        # event of the first run is kept too (idempotent DDL).
        ledger.ensure_schema(conn)
        with conn.transaction():
            ledger.audit(
                conn, f"task_{detail['state']}", run_id=detail["run_id"], actor=ACTOR, detail=detail
            )


def write_event(detail: dict[str, Any], dsn: str | None = None) -> bool:
    """Append one audit entry; False (and a warning) instead of an exception on any fault."""
    try:
        import psycopg

        from handover.config.connections import target_dsn

        dsn = dsn or target_dsn()
        with _lock:
            conn, fresh = _connection(dsn)
            try:
                _append(conn, detail)
            except psycopg.OperationalError:
                if fresh:
                    raise
                # The held connection was dropped (server restart, idle timeout): once more,
                # on a new one. A target that is down fails that one too, and is reported.
                _forget()
                _append(_connection(dsn)[0], detail)
        return True
    except Exception as exc:  # noqa: BLE001 - the audit trail must never fail a task
        log.warning(
            "audit event not recorded (%s %s.%s[%s] %s): %s: %s",
            detail.get("run_id"),
            detail.get("dag_id"),
            detail.get("task_id"),
            detail.get("map_index"),
            detail.get("state"),
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
        )
        return False


class AuditListener:
    """Registered through the plugin's ``listeners``; one instance per process."""

    @hookimpl
    def on_task_instance_running(self, previous_state, task_instance):
        self._record(task_instance, "running")

    @hookimpl
    def on_task_instance_success(self, previous_state, task_instance):
        self._record(task_instance, "success")

    @hookimpl
    def on_task_instance_failed(self, previous_state, task_instance, error):
        # Airflow calls this hook for a failure that will be retried too.
        self._record(task_instance, _state_of(task_instance, "failed"), error)

    @staticmethod
    def _record(task_instance: Any, state: str, error: Any = None) -> None:
        try:
            write_event(event_detail(task_instance, state, error))
        except Exception:  # noqa: BLE001 - never let the listener crash a task
            log.warning("audit listener failed", exc_info=True)


audit_listener = AuditListener()
