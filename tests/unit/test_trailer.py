"""A count line at the end of a legacy export (`共2条`): declared, checked, never a row."""

from __future__ import annotations

import pytest

from handover.sources import DelimitedSource, SourceReadError

TRAILER = r"共(\d+)条"


def _read(path, encoding="gb18030", header=False):
    src = DelimitedSource(
        path,
        table="t",
        columns=["a", "b"],
        encoding=encoding,
        delimiter="|",
        header=header,
        trailer=TRAILER,
    )
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
    with pytest.raises(
        SourceReadError,
        match=r"t\.txt: the trailer says 3 rows but the file "
        r"holds 1",
    ):
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


@pytest.mark.parametrize("encoding", ["gb18030", "utf-16", "utf-8"])
@pytest.mark.parametrize("delimiter", ["~|~", "||", "@@"])
def test_a_delimiter_of_several_characters(tmp_path, encoding, delimiter):
    """`~|~`, `||`: streamed through a filter, across read boundaries (a 3 MB file), with
    quoted values that hold the delimiter's characters."""
    d = delimiter
    rows = [f"{i}{d}客户{i}" for i in range(150_000)]
    body = f"a{d}b\r\n" + "\r\n".join(rows) + f'\r\nq{d}"x, {d[0]} y"\r\n'
    path = tmp_path / "t.txt"
    path.write_bytes(body.encode(encoding))
    src = DelimitedSource(
        path, table="t", columns=["a", "b"], encoding=encoding, delimiter=d, header=True
    )
    with src:
        got = [r for b in src.batches() for r in b.to_pylist()]
    assert src.columns == ["a", "b"]
    assert len(got) == 150_001
    assert got[12345]["b"] == "客户12345" and got[-1]["b"] == f"x, {d[0]} y"


def test_a_short_row_under_a_long_delimiter_is_named_by_row_and_line(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("a~|~b\n1~|~x\n2\n".encode("gb18030"))
    src = DelimitedSource(
        path, table="t", columns=["a", "b"], encoding="gb18030", delimiter="~|~", header=True
    )
    with pytest.raises(SourceReadError, match=r"t\.txt row 2 \(line 3\): expected 2 fields"):
        with src:
            list(src.batches())
