"""Glue between Airflow tasks and the library: faults, labels and defaults.

Data faults (a failed gate, bad configuration, a broken export) fail a task at once:
retrying cannot fix them, and a retry storm hides the one line that says what to do.
Transient faults (a dropped connection) keep Airflow's retries with backoff.
Either way, a task that ends failed notifies once (``handover.notify``); retries stay quiet.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from handover.notify import HandoverNotifier

PROJECT_ROOT = Path(__file__).resolve().parents[2]

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
    from handover.backup import LifecycleError
    from handover.config import ConfigError
    from handover.gates import SuiteError
    from handover.mapping import MappingError
    from handover.pipeline import GateFailed, SourceError

    return (ConfigError, GateFailed, SourceError, MappingError, SuiteError, LifecycleError,
            FileNotFoundError)


def call(fn: Callable[..., Any], *args: Any, label: str | None = None, **kwargs: Any) -> Any:
    """Run a library function as a task body; data faults fail without retries."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowFailException

    if label:
        get_current_context()["part_label"] = label
    try:
        return fn(*args, **kwargs)
    except data_faults() as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
    except transient_faults() as exc:
        raise TransientFault(
            f"{type(exc).__name__}: {_first_line(exc)}; transient (database or object store "
            "unreachable): Airflow retries with backoff; if retries run out, check the service "
            "and clear the task") from exc


class TransientFault(RuntimeError):
    """A service was unreachable; the task is retried (one line for the log and the alert)."""


def transient_faults() -> tuple[type[BaseException], ...]:
    import psycopg
    from botocore.exceptions import ConnectionError as BotoConnectionError

    return (psycopg.OperationalError, BotoConnectionError, ConnectionError, TimeoutError)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def source_dir(param: str | None) -> str:
    """The run's source folder: the run param, else HANDOVER_SOURCE_DIR, else the demo export."""
    return param or os.environ.get("HANDOVER_SOURCE_DIR") or str(PROJECT_ROOT / ".state" / "source")
