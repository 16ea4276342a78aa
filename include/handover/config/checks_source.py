"""Cross-check of a catalog table's `source:` block: the options it sets fit its format
(a SQL table names a connection and one of table or query; a fixed-width file gives one
width per column; a workbook has no delimiter; ...) and its file is named once."""

from __future__ import annotations

import re
from typing import Any

from handover.config.problems import Fail, nearest
from handover.config.schemas import CSV_ONLY_OPTIONS, FILE_SOURCE_OPTIONS, SQL_SOURCE_OPTIONS

Keys = tuple[Any, ...]


def check_source(table: str, spec: dict[str, Any], fail: Fail) -> None:
    src = spec.get("source")
    if src is None:
        return
    keys = ("tables", table, "source")
    fmt = src.get("format", "csv")
    if fmt == "sql":
        _check_sql_source(table, spec, src, keys, fail)
        return
    _check_file_options(src, keys, fmt, fail)
    _check_widths(spec, src, keys, fmt, fail)
    _check_text_options(src, keys, fmt, fail)
    _check_file_names(spec, src, keys, fail)
    if src.get("quote") and src["quote"] == src.get("delimiter", ","):
        fail("catalog.yaml", keys + ("quote",), "quote and delimiter must differ")


def _check_sql_source(
    table: str, spec: dict[str, Any], src: dict[str, Any], keys: Keys, fail: Fail
) -> None:
    wrong = [o for o in FILE_SOURCE_OPTIONS if o in src]
    if wrong:
        fail(
            "catalog.yaml",
            keys + (wrong[0],),
            f"'{wrong[0]}' applies to file sources, not to format sql",
        )
    if "file" in spec:
        fail(
            "catalog.yaml",
            ("tables", table, "file"),
            "a table read with format sql has no file; remove it",
        )
    if "conn_id" not in src:
        fail("catalog.yaml", keys, "format sql needs conn_id (an Airflow connection id)")
    if ("query" in src) == ("table" in src):
        fail("catalog.yaml", keys, "format sql needs exactly one of 'table' or 'query'")
    rng = src.get("range")
    if rng and rng["column"] not in spec["columns"]:
        fail(
            "catalog.yaml",
            keys + ("range", "column"),
            f"column '{rng['column']}' is not in catalog table {table}"
            f"{nearest(rng['column'], spec['columns'])}",
        )


def _check_file_options(src: dict[str, Any], keys: Keys, fmt: str, fail: Fail) -> None:
    """A file source sets no SQL option, and a Parquet file no text option."""
    wrong = [o for o in SQL_SOURCE_OPTIONS if o in src]
    if wrong:
        fail("catalog.yaml", keys + (wrong[0],), f"'{wrong[0]}' applies only to format sql")
    if fmt == "parquet":
        wrong = [o for o in CSV_ONLY_OPTIONS if o in src]
        if wrong:
            fail("catalog.yaml", keys + (wrong[0],), f"'{wrong[0]}' applies to csv, not to parquet")


def _check_widths(
    spec: dict[str, Any], src: dict[str, Any], keys: Keys, fmt: str, fail: Fail
) -> None:
    """Widths: one per catalog column for format fixed, none for any other; sheet: xlsx only."""
    if fmt == "fixed":
        widths = src.get("widths")
        if not widths:
            fail(
                "catalog.yaml",
                keys,
                "format fixed needs widths: one per catalog column, in the catalog's column order",
            )
        elif len(widths) != len(spec["columns"]):
            fail(
                "catalog.yaml",
                keys + ("widths",),
                f"{len(widths)} widths for {len(spec['columns'])} catalog columns; give one "
                "per column, in the catalog's order",
            )
    elif "widths" in src or "width_unit" in src:
        fail(
            "catalog.yaml",
            keys + ("widths" if "widths" in src else "width_unit",),
            "widths apply only to format fixed",
        )
    if "sheet" in src and fmt != "xlsx":
        fail("catalog.yaml", keys + ("sheet",), "sheet applies only to format xlsx")


def _check_text_options(src: dict[str, Any], keys: Keys, fmt: str, fail: Fail) -> None:
    """A workbook has no text options; JSON lines and fixed-width files no CSV options."""
    wrong: list[str]
    if fmt == "xlsx":
        wrong = [o for o in ("encoding", "delimiter", "quote", "trailer") if o in src]
        if wrong:
            fail(
                "catalog.yaml",
                keys + (wrong[0],),
                f"'{wrong[0]}' applies to text files, not to a workbook",
            )
    if fmt in ("jsonl", "fixed"):
        wrong = [o for o in ("delimiter", "header", "quote") if o in src]
        if wrong:
            fail(
                "catalog.yaml",
                keys + (wrong[0],),
                f"'{wrong[0]}' applies to csv, not to format {fmt}",
            )


def _check_file_names(spec: dict[str, Any], src: dict[str, Any], keys: Keys, fail: Fail) -> None:
    """The file is named once: file or files, in one place; files is a relative glob."""
    if "file" in src and "file" in spec:
        fail(
            "catalog.yaml",
            keys + ("file",),
            "the file is named twice (tables.<t>.file and source.file); keep one",
        )
    if "files" in src:
        if "file" in src or "file" in spec:
            fail(
                "catalog.yaml",
                keys + ("files",),
                "use either file (one file) or files (a glob matching several), not both",
            )
        pattern = src["files"]
        if pattern.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", pattern):
            fail(
                "catalog.yaml",
                keys + ("files",),
                f"'{pattern}' must be a glob relative to the export folder (such as payments*.csv)",
            )
