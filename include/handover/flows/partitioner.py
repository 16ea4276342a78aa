"""How a table is cut so no task holds too much: the partition bound, the hash split that
spreads an export's rows across partitions while extracting, and the slices comply, resolve
and cleanse work on within a partition."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa

from handover.storage.lake import PARQUET_OPTIONS, Lake

#: Rows comply, resolve and cleanse turn into pandas and work on at a time within a
#: partition. They hold several typed and text forms of each row they work on; in slices,
#: what a task holds grows with the slice, not with the partition (what they keep of each
#: slice is Arrow, about the size of the input).
SLICE_ROWS = int(os.environ.get("HANDOVER_SLICE_ROWS", "50000"))


# ---------------------------------------------------------------- extract
# The partition is the unit of memory and of Airflow's per-task cost (~0.14-0.2 s a task
# instance, eight task instances a partition). Stages that can stream hold a 50,000-row
# slice, not the partition; what does hold a partition (the gates' frames, the key
# columns) keeps the largest task under 0.8 GB at this bound. A table near the bound
# fills its partitions near it at every size (1 M call records: one partition; 10 M:
# ten), so the largest task does not grow with the export; at 1,200,000 the 10 M-row
# partitions were 11 % fuller than the 1 M-row one and the peak grew 17 %.
# docs/performance.md has the trade measured from 260,000 to 1,200,000.
MAX_PARTITION_ROWS = int(os.environ.get("HANDOVER_MAX_PARTITION_ROWS", "1050000"))
# Rows alone do not bound a partition: 1,050,000 subscribers (165 bytes a row in the
# export) weigh twice 1,050,000 call records (90 bytes).
MAX_PARTITION_BYTES = int(os.environ.get("HANDOVER_MAX_PARTITION_BYTES", str(120 << 20)))


SPLIT_BYTES = 16 << 20  # source rows gathered before one hash split across partitions


def partition_count(
    configured: int, expected_rows: int | None, text_bytes: int | None = None
) -> int:
    """At least the catalog's count, more when the table is big: each partition (the unit of
    memory, retry and parallelism) stays under MAX_PARTITION_ROWS rows and, where the export
    is delimited text, under MAX_PARTITION_BYTES of it."""
    by_rows = -(-expected_rows // MAX_PARTITION_ROWS) if expected_rows else 0
    by_bytes = -(-text_bytes // MAX_PARTITION_BYTES) if text_bytes else 0
    return max(configured, by_rows, by_bytes)


class HashSplit:
    """Rows into `n_parts` raw Parquet files in `folder`, by a hash of their key as cleanse
    will see it (NFKC, trimmed), so that spellings of one key meet in one partition and are
    caught there as DUPLICATE_KEY. Keeps rows and a key-hash sum per partition (the
    ledger's extract checksum). The migration's extract and the nightly sync's share it.

    Batches (all columns text, plus `_source_row`) are gathered to SPLIT_BYTES before one
    split, so that each partition's file gets row groups of thousands of rows, not
    hundreds; the split is one `take` sorted by partition, then a slice per partition."""

    def __init__(
        self,
        folder: Path,
        columns: list[str],
        key: str,
        n_parts: int,
        options: Callable[[int], dict] | None = None,
        folds: dict[str, str] | None = None,
    ) -> None:
        """`options(i)`: the Parquet writer options of partition i, from the lake
        (`lake.parquet_options(key)`: encrypted under the raw stage's key), so the
        temporary files that hold raw rows on local disk are never plain Parquet.
        `folds` ({column: upper|lower}, SourceConfig.key_folds): key columns written
        normalised and case-folded, so every stage sees one spelling of a key."""
        import pyarrow.parquet as pq

        self.key, self.n_parts = key, n_parts
        self.folds = {c: f for c, f in (folds or {}).items() if c in columns}
        self.paths = [folder / f"{i}.parquet" for i in range(n_parts)]
        self.counts = [0] * n_parts
        self.rows = 0
        self._sums = [0] * n_parts
        self._pending: list[pa.RecordBatch] = []
        self._pending_bytes = 0
        schema = pa.schema([(c, pa.string()) for c in columns] + [("_source_row", pa.int64())])
        self._writers: list = []
        try:
            for path in self.paths:
                opts = options(len(self._writers)) if options else PARQUET_OPTIONS
                self._writers.append(pq.ParquetWriter(path, schema, **opts))
        except BaseException:
            self.close(flush=False)
            raise

    def add(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        self._pending.append(batch)
        self._pending_bytes += batch.nbytes
        if self._pending_bytes >= SPLIT_BYTES:
            self._flush()

    def checksum(self, i: int) -> str:
        return f"{self._sums[i]:016x}"

    def close(self, flush: bool = True) -> None:
        """Split what is gathered (unless `flush` is false: a failed read) and close every
        file; safe to call twice."""
        try:
            if flush:
                self._flush()
        finally:
            self._pending = []
            for w in self._writers:
                w.close()
            self._writers = []

    def _flush(self) -> None:
        import numpy as np

        from handover.core.validators import normalise_key, normalise_text

        if not self._pending:
            return
        batch = pa.Table.from_batches(self._pending).combine_chunks().to_batches()[0]
        self._pending, self._pending_bytes = [], 0
        for col, case in self.folds.items():
            i = batch.schema.get_field_index(col)
            batch = batch.set_column(i, col, normalise_key(batch.column(i), case))
        keys = normalise_text(batch.column(self.key)).to_numpy(zero_copy_only=False)
        hashed = pd.util.hash_array(keys, categorize=False)
        pid = (hashed % np.uint64(self.n_parts)).astype(np.int64)
        order = np.argsort(pid, kind="stable")
        bounds = np.searchsorted(pid[order], np.arange(self.n_parts + 1))
        grouped = batch.take(pa.array(order))
        for i in range(self.n_parts):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            if hi > lo:
                self._writers[i].write_batch(grouped.slice(lo, hi - lo))
                self.counts[i] += hi - lo
                self._sums[i] = (
                    self._sums[i] + int(np.sum(hashed[order[lo:hi]], dtype=np.uint64))
                ) % 2**64


def _drop_dir(tmp: Path, split: HashSplit | None) -> None:
    import shutil

    if split is not None:
        split.close(flush=False)
    shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- cleanse
def _slices(
    lake: Lake, key: str, key_column: str, drop: tuple[str, ...] = (), whole: tuple[str, ...] = ()
):
    """One stage input a slice at a time: (the columns `whole` and the duplicate-key flags
    of the whole partition (None without the key column), then (rows before the slice,
    slice as pandas) pairs). Only those columns are read whole; the rest is read and
    converted a slice at a time, never all at once. A partition without rows gives one
    empty slice, so its outputs keep their columns."""
    from handover.stages.cleanse import duplicate_keys

    cols, schema = lake.read_projected(key, list(dict.fromkeys([key_column, *whole])))
    dup = duplicate_keys(cols.column(key_column)) if key_column in schema.names else None
    columns = [n for n in schema.names if n not in drop]

    def frames():
        start = 0
        for batch in lake.iter_batches(key, columns, batch_rows=SLICE_ROWS):
            yield start, batch.to_pandas()
            start += batch.num_rows
        if start == 0:
            yield 0, pa.schema([schema.field(c) for c in columns]).empty_table().to_pandas()

    return cols, dup, frames()


def _arrow_frame(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(df, preserve_index=False)


def _concat(tables: list[pa.Table]) -> pa.Table:
    """Slices' results as one table: a column null throughout one slice has Arrow's null
    type there and takes the other slices' type."""
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")  # no copy of the data
