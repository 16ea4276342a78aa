"""`handover check`, the dry-run on a table's sample rows: values failing their type rule
(with counts, against the tolerance), the share of rows the cleansing rules would
quarantine, and values a mapping transform cannot convert."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from handover.ops.check_result import CheckResult

if TYPE_CHECKING:
    import pandas as pd

    from handover.config.model import SourceConfig

# text(column): the sample's column as NFKC-normalised text
Text = Callable[[str], "pd.Series"]
# report(column, which values fail, what they fail): a problem, or a note within tolerance
Report = Callable[[str, "pd.Series", str], None]


def _share(bad: int, present: int) -> str:
    return f"{bad} of {present} values ({bad / max(present, 1):.1%})"


def type_problems(
    cfg: SourceConfig, table: str, frame: pd.DataFrame, res: CheckResult, tolerance: float
) -> None:
    """Values failing their date format, integer, decimal or code rule, with counts: above
    `tolerance` a problem (a wrong format), below it a note (rows cleansing quarantines)."""
    import pandas as pd
    import pyarrow as pa

    from handover.core.validators import normalise_text

    rules = cfg.rules(table)
    where = cfg.directory / "cleansing.yaml"

    def text(col: str) -> pd.Series:
        arr = normalise_text(
            pa.array(
                frame[col].astype(object).where(frame[col].notna(), None).tolist(), pa.string()
            )
        )
        return pd.Series(arr.to_pylist(), dtype=object)

    def report(col: str, bad: pd.Series, what: str) -> None:
        present = int(bad.size)
        n = int(bad.sum())
        if not n:
            return
        hit = bad.index[bad.to_numpy()]  # labels are positions in frame
        rows = frame["_source_row"].to_numpy()[hit] if "_source_row" in frame else []
        first = f", first at source row {int(rows[0])}" if len(rows) else ""
        line = f"{where}: table {table} column {col}: {_share(n, present)} {what}{first}"
        if n / max(present, 1) > tolerance:
            res.problems.append(line)
        else:
            res.notes.append(line + " (within tolerance: cleansing will quarantine these rows)")

    _date_problems(rules, frame, text, report)
    _number_problems(rules, frame, text, report)
    _code_problems(rules, frame, text, report)


def _date_problems(rules: dict[str, Any], frame: pd.DataFrame, text: Text, report: Report) -> None:
    from handover.stages.cleanse_dates import parse_dates

    for col, fmt in rules.get("dates", {}).items():
        if col in frame:
            t = text(col).dropna()
            shown = (
                f"any of the date formats {', '.join(repr(f) for f in fmt)}"
                if isinstance(fmt, list)
                else f"date format '{fmt}'"
            )
            report(col, parse_dates(t, fmt).isna(), f"do not match {shown}")


def _number_problems(
    rules: dict[str, Any], frame: pd.DataFrame, text: Text, report: Report
) -> None:
    import pandas as pd

    for col in rules.get("integers", []):
        if col in frame:
            t = text(col).dropna()
            num = pd.to_numeric(t, errors="coerce")
            report(col, ~(num.notna() & (num == num.round())), "are not whole numbers")
    for col, places in rules.get("decimals", {}).items():
        if col in frame:
            t = text(col).dropna().astype(str)
            ok = t.str.fullmatch(rf"[+-]?(?:\d+(?:\.\d{{0,{places}}})?|\.\d{{1,{places}}})")
            report(col, ~ok, f"are not numbers with at most {places} decimals")


def _code_problems(rules: dict[str, Any], frame: pd.DataFrame, text: Text, report: Report) -> None:
    for col, allowed in rules.get("codes", {}).items():
        if col in frame:
            t = text(col).dropna()
            report(
                col,
                ~t.isin([str(a) for a in allowed]),
                "are not among the codes cleansing.yaml allows",
            )


def rule_shares(
    cfg: SourceConfig, table: str, frame: pd.DataFrame, exported_at: pd.Timestamp, res: CheckResult
) -> None:
    """Dry-run the table's cleansing rules on the sample, as cleanse would (parents and
    survivorship aside: they need the whole export): the share of rows each reason would
    quarantine, as a note per table; above the quality gate's bound (catalog
    max_quarantine_share) a problem, since the run would fail there."""
    from handover.flows.gating import (
        MAX_QUARANTINE_SHARE,
        MIN_QUARANTINED_FOR_SHARE,
        NOT_FORMAT_REASONS,
    )
    from handover.stages.cleanse import validate

    if frame.empty:
        return
    rules = {k: v for k, v in cfg.rules(table).items() if k != "parent"}
    key = cfg.table(table)["key"]
    typed, verdict = validate(
        frame.astype(object).where(frame.notna(), None), rules, key=key, exported_at=exported_at
    )
    del typed
    reasons: dict[tuple[str, str], int] = {}
    for reason, fld in zip(verdict.reason, verdict.field, strict=True):
        if reason is not None:
            reasons[(reason, fld)] = reasons.get((reason, fld), 0) + 1
    n = len(frame)
    counted = sum(c for (r, _), c in reasons.items() if r not in NOT_FORMAT_REASONS)
    top = sorted(reasons.items(), key=lambda kv: -kv[1])[:3]
    said = ", ".join(f"{r} {f} {c} ({c / n:.1%})" for (r, f), c in top)
    if verdict.normalised:
        res.notes.append(
            f"table {table}: cleansing normalises {verdict.normalised} of {n} "
            "sample rows (kept, counted in the ledger)"
        )
    if not reasons:
        return
    bound = float(cfg.table(table).get("max_quarantine_share", MAX_QUARANTINE_SHARE))
    line = (
        f"{cfg.directory / 'cleansing.yaml'}: table {table}: the rules would quarantine "
        f"{sum(reasons.values())} of {n} sample rows ({sum(reasons.values()) / n:.1%}); "
        f"top: {said}"
    )
    if counted / n > bound and counted >= min(MIN_QUARANTINED_FOR_SHARE, n):
        res.problems.append(
            f"{line}; above the quality gate's bound of {bound:.0%} "
            f"(catalog.yaml tables.{table}.max_quarantine_share): the run "
            "would fail; fix the rule or the bound"
        )
    else:
        res.notes.append(line)


def mapping_problems(
    cfg: SourceConfig, table: str, frame: pd.DataFrame, exported_at: pd.Timestamp, res: CheckResult
) -> None:
    from handover.core.errors import MappingError
    from handover.stages.cleanse import validate
    from handover.stages.mapping import field_values

    try:
        typed, verdict = validate(
            frame, cfg.rules(table), key=cfg.table(table)["key"], exported_at=exported_at
        )
    except Exception as exc:  # noqa: BLE001 - report, keep checking the other tables
        res.problems.append(
            f"{cfg.directory / 'cleansing.yaml'}: table {table}: cleansing "
            f"fails on the sample ({type(exc).__name__}: {exc})"
        )
        return
    clean = typed.loc[~verdict.failed].reset_index(drop=True)
    where = cfg.directory / "mapping.yaml"
    for target, spec in cfg.table_mapping(table)["fields"].items():
        try:
            field_values(clean, table, target, spec, partition="check")
        except MappingError as exc:
            detail = str(exc).split(": ", 1)[-1]
            col = spec["from"] if "concat" not in spec else "+".join(spec["concat"]["columns"])
            res.problems.append(f"{where}: table {table} column {col}: {detail}")
        except KeyError as exc:
            res.problems.append(
                f"{where}: table {table} field {target}: source column {exc} "
                "is missing from the sample"
            )
