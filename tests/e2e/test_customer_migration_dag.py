"""End to end through Airflow itself: `airflow dags test` and `airflow tasks test`.

Airflow's metadata and the target live on the machine's PostgreSQL (fresh databases);
the lake is a temporary folder. Asserts what on-call staff rely on: the run succeeds
with a balanced ledger, rerunning one load task instance or the whole DAG leaves every
target table identical, and the demo command works from scratch on embedded defaults.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from handover.config.loader import load_config
from handover.db.load import table_checksum
from handover.protection.fields import Keyring
from handover_synth import acquirer as synth_acquirer
from handover_synth import legacy_bss as synth
from tests.conftest import (
    AIRFLOW,
    ROOT,
    create_database,
    drop_database,
    fresh_airflow,
    pg_dsn,
    pg_url,
)

pytestmark = pytest.mark.e2e


def _checksums(dsn: str) -> dict:
    cfg = load_config("legacy_bss")
    with psycopg.connect(dsn) as conn:
        return {
            t: table_checksum(
                conn, "crm", cfg.table_mapping(t)["target"], cfg.table_mapping(t)["key"]
            )
            for t in cfg.tables
        }


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory, keyring_file):
    root = tmp_path_factory.mktemp("e2e")
    # INFO: the PII test searches every line the tasks logged.
    with fresh_airflow(root, keyring_file, target_prefix="handover_e2e", log_level="INFO") as af:
        synth.generate(root / "source", 1000, seed=11)
        # The target is the acquirer's CRM: it already holds customers of its own, some of
        # them persons of the export (merged into them by the run; docs/identity.md).
        ring = Keyring.from_dict(json.loads(keyring_file.read_text()))
        af["acquirer"] = synth_acquirer.seed(
            pg_dsn(af["target"]), root / "source", root, share=0.1, others=20, ring=ring
        )
        yield af


def _airflow(env, *args, timeout=900):
    """Run an airflow command; its output (the task logs, for `dags test`) is kept in
    AIRFLOW_HOME/command-logs so the PII test can search every line that was logged."""
    run = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout)
    logs = Path(env["AIRFLOW_HOME"]) / "command-logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{len(list(logs.iterdir())):03d}-{args[0]}-{args[1]}.log").write_text(
        run.stdout + run.stderr
    )
    return run


def test_dag_run_balances_and_reruns_change_nothing(airflow_env):
    env, dsn = airflow_env["env"], pg_dsn(airflow_env["target"])
    conf = json.dumps({"source_dir": str(airflow_env["root"] / "source")})
    first = _airflow(env, "dags", "test", "customer_migration", "-c", conf)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    with psycopg.connect(dsn) as conn:
        run_id, status = conn.execute(
            "SELECT run_id, status FROM handover_meta.run ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
        recon = conn.execute(
            "SELECT table_name, source_rows, loaded + merged + quarantined + excluded, "
            "balanced FROM handover_meta.reconciliation WHERE run_id=%s",
            (run_id,),
        ).fetchall()
    assert status == "succeeded"
    assert len(recon) == 7 and all(n == acc and ok for _, n, acc, ok in recon)
    with psycopg.connect(dsn) as conn:  # the acquirer's persons were merged, not doubled
        merged = conn.execute(
            "SELECT count(*) FROM handover_meta.merge_map WHERE run_id = %s "
            "AND rule = 'EXISTING_CUSTOMER'",
            (run_id,),
        ).fetchone()[0]
    assert merged == airflow_env["acquirer"]["also_in_export"]
    before = _checksums(dsn)

    # On-call clears one mapped load instance and runs it again.
    again = _airflow(env, "tasks", "test", "customer_migration", "load", run_id, "--map-index", "3")
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert _checksums(dsn) == before

    # A second full run of the DAG on the same export.
    second = _airflow(env, "dags", "test", "customer_migration", "-c", conf)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    assert _checksums(dsn) == before


def test_gate_failure_is_one_clear_line_and_stops_before_load(airflow_env, tmp_path):
    """A source column the catalog does not know fails the intake gate; nothing loads."""
    env = dict(airflow_env["env"])
    target = create_database("handover_drift")
    env["AIRFLOW_CONN_HANDOVER_TARGET"] = pg_url(target, "postgres")
    try:
        src = tmp_path / "drifted"
        synth.generate(src, 300, seed=3)
        lines = (src / "payments.csv").read_text().splitlines()
        lines = [lines[0] + ",coupon_code"] + [line + ",X1" for line in lines[1:]]
        (src / "payments.csv").write_text("\n".join(lines) + "\n")
        manifest = json.loads((src / "export_manifest.json").read_text())
        # the operator's export has the column: its manifest seals the file as it is
        manifest["tables"]["payments"]["sha256"] = hashlib.sha256(
            (src / "payments.csv").read_bytes()
        ).hexdigest()
        (src / "export_manifest.json").write_text(json.dumps(manifest))
        run = _airflow(
            env, "dags", "test", "customer_migration", "-c", json.dumps({"source_dir": str(src)})
        )
        assert run.returncode != 0
        out = run.stdout + run.stderr
        assert "intake gate failed for payments partition p00" in out
        assert "coupon_code" in out
        with psycopg.connect(pg_dsn(target)) as conn:
            loaded = conn.execute(
                "SELECT count(*) FROM handover_meta.ledger WHERE stage = 'load'"
            ).fetchone()[0]
        assert loaded == 0
    finally:
        drop_database(target)


def test_demo_command_on_embedded_defaults(tmp_path):
    """`make demo`'s script from scratch: embedded PostgreSQL, local lake, summary."""
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HANDOVER"))}
    env.update(HANDOVER_STATE=str(state), SUBSCRIBERS="1000")
    try:
        run = subprocess.run(
            ["bash", str(ROOT / "scripts" / "demo.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
        rows = [
            line
            for line in run.stdout.splitlines()
            if "in = loaded + merged + quarantined + excluded" in line
        ]
        assert len(rows) == 7, run.stdout
        assert "report:" in run.stdout and "validation docs:" in run.stdout
        assert any(state.joinpath("lake", "runs").glob("*/reports/report.html"))
    finally:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "handover.storage.embedded",
                "stop",
                "--pgdata",
                str(state / "pgdata"),
            ],
            env={**env, "PYTHONPATH": str(ROOT / "include")},
            capture_output=True,
            timeout=60,
        )


def test_planted_pii_appears_nowhere_in_clear(airflow_env):
    """Resident IDs and MSISDNs of the export and of the acquirer's own customers (the
    person map, the review queue, the books included): not in task logs, XCom, validation results,
    Data Docs, reports, or any target column other than the access-controlled MSISDN
    columns (resident IDs: nowhere at all, only ciphertext, blind index and mask)."""
    import pandas as pd
    from sqlalchemy import create_engine, text

    env, root = airflow_env["env"], airflow_env["root"]
    source = root / "source"
    subs = pd.read_csv(source / "subscribers.csv", dtype=str)
    ids = {v.strip().upper() for v in subs["id_number"].dropna() if len(v.strip()) == 18}
    phones = {v for v in subs["msisdn"].dropna() if v.isdigit() and len(v) == 11}
    assert len(ids) > 500 and len(phones) > 500
    with psycopg.connect(pg_dsn(airflow_env["target"])) as conn:  # the acquirer's own too
        phones |= {
            r[0]
            for r in conn.execute("SELECT msisdn FROM crm.customer WHERE customer_id LIKE 'K88-%%'")
        }

    def leaks(blob: str, secrets: set[str]) -> list[str]:
        return [s for s in secrets if s in blob][:3]

    # 1. every Airflow task log of every run so far
    logs = "\n".join(
        p.read_text(errors="ignore") for p in (root / "airflow").rglob("*.log") if p.is_file()
    )
    assert "customer_migration" in logs and "cleanse" in logs, "no task logs found"
    assert leaks(logs, ids | phones) == []
    # 2. XCom values in Airflow's metadata database
    engine = create_engine(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    with engine.connect() as conn:
        xcom = "\n".join(str(r[0]) for r in conn.execute(text("SELECT value FROM xcom")))
    assert xcom and leaks(xcom, ids | phones) == []
    # 3. validation results, Data Docs, reports, reconciliation files in the lake
    lake_text = "\n".join(
        p.read_text(errors="ignore")
        for run in (root / "lake" / "runs").iterdir()
        for sub in ("docs", "docs.gx", "reports", "reconcile")
        if (run / sub).exists()
        for p in (run / sub).rglob("*")
        if p.is_file() and p.suffix in (".html", ".json")
    )
    assert lake_text and leaks(lake_text, ids | phones) == []
    # 4. every target column: no resident ID anywhere; MSISDNs only in the MSISDN columns
    allowed_phone_cols = {"msisdn", "caller_msisdn", "callee_msisdn"}
    with psycopg.connect(pg_dsn(airflow_env["target"])) as conn:
        cols = conn.execute(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns "
            "WHERE table_schema IN ('crm', 'crm_masked', 'handover_meta') "
            "AND data_type IN ('text', 'character', 'character varying', 'jsonb')"
        ).fetchall()
        for schema, table, col in cols:
            values = "\n".join(
                str(r[0])
                for r in conn.execute(
                    f'SELECT "{col}"::text FROM "{schema}"."{table}" WHERE "{col}" IS NOT NULL'
                )
            )
            assert leaks(values, ids) == [], f"resident ID in clear in {schema}.{table}.{col}"
            if col not in allowed_phone_cols or schema != "crm":
                assert leaks(values, phones) == [], f"MSISDN in clear in {schema}.{table}.{col}"


_TINY_DAG = """
import logging
from datetime import timedelta

from airflow.sdk import dag, get_current_context, task

log = logging.getLogger("tiny")


@dag(schedule=None, catchup=False)
def tiny_logs():
    @task
    def first():
        log.info("marker-first says hello")
        return [1, 2]

    @task(retries=1, retry_delay=timedelta(seconds=0))
    def flaky(x):
        try_number = get_current_context()["ti"].try_number
        log.warning("marker-flaky-%s try %s", x, try_number)
        if x == 2 and try_number == 1:
            raise ValueError("marker-flaky-2 fails its first try")
        return x

    @task
    def last(xs):
        log.info("marker-last got %s", sorted(xs))

    last(flaky.expand(x=first()))


tiny_logs()
"""

# What the UI's log view of each try must show, and what it must not (another task's lines).
_EXPECTED_TASK_LOGS = {
    ("first", -1, 1): "marker-first says hello",
    ("flaky", 0, 1): "marker-flaky-1 try 1",
    ("flaky", 1, 1): "marker-flaky-2 try 1",
    ("flaky", 1, 2): "marker-flaky-2 try 2",
    ("last", -1, 1): "marker-last got [1, 2]",
}

_READ_AS_THE_UI = """
import json, sys
from sqlalchemy import select
from airflow.models.taskinstance import TaskInstance
from airflow.models.taskinstancehistory import TaskInstanceHistory
from airflow.utils.log.log_reader import TaskLogReader
from airflow.utils.session import create_session

reader, out = TaskLogReader(), {}
with create_session() as session:
    for model in (TaskInstance, TaskInstanceHistory):
        for ti in session.scalars(select(model).where(model.dag_id == "tiny_logs")):
            stream, _ = reader.read_log_chunks(ti, ti.try_number, {})
            out[f"{ti.task_id} {ti.map_index} {ti.try_number}"] = [
                m.model_dump(mode="json") for m in stream]
json.dump(out, sys.stdout)
"""


def test_demo_task_logs_are_where_the_ui_reads_them(tmp_path):
    """make demo runs `airflow dags test` (one process, no task log files) and then
    handover.ops.demo_logs splits its JSON log: each try of each task instance gets the lines
    it logged, byte for byte, in the file the api-server reads for it, so the UI's log view
    shows them after `make up`. A real `dags test` of a small DAG (a mapped task, a retry),
    read back through Airflow's own TaskLogReader."""
    from tests.conftest import create_airflow_database, make_airflow_env

    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "tiny_logs.py").write_text(_TINY_DAG)
    meta = create_airflow_database("handover_demo_logs")  # migrated (the session's template)
    try:
        env = make_airflow_env(tmp_path / "airflow", meta, dags=dags, log_level="INFO")
        # as scripts/demo.sh runs it
        run = subprocess.run(
            [AIRFLOW, "dags", "test", "tiny_logs"],
            capture_output=True,
            env={**env, "AIRFLOW__LOGGING__JSON_LOGS": "True"},
            timeout=300,
        )
        full = run.stdout + run.stderr
        assert run.returncode == 0, full[-3000:]
        log = tmp_path / "demo-run.jsonl"
        log.write_bytes(full)
        split = subprocess.run(
            [sys.executable, "-m", "handover.ops.demo_logs", "split", str(log)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert split.returncode == 0, split.stderr[-3000:]
        rendered = subprocess.run(
            [sys.executable, "-m", "handover.ops.demo_logs", "render"],
            input=full,
            env=env,
            capture_output=True,
            timeout=120,
        )
        assert rendered.returncode == 0, rendered.stderr[-3000:]

        # the files, at the default log_filename_template's paths under base_log_folder
        runs = list((tmp_path / "airflow" / "logs" / "dag_id=tiny_logs").glob("run_id=*"))
        assert len(runs) == 1, runs
        lines = full.splitlines(keepends=True)
        for (task_id, map_index, try_number), marker in _EXPECTED_TASK_LOGS.items():
            path = runs[0] / f"task_id={task_id}"
            if map_index >= 0:
                path = path / f"map_index={map_index}"
            path = path / f"attempt={try_number}.log"
            assert path.is_file(), sorted(p.name for p in runs[0].rglob("*.log"))
            text = path.read_bytes()
            assert marker.encode() in text
            others = [
                m for k, m in _EXPECTED_TASK_LOGS.items() if k != (task_id, map_index, try_number)
            ]
            assert not [m for m in others if m.encode() in text], (path, text[-2000:])
            # byte for byte: a contiguous run of the `dags test` output's own lines
            own = text.splitlines(keepends=True)
            start = lines.index(own[0])
            assert lines[start : start + len(own)] == own
            assert all(json.loads(line)["timestamp"] for line in own if line.startswith(b"{"))
        assert len(list(runs[0].rglob("*.log"))) == len(_EXPECTED_TASK_LOGS)

        # what the api-server hands the UI's log view for each try
        seen = subprocess.run(
            [sys.executable, "-c", _READ_AS_THE_UI],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert seen.returncode == 0, seen.stderr[-3000:]
        views = json.loads(seen.stdout)
        assert set(views) == {f"{t} {m} {n}" for t, m, n in _EXPECTED_TASK_LOGS}
        for (task_id, map_index, try_number), marker in _EXPECTED_TASK_LOGS.items():
            messages = views[f"{task_id} {map_index} {try_number}"]
            events = [m["event"] for m in messages]
            assert any(marker in e for e in events), events
            logged = next(m for m in messages if marker in m["event"])
            assert logged["logger"] == "tiny" and logged["level"] in ("info", "warning")
            if (task_id, map_index, try_number) == ("flaky", 1, 1):
                failed = next(m for m in messages if m.get("exception"))
                assert failed["level"] == "error"
                assert failed["exception"][0]["exc_type"] == "ValueError"

        # the full log stays readable text, as `dags test` prints it without json_logs
        text = rendered.stdout.decode()
        assert "[info     ] marker-first says hello        [tiny] loc=tiny_logs.py:" in text
        assert "Traceback (most recent call last):" in text
        assert "ValueError: marker-flaky-2 fails its first try" in text
        assert len(text.splitlines()) >= len(full.splitlines())
    finally:
        drop_database(meta)
