"""The DAGs and the in-process runners run the same functions at each step of the gated
chain: ``flows.steps.MIGRATION``/``NIGHT`` (thin wrappers that import their flow when the
task runs) against ``runner.MIGRATION_STEPS``/``nightly.NIGHT_STEPS`` (the functions)."""

from __future__ import annotations

import ast
import dataclasses
import inspect

import pytest

from handover.flows import nightly, runner, steps
from handover.flows.gated_chain import ChainSteps


def _called(wrapper) -> tuple[str, str]:
    """(module alias, function) that a steps wrapper calls."""
    tree = ast.parse(inspect.getsource(wrapper))
    calls = [
        n.func
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
    ]
    assert len(calls) == 1, ast.dump(tree)
    return calls[0].value.id, calls[0].attr


@pytest.mark.parametrize(
    ("dag_chain", "direct", "module"),
    [
        (steps.MIGRATION, runner.MIGRATION_STEPS, "migration"),
        (steps.NIGHT, nightly.NIGHT_STEPS, "nightly"),
    ],
    ids=["migration", "nightly"],
)
def test_the_dag_runs_what_the_runner_runs(dag_chain, direct, module):
    from handover.flows import migration

    flows = {"migration": migration, "nightly": nightly}
    for field in dataclasses.fields(ChainSteps):
        alias, name = _called(getattr(dag_chain, field.name))
        target = getattr(flows[alias], name)
        assert target is getattr(direct, field.name), (module, field.name, alias, name)
