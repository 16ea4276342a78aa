"""SourceConfig: one source system's four files, loaded and checked, with the lookups every
stage uses (a table's catalog entry, cleansing rules, mapping, category policy and source
block with its defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast


@dataclass(frozen=True)
class SourceConfig:
    """Everything handover knows about one legacy system, checked and cross-checked."""

    system: str
    directory: Path
    catalog: dict[str, Any]
    policy: dict[str, Any]
    cleansing: dict[str, Any]
    mapping: dict[str, Any]
    _lines: dict[str, dict[tuple[Any, ...], int]] = field(default_factory=dict, repr=False)

    @property
    def tables(self) -> list[str]:
        return list(self.catalog["tables"])

    def table(self, name: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.catalog["tables"][name])

    def partitions(self, name: str) -> int:
        return int(self.table(name).get("partitions", 1))

    def rules(self, name: str) -> dict[str, Any]:
        """The table's cleansing rules, plus `verbatim`: its free-text columns (catalog
        `pii: free_text`), which cleanse trims but does not NFKC-normalise."""
        rules = self.cleansing["tables"].get(name, {})
        columns = self.catalog["tables"].get(name, {}).get("columns") or {}
        verbatim = [c for c, spec in columns.items() if (spec or {}).get("pii") == "free_text"]
        return {**rules, "verbatim": verbatim} if verbatim else rules

    def key_folds(self, name: str) -> dict[str, str]:
        """Columns extract writes as keys (NFKC, trimmed, case-folded): the table's key by
        its own `key_case`, its parent column by the parent table's. Empty without any."""
        rules = self.cleansing["tables"].get(name, {})
        folds = {}
        if rules.get("key_case", "keep") != "keep":
            folds[self.table(name)["key"]] = rules["key_case"]
        parent = rules.get("parent")
        if parent:
            case = self.cleansing["tables"].get(parent["table"], {}).get("key_case", "keep")
            if case != "keep":
                folds[parent["column"]] = case
        return folds

    def table_mapping(self, name: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.mapping["tables"][name])

    def category_policy(self, name: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.policy["categories"][self.table(name)["category"]])

    def source(self, name: str) -> dict[str, Any]:
        """The table's source block with defaults filled in (default: UTF-8 CSV with header)."""
        return resolve_source(name, self.table(name))


def resolve_source(table: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A catalog table's `source:` block with every default filled in."""
    given = dict(spec.get("source") or {})
    fmt = given.get("format", "csv")
    out: dict[str, Any] = {
        "format": fmt,
        "encoding": "utf-8",
        "delimiter": ",",
        "header": True,
        "quote": '"',
        "chunk_rows": 50_000,
    }
    out.update(given)
    if fmt != "sql" and not given.get("files"):
        ext = {"parquet": "parquet", "jsonl": "jsonl", "fixed": "txt", "xlsx": "xlsx"}.get(
            fmt, "csv"
        )
        out["file"] = given.get("file") or spec.get("file") or f"{table}.{ext}"
    return out
