"""`handover check`, the parts that read no rows: the gate suites exist and match the
catalog and mapping, no constant default makes up a value about a person, and the export
folder holds a manifest and no file that no table reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from handover.ops.check_result import CheckResult

if TYPE_CHECKING:
    from handover.config.model import SourceConfig

GATES = ("intake", "compliance", "quality", "contract", "reconciliation")


def check_suites(cfg: SourceConfig, res: CheckResult) -> None:
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


def check_personal_defaults(cfg: SourceConfig, res: CheckResult) -> None:
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


def export_folder_problems(cfg: SourceConfig, source_dir: Path, res: CheckResult) -> None:
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
