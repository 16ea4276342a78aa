"""Vectorised helpers of the legacy_bss generator and the CSV sink that writes its files.

Epoch and calendar arithmetic, resident-ID check characters for whole arrays, unique
MSISDN draws, and `_CsvSink` (chunked Arrow CSV writing with a running SHA-256).
"""

from __future__ import annotations

import calendar
import hashlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from handover_synth.legacy_bss_spec import _ID_CHECK_CHARS, _ID_WEIGHTS
from handover_synth.legacy_bss_vocab import _MSISDN_PREFIXES

_WRITE_OPTIONS = pacsv.WriteOptions(include_header=False, quoting_style="none")

Progress = Callable[[str, int, float], None]


# --------------------------------------------------------------------------------------------
# Internal helpers
# --------------------------------------------------------------------------------------------


def _epoch(dt: datetime) -> int:
    return int((dt - datetime(1970, 1, 1)).total_seconds())


def _months_before(dt: datetime, months: int) -> datetime:
    year, month0 = divmod(dt.year * 12 + dt.month - 1 - months, 12)
    day = min(dt.day, calendar.monthrange(year, month0 + 1)[1])
    return dt.replace(year=year, month=month0 + 1, day=day)


def _uniform_int(
    rng: np.random.Generator, lo: np.ndarray | int, hi: np.ndarray | int, size: int
) -> np.ndarray:
    """Integers uniformly in [lo, hi] (inclusive), element-wise bounds allowed."""
    lo_a = np.asarray(lo, dtype=np.int64)
    span = np.asarray(hi, dtype=np.int64) - lo_a + 1
    return lo_a + (rng.random(size) * span).astype(np.int64)


def _day_strings(days: np.ndarray) -> np.ndarray:
    return np.datetime_as_string(days.astype("datetime64[D]"), unit="D")


def _ymd(days: np.ndarray) -> np.ndarray:
    """yyyymmdd integers for days since the epoch."""
    d = days.astype("datetime64[D]")
    months = d.astype("datetime64[M]")
    year = months.astype(np.int64) // 12 + 1970
    month = months.astype(np.int64) % 12 + 1
    dom = (d - months.astype("datetime64[D]")).astype(np.int64) + 1
    return year * 10000 + month * 100 + dom


def _check_chars(first17: np.ndarray) -> np.ndarray:
    """Vectorised GB 11643 check characters for int64 17-digit numbers."""
    powers = 10 ** np.arange(16, -1, -1, dtype=np.int64)
    digits = (first17[:, None] // powers) % 10
    idx = (digits * _ID_WEIGHTS).sum(axis=1) % 11
    return np.array(list(_ID_CHECK_CHARS))[idx]


def _numbers_with_prefix(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pa.array(numbers).cast(pa.string()), "")


def _random_msisdns(rng: np.random.Generator, size: int) -> np.ndarray:
    prefixes = _MSISDN_PREFIXES[rng.integers(0, len(_MSISDN_PREFIXES), size)]
    return prefixes * 100_000_000 + rng.integers(0, 100_000_000, size)


def _unique_msisdns(rng: np.random.Generator, size: int) -> np.ndarray:
    out = _random_msisdns(rng, size)
    while True:
        _, first = np.unique(out, return_index=True)
        dup = np.ones(size, dtype=bool)
        dup[first] = False
        if not dup.any():
            return out
        out[dup] = _random_msisdns(rng, int(dup.sum()))


class _CsvSink:
    """Writes one CSV file chunk by chunk and hashes the bytes on the way."""

    def __init__(self, path: Path, columns: tuple[str, ...]) -> None:
        self.path = path
        self.columns = columns
        self.rows = 0
        self._sha = hashlib.sha256()
        self._fh: IO[bytes] = path.open("wb")
        self._put((",".join(columns) + "\n").encode())

    def _put(self, data: Any) -> None:
        self._fh.write(data)
        self._sha.update(data)

    def write(self, columns: dict[str, Any]) -> None:
        table = pa.table({name: columns[name] for name in self.columns})
        if table.num_rows == 0:
            return
        buf = pa.BufferOutputStream()
        pacsv.write_csv(table, buf, _WRITE_OPTIONS)
        self._put(buf.getvalue())
        self.rows += table.num_rows

    def close(self) -> dict[str, Any]:
        self._fh.close()
        return {"file": self.path.name, "rows": self.rows, "sha256": self._sha.hexdigest()}
