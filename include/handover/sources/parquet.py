"""Parquet exports: read a row group slice at a time, every column cast to text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from handover.core.errors import SourceReadError
from handover.sources.base import DEFAULT_CHUNK_ROWS, _FileSource, _numbered


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


def _as_text(col: pa.Array) -> pa.Array:
    import pyarrow.compute as pc

    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pa.types.is_string(col.type):
        return col
    if pa.types.is_boolean(col.type):
        return pc.if_else(col, "true", "false")
    return pc.cast(col, pa.string())
