"""The "Validation page" button on every gate task instance.

A global operator extra link: Airflow asks it for a URL in the API server whenever the
task instance page opens. It answers without any I/O, with a link into the plugin's web
app (``handover/validation``), which looks up the gate's Data Docs page of that run when
someone clicks. Tasks that are not gates get no link (an empty URL hides the button).
"""

from __future__ import annotations

from urllib.parse import urlencode

from airflow.sdk import BaseOperatorLink

GATE_PREFIX = "validate_"
APP_PREFIX = "handover"  # where handover_plugin mounts the web app


def validation_href(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """Relative to the UI's base URL (the UI sets <base href>), so a sub-path deployment works."""
    query = urlencode(
        {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": map_index}
    )
    return f"{APP_PREFIX}/validation?{query}"


class ValidationPageLink(BaseOperatorLink):
    """Links a gate task instance to its validation page in the run's Data Docs."""

    name = "Validation page"

    def get_link(self, operator, *, ti_key) -> str:
        if not str(ti_key.task_id).startswith(GATE_PREFIX):
            return ""
        return validation_href(ti_key.dag_id, ti_key.run_id, ti_key.task_id, ti_key.map_index)
