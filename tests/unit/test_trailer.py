"""A count line at the end of a legacy export (`共2条`): declared, checked, never a row."""

from __future__ import annotations

import pytest

from handover.sources import DelimitedSource, SourceReadError

TRAILER = r"共(\d+)条"


def _read(path, encoding="gb18030", header=False):
    src = DelimitedSource(path, table="t", columns=["a", "b"], encoding=encoding,
                          delimiter="|", header=header, trailer=TRAILER)
    with src:
        return [r for b in src.batches() for r in b.to_pylist()]


@pytest.mark.parametrize("encoding", ["gb18030", "utf-16", "utf-8"])
def test_the_trailer_is_read_as_a_count_not_a_row(tmp_path, encoding):
    path = tmp_path / "t.txt"
    path.write_bytes("a|b\r\n1|x\r\n2|y\r\n共2条\r\n".encode(encoding))
    rows = _read(path, encoding, header=True)
    assert [(r["a"], r["b"]) for r in rows] == [("1", "x"), ("2", "y")]


def test_a_trailer_that_disagrees_with_the_rows_names_both_counts(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("1|x\n共3条\n".encode("gb18030"))
    with pytest.raises(SourceReadError, match=r"t\.txt: the trailer says 3 rows but the file "
                                              r"holds 1"):
        _read(path)


def test_a_file_without_its_trailer_is_taken_for_truncated(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("1|x\n2|y\n".encode("gb18030"))
    with pytest.raises(SourceReadError, match="the last line is not the trailer .* truncated"):
        _read(path)


def test_a_trailer_alone_is_an_empty_table(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("共0条\n".encode("gb18030"))
    assert _read(path) == []
