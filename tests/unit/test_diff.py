"""Segment-hash diff (handover.stages.diff): the bisection names exactly the differing keys, and
fetches rows only from the segments that differ."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from handover.stages.diff import MOD, NULL, FrameSide, canonical, diff_sides, row_hash


def _side(name: str, rows: dict[str, tuple]) -> FrameSide:
    return FrameSide(name, list(rows), [row_hash(v) for v in rows.values()])


def _table(n: int) -> dict[str, tuple]:
    return {
        f"C{i:08d}": (f"city{i % 7}", i * 10, dt.datetime(2026, 11, 1, i % 24)) for i in range(n)
    }


def test_equal_sides_compare_one_segment_and_fetch_nothing():
    rows = _table(5000)

    result = diff_sides(_side("old", rows), _side("new", dict(reversed(rows.items()))))

    assert result.differing == 0
    assert result.segments_compared == 1 and result.rows_fetched == 0
    assert (result.left_rows, result.right_rows) == (5000, 5000)


def test_bisection_names_missing_extra_and_changed_keys():
    old = _table(20000)
    new = dict(old)
    del new["C00000007"], new["C00012345"]
    new["C00019999"] = ("elsewhere", 1, dt.datetime(2026, 11, 2))
    new["C99999999"] = ("new", 0, None)

    result = diff_sides(_side("old", old), _side("new", new), bisection_factor=8, threshold=64)

    assert result.only_left == ["C00000007", "C00012345"]
    assert result.only_right == ["C99999999"]
    assert result.changed == ["C00019999"]
    assert result.keys() == ["C00000007", "C00012345", "C00019999", "C99999999"]
    # only the segments around the four keys were fetched, not the 40,000 rows
    assert result.rows_fetched < 4 * 2 * 64


def test_one_side_empty():
    rows = _table(100)

    result = diff_sides(_side("old", rows), _side("new", {}), threshold=10)

    assert result.only_left == sorted(rows) and result.only_right == [] and result.changed == []


def test_keys_must_be_unique():
    with pytest.raises(ValueError, match="unique"):
        FrameSide("x", ["a", "a"], [1, 2])


def test_summary_is_count_and_sum_mod_2_64():
    side = FrameSide("x", ["b", "a", "c"], [2**63 - 1, 5, -3])

    assert side.summary(None, None) == (3, (2**63 - 1 + 5 - 3) % MOD)
    assert side.summary("b", None) == (2, (2**63 - 1 - 3) % MOD)
    assert side.summary(None, "b") == (1, 5)
    assert side.split_points(None, None, 3) == ["b", "c"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, NULL),
        (float("nan"), NULL),
        (pd.NaT, NULL),
        (pd.NA, NULL),
        (True, "true"),
        (np.bool_(False), "false"),
        (np.int64(42), "42"),
        (7.0, "7"),
        (pd.Timestamp("2026-11-02 03:04:05"), "2026-11-02 03:04:05"),
        (dt.date(2026, 11, 2), "2026-11-02"),
        ("上海市", "上海市"),
    ],
)
def test_canonical_text(value, text):
    assert canonical(value) == text


def test_row_hash_is_signed_64_bit_and_order_sensitive():
    h = row_hash(["a", 1, None])

    assert -(2**63) <= h < 2**63
    assert h == row_hash(["a", np.int64(1), float("nan")])
    assert h != row_hash([1, "a", None])
