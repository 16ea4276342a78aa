"""The bad-input corpus: legacy exports with one planted defect each, run through the pipeline.

Every kind starts from the same small synthetic export (subscribers + payments, from
`handover_synth.legacy_bss`), plants one defect, and runs the task bodies in the DAG's order on the
machine's PostgreSQL, as far as the kind reaches. Kinds about the shape of a file (header,
columns, formats) also run the Great Expectations gates; kinds about values skip them to
keep the corpus in its time budget (gates write neither the target nor the ledger).
Each kind must end in exactly one of:

- a clear, one-line error (one of the data faults that fail a task without retries)
  naming the file (or table), the row and the field, before anything is loaded;
- a quarantine (or a policy exclusion) of the planted rows with a reason code, the rest
  loaded, and the ledger balanced (in = loaded + quarantined + excluded, stages chain);
- the planted value loaded intact, where the input is unusual but valid.

Kinds that today's code gets wrong are marked `xfail(strict=True)` with what is wrong and
the fix; a fix makes them pass, and strict xfail then asks for the mark to go.
docs/reliability.md lists every kind; tests/unit/test_reliability_doc.py keeps the two in step.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from handover_synth import legacy_bss as synth
from tests.conftest import (
    assert_ledger_balanced,
    ledger_report,
    make_system,
    pg_dsn,
    run_stages,
    unhash_book_keys,
    write_manifest,
)

pytestmark = pytest.mark.integration
TABLES = ("subscribers", "payments")
TARGETS = {"subscribers": ("customer", "customer_id"), "payments": ("payment", "payment_id")}


# ---------------------------------------------------------------- the base export
@dataclass
class Base:
    """The clean synthetic export every kind starts from, and rows safe to plant on."""

    dir: Path
    subs: list[str]  # clean subscribers (no own defect, no objection)
    pays: list[str]  # clean payments of clean subscribers
    pay_of: dict[str, str] = field(default_factory=dict)  # payment -> its customer


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
    root = tmp_path_factory.mktemp("corpus_base")
    synth.generate(root / "full", 30, seed=5)
    for t in TABLES:
        shutil.copy(root / "full" / f"{t}.csv", root / f"{t}.csv")
    truth = {(r["table"], r["key"]) for r in csv.DictReader(open(root / "full" / "truth.csv"))}
    subs = [
        r
        for r in _records(root / "subscribers.csv")[1:]
        if ("subscribers", r[0]) not in truth and r[10] == "0"
    ]
    clean = {r[0] for r in subs}
    pays = [
        r
        for r in _records(root / "payments.csv")[1:]
        if ("payments", r[0]) not in truth and r[1] in clean
    ]
    assert len(subs) >= 10 and len(pays) >= 20
    return Base(root, [r[0] for r in subs], [r[0] for r in pays], {r[0]: r[1] for r in pays})


@pytest.fixture(scope="module")
def corpus_env(target_db, keyring_file):
    mp = pytest.MonkeyPatch()
    mp.setenv("HANDOVER_TARGET_DSN", pg_dsn(target_db))
    mp.setenv("HANDOVER_KEYRING_FILE", str(keyring_file))
    for var in (
        "AIRFLOW_CONN_HANDOVER_KEYS",
        "AIRFLOW_CONN_HANDOVER_TARGET",
        "AIRFLOW_CONN_HANDOVER_LAKE",
    ):
        mp.delenv(var, raising=False)
    yield pg_dsn(target_db)
    mp.undo()


# ---------------------------------------------------------------- CSV editing helpers
def _records(path: Path, encoding: str = "utf-8") -> list[list[str]]:
    with open(path, encoding=encoding, newline="") as fh:
        return list(csv.reader(fh))


def _dump(rows: list[list[str]], **fmt) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator=fmt.pop("lineterminator", "\n"), **fmt).writerows(rows)
    return buf.getvalue()


def _save(path: Path, rows: list[list[str]], **fmt) -> None:
    path.write_bytes(_dump(rows, **fmt).encode("utf-8"))


def _set(path: Path, key: str, **values: str) -> int:
    """Set fields of the record whose first column is `key`; returns its data row number."""
    rows = _records(path)
    header = rows[0]
    for i, r in enumerate(rows[1:], start=1):
        if r[0] == key:
            for col, v in values.items():
                r[header.index(col)] = v
            _save(path, rows)
            return i
    raise KeyError(key)


def _row_no(path: Path, key: str) -> int:
    return next(i for i, r in enumerate(_records(path)[1:], start=1) if r[0] == key)


def _count(path: Path) -> int | None:
    try:
        return max(len([r for r in _records(path) if r]) - 1, 0)
    except (UnicodeDecodeError, csv.Error, FileNotFoundError):
        return None


# ---------------------------------------------------------------- kinds
@dataclass(frozen=True)
class Kind:
    """One kind of bad input: how to plant it, and what the pipeline must do with it."""

    id: str
    plant: Callable[[Path, Base], dict | None]  # edits the export; may return overrides
    expect: str  # error | quarantined | excluded | merged | loaded | completes
    reason: str | None = None  # quarantine reason or exclusion rule (None: any)
    names: tuple[str, ...] = ()  # error: regexes its one line must match
    system: dict = field(default_factory=dict)  # make_system overrides
    xfail: str | None = None
    gates: bool = False  # run the Great Expectations gates too (structure-level kinds)


# Each plant returns {"keys": [(table, key), ...]} for the rows whose fate is checked,
# "rows": manifest row counts that differ from what the file holds, "names": extra
# regexes for an error, "secrets": row content the error must not quote, "check": an
# extra assertion f(dsn) -> None.
P, S = "payments.csv", "subscribers.csv"


def _row_re(n: int) -> str:
    """The data row n (1-based), or its physical line n + 1."""
    return rf"\b(row|record|line)s? (?:{n}|{n + 1})\b"


def plant_empty_file(d: Path, b: Base):
    (d / P).write_bytes(b"")
    return {"names": [r"payments\.csv", _row_re(0) + "|empty"]}


def plant_header_only(d: Path, b: Base):
    (d / P).write_text(",".join(_records(d / P)[0]) + "\n")
    return {"rows": {"payments": 0}}


def plant_header_only_manifest_rows(d: Path, b: Base):
    n = _count(d / P)
    (d / P).write_text(",".join(_records(d / P)[0]) + "\n")
    return {"rows": {"payments": n}, "names": [r"payments\.csv", r"\b0 rows\b", rf"\b{n}\b"]}


def plant_truncated_last_line(d: Path, b: Base):
    rows = _records(d / S)
    last = rows[-1]
    text = _dump(rows[:-1]) + ",".join(last[:3])  # cut inside the 4th field, no newline
    (d / S).write_bytes(text.encode())
    n = len(rows) - 1
    return {
        "rows": {"subscribers": n},
        "names": [r"subscribers\.csv", _row_re(n)],
        "secrets": [last[1], last[2]],
    }


def plant_short_row_mid_file(d: Path, b: Base):
    rows = _records(d / P)
    n = _row_no(d / P, b.pays[12])
    rows[n] = rows[n][:3]
    _save(d / P, rows)
    return {"names": [r"payments\.csv", _row_re(n), r"amount_fen|\d+ (fields|columns)"]}


def plant_extra_field_in_row(d: Path, b: Base):
    rows = _records(d / P)
    n = _row_no(d / P, b.pays[13])
    rows[n] = rows[n] + ["surplus"]
    _save(d / P, rows)
    return {"names": [r"payments\.csv", _row_re(n), r"\d+ (fields|columns)"]}


def plant_missing_trailing_newline(d: Path, b: Base):
    (d / P).write_bytes((d / P).read_bytes().rstrip(b"\n"))
    return {"keys": [("payments", _records(d / P)[-1][0])]}


def plant_crlf(d: Path, b: Base):
    for f in (S, P):
        _save(d / f, _records(d / f), lineterminator="\r\n")
    return {"keys": [("subscribers", b.subs[0]), ("payments", b.pays[0])]}


def plant_cr_only(d: Path, b: Base):
    _save(d / P, _records(d / P), lineterminator="\r")
    return {"keys": [("payments", b.pays[0])]}


def plant_bom(d: Path, b: Base):
    for f in (S, P):
        (d / f).write_bytes(b"\xef\xbb\xbf" + (d / f).read_bytes())
    return {"keys": [("subscribers", b.subs[0]), ("payments", b.pays[0])]}


def plant_blank_lines(d: Path, b: Base):
    lines = (d / P).read_text().splitlines(keepends=True)
    (d / P).write_text("".join(lines[:5] + ["\n", "\n"] + lines[5:] + ["\n"]))
    return {"keys": [("payments", b.pays[0])]}


def plant_wrong_encoding(d: Path, b: Base):
    text = (d / S).read_text(encoding="utf-8")
    (d / S).write_bytes(text.encode("gbk"))
    return {
        "rows": {"subscribers": len(_records(d / S, "gbk")) - 1},
        "names": [r"subscribers\.csv", _row_re(1), r"(?i)encoding"],
    }


def plant_mixed_encodings(d: Path, b: Base):
    rows = _records(d / S)
    n = _row_no(d / S, b.subs[7])
    header = rows[0]
    lines = []
    for i, r in enumerate(rows):
        line = _dump([r])
        if i != n:
            lines.append(line.encode("utf-8"))
            continue
        # One field of one row re-encoded in GBK, the way a patched legacy row looks.
        col = header.index("address")
        parts = [v.encode("gbk" if j == col else "utf-8") for j, v in enumerate(r)]
        lines.append(b",".join(parts) + b"\n")
    (d / S).write_bytes(b"".join(lines))
    return {
        "names": [r"subscribers\.csv", _row_re(n), r"\baddress\b"],
        "secrets": [rows[n][1], rows[n][2]],
    }


def _plant_delimiter(sep: str):
    def plant(d: Path, b: Base):
        _save(d / P, _records(d / P), delimiter=sep)
        return {"names": [r"payments\.csv", _row_re(0), r"payment_id"]}

    return plant


def plant_quoted_newline(d: Path, b: Base):
    value = "北京市朝阳区\n建国路88号\r\n3栋"
    _set(d / S, b.subs[1], address=value)

    def check(dsn):
        with psycopg.connect(dsn) as conn:
            got = conn.execute(
                "SELECT address FROM crm.customer WHERE customer_id=%s", (b.subs[1],)
            ).fetchone()
        assert got is not None and got[0].replace("\r\n", "\n") == value.replace("\r\n", "\n")

    return {"keys": [("subscribers", b.subs[1])], "check": check}


def plant_unbalanced_quote(d: Path, b: Base):
    rows = _records(d / P)
    n = _row_no(d / P, b.pays[14])
    lines = (d / P).read_text().splitlines(keepends=True)
    lines[n] = lines[n].replace(rows[n][4], '"' + rows[n][4])  # channel opens a quote
    (d / P).write_text("".join(lines))
    return {
        "rows": {"payments": len(rows) - 1},
        "names": [r"payments\.csv", _row_re(n), r"channel|quote"],
    }


def plant_duplicate_column_name(d: Path, b: Base):
    rows = _records(d / P)
    rows = [rows[0] + ["channel"]] + [r + ["bank"] for r in rows[1:]]
    _save(d / P, rows)
    return {
        "names": [
            r"payments\.csv|payments",
            _row_re(0) + "|header",
            r"channel",
            r"(?i)duplicate|twice|more than once",
        ]
    }


def plant_repeated_header_row(d: Path, b: Base):
    rows = _records(d / P)
    rows.insert(20, list(rows[0]))
    _save(d / P, rows)
    return {"keys": [("payments", "payment_id")]}


def plant_missing_column(d: Path, b: Base):
    rows = _records(d / P)
    col = rows[0].index("channel")
    _save(d / P, [r[:col] + r[col + 1 :] for r in rows])
    return {"names": [r"payments", r"channel"]}


def plant_extra_column(d: Path, b: Base):
    rows = _records(d / P)
    _save(d / P, [rows[0] + ["coupon_code"]] + [r + ["X1"] for r in rows[1:]])
    return {"names": [r"payments", r"coupon_code"]}


def plant_reordered_columns(d: Path, b: Base):
    rows = _records(d / P)
    _save(d / P, [list(reversed(r)) for r in rows])
    return {"keys": [("payments", b.pays[0])]}


def plant_header_case_and_spaces(d: Path, b: Base):
    rows = _records(d / P)
    rows[0] = [c if c != "channel" else " Channel " for c in rows[0]]
    _save(d / P, rows)
    return {"names": [r"payments", r"Channel"]}


def plant_nul_byte(d: Path, b: Base):
    _set(d / S, b.subs[2], name="王\x00五")
    return {"keys": [("subscribers", b.subs[2])]}


def plant_huge_field(d: Path, b: Base):
    value = "北京市朝阳区" + "很长的地址" * (10 * 1024 * 1024 // 15)
    n = _set(d / S, b.subs[3], address=value)

    def check(dsn):
        with psycopg.connect(dsn) as conn:
            got = conn.execute(
                "SELECT length(address) FROM crm.customer WHERE customer_id=%s", (b.subs[3],)
            ).fetchone()
        assert got is not None and got[0] == len(value)

    return {
        "keys": [("subscribers", b.subs[3])],
        "check": check,
        "names": [r"subscribers\.csv", _row_re(n), r"\baddress\b"],
    }


def _plant_amount(value: str, idx: int):
    def plant(d: Path, b: Base):
        _set(d / P, b.pays[idx], amount_fen=value)
        return {"keys": [("payments", b.pays[idx])], "field": "amount_fen"}

    return plant


DATE_FORMATS = [
    "2026/03/05 10:00:00",
    "05/03/2026 10:00",
    "20260305100000",
    "2026-03-05T10:00:00",
    "5 Mar 2026 10:00:00",
]


def plant_dates_five_formats(d: Path, b: Base):
    keys = b.pays[3:8]
    for k, v in zip(keys, DATE_FORMATS, strict=True):
        _set(d / P, k, paid_at=v)
    return {"keys": [("payments", k) for k in keys], "field": "paid_at"}


def plant_date_before_1900(d: Path, b: Base):
    _set(d / P, b.pays[8], paid_at="1899-12-31 23:59:59")
    return {"keys": [("payments", b.pays[8])]}


def plant_date_far_past(d: Path, b: Base):
    _set(d / P, b.pays[9], paid_at="0001-01-01 00:00:00")
    _set(d / P, b.pays[10], paid_at="1677-09-21 00:12:43")
    return {"keys": [("payments", b.pays[9]), ("payments", b.pays[10])]}


def plant_sentinel_open_date(d: Path, b: Base):
    _set(d / S, b.subs[4], open_date="1899-12-30")
    return {"keys": [("subscribers", b.subs[4])], "field": "open_date"}


def plant_date_after_2100(d: Path, b: Base):
    _set(d / P, b.pays[11], paid_at="2101-01-01 00:00:00")
    return {"keys": [("payments", b.pays[11])], "field": "paid_at"}


def plant_date_year_9999(d: Path, b: Base):
    _set(d / P, b.pays[15], paid_at="9999-12-31 23:59:59")
    return {"keys": [("payments", b.pays[15])], "field": "paid_at"}


def _plant_name(value: str, idx: int):
    def plant(d: Path, b: Base):
        _set(d / S, b.subs[idx], name=value)

        def check(dsn):
            with psycopg.connect(dsn) as conn:
                got = conn.execute(
                    "SELECT full_name FROM crm.customer WHERE customer_id=%s", (b.subs[idx],)
                ).fetchone()
                assert conn.execute("SELECT to_regclass('crm.customer')").fetchone()[0]
            assert got == (value,)

        return {"keys": [("subscribers", b.subs[idx])], "check": check}

    return plant


FORMULAS = [
    "=cmd|' /C calc'!A0",
    "+SUM(1+1)*cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
]


def plant_formula_injection(d: Path, b: Base):
    # A clean row that loads, a row that is quarantined, and an excluded one (objection).
    _set(d / S, b.subs[5], name=FORMULAS[0])
    _set(d / S, b.subs[6], name=FORMULAS[1], id_number="110101199001011234")
    _set(d / S, b.subs[7], name=FORMULAS[2], transfer_objection="1")
    planted_subs = {b.subs[5], b.subs[6], b.subs[7]}
    pay = next(k for k in b.pays if b.pay_of[k] not in planted_subs)
    _set(d / P, pay, channel=FORMULAS[3])
    root = d.parent

    def check(dsn):
        # Every text file the run exported: no cell or line may start a formula unescaped.
        exported = [
            p
            for p in (root / "lake").rglob("*")
            if p.is_file() and p.suffix in (".csv", ".tsv", ".html", ".json", ".txt")
        ]
        assert exported, "the run exported nothing to check"
        for p in exported:
            text = p.read_text(encoding="utf-8", errors="replace")
            if p.suffix in (".csv", ".tsv"):
                for row in csv.reader(io.StringIO(text)):
                    bad = [c for c in row if c[:1] in "=+-@\t\r" and not c.startswith("'")]
                    assert not bad, f"{p}: unescaped formula cell {bad[0][:20]!r}"
            for f in FORMULAS:
                assert f not in text, f"{p}: holds a planted formula verbatim"

    return {
        "keys": [
            ("subscribers", b.subs[5]),
            ("subscribers", b.subs[6]),
            ("subscribers", b.subs[7]),
            ("payments", pay),
        ],
        "check": check,
        "fates": {
            b.subs[5]: "loaded",
            b.subs[6]: "quarantined",
            b.subs[7]: "excluded",
            pay: "quarantined",
        },
    }


def plant_duplicate_key_same_file(d: Path, b: Base):
    rows = _records(d / P)
    n = _row_no(d / P, b.pays[17])
    dup = list(rows[n])
    dup[3] = "777"
    rows.append(dup)
    _save(d / P, rows)
    return {"keys": [("payments", b.pays[17])], "reason_row": "last"}


def plant_duplicate_keys_across_files(d: Path, b: Base):
    rows = _records(d / P)
    half = len(rows) // 2
    _save(d / P, rows[:half])
    second = [rows[0]] + rows[half:] + [rows[3]]  # the second file repeats a key of the first
    _save(d / "payments_2.csv", second)
    manifest_rows = len(rows) - 1 + 1
    return {
        "rows": {"payments": manifest_rows},
        "files": ["payments.csv", "payments_2.csv"],
        "keys": [("payments", rows[3][0])],
        "names": [r"payments_2\.csv"],
    }


def plant_duplicate_keys_across_declared_files(d: Path, b: Base):
    # The same table as two files, declared with `files: payments*.csv`: read as one table
    # in name order, so the key repeated in the second file is caught like any duplicate.
    rows = _records(d / P)
    half = len(rows) // 2
    key = next(k for k in b.pays if _row_no(d / P, k) < half)
    _save(d / P, rows[:half])
    dup = list(rows[_row_no(d / P, key)])
    dup[3] = "888"
    _save(d / "payments_2.csv", [rows[0]] + rows[half:] + [dup])
    return {
        "rows": {"payments": len(rows) - 1 + 1},
        "files": ["payments.csv", "payments_2.csv"],
        "keys": [("payments", key)],
        "field": "payment_id",
    }


def plant_key_variants_across_partitions(d: Path, b: Base):
    # The same payment id twice, once with full-width letters: the two spellings are one
    # key after NFKC, but extract hashes the raw text, so they may land in two partitions.
    key = next(k for k in b.pays[18:] if _partition(k, 2) != _partition(_fullwidth(k), 2))
    rows = _records(d / P)
    n = _row_no(d / P, key)
    dup = list(rows[n])
    dup[0], dup[3] = _fullwidth(key), "555"
    rows.append(dup)
    _save(d / P, rows)
    return {"keys": [("payments", key)]}


def _fullwidth(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s)


def _partition(key: str, n: int) -> int:
    import numpy as np
    import pandas as pd

    return int(
        pd.util.hash_array(np.array([key], dtype=object), categorize=False)[0] % np.uint64(n)
    )


def plant_parquet_changed_schema(d: Path, b: Base):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _records(d / P)
    cols = list(zip(*rows[1:], strict=True))
    table = pa.table(
        {
            "payment_id": pa.array(cols[0]),
            "cust_id": pa.array(cols[1]),
            "paid_at": pa.array(cols[2]),
            "amount": pa.array(
                [int(v) if v.lstrip("-").isdigit() else None for v in cols[3]], pa.int64()
            ),
            "channel": pa.array(cols[4]),
        }
    )
    pq.write_table(table, d / "payments.parquet")
    (d / P).unlink()
    return {"rows": {"payments": len(rows) - 1}, "names": [r"payments", r"amount_fen"]}


def plant_no_key_values(d: Path, b: Base):
    rows = _records(d / P)
    n1, n2 = _row_no(d / P, b.pays[1]), _row_no(d / P, b.pays[2])
    rows[n1][0] = ""
    rows[n2][0] = "   "
    rows.append(list(rows[_row_no(d / P, b.pays[19])]))  # a whole row twice
    _save(d / P, rows)
    return {
        "keys": [("payments", f"row:{n1}"), ("payments", f"row:{n2}"), ("payments", b.pays[19])]
    }


def plant_no_key_in_catalog(d: Path, b: Base):
    return {"names": [r"catalog\.yaml", r"line \d+", r"\bkey\b"]}


def plant_big_integer(d: Path, b: Base):
    _set(d / P, b.pays[0], amount_fen="9007199254740993")  # 2**53 + 1
    _set(d / P, b.pays[20], amount_fen="")  # a blank amount in the same partition

    def check(dsn):
        with psycopg.connect(dsn) as conn:
            got = conn.execute(
                "SELECT amount_fen FROM crm.payment WHERE payment_id=%s", (b.pays[0],)
            ).fetchone()
        assert got is None or got[0] == 9007199254740993, f"stored {got[0]}, sent 2**53 + 1"

    return {"keys": [("payments", b.pays[20])], "check": check}


def plant_fullwidth_digits(d: Path, b: Base):
    _set(d / P, b.pays[21], amount_fen="１２３４")

    def check(dsn):
        with psycopg.connect(dsn) as conn:
            got = conn.execute(
                "SELECT amount_fen FROM crm.payment WHERE payment_id=%s", (b.pays[21],)
            ).fetchone()
        assert got == (1234,)

    return {"keys": [("payments", b.pays[21])], "check": check}


def plant_excel_scientific_id(d: Path, b: Base):
    _set(d / S, b.subs[8], id_number="1.10101E+17")
    return {"keys": [("subscribers", b.subs[8])]}


def plant_duplicate_person(d: Path, b: Base):
    rows = _records(d / S)
    original = rows[_row_no(d / S, b.subs[10])]
    dup = list(original)
    dup[0], dup[11] = "C99999999", "2020-01-01 00:00:00"  # new id, older: it loses
    rows.append(dup)
    _save(d / S, rows)
    return {"keys": [("subscribers", "C99999999")]}


def plant_codes_other_vocabulary(d: Path, b: Base):
    rows = _records(d / S)
    n = _row_no(d / S, b.subs[9])
    _set(d / S, b.subs[9], gender={"男": "M", "女": "F"}[rows[n][3]])
    return {"keys": [("subscribers", b.subs[9])]}


KINDS: list[Kind] = [
    Kind("empty_file", plant_empty_file, "error", gates=True),
    Kind("header_only", plant_header_only, "completes", gates=True),
    Kind("header_only_manifest_says_rows", plant_header_only_manifest_rows, "error", gates=True),
    Kind("truncated_last_line", plant_truncated_last_line, "error"),
    Kind("short_row_mid_file", plant_short_row_mid_file, "error"),
    Kind("extra_field_in_row", plant_extra_field_in_row, "error"),
    Kind("missing_trailing_newline", plant_missing_trailing_newline, "loaded"),
    Kind("crlf_line_endings", plant_crlf, "loaded"),
    Kind("cr_only_line_endings", plant_cr_only, "loaded"),
    Kind("utf8_bom", plant_bom, "loaded"),
    Kind("blank_lines", plant_blank_lines, "loaded"),
    Kind("wrong_encoding_gbk", plant_wrong_encoding, "error"),
    Kind("mixed_encodings", plant_mixed_encodings, "error"),
    Kind("wrong_delimiter_semicolon", _plant_delimiter(";"), "error"),
    Kind("wrong_delimiter_tab", _plant_delimiter("\t"), "error"),
    Kind("wrong_delimiter_pipe", _plant_delimiter("|"), "error"),
    Kind("quoted_newline", plant_quoted_newline, "loaded"),
    Kind("unbalanced_quote", plant_unbalanced_quote, "error"),
    Kind("duplicate_column_name", plant_duplicate_column_name, "error", gates=True),
    Kind("repeated_header_row", plant_repeated_header_row, "quarantined"),
    Kind("missing_column", plant_missing_column, "error", gates=True),
    Kind("extra_column", plant_extra_column, "error", gates=True),
    Kind("reordered_columns", plant_reordered_columns, "loaded", gates=True),
    Kind("header_case_and_spaces", plant_header_case_and_spaces, "error", gates=True),
    Kind("nul_byte_in_field", plant_nul_byte, "quarantined"),
    Kind("field_of_10_mb", plant_huge_field, "loaded"),
    Kind(
        "amount_thousands_separator",
        _plant_amount("1,234.50", 22),
        "quarantined",
        reason="INVALID_NUMBER",
    ),
    Kind(
        "amount_decimal_comma",
        _plant_amount("1.234,50", 23),
        "quarantined",
        reason="INVALID_NUMBER",
    ),
    Kind("dates_in_five_formats", plant_dates_five_formats, "quarantined", reason="INVALID_DATE"),
    Kind("date_before_1900", plant_date_before_1900, "excluded", reason="RETENTION_EXPIRED"),
    Kind(
        "date_out_of_nanosecond_range", plant_date_far_past, "excluded", reason="RETENTION_EXPIRED"
    ),
    Kind("sentinel_open_date_1899", plant_sentinel_open_date, "quarantined", reason="INVALID_DATE"),
    Kind("date_after_2100", plant_date_after_2100, "quarantined", reason="INVALID_DATE"),
    Kind("date_year_9999", plant_date_year_9999, "quarantined", reason="INVALID_DATE"),
    Kind("emoji_in_name", _plant_name("王😀👨‍👩‍👧🇨🇳", 10), "loaded"),
    Kind("rare_cjk_in_name", _plant_name("𠀀𪚥𰻞〇", 11), "loaded"),
    Kind("sql_injection_in_name", _plant_name("x'); DROP TABLE crm.customer; --", 12), "loaded"),
    Kind("csv_formula_injection", plant_formula_injection, "mixed", gates=True),
    Kind(
        "duplicate_key_same_file",
        plant_duplicate_key_same_file,
        "quarantined",
        reason="DUPLICATE_KEY",
    ),
    Kind("duplicate_keys_across_files", plant_duplicate_keys_across_files, "error"),
    Kind(
        "duplicate_keys_across_declared_files",
        plant_duplicate_keys_across_declared_files,
        "quarantined",
        reason="DUPLICATE_KEY",
        system={"catalog_extra": {"payments": {"source": {"files": "payments*.csv"}}}},
    ),
    Kind(
        "key_variants_across_partitions",
        plant_key_variants_across_partitions,
        "quarantined",
        reason="DUPLICATE_KEY",
        system={"partitions": {"payments": 2}},
    ),
    Kind(
        "parquet_changed_schema",
        plant_parquet_changed_schema,
        "error",
        gates=True,
        system={"catalog_extra": {"payments": {"source": {"format": "parquet"}}}},
    ),
    Kind("no_key_values", plant_no_key_values, "quarantined"),
    Kind("no_key_in_catalog", plant_no_key_in_catalog, "error", system={"drop_key": "payments"}),
    Kind("integer_beyond_2_pow_53", plant_big_integer, "quarantined", reason="MISSING_FIELD"),
    Kind("fullwidth_digits_in_amount", plant_fullwidth_digits, "loaded"),
    Kind(
        "excel_scientific_id_number",
        plant_excel_scientific_id,
        "quarantined",
        reason="INVALID_ID_CHECKSUM",
    ),
    Kind(
        "codes_in_other_vocabulary",
        plant_codes_other_vocabulary,
        "quarantined",
        reason="INVALID_ID_GENDER",
    ),
    Kind(
        "duplicate_person_with_child_tables", plant_duplicate_person, "merged", reason="SAME_PERSON"
    ),
    Kind(
        "duplicate_person_without_child_tables",
        plant_duplicate_person,
        "merged",
        reason="SAME_PERSON",
        system={"tables": ("subscribers",)},
    ),
]


def _params():
    for k in KINDS:
        marks = [pytest.mark.xfail(strict=True, reason=k.xfail)] if k.xfail else []
        yield pytest.param(k, id=k.id, marks=marks)


# ---------------------------------------------------------------- the test
def _fates(
    dsn: str, run_id: str, keyring_file=None, keys=()
) -> dict[tuple[str, str], tuple[str, str | None]]:
    with psycopg.connect(dsn) as conn:
        q = conn.execute(
            "SELECT table_name, record_key, reason, field FROM "
            "handover_meta.quarantine WHERE run_id=%s",
            (run_id,),
        ).fetchall()
        x = conn.execute(
            "SELECT table_name, record_key, rule_id, NULL FROM "
            "handover_meta.exclusion WHERE run_id=%s",
            (run_id,),
        ).fetchall()
        if keyring_file is not None:  # excluded rows were destroyed: keys are keyed hashes
            x = unhash_book_keys(keyring_file, x, keys)
        m = conn.execute(
            "SELECT table_name, merged_key, rule, survivor_key FROM "
            "handover_meta.merge_map WHERE run_id=%s",
            (run_id,),
        ).fetchall()
        fates: dict = {(t, k): ("quarantined", r, f) for t, k, r, f in q}
        fates.update({(t, k): ("excluded", r, f) for t, k, r, f in x})
        # a same-key merge names the key it kept: that row is loaded, its twin merged
        fates.update({(t, k): ("merged", r, s) for t, k, r, s in m if k != s})
        for table, (target, key) in TARGETS.items():
            for (k,) in conn.execute(f"SELECT {key} FROM crm.{target}"):
                fates.setdefault((table, k), ("loaded", None, None))
    return fates


def _reset_target(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        exists = conn.execute("SELECT to_regclass('crm.customer')").fetchone()[0]
        if exists:
            conn.execute("TRUNCATE crm.customer, crm.payment")


def _system(tmp_path: Path, kind: Kind) -> Path:
    import yaml

    opts = dict(kind.system)
    drop_key = opts.pop("drop_key", None)
    tables = opts.pop("tables", TABLES)
    folder = make_system(tmp_path / "system", tables, **opts)
    if drop_key:
        path = folder / "catalog.yaml"
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        del doc["tables"][drop_key]["key"]
        path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return folder


@pytest.mark.parametrize("kind", list(_params()))
def test_bad_input(kind: Kind, base: Base, corpus_env: str, keyring_file, tmp_path, monkeypatch):
    from handover.ops.tasks import data_faults

    dsn = corpus_env
    src = tmp_path / "export"
    src.mkdir()
    for t in TABLES:
        shutil.copy(base.dir / f"{t}.csv", src / f"{t}.csv")
    planted = kind.plant(src, base) or {}
    rows = {t: _count(src / f"{t}.csv") for t in TABLES}
    rows.update(planted.get("rows", {}))
    write_manifest(src, rows)
    if "files" in planted:
        manifest = json.loads((src / "export_manifest.json").read_text())
        manifest["tables"]["payments"]["files"] = planted["files"]
        (src / "export_manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("HANDOVER_LAKE_URL", f"file://{tmp_path / 'lake'}")
    _reset_target(dsn)
    run_id = f"corpus_{kind.id}_{uuid.uuid4().hex[:6]}"
    system = _system(tmp_path, kind)

    if kind.expect == "error":
        with pytest.raises(data_faults()) as err:
            run_stages(run_id, src, system, gates=kind.gates)
        message = str(err.value)
        assert "\n" not in message.strip(), f"not one line: {message[:300]!r}"
        for pattern in list(kind.names) + planted.get("names", []):
            assert re.search(pattern, message), f"{pattern!r} not in: {message[:300]}"
        for secret in planted.get("secrets", []):
            assert secret not in message, "the error quotes the row's personal data"
        _assert_nothing_loaded(dsn, run_id)
        return

    run_stages(run_id, src, system, gates=kind.gates)
    assert_ledger_balanced(dsn, run_id, kind.system.get("tables", TABLES))
    fates = _fates(dsn, run_id, keyring_file, planted.get("keys", []))
    want_field = planted.get("field")
    for table, key in planted.get("keys", []):
        fate = fates.get((table, key))
        expected = planted.get("fates", {}).get(key, kind.expect)
        if expected == "completes":
            continue
        assert fate is not None, f"{table} {key}: neither loaded, quarantined nor excluded"
        assert fate[0] == expected, (table, key, fate)
        if expected != "loaded" and kind.reason:
            assert fate[1] == kind.reason, (table, key, fate)
        if want_field and expected == "quarantined":
            assert fate[2] == want_field, (table, key, fate)
    if "check" in planted:
        planted["check"](dsn)


def _assert_nothing_loaded(dsn: str, run_id: str) -> None:
    """A failed input stops before load, and what the ledger holds so far chains."""
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regclass('handover_meta.ledger')").fetchone()[0] is None:
            return  # plan_run failed before it created anything (the kind ran first)
        loads = conn.execute(
            "SELECT count(*) FROM handover_meta.ledger WHERE run_id=%s AND stage='load'", (run_id,)
        ).fetchone()
        exists = conn.execute("SELECT to_regclass('crm.customer')").fetchone()[0]
        rows = (
            conn.execute(
                "SELECT (SELECT count(*) FROM crm.customer) + (SELECT count(*) FROM crm.payment)"
            ).fetchone()[0]
            if exists
            else 0
        )
    assert (loads is None or loads[0] == 0) and rows == 0
    for table, r in ledger_report(dsn, run_id).items():
        assert r["chained"], (table, r)


def test_every_kind_is_distinct_and_enough():
    ids = [k.id for k in KINDS]
    assert len(ids) == len(set(ids)) and len(ids) >= 30
