"""Airflow plugin for the people who run and audit the migration.

* an audit listener: every task start, success, retry and failure becomes an entry in
  the hash-chained ``handover_meta.audit_log`` (identifiers and states, never data);
* a "Validation page" link on every gate task instance, to that gate's page in the
  run's Data Docs;
* a web app under ``/handover`` (the migration ledger of a run, the run's Data Docs and
  reports served from the lake), shown as a "Migration ledger" tab on every DAG run and
  in the navigation.

Airflow imports this module in every process, task processes included, so it stays
cheap: the web app (FastAPI, database and lake access) is built only when the API server
asks for ``fastapi_apps``; the listener imports the library only when an event fires.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # Airflow adds the plugins folder, but not in every process
    sys.path.append(_HERE)

from airflow.plugins_manager import AirflowPlugin  # noqa: E402 - after the sys.path line above
from handover_ui.links import ValidationPageLink  # noqa: E402 - importable only after sys.path line
from handover_ui.listener import audit_listener  # noqa: E402 - importable only after sys.path line

LEDGER_HREF = "handover/ledger?dag_id={DAG_ID}&run_id={RUN_ID}"


class HandoverPlugin(AirflowPlugin):
    name = "handover"
    listeners = [audit_listener]
    global_operator_extra_links = [ValidationPageLink()]
    external_views = [
        {
            "name": "Migration ledger",
            "href": LEDGER_HREF,
            "destination": "dag_run",
            "url_route": "handover-run-ledger",
        },
        {
            "name": "Migration runs",
            "href": "handover/ledger",
            "destination": "nav",
            "category": "browse",
            "url_route": "handover-ledger",
        },
    ]

    @property
    def fastapi_apps(self) -> list[dict]:  # type: ignore[override]
        """Built on first use, i.e. only in the API server."""
        apps = self.__dict__.get("_fastapi_apps")
        if apps is None:
            from handover_ui.app import app_spec

            apps = self.__dict__["_fastapi_apps"] = [app_spec()]
        return apps
