"""Text read a line at a time: what the JSON-lines and fixed-width readers share."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from handover.core.errors import SourceReadError
from handover.sources.base import ENCODINGS, _FileSource, _numbered


class _LineSource(_FileSource):
    """Text read a line at a time (CRLF, LF or CR), decoded in its encoding; a blank line
    is skipped; rows numbered as the other readers number them (`_source_row`)."""

    def __init__(
        self, path: Path, *, table: str, columns: list[str], encoding: str, batch_rows: int
    ) -> None:
        super().__init__(path, table)
        if encoding not in ENCODINGS:
            raise SourceReadError(
                f"{path}: encoding '{encoding}' is not supported; use one of {', '.join(ENCODINGS)}"
            )
        self.encoding, self.batch_rows = encoding, batch_rows
        self.catalog_columns = list(columns)
        self.what_columns = "catalog column list"

    @property
    def text_bytes(self) -> int | None:
        return self.path.stat().st_size

    def open(self) -> None:
        self._require_file()
        self.columns = list(self.catalog_columns)

    def _lines(self) -> Iterator[tuple[int, str]]:
        """(line number, line without its end) of every non-blank line."""
        codec = "utf-8-sig" if ENCODINGS[self.encoding] == "utf8" else self.encoding
        with open(self.path, "rb") as raw:
            text = io.TextIOWrapper(raw, encoding=codec, newline=None)
            try:
                for n, line in enumerate(text, start=1):
                    line = line.rstrip("\n")
                    if line.strip():
                        yield n, line
            except UnicodeDecodeError as exc:
                raise SourceReadError(
                    f"{self.path}: cannot decode as {self.encoding} "
                    f"({exc.reason}); set source.encoding in catalog.yaml"
                ) from exc

    def _batch(self, rows: list[list[str | None]], first: int) -> pa.RecordBatch:
        cols = [pa.array([r[i] for r in rows], pa.string()) for i in range(len(self.columns))]
        return _numbered(cols, self.columns, first)
