"""What every reader shares: the `TableSource` interface, the `_source_row` column and
the encodings a text export may come in.

A reader turns one catalog table into record batches whose data columns are all
``pa.string()`` plus the 1-based ``_source_row`` (int64) that every later stage uses to
point at a row without showing its values. Typing is cleansing's job, so nothing here
guesses types.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from handover.core.errors import SourceReadError

ROW_COLUMN = "_source_row"
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


def _shown(name: str) -> str:
    """A column name for a one-line message (a header may hold line breaks)."""
    return name.replace("\r", "\\r").replace("\n", "\\n")
