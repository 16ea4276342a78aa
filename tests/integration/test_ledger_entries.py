"""Quarantine and exclusion entries: written in one COPY from Arrow, replaced per partition."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pytest

from handover.db import ledger
from tests.conftest import pg_dsn

pytestmark = pytest.mark.integration


@pytest.fixture
def conn(target_db):
    with psycopg.connect(pg_dsn(target_db)) as c:
        ledger.ensure_schema(c)
        yield c
        c.rollback()


def _rows(conn, table: str) -> list[tuple]:
    what = "reason, field" if table == "quarantine" else "rule_id, destroy_by"
    return conn.execute(
        f"SELECT run_id, table_name, partition, record_key, {what} "
        f"FROM handover_meta.{table} ORDER BY record_key"
    ).fetchall()


def test_exclusions_from_pandas_and_arrow_columns_replace_the_partition(conn):
    # comply hands over pandas columns: dates as objects (every exclusion has one)
    ledger.replace_exclusions(
        conn,
        "r1",
        "calls",
        "p00",
        pa.array(["k1", "row:7", "k3"]),
        pd.Series(["no_consent", "objection", "no_consent"], dtype="str"),
        pd.Series([dt.date(2027, 1, 31), dt.date(2026, 12, 7), dt.date(2026, 12, 1)], dtype=object),
    )
    ledger.replace_exclusions(
        conn, "r1", "calls", "p01", ["k9"], ["objection"], [dt.date(2026, 12, 7)]
    )
    assert _rows(conn, "exclusion") == [
        ("r1", "calls", "p00", "k1", "no_consent", dt.date(2027, 1, 31)),
        ("r1", "calls", "p00", "k3", "no_consent", dt.date(2026, 12, 1)),
        ("r1", "calls", "p01", "k9", "objection", dt.date(2026, 12, 7)),
        ("r1", "calls", "p00", "row:7", "objection", dt.date(2026, 12, 7)),
    ]

    # a rerun of p00 replaces p00's entries only; an empty rerun leaves none
    ledger.replace_exclusions(
        conn,
        "r1",
        "calls",
        "p00",
        np.array(["k2"], dtype=object),
        ["retention"],
        [dt.date(2026, 1, 1)],
    )
    assert [r[2:4] for r in _rows(conn, "exclusion")] == [("p00", "k2"), ("p01", "k9")]
    ledger.replace_exclusions(conn, "r1", "calls", "p00", [], [], [])
    assert [r[2:4] for r in _rows(conn, "exclusion")] == [("p01", "k9")]


def test_an_exclusion_without_a_destroy_by_date_is_refused(conn):
    """What may not move is not kept: the books refuse an exclusion nobody will destroy."""
    with pytest.raises(psycopg.errors.CheckViolation, match="exclusion_destroy_by_set"):
        ledger.replace_exclusions(conn, "r1", "calls", "p02", ["k9"], ["objection"], [None])


def test_evidence_of_destroyed_rows_survives_a_rerun_of_comply(conn):
    ledger.replace_exclusions(
        conn,
        "r2",
        "calls",
        "p00",
        ["destroyed:ab12", "k5"],
        ["objection", "objection"],
        [dt.date(2026, 12, 7)] * 2,
    )
    ledger.replace_exclusions(conn, "r2", "calls", "p00", [], [], [])
    assert [r[3] for r in _rows(conn, "exclusion") if r[0] == "r2"] == ["destroyed:ab12"]


def test_quarantine_entries_take_arrow_columns_and_refuse_unequal_lengths(conn):
    reasons = pa.chunked_array([["BAD_MSISDN"], ["DUPLICATE_KEY", "BAD_DATE"]])
    fields = pa.chunked_array([["msisdn"], pa.nulls(2, pa.string())])
    ledger.replace_quarantine(
        conn, "r1", "subs", "p00", pa.array(["a", "b", "row:3"]), reasons, fields
    )
    assert _rows(conn, "quarantine") == [
        ("r1", "subs", "p00", "a", "BAD_MSISDN", "msisdn"),
        ("r1", "subs", "p00", "b", "DUPLICATE_KEY", None),
        ("r1", "subs", "p00", "row:3", "BAD_DATE", None),
    ]

    with pytest.raises(
        ValueError,
        match=r"quarantine entries of subs p01: columns of unequal "
        r"length \[1, 2\]",
    ):
        ledger.replace_quarantine(conn, "r1", "subs", "p01", ["a", "b"], ["X", "Y"], [None])
