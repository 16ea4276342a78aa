"""handover.sources.readers: every export shape becomes text record batches numbered from row 1.

Delimited text in the four encodings Chinese BSS exports use, with any delimiter, quoted
newlines, with and without a header row; Parquet of any flat type; and SQL tables read in
chunks through a server-side cursor from the machine's PostgreSQL (and SQLite through the
generic DB-API path). MariaDB runs only if a MySQL driver is installed (none is in this
environment, so that test skips).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from handover.sources import (
    DelimitedSource,
    ParquetSource,
    SourceReadError,
    SqlSource,
    head,
    open_source,
)
from tests.conftest import create_database, drop_database, pg_dsn

pytestmark = pytest.mark.integration

ROWS = [
    {"编号": "C1", "姓名": "张三", "备注": "多\n行 text"},
    {"编号": "C2", "姓名": "李四", "备注": 'has "quotes" and | and ,'},
    {"编号": "C3", "姓名": "𠮷野", "备注": ""},
]


def read_all(source) -> pa.Table:
    with source:
        batches = list(source.batches())
    return pa.Table.from_batches(batches) if batches else None


def write_delimited(
    path: Path, rows: list[dict], *, encoding: str, delimiter: str, header: bool = True
) -> None:
    import csv

    with open(path, "w", encoding=encoding, newline="") as fh:
        w = csv.writer(fh, delimiter=delimiter, lineterminator="\r\n")
        if header:
            w.writerow(rows[0].keys())
        for r in rows:
            w.writerow(r.values())


# -- delimited text -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoding, delimiter",
    [
        ("utf-8", ","),
        ("utf-8-sig", "|"),
        ("gb18030", "\t"),
        ("gb18030", ";"),
    ],
)
def test_encodings_delimiters_and_quoted_newlines(tmp_path, encoding, delimiter):
    path = tmp_path / "t.csv"
    write_delimited(path, ROWS, encoding=encoding, delimiter=delimiter)

    table = read_all(DelimitedSource(path, table="t", encoding=encoding, delimiter=delimiter))

    assert table.column_names == ["编号", "姓名", "备注", "_source_row"]
    assert table.schema.field("备注").type == pa.string()
    assert table.schema.field("_source_row").type == pa.int64()
    assert table.to_pylist() == [r | {"_source_row": i} for i, r in enumerate(ROWS, start=1)]


def test_gbk_transcodes_and_names_the_row_it_cannot_decode(tmp_path):
    rows = [{"编号": f"C{i}", "姓名": "王五"} for i in range(5)]
    path = tmp_path / "t.txt"
    write_delimited(path, rows, encoding="gbk", delimiter="|")

    table = read_all(DelimitedSource(path, table="t", encoding="gbk", delimiter="|"))
    assert table.column("姓名").to_pylist() == ["王五"] * 5

    with pytest.raises(SourceReadError) as err:  # the same GBK file read as UTF-8
        read_all(DelimitedSource(path, table="t", encoding="utf-8", delimiter="|"))
    assert str(path) in str(err.value) and "line 1" in str(err.value)
    assert "\n" not in str(err.value)


def test_undecodable_bytes_in_the_body_name_file_and_row(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("a|b\nx|王\n".encode("gbk") + b"y|\xff\xfe\n")

    with pytest.raises(SourceReadError) as err:
        read_all(DelimitedSource(path, table="t", encoding="gbk", delimiter="|"))
    assert str(err.value).startswith(f"{path} row 2 (line 3): column 'b' cannot be decoded as gbk;")
    assert "source.encoding" in str(err.value)


def test_no_header_takes_names_from_the_catalog(tmp_path):
    path = tmp_path / "t.dat"
    write_delimited(path, ROWS, encoding="gb18030", delimiter="\t", header=False)

    table = read_all(
        DelimitedSource(
            path,
            table="t",
            columns=["id", "name", "note"],
            encoding="gb18030",
            delimiter="\t",
            header=False,
        )
    )

    assert table.column_names == ["id", "name", "note", "_source_row"]
    assert table.column("name").to_pylist() == ["张三", "李四", "𠮷野"]
    assert table.column("_source_row").to_pylist() == [1, 2, 3]


def test_no_header_with_a_wrong_column_count_names_the_row(tmp_path):
    path = tmp_path / "t.dat"
    path.write_text("a,b,c\nd,e,f\ng,h\n", encoding="utf-8")

    with pytest.raises(SourceReadError) as err:
        read_all(DelimitedSource(path, table="t", columns=["x", "y", "z"], header=False))
    assert str(err.value).startswith(
        f"{path} row 3 (line 3): expected 3 fields, got 2 (column 'z' and after are missing"
    )


SECRET = "张三丰"  # a value no error may quote


def _rows(n: int, *, multiline: bool = True) -> list[list[str]]:
    """Rows of k,name,note,n; every 5th note holds a line break (so it is quoted)."""
    return [
        [f"K{i:05d}", SECRET, f"第{i}行\n续" if multiline and i % 5 == 0 else f"v{i}", str(i)]
        for i in range(1, n + 1)
    ]


def _write(path: Path, rows: list[list[str]], tail: bytes = b"") -> None:
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([["k", "name", "note", "n"], *rows])
    path.write_bytes(buf.getvalue().encode() + tail)


@pytest.mark.parametrize(
    "case, row, says",
    [
        ("short", 700, "expected 4 fields, got 2 (column 'note' and after are missing"),
        ("extra", 701, "expected 4 fields, got 5 (1 more than the header"),
        (
            "truncated",
            1001,
            "expected 4 fields, got 3 (column 'n' and after are missing; the "
            "file ends inside this row",
        ),
    ],
)
def test_a_broken_row_is_named_exactly_across_blocks_and_no_value_is_quoted(
    tmp_path, case, row, says
):
    rows = _rows(1000)
    tail = b""
    if case == "short":
        rows[row - 1] = rows[row - 1][:2]
    elif case == "extra":
        rows[row - 1] = rows[row - 1] + ["x"]
    else:
        tail = f"K99999,{SECRET},cut".encode()
    path = tmp_path / "t.csv"
    _write(path, rows, tail)
    # Rows 1..row-1 hold 1 + (row-1)//5 quoted two-line values: the line is further down.
    line = row + 1 + (row - 1) // 5

    with pytest.raises(SourceReadError) as err:
        read_all(DelimitedSource(path, table="t", block_size=4096))
    message = str(err.value)
    assert message.startswith(f"{path} row {row} (line {line}): {says}"), message
    assert SECRET not in message and "K0" not in message and "\n" not in message


def test_an_unclosed_quote_names_the_row_where_it_opens(tmp_path):
    path = tmp_path / "t.csv"
    _write(path, _rows(600, multiline=False))
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[3] = lines[3].replace(",v3,", ',"v3,')  # row 3 (line 4): note opens a quote
    path.write_text("".join(lines), encoding="utf-8")

    with pytest.raises(SourceReadError) as err:
        read_all(DelimitedSource(path, table="t", block_size=4096))
    message = str(err.value)
    assert message.startswith(
        f"{path} row 3 (line 4): column 'note' opens a quote that is "
        f"never closed, so lines 4 to {len(lines)} (the end of the "
        "file) would be read as one value;"
    ), message
    assert SECRET not in message

    # Closed by a stray quote six rows on: a row of four fields again, with rows 4-8 inside.
    lines[9] = lines[9].replace(",v9,", ',v9",')
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(SourceReadError) as err:
        read_all(DelimitedSource(path, table="t", block_size=4096))
    assert str(err.value).startswith(
        f"{path} row 3 (line 4): column 'note' runs over lines 4 to 10, which look like rows "
        "of this file: a quote opened in this row is closed only in a later one;"
    ), err.value

    # Closed in the next row: the merged row has a field too many. (Closed where the merged
    # row has the right count again and less than a row inside, only the manifest's row count
    # can tell.)
    lines[9] = lines[9].replace(',v9",', ",v9,")
    lines[4] = lines[4].replace(f"{SECRET},", f'{SECRET}",')
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(SourceReadError) as err:
        read_all(DelimitedSource(path, table="t", block_size=4096))
    assert str(err.value).startswith(
        f"{path} row 3 (line 4): expected 4 fields, got 5 (1 more than the header; a quoted "
        "value runs from line 4 to line 5: check for an unbalanced quote)"
    ), err.value


def test_a_quoted_line_break_in_the_last_row_is_only_a_value(tmp_path):
    rows = _rows(5)  # row 5 holds "第5行\n续"
    path = tmp_path / "t.csv"
    _write(path, rows)

    table = read_all(DelimitedSource(path, table="t"))

    assert table.column("note").to_pylist()[-1] == "第5行\n续"


def test_one_undecodable_value_names_its_row_and_column(tmp_path):
    path = tmp_path / "t.csv"
    _write(path, _rows(300))
    lines = path.read_bytes().split(b"\n")
    lines[200] = lines[200].replace(SECRET.encode(), SECRET.encode("gbk"))
    path.write_bytes(b"\n".join(lines))
    row = next(i for i in range(1, 301) if i + 1 + (i - 1) // 5 == 201)  # line 201

    with pytest.raises(SourceReadError) as err:
        read_all(DelimitedSource(path, table="t", block_size=4096))
    message = str(err.value)
    assert message.startswith(
        f"{path} row {row} (line 201): column 'name' cannot be decoded as utf-8;"
    ), message


def test_empty_headerless_file_is_zero_rows_and_empty_header_file_is_an_error(tmp_path):
    empty = tmp_path / "e.csv"
    empty.write_bytes(b"")

    assert read_all(DelimitedSource(empty, table="t", columns=["a"], header=False)) is None
    with pytest.raises(SourceReadError, match="file is empty"):
        read_all(DelimitedSource(empty, table="t"))


def test_no_quoting_keeps_quote_characters(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('a|b\n"x|y"z\n', encoding="utf-8")

    table = read_all(DelimitedSource(path, table="t", delimiter="|", quote=""))

    assert table.to_pylist() == [{"a": '"x', "b": 'y"z', "_source_row": 1}]


def test_many_small_blocks_keep_row_numbers_and_multiline_values(tmp_path):
    rows = [{"k": f"K{i:05d}", "v": f"第{i}行\n续" if i % 7 == 0 else f"v{i}"} for i in range(3000)]
    path = tmp_path / "t.csv"
    write_delimited(path, rows, encoding="gbk", delimiter=",")

    source = DelimitedSource(path, table="t", encoding="gbk", block_size=4096)
    with source:
        batches = list(source.batches())

    assert len(batches) > 5
    table = pa.Table.from_batches(batches)
    assert table.column("_source_row").to_pylist() == list(range(1, 3001))
    assert table.column("v").to_pylist() == [r["v"] for r in rows]
    assert source.fingerprint() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_value_longer_than_a_block_is_read_once_in_bigger_blocks(tmp_path):
    # Rows before it are given in small blocks; the long value makes the reader start
    # again with bigger blocks, past those rows: none twice, none lost, numbers intact.
    rows = [{"k": f"K{i:04d}", "v": f"v{i}"} for i in range(2000)]
    rows[1500]["v"] = "长" * 3000 + "\n" + "x" * 20000  # ~29 KB, a quoted line break inside
    path = tmp_path / "t.csv"
    write_delimited(path, rows, encoding="utf-8", delimiter=",")

    source = DelimitedSource(path, table="t", block_size=4096)
    with source:
        batches = list(source.batches())

    table = pa.Table.from_batches(batches)
    assert table.column("_source_row").to_pylist() == list(range(1, 2001))
    assert table.column("v").to_pylist() == [r["v"] for r in rows]


def test_missing_file_and_default_source_is_todays_csv(tmp_path):
    spec = {"key": "a", "columns": {"a": {}, "b": {}}}

    with pytest.raises(SourceReadError, match="source file for table things not found"):
        read_all(open_source("things", spec, tmp_path))
    (tmp_path / "things.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    source = open_source("things", spec, tmp_path)
    assert isinstance(source, DelimitedSource) and source.encoding == "utf-8"
    assert read_all(source).to_pylist() == [{"a": "1", "b": "2", "_source_row": 1}]


# -- one table in several files ----------------------------------------------------------


def test_a_files_glob_reads_one_table_in_name_order(tmp_path):
    (tmp_path / "pay_2.csv").write_text("k,v\nB1,2\nB2,3\n", encoding="utf-8")
    (tmp_path / "pay.csv").write_text("k,v\nA1,1\n", encoding="utf-8")
    (tmp_path / "pay_10.csv").write_text("v,k\n9,C1\n", encoding="utf-8")  # other order
    (tmp_path / "other.csv").write_text("x\n1\n", encoding="utf-8")
    spec = {"key": "k", "columns": {"k": {}, "v": {}}, "source": {"files": "pay*.csv"}}

    source = open_source("payments", spec, tmp_path)
    table = read_all(source)

    assert source.location == str(tmp_path / "pay*.csv") and source.columns == ["k", "v"]
    assert [p.name for p in source.parts] == ["pay.csv", "pay_10.csv", "pay_2.csv"]
    assert table.to_pylist() == [
        {"k": "A1", "v": "1", "_source_row": 1},
        {"k": "C1", "v": "9", "_source_row": 2},
        {"k": "B1", "v": "2", "_source_row": 3},
        {"k": "B2", "v": "3", "_source_row": 4},
    ]
    want = hashlib.sha256()
    for name in ("pay.csv", "pay_10.csv", "pay_2.csv"):
        want.update(
            f"{name}\t{hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()}\n".encode()
        )
    assert source.fingerprint() == want.hexdigest()


def test_partitions_are_bounded_by_rows_and_by_bytes_of_text(tmp_path, monkeypatch):
    from handover.flows import migration as pipeline
    from handover.flows import partitioner

    (tmp_path / "a_1.csv").write_text("k,v\n" + "K1,xxxxxxxx\n" * 50, encoding="utf-8")
    (tmp_path / "a_2.csv").write_text("k,v\nK2,1\n", encoding="utf-8")
    glob = open_source("a", {"key": "k", "source": {"files": "a_*.csv"}}, tmp_path)
    one = open_source("a", {"key": "k", "source": {"file": "a_2.csv"}}, tmp_path)
    pq.write_table(pa.table({"k": ["K1"]}), tmp_path / "p.parquet")
    parquet = open_source(
        "p", {"key": "k", "source": {"file": "p.parquet", "format": "parquet"}}, tmp_path
    )
    for source in (glob, one, parquet):
        source.open()
    assert glob.text_bytes == (tmp_path / "a_1.csv").stat().st_size + 9
    assert one.text_bytes == 9 and parquet.text_bytes is None

    monkeypatch.setattr(partitioner, "MAX_PARTITION_ROWS", 100)
    monkeypatch.setattr(partitioner, "MAX_PARTITION_BYTES", 1000)
    assert pipeline.partition_count(2, None, None) == 2  # the catalog's count
    assert pipeline.partition_count(1, 250, None) == 3  # rows
    assert pipeline.partition_count(1, 250, 4500) == 5  # bytes weigh more
    assert pipeline.partition_count(8, 250, 4500) == 8  # never under the catalog


def test_a_files_glob_names_the_file_and_its_own_row(tmp_path):
    (tmp_path / "pay_1.csv").write_text("k,v\nA1,1\nA2,2\n", encoding="utf-8")
    (tmp_path / "pay_2.csv").write_text("k,v\nB1,1\nB2\n", encoding="utf-8")
    spec = {"key": "k", "columns": {"k": {}, "v": {}}, "source": {"files": "pay_*.csv"}}

    with pytest.raises(SourceReadError) as err:
        read_all(open_source("payments", spec, tmp_path))
    assert str(err.value).startswith(
        f"{tmp_path / 'pay_2.csv'} row 2 (line 3): expected 2 fields, got 1"
    )

    (tmp_path / "pay_2.csv").write_text("k,w\nB1,1\n", encoding="utf-8")
    with pytest.raises(SourceReadError) as err:
        read_all(open_source("payments", spec, tmp_path))
    assert str(err.value).startswith(
        f"{tmp_path / 'pay_2.csv'} line 1: column 'v' of pay_1.csv is missing"
    )

    spec["source"]["files"] = "nothing_*.csv"
    with pytest.raises(SourceReadError, match="no file matches source.files of table payments"):
        read_all(open_source("payments", spec, tmp_path))


def test_every_export_file_is_read_by_a_table(tmp_path):
    from handover.sources import check_export_files

    tables = {
        "subs": {"key": "k", "columns": {"k": {}}},
        "pays": {"key": "k", "columns": {"k": {}}},
    }
    for name in ("subs.csv", "pays.csv", "truth.csv", "export_manifest.json", "notes.md"):
        (tmp_path / name).write_text("k\n1\n", encoding="utf-8")
    (tmp_path / "source_db").mkdir()
    manifest = {"tables": {"subs": {"file": "subs.csv"}, "pays": {"file": "pays.csv"}}}
    # a note nobody declared stops the run, naming the catalog's ignore: as the fix
    with pytest.raises(SourceReadError, match=r"notes\.md: .*ignore: \['notes\.md'\]"):
        check_export_files(tables, tmp_path, manifest)
    # the answer key, the manifest, a declared note: fine
    check_export_files(tables, tmp_path, manifest, ignore=["*.md"])
    (tmp_path / "notes.md").unlink()

    (tmp_path / "pays_2.csv").write_text("k\n2\n", encoding="utf-8")
    with pytest.raises(SourceReadError) as err:
        check_export_files(tables, tmp_path, manifest, catalog="cat.yaml")
    assert str(err.value).startswith(
        f"{tmp_path / 'pays_2.csv'}: export file read by no table of cat.yaml;"
    )

    manifest["tables"]["pays"]["files"] = ["pays.csv", "pays_2.csv"]
    with pytest.raises(SourceReadError) as err:
        check_export_files(tables, tmp_path, manifest)
    assert "lists it under table pays, which does not read it" in str(err.value)
    assert "source.files: 'pays*.csv'" in str(err.value)

    tables["pays"]["source"] = {"files": "pays*.csv"}
    check_export_files(tables, tmp_path, manifest)
    # A table the manifest lists but this system does not migrate is not an unread file.
    del tables["pays"]
    check_export_files(tables, tmp_path, manifest)
    # ... but a file no manifest entry accounts for is.
    with pytest.raises(
        SourceReadError,
        match=r"pays\.csv: export file read by no table "
        r"of catalog\.yaml \(and 1 more\)",
    ):
        check_export_files(tables, tmp_path, {"tables": {"subs": {"file": "subs.csv"}}})


# -- Parquet ------------------------------------------------------------------------------


def test_parquet_every_flat_type_becomes_text_in_batches(tmp_path):
    n = 2500
    table = pa.table(
        {
            "id": pa.array([f"R{i}" for i in range(n)]),
            "n": pa.array(range(n), pa.int64()),
            "ts": pa.array([dt.datetime(2026, 1, 2, 3, 4, 5)] * n, pa.timestamp("s")),
            "day": pa.array([dt.date(2024, 1, 5)] * n, pa.date32()),
            "yuan": pa.array([Decimal("-3.50")] * n, pa.decimal128(12, 2)),
            "flag": pa.array([i % 2 == 0 for i in range(n)]),
            "x": pa.array([1.5] * n, pa.float64()),
            "cat": pa.array(["a", "b"] * (n // 2)).dictionary_encode(),
            "none": pa.array([None] * n, pa.string()),
        }
    )
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=1000)

    source = ParquetSource(path, table="t", batch_rows=700)
    with source:
        batches = list(source.batches())
    out = pa.Table.from_batches(batches)

    assert len(batches) >= 4
    assert all(f.type == pa.string() for f in out.schema if f.name != "_source_row")
    assert out.column("_source_row").to_pylist() == list(range(1, n + 1))
    first = out.slice(0, 1).to_pylist()[0]
    assert first == {
        "id": "R0",
        "n": "0",
        "ts": "2026-01-02 03:04:05.000",
        "day": "2024-01-05",
        "yuan": "-3.50",
        "flag": "true",
        "x": "1.5",
        "cat": "a",
        "none": None,
        "_source_row": 1,
    }
    assert source.fingerprint() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_parquet_nested_column_is_refused_by_name(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": ["a"], "tags": [[1, 2]]}), path)

    with pytest.raises(SourceReadError, match="column 'tags' has type list"):
        read_all(ParquetSource(path, table="t"))


# -- SQL ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_source(tmp_path_factory):
    """A fresh PostgreSQL database with a 25-row table, reachable as connection pg_src."""
    name = create_database("handover_src")
    with psycopg.connect(pg_dsn(name)) as conn:
        conn.execute(
            "CREATE TABLE billing (pay_no text PRIMARY KEY, paid timestamp, "
            "amount numeric(12,2), ok boolean, note text)"
        )
        with conn.cursor().copy("COPY billing FROM STDIN") as cp:
            for i in range(25, 0, -1):  # inserted in reverse: the reader orders by key
                cp.write_row(
                    (
                        f"P{i:03d}",
                        dt.datetime(2026, 1, i, 8, 0, 0),
                        Decimal(i) / 4 if i != 13 else None,
                        i % 2 == 0,
                        "含 % 与\n换行" if i == 1 else None,
                    )
                )
    mp = pytest.MonkeyPatch()
    mp.setenv("AIRFLOW_CONN_PG_SRC", f"postgresql://postgres@127.0.0.1:5432/{name}")
    yield name
    mp.undo()
    drop_database(name)


def test_sql_reads_in_chunks_with_a_server_side_cursor(pg_source):
    source = SqlSource(
        "pg_src", table="payments", source_table="billing", key="pay_no", chunk_rows=10
    )
    with source:
        assert isinstance(source._cur, psycopg.ServerCursor)
        batches = list(source.batches())
    out = pa.Table.from_batches(batches)

    assert [b.num_rows for b in batches] == [10, 10, 5]
    assert out.column_names == ["pay_no", "paid", "amount", "ok", "note", "_source_row"]
    assert out.column("pay_no").to_pylist() == [f"P{i:03d}" for i in range(1, 26)]
    assert out.column("_source_row").to_pylist() == list(range(1, 26))
    first = out.slice(0, 1).to_pylist()[0]
    assert first == {
        "pay_no": "P001",
        "paid": "2026-01-01 08:00:00",
        "amount": "0.25",
        "ok": "f",
        "note": "含 % 与\n换行",
        "_source_row": 1,
    }
    assert out.column("amount").to_pylist()[12] is None


def test_sql_key_and_timestamp_ranges_and_stable_fingerprint(pg_source):
    by_key = SqlSource(
        "pg_src",
        table="payments",
        source_table="billing",
        key="pay_no",
        range_column="pay_no",
        range_start="P005",
        range_end="P010",
    )
    by_time = SqlSource(
        "pg_src",
        table="payments",
        source_table="billing",
        key="pay_no",
        chunk_rows=3,
        range_column="paid",
        range_start="2026-01-20",
    )

    keys = read_all(by_key).column("pay_no").to_pylist()
    times = read_all(by_time)

    assert keys == ["P005", "P006", "P007", "P008", "P009"]
    assert times.column("pay_no").to_pylist() == [f"P{i:03d}" for i in range(20, 26)]
    again = SqlSource(
        "pg_src",
        table="payments",
        source_table="billing",
        key="pay_no",
        chunk_rows=3,
        range_column="paid",
        range_start="2026-01-20",
    )
    read_all(again)
    assert again.fingerprint() == by_time.fingerprint()


def test_sql_query_source_from_the_catalog_block(pg_source, tmp_path):
    spec = {
        "key": "pay_no",
        "columns": {"pay_no": {}, "amount": {}},
        "source": {
            "format": "sql",
            "conn_id": "pg_src",
            "chunk_rows": 4,
            "query": "SELECT pay_no, amount FROM billing WHERE ok",
            "range": {"column": "pay_no", "end": "P011"},
        },
    }

    source = open_source("paid", spec, tmp_path)
    out = read_all(source)

    assert out.column("pay_no").to_pylist() == ["P002", "P004", "P006", "P008", "P010"]
    assert source.location == "connection pg_src (query)"


def test_sql_errors_name_the_connection(pg_source):
    with pytest.raises(SourceReadError, match="connection 'no_such_conn' .* is not defined"):
        read_all(SqlSource("no_such_conn", table="t", source_table="x"))
    with pytest.raises(SourceReadError) as err:
        read_all(SqlSource("pg_src", table="t", source_table="no_such_table"))
    assert "connection pg_src (no_such_table): query failed" in str(err.value)
    assert "\n" not in str(err.value)


def test_sqlite_through_the_generic_db_api_path(tmp_path, monkeypatch):
    path = tmp_path / "legacy.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (k TEXT, n INTEGER, x REAL, b BLOB)")
        db.executemany(
            "INSERT INTO t VALUES (?, ?, ?, ?)",
            [(f"k{i}", i, i / 2, "数".encode()) for i in range(7)],
        )
    monkeypatch.setenv("AIRFLOW_CONN_LITE", json.dumps({"conn_type": "sqlite", "host": str(path)}))

    source = SqlSource(
        "lite", table="t", source_table="t", key="k", chunk_rows=3, range_column="n", range_start=2
    )
    with source:
        batches = list(source.batches())

    assert [b.num_rows for b in batches] == [3, 2]
    rows = pa.Table.from_batches(batches).to_pylist()
    assert rows[0] == {"k": "k2", "n": "2", "x": "1.0", "b": "数", "_source_row": 1}


def test_head_reads_only_the_first_rows(pg_source):
    source = SqlSource(
        "pg_src", table="payments", source_table="billing", key="pay_no", chunk_rows=4
    )
    with source:
        sample = head(source, 6)
    assert sample.num_rows == 6


def test_mariadb_when_a_driver_is_installed(monkeypatch):
    pymysql = pytest.importorskip("pymysql", reason="no MySQL/MariaDB driver installed")
    try:
        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    except pymysql.err.OperationalError as exc:
        pytest.skip(f"no MariaDB on 127.0.0.1:3306 ({exc})")
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS handover_src_test")
        cur.execute("DROP TABLE IF EXISTS handover_src_test.t")
        cur.execute(
            "CREATE TABLE handover_src_test.t (k VARCHAR(8) PRIMARY KEY, "
            "d DATETIME, m DECIMAL(10,2))"
        )
        cur.executemany(
            "INSERT INTO handover_src_test.t VALUES (%s, %s, %s)",
            [(f"k{i}", f"2026-01-0{i} 08:00:00", "1.50") for i in range(1, 6)],
        )
    conn.commit()
    monkeypatch.setenv("AIRFLOW_CONN_MARIA", "mysql://root@127.0.0.1:3306/handover_src_test")
    try:
        source = SqlSource("maria", table="t", source_table="t", key="k", chunk_rows=2)
        out = read_all(source)
        assert out.column("k").to_pylist() == ["k1", "k2", "k3", "k4", "k5"]
        assert out.slice(0, 1).to_pylist()[0]["d"] == "2026-01-01 08:00:00"
        assert out.column("m").to_pylist()[0] == "1.50"
    finally:
        with conn.cursor() as cur:
            cur.execute("DROP DATABASE handover_src_test")
        conn.close()


def test_free_text_with_one_row_shaped_line_is_not_mistaken_for_swallowed_rows(tmp_path):
    """A complaint may hold a line with a row's count of commas; only two such lines in a
    row are taken for rows read into a value by a stray quote."""
    path = tmp_path / "complaints.csv"
    path.write_text(
        'id,cust,text,channel\nK1,C1,"called twice\nbilling, refund, again, still",'
        "app\nK2,C2,plain,web\n",
        encoding="utf-8",
    )
    table = read_all(DelimitedSource(path, table="complaints"))
    assert table.num_rows == 2
    assert table["text"][0].as_py() == "called twice\nbilling, refund, again, still"
