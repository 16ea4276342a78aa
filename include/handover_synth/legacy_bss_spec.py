"""What a legacy_bss export holds and how often it is wrong: the shared constants.

Table columns, row means, the exact defect rates, the truth codes (`K`) with the outcome the
pipeline owes each, and the two small public helpers (`id_check_digit`, `exact_count`).
Everything else in `handover_synth.legacy_bss*` builds on this module.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import pyarrow as pa

SYSTEM = "legacy_bss"
DEFAULT_EXPORTED_AT = "2026-11-01 00:00:00"
CHUNK_ROWS = 500_000

DAY = 86_400
HOUR = 3_600
NORMAL_WINDOW_DAYS = 330

# fmt: off
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "subscribers": (
        "cust_id", "name", "id_number", "gender", "birth_date", "msisdn", "address", "city",
        "open_date", "status", "transfer_objection", "updated_at",
    ),
    "consents": ("consent_id", "cust_id", "purpose", "granted", "granted_at"),
    "call_records": (
        "cdr_id", "cust_id", "caller", "callee", "start_time", "duration_s", "cell_id",
        "charge_fen",
    ),
    "data_sessions": (
        "session_id", "cust_id", "start_time", "bytes_up", "bytes_down", "cell_id", "charge_fen",
    ),
    "payments": ("payment_id", "cust_id", "paid_at", "amount_fen", "channel"),
    "complaints": ("complaint_id", "cust_id", "created_at", "category", "text", "satisfaction"),
    "browsing_events": ("event_id", "cust_id", "ts", "domain", "search_text"),
}
# fmt: on
TRUTH_COLUMNS = ("table", "key", "defect", "expected_outcome", "expected_reason")

#: Average rows per (non-duplicate) subscriber; call records can be scaled from the CLI.
MEAN_ROWS_PER_SUBSCRIBER: dict[str, float] = {
    "call_records": 20.0,
    "data_sessions": 10.0,
    "payments": 6.0,
    "complaints": 0.3,
    "browsing_events": 5.0,
}
MARKETING_GRANTED = 0.5
MARKETING_REFUSED = 0.2  # an explicit granted=0 row
BEHAVIOURAL_GRANTED = 0.4
BEHAVIOURAL_REFUSED = 0.15

#: Subscriber defect rates (of N).  INVALID_DATE is written as FUTURE_DATE or IMPOSSIBLE_DATE.
SUBSCRIBER_DEFECT_RATES: dict[str, float] = {
    "BAD_ID_CHECKSUM": 0.01,
    "ID_BIRTH_MISMATCH": 0.003,
    "MALFORMED_MSISDN": 0.01,
    "FULLWIDTH_MSISDN": 0.01,
    "DUPLICATE_PERSON": 0.005,
    "BLANK_MANDATORY": 0.005,
    "INVALID_DATE": 0.003,
    "OBJECTED_TRANSFER": 0.005,
}
#: Own defect rates of child tables (of the table's row count).
CHILD_DEFECT_RATES: dict[str, dict[str, float]] = {
    "call_records": {
        "ORPHAN_RECORD": 0.005,
        "FUTURE_DATE": 0.003,
        "NEGATIVE_AMOUNT": 0.003,
        "PAST_RETENTION": 0.005,
    },
    "data_sessions": {"FUTURE_DATE": 0.003, "NEGATIVE_AMOUNT": 0.003, "PAST_RETENTION": 0.005},
    "payments": {
        "FUTURE_DATE": 0.003,
        "NEGATIVE_AMOUNT": 0.003,
        "BLANK_MANDATORY": 0.003,
        "PAST_RETENTION": 0.005,
    },
    "complaints": {"PAST_RETENTION": 0.02, "PII_IN_TEXT": 0.2},
    "browsing_events": {},
}
#: Past-retention window per table, in months before E (inclusive ends get a 2-day margin).
PAST_RETENTION_MONTHS: dict[str, tuple[int, int]] = {
    "call_records": (37, 60),
    "data_sessions": (37, 60),
    "payments": (37, 60),
    "complaints": (25, 48),
}


class K(IntEnum):
    """Truth codes: what a row is, and therefore what the pipeline must do with it."""

    CLEAN = 0
    PARENT_OBJECTED = 1
    PARENT_QUARANTINED = 2
    NO_CONSENT = 3
    PAST_RETENTION = 4
    ORPHAN_RECORD = 5
    FUTURE_DATE = 6
    NEGATIVE_AMOUNT = 7
    BLANK_MANDATORY = 8
    PII_IN_TEXT = 9
    BAD_ID_CHECKSUM = 10
    ID_BIRTH_MISMATCH = 11
    MALFORMED_MSISDN = 12
    FULLWIDTH_MSISDN = 13
    DUPLICATE_PERSON = 14
    IMPOSSIBLE_DATE = 15
    OBJECTED_TRANSFER = 16


# (defect, expected_outcome, expected_reason) per truth code.
_TRUTH: dict[K, tuple[str, str, str]] = {
    K.CLEAN: ("", "loaded", ""),
    K.PARENT_OBJECTED: ("PARENT_OBJECTED", "excluded", "OBJECTED_TRANSFER"),
    K.PARENT_QUARANTINED: ("PARENT_QUARANTINED", "quarantined", "PARENT_QUARANTINED"),
    K.NO_CONSENT: ("NO_CONSENT", "excluded", "NO_CONSENT"),
    K.PAST_RETENTION: ("PAST_RETENTION", "excluded", "RETENTION_EXPIRED"),
    K.ORPHAN_RECORD: ("ORPHAN_RECORD", "quarantined", "ORPHAN_RECORD"),
    K.FUTURE_DATE: ("FUTURE_DATE", "quarantined", "INVALID_DATE"),
    K.NEGATIVE_AMOUNT: ("NEGATIVE_AMOUNT", "quarantined", "NEGATIVE_AMOUNT"),
    K.BLANK_MANDATORY: ("BLANK_MANDATORY", "quarantined", "MISSING_FIELD"),
    K.PII_IN_TEXT: ("PII_IN_TEXT", "loaded", ""),
    K.BAD_ID_CHECKSUM: ("BAD_ID_CHECKSUM", "quarantined", "INVALID_ID_CHECKSUM"),
    K.ID_BIRTH_MISMATCH: ("ID_BIRTH_MISMATCH", "quarantined", "INVALID_ID_BIRTHDATE"),
    K.MALFORMED_MSISDN: ("MALFORMED_MSISDN", "quarantined", "INVALID_MSISDN"),
    K.FULLWIDTH_MSISDN: ("FULLWIDTH_MSISDN", "loaded", ""),
    K.DUPLICATE_PERSON: ("DUPLICATE_PERSON", "merged", "SAME_PERSON"),
    K.IMPOSSIBLE_DATE: ("IMPOSSIBLE_DATE", "quarantined", "INVALID_DATE"),
    K.OBJECTED_TRANSFER: ("OBJECTED_TRANSFER", "excluded", "OBJECTED_TRANSFER"),
}
_TRUTH_DEFECT = pa.array([_TRUTH[K(i)][0] for i in range(len(K))])
_TRUTH_OUTCOME = pa.array([_TRUTH[K(i)][1] for i in range(len(K))])
_TRUTH_REASON = pa.array([_TRUTH[K(i)][2] for i in range(len(K))])

# Parent state of a base subscriber, as seen by its child rows.
_P_CLEAN, _P_REPAIRED, _P_QUARANTINED, _P_OBJECTED = 0, 1, 2, 3

_ID_WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2], dtype=np.int64)
_ID_CHECK_CHARS = "10X98765432"

# --------------------------------------------------------------------------------------------
# Small public helpers
# --------------------------------------------------------------------------------------------


def id_check_digit(first17: str) -> str:
    """Return the GB 11643-1999 check character for the first 17 digits of a resident ID."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError(f"expected 17 ASCII digits, got {first17!r}")
    total = sum(int(c) * int(w) for c, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK_CHARS[total % 11]


def exact_count(rate: float, rows: int) -> int:
    """Number of rows that carry a defect of ``rate`` in a table of ``rows`` rows."""
    return round(rate * rows)
