"""The hash split that the migration's extract and the nightly sync share."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from handover.db.ledger import key_checksum
from handover.flows.migration import SPLIT_BYTES, HashSplit


def _batch(keys: list[str], first_row: int = 1) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [
            pa.array(keys),
            pa.array([f"v{i}" for i in range(len(keys))]),
            pa.array(np.arange(first_row, first_row + len(keys), dtype=np.int64)),
        ],
        names=["id", "value", "_source_row"],
    )


def _read(split: HashSplit) -> list[pa.Table]:
    return [pq.read_table(p) for p in split.paths]


def test_spellings_of_one_key_meet_in_one_partition(tmp_path):
    # Full-width letters and digits, and padding, are the same key once cleanse
    # normalises it; it must see both rows to quarantine the second as DUPLICATE_KEY.
    keys = [f"C{i:04d}" for i in range(400)]
    spelled = ["\uff23\uff10\uff10\uff11\uff17", "  C0042 ", "C0399\u3000"]
    split = HashSplit(tmp_path, ["id", "value"], "id", 8)
    split.add(_batch(keys))
    split.add(_batch(spelled, first_row=401))
    split.close()
    tables = _read(split)
    where = {k: i for i, t in enumerate(tables) for k in t.column("id").to_pylist()}
    assert where[spelled[0]] == where["C0017"]
    assert where[spelled[1]] == where["C0042"]
    assert where[spelled[2]] == where["C0399"]
    assert len({i for i in where.values()}) > 1  # really spread over partitions


def test_every_row_lands_once_with_its_row_number_and_checksum(tmp_path):
    keys = [f"K{i}" for i in range(5000)]
    split = HashSplit(tmp_path, ["id", "value"], "id", 3)
    for start in range(0, 5000, 700):  # several batches, gathered before one split
        split.add(_batch(keys[start : start + 700], first_row=start + 1))
    split.close()
    split.close()  # twice is harmless
    tables = _read(split)
    assert split.rows == 5000 and sum(split.counts) == 5000
    assert [t.num_rows for t in tables] == split.counts
    rows = sorted(r for t in tables for r in t.column("_source_row").to_pylist())
    assert rows == list(range(1, 5001))
    for i, t in enumerate(tables):
        assert split.checksum(i) == key_checksum(t.column("id"))
        assert t.schema.names == ["id", "value", "_source_row"]


def test_large_input_is_split_while_it_streams(tmp_path):
    split = HashSplit(tmp_path, ["id", "value"], "id", 2)
    big = _batch([f"K{i:08d}" + "x" * 200 for i in range(SPLIT_BYTES // 200 + 1000)])
    split.add(big)
    # past SPLIT_BYTES the gathered rows are written at once, not held to the end
    assert sum(split.counts) == big.num_rows
    split.close()


def test_a_failed_read_writes_what_was_not_split_nowhere(tmp_path):
    split = HashSplit(tmp_path, ["id", "value"], "id", 2)
    split.add(_batch(["a", "b", "c"]))
    split.close(flush=False)
    assert sum(split.counts) == 0
    assert all(pq.read_table(p).num_rows == 0 for p in split.paths)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_utf16_export_is_read_with_its_encoding(tmp_path, encoding):
    from handover.sources import DelimitedSource

    path = tmp_path / "t.csv"
    path.write_text('cust_id,name\r\nC1,张三\r\nC2,"李四,\n续"\r\n', encoding=encoding)
    with DelimitedSource(path, table="t", encoding=encoding) as source:
        rows = [b.to_pydict() for b in source.batches()]
    assert source.columns == ["cust_id", "name"]
    assert rows[0]["name"] == ["张三", "李四,\n续"]


def test_a_utf16_file_read_as_utf8_says_which_encoding_to_set(tmp_path):
    from handover.sources import DelimitedSource, SourceReadError

    path = tmp_path / "t.csv"
    path.write_text("cust_id,name\r\nC1,张三\r\n", encoding="utf-16")
    with pytest.raises(SourceReadError, match="UTF-16.*source.encoding: utf-16"):
        DelimitedSource(path, table="t").open()
