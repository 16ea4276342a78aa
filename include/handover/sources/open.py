"""Opening a catalog table's source: the reader its `source:` block names (`open_source`),
and the first rows of an opened source (`head`, for `handover check`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from handover.config.model import resolve_source
from handover.core.errors import SourceReadError
from handover.sources.base import ROW_COLUMN, TableSource, _FileSource
from handover.sources.delimited import DelimitedSource
from handover.sources.excel import XlsxSource
from handover.sources.fixed_width import FixedWidthSource
from handover.sources.jsonl import JsonLinesSource
from handover.sources.multi_file import MultiFileSource
from handover.sources.parquet import ParquetSource
from handover.sources.sql import SqlSource

FORMATS = ("csv", "parquet", "sql", "jsonl", "fixed", "xlsx")


def _delimited(path: Path, table: str, columns: list[str], spec: dict[str, Any]) -> _FileSource:
    return DelimitedSource(
        path,
        table=table,
        columns=columns,
        encoding=spec["encoding"],
        delimiter=spec["delimiter"],
        header=spec["header"],
        quote=spec["quote"],
        trailer=spec.get("trailer"),
    )


def _parquet(path: Path, table: str, columns: list[str], spec: dict[str, Any]) -> _FileSource:
    return ParquetSource(path, table=table, batch_rows=spec["chunk_rows"])


def _json_lines(path: Path, table: str, columns: list[str], spec: dict[str, Any]) -> _FileSource:
    return JsonLinesSource(
        path,
        table=table,
        columns=columns,
        encoding=spec["encoding"],
        batch_rows=spec["chunk_rows"],
    )


def _fixed_width(path: Path, table: str, columns: list[str], spec: dict[str, Any]) -> _FileSource:
    return FixedWidthSource(
        path,
        table=table,
        columns=columns,
        widths=spec.get("widths") or [],
        unit=spec.get("width_unit", "bytes"),
        encoding=spec["encoding"],
        batch_rows=spec["chunk_rows"],
        trailer=spec.get("trailer"),
    )


def _xlsx(path: Path, table: str, columns: list[str], spec: dict[str, Any]) -> _FileSource:
    return XlsxSource(
        path,
        table=table,
        columns=columns,
        sheet=spec.get("sheet"),
        header=spec["header"],
        batch_rows=spec["chunk_rows"],
    )


# The reader of one file, by source.format: (path, table, catalog columns, the resolved
# source block) -> reader. A table's `files:` glob reads each file with it.
FILE_READERS: dict[str, Callable[[Path, str, list[str], dict[str, Any]], _FileSource]] = {
    "csv": _delimited,
    "parquet": _parquet,
    "jsonl": _json_lines,
    "fixed": _fixed_width,
    "xlsx": _xlsx,
}


def open_source(
    table: str,
    table_spec: dict[str, Any],
    source_dir: str | Path,
    *,
    range_start: Any = None,
    range_end: Any = None,
) -> TableSource:
    """A reader for one catalog table; use it as a context manager, then iterate batches()."""
    spec = resolve_source(table, table_spec)
    columns = list(table_spec.get("columns", {}))
    fmt = spec["format"]
    if fmt in FILE_READERS:
        make = FILE_READERS[fmt]

        def one(path: Path) -> _FileSource:
            return make(path, table, columns, spec)

        if spec.get("files"):
            return MultiFileSource(Path(source_dir), spec["files"], table=table, part=one)
        return one(Path(source_dir) / spec["file"])
    if fmt == "sql":
        return _sql(table, table_spec, spec, range_start, range_end)
    raise SourceReadError(
        f"table {table}: unknown source format '{fmt}'; use one of {', '.join(FORMATS)}"
    )


def _sql(
    table: str, table_spec: dict[str, Any], spec: dict[str, Any], range_start: Any, range_end: Any
) -> SqlSource:
    """A sql source; a range given to open_source replaces the catalog's start or end."""
    rng = dict(spec.get("range") or {})
    if range_start is not None:
        rng["start"] = range_start
    if range_end is not None:
        rng["end"] = range_end
    return SqlSource(
        spec["conn_id"],
        table=table,
        source_table=spec.get("table"),
        query=spec.get("query"),
        key=table_spec.get("key"),
        chunk_rows=spec["chunk_rows"],
        range_column=rng.get("column"),
        range_start=rng.get("start"),
        range_end=rng.get("end"),
    )


def head(source: TableSource, rows: int) -> pa.Table:
    """The first `rows` rows of an opened source, as one table (for `handover check`)."""
    batches, seen = [], 0
    for batch in source.batches():
        take = batch.slice(0, max(rows - seen, 0))
        batches.append(take)
        seen += take.num_rows
        if seen >= rows:
            break
    if not batches:
        return pa.table(
            {c: pa.array([], pa.string()) for c in source.columns}
            | {ROW_COLUMN: pa.array([], pa.int64())}
        )
    return pa.Table.from_batches(batches)
