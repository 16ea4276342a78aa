"""docs/reliability.md matches the tests: every test it names exists, every fault and
corpus test is named, and its "today" column says xfail exactly where the test is xfail.

Test files are read with `ast`, not imported, so this stays a fast unit test: test
functions are `def test_*`; corpus kinds are the `Kind("<id>", ...)` entries of
test_corpus.py (an `xfail=` argument marks a known gap); other parameters come from
`pytest.mark.parametrize` literals.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
COVERED = (
    "tests/integration/test_faults.py",
    "tests/e2e/test_faults_airflow.py",
    "tests/integration/test_corpus.py",
)
CORPUS = "tests/integration/test_corpus.py"
NAME = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:\[([\w-]+)\])?`")


def _is_xfail(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Attribute) and target.attr == "xfail"


def _params(decorators: list[ast.expr]) -> set[str]:
    ids: set[str] = set()
    for d in decorators:
        if (
            isinstance(d, ast.Call)
            and isinstance(d.func, ast.Attribute)
            and d.func.attr == "parametrize"
            and len(d.args) >= 2
            and isinstance(d.args[1], ast.List | ast.Tuple)
        ):
            ids |= {
                e.value
                for e in d.args[1].elts
                if isinstance(e, ast.Constant) and isinstance(e.value, str)
            }
    return ids


def _tests(path: str) -> dict[str, dict]:
    """Test functions of a file: {name: {"xfail": bool, "params": {id: xfail}}}."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            out[node.name] = {
                "xfail": any(_is_xfail(d) for d in node.decorator_list),
                "params": dict.fromkeys(_params(node.decorator_list), False),
            }
    if path == CORPUS:
        kinds = {}
        for call in ast.walk(tree):
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Name)
                and call.func.id == "Kind"
                and call.args
                and isinstance(call.args[0], ast.Constant)
            ):
                kinds[call.args[0].value] = any(k.arg == "xfail" for k in call.keywords)
        out["test_bad_input"]["params"] = kinds
    return out


def _rows() -> list[tuple[str, str, str | None, bool]]:
    """(file, function, parameter, says xfail) of every table row naming a test."""
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        names = NAME.findall(cells[-1]) if cells else []
        if len(names) != 1:
            continue
        today = cells[-2] if len(cells) >= 2 else ""
        path, func, param = names[0]
        rows.append((path, func, param or None, today.startswith("xfail")))
    return rows


@pytest.fixture(scope="module")
def rows():
    found = _rows()
    assert len(found) >= 40, "docs/reliability.md lost its tables"
    return found


def test_every_named_test_exists(rows):
    missing = []
    for path, func, param, _ in rows:
        if not (ROOT / path).is_file():
            missing.append(f"{path} (no such file)")
            continue
        tests = _tests(path)
        if func not in tests:
            missing.append(f"{path}::{func}")
        elif param is not None and param not in tests[func]["params"]:
            missing.append(f"{path}::{func}[{param}]")
    assert missing == [], f"docs/reliability.md names tests that do not exist: {missing}"


def test_every_fault_and_corpus_test_is_in_the_doc(rows):
    named = {(p, f) for p, f, _, _ in rows}
    kinds = {k for p, f, k, _ in rows if p == CORPUS and f == "test_bad_input" and k}
    absent = [
        f"{path}::{func}" for path in COVERED for func in _tests(path) if (path, func) not in named
    ]
    absent += [
        f"{CORPUS}::test_bad_input[{k}]"
        for k in _tests(CORPUS)["test_bad_input"]["params"]
        if k not in kinds
    ]
    assert absent == [], f"add these to docs/reliability.md: {absent}"


def test_today_column_says_xfail_exactly_for_xfail_tests(rows):
    wrong = []
    for path, func, param, says_xfail in rows:
        tests = _tests(path)
        if func not in tests:
            continue
        is_xfail = tests[func]["xfail"] or bool(tests[func]["params"].get(param, False))
        if says_xfail != is_xfail:
            wrong.append(
                f"{path}::{func}{f'[{param}]' if param else ''}: doc says "
                f"{'xfail' if says_xfail else 'passes'}, test is "
                f"{'xfail' if is_xfail else 'not xfail'}"
            )
    assert wrong == [], wrong
