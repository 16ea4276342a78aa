"""Delimited text (CSV and its relatives): any encoding a Chinese BSS export uses,
transcoded while it streams; delimiters of one or several characters; an optional trailer
line with a row count. Arrow does the reading; when it cannot, the csv-module re-scan in
`delimited_diagnosis` names the row, line and column."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

from handover.core.errors import SourceReadError
from handover.sources.base import ENCODINGS, ROW_COLUMN, _FileSource, _numbered
from handover.sources.delimited_diagnosis import DelimitedDiagnosis
from handover.sources.delimited_streams import MULTI_DELIMITER, _Head, _Redelimit

# Arrow's streaming CSV reader reads ahead of its consumer, and with 8 MB blocks what it
# held grew with the file (peak +230 MB at 95 MB of call records, +490 MB at 950 MB);
# with 1 MB blocks it stays at +140 MB for both, and reads as fast.
CSV_BLOCK_BYTES = 1 << 20
MAX_CSV_BLOCK_BYTES = 256 << 20  # the longest row (quoted line breaks included) read


class DelimitedSource(DelimitedDiagnosis, _FileSource):
    """Delimited text in UTF-8 (with or without BOM), GBK or GB18030, transcoded while it
    streams; any one-character delimiter; quoted values may hold delimiters and newlines.
    Without a header row the catalog's column order names the columns."""

    def __init__(
        self,
        path: Path,
        *,
        table: str,
        columns: list[str] | None = None,
        encoding: str = "utf-8",
        delimiter: str = ",",
        header: bool = True,
        quote: str = '"',
        block_size: int = CSV_BLOCK_BYTES,
        trailer: str | None = None,
    ) -> None:
        super().__init__(path, table)
        self.trailer = re.compile(trailer) if trailer else None
        self._data_bytes: int | None = None  # where the trailer line starts
        self._trailer_rows: int | None = None
        if encoding not in ENCODINGS:
            raise SourceReadError(
                f"{path}: encoding '{encoding}' is not supported; use one of {', '.join(ENCODINGS)}"
            )
        if (
            not delimiter
            or "\n" in delimiter
            or "\r" in delimiter
            or (quote and quote in delimiter)
        ):
            raise SourceReadError(f"{path}: delimiter {delimiter!r} cannot separate fields")
        # A delimiter of several characters (`~|~`, `||`, `@@`): the text is streamed through
        # a filter that writes it as the unit separator (0x1F), which Arrow then splits on.
        self.multi = delimiter if len(delimiter) > 1 else None
        if self.multi:
            delimiter = MULTI_DELIMITER
        self.encoding, self.delimiter, self.header = encoding, delimiter, header
        self.quote, self.block_size = quote, block_size
        self.catalog_columns = list(columns or [])
        self.what_columns = "header" if header else "catalog column list"

    @property
    def text_bytes(self) -> int | None:
        return self.path.stat().st_size

    def open(self) -> None:
        self._require_file()
        with open(self.path, "rb") as fh:
            bom = fh.read(2)
        if bom in (b"\xff\xfe", b"\xfe\xff") and not self.encoding.startswith("utf-16"):
            raise SourceReadError(
                f"{self.path}: the file is UTF-16 (it starts with a byte order mark) but is read "
                f"as {self.encoding}; set source.encoding: utf-16 for table {self.table} in "
                "catalog.yaml"
            )
        if self.trailer is not None:
            self._find_trailer(self.trailer)
        if not self.header:
            if not self.catalog_columns:
                raise SourceReadError(
                    f"{self.path}: no header row and no catalog columns to name the columns"
                )
            self.columns = list(self.catalog_columns)
            return
        codec = "utf-8-sig" if ENCODINGS[self.encoding] == "utf8" else self.encoding

        def lines(fh: BinaryIO) -> Iterator[str]:  # decode only as far as the header reaches
            decoder = codecs.getincrementaldecoder(codec)()
            head = fh.read(1 << 20)  # the header line, ended by CRLF, LF or a lone CR
            if codec.startswith("utf-16"):  # two bytes a character: decode, then split
                text = decoder.decode(head, final=False)
                line = re.split(r"\r\n?|\n", text, maxsplit=1)[0] + "\n"
            else:
                first = re.split(rb"\r\n?|\n", head, maxsplit=1)[0]
                line = decoder.decode(first + b"\n", final=True)
            yield line.replace(self.multi, MULTI_DELIMITER) if self.multi else line

        try:
            with open(self.path, "rb") as fh:
                if self.quote:
                    reader = csv.reader(lines(fh), delimiter=self.delimiter, quotechar=self.quote)
                else:
                    reader = csv.reader(lines(fh), delimiter=self.delimiter, quoting=csv.QUOTE_NONE)
                header = next(reader, None)
        except UnicodeDecodeError as exc:
            raise SourceReadError(
                f"{self.path} line 1: header is not valid {self.encoding} "
                f"({exc.reason}); set source.encoding in catalog.yaml"
            ) from exc
        except csv.Error as exc:
            raise SourceReadError(f"{self.path} line 1: cannot parse the header ({exc})") from exc
        if not header:
            raise SourceReadError(
                f"{self.path}: file is empty; expected a header row (or set source.header: false)"
            )
        dupes = sorted({c for c in header if header.count(c) > 1})
        if dupes:
            raise SourceReadError(
                f"{self.path} line 1: column '{dupes[0]}' appears more than once in the header"
            )
        self.columns = header

    def _find_trailer(self, trailer: re.Pattern[str]) -> None:
        """The file's last non-blank line must match source.trailer (a count line such as
        `共2条`): rows are read up to it, and its first group, if any, is the row count."""
        size = self.path.stat().st_size
        codec = "utf-8" if ENCODINGS[self.encoding] == "utf8" else ENCODINGS[self.encoding]
        with open(self.path, "rb") as fh:
            bom = fh.read(2)
            wide = codec.startswith("utf-16")
            big = codec == "utf-16-be" or (codec == "utf-16" and bom == b"\xfe\xff")
            unit = ("utf-16-be" if big else "utf-16-le") if wide else codec
            nl = "\n".encode(unit)
            start = max(0, size - (1 << 16))
            start -= start % 2 if wide else 0
            fh.seek(start)
            tail = fh.read()
        ends = ("\r\n".encode(unit), nl, "\r".encode(unit))
        body = tail
        while True:
            cut = next((e for e in ends if body.endswith(e)), None)
            if cut is None:
                break
            body = body[: -len(cut)]
        at = body.rfind(nl)
        line_start = at + len(nl) if at >= 0 else 0
        if at < 0 and start > 0:
            raise SourceReadError(
                f"{self.path}: last line longer than 64 KiB cannot be the "
                "trailer source.trailer describes"
            )
        text = body[line_start:].decode(unit, errors="replace").strip().lstrip("\ufeff")
        match = trailer.fullmatch(text)
        if match is None:
            raise SourceReadError(
                f"{self.path}: the last line is not the trailer source.trailer describes "
                f"({trailer.pattern!r}): the file may be truncated; get the export again, "
                f"or fix tables.{self.table}.source.trailer in catalog.yaml"
            )
        self._data_bytes = start + line_start
        if match.groups() and match.group(1) is not None:
            self._trailer_rows = int(match.group(1).replace(",", ""))

    def _csv_input(self) -> Path | io.BufferedReader:
        """The file for Arrow: whole, or only the bytes before the trailer line; with a
        delimiter of several characters, decoded and written as UTF-8 with 0x1F."""
        if self._data_bytes is None and not self.multi:
            return self.path
        raw: io.RawIOBase = _Head(
            self.path, self._data_bytes if self._data_bytes is not None else -1
        )
        if self.multi:
            codec = "utf-8-sig" if ENCODINGS[self.encoding] == "utf8" else self.encoding
            raw = _Redelimit(io.BufferedReader(raw, buffer_size=1 << 20), codec, self.multi)
        return io.BufferedReader(raw, buffer_size=1 << 20)

    @property
    def _arrow_encoding(self) -> str:
        return "utf8" if self.multi else ENCODINGS[self.encoding]

    def batches(self) -> Iterator[pa.RecordBatch]:
        for batch, rows in self._batches():
            if rows is None:
                yield batch
            elif self._trailer_rows is not None and rows != self._trailer_rows:
                raise SourceReadError(
                    f"{self.path}: the trailer says {self._trailer_rows} rows but the file holds "
                    f"{rows}; the file is truncated or was changed; get the export again"
                )

    def _batches(self) -> Iterator[tuple[pa.RecordBatch, int | None]]:
        """(numbered batch, None) for every batch, then, with a trailer, (an empty batch,
        the rows read) for batches() to check against the count the trailer states."""
        if not self.header and self.path.stat().st_size == 0:
            return
        if self._data_bytes == 0:  # nothing but the trailer
            yield pa.RecordBatch.from_pylist([]), 0
            return
        state = _Progress()
        try:
            yield from self._read_passes(state)
        except UnicodeDecodeError as exc:
            # Arrow names the block, not the row; the re-scan names row, line and column.
            raise SourceReadError(
                self._diagnose()
                or (
                    f"{self.path}: cannot decode as {self.encoding} near row {state.row + 1} "
                    f"({exc.reason}); fix the export or set source.encoding in catalog.yaml"
                )
            ) from exc
        except pa.ArrowInvalid as exc:
            # Never Arrow's message as is: it quotes the broken row's values.
            raise SourceReadError(
                self._diagnose()
                or (
                    f"{self.path}: cannot parse as CSV near row {state.row + 1} "
                    f"({_arrow_reason(exc)}); fix the export"
                )
            ) from exc
        if state.last is not None and self.quote and _last_row_has_line_break(state.last):
            # A quote opened and never closed reads every later line into one value, and
            # Arrow accepts the end of the file as its end: look for that before anything
            # is written.
            problem = self._diagnose()
            if problem:
                raise SourceReadError(problem)
        if self._trailer_rows is not None:  # the count the trailer states, checked at the end
            empty = pa.RecordBatch.from_arrays(
                [pa.array([], pa.string()) for _ in self.columns] + [pa.array([], pa.int64())],
                names=[*self.columns, ROW_COLUMN],
            )
            yield empty, state.row

    def _read_passes(self, state: _Progress) -> Iterator[tuple[pa.RecordBatch, None]]:
        """Arrow's streaming CSV reader over the file; a pass that meets a value longer than
        a block starts again in bigger blocks, past the rows already given."""
        import pyarrow.csv as pacsv

        parse = pacsv.ParseOptions(
            delimiter=self.delimiter, quote_char=self.quote or False, newlines_in_values=True
        )
        convert = pacsv.ConvertOptions(
            column_types={c: pa.string() for c in self.columns}, strings_can_be_null=False
        )
        block = self.block_size
        while True:
            read = pacsv.ReadOptions(
                encoding=self._arrow_encoding,
                block_size=block,
                column_names=None if self.header else self.columns,
            )
            reader = pacsv.open_csv(
                self._csv_input(),
                read_options=read,
                parse_options=parse,
                convert_options=convert,
            )
            try:
                yield from self._read_pass(reader, state)
                return
            except pa.ArrowInvalid as exc:
                # A value longer than a block (a 10 MB free-text field): read again in
                # bigger blocks, past the rows already given. Blocks are small because
                # Arrow's read-ahead holds several of them.
                if "straddles two block boundaries" not in str(exc) or block >= MAX_CSV_BLOCK_BYTES:
                    raise
                block = min(block * 16, MAX_CSV_BLOCK_BYTES)

    def _read_pass(
        self, reader: Iterable[pa.RecordBatch], state: _Progress
    ) -> Iterator[tuple[pa.RecordBatch, None]]:
        """One pass of the reader: the batches after the `state.row` rows given already."""
        skip = state.row  # rows an earlier pass (smaller blocks) has given already
        for batch in reader:
            if batch.num_rows <= skip:
                skip -= batch.num_rows
                continue
            if skip:
                batch, skip = batch.slice(skip), 0
            self._check_batch(batch, state.row)
            out = _numbered(list(batch.columns), self.columns, state.row + 1)
            state.row += batch.num_rows
            state.last = batch
            yield out, None

    def _check_batch(self, batch: pa.RecordBatch, row: int) -> None:
        """A batch after `row` rows: the header's columns, and no rows read into a value."""
        if batch.schema.names != self.columns:
            raise SourceReadError(f"{self.path}: columns changed while reading near row {row + 1}")
        swallowed = self._swallowed(batch) if self.quote else None
        if swallowed is not None:
            raise SourceReadError(self._swallowed_message(row + swallowed[0] + 1, swallowed[1]))


@dataclass
class _Progress:
    """How far the passes over a file have read: rows given, and the last batch."""

    row: int = 0
    last: pa.RecordBatch | None = None


def _arrow_reason(exc: Exception) -> str:
    """What Arrow's CSV error says, without the row content it quotes."""
    text = str(exc)
    m = re.search(r"Expected \d+ columns?, got \d+", text)
    if m:
        return m.group(0)
    if "UTF8" in text or "UTF-8" in text:
        return "invalid UTF-8 data"
    return text.splitlines()[0].split(":", 1)[0][:80] if text else type(exc).__name__


def _last_row_has_line_break(batch: pa.RecordBatch) -> bool:
    for col in batch.columns:
        value = col[batch.num_rows - 1].as_py()
        if value and ("\n" in value or "\r" in value):
            return True
    return False
