"""Backups and restore drills on the machine's PostgreSQL, after a real migration.

Proves: a backup snapshots every table of crm and handover_meta, encrypted per file,
with a catalogue, a manifest and ledger rows that agree with the database; a drill
restores it into a scratch database and verifies counts and checksums, timed, in the
audit trail; a damaged file fails the drill with one line naming the file and the fix;
expired backups are deleted and the newest complete one is kept.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from handover.lifecycle import backup, restore
from handover.ops import tasks
from tests.conftest import pg_dsn
from tests.integration.test_retention import lifecycle_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(request, tmp_path_factory):
    for env in lifecycle_env(request, tmp_path_factory, "handover_bk"):
        taken = backup.run_backup(reason="pre_load")
        yield {**env, "backup_id": taken["backup_id"], "taken": taken}


def _scratch_databases() -> set[str]:
    with psycopg.connect(pg_dsn("postgres")) as conn:
        return {
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'handover_drill_%'"
            )
        }


def test_backup_catalogue_manifest_and_ledger_agree(env):
    bid, lake = env["backup_id"], env["lake"]
    manifest = json.loads((lake / "backups" / bid / "manifest.json").read_text())
    with psycopg.connect(env["dsn"]) as conn:
        status, tables, rows, msha = conn.execute(
            "SELECT status, tables, rows, manifest_sha256 FROM handover_meta.backup "
            "WHERE backup_id = %s",
            (bid,),
        ).fetchone()
        booked = dict(
            conn.execute(
                "SELECT table_name, rows_out FROM handover_meta.ledger "
                "WHERE run_id = %s AND stage = 'backup'",
                (bid,),
            ).fetchall()
        )
        counts = {
            f"crm.{t}": conn.execute(f"SELECT count(*) FROM crm.{t}").fetchone()[0]
            for t in ("customer", "call_record", "browsing_event")
        }
    assert status == "complete"
    assert (
        msha == hashlib.sha256((lake / "backups" / bid / "manifest.json").read_bytes()).hexdigest()
    )
    names = {f["table"] for f in manifest["files"]}
    assert {
        "crm.customer",
        "crm.call_record",
        "handover_meta.ledger",
        "handover_meta.audit_log",
        "handover_meta.backup",
    } <= names
    assert tables == len(names) and rows == sum(f["rows"] for f in manifest["files"])
    assert booked == {f["table"]: f["rows"] for f in manifest["files"]}
    for table, n in counts.items():  # crm did not change since the snapshot
        assert booked[table] == n > 0
    ids = set()
    for f in manifest["files"]:
        blob = (lake / "backups" / bid / f["file"]).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == f["sha256"]
        assert b"PAR1" not in blob  # encrypted, not a Parquet file
        key = json.loads(
            (
                lake / "backup-keys" / bid / f"{f['file'].removesuffix('.parquet.enc')}.json"
            ).read_text()
        )
        assert key["data_key_id"] == f["data_key_id"] and "wrapped" in key
        ids.add(f["data_key_id"])
    assert len(ids) == len(manifest["files"])  # one data key per file
    ids_in_source = (env["source"] / "subscribers.csv").read_text().splitlines()[1].split(",")[2]
    assert ids_in_source.encode() not in (lake / "backups" / bid / "manifest.json").read_bytes()


def test_restore_drill_restores_verifies_and_is_audited(env):
    before = _scratch_databases()
    out = restore.run_drill()
    assert out["success"] and out["backup_id"] == env["backup_id"]
    assert out["time_to_restore_seconds"] > 0 and out["rows"] == env["taken"]["rows"]
    assert _scratch_databases() == before  # the scratch database is gone
    with psycopg.connect(env["dsn"]) as conn:
        drill = conn.execute(
            "SELECT success, restore_seconds, verify_seconds, tables, "
            "finished_at FROM handover_meta.restore_drill WHERE drill_id = %s",
            (out["drill_id"],),
        ).fetchone()
        audit = conn.execute(
            "SELECT detail FROM handover_meta.audit_log WHERE action = "
            "'restore_drill' ORDER BY id DESC LIMIT 1"
        ).fetchone()[0]
    assert drill[0] is True and drill[1] > 0 and drill[2] > 0 and drill[4] is not None
    assert audit["result"] == "passed" and audit["drill_id"] == out["drill_id"]
    assert audit["time_to_restore_seconds"] > 0


def test_corrupted_backup_file_fails_with_one_clear_line(env):
    bad = backup.run_backup(reason="manual")["backup_id"]
    path = env["lake"] / "backups" / bad / "crm.call_record.parquet.enc"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    before = _scratch_databases()
    with pytest.raises(backup.BackupCorrupt) as err:
        restore.run_drill(bad)
    message = str(err.value)
    assert "\n" not in message
    assert "crm.call_record.parquet.enc" in message and "corrupt" in message
    assert "restore an earlier backup" in message and "backup DAG" in message
    assert _scratch_databases() == before
    with pytest.raises(backup.BackupCorrupt, match="crm.call_record.parquet.enc"):
        backup.verify_backup(bad)
    # As a task body, the same fault fails at once (no retry) with the same single line.
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException) as failed:
        tasks.call(restore.restore_backup, bad)
    assert str(failed.value).startswith("BackupCorrupt: backup ")
    assert "\n" not in str(failed.value) and "crm.call_record.parquet.enc" in str(failed.value)
    with psycopg.connect(env["dsn"]) as conn:
        ok, failure = conn.execute(
            "SELECT success, failure FROM handover_meta.restore_drill WHERE backup_id = %s", (bad,)
        ).fetchone()
        audited = conn.execute(
            "SELECT detail FROM handover_meta.audit_log WHERE action = "
            "'restore_drill_failed' ORDER BY id DESC LIMIT 1"
        ).fetchone()[0]
    assert ok is False and "crm.call_record.parquet.enc" in failure
    assert audited["backup_id"] == bad


def test_expired_backups_are_deleted_and_the_newest_kept(env):
    short = backup.run_backup(reason="manual", retention_days=1)["backup_id"]
    newest = backup.run_backup(reason="manual", retention_days=1)["backup_id"]
    out = backup.expire_backups(now=datetime.now(UTC) + timedelta(days=2))
    assert short in out["expired"] and newest not in out["expired"]
    assert not list((env["lake"] / "backups" / short).rglob("*.*"))
    assert not list((env["lake"] / "backup-keys" / short).rglob("*.*"))
    assert Path(env["lake"] / "backups" / newest / "manifest.json").is_file()
    with psycopg.connect(env["dsn"]) as conn:
        status = dict(
            conn.execute(
                "SELECT backup_id, status FROM handover_meta.backup WHERE backup_id = ANY(%s)",
                ([short, newest],),
            ).fetchall()
        )
        expired = conn.execute(
            "SELECT count(*) FROM handover_meta.audit_log WHERE action = "
            "'backup_expired' AND detail->>'backup_id' = %s",
            (short,),
        ).fetchone()[0]
    assert status == {short: "expired", newest: "complete"} and expired == 1
