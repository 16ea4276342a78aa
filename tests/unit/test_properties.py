"""Properties of the normalisers, validators and mapping transforms, checked with hypothesis.

Every source system runs its rows through the same built-in normalisers and validators, so
they must hold for *any* text a legacy export can contain: they never crash on arbitrary
Unicode, normalising twice gives what normalising once gave, and the vectorised GB 11643
check agrees with a check-digit computation written here independently of validators.py
(the ISO 7064 MOD 11-2 definition: weight 2^(17-i) mod 11, check (12 - sum) mod 11).
Mapping transforms may reject a value, but only with a MappingError.
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from handover.config.loader import load_config
from handover.core.validators import (
    msisdn_valid,
    normalise_msisdn,
    normalise_text,
    resident_id_birth_gender,
    resident_id_ok,
    resident_id_valid,
)
from handover.stages.cleanse import validate
from handover.stages.cleanse_dates import parse_dates
from handover.stages.cleanse_rules import REASON_ORDER
from handover.stages.mapping import MappingError, field_values

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
E = pd.Timestamp("2026-11-01 00:00:00")

# Arbitrary Unicode as a legacy export can hold it (no lone surrogates: they are not text).
TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
MAYBE_TEXT = st.none() | TEXT
TEXTS = st.lists(MAYBE_TEXT, max_size=12)
DIGITS = st.text("0123456789", min_size=17, max_size=17)


def one(fn, value):
    return fn(pa.array([value], pa.string())).to_pylist()[0]


def independent_check_char(first17: str) -> str:
    """GB 11643 / ISO 7064 MOD 11-2, from its definition (not from validators.py)."""
    total = sum(int(d) * pow(2, 17 - i, 11) for i, d in enumerate(first17))
    value = (12 - total % 11) % 11
    return "X" if value == 10 else str(value)


def independent_valid(text: str | None) -> bool:
    if text is None or len(text) != 18:
        return False
    body, check = text[:17], text[17]
    if not all(c in "0123456789" for c in body) or check not in "0123456789X":
        return False
    return independent_check_char(body) == check


# -- normalise_text -----------------------------------------------------------------------


@SETTINGS
@given(TEXTS)
def test_normalise_text_never_crashes_and_is_idempotent(values):
    once = normalise_text(pa.array(values, pa.string()))
    twice = normalise_text(once)

    assert len(once) == len(values)
    assert twice.to_pylist() == once.to_pylist()


@SETTINGS
@given(TEXTS)
def test_normalise_text_trims_and_never_leaves_empty_strings(values):
    out = normalise_text(pa.array(values, pa.string())).to_pylist()

    for before, after in zip(values, out, strict=True):
        if before is None:
            assert after is None
        elif after is not None:
            assert after != "" and after == after.strip()


# -- MSISDNs ------------------------------------------------------------------------------


@SETTINGS
@given(TEXTS)
def test_msisdn_normaliser_and_validator_never_crash(values):
    arr = pa.array(values, pa.string())

    normalised = normalise_msisdn(arr)
    valid = msisdn_valid(normalised)

    assert len(normalised) == len(values)
    assert valid.dtype == np.bool_ and len(valid) == len(values)
    for v, ok in zip(normalised.to_pylist(), valid, strict=True):
        if ok:
            assert len(v) == 11 and v.isascii() and v.isdigit() and v[0] == "1"


FULLWIDTH = str.maketrans("0123456789+-", "０１２３４５６７８９＋－")


@st.composite
def written_msisdns(draw) -> str:
    """A mobile number as people and legacy systems write it."""
    number = (
        "1" + draw(st.sampled_from("3456789")) + draw(st.text("0123456789", min_size=9, max_size=9))
    )
    prefix = draw(st.sampled_from(["", "+86", "+86 ", "0086", "86"]))
    sep = draw(st.sampled_from(["", " ", "-"]))
    text = prefix + (number[:3] + sep + number[3:7] + sep + number[7:])
    if draw(st.booleans()):
        text = text.translate(FULLWIDTH)
    pad = draw(st.sampled_from(["", " ", "\u3000", "\t"]))
    return pad + text + pad


@SETTINGS
@given(st.lists(written_msisdns(), min_size=1, max_size=10))
def test_written_msisdns_normalise_to_11_digits_idempotently(values):
    once = normalise_msisdn(pa.array(values, pa.string()))
    twice = normalise_msisdn(once)

    assert twice.to_pylist() == once.to_pylist()
    assert all(len(v) == 11 and v.isdigit() for v in once.to_pylist())


@SETTINGS
@example("0086+8613812345678")
@example("-")
@example("-\x1f0")  # a removed separator exposed a control the next trim took
@example("-\x85 13812345678")
@given(MAYBE_TEXT)
def test_normalise_msisdn_is_idempotent_on_arbitrary_text(value):
    once = one(normalise_msisdn, value)

    assert one(normalise_msisdn, once) == once


# -- resident IDs -------------------------------------------------------------------------


@SETTINGS
@given(TEXTS)
def test_vector_id_check_agrees_with_independent_computation_on_any_text(values):
    got = resident_id_valid(pa.array(values, pa.string()))

    assert got.tolist() == [independent_valid(v) for v in values]


@SETTINGS
@given(st.lists(st.tuples(DIGITS, st.sampled_from("0123456789Xx")), min_size=1, max_size=50))
def test_vector_id_check_agrees_on_id_shaped_values(parts):
    values = [body + check for body, check in parts]

    got = resident_id_valid(pa.array(values, pa.string()))

    assert got.tolist() == [independent_valid(v) for v in values]


@SETTINGS
@given(DIGITS, st.integers(0, 16), st.integers(1, 9))
def test_id_with_independent_check_digit_passes_and_any_single_digit_error_fails(
    body, position, delta
):
    rid = body + independent_check_char(body)
    typo = rid[:position] + str((int(rid[position]) + delta) % 10) + rid[position + 1 :]

    assert resident_id_valid(pa.array([rid, typo])).tolist() == [True, False]
    assert resident_id_ok(rid) and not resident_id_ok(typo)


@SETTINGS
@example("١١٠١٠٥١٩٤٩١٢٣١٠٠١1")
@given(MAYBE_TEXT)
def test_scalar_id_check_agrees_with_the_vector_form(value):
    assert resident_id_ok(value or "") == bool(resident_id_valid(pa.array([value]))[0])


@SETTINGS
@given(TEXTS)
def test_birth_and_gender_extraction_never_crashes(values):
    birth, gender = resident_id_birth_gender(pa.array(values, pa.string()))

    assert len(birth) == len(gender) == len(values)
    assert set(gender.to_pylist()) <= {"男", "女", None}


@SETTINGS
@given(DIGITS)
def test_birth_and_gender_read_from_the_digits(body):
    rid = body + independent_check_char(body)

    birth, gender = resident_id_birth_gender(pa.array([rid]))

    assert birth.to_pylist() == [f"{rid[6:10]}-{rid[10:12]}-{rid[12:14]}"]
    assert gender.to_pylist() == ["男" if int(rid[16]) % 2 else "女"]


# -- cleansing and mapping on arbitrary rows ----------------------------------------------


@pytest.fixture(scope="module")
def configs():
    return {name: load_config(name) for name in ("legacy_bss", "telco_b")}


ROWS = st.lists(st.lists(MAYBE_TEXT, min_size=12, max_size=12), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(rows=ROWS, system=st.sampled_from(["legacy_bss", "telco_b"]), table_no=st.integers(0, 6))
def test_cleansing_any_rows_never_crashes_and_gives_every_row_a_verdict(
    configs, rows, system, table_no
):
    cfg = configs[system]
    table = cfg.tables[table_no]
    columns = list(cfg.table(table)["columns"])
    raw = pd.DataFrame([r[: len(columns)] for r in rows], columns=columns, dtype=object)
    raw["_source_row"] = np.arange(1, len(raw) + 1)

    typed, verdict = validate(raw, cfg.rules(table), key=cfg.table(table)["key"], exported_at=E)

    assert len(typed) == len(raw)
    assert set(verdict.reason[verdict.failed]) <= set(REASON_ORDER)


DATE_FORMATS = [
    "%Y-%m-%d",
    "%Y%m%d",
    "%Y年%m月%d日",
    "%Y-%m-%d %H:%M:%S.%f",
    "%Y年%m月%d日 %H:%M:%S",
    "epoch",
    "epoch_ms:Asia/Shanghai",
]


@SETTINGS
@given(TEXTS, st.sampled_from(DATE_FORMATS))
def test_date_parsing_never_crashes_and_is_stable(values, fmt):
    parsed = parse_dates(pd.Series(values, dtype=object), fmt)

    assert len(parsed) == len(values)
    assert parsed.isna()[[v is None for v in values]].all()


@SETTINGS
@given(
    st.dates(
        min_value=pd.Timestamp("1900-01-01").date(), max_value=pd.Timestamp("2199-12-31").date()
    )
)
def test_every_shipped_date_shape_round_trips(day):
    shapes = {
        "%Y%m%d": day.strftime("%Y%m%d"),
        "%Y年%m月%d日": f"{day.year:04d}年{day.month:02d}月{day.day:02d}日",
    }
    for fmt, text in shapes.items():
        assert parse_dates(pd.Series([text]), fmt)[0].date() == day


TRANSFORM_SPECS = [
    {"from": "v", "yuan_to_fen": True},
    {"from": "v", "cast": "int"},
    {"from": "v", "cast": "float"},
    {"from": "v", "cast": "bool"},
    {"from": "v", "cast": "date"},
    {"from": "v", "cast": "timestamp"},
    {"from": "v", "parse_date": {"format": ["%Y%m%d", "%Y年%m月%d日"]}},
    {"from": "v", "parse_date": {"format": "epoch:Asia/Shanghai"}},
    {"from": "v", "split": {"separator": "/", "part": 1, "parts": 2}},
    {"from": "v", "default": "x", "lookup": {"x": "X"}},
    {"concat": {"columns": ["v", "w"], "separator": " "}, "from": "v"},
]


@SETTINGS
@given(TEXTS, st.sampled_from(TRANSFORM_SPECS))
def test_mapping_transforms_reject_only_with_a_mapping_error(values, spec):
    clean = pd.DataFrame(
        {"v": pd.Series(values, dtype=object), "w": pd.Series(values[::-1], dtype=object)}
    )
    try:
        out, _ = field_values(clean, "t", "f", spec, partition="p")
    except MappingError as exc:
        assert "\n" not in str(exc) and "field f" in str(exc)
    else:
        assert len(out) == len(values)


@SETTINGS
@given(
    st.decimals(
        min_value=Decimal("-99999999.99"),
        max_value=Decimal("99999999.99"),
        places=2,
        allow_nan=False,
    )
)
def test_yuan_to_fen_is_exact_from_text_and_from_float(amount):
    clean = pd.DataFrame({"t": [f"{amount:.2f}"], "f": [float(amount)]})

    from_text, _ = field_values(clean, "t", "x", {"from": "t", "yuan_to_fen": True})
    from_float, _ = field_values(clean, "t", "x", {"from": "f", "yuan_to_fen": True})

    assert from_text.tolist() == from_float.tolist() == [int(amount * 100)]


# -- vector forms agree with the per-value forms they replace ------------------------------
# mapping, protect and comply run on Arrow arrays; each keeps its per-value form for
# values the vector form does not cover. Forcing every column down the per-value path
# (no column counts as text or numbers) must give exactly the same answers and errors.

NUMBERISH = st.one_of(
    st.from_regex(r"\A[ +-]?[0-9]{0,20}(\.[0-9]{0,4})?[ ]?\Z"),
    st.sampled_from(
        [
            "1e3",
            "1_000",
            "١٢",
            "１２",
            "inf",
            "NaN",
            "-0",
            "+0.50",
            " 7 ",
            "5.",
            ".5",
            "true",
            "Y",
            "no",
            "2024-02-29",
            "2024-02-29 12:30:59",
            "2024-02-29T12:30:59.999",
            "20240229",
            "2024年2月29日",
            "1700000000",
            "1700000000123",
            "a/b",
            "/",
            "a/b/c",
            " / x /",
        ]
    ),
)
VALUE_TEXTS = st.lists(st.none() | NUMBERISH | TEXT, max_size=12)
VECTOR_SPECS = TRANSFORM_SPECS + [
    {"from": "v", "cast": "string"},
    {"from": "v", "split": {"separator": "/", "part": 0}},
    {"from": "v", "split": {"separator": "/", "part": 2, "parts": 1}},
    {"from": "v", "default": "d"},
    {"from": "v", "lookup": {"1": True, "0": False}},
    {"from": "v", "lookup": {"1": 10, "0": 0}},
    {"from": "v", "parse_date": {"format": "%Y-%m-%d %H:%M:%S", "to": "date"}},
    {"from": "v", "parse_date": {"format": ["%Y-%m-%d", "epoch_ms"], "to": "timestamp"}},
    {"concat": {"columns": ["v", "w", "v"], "separator": "-"}},
]


def _per_value_only(monkeypatch):
    from handover.stages import mapping_field as mapping

    monkeypatch.setattr(mapping, "_text_array", lambda series: None)
    monkeypatch.setattr(mapping, "_numeric", lambda series: None)


def _outcome(clean, spec):
    try:
        values, kind = field_values(clean, "t", "f", spec, partition="p")
    except MappingError as exc:
        return "error", str(exc)
    return [(type(v), v) for v in values], kind


@SETTINGS
@given(VALUE_TEXTS, st.sampled_from(VECTOR_SPECS))
def test_mapping_vector_forms_equal_the_per_value_forms_on_text(values, spec):
    clean = pd.DataFrame(
        {"v": pd.Series(values, dtype="str"), "w": pd.Series(values[::-1], dtype="str")}
    )
    vector = _outcome(clean, spec)
    with pytest.MonkeyPatch.context() as mp:
        _per_value_only(mp)
        per_value = _outcome(clean, spec)

    assert vector == per_value


FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(min_value=-(10**12), max_value=10**12, places=2).map(float),
    st.decimals(min_value=-1000, max_value=1000, places=3).map(float),
    st.integers(-(2**62), 2**62).map(float),
)


@SETTINGS
@given(
    st.lists(st.none() | FLOATS, max_size=12),
    st.sampled_from([{"from": "v", "yuan_to_fen": True}, {"from": "v", "cast": "int"}]),
)
def test_mapping_vector_forms_equal_the_per_value_forms_on_numbers(values, spec):
    for clean in (
        pd.DataFrame({"v": pd.Series(values, dtype="float64")}),
        pd.DataFrame(
            {
                "v": pd.Series(
                    [None if v is None or v != v or abs(v) > 2**62 else int(v) for v in values],
                    dtype="Int64",
                )
            }
        ),
    ):
        vector = _outcome(clean, spec)
        with pytest.MonkeyPatch.context() as mp:
            _per_value_only(mp)
            per_value = _outcome(clean, spec)

        assert vector == per_value


@SETTINGS
@given(st.lists(st.none() | TEXT | NUMBERISH, min_size=1, max_size=12), st.data())
def test_map_partition_vector_forms_equal_the_per_value_forms(values, data):
    import base64

    from handover.protection import fields as protect
    from handover.protection.fields import Keyring
    from handover.stages.mapping import map_partition

    ring = Keyring.from_dict(
        {
            "active_key_id": "k1",
            "keys": {"k1": base64.b64encode(bytes(32)).decode()},
            "hmac_key": base64.b64encode(b"h" * 32).decode(),
        }
    )
    mapping = {
        "target": "t",
        "fields": {
            "plain": {"from": "v"},
            "code": {"from": "v", "lookup": {str(v): f"c{i}" for i, v in enumerate(values)}},
            "rid": {
                "from": "v",
                "protect": data.draw(
                    st.sampled_from(
                        [["encrypt", "blind_index", "mask"], ["blind_index", "mask"], ["redact"]]
                    )
                ),
            },
            "tel": {"from": "w", "protect": ["mask"]},
        },
    }
    columns = {"v": {"pii": "resident_id"}, "w": {"pii": "msisdn"}}
    clean = pd.DataFrame(
        {"v": pd.Series(values, dtype="str"), "w": pd.Series(values[::-1], dtype="str")}
    )

    def run():
        stream = np.random.default_rng(1)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(protect.os, "urandom", stream.bytes)
            return map_partition(clean, "t", mapping, columns, ring)

    vector = run()
    with pytest.MonkeyPatch.context() as mp:
        _per_value_only(mp)
        per_value = run()

    assert vector.equals(per_value)


def test_comply_whitespace_is_what_str_strip_removes():
    import sys

    from handover.stages.comply import WHITESPACE

    assert set(WHITESPACE) == {c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()}


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.none() | st.sampled_from(["C1", " C2", "C3 ", "C\u30004", ""]) | TEXT,
            st.none() | st.sampled_from(["2020-01-01 00:00:00", " 2026-10-01 10:00:00 "]) | TEXT,
        ),
        max_size=12,
    ),
    st.sampled_from(["consumption", "behavioural"]),
)
def test_comply_vector_forms_equal_the_per_value_forms(rows, category):
    from handover.stages import comply

    policy = {
        "rules": [{"id": "OBJECTED_TRANSFER"}, {"id": "RETENTION_EXPIRED"}, {"id": "NO_CONSENT"}]
    }
    cat = {
        "consumption": {"lawful_basis": "contract", "retention_months": 36},
        "behavioural": {
            "lawful_basis": "separate_consent",
            "consent_purpose": "behavioural",
            "retention_months": 12,
        },
    }[category]
    subscribers = pd.DataFrame(
        {"cust_id": ["C1", "C2", " C\u30004 ", None, ""], "flag": ["1", " 1\u3000", "0", "1", "1"]},
        dtype="str",
    )
    consents = pd.DataFrame(
        {
            "cust_id": ["C3", "C1", None, " C2"],
            "purpose": ["behavioural", " behavioural", "marketing", None],
            "granted": ["1", "1", "1", "1"],
        },
        dtype="str",
    )
    full = {
        **policy,
        "objection": {"column": "flag", "value": "1"},
        "consent": {
            "customer_column": "cust_id",
            "purpose_column": "purpose",
            "granted_column": "granted",
            "granted_value": "1",
        },
    }
    raw = pd.DataFrame(rows, columns=["cust_id", "ts"], dtype="str")
    raw.insert(0, "id", [f"R{i}" for i in range(len(raw))])

    def run():
        facts = comply.policy_facts(subscribers, consents, full, E)
        res = comply.decide(
            raw,
            table_spec={"key": "id", "customer_column": "cust_id", "event_time": "ts"},
            category_policy=cat,
            policy=policy,
            facts=facts,
            event_time_format="%Y-%m-%d %H:%M:%S",
        )
        return facts, res

    facts, vector = run()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(comply, "_strings", lambda values: None)
        facts_pv, per_value = run()

    assert (facts.objected, facts.consented) == (facts_pv.objected, facts_pv.consented)
    pd.testing.assert_frame_equal(vector.moved, per_value.moved)
    pd.testing.assert_frame_equal(vector.excluded, per_value.excluded)
    assert vector.counts == per_value.counts
