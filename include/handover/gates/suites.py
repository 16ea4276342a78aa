"""Suite files: ``<suites_dir>/<gate>/<table>.json`` read, checked and built into GX suites.

A gate is a named checkpoint in the pipeline (e.g. ``quality`` after cleansing); a suite is the
set of expectations for one table at one gate, kept as GX 1.x JSON. ``load_suite`` checks every
expectation (a typo must not silently weaken a gate); ``read_columns`` says which columns a
suite reads the values of.

Great Expectations takes seconds to import, so it is imported inside the functions that need
it: importing this module (e.g. from a DAG file the scheduler parses) stays cheap.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handover.core.errors import SuiteError

if TYPE_CHECKING:
    from great_expectations.core.expectation_suite import ExpectationSuite

from handover.gates.context import _lock, _quiet_gx_logging
from handover.gates.results import _MESSAGE_MAX

_SUITE_KEYS = frozenset({"name", "expectations", "meta", "notes", "id", "suite_parameters"})
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")

# Checked suite files, keyed by (resolved path, mtime_ns, size).
_checked_suites: dict[tuple[str, int, int], dict[str, Any]] = {}


def load_suite(suites_dir: Path, gate: str, table: str) -> dict[str, Any]:
    """Read and check ``suites_dir/<gate>/<table>.json``; return it as a dict.

    The file is GX 1.x's own serialisation of an ExpectationSuite. Every expectation is built
    here, because ``gx.ExpectationSuite`` merely logs and *drops* an expectation it cannot
    build: a typo in a suite would otherwise silently weaken the gate.

    Raises:
        SuiteError: one line naming the file, when it is missing, is not JSON, is not a suite,
            or holds an unknown expectation type or invalid kwargs.
    """
    _check_name("gate", gate)
    _check_name("table", table)
    path = Path(suites_dir) / gate / f"{table}.json"
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise SuiteError(f"no suite for gate {gate!r} table {table!r}: {path} not found") from None
    except OSError as exc:
        raise SuiteError(f"cannot read suite {path}: {exc.strerror or exc}") from None
    # Checking every expectation costs ~65 ms (pydantic per expectation), once per partition
    # per gate; the checked file is kept per process until it changes on disk.
    stamp = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _lock:
        cached = _checked_suites.get(stamp)
    if cached is None:
        cached = _check_suite(path)
        with _lock:
            _checked_suites[stamp] = cached
    return copy.deepcopy(cached)


# Expectations that read the frame's column names or row count, never a value.
_SHAPE_ONLY = frozenset(
    {
        "expect_table_columns_to_match_set",
        "expect_table_columns_to_match_ordered_list",
        "expect_table_column_count_to_equal",
        "expect_table_column_count_to_be_between",
        "expect_table_row_count_to_equal",
        "expect_table_row_count_to_be_between",
        "expect_column_to_exist",
    }
)
_COLUMN_KWARGS = ("column", "column_A", "column_B", "column_list")


def read_columns(suite: dict[str, Any]) -> set[str] | None:
    """The columns whose values some expectation of `suite` reads; None when one might read
    any column (a table-level expectation this function does not know). A gate needs only
    these columns' data: the others matter to it by name alone."""
    needed: set[str] = set()
    for item in suite["expectations"]:
        kwargs = item.get("kwargs") or {}
        if item["type"] in _SHAPE_ONLY:
            continue
        named = [kwargs[k] for k in _COLUMN_KWARGS if k in kwargs]
        if not named:
            return None
        for value in named:
            if isinstance(value, str):
                needed.add(value)
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                needed.update(value)
            else:
                return None
    return needed


def _check_suite(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SuiteError(f"suite {path} vanished while being read") from None
    except OSError as exc:
        raise SuiteError(f"cannot read suite {path}: {exc.strerror or exc}") from None
    try:
        suite = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SuiteError(
            f"suite {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise SuiteError(f"suite {path} must be an object with an 'expectations' list")
    unknown = sorted(set(suite) - _SUITE_KEYS)
    if unknown:
        raise SuiteError(f"suite {path} has unknown keys: {', '.join(unknown)}")

    _quiet_gx_logging()
    from great_expectations.exceptions.exceptions import GreatExpectationsError
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    for number, item in enumerate(suite["expectations"], start=1):
        where = f"suite {path} expectation #{number}"
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise SuiteError(f"{where} must be an object with a 'type' string")
        where += f" ({item['type']})"
        if not isinstance(item.get("kwargs", {}), dict):
            raise SuiteError(f"{where}: 'kwargs' must be an object")
        try:
            ExpectationConfiguration(**item).to_domain_obj()
        except TypeError as exc:  # unexpected top-level key in the expectation object
            raise SuiteError(f"{where}: {_one_line(str(exc))}") from None
        except GreatExpectationsError as exc:  # unknown type: "expect_foo not found"
            raise SuiteError(f"{where}: unknown expectation type ({_one_line(str(exc))})") from None
        except ValueError as exc:  # pydantic: missing or invalid kwargs
            raise SuiteError(f"{where}: {_pydantic_summary(exc)}") from None
    return suite


def _build_suite(suite_dict: dict[str, Any], name: str) -> ExpectationSuite:
    """Turn a checked suite dict into a gx.ExpectationSuite named ``<gate>.<table>``.

    The name in the file is ignored: the Data Docs layout (``validations/<gate>/<table>/...``)
    depends on the suite name, so it is derived from where the file lives. Ids are dropped so
    the same file always serialises the same way, whichever process stores it.
    """
    from great_expectations.core.expectation_suite import ExpectationSuite

    expectations = [
        {k: v for k, v in item.items() if k != "id"} for item in suite_dict["expectations"]
    ]
    return ExpectationSuite(
        name=name,
        expectations=expectations,
        suite_parameters=suite_dict.get("suite_parameters") or {},
        meta=dict(suite_dict.get("meta") or {}),
        notes=suite_dict.get("notes"),
    )


def _check_name(what: str, value: str) -> None:
    """Gate and table names become file and docs path components: keep them plain."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise SuiteError(f"invalid {what} name {value!r}: use letters, digits, '_' or '-'")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:_MESSAGE_MAX]


def _pydantic_summary(exc: Exception) -> str:
    """``column: field required; regex: field required`` from a pydantic error, else its text."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        seen: dict[str, str] = {}
        for err in errors():
            loc = ".".join(str(part) for part in err.get("loc", ())) or "kwargs"
            seen.setdefault(loc, str(err.get("msg", "invalid")))
        if seen:
            return _one_line("; ".join(f"{loc}: {msg}" for loc, msg in seen.items()))
    return _one_line(str(exc))
