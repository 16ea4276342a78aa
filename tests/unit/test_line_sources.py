"""Two more shapes of legacy export: JSON lines from newer subsystems and fixed-width text
from mainframe-era billing, read into the same text rows as every other reader."""

from __future__ import annotations

import json

import pytest

from handover.config.loader import ConfigError, load_config
from handover.sources import FixedWidthSource, JsonLinesSource, SourceReadError, open_source


def _rows(src):
    with src:
        return [r for b in src.batches() for r in b.to_pylist()]


def test_json_lines_become_text_rows_with_nothing_dropped(tmp_path):
    path = tmp_path / "t.jsonl"
    lines = [
        {"k": "C1", "n": 12, "x": 1.5, "b": True, "o": {"a": [1, "二"]}},
        {"k": "C2", "n": None},
        {"k": "C3", "x": 12345678901234567890},
    ]
    path.write_text(
        "\r\n".join(json.dumps(r, ensure_ascii=False) for r in lines) + "\r\n\r\n", encoding="utf-8"
    )
    rows = _rows(
        JsonLinesSource(
            path, table="t", columns=["k", "n", "x", "b", "o"], encoding="utf-8", batch_rows=2
        )
    )
    assert [r["_source_row"] for r in rows] == [1, 2, 3]
    assert rows[0] == {
        "k": "C1",
        "n": "12",
        "x": "1.5",
        "b": "true",
        "o": '{"a": [1, "二"]}',
        "_source_row": 1,
    }
    assert rows[1]["n"] is None and rows[1]["x"] is None
    assert rows[2]["x"] == "12345678901234567890"  # an integer JSON never rounds


def test_a_json_key_the_catalog_does_not_list_stops_the_read_naming_it(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"k": "C1"}\n{"k": "C2", "coupon": "X"}\n', encoding="utf-8")
    with pytest.raises(
        SourceReadError,
        match=r"t\.jsonl row 2 \(line 2\): key 'coupon' is not "
        r"a column of catalog table t",
    ):
        _rows(JsonLinesSource(path, table="t", columns=["k"], encoding="utf-8", batch_rows=9))
    path.write_text('{"k": "C1"}\n{"k": \n', encoding="utf-8")
    with pytest.raises(SourceReadError, match=r"row 2 \(line 2\): not a JSON object"):
        _rows(JsonLinesSource(path, table="t", columns=["k"], encoding="utf-8", batch_rows=9))


def test_fixed_width_in_bytes_of_gbk(tmp_path):
    """Widths in bytes, as a mainframe counts them: 张三 takes four of the name's eight."""
    path = tmp_path / "t.txt"
    body = (
        "C0001"
        + "张三    "
        + "0000012.50\r\n"
        + "C0002"
        + "李四光  "
        + "0000003.00\r\n"
        + "共2条\r\n"
    )
    path.write_bytes(body.encode("gbk"))
    rows = _rows(
        FixedWidthSource(
            path,
            table="t",
            columns=["k", "name", "amt"],
            widths=[5, 8, 10],
            encoding="gbk",
            trailer=r"共(\d+)条",
        )
    )
    assert [(r["k"], r["name"], r["amt"]) for r in rows] == [
        ("C0001", "张三", "0000012.50"),
        ("C0002", "李四光", "0000003.00"),
    ]


def test_fixed_width_names_a_line_of_another_length_and_a_cut_character(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(("C0001张三    0000012.50\nC0002张三    00000\n").encode("gbk"))
    with pytest.raises(
        SourceReadError,
        match=r"row 2 \(line 2\): .* where the widths add up "
        r"to 23",
    ):
        _rows(
            FixedWidthSource(
                path, table="t", columns=["k", "name", "amt"], widths=[5, 8, 10], encoding="gbk"
            )
        )
    path.write_bytes("C0001张三    0000012.50\n".encode("gbk"))
    with pytest.raises(SourceReadError, match="cuts a character in two"):
        _rows(
            FixedWidthSource(
                path, table="t", columns=["k", "name", "amt"], widths=[6, 7, 10], encoding="gbk"
            )
        )
    rows = _rows(
        FixedWidthSource(
            path,
            table="t",
            columns=["k", "name", "amt"],
            widths=[5, 6, 10],
            unit="chars",
            encoding="gbk",
        )
    )
    assert rows[0]["name"] == "张三"


def test_the_catalog_declares_them_and_checks_the_widths(tmp_path):
    import shutil

    import yaml

    from handover.config.loader import CONFIG_ROOT

    folder = tmp_path / "legacy_bss"
    shutil.copytree(CONFIG_ROOT / "legacy_bss", folder)
    doc = yaml.safe_load((folder / "catalog.yaml").read_text(encoding="utf-8"))
    doc["tables"]["complaints"]["source"] = {"format": "jsonl", "file": "complaints.jsonl"}
    doc["tables"]["payments"]["source"] = {"format": "fixed", "widths": [10, 10], "encoding": "gbk"}
    (folder / "catalog.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"widths for \d+ catalog columns"):
        load_config(folder)
    n = len(doc["tables"]["payments"]["columns"])
    doc["tables"]["payments"]["source"]["widths"] = [4] * n
    (folder / "catalog.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    cfg = load_config(folder)
    src = open_source("complaints", cfg.table("complaints"), tmp_path)
    assert isinstance(src, JsonLinesSource) and src.path.name == "complaints.jsonl"
    assert isinstance(open_source("payments", cfg.table("payments"), tmp_path), FixedWidthSource)


def _book(path, rows, title="客户"):
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = title
    for r in rows:
        ws.append(r)
    wb.create_sheet("说明").append(["这是说明"])
    wb.save(path)


def test_an_excel_sheet_becomes_text_rows_as_excel_holds_them(tmp_path):
    from datetime import datetime

    from handover.sources import XlsxSource

    path = tmp_path / "t.xlsx"
    _book(
        path,
        [
            ["客户编号", "开户日期", "余额", "证件号码", "备注"],
            ["C1", datetime(2024, 1, 5), 12.5, 1.10105e17, "张三"],
            [None, None, None, None, None],
            ["C2", datetime(2024, 1, 5, 10, 30), 3, "110105199001011234", None],
        ],
    )
    src = XlsxSource(path, table="t", columns=[], sheet="客户")
    rows = _rows(src)
    assert src.columns == ["客户编号", "开户日期", "余额", "证件号码", "备注"]
    assert [r["_source_row"] for r in rows] == [1, 2]
    assert rows[0] == {
        "客户编号": "C1",
        "开户日期": "2024-01-05",
        "余额": "12.5",
        "证件号码": "110105000000000000",
        "备注": "张三",
        "_source_row": 1,
    }
    assert rows[1]["开户日期"] == "2024-01-05 10:30:00" and rows[1]["余额"] == "3"
    with pytest.raises(SourceReadError, match="no sheet 'Sheet9' .*客户, 说明"):
        _rows(XlsxSource(path, table="t", columns=[], sheet="Sheet9"))


def test_an_excel_row_wider_than_the_header_stops_the_read(tmp_path):
    from handover.sources import XlsxSource

    path = tmp_path / "t.xlsx"
    _book(path, [["k", "v"], ["C1", "x"], ["C2", "y", "stray"]])
    with pytest.raises(
        SourceReadError,
        match=r"row 2 \(sheet row 3\): 3 cells with values "
        r"beyond the 2 columns",
    ):
        _rows(XlsxSource(path, table="t", columns=[]))
    path2 = tmp_path / "t2.xlsx"
    _book(path2, [["C1", "x"], ["C2", "y"]])
    rows = _rows(XlsxSource(path2, table="t", columns=["a", "b"], header=False))
    assert [(r["a"], r["b"]) for r in rows] == [("C1", "x"), ("C2", "y")]
