"""The DagBag of dags/, parsed once in a clean interpreter, for the DAG tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
HEAVY = ("great_expectations", "pandas", "pyarrow", "psycopg")

PROBE = r"""
import json, sys
heavy = %(heavy)r
from airflow.dag_processing.dagbag import DagBag

before = {m for m in heavy if m in sys.modules}
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({
    "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
    "heavy_before": sorted(before),
    "heavy_after": sorted(m for m in heavy if m in sys.modules),
    "dags": {
        dag.dag_id: {
            "tags": sorted(dag.tags),
            "fileloc": dag.fileloc,
            "retries": {t.task_id: t.retries for t in dag.tasks},
            "max_active_runs": dag.max_active_runs,
            "owners": sorted({t.owner for t in dag.tasks}),
            "failure_callbacks": sorted(
                {type(cb).__name__ for t in dag.tasks for cb in (t.on_failure_callback or [])}
            ),
            "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
            "group": {
                t.task_id: (t.task_group.group_id if t.task_group else None) for t in dag.tasks
            },
            "map_index_template": {
                t.task_id: getattr(t, "map_index_template", None) for t in dag.tasks
            },
        }
        for dag in bag.dags.values()
    },
}))
"""


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HANDOVER", "PYTHON"))
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://nobody@127.0.0.1:1/none",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "PYTHONPATH": str(ROOT / "include"),
            "PYTHONWARNINGS": "ignore",
        }
    )
    python = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
    proc = subprocess.run(
        [python, "-c", PROBE % {"heavy": HEAVY}, str(DAGS)],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
