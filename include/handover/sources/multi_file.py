"""One table exported as several files (the catalog's `files:` glob), read as one."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa

from handover.core.errors import SourceReadError
from handover.sources.base import ROW_COLUMN, TableSource, _FileSource, _shown


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
        known = [size for size in sizes if size is not None]
        return None if not sizes or len(known) < len(sizes) else sum(known)

    def fingerprint(self) -> str:
        """sha256 over each file's name and sha256, in reading order."""
        sha = hashlib.sha256()
        for part in self.parts:
            sha.update(f"{part.name}\t{part.fingerprint()}\n".encode())
        return sha.hexdigest()
