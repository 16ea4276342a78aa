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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handover.ops.check_config import check_personal_defaults, check_suites, export_folder_problems
from handover.ops.check_result import CheckResult
from handover.ops.check_values import mapping_problems, rule_shares, type_problems

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from handover.config.model import SourceConfig


def _exported_at(source_dir: Path) -> pd.Timestamp:
    import pandas as pd

    try:
        from handover.stages.cleanse import export_time

        manifest = json.loads((source_dir / "export_manifest.json").read_text(encoding="utf-8"))
        return export_time(manifest["exported_at"])
    except (OSError, ValueError, KeyError):
        return pd.Timestamp.now().floor("s")


def _used_columns(cfg: SourceConfig, table: str) -> set[str]:
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


def run_check(
    system: str, source_dir: str | Path, *, rows: int = 1000, tolerance: float = 0.05
) -> CheckResult:
    """Validate a system's config, then dry-run it on the first `rows` rows of each table."""
    from handover.config.loader import load_config
    from handover.core.errors import ConfigError

    res = CheckResult()
    try:
        cfg = load_config(system)
    except ConfigError as exc:  # every problem of the four files, one line each
        res.problems.extend(exc.problems)
        return res
    source_dir = Path(source_dir)
    exported_at = _exported_at(source_dir)
    check_suites(cfg, res)
    check_personal_defaults(cfg, res)
    export_folder_problems(cfg, source_dir, res)
    for table in cfg.tables:
        _check_table(cfg, table, source_dir, rows, tolerance, exported_at, res)
    return res


def _check_table(
    cfg: SourceConfig,
    table: str,
    source_dir: Path,
    rows: int,
    tolerance: float,
    exported_at: Any,
    res: CheckResult,
) -> None:
    """Dry-run one table on its first `rows` rows: columns, types, rules and mapping."""
    spec = cfg.table(table)
    catalog = list(spec["columns"])
    read = _read_sample(table, spec, source_dir, rows, res)
    if read is None:
        return
    location, sample = read
    res.rows_read[table] = sample.num_rows
    if not _column_problems(cfg, table, spec, location, sample, res):
        return
    _usage_problems(cfg, table, spec, res)
    frame = sample.select(
        [c for c in sample.column_names if c in catalog or c == "_source_row"]
    ).to_pandas()
    for col in catalog:  # a missing column is reported above; keep checking the rest
        if col not in frame:
            frame[col] = None
    type_problems(cfg, table, frame, res, tolerance)
    rule_shares(cfg, table, frame, exported_at, res)
    mapping_problems(cfg, table, frame, exported_at, res)


def _read_sample(
    table: str, spec: dict[str, Any], source_dir: Path, rows: int, res: CheckResult
) -> tuple[str, pa.Table] | None:
    """(where the table was read, its first `rows` rows), or None with the problem noted."""
    from handover.core.errors import SourceReadError
    from handover.sources.open import head, open_source

    try:
        source = open_source(table, spec, source_dir)
        for attr in ("chunk_rows", "batch_rows"):  # read no more than the sample
            if hasattr(source, attr):
                setattr(source, attr, max(1, min(getattr(source, attr), rows)))
        with source:
            sample = head(source, rows)
    except SourceReadError as exc:
        res.problems.append(f"{exc} (table {table})")
        return None
    return source.location, sample


def _column_problems(
    cfg: SourceConfig,
    table: str,
    spec: dict[str, Any],
    location: str,
    sample: pa.Table,
    res: CheckResult,
) -> bool:
    """Columns the export has and the catalog does not, and the reverse. False when the
    first line looks like data rather than a header (nothing else is checked then)."""
    from handover.config.model import resolve_source

    catalog_file = cfg.directory / "catalog.yaml"
    catalog = list(spec["columns"])
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
            f"first line of {location} are not catalogued columns; if the file has "
            f"no header row, set tables.{table}.source.header: false (the catalog's column "
            "order then names the columns), else check source.delimiter and encoding"
        )
        return False
    for col in header:
        if col not in catalog:
            res.problems.append(
                f"{catalog_file}: table {table} column {col}: found in {location} "
                "but not in the catalog (unclassified); add it with its level and pii type"
            )
    for col in catalog:
        if col not in header:
            res.problems.append(
                f"{location}: table {table} column {col}: catalogued in "
                f"{catalog_file.name} but missing from the source"
            )
    return True


def _usage_problems(cfg: SourceConfig, table: str, spec: dict[str, Any], res: CheckResult) -> None:
    """Catalogued columns nothing uses (unmapped), and migrate: false columns something uses."""
    catalog_file = cfg.directory / "catalog.yaml"
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
