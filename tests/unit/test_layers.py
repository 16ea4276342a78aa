"""The library's layers, checked by tools (issue #25).

``lint-imports`` holds the layer contract in pyproject.toml: a layer imports only from the
layers below it, function-level imports included. These tests run it on the real tree,
show that an upward import added on purpose breaks it (naming both modules), and find
import cycles between modules, which the layer contract alone would not see inside a
layer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = ROOT / ".venv" / "bin" / "lint-imports"


def _lint(include: Path) -> subprocess.CompletedProcess[str]:
    exe = str(LINT_IMPORTS) if LINT_IMPORTS.exists() else shutil.which("lint-imports")
    assert exe, "lint-imports is not installed: run make setup"
    env = {**os.environ, "PYTHONPATH": str(include)}
    return subprocess.run(
        [exe, "--no-logo", "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_layer_contract_holds():
    proc = _lint(ROOT / "include")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path):
    """A stage that imports from the flows above it (the kind of shortcut that tied the
    old flat package in knots) fails the check, which names both modules."""
    include = tmp_path / "include"
    shutil.copytree(ROOT / "include" / "handover", include / "handover")
    reconcile = include / "handover" / "stages" / "reconcile.py"
    reconcile.write_text(
        reconcile.read_text() + "\n\ndef _shortcut():\n    from handover.flows import migration\n\n"
        "    return migration\n"
    )
    proc = _lint(include)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "handover.stages is not allowed to import handover.flows" in proc.stdout
    assert "handover.stages.reconcile -> handover.flows.migration" in proc.stdout


def _cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Every elementary cycle's first appearance in a depth-first walk (enough to name one)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.find_modules_directly_imported_by(m) & modules):
            if state.get(n) == 1:
                found.append(stack[stack.index(n) :] + [n])
            elif n not in state:
                walk(n)
        stack.pop()
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            walk(m)
    return found


def test_no_import_cycle_between_modules():
    sys.path.insert(0, str(ROOT / "include"))
    try:
        graph = grimp.build_graph("handover", cache_dir=None)
    finally:
        sys.path.remove(str(ROOT / "include"))
    modules = set(graph.modules)
    assert len(modules) > 40
    assert _cycles(graph, modules) == []


@pytest.mark.parametrize(
    "package",
    sorted(
        p.name
        for p in (ROOT / "include" / "handover").iterdir()
        if p.is_dir() and (p / "__init__.py").exists()
    ),
)
def test_no_module_over_500_lines(package: str):
    """A newcomer reads a module in one sitting: none is longer than 500 lines."""
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "include" / "handover" / package).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert long == {}


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = grimp.ImportGraph()
    for m in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(m)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.z")
    graph.add_import(importer="a.z", imported="a.x")
    assert _cycles(graph, {"a.x", "a.y", "a.z"}) == [["a.x", "a.y", "a.z", "a.x"]]
