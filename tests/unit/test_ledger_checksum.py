"""ledger.key_checksum: the same key set gives the same checksum in every form a stage
holds it (Python list, object array, Arrow column in chunks), in any order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from handover.db.ledger import key_checksum


def test_arrow_chunks_list_and_array_agree():
    keys = [f"K{i:07d}" for i in range(150_000)] + [None, "", "客户-1"]  # > two 65,536 slices
    want = key_checksum(keys)
    assert key_checksum(np.array(keys, dtype=object)) == want
    assert key_checksum(pa.array(keys)) == want
    chunked = pa.chunked_array([pa.array(keys[:70_001]), pa.array(keys[70_001:])])
    assert key_checksum(chunked) == want
    assert key_checksum(pa.array(list(reversed(keys)))) == want  # order-independent
    assert key_checksum(pa.array(keys[:-1])) != want  # one key fewer: a different sum


def test_empty_and_integer_keys():
    assert key_checksum(pa.array([], pa.string())) == key_checksum([]) == "0" * 16
    assert key_checksum(pa.array([1, 2, 3], pa.int64())) == key_checksum([3, 2, 1])
