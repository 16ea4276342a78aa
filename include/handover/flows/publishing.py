"""The run's documentation in the lake: the data-docs pages the gates write, published as the
run goes, and the reports written at the end of a run (published) or of a failed one."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from handover.core.contracts import RunContext
from handover.core.paths import PROJECT_ROOT
from handover.db import ledger
from handover.flows.common import _config, _lake
from handover.storage.lake import Lake, safe_run_id

log = logging.getLogger("handover")


def ui_url(path: str) -> str:
    """An absolute link into the Airflow UI (the log viewer makes URLs clickable):
    HANDOVER_UI_URL, else Airflow's own api base_url, else the api-server `make up` starts
    (127.0.0.1, HANDOVER_PORT)."""
    base = (
        os.environ.get("HANDOVER_UI_URL")
        or os.environ.get("AIRFLOW__API__BASE_URL")
        or f"http://127.0.0.1:{os.environ.get('HANDOVER_PORT', '8080')}"
    )
    return f"{base.rstrip('/')}/{path.lstrip('/')}"


def docs_dir_for(lake: Lake, run_id: str) -> Path:
    from handover.storage.lake import LocalLake

    if isinstance(lake, LocalLake):
        return lake.path(f"runs/{safe_run_id(run_id)}/docs")
    return PROJECT_ROOT / ".state" / "docs" / safe_run_id(run_id)


def publish_docs(lake: Lake, run_id: str, docs_dir: Path) -> None:
    """On an object-store lake, upload the Data Docs site built locally."""
    from handover.storage.lake import LocalLake

    if isinstance(lake, LocalLake):
        for folder in (docs_dir, docs_dir.with_name(f"{docs_dir.name}.gx")):
            lake.make_private(str(folder.relative_to(lake.root)))
        return
    if not docs_dir.is_dir():
        return
    lake.sync_dir(docs_dir, f"runs/{safe_run_id(run_id)}/docs")  # only what changed


def report_failed_run(ctx: RunContext) -> dict[str, Any]:
    """A failed run's report and Data Docs index, written when a task fails for good: what
    the run did before it stopped, where it stopped and why (the same line as the task's
    log and the ledger view). A later successful publish replaces both."""
    from handover.gates.docs import build_docs_index
    from handover.stages.report import write_reports

    run_id = ctx["run_id"]
    lake = _lake()
    docs_dir = docs_dir_for(lake, run_id)
    if docs_dir.is_dir():
        build_docs_index(docs_dir)
        publish_docs(lake, run_id, docs_dir)
    with ledger.connect() as conn, conn.transaction():
        paths = write_reports(conn, lake, _config(ctx["system"]), run_id)
    log.info("failed run %s: report %s", run_id, paths.get("report_html"))
    return paths


def publish(ctx: RunContext) -> dict[str, Any]:
    from handover.gates import docs_assets
    from handover.gates.docs import build_docs_index
    from handover.stages.report import write_reports

    run_id = ctx["run_id"]
    lake = _lake()
    docs_dir = docs_dir_for(lake, run_id)
    if docs_dir.is_dir():
        build_docs_index(docs_dir)
        bundled = docs_assets.bundle(docs_dir)  # opened from the lake, the site is whole
        log.info("data docs of %s: %s", run_id, bundled)
        publish_docs(lake, run_id, docs_dir)
    from handover.lifecycle.retention.run_end import destroy_run_exclusions

    # What may not move leaves the lake at the run's end: excluded rows are destroyed
    # before the run is called succeeded (a failure here fails publish, visibly).
    destroyed = destroy_run_exclusions(run_id, ctx["system"])
    with ledger.connect() as conn, conn.transaction():
        paths = write_reports(conn, lake, _config(ctx["system"]), run_id)
        ledger.audit(
            conn,
            "run_exclusions_destroyed",
            run_id=run_id,
            detail={
                k: destroyed[k]
                for k in (
                    "rows_destroyed_by_table_rule",
                    "raw_objects_rewritten",
                    "scope_keys_shredded",
                    "books_pseudonymised",
                )
            },
        )
        conn.execute(
            "UPDATE handover_meta.run SET status='succeeded', finished_at=now() WHERE run_id=%s",
            (run_id,),
        )
        ledger.audit(conn, "run_published", run_id=run_id, detail={"reports": paths})
    log.info("published run %s: %s", run_id, paths)
    return paths
