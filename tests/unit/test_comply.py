"""handover.stages.comply: who may move, on which basis; exclusions in policy order, with destroy-by."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from handover.stages.comply import PolicyFacts, decide, policy_facts

E = pd.Timestamp("2026-11-01 00:00:00")
TS = "%Y-%m-%d %H:%M:%S"

# As in include/config/legacy_bss/policy.yaml.
POLICY = {
    "system": "legacy_bss",
    "purpose": "continuation of telecom service contracts",
    "objection": {"table": "subscribers", "column": "transfer_objection", "value": "1"},
    "consent": {
        "table": "consents",
        "customer_column": "cust_id",
        "purpose_column": "purpose",
        "granted_column": "granted",
        "granted_value": "1",
    },
    "categories": {
        "personal": {"lawful_basis": "contract"},
        "consumption": {"lawful_basis": "contract", "retention_months": 36},
        "feedback": {"lawful_basis": "contract", "retention_months": 24},
        "behavioural": {
            "lawful_basis": "separate_consent",
            "consent_purpose": "behavioural",
            "retention_months": 12,
        },
    },
    "rules": [
        {"id": "OBJECTED_TRANSFER", "description": "objected"},
        {"id": "RETENTION_EXPIRED", "description": "past retention"},
        {"id": "NO_CONSENT", "description": "no separate consent"},
    ],
}
CALLS = {
    "category": "consumption",
    "key": "cdr_id",
    "customer_column": "cust_id",
    "event_time": "start_time",
}
BROWSING = {
    "category": "behavioural",
    "key": "event_id",
    "customer_column": "cust_id",
    "event_time": "ts",
}
SUBSCRIBERS = {"category": "personal", "key": "cust_id", "customer_column": "cust_id"}

FACTS = PolicyFacts(
    exported_at=E,
    objected=frozenset({"C_OBJ"}),
    consented={"behavioural": frozenset({"C_OK", "C_OBJ_OK"}), "marketing": frozenset({"C_NO"})},
)

RECENT = "2026-10-01 10:00:00"
OLD_CALL = "2022-05-15 10:00:00"  # 53 months before E: past 36
OLD_EVENT = "2025-06-01 00:00:00"  # 17 months before E: past 12


def calls(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["cdr_id", "cust_id", "start_time"], dtype=object)


def events(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["event_id", "cust_id", "ts"], dtype=object)


def decide_calls(raw: pd.DataFrame, facts: PolicyFacts = FACTS):
    return decide(
        raw,
        table_spec=CALLS,
        category_policy=POLICY["categories"]["consumption"],
        policy=POLICY,
        facts=facts,
        event_time_format=TS,
    )


def decide_events(raw: pd.DataFrame, facts: PolicyFacts = FACTS):
    return decide(
        raw,
        table_spec=BROWSING,
        category_policy=POLICY["categories"]["behavioural"],
        policy=POLICY,
        facts=facts,
        event_time_format=TS,
    )


def rules_by_key(result, key: str) -> dict[str, str]:
    return dict(zip(result.excluded[key], result.excluded["_rule"], strict=True))


# -- precedence -------------------------------------------------------------------------------


def test_objection_wins_over_retention():
    raw = calls(
        [
            ("R1", "C_OBJ", OLD_CALL),
            ("R2", "C_OBJ", RECENT),
            ("R3", "C_OK", OLD_CALL),
            ("R4", "C_OK", RECENT),
        ]
    )

    result = decide_calls(raw)

    assert rules_by_key(result, "cdr_id") == {
        "R1": "OBJECTED_TRANSFER",
        "R2": "OBJECTED_TRANSFER",
        "R3": "RETENTION_EXPIRED",
    }
    assert result.moved["cdr_id"].tolist() == ["R4"]
    assert result.counts == {"OBJECTED_TRANSFER": 2, "RETENTION_EXPIRED": 1}


def test_retention_wins_over_no_consent_and_objection_over_both():
    raw = events(
        [
            ("B1", "C_NONE", OLD_EVENT),  # past retention and no consent
            ("B2", "C_NONE", RECENT),  # no consent
            ("B3", "C_OBJ", OLD_EVENT),  # objected, past retention, no consent
            ("B4", "C_OK", OLD_EVENT),  # consented but past retention
            ("B5", "C_OK", RECENT),  # moves
            ("B6", "C_NO", RECENT),  # consented to marketing only
        ]
    )

    result = decide_events(raw)

    assert rules_by_key(result, "event_id") == {
        "B1": "RETENTION_EXPIRED",
        "B2": "NO_CONSENT",
        "B3": "OBJECTED_TRANSFER",
        "B4": "RETENTION_EXPIRED",
        "B6": "NO_CONSENT",
    }
    assert result.moved["event_id"].tolist() == ["B5"]


def test_rules_run_in_the_policy_order():
    reordered = {**POLICY, "rules": list(reversed(POLICY["rules"]))}
    raw = events([("B1", "C_OBJ", OLD_EVENT), ("B2", "C_OK", OLD_EVENT)])

    result = decide(
        raw,
        table_spec=BROWSING,
        category_policy=POLICY["categories"]["behavioural"],
        policy=reordered,
        facts=FACTS,
        event_time_format=TS,
    )

    assert rules_by_key(result, "event_id") == {"B1": "NO_CONSENT", "B2": "RETENTION_EXPIRED"}


def test_customer_ids_are_compared_trimmed():
    raw = calls([("R1", " C_OBJ ", RECENT)])

    result = decide_calls(raw)

    assert rules_by_key(result, "cdr_id") == {"R1": "OBJECTED_TRANSFER"}
    assert result.excluded["cust_id"].tolist() == [" C_OBJ "]  # the raw row, untouched


# -- retention and destruction ------------------------------------------------------------------


def test_retention_boundary_is_exclusive():
    raw = calls([("R1", "C_OK", "2023-10-31 23:59:59"), ("R2", "C_OK", "2023-11-01 00:00:00")])

    result = decide_calls(raw)

    assert rules_by_key(result, "cdr_id") == {"R1": "RETENTION_EXPIRED"}
    assert result.moved["cdr_id"].tolist() == ["R2"]


def test_every_exclusion_has_a_destroy_by_date():
    """Objectors and rows without consent are due at the end of the run that excluded them
    (PIPL Art. 22, 47: what may not move is not kept by the receiver); rows past retention
    keep their own, earlier date. None is never left."""
    raw = calls([("R1", "C_OK", OLD_CALL), ("R2", "C_OBJ", OLD_CALL), ("R3", "C_OK", RECENT)])

    result = decide_calls(raw)

    destroy = dict(zip(result.excluded["cdr_id"], result.excluded["_destroy_by"], strict=True))
    assert destroy["R1"] == dt.date(2025, 5, 15)
    assert destroy["R2"] == dt.datetime.now(dt.UTC).date()
    assert "_destroy_by" not in result.moved.columns


def test_destroy_by_is_event_time_plus_retention():
    raw = events([("B1", "C_OK", "2024-02-29 12:00:00")])

    result = decide_events(raw)

    assert result.excluded["_destroy_by"].tolist() == [dt.date(2025, 2, 28)]


def test_unparseable_event_time_moves_on_to_cleanse():
    raw = calls([("R1", "C_OK", "2023-02-30 00:00:00"), ("R2", "C_OK", "")])

    result = decide_calls(raw)

    assert result.excluded.empty
    assert result.moved["cdr_id"].tolist() == ["R1", "R2"]


def test_personal_data_has_no_retention_rule():
    raw = pd.DataFrame(
        {"cust_id": ["C_OBJ", "C_OK", "C_NONE"], "name": ["甲", "乙", "丙"]}, dtype=object
    )

    result = decide(
        raw,
        table_spec=SUBSCRIBERS,
        category_policy=POLICY["categories"]["personal"],
        policy=POLICY,
        facts=FACTS,
        event_time_format=None,
    )

    assert rules_by_key(result, "cust_id") == {"C_OBJ": "OBJECTED_TRANSFER"}
    assert result.moved["cust_id"].tolist() == ["C_OK", "C_NONE"]


# -- lawful basis -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "category, table_spec, basis",
    [
        ("consumption", CALLS, "contract"),
        ("behavioural", BROWSING, "consent:behavioural"),
    ],
)
def test_basis_of_moved_rows(category: str, table_spec: dict, basis: str):
    column = table_spec["event_time"]
    raw = pd.DataFrame(
        {table_spec["key"]: ["X1", "X2"], "cust_id": ["C_OK", "C_OK"], column: [RECENT, RECENT]},
        dtype=object,
    )

    result = decide(
        raw,
        table_spec=table_spec,
        category_policy=POLICY["categories"][category],
        policy=POLICY,
        facts=FACTS,
        event_time_format=TS,
    )

    assert result.moved["_basis"].tolist() == [basis, basis]
    assert result.excluded.empty
    assert result.counts == {}


def test_rows_in_equal_moved_plus_excluded():
    raw = events(
        [
            (f"B{i}", cust, ts)
            for i, (cust, ts) in enumerate(
                [
                    (c, t)
                    for c in ("C_OK", "C_OBJ", "C_NONE", "C_OBJ_OK")
                    for t in (RECENT, OLD_EVENT)
                ]
            )
        ]
    )

    result = decide_events(raw)

    assert len(result.moved) + len(result.excluded) == len(raw)
    assert set(result.moved["event_id"]) | set(result.excluded["event_id"]) == set(raw["event_id"])
    assert sum(result.counts.values()) == len(result.excluded)


# -- policy facts -------------------------------------------------------------------------------


def test_policy_facts_from_small_frames():
    subscribers = pd.DataFrame(
        {
            "cust_id": ["C1", "C2", " C3 ", "C4", None],
            "transfer_objection": ["0", "1", " 1", "", "1"],
        },
        dtype=object,
    )
    consents = pd.DataFrame(
        {
            "consent_id": ["K1", "K2", "K3", "K4", "K5"],
            "cust_id": ["C1", "C1", "C2", " C3", "C4"],
            "purpose": ["service", "behavioural", "behavioural", "marketing ", "behavioural"],
            "granted": ["1", "1", "0", "1", " 1 "],
            "granted_at": ["2024-01-01 00:00:00"] * 5,
        },
        dtype=object,
    )

    facts = policy_facts(subscribers, consents, POLICY, E)

    assert facts.exported_at == E
    assert facts.objected == frozenset({"C2", "C3"})
    assert facts.consented == {
        "service": frozenset({"C1"}),
        "behavioural": frozenset({"C1", "C4"}),
        "marketing": frozenset({"C3"}),
    }


def test_policy_facts_without_frames():
    facts = policy_facts(None, None, POLICY, E)

    assert facts.objected == frozenset()
    assert facts.consented == {}


def test_policy_facts_drive_decide():
    subscribers = pd.DataFrame(
        {"cust_id": ["C1", "C2"], "transfer_objection": ["0", "1"]}, dtype=object
    )
    consents = pd.DataFrame(
        {"cust_id": ["C1"], "purpose": ["behavioural"], "granted": ["1"]}, dtype=object
    )
    facts = policy_facts(subscribers, consents, POLICY, E)
    raw = events([("B1", "C1", RECENT), ("B2", "C2", RECENT), ("B3", "C3", RECENT)])

    result = decide_events(raw, facts)

    assert rules_by_key(result, "event_id") == {"B2": "OBJECTED_TRANSFER", "B3": "NO_CONSENT"}
    assert result.moved["event_id"].tolist() == ["B1"]


def test_empty_partition():
    result = decide_events(events([]))

    assert result.moved.empty and result.excluded.empty
    assert list(result.excluded.columns) == ["event_id", "cust_id", "ts", "_rule", "_destroy_by"]
    assert result.counts == {}
