"""The lifecycle DAGs one after another, as a takeover team uses them over weeks.

migration -> three nights -> access -> correction (and a rejected one) -> backup ->
erasure -> a night carrying an update of the erased person -> backup -> key rotation
(the keyring file rewritten under a running system: every step reads it when it runs)
-> retire the old key -> retention -> restore drill.

After every step: every run's ledger balances, the erased person is unreadable
everywhere (target, books, lake, backups), every night reconciles green, the drill is
green. Each defect of the lifecycle issue is pinned here by an assertion that failed on
the code before it: the night brought the erased customer back; a correction blocked
every later night; the erasure turned the nightly reconciliation red; rotation left the
backups wrapped by the old key; an erasure left no restorable backup; the access export
missed the mapped stage; a corrected address kept its old city and took the correction's
time as the source's; a rejected correction stayed running with its run folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
import uuid
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from handover.flows import nightly as sync
from handover.flows import subject_request
from handover.flows.runner import run_migration
from handover.lifecycle import backup, restore, retention, subject
from handover.lifecycle import rotation as keys
from handover.protection.fields import Keyring
from handover.storage.lake import lake_from_url, safe_run_id
from handover_synth import changes as synth_changes
from handover_synth import legacy_bss as synth
from tests.conftest import ROOT, pg_dsn
from tests.integration.test_retention import search_everywhere

pytestmark = pytest.mark.integration
SUBSCRIBERS = 300
DAYS = ("2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04")


def _norm(v) -> str:
    return unicodedata.normalize("NFKC", str(v)).strip()


def _night(changes: Path, day: str) -> dict:
    start = pd.Timestamp(day)
    return sync.run_night(
        changes_dir=str(changes),
        data_interval_start=start,
        data_interval_end=start + pd.Timedelta(days=1),
    )


def _request(kind: str, customer: str, **kw) -> dict:
    form = {
        "request_id": f"REQ-{kind[:3]}-{uuid.uuid4().hex[:6]}",
        "request_type": kind,
        "identifier_type": "customer_id",
        "identifier": customer,
        **kw,
    }
    return subject.submit_request(**form)["conf"]


@pytest.fixture(scope="module")
def weeks(target_db, tmp_path_factory):
    root = tmp_path_factory.mktemp("weeks")
    source, changes = root / "source", root / "changes"
    synth.generate(source, SUBSCRIBERS, seed=23)
    synth_changes.generate_changes(source, changes, days=len(DAYS), seed=4)
    keyfile = root / "keys.json"
    keyfile.write_text(json.dumps(Keyring.generate("k1")))
    dsn = pg_dsn(target_db)
    mp = pytest.MonkeyPatch()
    mp.setenv("HANDOVER_TARGET_DSN", dsn)
    mp.setenv("HANDOVER_LAKE_URL", f"file://{root / 'lake'}")
    mp.setenv("HANDOVER_KEYRING_FILE", str(keyfile))
    for var in (
        "AIRFLOW_CONN_HANDOVER_KEYS",
        "AIRFLOW_CONN_HANDOVER_TARGET",
        "AIRFLOW_CONN_HANDOVER_LAKE",
    ):
        mp.delenv(var, raising=False)
    # The person to erase: one whose row the last night updates in the legacy system.
    last = pd.read_csv(changes / DAYS[-1] / "subscribers.csv", dtype=str, keep_default_na=False)
    subs = pd.read_csv(source / "subscribers.csv", dtype=str, keep_default_na=False)
    subs = subs.assign(c=subs["cust_id"].map(_norm), o=subs["transfer_objection"].map(_norm))
    clean = set(subs.loc[subs["o"] != "1", "c"])
    erased = next(c for c in last["cust_id"].map(_norm) if c in clean)
    others = sorted(clean - {erased} - set(last["cust_id"].map(_norm)))
    row = subs[subs["c"] == erased].iloc[0]
    world = {
        "root": root,
        "source": source,
        "changes": changes,
        "dsn": dsn,
        "keyfile": keyfile,
        "lake": root / "lake",
        "erased": erased,
        "erased_values": {erased, _norm(row["id_number"]), _norm(row["msisdn"])},
        "access_to": others[0],
        "correct": others[1],
        "steps": [],
    }
    yield world
    mp.undo()


def _ring(w) -> Keyring:
    return Keyring.from_dict(json.loads(w["keyfile"].read_text()))


def _balanced(w) -> None:
    with psycopg.connect(w["dsn"]) as conn:
        bad = conn.execute(
            "SELECT run_id, table_name, stage FROM handover_meta.ledger WHERE rows_in <> "
            "rows_out + rows_quarantined + rows_excluded + rows_merged"
        ).fetchall()
        unbalanced = conn.execute(
            "SELECT run_id, table_name FROM handover_meta.reconciliation WHERE NOT balanced"
        ).fetchall()
    assert bad == [] and unbalanced == [], (bad, unbalanced)


def _erased_nowhere(w) -> None:
    if not w.get("erasure_done"):
        return
    hits = search_everywhere(w["dsn"], w["lake"], _ring(w), w["erased_values"])
    assert hits["db"] == [] and hits["lake"] == [] and hits["backups"] == [], hits


def _step(w, name: str) -> None:
    _balanced(w)
    _erased_nowhere(w)
    w["steps"].append(name)


def test_the_weeks(weeks):
    w = weeks
    run_migration(run_id=f"mig_{uuid.uuid4().hex[:6]}", source_dir=str(w["source"]))
    _step(w, "migration")
    for day in DAYS[:3]:
        out = _night(w["changes"], day)
        assert all(r["balanced"] for r in out["reconciled"]), day
        _step(w, f"night {day}")

    # access: the export lists every lake object holding the person, mapped ones too
    conf = _request("access", w["access_to"])
    subject_request.handle_request(conf)
    doc = subject.read_export(conf["request_id"])
    stages = {o["stage"] for o in doc["migration_copies"]}
    assert "mapped" in stages and "raw" in stages, stages
    _step(w, "access")

    # correction of the address: the city follows it, the source's update time stays
    with psycopg.connect(w["dsn"]) as conn:
        before = conn.execute(
            "SELECT source_updated_at FROM crm.customer WHERE customer_id=%s", (w["correct"],)
        ).fetchone()[0]
    conf = _request(
        "correction",
        w["correct"],
        field="address",
        new_value="广东省广州市天河区体育西路1号3栋201室",
    )
    subject_request.handle_request(conf)
    with psycopg.connect(w["dsn"]) as conn:
        city, updated = conn.execute(
            "SELECT city, source_updated_at FROM crm.customer WHERE customer_id=%s", (w["correct"],)
        ).fetchone()
    assert city == "广州市"
    assert updated == before
    # a correction the pipeline refuses ends rejected: seal cleared, no lake copy left
    bad = _request("correction", w["correct"], field="msisdn", new_value="12345")
    with pytest.raises(subject.RequestRejected):
        subject_request.handle_request(bad)
    with psycopg.connect(w["dsn"]) as conn:
        status = conn.execute(
            "SELECT status FROM handover_meta.subject_request WHERE request_id=%s",
            (bad["request_id"],),
        ).fetchone()
        sealed = conn.execute(
            "SELECT sealed FROM handover_meta.subject_intake WHERE request_id=%s",
            (bad["request_id"],),
        ).fetchone()[0]
    assert status == ("rejected",) and sealed is None
    run = f"runs/{safe_run_id('subject__' + bad['request_id'])}/"
    assert lake_from_url().list(run) == [] and lake_from_url().list(f"_keys/{run}") == []
    _step(w, "correction")

    first = backup.run_backup(reason="scheduled")
    _step(w, "backup")

    # erasure: final everywhere, and a restorable backup remains
    conf = _request("erasure", w["erased"])
    out = subject_request.handle_request(conf)
    assert out["done"]["backup_after_erasure"], "the erasure left no restorable backup"
    w["erasure_done"] = True
    drill = restore.run_drill()
    assert drill["success"] and drill["backup_id"] == out["done"]["backup_after_erasure"]
    _step(w, "erasure")

    # the night after: an update of the erased person in the legacy system is dropped
    night = _night(w["changes"], DAYS[3])  # a correction (an export-less run) came between
    run_id = sync.night_run_id(pd.Timestamp(DAYS[3]))
    with psycopg.connect(w["dsn"]) as conn:
        back = conn.execute(
            "SELECT count(*) FROM crm.customer WHERE customer_id=%s", (w["erased"],)
        ).fetchone()[0]
        erased_rows = conn.execute(
            "SELECT count(*) FROM handover_meta.exclusion WHERE run_id=%s AND "
            "rule_id='ERASED_SUBJECT'",
            (run_id,),
        ).fetchone()[0]
        green = conn.execute(
            "SELECT bool_and(balanced), count(*) FROM handover_meta.reconciliation WHERE run_id=%s",
            (run_id,),
        ).fetchone()
        status = conn.execute(
            "SELECT status FROM handover_meta.run WHERE run_id=%s", (run_id,)
        ).fetchone()[0]
    assert back == 0, "the night brought the erased customer back"
    assert erased_rows >= 1
    assert green == (True, 7) and status == "succeeded", (green, status)
    assert all(r["balanced"] for r in night["reconciled"])
    _step(w, f"night {DAYS[3]}")

    second = backup.run_backup(reason="scheduled")
    _step(w, "backup 2")

    # rotation: the keyring file is rewritten while the system runs; each step reads it
    data = json.loads(w["keyfile"].read_text())
    w["keyfile"].write_text(json.dumps(keys.add_key(data, "k2")))
    assert keys.key_still_needed("k1")["backup_data_keys"] > 0
    retire = [
        sys.executable,
        "-m",
        "handover.ops.cli",
        "keys",
        "--from",
        str(w["keyfile"]),
        "--retire",
        "k1",
    ]
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT / "include")}
    refused = subprocess.run(retire, capture_output=True, text=True, env=env, check=False)
    assert refused.returncode == 2 and "still protects" in refused.stderr, refused.stderr
    rotated = keys.rotate_target_keys("legacy_bss")
    assert rotated["backup_keys_rewrapped"] > 0 and rotated["lake_keys_rewrapped"] > 0
    keys.validate_rotation("legacy_bss")
    done = subprocess.run(retire, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    w["keyfile"].write_text(done.stdout)
    assert set(_ring(w).keys) == {"k2"}
    _step(w, "rotation")

    retention.run_retention(run_id=f"retention_{uuid.uuid4().hex[:6]}")
    _step(w, "retention")

    drill = restore.run_drill()  # the newest backup, its keys rewrapped under k2 only
    with psycopg.connect(w["dsn"]) as conn:
        drills = conn.execute(
            "SELECT success FROM handover_meta.restore_drill ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
        wrapping = {
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT wrapping_key_id FROM handover_meta.backup_file WHERE backup_id=%s",
                (drill["backup_id"],),
            )
        }
    assert drills == (True,) and wrapping == {"k2"}, (drill, wrapping)
    assert first["backup_id"] != second["backup_id"]
    _step(w, "restore drill")
    assert len(w["steps"]) == 13, w["steps"]


def test_a_drill_without_a_backup_fails_and_is_on_record(tmp_path, target_db, monkeypatch):
    from handover.lifecycle.backup import LifecycleError

    db = pg_dsn(target_db)
    monkeypatch.setenv("HANDOVER_TARGET_DSN", db)
    monkeypatch.setenv("HANDOVER_LAKE_URL", f"file://{tmp_path / 'lake'}")
    with psycopg.connect(db) as conn:
        conn.execute("UPDATE handover_meta.backup SET status = 'expired'")
    with pytest.raises(LifecycleError, match="no complete backup"):
        restore.run_drill()
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT success, failure FROM handover_meta.restore_drill ORDER BY "
            "started_at DESC LIMIT 1"
        ).fetchone()
    assert row[0] is False and "no complete backup" in row[1]
