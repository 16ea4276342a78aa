"""What leaves a gate: ``GateResult`` and the scrubbing that keeps data values out of it.

The data holds PII (names, ID numbers, MSISDNs), so nothing that leaves a gate may carry a
cell value: every GX result is scrubbed before it is stored or rendered (observed values are
kept only for expectations whose observation is a count, a proportion or a column name;
exception messages are redacted and tracebacks withheld), because some expectations report
observations such as a column's max or its distinct values, and errors quote the value they
failed on.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
    )

#: Keys of an expectation's ``result`` that are counts or percentages, never values.
_COUNT_KEYS = frozenset(
    {
        "element_count",
        "unexpected_count",
        "unexpected_percent",
        "unexpected_percent_total",
        "unexpected_percent_nonmissing",
        "missing_count",
        "missing_percent",
    }
)

#: Expectations whose ``observed_value`` (and ``details``) is a count, a proportion or a list of
#: column names. Any other observation (min, max, median, distinct values, ...) may be a cell
#: value and is withheld.
_SAFE_OBSERVATIONS = frozenset(
    {
        "expect_table_row_count_to_be_between",
        "expect_table_row_count_to_equal",
        "expect_table_column_count_to_be_between",
        "expect_table_column_count_to_equal",
        "expect_table_columns_to_match_set",
        "expect_table_columns_to_match_ordered_list",
        "expect_column_to_exist",
        "expect_column_unique_value_count_to_be_between",
        "expect_column_proportion_of_unique_values_to_be_between",
        "expect_column_proportion_of_non_null_values_to_be_between",
    }
)

#: Expectation kwargs that say nothing about the rule itself.
_NOISE_KWARGS = frozenset(
    {"batch_id", "column", "result_format", "catch_exceptions", "include_config"}
)

_DETAIL_MAX = 160
_MESSAGE_MAX = 200
_SUMMARY_MAX_FAILURES = 3


@dataclass(frozen=True)
class FailedExpectation:
    """One failed expectation, described without any data values."""

    expectation: str
    column: str | None
    unexpected_count: int | None
    unexpected_percent: float | None
    detail: str

    def describe(self) -> str:
        """Say what failed in a few words, for log lines and task failure messages."""
        on = f" on {self.column}" if self.column else ""
        if self.unexpected_count is not None:
            n = self.unexpected_count
            rows = "1 row fails" if n == 1 else f"{n} rows fail"
            pct = ""
            if self.unexpected_percent is not None:
                pct = f" ({_fmt_percent(self.unexpected_percent)})"
            return f"{rows} {self.expectation}{on}{pct}"
        return f"{self.expectation}{on} failed ({self.detail})"


@dataclass(frozen=True)
class GateResult:
    """The outcome of one gate on one partition: small, JSON-safe and free of data values.

    ``docs_path`` is the validation's page in the Data Docs site, relative to the docs root, so
    a UI can link to it; it is None when no docs were asked for or they could not be written.
    """

    gate: str
    table: str
    partition: str
    success: bool
    evaluated: int
    failed: list[FailedExpectation] = field(default_factory=list)
    rows: int = 0
    docs_path: str | None = None

    def summary(self) -> str:
        """One line for the task log and the failure message."""
        head = f"{self.gate} gate"
        where = f"for {self.table} partition {self.partition}"
        if self.success:
            return f"{head} passed {where} ({self.evaluated} expectations, {self.rows} rows)"
        parts = [f.describe() for f in self.failed[:_SUMMARY_MAX_FAILURES]]
        if len(self.failed) > _SUMMARY_MAX_FAILURES:
            parts.append(f"and {len(self.failed) - _SUMMARY_MAX_FAILURES} more")
        if self.docs_path:
            parts.append(f"see {self.docs_path}")
        return f"{head} failed {where}: " + "; ".join(parts)

    def to_manifest(self) -> dict[str, Any]:
        """The result as a plain dict for the run manifest (JSON-safe, no data values)."""
        return {
            "gate": self.gate,
            "table": self.table,
            "partition": self.partition,
            "success": self.success,
            "evaluated": self.evaluated,
            "rows": self.rows,
            "failed": [asdict(f) for f in self.failed],
            "docs_path": self.docs_path,
        }


def _scrub(result: ExpectationSuiteValidationResult, allowed: set[str]) -> None:
    """Remove anything that may be a cell value from ``result``, in place.

    ``allowed`` are strings known not to be data (the column names), kept when an error
    message quotes them.
    """
    for evr in result.results:
        config = evr.expectation_config
        kind = config.type if config is not None else ""
        raw = dict(evr.result or {})
        clean = {k: v for k, v in raw.items() if k in _COUNT_KEYS}
        if kind in _SAFE_OBSERVATIONS:
            for key in ("observed_value", "details"):
                if key in raw:
                    clean[key] = raw[key]
        evr.result = clean
        error = _first_error(evr.exception_info)
        if error is not None:
            evr.exception_info = {
                "raised_exception": True,
                "exception_message": _redact(error, allowed),
                "exception_traceback": _TRACEBACK_WITHHELD,
            }


def _first_error(info: dict[str, Any] | None) -> str | None:
    """The message of the first exception in ``exception_info``, or None if none was raised.

    GX uses two shapes: a flat ``{"raised_exception", "exception_message", ...}`` when the
    expectation itself failed, and ``{"<metric id>": {...flat...}}`` when a metric it needed
    could not be computed. Either way the result is flattened to the first shape (the one the
    Data Docs renderer reads first) with the message redacted and the traceback withheld.
    """
    if not info:
        return None
    candidates = [info] if "raised_exception" in info else list(info.values())
    for item in candidates:
        if isinstance(item, dict) and item.get("raised_exception"):
            return str(item.get("exception_message") or "error")
    return None


def _gate_result(
    result: ExpectationSuiteValidationResult,
    gate: str,
    table: str,
    partition: str,
    rows: int,
    docs_path: str | None,
) -> GateResult:
    failed = [_failed(evr) for evr in result.results if not evr.success]
    return GateResult(
        gate=gate,
        table=table,
        partition=partition,
        success=bool(result.success),
        evaluated=int(result.statistics.get("evaluated_expectations") or len(result.results)),
        failed=failed,
        rows=int(rows),
        docs_path=docs_path,
    )


def _failed(evr: Any) -> FailedExpectation:
    """Describe one failed (already scrubbed) expectation result."""
    config = evr.expectation_config
    kwargs = dict(config.kwargs) if config is not None else {}
    res = evr.result or {}
    column = kwargs.get("column")
    count = _as_int(res.get("unexpected_count"))
    mismatched = (res.get("details") or {}).get("mismatched")
    if isinstance(mismatched, dict):  # column set/list: name the columns, not the whole list
        parts = [f"{k}: {', '.join(map(str, v))}" for k, v in mismatched.items() if v]
        if not parts:
            parts = [f"order differs: {_short(mismatched)}"]
    else:
        parts = [f"{k}={_short(v)}" for k, v in kwargs.items() if k not in _NOISE_KWARGS]
        if count is not None and "mostly" not in kwargs:
            parts.append("mostly=1.0")
        if "observed_value" in res:
            parts.append(f"observed={_short(res['observed_value'])}")
    error = _first_error(evr.exception_info)
    if error is not None:
        parts.append(f"raised: {error}")
    detail = ", ".join(parts)
    if len(detail) > _DETAIL_MAX:
        detail = detail[: _DETAIL_MAX - 3] + "..."
    return FailedExpectation(
        expectation=config.type if config is not None else "unknown",
        column=str(column) if column is not None else None,
        unexpected_count=count,
        unexpected_percent=_as_percent(res.get("unexpected_percent")),
        detail=detail,
    )


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
#: Quoted words an error may contain that are never data: operators and Python type names.
_SAFE_QUOTED = re.compile(
    r"^(?:[<>=!+*/%&|^~-]{1,3}|str|int|float|bool|bytes|NoneType|NAType|NaTType|list|dict|tuple"
    r"|set|Timestamp|Timedelta|datetime(?:\.date(?:time)?)?|date|Decimal|decimal\.Decimal)$"
)
_TRACEBACK_WITHHELD = "(traceback withheld: it may quote data values)"


def _redact(message: str, allowed: set[str]) -> str:
    """First line of an error message with anything that may be data blanked out.

    Errors quote the offending value ("could not convert string to float: '1381234567x'"),
    so quoted text that is not a column name, long digit runs and non-ASCII text (names and
    addresses here are Chinese) are replaced.
    """
    lines = message.strip().splitlines()
    line = lines[0] if lines else ""

    def keep(match: re.Match[str]) -> str:
        inner = match.group(0)[1:-1]
        return match.group(0) if inner in allowed or _SAFE_QUOTED.match(inner) else "<redacted>"

    line = _QUOTED.sub(keep, line)
    line = re.sub(r"[^\x00-\x7f]+", "<redacted>", line)
    line = re.sub(r"\d{3,}", "<redacted>", line)
    return line[:_MESSAGE_MAX]


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _as_percent(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return round(number, 4) if math.isfinite(number) else None


def _fmt_percent(value: float | None) -> str:
    if value is None:
        return "n/a"
    if 0 < value < 0.1:
        return "<0.1%"
    return f"{value:.1f}%"
