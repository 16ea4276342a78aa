"""Fuzzing (hypothesis) of the normalisers, validators, cleanse, the mapping engine and the
CSV extract: whatever the input, they return an answer or fail with their one-line error.

Bounded for CI: derandomised (the same examples on every run, so CI never meets a new one
by chance), a per-example deadline, and example counts that keep the file well under a
minute. `HANDOVER_FUZZ_EXAMPLES=2000` explores further, randomly, for local hunting.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handover.config.loader import load_config
from handover.core import validators as v
from handover.stages.cleanse import ParentRegistry, cleanse
from handover.stages.cleanse_rules import REASON_ORDER

DEEP = int(os.environ.get("HANDOVER_FUZZ_EXAMPLES", "0"))


def bounded(examples: int):
    return settings(
        max_examples=DEEP or examples,
        deadline=timedelta(seconds=5),
        derandomize=not DEEP,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


E = pd.Timestamp("2026-11-01 00:00:00")
CFG = load_config("legacy_bss")

# ---------------------------------------------------------------- value strategies
DIGITS = "0123456789"
FULLWIDTH = "０１２３４５６７８９"
ODD = [
    "",
    " ",
    "\u3000",
    "\t",
    "NULL",
    "null",
    "N/A",
    "-",
    "0",
    "-1",
    "1e3",
    "1,234.50",
    "1.234,50",
    "9223372036854775808",
    "9007199254740993",
    "Infinity",
    "NaN",
    "=cmd|' /C calc'!A0",
    "'; DROP TABLE x; --",
    "\x00",
    "😀",
    "𠀀",
    "２０２６-０３-０５",
    "2026-02-30",
    "0001-01-01 00:00:00",
    "9999-12-31 23:59:59",
    "1899-12-30",
]


def _valid_id(draw) -> str:
    body = draw(st.text(DIGITS, min_size=17, max_size=17))
    return body + v.id_check_digit(body)


@st.composite
def resident_ids(draw) -> str:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return _valid_id(draw)
    if kind == 1:  # valid with a lower-case x or full-width digits
        rid = _valid_id(draw)
        return (
            rid[:-1] + rid[-1].lower()
            if rid.endswith("X")
            else rid.translate(str.maketrans(DIGITS, FULLWIDTH))
        )
    if kind == 2:
        return draw(st.text(DIGITS + "Xx", min_size=16, max_size=19))
    return draw(st.text(max_size=20))


@st.composite
def msisdns(draw) -> str:
    prefix = draw(st.sampled_from(["130", "138", "150", "177", "186", "199", "140", "123"]))
    number = prefix + draw(st.text(DIGITS, min_size=8, max_size=8))
    style = draw(st.integers(0, 4))
    if style == 1:
        return f"+86 {number[:3]} {number[3:7]} {number[7:]}"
    if style == 2:
        return f"0086{number}"
    if style == 3:
        return number.translate(str.maketrans(DIGITS, FULLWIDTH))
    if style == 4:
        return draw(st.text(max_size=16))
    return number


def cells(*extra: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), st.sampled_from(ODD), st.text(max_size=24), *extra)


def _one_line(exc: BaseException) -> None:
    text = str(exc)
    assert text and "\n" not in text.strip(), repr(text[:300])


# ---------------------------------------------------------------- normalisers, validators
@bounded(300)
@given(st.lists(st.one_of(st.none(), st.text(max_size=30)), max_size=20))
def test_normalise_text_trims_and_never_leaves_empty(values):
    out = v.normalise_text(pa.array(values, pa.string())).to_pylist()
    assert len(out) == len(values)
    for before, after in zip(values, out, strict=True):
        if before is None:
            assert after is None
        elif after is not None:
            assert after == after.strip() and after != ""
            assert v.normalise_text(pa.array([after], pa.string())).to_pylist() == [after]


@bounded(300)
@given(st.lists(msisdns(), max_size=20))
def test_normalise_msisdn_is_total_and_valid_means_eleven_ascii_digits(values):
    norm = v.normalise_msisdn(pa.array(values, pa.string()))
    ok = v.msisdn_valid(norm)
    assert len(ok) == len(values)
    for text, good in zip(norm.to_pylist(), ok, strict=True):
        if good:
            assert re.fullmatch(r"1\d{10}", text, re.ASCII)


@bounded(200)
@given(
    st.text(DIGITS, min_size=8, max_size=8),
    st.sampled_from(["130", "138", "150", "177", "186", "199"]),
    st.sampled_from(["{}", "+86 {}", "0086{}", "86{}", " {} ", "+86-{}"]),
)
def test_normalise_msisdn_recovers_every_written_form_of_a_number(tail, prefix, form):
    number = prefix + tail
    spaced = f"{number[:3]} {number[3:7]} {number[7:]}"
    for written in (
        form.format(number),
        form.format(spaced),
        form.format(number).translate(str.maketrans(DIGITS, FULLWIDTH)),
    ):
        norm = v.normalise_msisdn(pa.array([written]))
        assert norm.to_pylist() == [number], written
        assert v.msisdn_valid(norm).tolist() == [True]


@bounded(400)
@given(st.lists(resident_ids(), max_size=25))
def test_vector_and_scalar_id_checks_agree(ids):
    upper = pa.array([i.upper() for i in ids], pa.string())
    vector = v.resident_id_valid(upper)
    scalar = [v.resident_id_ok(i.upper()) for i in ids]
    assert vector.tolist() == scalar
    birth, gender = v.resident_id_birth_gender(upper)
    assert len(birth) == len(gender) == len(ids)


@bounded(200)
@given(st.text(DIGITS, min_size=17, max_size=17))
def test_only_the_right_check_digit_passes(body):
    good = body + v.id_check_digit(body)
    others = [body + c for c in "0123456789X" if c != good[-1]]
    assert v.resident_id_valid(pa.array([good] + others)).tolist() == [True] + [False] * 10


# ---------------------------------------------------------------- cleanse
def frames(table: str, n_max: int = 12) -> st.SearchStrategy:
    """Random string frames with the table's catalogued columns; some cells realistic."""
    columns = list(CFG.table(table)["columns"])
    rules = CFG.rules(table)
    special: dict[str, st.SearchStrategy] = {c: msisdns() for c in rules.get("msisdn", [])}
    if rules.get("resident_id"):
        special[rules["resident_id"]["column"]] = resident_ids()
    for col, fmt in rules.get("dates", {}).items():
        special[col] = st.dates().map(
            lambda d, f=fmt: d.strftime(f if "%H" not in f else "%Y-%m-%d 12:00:00")
        )
    for col in rules.get("integers", []):
        special[col] = st.integers(-(10**20), 10**20).map(str)
    for col, codes in rules.get("codes", {}).items():
        special[col] = st.sampled_from([str(c) for c in codes])
    key = CFG.table(table)["key"]
    special[key] = st.sampled_from(["K1", "K2", "K3", " K1 ", "Ｋ１"])

    @st.composite
    def build(draw):
        n = draw(st.integers(0, n_max))
        data = {
            c: [draw(cells(special[c]) if c in special else cells()) for _ in range(n)]
            for c in columns
        }
        frame = pd.DataFrame(data, columns=columns, dtype=object)
        frame["_source_row"] = np.arange(1, n + 1, dtype=np.int64)
        return frame

    return build()


@pytest.mark.parametrize("table", ["subscribers", "payments", "call_records", "complaints"])
def test_cleanse_accounts_for_every_row(table):
    rules, key = CFG.rules(table), CFG.table(table)["key"]
    parent = ParentRegistry({"C1", "K1"}, {"C2"}, {"C3"}) if rules.get("parent") else None

    @bounded(120)
    @given(frames(table))
    def check(raw):
        result = cleanse(raw, rules, key=key, exported_at=E, parent=parent, duplicate_losers={"K2"})
        assert len(result.clean) + len(result.quarantine) == len(raw)
        assert set(result.quarantine["_reason"]) <= set(REASON_ORDER)
        assert sum(result.counts.values()) == len(result.quarantine)
        keys = result.clean[key]
        assert keys.notna().all() and not keys.duplicated().any()
        assert (
            sorted(result.clean["_source_row"].tolist() + result.quarantine["_source_row"].tolist())
            == raw["_source_row"].tolist()
        )

    check()


# ---------------------------------------------------------------- mapping engine
def _ring():
    from handover.protection.fields import Keyring

    return Keyring.from_dict(Keyring.generate("k-fuzz"))


RING = _ring()


@pytest.mark.parametrize("table", ["subscribers", "payments", "complaints"])
def test_shipped_mappings_map_whatever_cleanse_lets_through(table):
    from handover.config.target import target_columns
    from handover.stages.mapping import MappingError, map_partition

    rules, key, tmap = CFG.rules(table), CFG.table(table)["key"], CFG.table_mapping(table)
    parent = ParentRegistry({"K1", "K2", "K3", "C1"}, set(), set()) if rules.get("parent") else None

    @bounded(100)
    @given(frames(table))
    def check(raw):
        clean = cleanse(raw, rules, key=key, exported_at=E, parent=parent).clean
        try:
            mapped = map_partition(
                clean, table, tmap, CFG.table(table)["columns"], RING, partition="p00"
            )
        except MappingError as exc:
            _one_line(exc)
            return
        assert mapped.num_rows == len(clean)
        assert mapped.column_names == target_columns(tmap)

    check()


TRANSFORM_MAPPING = {
    "target": "t",
    "key": "k",
    "fields": {
        "k": {"from": "a"},
        "joined": {"concat": {"columns": ["a", "b"], "separator": "-"}},
        "second": {"from": "b", "split": {"separator": " ", "part": 1}},
        "filled": {"from": "c", "default": "none"},
        "code": {"from": "d", "lookup": {"1": "one", "2": "two"}},
        "when": {"from": "c", "parse_date": {"format": ["%Y-%m-%d", "%Y%m%d", "epoch"]}},
        "fen": {"from": "b", "yuan_to_fen": True},
        "as_int": {"from": "c", "cast": "int"},
        "as_bool": {"from": "d", "cast": "bool"},
        "as_ts": {"from": "e", "cast": "timestamp"},
        "body": {"from": "b", "protect": ["redact"]},
    },
}


# Text pandas reads as NaT without an error: test_cast_timestamp_of_nat_text_is_an_error.
NOT_NAT = cells(st.datetimes().map(str)).filter(
    lambda x: x is None or x.strip().lower() not in ("", "nat", "nan")
)


@bounded(250)
@given(
    st.lists(
        st.tuples(
            cells(),
            cells(st.decimals(allow_nan=True).map(str)),
            cells(st.dates().map(str), st.integers().map(str)),
            cells(st.sampled_from(["1", "2", "true", "no"])),
            NOT_NAT,
        ),
        max_size=10,
    )
)
def test_every_transform_returns_or_raises_one_mapping_error(rows):
    from handover.config.target import target_columns
    from handover.stages.mapping import MappingError, map_partition

    clean = pd.DataFrame(rows, columns=["a", "b", "c", "d", "e"], dtype=object)
    clean["_source_row"] = np.arange(1, len(clean) + 1)
    columns = {c: {"level": "L1", "pii": "none"} for c in "abcde"}
    try:
        mapped = map_partition(clean, "fuzz", TRANSFORM_MAPPING, columns, RING, partition="p0")
    except MappingError as exc:
        _one_line(exc)
        assert "source row" in str(exc) or "mapping.yaml" in str(exc)
        return
    assert mapped.num_rows == len(clean)
    assert mapped.column_names == target_columns(TRANSFORM_MAPPING)


@pytest.mark.parametrize("text", ["NaT", "nan"])
def test_cast_timestamp_of_nat_text_is_an_error(text):
    from handover.stages.mapping import MappingError, map_partition

    clean = pd.DataFrame({"e": [text], "_source_row": [7]}, dtype=object)
    mapping = {
        "target": "t",
        "key": "as_ts",
        "fields": {"as_ts": {"from": "e", "cast": "timestamp"}},
    }
    with pytest.raises(MappingError, match="source row 7"):
        map_partition(clean, "fuzz", mapping, {"e": {"level": "L1", "pii": "none"}}, None)


# ---------------------------------------------------------------- the CSV extract
HEADER = (
    b"cust_id,name,id_number,gender,birth_date,msisdn,address,city,open_date,status,"
    b"transfer_objection,updated_at\n"
)


@st.composite
def csv_bytes(draw) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=400))
    if kind == 1:
        return HEADER + draw(st.binary(max_size=400))
    pieces = [
        b'"',
        b",",
        b"\n",
        b"\r\n",
        b"\r",
        b"\x00",
        b"\xef\xbb\xbf",
        b"\xff",
        "钱".encode("gbk"),
        "钱".encode(),
        b"C1",
        b"x",
        b" ",
    ]
    body = b"".join(draw(st.lists(st.sampled_from(pieces), max_size=120)))
    if kind == 2:
        return HEADER + body
    row = ",".join(draw(st.lists(st.text(max_size=6), min_size=12, max_size=12))).encode()
    return HEADER + row + b"\n" + body


class _FakeConn:
    """Stands in for the ledger connection: extract's fuzzing is about reading."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def transaction(self):
        return self

    def execute(self, *args, **kwargs):
        return self


@pytest.fixture(scope="module")
def extract_env(tmp_path_factory):
    from tests.conftest import make_system

    root = tmp_path_factory.mktemp("fuzz_extract")
    system = make_system(root / "system", ("subscribers",), partitions={"subscribers": 2})
    return root, system


def test_csv_extract_never_crashes_on_random_bytes(extract_env, monkeypatch):
    from handover.flows import migration as pipeline

    root, system = extract_env
    monkeypatch.setenv("HANDOVER_LAKE_URL", f"file://{root / 'lake'}")
    monkeypatch.setattr(pipeline.ledger, "connect", lambda *a, **k: _FakeConn())
    src = root / "source"
    src.mkdir(exist_ok=True)
    counter = iter(range(10**9))

    @bounded(250)
    @given(csv_bytes())
    def check(data):
        (src / "subscribers.csv").write_bytes(data)
        ctx = {
            "run_id": f"fuzz{next(counter)}",
            "system": str(system),
            "source_dir": str(src),
            "manifest_rows": {},
        }
        try:
            parts = pipeline.extract_table(ctx, "subscribers")
        except pipeline.SourceError as exc:
            _one_line(exc)
            assert "subscribers.csv" in str(exc)
            return
        assert [p["partition"] for p in parts] == ["p00", "p01"]
        assert all(p["rows"] >= 0 for p in parts)

    check()
