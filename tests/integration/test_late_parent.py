"""Orphans find their parent: a customer missing from the migration's export (its records
quarantined ORPHAN_RECORD) arrives in a later night; that night takes the waiting
children in again, and they load through every stage and gate, counted in its ledger.
"""

from __future__ import annotations

import json
import uuid

import pandas as pd
import psycopg
import pytest

from handover.flows import nightly as sync
from handover.flows.runner import run_migration
from handover_synth import changes as synth_changes
from handover_synth import legacy_bss as synth
from tests.conftest import pg_dsn, reseal

pytestmark = pytest.mark.integration
DAYS = ("2026-11-01", "2026-11-02")


def _night(changes, day: str) -> dict:
    start = pd.Timestamp(day)
    return sync.run_night(
        changes_dir=str(changes),
        data_interval_start=start,
        data_interval_end=start + pd.Timedelta(days=1),
    )


def _csv(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def late(target_db, keyring_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("late_parent")
    source, changes = root / "source", root / "changes"
    synth.generate(source, 200, seed=8)
    synth_changes.generate_changes(source, changes, days=len(DAYS), seed=3)
    subs = _csv(source / "subscribers.csv")
    touched = set()
    for day in DAYS:
        for name in (
            "subscribers",
            "payments",
            "call_records",
            "consents",
            "data_sessions",
            "complaints",
            "browsing_events",
        ):
            for f in (f"{name}.csv", f"{name}.deleted.csv"):
                df = _csv(changes / day / f)
                col = "cust_id" if "cust_id" in df.columns else df.columns[0]
                touched |= set(df[col].str.strip())
    pays = _csv(source / "payments.csv")
    with_payments = set(pays["cust_id"].str.strip())
    late = next(
        c
        for c, o in zip(subs["cust_id"].str.strip(), subs["transfer_objection"], strict=True)
        if o.strip() == "0"
        and c not in touched
        and c in with_payments
        and (subs["cust_id"].str.strip() == c).sum() == 1
    )
    row = subs[subs["cust_id"].str.strip() == late]
    # The migration's export (and the first night's legacy state) do not have the customer
    # yet; the second night's change set brings it.
    subs[subs["cust_id"].str.strip() != late].to_csv(source / "subscribers.csv", index=False)
    manifest = json.loads((source / "export_manifest.json").read_text())
    manifest["tables"]["subscribers"]["rows"] -= 1
    (source / "export_manifest.json").write_text(json.dumps(manifest))
    reseal(source)
    state1 = changes / DAYS[0] / "state" / "subscribers.csv"
    s1 = _csv(state1)
    s1[s1["cust_id"].str.strip() != late].to_csv(state1, index=False)
    day2 = changes / DAYS[1] / "subscribers.csv"
    pd.concat([_csv(day2), row]).to_csv(day2, index=False)
    cm = json.loads((changes / DAYS[1] / "change_manifest.json").read_text())
    cm["tables"]["subscribers"]["rows"] += 1
    (changes / DAYS[1] / "change_manifest.json").write_text(json.dumps(cm))

    mp = pytest.MonkeyPatch()
    dsn = pg_dsn(target_db)
    mp.setenv("HANDOVER_TARGET_DSN", dsn)
    mp.setenv("HANDOVER_LAKE_URL", f"file://{root / 'lake'}")
    mp.setenv("HANDOVER_KEYRING_FILE", str(keyring_file))
    for var in ("AIRFLOW_CONN_HANDOVER_KEYS", "AIRFLOW_CONN_HANDOVER_TARGET"):
        mp.delenv(var, raising=False)
    mig = f"mig_{uuid.uuid4().hex[:6]}"
    run_migration(run_id=mig, source_dir=str(source))
    with psycopg.connect(dsn) as conn:
        waiting = conn.execute(
            "SELECT table_name, count(*) FROM handover_meta.quarantine WHERE run_id=%s AND "
            "reason='ORPHAN_RECORD' GROUP BY 1",
            (mig,),
        ).fetchall()
    nights = [_night(changes, d) for d in DAYS]
    yield {
        "dsn": dsn,
        "late": late,
        "mig": mig,
        "waiting": dict(waiting),
        "nights": nights,
        "payments": set(pays.loc[pays["cust_id"].str.strip() == late, "payment_id"].str.strip()),
    }
    mp.undo()


def test_the_children_waited_as_orphans(late):
    assert late["waiting"].get("payments", 0) >= len(late["payments"]) > 0


def test_the_night_that_brings_the_parent_loads_the_waiting_children(late):
    run2 = sync.night_run_id(pd.Timestamp(DAYS[1]))
    with psycopg.connect(late["dsn"]) as conn:
        customer = conn.execute(
            "SELECT count(*) FROM crm.customer WHERE customer_id=%s", (late["late"],)
        ).fetchone()[0]
        loaded = {
            r[0]
            for r in conn.execute(
                "SELECT payment_id FROM crm.payment WHERE customer_id=%s", (late["late"],)
            )
        }
        # each night takes the waiting orphans in again (the first re-quarantined them:
        # no parent yet); the second, which brings the parent, releases them
        released = conn.execute(
            "SELECT count(*) FROM handover_meta.quarantine WHERE table_name='payments' AND "
            "reason='ORPHAN_RECORD' AND released_by=%s",
            (run2,),
        ).fetchone()[0]
        waiting = conn.execute(
            "SELECT count(*) FROM handover_meta.quarantine WHERE table_name='payments' AND "
            "reason='ORPHAN_RECORD' AND released_by IS NULL AND record_key = ANY(%s)",
            (sorted(late["payments"]),),
        ).fetchone()[0]
        counted = conn.execute(
            "SELECT sum((detail->>'released_orphans')::int) FROM handover_meta.ledger WHERE "
            "run_id=%s AND table_name='payments' AND stage='extract'",
            (run2,),
        ).fetchone()[0]
        unbalanced = conn.execute(
            "SELECT count(*) FROM handover_meta.reconciliation WHERE run_id=%s AND NOT balanced",
            (run2,),
        ).fetchone()[0]
        bad = conn.execute(
            "SELECT count(*) FROM handover_meta.ledger WHERE rows_in <> "
            "rows_out + rows_quarantined + rows_excluded + rows_merged"
        ).fetchone()[0]
    assert customer == 1
    assert loaded == late["payments"]
    assert released >= len(late["payments"]) and counted >= len(late["payments"])
    assert waiting == 0
    assert unbalanced == 0 and bad == 0
    assert all(r["balanced"] for n in late["nights"] for r in n["reconciled"])
