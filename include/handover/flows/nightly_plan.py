"""Planning a night of the nightly sync: which legacy day a data interval is, where its change
set lives, whether the night may run (the migration done, yesterday applied), and the run's
context."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from handover.core.contracts import RunContext
from handover.core.errors import NightOrderError, SourceError
from handover.core.paths import PROJECT_ROOT
from handover.db import ledger
from handover.flows.common import _config

log = logging.getLogger("handover")


DAG_ID = "nightly_sync"
LEGACY_TZ = "Asia/Shanghai"
TIME_FMT = "%Y-%m-%d %H:%M:%S"
DELETED = "deleted"  # ledger partition of a table's deletion records
GATES = ("intake", "compliance", "quality", "contract")


def legacy_interval(start: Any, end: Any, tz: str = LEGACY_TZ) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Airflow's (aware) data interval as the legacy system's naive local times."""

    def local(t: Any) -> pd.Timestamp:
        t = pd.Timestamp(t)
        return t.tz_convert(tz).tz_localize(None) if t.tzinfo is not None else t

    return local(start), local(end)


def night_run_id(start: pd.Timestamp, dag_id: str = DAG_ID) -> str:
    return f"{dag_id}__{start:%Y-%m-%d}"


def change_set_dir(changes_dir: str | Path, start: pd.Timestamp) -> Path:
    return Path(changes_dir) / f"{start:%Y-%m-%d}"


def change_set_ready(
    changes_dir: str | Path, data_interval_start: Any, data_interval_end: Any
) -> bool:
    """For the sensor: has the legacy system delivered this night's change set?"""
    start, _ = legacy_interval(data_interval_start, data_interval_end)
    return (change_set_dir(changes_dir, start) / "change_manifest.json").is_file()


def changes_dir(param: str | None) -> str:
    """The run's change sets: the run param, else HANDOVER_CHANGES_DIR, else the demo's."""
    import os

    return (
        param or os.environ.get("HANDOVER_CHANGES_DIR") or str(PROJECT_ROOT / ".state" / "changes")
    )


def state_file(state_dir: str | Path, table: str) -> Path:
    """A table's CSV in the legacy state folder, as its export_manifest.json names it."""
    manifest = json.loads((Path(state_dir) / "export_manifest.json").read_text(encoding="utf-8"))
    name = manifest.get("tables", {}).get(table, {}).get("file", f"{table}.csv")
    return Path(state_dir) / name


def _succeeded(conn, run_id: str) -> str | None:
    row = conn.execute("SELECT status FROM handover_meta.run WHERE run_id=%s", (run_id,)).fetchone()
    return row[0] if row else None


# ---------------------------------------------------------------- plan
def plan_night(
    *,
    dag_id: str = DAG_ID,
    system: str,
    changes_dir: str,
    data_interval_start: Any,
    data_interval_end: Any,
    airflow_run_id: str | None = None,
) -> RunContext:
    """Check the night's change set and its place in the sequence, then open the run."""
    cfg = _config(system)
    start, end = legacy_interval(data_interval_start, data_interval_end)
    if start != start.normalize() or end - start != pd.Timedelta(days=1):
        raise SourceError(
            f"data interval {start} - {end} (legacy time) is not one whole legacy day; "
            "nightly_sync needs a daily schedule aligned on midnight Asia/Shanghai"
        )
    folder = change_set_dir(changes_dir, start)
    manifest_path = folder / "change_manifest.json"
    if not manifest_path.is_file():
        raise SourceError(
            f"{manifest_path}: change set of {start:%Y-%m-%d} not found; "
            "point the run's changes_dir at the legacy change sets"
        )
    raw = manifest_path.read_bytes()
    manifest = json.loads(raw)
    got = (manifest.get("interval_start"), manifest.get("interval_end"))
    if got != (start.strftime(TIME_FMT), end.strftime(TIME_FMT)):
        raise SourceError(
            f"{manifest_path}: covers {got[0]} - {got[1]}, but this run's "
            f"data interval is {start} - {end}; wrong folder?"
        )
    files: dict[str, dict[str, str]] = {}
    for table in cfg.tables:
        entry = manifest.get("tables", {}).get(table)
        if entry is None:
            raise SourceError(f"{manifest_path}: no entry for table {table}")
        files[table] = {"file": entry["file"], "deleted_file": entry["deleted_file"]}
        for name in files[table].values():
            if not (folder / name).is_file():
                raise SourceError(
                    f"{folder / name}: change file of table {table} "
                    "not found; the change set is incomplete"
                )
    state_dir = folder / manifest.get("state", "state")
    if not (state_dir / "export_manifest.json").is_file():
        raise SourceError(
            f"{state_dir}: legacy state as of {end} not found; the "
            "sync needs it for policy facts and to reconcile"
        )
    run_id = night_run_id(start, dag_id)
    with ledger.connect() as conn:
        ledger.ensure_schema(conn)  # handover_meta.tombstone included (meta.sql)
        _check_order(conn, changes_dir, start, end, dag_id)
        with conn.transaction():
            conn.execute(
                "INSERT INTO handover_meta.run (run_id, dag_id, source_system, source_manifest, "
                "exported_at, kind) VALUES (%s, %s, %s, %s, %s, 'nightly') ON CONFLICT (run_id) "
                "DO UPDATE SET status = 'running', finished_at = NULL, source_manifest = "
                "excluded.source_manifest",
                (run_id, dag_id, cfg.system, hashlib.sha256(raw).hexdigest(), end.to_pydatetime()),
            )
            ledger.audit(
                conn,
                "run_started",
                run_id=run_id,
                detail={
                    "dag_id": dag_id,
                    "system": cfg.system,
                    "source": str(folder),
                    "interval": [str(start), str(end)],
                    "airflow_run_id": airflow_run_id,
                },
            )
    log.info("night %s planned: change set %s", run_id, folder)
    return {
        "run_id": run_id,
        "dag_id": dag_id,
        "system": system,
        "changes_dir": str(changes_dir),
        "source_dir": str(folder),
        "state_dir": str(state_dir),
        "exported_at": str(end),
        "interval_start": str(start),
        "interval_end": str(end),
        "tables": cfg.tables,
        "files": files,
        "manifest_rows": {t: manifest["tables"][t]["rows"] for t in cfg.tables},
        "deleted_rows": {t: manifest["tables"][t]["deleted_rows"] for t in cfg.tables},
    }


MIGRATION_DAG = "customer_migration"


def _check_order(
    conn, changes_dir: str, start: pd.Timestamp, end: pd.Timestamp, dag_id: str
) -> None:
    # The migration's export, from migration runs only: corrections, subject requests,
    # restores and retention runs record their own times but are not exports.
    baseline = conn.execute(
        "SELECT max(exported_at) FROM handover_meta.run WHERE status = 'succeeded' AND "
        "(kind = 'migration' OR (kind IS NULL AND dag_id = %s))",
        (MIGRATION_DAG,),
    ).fetchone()[0]
    if baseline is None:
        raise NightOrderError(
            "no completed migration in this target: run customer_migration "
            "first; the nightly sync only carries changes after it"
        )
    if end <= pd.Timestamp(baseline):
        raise NightOrderError(
            f"night {start:%Y-%m-%d} ends before the migration's export "
            f"({baseline}); nothing to sync: start nightly_sync on the "
            "cut-over day"
        )
    prev = start - pd.Timedelta(days=1)
    if start > pd.Timestamp(baseline) and change_set_dir(changes_dir, prev).is_dir():
        status = _succeeded(conn, night_run_id(prev, dag_id))
        if status != "succeeded":
            raise NightOrderError(
                f"night {prev:%Y-%m-%d} has a change set but its sync is "
                f"{status or 'missing'}; nights run in order: run or clear that night first"
            )
