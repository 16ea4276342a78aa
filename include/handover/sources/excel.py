"""Excel workbooks (`.xlsx`): one worksheet, streamed read-only, cells as text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pyarrow as pa

from handover.core.errors import SourceReadError
from handover.sources.base import DEFAULT_CHUNK_ROWS, _FileSource, _numbered, _shown


class XlsxSource(_FileSource):
    """A worksheet of an Excel workbook (`.xlsx`), streamed read-only. The first row is the
    header (or, with header: false, the catalog's column order names the columns). Cells
    become text: dates as `YYYY-MM-DD HH:MM:SS` (`YYYY-MM-DD` at midnight), whole numbers
    without `.0`, booleans true/false. A number Excel already turned into a float
    (`1.10105E+17` for an ID) is read as Excel holds it: cleansing then rejects it."""

    def __init__(
        self,
        path: Path,
        *,
        table: str,
        columns: list[str],
        sheet: str | int | None = None,
        header: bool = True,
        batch_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> None:
        super().__init__(path, table)
        self.sheet, self.header, self.batch_rows = sheet, header, batch_rows
        self.catalog_columns = list(columns)
        self.what_columns = "header" if header else "catalog column list"
        self._book: Any = None
        self._rows: Any = None
        self._where = str(self.path)

    @property
    def text_bytes(self) -> int | None:
        return None  # compressed XML: its size says little about its rows

    def open(self) -> None:
        import zipfile

        import openpyxl

        self._require_file()
        try:
            self._book = openpyxl.load_workbook(self.path, read_only=True, data_only=True)
        except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
            raise SourceReadError(
                f"{self.path}: not a readable .xlsx workbook "
                f"({type(exc).__name__}); an old .xls must be saved as "
                ".xlsx first"
            ) from None
        names = self._book.sheetnames
        if self.sheet is None:
            ws = self._book.worksheets[0]
        elif isinstance(self.sheet, int):
            if self.sheet >= len(names):
                raise SourceReadError(
                    f"{self.path}: no sheet {self.sheet} (it has {len(names)}: {', '.join(names)})"
                )
            ws = self._book.worksheets[self.sheet]
        elif self.sheet in names:
            ws = self._book[self.sheet]
        else:
            raise SourceReadError(
                f"{self.path}: no sheet '{self.sheet}' (its sheets: "
                f"{', '.join(names)}); fix source.sheet in catalog.yaml"
            )
        self._where = f"{self.path} sheet '{ws.title}'"  # messages; location stays the file
        self._rows = ws.iter_rows(values_only=True)
        if not self.header:
            self.columns = list(self.catalog_columns)
            return
        first = next(self._rows, None)
        header: list[str | None] = [None if v is None else str(v).strip() for v in (first or ())]
        while header and not header[-1]:
            header.pop()
        if not header:
            raise SourceReadError(
                f"{self._where}: empty; expected a header row (or set source.header: false)"
            )
        if any(not h for h in header):
            raise SourceReadError(
                f"{self._where} row 1: column {header.index(None) + 1} has no name in the header"
            )
        named = cast("list[str]", header)  # no None left: checked above
        dupes = sorted({h for h in named if named.count(h) > 1})
        if dupes:
            raise SourceReadError(
                f"{self._where} row 1: column '{_shown(dupes[0])}' appears "
                "more than once in the header"
            )
        self.columns = named

    def close(self) -> None:
        if self._book is not None:
            self._book.close()
            self._book = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        width = len(self.columns)
        rows: list[list[str | None]] = []
        first = row = 0
        line = 1 if self.header else 0
        for values in self._rows:
            line += 1
            cells = [_cell_text(v) for v in values]
            if not any(c is not None for c in cells):
                continue  # an empty row
            row += 1
            extra = [c for c in cells[width:] if c is not None]
            if extra:
                raise SourceReadError(
                    f"{self._where} row {row} (sheet row {line}): {len(cells)} cells with "
                    f"values beyond the {width} columns of the {self.what_columns}; fix the "
                    "export or the catalog"
                )
            cells = (cells + [None] * width)[:width]
            if not rows:
                first = row
            rows.append(cells)
            if len(rows) >= self.batch_rows:
                yield _numbered(
                    [pa.array([r[i] for r in rows], pa.string()) for i in range(width)],
                    self.columns,
                    first,
                )
                rows = []
        if rows:
            yield _numbered(
                [pa.array([r[i] for r in rows], pa.string()) for i in range(width)],
                self.columns,
                first,
            )


def _cell_text(value: Any) -> str | None:
    from datetime import date, datetime, time

    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return (
            value.strftime("%Y-%m-%d")
            if value.time() == time(0)
            else value.strftime("%Y-%m-%d %H:%M:%S")
        )
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 2**63 else repr(value)
    text = str(value)
    return text if text.strip() else None
