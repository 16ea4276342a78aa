"""Each policy rule against the synthetic operator, after a whole migration.

The expected decisions are worked out here straight from the export files, apart from
the pipeline's code (objectors from subscribers.transfer_objection, retention from each
record's own timestamp and its category's period, behavioural consent from consents),
and checked against both handover_meta.exclusion and the generator's truth file: every
row a rule catches is excluded with that rule's id, no other row is, and no excluded
row reaches the target.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import pandas as pd
import psycopg
import pytest

from handover.config.loader import load_config
from handover.flows.runner import run_migration
from handover_synth import legacy_bss as synth
from tests.conftest import pg_dsn, unhash_book_keys

pytestmark = pytest.mark.integration
SUBSCRIBERS = 1500
RULES = ("OBJECTED_TRANSFER", "RETENTION_EXPIRED", "NO_CONSENT")
TODAY = datetime.now(UTC).date()


@pytest.fixture(scope="module")
def env(target_db, keyring_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("policy")
    source = root / "source"
    synth.generate(source, SUBSCRIBERS, seed=101)
    mp = pytest.MonkeyPatch()
    mp.setenv("HANDOVER_TARGET_DSN", pg_dsn(target_db))
    mp.setenv("HANDOVER_LAKE_URL", f"file://{root / 'lake'}")
    mp.setenv("HANDOVER_KEYRING_FILE", str(keyring_file))
    mp.delenv("AIRFLOW_CONN_HANDOVER_KEYS", raising=False)
    mp.delenv("AIRFLOW_CONN_HANDOVER_TARGET", raising=False)
    run_id = f"pol_{uuid.uuid4().hex[:6]}"
    run_migration(run_id=run_id, source_dir=str(source))
    with psycopg.connect(pg_dsn(target_db)) as conn:
        rows = conn.execute(
            "SELECT table_name, record_key, rule_id, destroy_by "
            "FROM handover_meta.exclusion WHERE run_id=%s",
            (run_id,),
        ).fetchall()
    expected = _expected(source)
    # The run's end destroyed the excluded rows; the books name them by keyed hash.
    rows = unhash_book_keys(keyring_file, rows, _all_keys(source))
    got = {(t, k): (r, d) for t, k, r, d in rows}
    assert len(got) == len(rows), "a row was excluded twice"
    assert not [k for _, k in got if k.startswith("destroyed:")]
    yield {
        "source": source,
        "dsn": pg_dsn(target_db),
        "run_id": run_id,
        "got": got,
        "expected": expected,
    }
    mp.undo()


def _read(source, table: str) -> pd.DataFrame:
    return pd.read_csv(source / f"{table}.csv", dtype=str, keep_default_na=False)


def _expected(source) -> dict[tuple[str, str], tuple[str, date | None]]:
    """The policy, recomputed from the export: {(table, key): (rule id, destroy-by)}."""
    cfg = load_config("legacy_bss")
    exported = pd.Timestamp("2026-11-01 00:00:00")
    subs = _read(source, "subscribers")
    objectors = set(subs.loc[subs["transfer_objection"].str.strip() == "1", "cust_id"].str.strip())
    consents = _read(source, "consents")
    behavioural = set(
        consents.loc[
            (consents["purpose"].str.strip() == "behavioural")
            & (consents["granted"].str.strip() == "1"),
            "cust_id",
        ].str.strip()
    )
    out: dict[tuple[str, str], tuple[str, date | None]] = {}
    for table in cfg.tables:
        spec, cat = cfg.table(table), cfg.category_policy(table)
        df = _read(source, table)
        cust = df[spec["customer_column"]].str.strip()
        keys = df[spec["key"]].str.strip()
        months = cat.get("retention_months")
        ts = None
        if months and spec.get("event_time"):
            ts = pd.to_datetime(
                df[spec["event_time"]].str.strip(),
                errors="coerce",
                format=cfg.rules(table)["dates"][spec["event_time"]],
            )
        for i, key in enumerate(keys):
            if cust.iat[i] in objectors:
                out[(table, key)] = ("OBJECTED_TRANSFER", TODAY)
            elif (
                ts is not None
                and pd.notna(ts.iat[i])
                and ts.iat[i] < exported - pd.DateOffset(months=months)
            ):
                due = (ts.iat[i] + pd.DateOffset(months=months)).date()
                out[(table, key)] = ("RETENTION_EXPIRED", min(due, exported.date()))
            elif cat["lawful_basis"] == "separate_consent" and cust.iat[i] not in behavioural:
                out[(table, key)] = ("NO_CONSENT", TODAY)
    return out


def _all_keys(source) -> set[tuple[str, str]]:
    cfg = load_config("legacy_bss")
    return {(t, k.strip()) for t in cfg.tables for k in _read(source, t)[cfg.table(t)["key"]]}


def _by_rule(decisions: dict, rule: str) -> set[tuple[str, str]]:
    return {k for k, (r, _) in decisions.items() if r == rule}


def _truth(source, rule: str) -> set[tuple[str, str]]:
    truth = pd.read_csv(source / "truth.csv", dtype=str, keep_default_na=False)
    hit = truth[(truth.expected_outcome == "excluded") & (truth.expected_reason == rule)]
    return set(zip(hit.table, hit.key, strict=True))


def test_every_objector_and_all_their_records_are_excluded(env):
    expected = _by_rule(env["expected"], "OBJECTED_TRANSFER")
    got = _by_rule(env["got"], "OBJECTED_TRANSFER")

    objectors = {k for t, k in expected if t == "subscribers"}
    assert len(objectors) >= 3
    assert {t for t, _ in expected} > {"subscribers"}  # their records too, not only them
    assert got == expected
    assert got == _truth(env["source"], "OBJECTED_TRANSFER")


def test_every_record_past_retention_is_excluded_and_queued_for_destruction(env):
    expected = _by_rule(env["expected"], "RETENTION_EXPIRED")
    got = _by_rule(env["got"], "RETENTION_EXPIRED")

    tables = {t for t, _ in expected}
    assert {"call_records", "data_sessions", "payments", "complaints"} <= tables
    assert not tables & {"subscribers", "consents"}  # personal data: while the contract lives
    assert got == expected
    assert got == _truth(env["source"], "RETENTION_EXPIRED")
    wrong_dates = [k for k in got if env["got"][k][1] != env["expected"][k][1]]
    assert wrong_dates == []
    assert all(env["got"][k][1] <= date(2026, 11, 1) for k in got)


def test_every_customer_without_behavioural_consent_is_excluded(env):
    expected = _by_rule(env["expected"], "NO_CONSENT")
    got = _by_rule(env["got"], "NO_CONSENT")

    assert expected and {t for t, _ in expected} == {"browsing_events"}
    assert got == expected
    assert got == _truth(env["source"], "NO_CONSENT")
    # A consent row that refuses is no consent: such customers are among the excluded.
    consents = _read(env["source"], "consents")
    refused = set(
        consents.loc[(consents.purpose == "behavioural") & (consents.granted == "0"), "cust_id"]
    )
    events = _read(env["source"], "browsing_events").set_index("event_id")["cust_id"]
    assert refused & {events[k] for _, k in got}


def test_nothing_else_is_excluded(env):
    assert set(env["got"]) == set(env["expected"])
    assert {r for r, _ in env["got"].values()} == set(RULES)
    # what may not move is due at the end of the run that excluded it (PIPL Art. 22, 47)
    assert all(d == TODAY for r, d in env["got"].values() if r != "RETENTION_EXPIRED")
    truth = pd.read_csv(env["source"] / "truth.csv", dtype=str, keep_default_na=False)
    excluded = truth[truth.expected_outcome == "excluded"]
    assert set(zip(excluded.table, excluded.key, strict=True)) == set(env["got"])


def test_no_excluded_row_reaches_the_target(env):
    cfg = load_config("legacy_bss")
    with psycopg.connect(env["dsn"]) as conn:
        leaked = {}
        for table in cfg.tables:
            tmap = cfg.table_mapping(table)
            keys = [k for t, k in env["got"] if t == table]
            leaked[table] = conn.execute(
                f"SELECT count(*) FROM {cfg.mapping['schema']}.{tmap['target']} "
                f"WHERE {tmap['key']} = ANY(%s)",
                (keys,),
            ).fetchone()[0]
        ledger = dict(
            conn.execute(
                "SELECT table_name, sum(rows_excluded) FROM handover_meta.ledger "
                "WHERE run_id=%s AND stage='comply' GROUP BY 1",
                (env["run_id"],),
            ).fetchall()
        )

    assert leaked == dict.fromkeys(cfg.tables, 0)
    counted = pd.Series([t for t, _ in env["got"]]).value_counts().to_dict()
    assert {t: int(n) for t, n in ledger.items() if n} == counted
