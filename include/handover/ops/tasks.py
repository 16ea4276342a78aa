"""Glue between Airflow tasks and the library: faults, labels and defaults.

Data faults (a failed gate, bad configuration, a broken export, a value or constraint
the database refuses) fail a task at once: retrying cannot fix them, and a retry storm
hides the one line that says what to do. Transient faults (a dropped connection) keep
Airflow's retries with backoff.
Either way, a task that ends failed notifies once (``handover.ops.notify``); retries stay quiet.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from handover.core.contracts import RunContext
from handover.core.errors import DATA_FAULTS, DatabaseFault, TransientFault
from handover.core.paths import PROJECT_ROOT
from handover.ops.notify import HandoverNotifier

log = logging.getLogger(__name__)

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "handover",
    "retries": 3,
    "retry_delay": timedelta(seconds=10),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=5),
    # Only on failure, never on retry: exactly one notification per failed task instance.
    "on_failure_callback": [HandoverNotifier()],
}


def data_faults() -> tuple[type[BaseException], ...]:
    """Failures a retry cannot fix (``handover.core.errors.DATA_FAULTS``)."""
    return DATA_FAULTS


def call(fn: Callable[..., Any], *args: Any, label: str | None = None, **kwargs: Any) -> Any:
    """Run a library function as a task body; data faults fail without retries."""
    from airflow.sdk import get_current_context

    context: Any  # Airflow's Context (a TypedDict) plus the label this call adds
    try:
        context = get_current_context()
    except RuntimeError:  # called outside a task (tests, scripts): no context to label
        context = {}
    if label:
        context["part_label"] = label
    try:
        return _call(fn, context, *args, **kwargs)
    except BaseException as exc:
        ti = context.get("ti")
        final = (
            type(exc).__name__ == "AirflowFailException"
            or ti is None
            or getattr(ti, "try_number", 1) > getattr(ti, "max_tries", 0)
        )
        if final:
            mark_run_failed(args, ti, exc)
        raise


def mark_run_failed(args: tuple[Any, ...], ti: Any, exc: BaseException) -> None:
    """The run's row in handover_meta.run follows Airflow: a task that fails for good (no
    retry left) marks it failed, with the task and its one-line reason in the audit trail,
    so `cli summary`, the report and the plugin never call a failed run running or
    succeeded. A later successful publish (after a clear) marks it succeeded again."""
    # the run's context, the one argument that is a dict with a run_id (RunContext)
    ctx: RunContext | None = next(
        (cast(RunContext, a) for a in args if isinstance(a, dict) and "run_id" in a), None
    )
    if ctx is None:
        return
    try:
        from handover.db import ledger

        with ledger.connect() as conn, conn.transaction():
            cur = conn.execute(
                "UPDATE handover_meta.run SET status = 'failed', finished_at = now() "
                "WHERE run_id = %s",
                (ctx["run_id"],),
            )
            if cur.rowcount:
                ledger.audit(
                    conn,
                    "run_failed",
                    run_id=ctx["run_id"],
                    detail={
                        "task_id": getattr(ti, "task_id", None),
                        "map_index": getattr(ti, "map_index", None),
                        "error": _first_line(exc)[:1000],
                    },
                )
    except Exception as err:  # the books unreachable: the task's own error still stands
        log.warning(
            "could not mark run %s failed in handover_meta.run: %s",
            ctx["run_id"],
            type(err).__name__,
        )
        return
    if "system" not in ctx:
        return
    try:  # the failed run's report and Data Docs index, as far as it got
        from handover.flows.publishing import report_failed_run

        report_failed_run(ctx)
    except Exception as err:  # best effort on a failure path: the task's error stands
        log.warning(
            "could not write the failed run's report for %s: %s", ctx["run_id"], type(err).__name__
        )


def _call(fn: Callable[..., Any], context: Any, *args: Any, **kwargs: Any) -> Any:
    from airflow.sdk.exceptions import AirflowFailException

    measured = reset_peak_rss()
    at_start = peak_rss_mb() if measured else None  # right after a reset: the current RSS
    started = time.monotonic()
    try:
        out = fn(*args, **kwargs)
        release_memory()
        ti = context.get("ti")
        log.info(
            "task metrics: %s[%s] %.2f s, peak RSS %s MB (%s MB at start), Arrow pool %s",
            getattr(ti, "task_id", fn.__name__),
            getattr(ti, "map_index", -1),
            time.monotonic() - started,
            peak_rss_mb() if measured else "n/a",
            at_start if measured else "n/a",
            arrow_pool(),
        )
        return out
    except data_faults() as exc:
        # A known failure (gate, config, input): its one line is the whole story. Logged
        # as it is, and raised without the library's stack (`from None`): on-call reads
        # the reason and the link, not forty frames; an unexpected error keeps its trace.
        line = f"{type(exc).__name__}: {exc}"
        log.error("%s", line)
        raise AirflowFailException(line) from None
    except transient_faults() as exc:
        raise TransientFault(
            f"{type(exc).__name__}: {_first_line(exc)}; transient (database or object store "
            "unreachable): Airflow retries with backoff; if retries run out, check the service "
            "and clear the task"
        ) from _chained(exc)
    except database_faults() as exc:
        line = database_error_line(exc)
        if deterministic(exc):
            raise AirflowFailException(
                f"DatabaseFault: {line}; not retried: the same statement on the same data "
                "fails the same way (fix the data, mapping or schema, then clear the task)"
            ) from None
        raise DatabaseFault(line) from None


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (Linux ``clear_refs`` 5), so :func:`peak_rss_mb`
    measures one task even where several run in one process (``airflow dags test``).
    False where the kernel does not offer it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def release_memory() -> None:
    """Hand memory a finished task body freed back to the OS: Arrow's pool and glibc's
    heap keep freed blocks for reuse, so a process running task after task (``airflow
    dags test``, a long-lived worker) would start every task with the largest earlier
    task's footprint. Costs milliseconds."""
    import sys

    # No gc.collect(): with Airflow and GX loaded a full collection takes 0.2-0.3 s, a
    # second per four tasks; the frames and tables a task body drops are freed by
    # reference counting already.
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def arrow_pool() -> str:
    """The allocator behind Arrow's default pool in this process ("-" if none loaded)."""
    import sys

    if "pyarrow" not in sys.modules:
        return "-"
    return cast(str, sys.modules["pyarrow"].default_memory_pool().backend_name)


def peak_rss_mb() -> int | None:
    """Peak resident memory of this process since the last reset (``VmHWM``), in MB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def transient_faults() -> tuple[type[BaseException], ...]:
    import psycopg
    from botocore.exceptions import ConnectionError as BotoConnectionError

    return (psycopg.OperationalError, BotoConnectionError, ConnectionError, TimeoutError)


def database_faults() -> tuple[type[BaseException], ...]:
    import psycopg

    return (psycopg.Error,)


# SQLSTATE classes that a retry cannot change: data exception, integrity constraint
# violation, syntax error or access rule violation, feature not supported, WITH CHECK
# OPTION violation. Connection, resource, lock and cancel classes (08, 40, 53, 55, 57) are
# psycopg OperationalErrors and retried as transient; anything else is retried too.
DETERMINISTIC_SQLSTATE_CLASSES = ("22", "23", "42", "0A", "44")
# Except a unique violation: a concurrent writer of the same key (load's MERGE is not
# safe against one, see load._merge) is gone on the retry, which then finds the row.
RETRIED_SQLSTATES = ("23505",)


def deterministic(exc: BaseException) -> bool:
    """A database error that fails again on a retry, three times over and minutes later:
    on-call should see it at once."""
    state = getattr(getattr(exc, "diag", None), "sqlstate", None) or ""
    return state[:2] in DETERMINISTIC_SQLSTATE_CLASSES and state not in RETRIED_SQLSTATES


def _chained(exc: BaseException) -> BaseException | None:
    """The cause to chain to a task's own error: none for a database error, whose full
    text (DETAIL, CONTEXT) can quote a row; Airflow logs a chained cause whole."""
    return None if isinstance(exc, database_faults()) else exc


def database_error_line(exc: BaseException) -> str:
    """One line for a PostgreSQL error with no value from a row in it: its class, SQLSTATE,
    the table, column and constraint it names, where in handover it was raised, and the
    primary message unless it is a data exception (SQLSTATE class 22, which quotes the
    value it could not take). Left out: DETAIL (an integrity error's "Failing row contains
    (...)" or "Key (...)=(...)") and CONTEXT (the COPY line)."""
    import traceback

    diag = getattr(exc, "diag", None)
    state = getattr(diag, "sqlstate", None) or "?"
    parts = [f"{type(exc).__name__} (SQLSTATE {state})"]
    primary = getattr(diag, "message_primary", None)
    if primary and not state.startswith("22"):
        parts.append(primary.splitlines()[0])
    parts += [
        f"{what} {name}"
        for what, name in (
            ("table", getattr(diag, "table_name", None)),
            ("column", getattr(diag, "column_name", None)),
            ("constraint", getattr(diag, "constraint_name", None)),
        )
        if name
    ]
    ours = [
        f for f in traceback.extract_tb(exc.__traceback__) if "handover" in Path(f.filename).parts
    ]
    if ours:
        parts.append(f"at {Path(ours[-1].filename).name}:{ours[-1].lineno} ({ours[-1].name})")
    parts.append(
        "row values left out of this log (they can be personal data); the database "
        "server's own log has the statement"
    )
    return "; ".join(parts)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def source_dir(param: str | None) -> str:
    """The run's source folder: the run param, else HANDOVER_SOURCE_DIR, else the demo export."""
    return param or os.environ.get("HANDOVER_SOURCE_DIR") or str(PROJECT_ROOT / ".state" / "source")
