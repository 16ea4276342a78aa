"""Finding the row of a delimited file Arrow could not read, or read wrongly: the file is
re-read with the csv module (same encoding, delimiter and quoting) to name the data row,
its line and the column, never a value. Mixed into `DelimitedSource`."""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Generator, Iterator
from pathlib import Path

import pyarrow as pa

from handover.sources.base import ENCODINGS, _shown
from handover.sources.delimited_streams import MULTI_DELIMITER

# Fed to the csv module after the last line: it forms a record of its own unless the file
# ended inside a quoted value, which then swallows it.
_EOF = "\x00\ufffehandover-end-of-file\ufffe\x00"
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes the codec could not decode


def _never_closed(where: str, column: str, start: int, last: int) -> str:
    return (
        f"{where}: {column} opens a quote that is never closed, so lines {start} to "
        f"{last} (the end of the file) would be read as one value; close or remove the "
        "quote in the export"
    )


def _has_line_break(col: pa.Array) -> bool:
    """Whether any value of a string column may hold CR or LF: a byte scan of its data."""
    import numpy as np

    data = col.buffers()[2]
    if data is None or data.size == 0:
        return False
    raw = np.frombuffer(data, dtype=np.uint8)
    return bool(np.any((raw == 10) | (raw == 13)))


class DelimitedDiagnosis:
    """The re-scans of `DelimitedSource`; the attributes are the reader's."""

    path: Path
    table: str
    columns: list[str]
    what_columns: str
    encoding: str
    delimiter: str
    quote: str
    header: bool
    multi: str | None

    # -- a quote opened in one row and closed in a later one ------------------------------
    def _swallowed(self, batch: pa.RecordBatch) -> tuple[int, str] | None:
        """(index in the batch, column) of the first value holding, after a line break, two
        whole lines with as many delimiters as a row has: rows of the file read into one
        value by a quote opened in an earlier row and closed only in a later one. Cheap
        unless a value holds a line break at all (a byte scan of each column first)."""
        import pyarrow.compute as pc

        k = len(self.columns) - 1
        if k < 2:  # one delimiter on a line of free text is too common to mean anything
            return None
        d = f"\\x{{{ord(self.delimiter):X}}}"
        # Two row-shaped lines in a row: free text (a complaint) may well hold one line with
        # a row's count of commas; two consecutive ones are rows read into a value.
        row_line = rf"[^\r\n{d}]*(?:{d}[^\r\n{d}]*){{{k}}}"
        line = rf"[\r\n]{row_line}\r?\n{row_line}(?:[\r\n]|$)"
        found: tuple[int, str] | None = None
        for name, col in zip(self.columns, batch.columns, strict=True):
            if not _has_line_break(col):
                continue
            at = pc.index(pc.match_substring_regex(col, line), True).as_py()
            if at >= 0 and (found is None or at < found[0]):
                found = (at, name)
        return found

    def _swallowed_message(self, row: int, column: str) -> str:
        label = f"column '{_shown(column)}'"
        located = self._locate(row)
        if located is None:
            return (
                f"{self.path} row {row}: {label} runs over several lines that look like "
                "rows of this file: a quote opened in this row is closed only in a later "
                "one (or never); fix the quote in the export"
            )
        start, end, never_closed = located
        where = f"{self.path} row {row} (line {start})"
        if never_closed:
            return _never_closed(where, label, start, end - 1)
        return (
            f"{where}: {label} runs over lines {start} to {end}, which look like rows of "
            "this file: a quote opened in this row is closed only in a later one; fix the "
            "quote in the export"
        )

    def _locate(self, row: int) -> tuple[int, int, bool] | None:
        """(first line, last line, ends inside quotes) of data row `row`, or None."""
        old_limit = csv.field_size_limit()
        csv.field_size_limit(2**31 - 1)
        records = self._records()
        try:
            header_due, n = self.header, 0
            for fields, start, end in records:
                if fields == [_EOF]:
                    return None
                if not fields:
                    continue
                if header_due:
                    header_due = False
                    continue
                n += 1
                if n == row:
                    return start, end, fields[-1].endswith(_EOF)
            return None
        except Exception:  # noqa: BLE001 - the message then names the row only
            return None
        finally:
            records.close()
            csv.field_size_limit(old_limit)

    # -- finding the row Arrow could not read ----------------------------------------------
    def _records(self) -> Generator[tuple[list[str], int, int], None, None]:
        """Every record, parsed by the csv module the way Arrow parses it (same encoding,
        delimiter and quoting; undecodable bytes kept as surrogates), streamed, as
        (fields, first line, last line). Ends with the record [_EOF] unless the file ends
        inside a quoted value: then the last field of the last record ends with _EOF."""
        codec = "utf-8-sig" if ENCODINGS[self.encoding] == "utf8" else self.encoding
        with open(self.path, "rb") as raw:
            text = io.TextIOWrapper(raw, encoding=codec, errors="surrogateescape", newline="")
            lines: Iterator[str] = itertools.chain(text, [_EOF])
            if self.multi:  # as Arrow sees the text (_Redelimit)
                lines = (ln.replace(self.multi, MULTI_DELIMITER) for ln in lines)
            if self.quote:
                reader = csv.reader(
                    lines,
                    delimiter=self.delimiter,
                    quotechar=self.quote,
                    doublequote=True,
                    strict=False,
                )
            else:
                reader = csv.reader(lines, delimiter=self.delimiter, quoting=csv.QUOTE_NONE)
            end = 0
            for fields in reader:
                start, end = end + 1, reader.line_num
                yield fields, start, end

    def _diagnose(self) -> str | None:
        """Re-read the file with the csv module to name the first row Arrow cannot take
        (wrong field count, undecodable bytes, a quote never closed): one line naming the
        file, the data row (numbered as `_source_row` numbers it), its line and the column,
        never a value. None when the re-scan finds nothing wrong (or fails itself)."""
        old_limit = csv.field_size_limit()
        csv.field_size_limit(2**31 - 1)
        records = self._records()
        try:
            return self._first_problem(records)
        except Exception:  # noqa: BLE001 - a diagnosis must never hide the original error
            return None
        finally:
            records.close()
            csv.field_size_limit(old_limit)

    def _first_problem(self, records: Iterator[tuple[list[str], int, int]]) -> str | None:
        expected = len(self.columns)
        header_due, row = self.header, 0
        for fields, start, end in records:
            if fields == [_EOF]:
                return None
            if not fields:  # a blank line; Arrow skips it too
                continue
            open_quote = fields[-1].endswith(_EOF)
            if header_due:
                header_due = False
                if open_quote:
                    return (
                        f"{self.path} line {start}: the header opens a quote that is never "
                        "closed; fix the export"
                    )
                continue
            row += 1
            where = f"{self.path} row {row} (line {start})"
            if open_quote:
                return _never_closed(where, self._column(len(fields) - 1), start, end - 1)
            bad = next((i for i, v in enumerate(fields) if _UNDECODABLE.search(v)), None)
            if bad is not None:
                return (
                    f"{where}: {self._column(bad)} cannot be decoded as {self.encoding}; "
                    "fix the export or set source.encoding in catalog.yaml (one of "
                    f"{', '.join(ENCODINGS)})"
                )
            if len(fields) != expected:
                return self._field_count_problem(where, len(fields), row, start, end, records)
        return None

    def _field_count_problem(
        self,
        where: str,
        got: int,
        row: int,
        start: int,
        end: int,
        records: Iterator[tuple[list[str], int, int]],
    ) -> str:
        """Data row `row` (lines `start` to `end`) has `got` fields, not a row's count; the
        record after it (taken from `records`) tells whether the file ends inside it."""
        expected = len(self.columns)
        if got < expected:
            why = f"{self._column(got)} and after are missing"
        else:
            why = f"{got - expected} more than the {self.what_columns}"
        if end > start:
            why += (
                f"; a quoted value runs from line {start} to line {end}: check for "
                "an unbalanced quote"
            )
        nxt = next(records, None)
        if nxt is not None and nxt[0] == [_EOF] and not self._ends_with_line_break():
            why += "; the file ends inside this row: it was cut short"
        fix = "fix the export"
        if got == 1 and row == 1:  # not one delimiter on the first row: the wrong one
            fix = (
                f"no {self.multi or self.delimiter!r} on the row: check "
                f"tables.{self.table}.source.delimiter in catalog.yaml, else fix "
                "the export"
            )
        return f"{where}: expected {expected} fields, got {got} ({why}); {fix}"

    def _column(self, index: int) -> str:
        if index < len(self.columns):
            return f"column '{_shown(self.columns[index])}'"
        return f"field {index + 1}"

    def _ends_with_line_break(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(0, 2)
            if fh.tell() == 0:
                return True
            fh.seek(-1, 2)
            return fh.read(1) in (b"\n", b"\r")
