"""handover.core.validators: GB 11643 resident IDs, MSISDNs and Luhn, scalar and vectorised."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handover.core.validators import (
    id_check_digit,
    luhn_ok,
    msisdn_valid,
    normalise_msisdn,
    normalise_text,
    resident_id_birth_gender,
    resident_id_ok,
    resident_id_valid,
)


def make_id(area: str = "110105", birth: str = "19491231", seq: str = "002") -> str:
    first17 = area + birth + seq
    return first17 + id_check_digit(first17)


def with_wrong_check(rid: str) -> str:
    wrong = next(c for c in "0123456789X" if c != rid[17])
    return rid[:17] + wrong


# -- GB 11643 check digit -----------------------------------------------------------------


@pytest.mark.parametrize(
    "first17, expected",
    [
        ("44052418800101001", "4"),  # sum 195, 195 % 11 == 8 -> 4
        ("11010119900307387", "X"),  # sum 222, 222 % 11 == 2 -> X
        ("11010519491231002", "X"),  # the example of GB 11643-1999 itself
        ("31010420000229015", "3"),  # sum 152, 152 % 11 == 9 -> 3
    ],
)
def test_check_digit_known_values(first17: str, expected: str):
    assert id_check_digit(first17) == expected


@pytest.mark.parametrize(
    "rid",
    [
        make_id(),
        make_id("440524", "18800101", "001"),
        make_id("310104", "20000229", "015"),
        make_id("650102", "19851111", "128"),
    ],
)
def test_valid_ids_pass_scalar_and_vector(rid: str):
    assert resident_id_ok(rid)
    assert resident_id_valid(pa.array([rid])).tolist() == [True]


def test_x_check_digit_is_accepted_upper_case_only():
    rid = "11010519491231002X"

    assert resident_id_ok(rid)
    assert not resident_id_ok(rid.lower())
    assert resident_id_valid(pa.array([rid, rid.lower()])).tolist() == [True, False]


def test_wrong_check_digit_fails():
    rid = with_wrong_check(make_id("310104", "20000229", "015"))

    assert not resident_id_ok(rid)
    assert resident_id_valid(pa.array([rid])).tolist() == [False]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "1101051949123100",
        "1101051949123100211",
        "11010519491231002Y",
        "1101051949123100 X",
        "A1010519491231002X",
    ],
)
def test_malformed_ids_fail(bad: str):
    assert not resident_id_ok(bad)
    assert resident_id_valid(pa.array([bad])).tolist() == [False]


def test_vector_null_is_false_and_positions_are_kept():
    good = make_id()
    arr = pa.array([None, good, "123", with_wrong_check(good), good], pa.string())

    assert resident_id_valid(arr).tolist() == [False, True, False, False, True]


def test_vector_of_no_well_formed_ids():
    assert resident_id_valid(pa.array(["x", None], pa.string())).tolist() == [False, False]


digits17 = st.text(alphabet="0123456789", min_size=17, max_size=17)
id_like = st.one_of(
    st.text(alphabet="0123456789X", min_size=16, max_size=19),
    digits17.map(lambda s: s + id_check_digit(s)),
    st.tuples(digits17, st.sampled_from("0123456789X")).map("".join),
)


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.one_of(id_like, st.none()), min_size=1, max_size=40))
def test_vector_agrees_with_scalar(sample: list[str | None]):
    expected = [v is not None and resident_id_ok(v) for v in sample]

    assert resident_id_valid(pa.array(sample, pa.string())).tolist() == expected


# -- birth date and gender ----------------------------------------------------------------


def test_birth_and_gender_from_id():
    ids = pa.array(
        [
            make_id("110105", "19491231", "001"),  # 17th digit odd: male
            make_id("440524", "20000229", "128"),  # even: female
            "11010519491231002X",
        ]
    )

    birth, gender = resident_id_birth_gender(ids)

    assert birth.to_pylist() == ["1949-12-31", "2000-02-29", "1949-12-31"]
    assert gender.to_pylist() == ["男", "女", "女"]


# -- text and MSISDN normalisation --------------------------------------------------------


def test_normalise_text_full_width_trim_and_blank_to_null():
    arr = pa.array(["  ＡＢＣ１２３ ", "   ", "", None, "张三"])

    assert normalise_text(arr).to_pylist() == ["ABC123", None, None, None, "张三"]


@pytest.mark.parametrize(
    "raw",
    [
        "１３８１２３４５６７８",
        "+86 138 1234 5678",
        "138-1234-5678",
        "8613812345678",
        "008613812345678",
        "(138) 1234 5678",
        " 13812345678 ",
    ],
)
def test_normalise_msisdn_forms(raw: str):
    out = normalise_msisdn(pa.array([raw]))

    assert out.to_pylist() == ["13812345678"]
    assert msisdn_valid(out).tolist() == [True]


def test_normalise_msisdn_keeps_what_it_cannot_fix():
    out = normalise_msisdn(pa.array(["12345678", "1381234567x", None, "   "]))

    assert out.to_pylist() == ["12345678", "1381234567x", None, None]


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("-\x1f0", "0"),  # the separator went, the control is trimmed
        ("-\x85 13812345678", "13812345678"),  # NEL: trimmed, not a separator
        ("+86\x1f+8613812345678", "13812345678"),  # a second prefix behind a trimmed control
    ],
)
def test_normalise_msisdn_reaches_its_fixed_point(raw: str, expected: str):
    once = normalise_msisdn(pa.array([raw]))

    assert once.to_pylist() == [expected]
    assert normalise_msisdn(once).to_pylist() == [expected]


def test_normalise_msisdn_mixes_canonical_and_other_values_in_place():
    values = [
        "13812345678",
        "+86 139 1234 5678",
        None,
        "１３７１２３４５６７８",
        "13812345678 ",
        "",
    ]

    out = normalise_msisdn(pa.array(values, pa.string()))

    assert out.to_pylist() == [
        "13812345678",
        "13912345678",
        None,
        "13712345678",
        "13812345678",
        None,
    ]


def test_normalise_text_only_touches_non_ascii_values_and_keeps_order():
    values = ["abc", "ＡＢＣ", None, " x ", "e\u0301", "", "plain"]

    out = normalise_text(pa.array(values, pa.string()))

    assert out.to_pylist() == ["abc", "ABC", None, "x", "\u00e9", None, "plain"]
    assert (
        normalise_text(pa.chunked_array([values[:3], values[3:]], pa.string())).to_pylist()
        == out.to_pylist()
    )


def test_resident_id_vector_on_sliced_chunked_and_large_arrays():
    good, bad = make_id(), with_wrong_check(make_id())
    values = ["x", good, None, bad, good.lower(), make_id("440524", "18800101", "001")]
    expected = [False, True, False, False, False, True]

    assert resident_id_valid(pa.array(["pad"] + values).slice(1)).tolist() == expected
    assert resident_id_valid(pa.chunked_array([values[:2], values[2:]])).tolist() == expected
    assert resident_id_valid(pa.array(values, pa.large_string())).tolist() == expected


@pytest.mark.parametrize(
    "number, ok",
    [
        ("13812345678", True),
        ("15012345678", True),
        ("17712345678", True),
        ("18912345678", True),
        ("19912345678", True),
        ("12812345678", False),  # 12x is no mobile range
        ("12012345678", False),
        ("1381234567", False),  # 10 digits
        ("138123456789", False),  # 12 digits
        ("1381234567x", False),  # a letter
        ("abcdefghijk", False),
        ("21234567890", False),
        ("14012345678", False),  # 140 is not a subscriber range
        ("", False),
    ],
)
def test_msisdn_valid(number: str, ok: bool):
    assert msisdn_valid(pa.array([number])).tolist() == [ok]


def test_msisdn_valid_null_is_false():
    assert msisdn_valid(pa.array([None, "13812345678"], pa.string())).tolist() == [False, True]


# -- Luhn ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "digits, ok",
    [
        ("79927398713", True),
        ("4111111111111111", True),
        ("6011111111111117", True),
        ("378282246310005", True),
        ("490154203237518", True),  # an IMEI
        ("79927398710", False),
        ("4111111111111112", False),
        ("6011111111111118", False),
    ],
)
def test_luhn_ok(digits: str, ok: bool):
    assert luhn_ok(digits) is ok


def test_first_generation_ids_are_upgraded_to_eighteen_digits():
    from handover.core.validators import resident_id_valid, upgrade_resident_ids

    first17 = "110105" + "19" + "491231" + "002"
    eighteen = first17 + id_check_digit(first17)
    wrong = first17 + ("0" if eighteen[-1] != "0" else "1")
    ids = pa.array(
        [
            "110105491231002",
            " 110105 491231 002 ",
            wrong,
            "110105-491231-002",
            "110105493231002",
            None,
            eighteen.lower(),
        ]
    )
    out, upgraded = upgrade_resident_ids(ids)
    values = out.to_pylist()
    assert values[0] == values[1] == values[3] == eighteen
    assert upgraded.tolist() == [True, True, False, True, False, False, False]
    assert values[4] == "110105493231002"  # month 32: not a date, left to fail the check
    assert values[5] is None
    assert values[6] == eighteen.upper()
    assert resident_id_valid(out).tolist() == [True, True, False, True, False, False, True]


@pytest.mark.parametrize(
    "text, unit, places, fen",
    [
        ("¥17,504.10", "yuan", 2, 1750410),
        ("￥17,504.1", "yuan", 2, 1750410),
        ("RMB 1 234", "yuan", 2, 123400),
        ("12元", "yuan", 2, 1200),
        ("(12.50)", "yuan", 2, -1250),
        ("负12.5", "yuan", 2, -1250),
        ("-3", "yuan", 0, -300),
        ("17504", "fen", 0, 17504),
        ("12.3", "jiao", 1, 123),
        ("1,234,567,890,123.45", "yuan", 2, 123456789012345),
        (" 0.01 ", "yuan", 2, 1),
    ],
)
def test_money_as_legacy_systems_print_it_is_exact_to_the_fen(text, unit, places, fen):
    from handover.core.validators import parse_money

    assert parse_money(text, unit, places) == fen


@pytest.mark.parametrize("text", ["12.345", "1,23", "¥", "abc", "12..5", "1,2345.00", ""])
def test_what_is_not_an_amount_is_refused_not_rounded(text):
    from handover.core.validators import parse_money

    assert parse_money(text, "yuan", 2) is None


def test_numbers_as_telecom_data_has_them_are_classified_and_normalised():
    from handover.core.validators import classify_phones

    values = [
        "13812345678",
        "+86 138 1234 5678",
        "010-12345678",
        "(0755)1234 5678",
        "+86 10 12345678",
        "1440123456789",
        "10086",
        "95588",
        "+44 20 7946 0958",
        "0044 20 7946 0958",
        "2381234567",
        "13812345",
        "１３８１２３４５６７８",
        None,
    ]
    out, cls = classify_phones(pa.array(values))
    assert cls.tolist() == [
        "mobile",
        "mobile",
        "landline",
        "landline",
        "landline",
        "iot",
        "service",
        "service",
        "international",
        "international",
        None,
        None,
        "mobile",
        None,
    ]
    assert out.to_pylist()[:5] == [
        "13812345678",
        "13812345678",
        "01012345678",
        "075512345678",
        "01012345678",
    ]
    assert out.to_pylist()[8] == out.to_pylist()[9] == "+442079460958"
