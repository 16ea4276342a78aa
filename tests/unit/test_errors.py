"""One place for every named failure (issue #25): handover.core.errors. The task glue
decides from it whether a failure is retried; a new exception class elsewhere would
escape that decision."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from handover.core import errors
from handover.ops import tasks

LIBRARY = Path(errors.__file__).resolve().parents[1]


def _exception_classes_outside_errors() -> list[str]:
    found = []
    for path in LIBRARY.rglob("*.py"):
        if path.name == "errors.py" and path.parent.name == "core":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            bases = {getattr(b, "id", None) or getattr(b, "attr", None) for b in node.bases}
            if any(str(b).endswith(("Error", "Exception", "Fault")) for b in bases if b):
                found.append(f"{path.relative_to(LIBRARY)}:{node.name}")
    return found


def test_every_named_failure_is_in_core_errors():
    assert _exception_classes_outside_errors() == []


def test_every_failure_says_what_it_is():
    for name, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, BaseException) and cls.__module__ == errors.__name__:
            assert (cls.__doc__ or "").strip(), name


def test_the_task_glue_fails_data_faults_without_retry():
    assert tasks.data_faults() == errors.DATA_FAULTS
    for cls in (errors.GateFailed, errors.ConfigError, errors.KeyringError, errors.BackupCorrupt):
        assert issubclass(cls, tasks.data_faults())
    for cls in (errors.TransientFault, errors.LakeError, errors.DatabaseFault):
        assert not issubclass(cls, tasks.data_faults())
