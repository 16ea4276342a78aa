"""DAG policy (issue #25): every DAG gets its header from one place, and the two flows run
the one gated chain wired by ``handover.ops.chain.gated_chain``, with callables passed by
reference. Reads the DagBag that tests/dags/test_dag_parse.py parses in a clean process."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.dags.conftest import DAGS

CHAIN = [
    "validate_intake",
    "comply",
    "validate_compliance",
    "resolve_customers",
    "cleanse",
    "validate_quality",
    "map_protect",
    "validate_contract",
    "load",
]
FLOWS = ("customer_migration", "nightly_sync")
PLAN = {"plan_run", "plan_night"}  # every step reads the run's plan (ctx) too


def _upstream(parsed: dict, dag_id: str) -> dict[str, list[str]]:
    """Each task's upstream tasks, leaving out the plan task every step depends on."""
    return {
        t: [u for u in ups if u not in PLAN]
        for t, ups in parsed["dags"][dag_id]["upstream"].items()
    }


def test_every_dag_has_the_shared_header(parsed: dict):
    for dag_id, dag in parsed["dags"].items():
        assert dag["max_active_runs"] == 1, dag_id
        assert dag["owners"] == ["handover"], dag_id
        assert dag["failure_callbacks"] == ["HandoverNotifier"], dag_id


@pytest.mark.parametrize("dag_id", FLOWS)
def test_both_flows_run_the_same_gated_chain(parsed: dict, dag_id: str):
    dag = parsed["dags"][dag_id]
    for task_id in CHAIN:  # in no collapsed group: on-call sees a red gate in the grid
        assert dag["group"][task_id] is None, (dag_id, task_id)
    up = _upstream(parsed, dag_id)
    assert up["comply"] == ["validate_intake"]
    assert up["validate_compliance"] == ["comply"]
    assert up["resolve_customers"] == ["validate_compliance"]
    assert up["cleanse"] == ["resolve_customers", "validate_compliance"]
    assert up["validate_quality"] == ["cleanse"]
    assert up["map_protect"] == ["validate_quality"]
    assert up["validate_contract"] == ["map_protect"]
    assert up["load"] == ["validate_contract"]
    assert up["validate_intake"] == ["list_partitions"]
    assert up["validate_reconciliation"] == ["reconcile_table"]
    assert up["publish"] == ["validate_reconciliation"]


def test_the_chains_are_identical_but_for_their_own_steps(parsed: dict):
    migration, night = (_upstream(parsed, d) for d in FLOWS)
    assert {t: migration[t] for t in CHAIN} == {t: night[t] for t in CHAIN}
    assert migration["reconcile_table"] == ["list_tables", "load"]
    assert night["apply_deletions"] == ["list_tables", "load"]
    assert night["reconcile_table"] == ["apply_deletions", "list_tables"]


def test_mapped_steps_are_labelled_table_partition(parsed: dict):
    for dag_id in FLOWS:
        templates = parsed["dags"][dag_id]["map_index_template"]
        for task_id in [*CHAIN, "reconcile_table", "validate_reconciliation"]:
            if task_id == "resolve_customers":
                continue
            assert templates[task_id] == "{{ part_label }}", (dag_id, task_id)


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


@pytest.mark.parametrize("path", sorted(DAGS.glob("*.py")), ids=lambda p: p.name)
def test_no_callable_is_chosen_by_string(path: Path):
    """No getattr/import_module/__import__ in a DAG file or the chain: every task body is a
    function a reader (and mypy) can follow."""
    chain = DAGS.parent / "include" / "handover" / "ops" / "chain.py"
    for file in (path, chain):
        for call in _calls(ast.parse(file.read_text())):
            name = getattr(call.func, "id", None) or getattr(call.func, "attr", None)
            assert name not in {"getattr", "import_module", "__import__"}, (file.name, name)


@pytest.mark.parametrize("dag_id", FLOWS)
def test_flow_dags_wire_the_chain_through_the_factory(dag_id: str):
    """Neither flow's DAG file defines a gate or a stage task of the chain itself."""
    tree = ast.parse((DAGS / f"{dag_id}.py").read_text())
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert not names & {"gate", "stage", "comply", "cleanse", "load", "publish"}, names
    called = {
        getattr(c.func, "attr", None) for c in _calls(tree) if isinstance(c.func, ast.Attribute)
    }
    assert {"gated_chain", "reconcile_and_publish", "dag_header"} <= called
