"""Fixed-width text from mainframe-era billing: a width per catalog column."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa

from handover.core.errors import SourceReadError
from handover.sources.base import DEFAULT_CHUNK_ROWS, ENCODINGS, _shown
from handover.sources.lines import _LineSource


class FixedWidthSource(_LineSource):
    """Fixed-width text from mainframe-era billing: each catalog column a width, in bytes
    of the file's encoding (a GBK character takes two) or in characters. A line of another
    length stops the read, naming row and line (a trailer line may be declared)."""

    def __init__(
        self,
        path: Path,
        *,
        table: str,
        columns: list[str],
        widths: list[int],
        unit: str = "bytes",
        encoding: str = "utf-8",
        batch_rows: int = DEFAULT_CHUNK_ROWS,
        trailer: str | None = None,
    ) -> None:
        super().__init__(
            path, table=table, columns=columns, encoding=encoding, batch_rows=batch_rows
        )
        if len(widths) != len(columns):
            raise SourceReadError(
                f"{path}: {len(widths)} widths for {len(columns)} catalog "
                f"columns of table {table}; fix source.widths in catalog.yaml"
            )
        self.widths, self.unit = list(widths), unit
        self.trailer = re.compile(trailer) if trailer else None

    def batches(self) -> Iterator[pa.RecordBatch]:
        total = sum(self.widths)
        codec = "utf-8" if ENCODINGS[self.encoding] == "utf8" else self.encoding
        stream: Iterable[tuple[int, str]] = self._lines()
        trailer_rows = None
        if self.trailer:
            stream, trailer_rows = self._before_trailer(list(stream), self.trailer)
        rows: list[list[str | None]] = []
        first = row = 0
        for n, line in stream:
            row += 1
            out = self._cut(line, row, n, total, codec)
            if not rows:
                first = row
            rows.append(out)
            if len(rows) >= self.batch_rows:
                yield self._batch(rows, first)
                rows = []
        if rows:
            yield self._batch(rows, first)
        if trailer_rows is not None and trailer_rows != row:
            raise SourceReadError(
                f"{self.path}: the trailer says {trailer_rows} rows but the "
                f"file holds {row}; get the export again"
            )

    def _before_trailer(
        self, lines: list[tuple[int, str]], trailer: re.Pattern[str]
    ) -> tuple[list[tuple[int, str]], int | None]:
        """The lines before the trailer line, and the row count it states (its first group)."""
        m = trailer.fullmatch(lines[-1][1].strip()) if lines else None
        if m is None:
            raise SourceReadError(
                f"{self.path}: the last line is not the trailer "
                "source.trailer describes: the file may be truncated"
            )
        trailer_rows = int(m.group(1)) if m.groups() and m.group(1) else None
        return lines[:-1], trailer_rows

    def _cut(self, line: str, row: int, n: int, total: int, codec: str) -> list[str | None]:
        """Data row `row` (line `n`) cut into its columns by the widths, each stripped."""
        data: str | bytes = line.encode(codec) if self.unit == "bytes" else line
        if len(data) != total:
            raise SourceReadError(
                f"{self.path} row {row} (line {n}): {len(data)} {self.unit} where the "
                f"widths add up to {total}; fix the export or source.widths in catalog.yaml"
            )
        out: list[str | None] = []
        at = 0
        for w in self.widths:
            piece = data[at : at + w]
            at += w
            try:
                text = piece.decode(codec) if isinstance(piece, bytes) else piece
            except UnicodeDecodeError:
                raise SourceReadError(
                    f"{self.path} row {row} (line {n}): column "
                    f"'{_shown(self.columns[len(out)])}' cuts a character in two; the "
                    "widths are in characters, not bytes (source.width_unit: chars)"
                ) from None
            out.append(text.strip() or None)
        return out
