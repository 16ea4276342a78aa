"""Source readers: every shape a legacy export comes in, as Arrow record batches of text.

Extract is the only stage that knows how a legacy system stored its data. A catalog
table's optional ``source:`` block says how (delimited text in any of the encodings
Chinese BSS exports use, Parquet, or a SQL database reached through an Airflow
connection); this module turns each into the same stream: record batches whose data
columns are all ``pa.string()`` plus the 1-based ``_source_row`` (int64) that every later
stage uses to point at a row without showing its values. Typing is cleansing's job, so
nothing here guesses types, and memory stays bounded whatever the size of the source.

Errors are one line naming the file (or connection) and, where there is one, the row.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import itertools
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from handover.config.loader import resolve_source
from handover.core.errors import SourceReadError

ROW_COLUMN = "_source_row"
# What a delimiter of several characters is rewritten to before Arrow splits the text.
MULTI_DELIMITER = "\x1f"
FORMATS = ("csv", "parquet", "sql", "jsonl", "fixed", "xlsx")
# Encoding names as catalog.yaml spells them (config.ENCODINGS) -> the codec Arrow reads.
ENCODINGS = {
    "utf-8": "utf8",
    "utf-8-sig": "utf8",
    "gbk": "gbk",
    "gb18030": "gb18030",
    "big5": "big5",  # Hong Kong, Macau and Taiwan systems
    # Windows tools export "Unicode" text as UTF-16 (with a BOM, or little-endian
    # without one): transcoded while it streams, like GBK
    "utf-16": "utf-16",
    "utf-16-le": "utf-16-le",
    "utf-16-be": "utf-16-be",
}
DEFAULT_CHUNK_ROWS = 50_000
# Arrow's streaming CSV reader reads ahead of its consumer, and with 8 MB blocks what it
# held grew with the file (peak +230 MB at 95 MB of call records, +490 MB at 950 MB);
# with 1 MB blocks it stays at +140 MB for both, and reads as fast.
CSV_BLOCK_BYTES = 1 << 20
MAX_CSV_BLOCK_BYTES = 256 << 20  # the longest row (quoted line breaks included) read
SQL_DIALECTS = {
    "postgres": "postgres",
    "postgresql": "postgres",
    "sqlite": "sqlite",
    "mysql": "mysql",
    "mariadb": "mysql",
}


def source_location(table: str, table_spec: dict[str, Any], source_dir: str | Path) -> str:
    """Where a table comes from, for messages: the file path (or glob) or the connection."""
    spec = resolve_source(table, table_spec)
    if spec["format"] == "sql":
        return _sql_location(spec)
    return str(Path(source_dir) / (spec.get("files") or spec["file"]))


def source_paths(table: str, table_spec: dict[str, Any], source_dir: str | Path) -> list[Path]:
    """The files a table reads: its `file` (whether or not it exists), or every file its
    `files` glob matches, in sorted name order; none for a sql source."""
    spec = resolve_source(table, table_spec)
    if spec["format"] == "sql":
        return []
    folder = Path(source_dir)
    if spec.get("files"):
        return sorted(
            (p for p in folder.glob(spec["files"]) if p.is_file()),
            key=lambda p: p.relative_to(folder).as_posix(),
        )
    return [folder / spec["file"]]


# Files an export folder may hold besides its tables: synth's answer key (written next to
# the export, not part of it; docs/source-contract.md). Manifests are not export files.
NOT_TABLE_FILES = {"truth.csv", "export_manifest.json"}
# What an export file looks like, for a file no table reads and the manifest does not list.
EXPORT_SUFFIXES = {
    ".csv",
    ".tsv",
    ".txt",
    ".dat",
    ".psv",
    ".del",
    ".unl",
    ".parquet",
    ".pq",
    ".gz",
    ".zip",
    ".bz2",
    ".xz",
    ".zst",
    ".7z",
}


def check_export_files(
    tables: dict[str, dict[str, Any]],
    source_dir: str | Path,
    manifest: dict | None,
    *,
    catalog: str | Path = "catalog.yaml",
    ignore: list[str] | tuple[str, ...] = (),
) -> None:
    """Before a run: every file a catalog table reads exists, and no export file is left
    unread (a table exported as two files must not lose the second: declare the table with
    a `files:` glob). A file counts as an export file when the manifest lists it under a
    catalogued table, or when it looks like one (EXPORT_SUFFIXES) and the manifest does not
    list it at all; files the manifest lists under a table this system does not migrate are
    left alone; so are files matching a catalog `ignore:` glob (a data dictionary); any
    other file, data-like or not, stops the run. Raises SourceReadError, one line naming
    the file and the fix."""
    import fnmatch

    src = Path(source_dir)
    read: set[Path] = set()
    for table, spec in tables.items():
        source = resolve_source(table, spec)
        if source["format"] == "sql":  # read through its connection at extract
            continue
        paths = source_paths(table, spec, src)
        if source.get("files") and not paths:
            raise SourceReadError(
                f"{src / source['files']}: no file matches source.files of "
                f"table {table}; export it or fix {catalog}"
            )
        for f in paths:
            if not f.is_file():
                raise SourceReadError(
                    f"{f}: source file for table {table} not found; export "
                    f"it or remove {table} from {catalog}"
                )
            read.add(f.resolve())
    listed: dict[Path, str] = {}  # file -> the table the manifest lists it under
    entries = manifest.get("tables") if isinstance(manifest, dict) else None
    for table, entry in (entries if isinstance(entries, dict) else {}).items():
        if not isinstance(entry, dict):
            continue
        names = entry.get("files") if isinstance(entry.get("files"), list) else []
        for name in [entry.get("file"), *names]:
            if isinstance(name, str) and name:
                listed[(src / name).resolve()] = table
    unread: list[tuple[Path, str | None]] = []
    for f in sorted(src.iterdir()) if src.is_dir() else []:
        path = f.resolve()
        if f.name.startswith(".") or path in read or path in listed or not f.is_file():
            continue
        if any(fnmatch.fnmatch(f.name, pattern) for pattern in ignore):
            continue
        if f.name not in NOT_TABLE_FILES:
            unread.append((f, None))
    unread += [(f, t) for f, t in listed.items() if t in tables and f not in read and f.is_file()]
    if not unread:
        return
    f, table = min(unread, key=lambda u: str(u[0]))
    more = f" (and {len(unread) - 1} more)" if len(unread) > 1 else ""
    if table is None:
        raise SourceReadError(
            f"{f}: export file read by no table of {catalog}{more}; name it "
            "in a table's source (file, or a files: glob), or, if it is not "
            f"data (a data dictionary, a README), declare it under ignore: "
            f"['{f.name}'] in {catalog}"
        )
    raise SourceReadError(
        f"{f}: the export manifest lists it under table {table}, which does "
        f"not read it{more}; read all of the table's files with a glob such "
        f"as tables.{table}.source.files: '{table}*{f.suffix}' in {catalog}"
    )


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
    if fmt in ("csv", "parquet", "jsonl", "fixed", "xlsx"):

        def one(path: Path) -> _FileSource:
            if fmt == "parquet":
                return ParquetSource(path, table=table, batch_rows=spec["chunk_rows"])
            if fmt == "xlsx":
                return XlsxSource(
                    path,
                    table=table,
                    columns=columns,
                    sheet=spec.get("sheet"),
                    header=spec["header"],
                    batch_rows=spec["chunk_rows"],
                )
            if fmt == "jsonl":
                return JsonLinesSource(
                    path,
                    table=table,
                    columns=columns,
                    encoding=spec["encoding"],
                    batch_rows=spec["chunk_rows"],
                )
            if fmt == "fixed":
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

        if spec.get("files"):
            return MultiFileSource(Path(source_dir), spec["files"], table=table, part=one)
        return one(Path(source_dir) / spec["file"])
    if fmt == "sql":
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
    raise SourceReadError(
        f"table {table}: unknown source format '{fmt}'; use one of {', '.join(FORMATS)}"
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


class _Head(io.RawIOBase):
    """The first `limit` bytes of a file (what comes before a trailer line; -1: all)."""

    def __init__(self, path: Path, limit: int) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 - closed with this stream
        self._left = limit if limit >= 0 else 1 << 62

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._left)
        if n <= 0:
            return 0
        got = self._fh.readinto(memoryview(buffer)[:n])
        self._left -= got
        return got

    def close(self) -> None:
        self._fh.close()
        super().close()


class _Redelimit(io.RawIOBase):
    """Text in `codec` with a delimiter of several characters, as UTF-8 with 0x1F in its
    place, streamed (a delimiter split across two reads is held back until whole)."""

    def __init__(self, source: io.BufferedReader, codec: str, delimiter: str) -> None:
        self._src = source
        self._decoder = codecs.getincrementaldecoder(codec)()
        self._delimiter = delimiter
        self._carry = ""
        self._out = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out and not self._done:
            chunk = self._src.read(1 << 20)
            text = (self._carry + self._decoder.decode(chunk, final=not chunk)).replace(
                self._delimiter, MULTI_DELIMITER
            )
            self._carry = ""
            if chunk:  # hold back an end that may be the start of a delimiter
                for k in range(len(self._delimiter) - 1, 0, -1):
                    if text.endswith(self._delimiter[:k]):
                        text, self._carry = text[:-k], text[-k:]
                        break
            else:
                self._done = True
            self._out = text.encode("utf-8")
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        self._src.close()
        super().close()


def _numbered(columns: list[pa.Array], names: list[str], first_row: int) -> pa.RecordBatch:
    import numpy as np

    n = len(columns[0]) if columns else 0
    rows = pa.array(np.arange(first_row, first_row + n, dtype=np.int64))
    schema = pa.schema([(c, pa.string()) for c in names] + [(ROW_COLUMN, pa.int64())])
    return pa.RecordBatch.from_arrays(list(columns) + [rows], schema=schema)


class TableSource(ABC):
    """One table of a legacy export. `with source:` opens it; then `columns`, `batches()`."""

    table: str
    location: str
    name: str
    columns: list[str]
    what_columns = "header"

    def __enter__(self) -> TableSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def open(self) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook: most sources hold nothing open
        """Release what open() took (a file handle, a cursor); nothing by default."""

    @abstractmethod
    def batches(self) -> Iterator[pa.RecordBatch]: ...

    @abstractmethod
    def fingerprint(self) -> str:
        """sha256 of what was read (file bytes, or the rows a query returned)."""
        ...

    @property
    def text_bytes(self) -> int | None:
        """Bytes of delimited text this source reads, known before reading (after open());
        None where only rows can be counted (Parquet, SQL)."""
        return None


class _FileSource(TableSource):
    def __init__(self, path: Path, table: str) -> None:
        self.path = Path(path)
        self.table = table
        self.location = str(self.path)
        self.name = self.path.name
        self.columns = []

    def _require_file(self) -> None:
        if not self.path.is_file():
            raise SourceReadError(f"{self.path}: source file for table {self.table} not found")

    def fingerprint(self) -> str:
        sha = hashlib.sha256()
        with open(self.path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                sha.update(chunk)
        return sha.hexdigest()


class DelimitedSource(_FileSource):
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
            self._find_trailer()
        if not self.header:
            if not self.catalog_columns:
                raise SourceReadError(
                    f"{self.path}: no header row and no catalog columns to name the columns"
                )
            self.columns = list(self.catalog_columns)
            return
        codec = "utf-8-sig" if ENCODINGS[self.encoding] == "utf8" else self.encoding

        def lines(fh) -> Iterator[str]:  # decode only as far as the header reaches
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

    def _find_trailer(self) -> None:
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
        match = self.trailer.fullmatch(text)
        if match is None:
            raise SourceReadError(
                f"{self.path}: the last line is not the trailer source.trailer describes "
                f"({self.trailer.pattern!r}): the file may be truncated; get the export again, "
                f"or fix tables.{self.table}.source.trailer in catalog.yaml"
            )
        self._data_bytes = start + line_start
        if match.groups() and match.group(1) is not None:
            self._trailer_rows = int(match.group(1).replace(",", ""))

    def _csv_input(self):
        """The file for Arrow: whole, or only the bytes before the trailer line; with a
        delimiter of several characters, decoded and written as UTF-8 with 0x1F."""
        if self._data_bytes is None and not self.multi:
            return self.path
        raw = _Head(self.path, self._data_bytes if self._data_bytes is not None else -1)
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
        import pyarrow.csv as pacsv

        if not self.header and self.path.stat().st_size == 0:
            return
        if self._data_bytes == 0:  # nothing but the trailer
            yield pa.RecordBatch.from_pylist([]), 0
            return
        parse = pacsv.ParseOptions(
            delimiter=self.delimiter, quote_char=self.quote or False, newlines_in_values=True
        )
        convert = pacsv.ConvertOptions(
            column_types={c: pa.string() for c in self.columns}, strings_can_be_null=False
        )
        row = 0
        last: pa.RecordBatch | None = None
        block = self.block_size
        try:
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
                skip = row  # rows an earlier pass (smaller blocks) has given already
                try:
                    for batch in reader:
                        if batch.num_rows <= skip:
                            skip -= batch.num_rows
                            continue
                        if skip:
                            batch, skip = batch.slice(skip), 0
                        if batch.schema.names != self.columns:
                            raise SourceReadError(
                                f"{self.path}: columns changed while reading near row {row + 1}"
                            )
                        swallowed = self._swallowed(batch) if self.quote else None
                        if swallowed is not None:
                            raise SourceReadError(
                                self._swallowed_message(row + swallowed[0] + 1, swallowed[1])
                            )
                        out = _numbered(list(batch.columns), self.columns, row + 1)
                        row += batch.num_rows
                        last = batch
                        yield out, None
                    break
                except pa.ArrowInvalid as exc:
                    # A value longer than a block (a 10 MB free-text field): read again in
                    # bigger blocks, past the rows already given. Blocks are small because
                    # Arrow's read-ahead holds several of them.
                    if (
                        "straddles two block boundaries" not in str(exc)
                        or block >= MAX_CSV_BLOCK_BYTES
                    ):
                        raise
                    block = min(block * 16, MAX_CSV_BLOCK_BYTES)
        except UnicodeDecodeError as exc:
            # Arrow names the block, not the row; the re-scan names row, line and column.
            raise SourceReadError(
                self._diagnose()
                or (
                    f"{self.path}: cannot decode as {self.encoding} near row {row + 1} "
                    f"({exc.reason}); fix the export or set source.encoding in catalog.yaml"
                )
            ) from exc
        except pa.ArrowInvalid as exc:
            # Never Arrow's message as is: it quotes the broken row's values.
            raise SourceReadError(
                self._diagnose()
                or (
                    f"{self.path}: cannot parse as CSV near row {row + 1} ({_arrow_reason(exc)}); "
                    "fix the export"
                )
            ) from exc
        if last is not None and self.quote and _last_row_has_line_break(last):
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
            yield empty, row

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
            lines = itertools.chain(text, [_EOF])
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
                got = len(fields)
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
        return None

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


def _shown(name: str) -> str:
    """A column name for a one-line message (a header may hold line breaks)."""
    return name.replace("\r", "\\r").replace("\n", "\\n")


def _arrow_reason(exc: Exception) -> str:
    """What Arrow's CSV error says, without the row content it quotes."""
    text = str(exc)
    m = re.search(r"Expected \d+ columns?, got \d+", text)
    if m:
        return m.group(0)
    if "UTF8" in text or "UTF-8" in text:
        return "invalid UTF-8 data"
    return text.splitlines()[0].split(":", 1)[0][:80] if text else type(exc).__name__


def _has_line_break(col: pa.Array) -> bool:
    """Whether any value of a string column may hold CR or LF: a byte scan of its data."""
    import numpy as np

    data = col.buffers()[2]
    if data is None or data.size == 0:
        return False
    raw = np.frombuffer(data, dtype=np.uint8)
    return bool(np.any((raw == 10) | (raw == 13)))


def _last_row_has_line_break(batch: pa.RecordBatch) -> bool:
    for col in batch.columns:
        value = col[batch.num_rows - 1].as_py()
        if value and ("\n" in value or "\r" in value):
            return True
    return False


class MultiFileSource(TableSource):
    """One table exported as several files (the catalog's `files:` glob), read as one table
    in sorted name order. Every file needs the same columns (in any order). `_source_row`
    counts on across the files, so it stays unique in the table; errors name the file and
    the row within it."""

    def __init__(
        self, folder: Path, pattern: str, *, table: str, part: Callable[[Path], _FileSource]
    ) -> None:
        self.folder, self.pattern, self.table = Path(folder), pattern, table
        self.location = str(self.folder / pattern)
        self.name = pattern
        self.columns = []
        self._make = part
        self.parts: list[_FileSource] = []

    def open(self) -> None:
        paths = sorted(
            (p for p in self.folder.glob(self.pattern) if p.is_file()),
            key=lambda p: p.relative_to(self.folder).as_posix(),
        )
        if not paths:
            raise SourceReadError(
                f"{self.location}: no file matches source.files of table "
                f"{self.table}; export it or fix catalog.yaml"
            )
        self.parts = [self._make(p) for p in paths]
        first = self.parts[0]
        for part in self.parts:
            with part:
                columns = list(part.columns)
            if part is first:
                self.columns, self.what_columns = columns, part.what_columns
                continue
            missing = [c for c in self.columns if c not in columns]
            extra = [c for c in columns if c not in self.columns]
            if missing or extra:
                what = (
                    f"column '{_shown(missing[0])}' of {first.name} is missing"
                    if missing
                    else f"column '{_shown(extra[0])}' is not in {first.name}"
                )
                where = " line 1" if part.what_columns == "header" else ""
                raise SourceReadError(
                    f"{part.path}{where}: {what}; every file of table "
                    f"{self.table} ({self.pattern}) needs the same columns"
                )

    def batches(self) -> Iterator[pa.RecordBatch]:
        import pyarrow.compute as pc

        schema = pa.schema([(c, pa.string()) for c in self.columns] + [(ROW_COLUMN, pa.int64())])
        offset = 0
        for part in self.parts:
            rows = 0
            with part:
                for batch in part.batches():
                    numbers = pc.add(batch.column(ROW_COLUMN), pa.scalar(offset, pa.int64()))
                    yield pa.RecordBatch.from_arrays(
                        [batch.column(c) for c in self.columns] + [numbers], schema=schema
                    )
                    rows += batch.num_rows
            offset += rows

    @property
    def text_bytes(self) -> int | None:
        sizes = [part.text_bytes for part in self.parts]
        return None if not sizes or None in sizes else sum(sizes)

    def fingerprint(self) -> str:
        """sha256 over each file's name and sha256, in reading order."""
        sha = hashlib.sha256()
        for part in self.parts:
            sha.update(f"{part.name}\t{part.fingerprint()}\n".encode())
        return sha.hexdigest()


class ParquetSource(_FileSource):
    """A Parquet file, read a row group slice at a time; every column cast to text."""

    what_columns = "Parquet schema"

    def __init__(self, path: Path, *, table: str, batch_rows: int = DEFAULT_CHUNK_ROWS) -> None:
        super().__init__(path, table)
        self.batch_rows = batch_rows
        self._file: Any = None

    def open(self) -> None:
        import pyarrow.parquet as pq

        self._require_file()
        try:
            self._file = pq.ParquetFile(self.path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SourceReadError(
                f"{self.path}: not a readable Parquet file ({str(exc).splitlines()[0]})"
            ) from exc
        schema = self._file.schema_arrow
        for f in schema:
            if pa.types.is_nested(f.type):
                raise SourceReadError(
                    f"{self.path}: column '{f.name}' has type {f.type}, which "
                    "cannot be read as text; flatten it in the export"
                )
        self.columns = list(schema.names)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        row = 0
        for batch in self._file.iter_batches(batch_size=self.batch_rows):
            cols = []
            for name, col in zip(self.columns, batch.columns, strict=True):
                try:
                    cols.append(_as_text(col))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise SourceReadError(
                        f"{self.path}: column '{name}' ({col.type}) cannot be read as text near "
                        f"row {row + 1}: {str(exc).splitlines()[0]}"
                    ) from exc
            yield _numbered(cols, self.columns, row + 1)
            row += batch.num_rows


# ----------------------------------------------------------------------------- lines
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

    def _lines(self) -> Iterator[tuple[int, str | bytes]]:
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


class JsonLinesSource(_LineSource):
    """One JSON object a line (newer subsystems' exports). Values become text as the other
    readers give them (numbers as written, true/false, nested values as JSON); a key the
    catalog does not list stops the read, naming it (nothing is dropped silently)."""

    def batches(self) -> Iterator[pa.RecordBatch]:
        import json

        known = set(self.columns)
        rows: list[list[str | None]] = []
        first = row = 0
        for n, line in self._lines():
            row += 1
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise SourceReadError(
                    f"{self.path} row {row} (line {n}): not a JSON object "
                    f"({exc.msg} at column {exc.colno}); fix the export"
                ) from None
            if not isinstance(obj, dict):
                raise SourceReadError(
                    f"{self.path} row {row} (line {n}): a JSON "
                    f"{type(obj).__name__}, not an object; fix the export"
                )
            extra = [k for k in obj if k not in known]
            if extra:
                raise SourceReadError(
                    f"{self.path} row {row} (line {n}): key '{_shown(extra[0])}' is not a "
                    f"column of catalog table {self.table}; add it to catalog.yaml (or mark it "
                    "migrate: false)"
                )
            if not rows:
                first = row
            rows.append([_json_text(obj.get(c)) for c in self.columns])
            if len(rows) >= self.batch_rows:
                yield self._batch(rows, first)
                rows = []
        if rows:
            yield self._batch(rows, first)


def _json_text(value: Any) -> str | None:
    import json

    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


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
        lines = list(self._lines()) if self.trailer else None
        stream = lines if lines is not None else self._lines()
        trailer_rows = None
        if lines is not None:
            if not lines or not self.trailer.fullmatch(lines[-1][1].strip()):
                raise SourceReadError(
                    f"{self.path}: the last line is not the trailer "
                    "source.trailer describes: the file may be truncated"
                )
            m = self.trailer.fullmatch(lines[-1][1].strip())
            trailer_rows = int(m.group(1)) if m.groups() and m.group(1) else None
            stream = lines[:-1]
        rows: list[list[str | None]] = []
        first = row = 0
        for n, line in stream:
            row += 1
            data = line.encode(codec) if self.unit == "bytes" else line
            if len(data) != total:
                raise SourceReadError(
                    f"{self.path} row {row} (line {n}): {len(data)} {self.unit} where the "
                    f"widths add up to {total}; fix the export or source.widths in catalog.yaml"
                )
            out, at = [], 0
            for w in self.widths:
                piece = data[at : at + w]
                at += w
                try:
                    text = piece.decode(codec) if self.unit == "bytes" else piece
                except UnicodeDecodeError:
                    raise SourceReadError(
                        f"{self.path} row {row} (line {n}): column "
                        f"'{_shown(self.columns[len(out)])}' cuts a character in two; the "
                        "widths are in characters, not bytes (source.width_unit: chars)"
                    ) from None
                out.append(text.strip() or None)
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


# ----------------------------------------------------------------------------- Excel
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
        header = [None if v is None else str(v).strip() for v in (first or ())]
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
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise SourceReadError(
                f"{self._where} row 1: column '{_shown(dupes[0])}' appears "
                "more than once in the header"
            )
        self.columns = header

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


def _as_text(col: pa.Array) -> pa.Array:
    import pyarrow.compute as pc

    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pa.types.is_string(col.type):
        return col
    if pa.types.is_boolean(col.type):
        return pc.if_else(col, "true", "false")
    return pc.cast(col, pa.string())


# ----------------------------------------------------------------------------- SQL
def _sql_location(spec: dict[str, Any]) -> str:
    what = spec.get("table") or "query"
    return f"connection {spec.get('conn_id')} ({what})"


def _quote_ident(name: str, dialect: str) -> str:
    q = "`" if dialect == "mysql" else '"'
    return ".".join(q + part.replace(q, q + q) + q for part in name.split("."))


def _hash_column(sha: Any, col: pa.Array) -> None:
    """Feed a fresh string column to a hash: its value lengths (null = -1), then its bytes."""
    import numpy as np
    import pyarrow.compute as pc

    sha.update(pc.fill_null(pc.utf8_length(col), -1).to_numpy().astype(np.int64).tobytes())
    offsets = np.frombuffer(col.buffers()[1], dtype=np.int32)[
        col.offset : col.offset + len(col) + 1
    ]
    data = col.buffers()[2]
    if data is not None and len(offsets) and offsets[-1] > offsets[0]:
        sha.update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])


def _db_text(value: Any) -> str | None:
    """A DB-API value as text, the way the database would print it."""
    import datetime as dt
    from decimal import Decimal

    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


class SqlSource(TableSource):
    """A table or query in a SQL database reached through an Airflow connection, read in
    chunks of `chunk_rows` through a server-side cursor (PostgreSQL: a named cursor;
    MySQL/MariaDB: an unbuffered cursor; SQLite steps lazily), ordered by the table's key
    so row numbers are stable, optionally limited to a key or timestamp range
    (`start` inclusive, `end` exclusive). Values arrive as the database prints them."""

    what_columns = "query result"

    def __init__(
        self,
        conn_id: str,
        *,
        table: str,
        source_table: str | None = None,
        query: str | None = None,
        key: str | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        range_column: str | None = None,
        range_start: Any = None,
        range_end: Any = None,
    ) -> None:
        if bool(source_table) == bool(query):
            raise SourceReadError(
                f"table {table}: a sql source needs exactly one of 'table' or 'query'"
            )
        self.conn_id, self.table = conn_id, table
        self.source_table, self.query, self.key = source_table, query, key
        self.chunk_rows = chunk_rows
        self.range_column, self.range_start, self.range_end = range_column, range_start, range_end
        self.location = _sql_location({"conn_id": conn_id, "table": source_table})
        self.name = f"sql:{conn_id}/{source_table or 'query'}"
        self.columns = []
        self._conn: Any = None
        self._cur: Any = None
        self._sha = hashlib.sha256()
        self.dialect = ""

    # -- connecting
    def _connect(self) -> Any:
        from handover.config.connections import connection_dict

        conn = connection_dict(self.conn_id)
        if conn is None:
            raise SourceReadError(
                f"{self.location}: Airflow connection '{self.conn_id}' for table {self.table} "
                f"is not defined; set AIRFLOW_CONN_{self.conn_id.upper()} or add it in Airflow"
            )
        ctype = (conn.get("conn_type") or "").lower()
        self.dialect = SQL_DIALECTS.get(ctype, "")
        if not self.dialect:
            raise SourceReadError(
                f"{self.location}: connection type '{ctype}' is not supported "
                f"for reading; use one of {', '.join(sorted(SQL_DIALECTS))}"
            )
        try:
            if self.dialect == "postgres":
                import psycopg
                from psycopg.conninfo import make_conninfo
                from psycopg.types.string import TextLoader

                params = {
                    "host": conn["host"] or None,
                    "port": conn["port"] or None,
                    "user": conn["login"] or None,
                    "password": conn["password"] or None,
                    "dbname": conn["schema"] or None,
                }
                db = psycopg.connect(make_conninfo(**{k: v for k, v in params.items() if v}))
                for info in psycopg.postgres.types:  # every value as PostgreSQL prints it
                    db.adapters.register_loader(info.oid, TextLoader)
                return db
            if self.dialect == "sqlite":
                import sqlite3

                path = conn["host"] or conn["schema"]
                if not path or not Path(path).is_file():
                    raise SourceReadError(
                        f"{self.location}: SQLite database file {path!r} not found"
                    )
                return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                import pymysql
            except ImportError as exc:
                raise SourceReadError(
                    f"{self.location}: reading MySQL/MariaDB needs the "
                    "'pymysql' package, which is not installed"
                ) from exc
            return pymysql.connect(
                host=conn["host"] or "127.0.0.1",
                port=conn["port"] or 3306,
                user=conn["login"] or "root",
                password=conn["password"] or "",
                database=conn["schema"] or None,
                charset="utf8mb4",
            )
        except SourceReadError:
            raise
        except Exception as exc:  # noqa: BLE001 - drivers raise their own hierarchies
            raise SourceReadError(
                f"{self.location}: cannot connect "
                f"({type(exc).__name__}: {str(exc).splitlines()[0]})"
            ) from exc

    def statement(self) -> tuple[str, list[Any]]:
        """The SELECT this source runs, with its parameters."""
        mark = "?" if self.dialect == "sqlite" else "%s"
        base = (
            f"SELECT * FROM {_quote_ident(self.source_table, self.dialect)}"
            if self.source_table
            else f"SELECT * FROM ({self.query.strip().rstrip(';')}) handover_src"
        )
        where, params = [], []
        if self.range_column and self.range_start is not None:
            where.append(f"{_quote_ident(self.range_column, self.dialect)} >= {mark}")
            params.append(self.range_start)
        if self.range_column and self.range_end is not None:
            where.append(f"{_quote_ident(self.range_column, self.dialect)} < {mark}")
            params.append(self.range_end)
        stmt = base + (" WHERE " + " AND ".join(where) if where else "")
        if self.key:
            stmt += f" ORDER BY {_quote_ident(self.key, self.dialect)}"
        return stmt, params

    def open(self) -> None:
        self._conn = self._connect()
        try:
            if self.dialect == "postgres":
                self._cur = self._conn.cursor(name="handover_extract")
                self._cur.itersize = self.chunk_rows
            elif self.dialect == "mysql":
                import pymysql.cursors

                self._cur = self._conn.cursor(pymysql.cursors.SSCursor)
            else:
                self._cur = self._conn.cursor()
            stmt, params = self.statement()
            if self.dialect == "sqlite":
                self._cur.execute(stmt, params)
            else:  # no parameters: a '%' in the query is not a placeholder
                self._cur.execute(stmt, params or None)
            self.columns = [d[0] for d in self._cur.description]
        except SourceReadError:
            raise
        except Exception as exc:  # noqa: BLE001 - DB-API drivers raise their own hierarchies; re-raised as one SourceReadError
            self.close()
            raise SourceReadError(
                f"{self.location}: query failed ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            ) from exc

    def close(self) -> None:
        for thing in (self._cur, self._conn):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001, S110 - closing after a failure
                    pass
        self._cur = self._conn = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        row = 0
        text = _db_text if self.dialect != "postgres" else (lambda v: v)
        while True:
            try:
                rows = self._cur.fetchmany(self.chunk_rows)
            except Exception as exc:  # noqa: BLE001 - DB-API drivers raise their own hierarchies; re-raised as one SourceReadError
                raise SourceReadError(
                    f"{self.location}: reading failed near row {row + 1} "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0]})"
                ) from exc
            if not rows:
                return
            cols = [
                pa.array([text(v) for v in col], pa.string()) for col in zip(*rows, strict=True)
            ]
            for col in cols:
                _hash_column(self._sha, col)
            yield _numbered(cols, self.columns, row + 1)
            row += len(rows)

    def fingerprint(self) -> str:
        return self._sha.hexdigest()
