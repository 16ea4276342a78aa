"""The backup and restore_drill DAGs through Airflow itself (`airflow dags test`).

Airflow's metadata and the target are fresh databases on the machine's PostgreSQL; the
lake is a temporary folder; the target holds a few rows written here (the migration's
own end-to-end test covers loading). Asserts what on-call staff see: a pre-load backup
completes and is catalogued, and the drill restores and verifies it, records itself and
drops its scratch database in its teardown. (A damaged backup file failing the drill in
one line is covered, through the same task wrapper, by tests/integration.)
"""

from __future__ import annotations

import json
import subprocess

import psycopg
import pytest

from tests.conftest import AIRFLOW, ROOT, fresh_airflow, pg_dsn

pytestmark = pytest.mark.e2e


def _seed_target(dsn: str) -> None:
    """The schemas (the project's DDL) and a handful of rows in crm."""
    from handover.lifecycle.backup import ensure_lifecycle_schema

    with psycopg.connect(dsn) as conn:
        ensure_lifecycle_schema(conn)
        with conn.transaction():
            for i in range(3):
                cid = f"C9000000{i}"
                conn.execute(
                    "INSERT INTO crm.customer (customer_id, full_name, id_number_enc, "
                    "id_number_key_id, id_number_bidx, id_number_masked, gender, birth_date, "
                    "msisdn, msisdn_bidx, msisdn_masked, city, opened_on, status, "
                    "source_updated_at) VALUES (%s, '测试', %s, 'k1', %s, '110***1234', 'F', "
                    "'1990-01-01', '13800138000', %s, '138****8000', '北京市', '2020-01-01', "
                    "'active', '2026-01-01 00:00:00')",
                    (cid, bytes([i]) * 40, f"bidx{i}", f"mbidx{i}"),
                )
                conn.execute(
                    "INSERT INTO crm.call_record (cdr_id, customer_id, caller_msisdn, "
                    "callee_msisdn, started_at, duration_s, cell_id, charge_fen) VALUES (%s, %s, "
                    "'13800138000', '13900139000', '2026-05-01 10:00:00', 60, '460-00-1-2', 15)",
                    (f"R9{i}", cid),
                )


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory, keyring_file):
    root = tmp_path_factory.mktemp("lifecycle_e2e")
    with fresh_airflow(root, keyring_file, target_prefix="handover_lc_e2e") as af:
        _seed_target(pg_dsn(af["target"]))
        yield {"env": af["env"], "root": root, "dsn": pg_dsn(af["target"])}


def _airflow(env, *args, timeout=600):
    return subprocess.run(
        [AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_pre_load_backup_then_weekly_drill(airflow_env):
    env, dsn = airflow_env["env"], airflow_env["dsn"]
    run = _airflow(
        env,
        "dags",
        "test",
        "backup",
        "-f",
        str(ROOT / "dags" / "backup.py"),
        "-c",
        json.dumps({"reason": "pre_load"}),
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    with psycopg.connect(dsn) as conn:
        backup_id, status, reason = conn.execute(
            "SELECT backup_id, status, reason FROM handover_meta.backup "
            "ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
    assert status == "complete" and reason == "pre_load"
    assert (airflow_env["root"] / "lake" / "backups" / backup_id / "manifest.json").is_file()

    drill = _airflow(
        env, "dags", "test", "restore_drill", "-f", str(ROOT / "dags" / "restore_drill.py")
    )
    assert drill.returncode == 0, (drill.stdout + drill.stderr)[-3000:]
    with psycopg.connect(dsn) as conn:
        ok, seconds, bid = conn.execute(
            "SELECT success, restore_seconds, backup_id FROM handover_meta.restore_drill "
            "ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
        audited = conn.execute(
            "SELECT count(*) FROM handover_meta.audit_log WHERE action = 'restore_drill'"
        ).fetchone()[0]
        scratch = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE "
            "'handover_drill_%' AND datname = (SELECT scratch_db FROM "
            "handover_meta.restore_drill ORDER BY started_at DESC LIMIT 1)"
        ).fetchone()[0]
    assert ok is True and seconds > 0 and bid == backup_id and audited == 1
    assert scratch == 0  # the teardown dropped the scratch database


def test_subject_request_runs_on_the_request_id_alone(airflow_env):
    """The privacy officer's path: submit (identifier piped, stored sealed), trigger with
    only the request id; a run config carrying the identifier fails its first task."""
    env, dsn = airflow_env["env"], airflow_env["dsn"]
    dag_file = str(ROOT / "dags" / "subject_request.py")
    submitted = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "python"),
            "-m",
            "handover.lifecycle.subject",
            "submit",
            "REQ-e2e-1",
            "--type",
            "access",
        ],
        input="C90000001\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    run = _airflow(
        env,
        "dags",
        "test",
        "subject_request",
        "-f",
        dag_file,
        "-c",
        json.dumps({"request_id": "REQ-e2e-1"}),
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    with psycopg.connect(dsn) as conn:
        status = conn.execute(
            "SELECT status FROM handover_meta.subject_request WHERE request_id = 'REQ-e2e-1'"
        ).fetchone()[0]
        sealed = conn.execute(
            "SELECT sealed FROM handover_meta.subject_intake WHERE request_id = 'REQ-e2e-1'"
        ).fetchone()[0]
    assert status == "done" and sealed is None
    assert (
        airflow_env["root"] / "lake" / "subject-requests" / "REQ-e2e-1" / "access-export.json.enc"
    ).is_file()

    leaky = _airflow(
        env,
        "dags",
        "test",
        "subject_request",
        "-f",
        dag_file,
        "-c",
        json.dumps({"request_id": "REQ-e2e-2", "identifier": "C90000002"}),
    )
    out = leaky.stdout + leaky.stderr
    assert leaky.returncode != 0, out[-3000:]
    assert "identifier in the run config" in out and "validate_request" in out
    with psycopg.connect(dsn) as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM handover_meta.subject_request WHERE request_id = 'REQ-e2e-2'"
            ).fetchone()[0]
            == 0
        )
