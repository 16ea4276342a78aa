"""The target schema as the configuration sees it: the tables and columns of the target's
DDL (include/sql/target.sql) and the columns a table mapping produces. The loader checks
mapping.yaml against both; the mapping stage writes exactly `target_columns`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from handover.core.paths import SQL_DIR

TARGET_SQL = SQL_DIR / "target.sql"


def target_tables(path: Path = TARGET_SQL) -> dict[tuple[str, str], dict[str, bool]]:
    """Columns of the target schema read from its DDL: (schema, table) -> {column: required},
    required meaning NOT NULL (or primary key) without a default."""
    if not path.is_file():
        return {}
    text = re.sub(r"--[^\n]*", "", path.read_text(encoding="utf-8"))
    out: dict[tuple[str, str], dict[str, bool]] = {}
    for m in re.finditer(
        r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)\.(\w+)\s*\((.*?)\n\);", text, re.S | re.I
    ):
        cols: dict[str, bool] = {}
        for line in m.group(3).splitlines():
            words = line.strip().rstrip(",").split()
            if not words or words[0].upper() in (
                "PRIMARY",
                "UNIQUE",
                "CHECK",
                "CONSTRAINT",
                "FOREIGN",
                "EXCLUDE",
            ):
                continue
            upper = line.upper()
            cols[words[0].strip('"')] = (
                "NOT NULL" in upper or "PRIMARY KEY" in upper
            ) and "DEFAULT" not in upper
        out[(m.group(1), m.group(2))] = cols
    return out


def target_columns(tmap: dict[str, Any]) -> list[str]:
    """The columns map_partition produces for a table mapping, in order."""
    cols: list[str] = []
    for target, spec in tmap["fields"].items():
        protections = spec.get("protect", [])
        if "blind_index" in protections:
            cols.append(f"{target}_bidx")
        if "mask" in protections:
            cols.append(f"{target}_masked")
        if "encrypt" in protections:
            cols += [f"{target}_enc", f"{target}_key_id"]
        else:
            cols.append(target)
    return cols
