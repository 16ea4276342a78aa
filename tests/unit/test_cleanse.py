"""handover.stages.cleanse: one reason per bad row, in REASON_ORDER; typed clean rows; no row lost."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handover.core.validators import id_check_digit
from handover.stages.cleanse import (
    ParentRegistry,
    cleanse,
    dedupe_losers,
    dedupe_pairs,
    parent_fates,
    validate,
)
from handover.stages.cleanse_rules import REASON_ORDER

E = pd.Timestamp("2026-11-01 00:00:00")

# Rules as in include/config/legacy_bss/cleansing.yaml.
SUBSCRIBER_RULES = {
    "mandatory": ["cust_id", "name", "id_number", "msisdn", "open_date", "updated_at"],
    "resident_id": {"column": "id_number", "birth_date": "birth_date", "gender": "gender"},
    "msisdn": ["msisdn"],
    "dates": {"birth_date": "%Y-%m-%d", "open_date": "%Y-%m-%d", "updated_at": "%Y-%m-%d %H:%M:%S"},
    "not_future": ["open_date", "updated_at"],
    "codes": {"gender": ["男", "女"], "status": ["1", "2", "3"], "transfer_objection": ["0", "1"]},
    "dedupe": {"key": "id_number", "order_by": "updated_at", "keep": "newest"},
}
CALL_RULES = {
    "mandatory": ["cdr_id", "cust_id", "start_time", "duration_s", "charge_fen"],
    "msisdn": ["caller", "callee"],
    "dates": {"start_time": "%Y-%m-%d %H:%M:%S"},
    "not_future": ["start_time"],
    "integers": ["duration_s", "charge_fen"],
    "non_negative": ["duration_s", "charge_fen"],
    "parent": {"table": "subscribers", "column": "cust_id"},
}
COMPLAINT_RULES = {
    "mandatory": ["complaint_id", "cust_id", "created_at"],
    "codes": {"category": ["计费", "网络", "服务", "其他"]},
    "dates": {"created_at": "%Y-%m-%d %H:%M:%S"},
    "not_future": ["created_at"],
    "integers": ["satisfaction"],
    "parent": {"table": "subscribers", "column": "cust_id"},
}


def resident_id(birth: str = "19491231", seq: str = "001", area: str = "110105") -> str:
    first17 = area + birth + seq
    return first17 + id_check_digit(first17)


def subscriber(cust_id: str, n: int = 1, **changes: str) -> dict[str, str]:
    """A valid subscriber; n makes the ID unique (odd sequence digit: male)."""
    row = {
        "cust_id": cust_id,
        "name": "张三",
        "id_number": resident_id(seq=f"{n % 100:02d}1"),
        "gender": "男",
        "birth_date": "1949-12-31",
        "msisdn": "13812345678",
        "address": "北京市朝阳区建国路1号",
        "city": "北京",
        "open_date": "2020-05-01",
        "status": "1",
        "transfer_objection": "0",
        "updated_at": "2026-10-01 12:00:00",
    }
    row.update(changes)
    return row


def call(cdr_id: str, cust_id: str = "C00000001", **changes: str) -> dict[str, str]:
    row = {
        "cdr_id": cdr_id,
        "cust_id": cust_id,
        "caller": "13812345678",
        "callee": "13987654321",
        "start_time": "2026-09-30 08:15:00",
        "duration_s": "61",
        "cell_id": "460-00-4301-1201",
        "charge_fen": "15",
    }
    row.update(changes)
    return row


def frame(rows: list[dict[str, str]]) -> pd.DataFrame:
    """A raw partition as extract writes it: every value text, plus _source_row."""
    df = pd.DataFrame(rows, dtype=object)
    df["_source_row"] = np.arange(len(df), dtype=np.int64)
    return df


def outcome(result) -> dict[int, tuple[str, str]]:
    """_source_row -> (reason, field) for every quarantined row."""
    q = result.quarantine
    return {
        int(r): (reason, fld)
        for r, reason, fld in zip(q["_source_row"], q["_reason"], q["_field"], strict=True)
    }


def clean_rows(result) -> set[int]:
    return {int(r) for r in result.clean["_source_row"]}


# -- one reason per defect, on the right row and field -----------------------------------


def test_subscriber_reasons_land_on_the_right_row_and_field():
    bad_id = resident_id(seq="031")
    bad_id = bad_id[:17] + ("0" if bad_id[17] != "0" else "1")
    raw = frame(
        [
            subscriber("C00000001", 1),  # 0 clean
            subscriber("C00000002", 2, name="   "),  # 1
            subscriber("C00000001", 3),  # 2 same key as row 0
            subscriber("C00000004", 4, id_number=bad_id),  # 3
            subscriber("C00000005", 5, birth_date="1950-01-01"),  # 4
            subscriber("C00000006", 6, gender="女"),  # 5
            subscriber("C00000007", 7, msisdn="12345678"),  # 6
            subscriber("C00000008", 8, open_date="2023-02-30"),  # 7
            subscriber("C00000009", 9, updated_at="2026-11-02 00:00:00"),  # 8
            subscriber("C00000010", 10, status="9"),  # 9
            subscriber("C00000011", 11, msisdn="１３８１２３４５６７８"),  # 10 repaired, clean
            subscriber("C00000012", 12, msisdn="+86 138 1234 5678"),  # 11 repaired, clean
        ]
    )

    result = cleanse(raw, SUBSCRIBER_RULES, key="cust_id", exported_at=E)

    assert outcome(result) == {
        1: ("MISSING_FIELD", "name"),
        2: ("DUPLICATE_KEY", "cust_id"),
        3: ("INVALID_ID_CHECKSUM", "id_number"),
        4: ("INVALID_ID_BIRTHDATE", "birth_date"),
        5: ("INVALID_ID_GENDER", "gender"),
        6: ("INVALID_MSISDN", "msisdn"),
        7: ("INVALID_DATE", "open_date"),
        8: ("INVALID_DATE", "updated_at"),
        9: ("INVALID_CODE", "status"),
    }
    assert clean_rows(result) == {0, 10, 11}
    assert result.counts == {
        "MISSING_FIELD": 1,
        "DUPLICATE_KEY": 1,
        "INVALID_ID_CHECKSUM": 1,
        "INVALID_ID_BIRTHDATE": 1,
        "INVALID_ID_GENDER": 1,
        "INVALID_MSISDN": 1,
        "INVALID_DATE": 2,
        "INVALID_CODE": 1,
    }


def test_call_record_reasons_land_on_the_right_row_and_field():
    parents = ParentRegistry(valid={"C00000001"}, quarantined={"C00000002"}, excluded={"C00000003"})
    raw = frame(
        [
            call("R00000000001"),  # 0 clean
            call("R00000000002", duration_s="12.5"),  # 1
            call("R00000000003", charge_fen="-3"),  # 2
            call("R00000000004", cust_id="C99999999"),  # 3
            call("R00000000005", cust_id="C00000002"),  # 4
            call("R00000000006", cust_id="C00000003"),  # 5
            call("R00000000007", callee="1381234567x"),  # 6
            call("R00000000008", start_time="2026-11-01 00:00:01"),  # 7 one second after export
            call("R00000000009", charge_fen=""),  # 8
            call("R00000000010", duration_s="abc"),  # 9
            call("R00000000011", start_time="2026-11-01 00:00:00"),  # 10 the export instant is fine
            call("R00000000012", charge_fen="0", caller="138-1234-5678"),  # 11 clean
        ]
    )

    result = cleanse(raw, CALL_RULES, key="cdr_id", exported_at=E, parent=parents)

    assert outcome(result) == {
        1: ("INVALID_NUMBER", "duration_s"),
        2: ("NEGATIVE_AMOUNT", "charge_fen"),
        3: ("ORPHAN_RECORD", "cust_id"),
        4: ("PARENT_QUARANTINED", "cust_id"),
        5: ("PARENT_EXCLUDED", "cust_id"),
        6: ("INVALID_MSISDN", "callee"),
        7: ("INVALID_DATE", "start_time"),
        8: ("MISSING_FIELD", "charge_fen"),
        9: ("INVALID_NUMBER", "duration_s"),
    }
    assert clean_rows(result) == {0, 10, 11}


def test_without_a_registry_parents_are_not_checked():
    raw = frame([call("R00000000001", cust_id="C99999999")])

    result = cleanse(raw, CALL_RULES, key="cdr_id", exported_at=E)

    assert outcome(result) == {}
    assert clean_rows(result) == {0}


def test_quarantine_keeps_the_raw_row_and_its_key():
    raw = frame([subscriber("C00000001", 1, msisdn="１３８１２３４５６７", name=" 李四 ")])

    result = cleanse(raw, SUBSCRIBER_RULES, key="cust_id", exported_at=E)

    row = result.quarantine.iloc[0]
    assert row["_reason"] == "INVALID_MSISDN"
    assert row["msisdn"] == "１３８１２３４５６７"  # as it came, not normalised
    assert row["name"] == " 李四 "
    assert row["_key"] == "C00000001"
    assert result.clean.empty


# -- precedence -----------------------------------------------------------------------------


def test_first_reason_in_reason_order_wins():
    bad_id = resident_id(seq="051")
    bad_id = bad_id[:17] + ("0" if bad_id[17] != "0" else "1")
    raw = frame(
        [
            subscriber("C00000001", 1, name="", msisdn="123"),  # 0
            subscriber("C00000002", 2, id_number=bad_id, msisdn="123", open_date="2023-02-30"),  # 1
            subscriber("C00000003", 3, msisdn="123", open_date="2023-02-30"),  # 2
            subscriber("C00000004", 4, open_date="2023-02-30", status="9"),  # 3
            subscriber("C00000005", 5, birth_date="1950-01-01", gender="女"),  # 4
            subscriber("C00000006", 6, gender="X"),  # 5
        ]
    )

    result = cleanse(raw, SUBSCRIBER_RULES, key="cust_id", exported_at=E)

    assert outcome(result) == {
        0: ("MISSING_FIELD", "name"),
        1: ("INVALID_ID_CHECKSUM", "id_number"),
        2: ("INVALID_MSISDN", "msisdn"),
        3: ("INVALID_DATE", "open_date"),
        4: ("INVALID_ID_BIRTHDATE", "birth_date"),
        5: ("INVALID_ID_GENDER", "gender"),  # a gender outside the code list disagrees first
    }


def test_precedence_on_child_rows():
    parents = ParentRegistry(valid={"C00000001"}, quarantined={"C00000002"}, excluded=set())
    raw = frame(
        [
            call("R00000000001", cust_id="C99999999", charge_fen="-1"),  # 0
            call("R00000000002", cust_id="C00000002", charge_fen="x"),  # 1
            call("R00000000003", start_time="2027-01-01 00:00:00", duration_s="x"),  # 2
        ]
    )

    result = cleanse(raw, CALL_RULES, key="cdr_id", exported_at=E, parent=parents)

    assert outcome(result) == {
        0: ("NEGATIVE_AMOUNT", "charge_fen"),
        1: ("INVALID_NUMBER", "charge_fen"),
        2: ("INVALID_DATE", "start_time"),
    }


def test_reason_does_not_depend_on_rule_order_in_yaml():
    raw = frame(
        [
            subscriber("C00000001", 1, name="", msisdn="123", status="9"),
            subscriber("C00000002", 2, msisdn="123", open_date="2023-02-30", status="9"),
        ]
    )
    reversed_rules = dict(reversed(list(SUBSCRIBER_RULES.items())))

    forward = outcome(cleanse(raw, SUBSCRIBER_RULES, key="cust_id", exported_at=E))
    backward = outcome(cleanse(raw, reversed_rules, key="cust_id", exported_at=E))

    assert forward == backward == {0: ("MISSING_FIELD", "name"), 1: ("INVALID_MSISDN", "msisdn")}


def test_duplicate_person_yields_to_any_own_defect():
    raw = frame([subscriber("C00000001", 1), subscriber("C00000002", 2, status="9")])

    result = cleanse(
        raw,
        SUBSCRIBER_RULES,
        key="cust_id",
        exported_at=E,
        duplicate_losers={"C00000001", "C00000002"},
    )

    assert outcome(result) == {0: ("DUPLICATE_PERSON", "id_number"), 1: ("INVALID_CODE", "status")}


def test_reason_order_is_complete_and_unique():
    assert len(REASON_ORDER) == len(set(REASON_ORDER))
    assert REASON_ORDER[0] == "MISSING_FIELD"
    assert REASON_ORDER.index("ORPHAN_RECORD") < REASON_ORDER.index("PARENT_QUARANTINED")


# -- typed output -------------------------------------------------------------------------


def test_clean_subscribers_are_normalised_and_typed():
    first17 = "11010519491231002"
    rid = first17 + id_check_digit(first17)  # ends in X
    raw = frame(
        [
            subscriber(
                "C00000001",
                1,
                id_number=rid.lower(),
                gender="女",
                msisdn="１３８-１２３４-５６７８",
                name="  张三 ",
                city="",
            )
        ]
    )

    result = cleanse(raw, SUBSCRIBER_RULES, key="cust_id", exported_at=E)

    assert result.quarantine.empty
    row = result.clean.iloc[0]
    assert row["id_number"] == "11010519491231002X"
    assert row["msisdn"] == "13812345678"
    assert row["name"] == "张三"
    assert pd.isna(row["city"])  # blank is missing: an Arrow null in pandas' str column
    assert str(result.clean["name"].dtype) == "str", "text stays Arrow-backed, no objects"
    assert row["birth_date"] == dt.date(1949, 12, 31)
    assert row["open_date"] == dt.date(2020, 5, 1)
    assert str(result.clean["updated_at"].dtype) == "datetime64[s]"
    assert row["updated_at"] == pd.Timestamp("2026-10-01 12:00:00")
    assert row["_source_row"] == 0


def test_clean_integers_are_int64_and_blank_is_na():
    raw = frame(
        [
            {
                "complaint_id": "Q000000001",
                "cust_id": "C00000001",
                "created_at": "2026-10-01 09:00:00",
                "category": "网络",
                "text": "信号差",
                "satisfaction": "4",
            },
            {
                "complaint_id": "Q000000002",
                "cust_id": "C00000001",
                "created_at": "2026-10-02 09:00:00",
                "category": "计费",
                "text": "扣费",
                "satisfaction": "",
            },
        ]
    )
    parents = ParentRegistry(valid={"C00000001"}, quarantined=set(), excluded=set())

    result = cleanse(raw, COMPLAINT_RULES, key="complaint_id", exported_at=E, parent=parents)

    assert str(result.clean["satisfaction"].dtype) == "Int64"
    assert result.clean["satisfaction"].iloc[0] == 4
    assert result.clean["satisfaction"].isna().tolist() == [False, True]


def test_call_record_numbers_are_int64():
    parents = ParentRegistry(valid={"C00000001"}, quarantined=set(), excluded=set())
    raw = frame(
        [
            call("R00000000001", duration_s=" 120 ", charge_fen="30"),
            call("R00000000002", duration_s="7.0", charge_fen="0"),
        ]
    )

    result = cleanse(raw, CALL_RULES, key="cdr_id", exported_at=E, parent=parents)

    assert result.clean["duration_s"].dtype == "Int64"
    assert result.clean["duration_s"].tolist() == [120, 7]
    assert result.clean["charge_fen"].tolist() == [30, 0]
    assert result.clean["start_time"].iloc[0] == pd.Timestamp("2026-09-30 08:15:00")


@pytest.mark.parametrize("value", ["inf", "-inf", "NaN", "1e30", "99999999999999999999"])
def test_numbers_beyond_int64_are_quarantined_not_a_crash(value: str):
    parents = ParentRegistry(valid={"C00000001"}, quarantined=set(), excluded=set())
    raw = frame([call("R00000000001", charge_fen=value), call("R00000000002")])

    result = cleanse(raw, CALL_RULES, key="cdr_id", exported_at=E, parent=parents)

    assert outcome(result) == {0: ("INVALID_NUMBER", "charge_fen")}
    assert result.clean["charge_fen"].tolist() == [15]


# -- survivorship -----------------------------------------------------------------------------


def dupes() -> pd.DataFrame:
    same = resident_id(seq="071")
    return frame(
        [
            subscriber("C00000001", 1, id_number=same, updated_at="2026-01-01 00:00:00"),
            subscriber("C00000002", 2, id_number=same, updated_at="2026-06-01 00:00:00"),
            subscriber("C00000003", 3, id_number=same, updated_at="2026-03-01 00:00:00"),
            subscriber("C00000004", 4),
        ]
    )


def test_dedupe_keeps_the_newest():
    typed, verdict = validate(dupes(), SUBSCRIBER_RULES, key="cust_id", exported_at=E)

    losers = dedupe_losers(typed, verdict.failed, SUBSCRIBER_RULES, "cust_id")

    assert set(losers) == {"C00000001", "C00000003"}


def test_dedupe_keep_oldest():
    rules = {**SUBSCRIBER_RULES, "dedupe": {**SUBSCRIBER_RULES["dedupe"], "keep": "oldest"}}
    typed, verdict = validate(dupes(), rules, key="cust_id", exported_at=E)

    losers = dedupe_losers(typed, verdict.failed, rules, "cust_id")

    assert set(losers) == {"C00000002", "C00000003"}


def test_dedupe_ignores_invalid_rows():
    raw = dupes()
    raw.loc[1, "msisdn"] = "123"  # the newest is invalid: it cannot survive
    typed, verdict = validate(raw, SUBSCRIBER_RULES, key="cust_id", exported_at=E)

    losers = dedupe_losers(typed, verdict.failed, SUBSCRIBER_RULES, "cust_id")

    assert set(losers) == {"C00000001"}


def test_dedupe_tie_keeps_the_smallest_key():
    same = resident_id(seq="091")
    raw = frame(
        [subscriber("C00000009", 1, id_number=same), subscriber("C00000003", 2, id_number=same)]
    )
    typed, verdict = validate(raw, SUBSCRIBER_RULES, key="cust_id", exported_at=E)

    losers = dedupe_losers(typed, verdict.failed, SUBSCRIBER_RULES, "cust_id")

    assert list(losers) == ["C00000009"]


def test_dedupe_losers_are_quarantined_as_duplicate_person_where_the_rule_says_so():
    raw = dupes()
    rules = {**SUBSCRIBER_RULES, "dedupe": {**SUBSCRIBER_RULES["dedupe"], "action": "quarantine"}}
    typed, verdict = validate(raw, rules, key="cust_id", exported_at=E)
    losers, survivors = dedupe_pairs(typed, verdict.failed, rules, "cust_id")

    result = cleanse(
        raw,
        rules,
        key="cust_id",
        exported_at=E,
        duplicate_losers=dict(zip(losers, survivors, strict=True)),
    )

    assert outcome(result) == {
        0: ("DUPLICATE_PERSON", "id_number"),
        2: ("DUPLICATE_PERSON", "id_number"),
    }
    assert clean_rows(result) == {1, 3}
    assert result.merged.empty


def test_dedupe_losers_are_merged_into_their_survivor_by_default():
    """One person, two records: the loser leaves as merged (not quarantined), naming the
    surviving key; the ledger's equation gains the term (in = clean + quarantined +
    merged)."""
    raw = dupes()
    typed, verdict = validate(raw, SUBSCRIBER_RULES, key="cust_id", exported_at=E)
    losers, survivors = dedupe_pairs(typed, verdict.failed, SUBSCRIBER_RULES, "cust_id")
    into = dict(zip(losers, survivors, strict=True))

    result = cleanse(raw, SUBSCRIBER_RULES, key="cust_id", exported_at=E, duplicate_losers=into)

    assert outcome(result) == {}
    assert clean_rows(result) == {1, 3}
    assert len(result.clean) + len(result.quarantine) + len(result.merged) == len(raw)
    merged = dict(zip(result.merged["_key"], result.merged["_survivor"], strict=True))
    assert merged == into and len(merged) == 2
    assert set(result.merged["_rule"]) == {"SAME_PERSON"}
    # each loser's survivor is the surviving record of its own person
    by_key = typed.set_index("cust_id")["id_number"]
    assert all(by_key[a] == by_key[b] for a, b in merged.items())
    assert set(merged.values()) <= set(result.clean["cust_id"])


@pytest.mark.parametrize("keep", ["first_key", "most_complete"])
def test_dedupe_survivor_rules(keep):
    typed = pd.DataFrame(
        {
            "cust_id": ["C3", "C1", "C2"],
            "id_number": ["P", "P", "P"],
            "updated_at": pd.to_datetime(["2026-01-03", "2026-01-01", "2026-01-02"]),
            "_filled": [5, 7, 9],
        }
    )
    rules = {"dedupe": {"key": "id_number", "order_by": "updated_at", "keep": keep}}
    losers, survivors = dedupe_pairs(typed, np.zeros(3, dtype=bool), rules, "cust_id")
    want = {"first_key": "C1", "most_complete": "C2"}[keep]
    assert set(survivors) == {want} and want not in losers and len(losers) == 2


def test_children_of_a_merged_parent_follow_its_survivor():
    parents = ParentRegistry(
        valid={"C00000001", "C00000002"},
        quarantined=set(),
        excluded=set(),
        merged={"C00000002": "C00000001"},
    )
    raw = pd.DataFrame(
        {"rec_id": ["R1", "R2"], "cust_id": ["C00000001", "C00000002"], "_source_row": [0, 1]}
    )
    rules = {"parent": {"table": "subscribers", "column": "cust_id"}}
    result = cleanse(raw, rules, key="rec_id", exported_at=E, parent=parents)
    assert outcome(result) == {}
    assert list(result.clean["cust_id"]) == ["C00000001", "C00000001"]
    assert result.normalised == {"REPARENTED_TO_SURVIVOR": 1}


# -- parents --------------------------------------------------------------------------------


def test_parent_registry_classify():
    registry = ParentRegistry(valid={"C1", "C4"}, quarantined={"C2", "C4"}, excluded={"C3"})
    keys = pd.Series(["C1", "C2", "C3", "C9", None, "C4"], dtype=object)

    fate = registry.classify(keys)

    assert fate.tolist() == [
        None,
        "PARENT_QUARANTINED",
        "PARENT_EXCLUDED",
        "ORPHAN_RECORD",
        None,
        None,
    ]


def test_parent_fates_of_a_whole_column_equal_validate_classifying_itself():
    """parent_fates normalises the raw parent column as validate does (full width, padding,
    blanks), so the verdicts a sliced cleanse passes in are the ones validate would find."""
    registry = ParentRegistry(
        valid=pa.array(["C00000001"]),
        quarantined=pa.array(["C00000002"]),
        excluded=pa.array(["C00000003"]),
    )
    parents = ["C00000001", " C00000002", "Ｃ00000003", "C00000009", None, "  ", "C00000001 "]
    raw = frame([call(f"D{i}", cust_id=p) for i, p in enumerate(parents)])
    fates = parent_fates(registry, CALL_RULES, pa.array(raw["cust_id"].tolist(), pa.string()))
    assert fates.tolist() == [
        None,
        "PARENT_QUARANTINED",
        "PARENT_EXCLUDED",
        "ORPHAN_RECORD",
        None,
        None,
        None,
    ]
    itself = cleanse(raw, CALL_RULES, key="cdr_id", exported_at=E, parent=registry)
    given = cleanse(
        raw, CALL_RULES, key="cdr_id", exported_at=E, parent=registry, parent_fate=fates
    )
    assert outcome(given) == outcome(itself) and clean_rows(given) == clean_rows(itself)
    assert parent_fates(None, CALL_RULES, pa.array(parents)) is None
    msisdn_parent = {**CALL_RULES, "msisdn": ["cust_id"]}  # transformed first: validate's job
    assert parent_fates(registry, msisdn_parent, pa.array(parents)) is None


def test_parent_registry_quarantine_wins_over_exclusion():
    registry = ParentRegistry(valid=set(), quarantined={"C2"}, excluded={"C2"})

    assert registry.classify(pd.Series(["C2"], dtype=object)).tolist() == ["PARENT_QUARANTINED"]


# -- conservation -----------------------------------------------------------------------------

ROW_KINDS = {
    "clean": {},
    "blank_name": {"name": " "},
    "bad_msisdn": {"msisdn": "21234567890"},
    "fullwidth_msisdn": {"msisdn": "１３９１２３４５６７８"},
    "impossible_date": {"open_date": "2023-02-30"},
    "future_date": {"open_date": "2027-01-01"},
    "bad_status": {"status": "0"},
    "birth_mismatch": {"birth_date": "1949-12-30"},
    "null_id": {"id_number": None},
}


@settings(max_examples=40, deadline=None, database=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(ROW_KINDS)), st.integers(1, 6)), min_size=0, max_size=25
    )
)
def test_rows_in_equal_clean_plus_quarantine(kinds: list[tuple[str, int]]):
    raw = frame(
        [subscriber(f"C{cid:08d}", i, **ROW_KINDS[kind]) for i, (kind, cid) in enumerate(kinds)]
    )
    if raw.empty:
        raw = pd.DataFrame(
            {c: pd.Series(dtype=object) for c in subscriber("C0")}
            | {"_source_row": pd.Series(dtype=np.int64)}
        )

    result = cleanse(raw, SUBSCRIBER_RULES, key="cust_id", exported_at=E)

    assert len(result.clean) + len(result.quarantine) == len(raw)
    assert clean_rows(result) | set(outcome(result)) == set(range(len(raw)))
    assert not clean_rows(result) & set(outcome(result))
    assert sum(result.counts.values()) == len(result.quarantine)
    assert set(result.quarantine["_reason"]) <= set(REASON_ORDER)


@pytest.mark.parametrize("n", [0, 1])
def test_conservation_on_tiny_partitions(n: int):
    rows = [call(f"R{i:011d}") for i in range(n)]
    raw = (
        frame(rows)
        if rows
        else pd.DataFrame(
            {c: pd.Series(dtype=object) for c in call("R0")} | {"_source_row": pd.Series(dtype=int)}
        )
    )
    parents = ParentRegistry(valid={"C00000001"}, quarantined=set(), excluded=set())

    result = cleanse(raw, CALL_RULES, key="cdr_id", exported_at=E, parent=parents)

    assert len(result.clean) == n
    assert len(result.quarantine) == 0
    assert result.counts == {}


# -- vector forms agree with the per-value forms they replaced -------------------------------

ANY_TEXT = st.none() | st.text(st.characters(codec="utf-8"), max_size=12)
KEYISH = (
    st.none()
    | st.sampled_from(["", " ", "\u3000", "\x1c", "\x85", "\u200b", "K1", " K "])
    | st.text(st.characters(codec="utf-8"), max_size=6)
)


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(ANY_TEXT, max_size=15))
def test_control_scan_equals_the_regex(values):
    import pyarrow as pa
    import pyarrow.compute as pc

    from handover.stages.cleanse_columns import _has_control

    arr = pa.array(["pad"] + values, pa.string()).slice(1)
    regex = pc.fill_null(pc.match_substring_regex(arr, r"[\x00-\x08\x0b\x0c\x0e-\x1f]"), False)

    assert _has_control(arr).tolist() == regex.to_pylist()


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(KEYISH, max_size=12), st.booleans(), st.booleans())
def test_record_keys_equal_the_pipeline_loop(keys, as_str, with_rows):
    from handover.stages.cleanse import _record_keys_loop, record_key_array, record_keys

    series = pd.Series(keys, dtype="str" if as_str else object)
    rows = None
    if with_rows:
        rows = pd.Series(np.arange(len(keys), dtype=np.int64) * 7 + 3)

    expected = _record_keys_loop(series, rows if rows is not None else range(len(keys)))
    assert record_keys(series, rows) == expected
    assert record_key_array(series, rows).type == pa.string()  # one type to concatenate


def _decimal_by_pandas(values: list, places: int) -> np.ndarray:
    """The decimal parse as it was, through pandas' own regex and to_numeric."""
    text = pd.Series(values, dtype=object)
    pattern = rf"^[+-]?(?:\d+(?:\.\d{{0,{places}}})?|\.\d{{1,{places}}})$"
    shaped = text.astype("string").str.fullmatch(pattern).fillna(False).astype(bool)
    return pd.to_numeric(text.where(shaped), errors="coerce").astype("float64").to_numpy()


DECIMAL_TEXT = st.builds(
    lambda sign, lead, whole, frac: f"{sign}{lead}{whole}{frac}",
    st.sampled_from(["", "-", "+"]),
    st.sampled_from(["", "0", "000000000000000"]),
    st.sampled_from(["", "0"]) | st.integers(0, 10**16).map(str),
    st.sampled_from(["", ".", ".0", ".00", ".000"]) | st.integers(0, 999).map(lambda f: f".{f}"),
)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.none() | DECIMAL_TEXT | ANY_TEXT, max_size=10), st.sampled_from([1, 2, 3]))
def test_decimal_parse_equals_pandas_to_the_bit(values, places):
    import pyarrow as pa

    from handover.core.validators import normalise_text
    from handover.stages.cleanse_columns import _parse_decimal

    arr = normalise_text(pa.array(values, pa.string()))
    expected = _decimal_by_pandas(arr.to_pylist(), places)

    got = _parse_decimal(arr, places, pd.RangeIndex(len(values))).to_numpy()

    assert np.array_equal(np.isnan(got), np.isnan(expected))
    assert (
        got[~np.isnan(got)].view(np.int64).tolist()
        == expected[~np.isnan(expected)].view(np.int64).tolist()
    )  # -0.0 and 0.0 differ here


@pytest.mark.parametrize(
    "values, signs",
    [
        (["-0", "12", "+5"], [False, False, False]),  # all integers: pandas read "-0" as int 0
        (["-0", "12", None], [True, False, False]),  # a blank: floats, "-0" stays -0.0
        (["-0", "1.5"], [True, False]),
        (["-0.00", "7"], [True, False]),
    ],
)
def test_decimal_negative_zero_follows_pandas(values, signs):
    rules = {"decimals": {"amount": 2}}
    raw = pd.DataFrame(
        {"id": [f"P{i}" for i in range(len(values))], "amount": values}, dtype=object
    )

    typed, verdict = validate(raw, rules, key="id", exported_at=E)

    amounts = typed["amount"].to_numpy()
    assert np.signbit(amounts[~np.isnan(amounts)]).tolist() == [
        s for s, v in zip(signs, values, strict=True) if v is not None
    ]


def test_decimal_with_a_long_digit_run_goes_through_pandas():
    values = ["0000000000000000012.34", "-0", "12345678901234567", "5.5"]
    rules = {"decimals": {"amount": 2}}
    raw = pd.DataFrame({"id": ["P1", "P2", "P3", "P4"], "amount": values}, dtype=object)

    typed, verdict = validate(raw, rules, key="id", exported_at=E)

    expected = _decimal_by_pandas(values, 2).copy()
    expected[np.abs(expected) >= 2**53 / 100] = np.nan
    np.testing.assert_array_equal(typed["amount"].to_numpy(), expected)
    assert verdict.reason.tolist() == [None, None, "INVALID_NUMBER", None]


@settings(max_examples=100, deadline=None, database=None)
@given(
    st.lists(st.none() | st.just(float("nan")) | st.text(max_size=5), max_size=10),
    st.sampled_from([object, "str"]),
)
def test_arrow_conversion_equals_the_per_value_conversion(values, dtype):
    import pyarrow as pa

    from handover.stages.cleanse_columns import _arr

    df = pd.DataFrame({"c": pd.Series(values, dtype=dtype)})
    per_value = pa.array(df["c"].astype(object).where(df["c"].notna(), None).tolist(), pa.string())

    assert _arr(df, "c").equals(per_value)


def test_duplicate_keys_after_normalisation_keep_the_first():
    raw = frame([call("R1"), call("Ｒ1"), call(" R1 "), call("R2"), call(None), call(None)])

    typed, verdict = validate(raw, CALL_RULES, key="cdr_id", exported_at=E)

    assert verdict.reason.tolist() == [
        None,
        "DUPLICATE_KEY",
        "DUPLICATE_KEY",
        None,
        "MISSING_FIELD",
        "MISSING_FIELD",
    ]


def test_parent_registry_classify_takes_arrow_and_non_text_keys():
    import pyarrow as pa

    registry = ParentRegistry(valid={"C1"}, quarantined={"C2"}, excluded=set())

    fate = registry.classify(pa.array(["C1", "C2", None, "C9"]))
    assert fate.tolist() == [None, "PARENT_QUARANTINED", None, "ORPHAN_RECORD"]
    assert ParentRegistry(valid={1}, quarantined=set(), excluded=set()).classify(
        pd.Series([1, 2, None], dtype=object)
    ).tolist() == [None, "ORPHAN_RECORD", None]


def _pandas_losers(typed: pd.DataFrame, failed: np.ndarray, rules: dict, key: str) -> set:
    """The survivorship rule as pandas states it (what dedupe_losers replaced)."""
    spec = rules["dedupe"]
    cand = typed.loc[~failed, [key, spec["key"], spec["order_by"]]]
    cand = cand[cand[spec["key"]].notna()]  # without an ID a record is nobody's duplicate
    ordered = cand.sort_values(
        [spec["key"], spec["order_by"], key], ascending=[True, spec["keep"] == "oldest", True]
    )
    return set(ordered[ordered.duplicated(subset=[spec["key"]], keep="first")][key])


@pytest.mark.parametrize("keep", ["newest", "oldest"])
def test_dedupe_in_arrow_equals_the_pandas_rule(keep):
    """Random people, dates and validity, with null dedupe keys and dates and tied
    dates: the Arrow survivorship picks exactly the losers the pandas rule picks."""
    rng = np.random.default_rng(11)
    n = 3000
    person = rng.integers(0, 700, n).astype(object)
    person = np.array([None if p < 40 else f"P{p:04d}" for p in person], dtype=object)
    days = rng.integers(0, 30, n)
    when = pd.Series(pd.to_datetime("2026-01-01") + pd.to_timedelta(days, unit="D"))
    when[rng.random(n) < 0.05] = pd.NaT
    typed = pd.DataFrame(
        {
            "cust_id": [f"C{i:08d}" for i in rng.permutation(n)],
            "id_number": person,
            "updated_at": when,
        }
    )
    failed = rng.random(n) < 0.1
    rules = {"dedupe": {"key": "id_number", "order_by": "updated_at", "keep": keep}}
    want = _pandas_losers(typed, failed, rules, "cust_id")
    assert len(want) > 1000
    assert set(dedupe_losers(typed, failed, rules, "cust_id")) == want
    as_arrow = pa.Table.from_pandas(typed, preserve_index=False)
    assert set(dedupe_losers(as_arrow, failed, rules, "cust_id")) == want


def test_free_text_keeps_its_characters_while_keys_and_codes_are_normalised():
    """A complaint is kept as the customer wrote it (trimmed): NFKC would turn "，" into
    "," and "①" into "1". The key and the code beside it are still normalised."""
    text = "  ①网络很差，经常掉线！（已投诉３次）　"
    raw = frame(
        [
            {
                "complaint_id": "Ｑ000000001",
                "cust_id": "C00000001",
                "created_at": "2026-10-01 09:00:00",
                "category": "网络",
                "text": text,
                "satisfaction": "４",
            }
        ]
    )

    kept = cleanse(
        raw, {**COMPLAINT_RULES, "verbatim": ["text"]}, key="complaint_id", exported_at=E
    ).clean.iloc[0]
    folded = cleanse(raw, COMPLAINT_RULES, key="complaint_id", exported_at=E).clean.iloc[0]

    assert kept["text"] == "①网络很差，经常掉线！（已投诉３次）"
    assert folded["text"] == "1网络很差,经常掉线!(已投诉3次)"
    assert kept["complaint_id"] == "Q000000001" and kept["satisfaction"] == 4


def test_catalog_free_text_columns_are_verbatim():
    from handover.config.loader import load_config

    cfg = load_config("legacy_bss")
    assert cfg.rules("complaints")["verbatim"] == ["text"]
    assert "verbatim" not in cfg.rules("subscribers")
    assert load_config("telco_b").rules("complaint_ticket").get("verbatim") == ["投诉内容"]


def test_a_first_generation_id_is_upgraded_not_quarantined_and_counted():
    old = "110105" + "491231" + "011"  # 15 digits: area, YYMMDD, sequence (odd: male)
    raw = pd.DataFrame([subscriber("C1", 1), subscriber("C2", 2, id_number=old)], dtype=object)
    raw["_source_row"] = [1, 2]

    res = cleanse(raw, SUBSCRIBER_RULES, key="cust_id", exported_at=E)

    assert res.counts == {} and len(res.clean) == 2
    upgraded = res.clean.loc[res.clean["cust_id"] == "C2", "id_number"].iloc[0]
    assert upgraded == resident_id(seq="011") and len(upgraded) == 18
    assert res.normalised == {"ID_UPGRADED_15_TO_18": 1}


def test_money_printed_as_billing_prints_it_is_read_into_whole_fen():
    rules = {
        "mandatory": ["payment_id"],
        "money": {"amount": {"unit": "yuan", "places": 2}},
        "non_negative": ["amount"],
        "max": {"amount": 10_000_000},
    }
    raw = pd.DataFrame(
        {
            "payment_id": ["P1", "P2", "P3", "P4", "P5"],
            "amount": ["¥17,504.10", "(12.50)", "12.345", "负3元", "¥200,000.00"],
        },
        dtype=object,
    )
    raw["_source_row"] = range(1, 6)

    res = cleanse(raw, rules, key="payment_id", exported_at=E)

    assert res.clean["amount"].tolist() == [1750410]
    q = dict(zip(res.quarantine["payment_id"], res.quarantine["_reason"], strict=True))
    assert q == {
        "P2": "NEGATIVE_AMOUNT",
        "P3": "INVALID_NUMBER",
        "P4": "NEGATIVE_AMOUNT",
        "P5": "AMOUNT_OUT_OF_RANGE",
    }


def test_a_date_column_written_several_ways_is_read_with_a_list_of_formats():
    rules = {
        "mandatory": ["k"],
        "dates": {"d": ["%Y-%m-%d", "%Y/%m/%d %H:%M", "%Y%m%d", "%Y年%m月%d日", "excel"]},
    }
    raw = pd.DataFrame(
        {
            "k": list("abcdefg"),
            "d": [
                "2006-4-24",
                "2012/12/08 09:30",
                "20240105",
                "2024年1月5日",
                "45292",
                "2024-13-01",
                None,
            ],
        },
        dtype=object,
    )
    raw["_source_row"] = range(7)

    res = cleanse(raw, rules, key="k", exported_at=E)

    got = dict(zip(res.clean["k"], res.clean["d"], strict=True))
    assert got["a"] == pd.Timestamp("2006-04-24") and got["b"] == pd.Timestamp("2012-12-08 09:30")
    assert got["c"] == pd.Timestamp("2024-01-05") and got["d"] == pd.Timestamp("2024-01-05")
    assert got["e"] == pd.Timestamp("2024-01-01")  # Excel serial day 45292
    assert pd.isna(got["g"])
    assert res.quarantine["k"].tolist() == ["f"] and res.counts == {"INVALID_DATE": 1}


def test_a_list_of_formats_that_reads_a_value_two_ways_is_refused():
    from handover.config.loader import ambiguous_formats

    assert ambiguous_formats(["%d/%m/%Y", "%Y-%m-%d", "%m/%d/%Y"]) == ("%d/%m/%Y", "%m/%d/%Y")
    assert ambiguous_formats(["%Y-%m-%d", "%Y/%m/%d %H:%M", "%Y%m%d"]) is None


def test_times_written_with_an_offset_are_read_in_the_exports_clock():
    """`+08:00`, `Z` and `+0100` are one instant each: read as the export's own (Beijing)
    time, so not_future and survivorship compare them with the naive times around them."""
    rules = {"dates": {"t": ["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S"]}, "not_future": ["t"]}
    raw = pd.DataFrame(
        {
            "k": list("abcde"),
            "t": [
                "2024-01-05T10:30:00+08:00",
                "2024-01-05T02:30:00Z",
                "2024-01-05T03:30:00+0100",
                "2024-01-05 10:30:00",
                "2099-01-01T00:00:00Z",
            ],
        },
        dtype=object,
    )
    raw["_source_row"] = range(5)

    res = cleanse(raw, rules, key="k", exported_at=E)

    got = dict(zip(res.clean["k"], res.clean["t"], strict=True))
    assert set(got.values()) == {pd.Timestamp("2024-01-05 10:30:00")} and len(got) == 4
    assert res.quarantine["k"].tolist() == ["e"] and res.counts == {"INVALID_DATE": 1}
