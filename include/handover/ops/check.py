"""`handover check`: is a source system's configuration ready for its real export?

The first thing an engineer runs after writing (or changing) a system's four YAML files,
and long before a migration touches the target: it validates the files, then dry-runs
them on the first N rows of every source table, the way extract, cleanse and map would,
and lists every problem it finds, one line each, naming file, table and column:

- columns the export has and the catalog does not (unclassified), and the reverse;
- catalogued columns no target field or policy rule uses (unmapped), unless the catalog
  marks them ``migrate: false``;
- type problems: values failing their date format, integers or decimals, with counts
  (a share above ``--tolerance`` is a wrong format; below it, rows cleansing will
  quarantine, reported as notes);
- codes without a lookup, and any other value a mapping transform cannot convert;
- gate suites that are missing or no longer match the catalog and mapping.

Exit status 0 when there is no problem, 1 otherwise. No row value is printed except code
values that have no lookup entry (as the migration itself would report them).

    python -m handover.ops.check --system legacy_bss --source-dir /exports/bss [--rows 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

GATES = ("intake", "compliance", "quality", "contract", "reconciliation")


@dataclass
class CheckResult:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rows_read: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _exported_at(source_dir: Path):
    import pandas as pd

    try:
        from handover.stages.cleanse import export_time

        manifest = json.loads((source_dir / "export_manifest.json").read_text(encoding="utf-8"))
        return export_time(manifest["exported_at"])
    except (OSError, ValueError, KeyError):
        return pd.Timestamp.now().floor("s")


def _used_columns(cfg, table: str) -> set[str]:
    """Columns a target field or a policy rule reads (what `unmapped` is measured against)."""
    from handover.stages.mapping_field import source_columns

    used: set[str] = set()
    for fspec in cfg.table_mapping(table)["fields"].values():
        used.update(source_columns(fspec))
    spec = cfg.table(table)
    for attr in ("customer_column", "event_time"):
        if spec.get(attr):
            used.add(spec[attr])
    obj, con = cfg.policy.get("objection"), cfg.policy.get("consent")
    if obj and obj["table"] == table:
        used.add(obj["column"])
    if con and con["table"] == table:
        used.update(con[k] for k in ("customer_column", "purpose_column", "granted_column"))
    return used


def _check_suites(cfg, res: CheckResult) -> None:
    from handover.config.target import target_columns
    from handover.flows.common import SUITES_DIR
    from handover.flows.gating import suites_dir_for

    for table in cfg.tables:
        for gate in GATES:
            base = suites_dir_for(str(cfg.directory), gate, table)
            path = base / gate / f"{table}.json"
            if not path.is_file():
                res.problems.append(
                    f"{SUITES_DIR / cfg.system / gate / (table + '.json')}: table {table}: no "
                    f"{gate} suite; run python scripts/scaffold_suites.py {cfg.system}"
                )
                continue
            if gate not in ("intake", "contract"):
                continue
            try:
                suite = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                res.problems.append(f"{path}: table {table}: suite is not valid JSON")
                continue
            want = (
                list(cfg.table(table)["columns"])
                if gate == "intake"
                else target_columns(cfg.table_mapping(table))
            )
            for exp in suite.get("expectations", []):
                if exp.get("type") != "expect_table_columns_to_match_set":
                    continue
                have = [c for c in exp.get("kwargs", {}).get("column_set", []) if c != "_basis"]
                if set(have) != set(want):
                    diff = sorted(set(have) ^ set(want))
                    res.problems.append(
                        f"{path}: table {table} column {diff[0]}: the {gate} suite's column set "
                        f"does not match {'catalog.yaml' if gate == 'intake' else 'mapping.yaml'}"
                        f"; re-run python scripts/scaffold_suites.py {cfg.system} --force "
                        "(or edit the suite)"
                    )


def _share(bad: int, present: int) -> str:
    return f"{bad} of {present} values ({bad / max(present, 1):.1%})"


def _type_problems(cfg, table: str, frame, res: CheckResult, tolerance: float) -> None:
    import pandas as pd
    import pyarrow as pa

    from handover.core.validators import normalise_text
    from handover.stages.cleanse_dates import parse_dates

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

    for col, fmt in rules.get("dates", {}).items():
        if col in frame:
            t = text(col).dropna()
            shown = (
                f"any of the date formats {', '.join(repr(f) for f in fmt)}"
                if isinstance(fmt, list)
                else f"date format '{fmt}'"
            )
            report(col, parse_dates(t, fmt).isna(), f"do not match {shown}")
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
    for col, allowed in rules.get("codes", {}).items():
        if col in frame:
            t = text(col).dropna()
            report(
                col,
                ~t.isin([str(a) for a in allowed]),
                "are not among the codes cleansing.yaml allows",
            )


def _rule_shares(cfg, table: str, frame, exported_at, res: CheckResult) -> None:
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


def _export_folder_problems(cfg, source_dir: Path, res: CheckResult) -> None:
    """What plan_run refuses before a run: no manifest, a file no table reads and no
    `ignore:` glob declares."""
    from handover.core.errors import SourceReadError
    from handover.sources.folder import check_export_files

    manifest = None
    path = source_dir / "export_manifest.json"
    if not path.is_file():
        res.problems.append(
            f"{path}: no export manifest; a run needs one (exported_at, and per table rows and "
            "sha256). Ask the operator for it, or write one as the receiver: handover manifest "
            f"--source-dir {source_dir} --system {cfg.system} --exported-at <when the export "
            "was taken> (docs/source-contract.md)"
        )
    else:
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            res.problems.append(f"{path}: not JSON ({exc})")
    try:
        check_export_files(
            cfg.catalog["tables"],
            source_dir,
            manifest,
            catalog=cfg.directory / "catalog.yaml",
            ignore=cfg.catalog.get("ignore", ()),
        )
    except SourceReadError as exc:
        res.problems.append(str(exc))


def _mapping_problems(cfg, table: str, frame, exported_at, res: CheckResult) -> None:
    from handover.stages.cleanse import validate
    from handover.stages.mapping import MappingError, field_values

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


def _check_personal_defaults(cfg, res: CheckResult) -> None:
    """A constant default in a personal field (`birth_date: {from: dob, default:
    1900-01-01}`) writes a made-up value about a person into the target: warn, and say what
    gives the true one."""
    for table in cfg.tables:
        columns = cfg.table(table)["columns"]
        for field_name, spec in cfg.table_mapping(table)["fields"].items():
            src = spec.get("from")
            if "default" in spec and src and columns.get(src, {}).get("pii", "none") != "none":
                res.notes.append(
                    f"mapping.yaml tables.{table}.fields.{field_name}: a constant default "
                    f"({spec['default']!r}) fills a personal field ({columns[src]['pii']}) where "
                    "the export has none; a made-up value about a person: derive it "
                    "(from_resident_id: birth_date | gender | region) or leave it empty"
                )


def run_check(
    system: str, source_dir: str | Path, *, rows: int = 1000, tolerance: float = 0.05
) -> CheckResult:
    """Validate a system's config, then dry-run it on the first `rows` rows of each table."""
    from handover.config.loader import ConfigError, load_config, resolve_source
    from handover.core.errors import SourceReadError
    from handover.sources.open import head, open_source

    res = CheckResult()
    try:
        cfg = load_config(system)
    except ConfigError as exc:  # every problem of the four files, one line each
        res.problems.extend(exc.problems)
        return res
    source_dir = Path(source_dir)
    exported_at = _exported_at(source_dir)
    _check_suites(cfg, res)
    _check_personal_defaults(cfg, res)
    _export_folder_problems(cfg, source_dir, res)
    catalog_file = cfg.directory / "catalog.yaml"
    for table in cfg.tables:
        spec = cfg.table(table)
        catalog = list(spec["columns"])
        try:
            source = open_source(table, spec, source_dir)
            for attr in ("chunk_rows", "batch_rows"):  # read no more than the sample
                if hasattr(source, attr):
                    setattr(source, attr, max(1, min(getattr(source, attr), rows)))
            with source:
                sample = head(source, rows)
        except SourceReadError as exc:
            res.problems.append(f"{exc} (table {table})")
            continue
        res.rows_read[table] = sample.num_rows
        header = [c for c in sample.column_names if c != "_source_row"]
        unknown = [c for c in header if c not in catalog]
        if (
            header
            and len(unknown) * 2 > len(header)
            and resolve_source(table, spec).get("header", True)
        ):
            # Most "column names" unknown: the first line is likely data, not a header. Its
            # values are a customer's: named by count, never quoted.
            res.problems.append(
                f"{catalog_file}: table {table}: {len(unknown)} of {len(header)} names in the "
                f"first line of {source.location} are not catalogued columns; if the file has "
                f"no header row, set tables.{table}.source.header: false (the catalog's column "
                "order then names the columns), else check source.delimiter and encoding"
            )
            continue
        for col in header:
            if col not in catalog:
                res.problems.append(
                    f"{catalog_file}: table {table} column {col}: found in {source.location} "
                    "but not in the catalog (unclassified); add it with its level and pii type"
                )
        for col in catalog:
            if col not in header:
                res.problems.append(
                    f"{source.location}: table {table} column {col}: catalogued in "
                    f"{catalog_file.name} but missing from the source"
                )
        used = _used_columns(cfg, table)
        for col, meta in spec["columns"].items():
            if meta.get("migrate") is False:
                if col in used:
                    res.problems.append(
                        f"{catalog_file}: table {table} column {col}: marked migrate: false but "
                        "mapping.yaml or policy.yaml uses it"
                    )
            elif col not in used:
                res.problems.append(
                    f"{cfg.directory / 'mapping.yaml'}: table {table} column {col}: not mapped "
                    "to any target field; map it, or mark it migrate: false in catalog.yaml"
                )
        frame = sample.select(
            [c for c in sample.column_names if c in catalog or c == "_source_row"]
        ).to_pandas()
        for col in catalog:  # a missing column is reported above; keep checking the rest
            if col not in frame:
                frame[col] = None
        _type_problems(cfg, table, frame, res, tolerance)
        _rule_shares(cfg, table, frame, exported_at, res)
        _mapping_problems(cfg, table, frame, exported_at, res)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m handover.ops.check",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(ap)
    return run(ap.parse_args(argv))


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--system", required=True, help="a folder under include/config, or a path to one"
    )
    ap.add_argument("--source-dir", required=True, help="the legacy export to dry-run on")
    ap.add_argument("--rows", type=int, default=1000, help="rows per table (default 1000)")
    ap.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="share of values failing a type rule that still counts as data "
        "defects, not a wrong format (default 0.05; 0 = strict)",
    )


def run(args: argparse.Namespace) -> int:
    res = run_check(args.system, args.source_dir, rows=args.rows, tolerance=args.tolerance)
    for line in res.problems:
        print(line)
    for line in res.notes:
        print(f"note: {line}", file=sys.stderr)
    tables = ", ".join(f"{t} {n}" for t, n in res.rows_read.items())
    if res.ok:
        print(f"check passed for {args.system}: rows read per table: {tables}", file=sys.stderr)
        return 0
    print(f"check found {len(res.problems)} problem(s) in {args.system}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
