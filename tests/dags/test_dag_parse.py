"""Parse hygiene of dags/, in the manner of apache/airflow's test_example_dags.py.

The DagBag is loaded in a fresh interpreter whose metadata database is unreachable and
whose AIRFLOW_HOME is empty, both set before airflow is imported: a DAG file that
touched the database, a connection or a heavy library while parsing would show here.
"""

from __future__ import annotations

from pathlib import Path

from tests.dags.conftest import DAGS


def test_no_import_errors(parsed: dict):
    assert parsed["import_errors"] == {}


def test_every_dag_file_defines_a_dag(parsed: dict):
    files = {Path(d["fileloc"]).name for d in parsed["dags"].values()}

    assert files == {p.name for p in DAGS.glob("*.py") if not p.name.startswith("_")}


def test_customer_migration_exists(parsed: dict):
    assert "customer_migration" in parsed["dags"]


def test_gates_never_retry(parsed: dict):
    for dag_id, dag in parsed["dags"].items():
        gates = {t: r for t, r in dag["retries"].items() if t.startswith("validate_")}
        if dag_id == "customer_migration":
            assert len(gates) == 5
        assert gates and all(r == 0 for r in gates.values()), (dag_id, gates)


def test_other_tasks_retry(parsed: dict):
    for dag_id, dag in parsed["dags"].items():
        others = {t: r for t, r in dag["retries"].items() if not t.startswith("validate_")}
        assert others and all(r >= 1 for r in others.values()), (dag_id, others)


def test_dags_are_tagged_handover(parsed: dict):
    for dag_id, dag in parsed["dags"].items():
        assert "handover" in dag["tags"], dag_id


def test_parsing_imports_no_heavy_library(parsed: dict):
    assert parsed["heavy_before"] == []
    assert parsed["heavy_after"] == []
