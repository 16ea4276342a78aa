"""Faults that need Airflow itself: the DAG's gate barrier, and the scheduler killed mid-run.

The library-level faults (load killed, PostgreSQL stopped, S3 unreachable, disk full, a
gate failing) are in tests/integration/test_faults.py; the matrix is docs/reliability.md.
Airflow's metadata lives in a fresh database on the machine's PostgreSQL; every wait on
a component is bounded.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from handover import synth
from tests.conftest import (
    ROOT,
    assert_ledger_balanced,
    content_checksums,
    create_database,
    drop_database,
    free_port,
    make_system,
    pg_dsn,
    pg_url,
    run_stages,
    stop_process,
)

pytestmark = pytest.mark.e2e
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DAG_ID = "customer_migration"
GATE_TABLES = ("subscribers", "complaints")
# Not subscribers alone: with no child table, resolve_customers skips de-duplication and
# a duplicate person fails the load (see test_corpus duplicate_person_without_child_tables).
SCHEDULER_TABLES = ("subscribers", "payments")
ORDER_NO = "订单号202611010000123456未到账"  # 18 digits, not an ID, not a card: not redacted
PRE_LOAD_GATES = ("validate_intake", "validate_compliance", "validate_quality",
                  "validate_contract")

PROBE = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag

dag = DagBag(dag_folder=sys.argv[1]).dags["customer_migration"]

def expand_from(t):
    ei = getattr(t, "op_kwargs_expand_input", None) or getattr(t, "expand_input", None)
    return sorted({v.operator.task_id for v in getattr(ei, "value", {}).values()
                   if hasattr(v, "operator")})

print(json.dumps({t.task_id: {
    "upstream": sorted(t.upstream_task_ids),
    "ancestors": sorted(a.task_id for a in t.get_flat_relatives(upstream=True)),
    "trigger_rule": str(getattr(t.trigger_rule, "value", t.trigger_rule)),
    "mapped": bool(getattr(t, "is_mapped", False)),
    "expand_from": expand_from(t),
    "retries": t.retries,
} for t in dag.tasks}))
"""


def _base_env(home: Path, dags: Path = ROOT / "dags") -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HANDOVER"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT / "include"),
        "PYTHONWARNINGS": "ignore",
    })
    return env


def test_loads_wait_for_every_contract_gate(tmp_path):
    """Structure: `load` expands over the whole output of the mapped contract gate, so no
    load instance exists before every contract-gate instance has succeeded, and every
    earlier gate is upstream of it; a failed gate leaves every load upstream_failed."""
    env = _base_env(tmp_path / "home")
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = "postgresql+psycopg2://nobody@127.0.0.1:1/none"
    run = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "dags" / f"{DAG_ID}.py")],
                         env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    tasks = json.loads(run.stdout.strip().splitlines()[-1])
    load = tasks["load"]
    assert load["mapped"] and load["expand_from"] == ["validate_contract"]
    assert load["upstream"] == ["plan_run", "validate_contract"]
    assert load["trigger_rule"] == "all_success"
    assert set(PRE_LOAD_GATES) <= set(load["ancestors"])
    for gate in PRE_LOAD_GATES:
        assert tasks[gate]["mapped"] and tasks[gate]["retries"] == 0
    # Nothing but `load` (and what follows it) writes the target's tables.
    writers = {t for t, spec in tasks.items() if "load" in spec["ancestors"] or t == "load"}
    assert writers == {"load", "reconcile_table", "validate_reconciliation", "publish"}


# ---------------------------------------------------------------- a real Airflow
@pytest.fixture(scope="module")
def airflow(tmp_path_factory, keyring_file):
    """A fresh, migrated metadata database and the environment every component shares."""
    root = tmp_path_factory.mktemp("af_faults")
    # Only the migration DAG: the project's scheduled DAGs (backup, restore drill, nightly
    # sync, retention) would otherwise run against the test's target as soon as a
    # scheduler starts.
    dags = root / "dags"
    dags.mkdir()
    shutil.copy(ROOT / "dags" / f"{DAG_ID}.py", dags / f"{DAG_ID}.py")
    meta = create_database("handover_af_faults")
    env = _base_env(root / "home", dags)
    env.update({
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg_url(meta, "postgresql+psycopg2"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW_CONN_HANDOVER_KEYS": json.dumps(
            {"conn_type": "generic", "extra": json.loads(Path(keyring_file).read_text())}),
    })
    migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    yield {"root": root, "env": env, "meta": meta}
    drop_database(meta)


def _export(dest: Path, subscribers: int, seed: int, order_no: bool = False) -> Path:
    synth.generate(dest, subscribers, seed=seed)
    if order_no:
        rows = list(csv.reader(io.StringIO((dest / "complaints.csv").read_text())))
        col = rows[0].index("text")
        for r in rows[1:]:
            r[col] += ORDER_NO
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        (dest / "complaints.csv").write_text(buf.getvalue())
    return dest


def _task_states(meta: str, run_id: str) -> dict[str, list[str]]:
    with psycopg.connect(pg_dsn(meta)) as conn:
        rows = conn.execute("SELECT task_id, coalesce(state, 'none') FROM task_instance "
                            "WHERE dag_id=%s AND run_id=%s ORDER BY task_id, map_index",
                            (DAG_ID, run_id)).fetchall()
    out: dict[str, list[str]] = {}
    for task_id, state in rows:
        out.setdefault(task_id, []).append(state)
    return out


def test_contract_gate_failing_on_one_table_loads_nothing(airflow, tmp_path):
    """Behaviour: `airflow dags test` with complaints failing its contract gate while the
    other tables pass theirs: no load instance runs, the target stays empty, the run is
    not published."""
    env = dict(airflow["env"])
    target = create_database("handover_af_gate")
    env["AIRFLOW_CONN_HANDOVER_TARGET"] = pg_url(target, "postgres")
    env["HANDOVER_LAKE_URL"] = f"file://{tmp_path / 'lake'}"
    try:
        src = _export(tmp_path / "source", 150, seed=31, order_no=True)
        system = make_system(tmp_path / "system", GATE_TABLES)
        conf = json.dumps({"source_dir": str(src), "system": str(system)})
        run = subprocess.run([AIRFLOW, "dags", "test", DAG_ID, "-c", conf], env=env,
                             capture_output=True, text=True, timeout=900)
        out = run.stdout + run.stderr
        assert run.returncode != 0, out[-3000:]
        assert "contract gate failed for complaints" in out
        with psycopg.connect(pg_dsn(airflow["meta"])) as conn:
            run_id = conn.execute("SELECT run_id FROM dag_run WHERE dag_id=%s AND conf::text "
                                  "LIKE %s ORDER BY id DESC LIMIT 1",
                                  (DAG_ID, f"%{system.name}%")).fetchone()[0]
        states = _task_states(airflow["meta"], run_id)
        assert "failed" in states["validate_contract"]
        assert states["validate_contract"].count("success") == len(GATE_TABLES) - 1
        assert set(states["load"]) == {"upstream_failed"}, states["load"]
        with psycopg.connect(pg_dsn(target)) as conn:
            loads = conn.execute("SELECT count(*) FROM handover_meta.ledger WHERE "
                                 "stage='load'").fetchone()[0]
            rows = conn.execute("SELECT (SELECT count(*) FROM crm.customer) + "
                                "(SELECT count(*) FROM crm.complaint)").fetchone()[0]
            status = conn.execute("SELECT status FROM handover_meta.run").fetchone()[0]
        assert (loads, rows, status) == (0, 0, "running")
        assert not list((tmp_path / "lake").rglob("reports/*"))
    finally:
        drop_database(target)


# ---------------------------------------------------------------- the scheduler killed
HEAVY = os.environ.get("HANDOVER_SCHEDULER_FAULT") == "1"


class Component:
    """One Airflow process (api-server, scheduler, dag-processor) in its own session."""

    def __init__(self, name: str, args: list[str], env: dict, logs: Path):
        self.name, self.args, self.env, self.logs = name, args, env, logs
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        log = open(self.logs / f"{self.name}.log", "ab")
        # Each its own log-server port: 8793 may be taken by another Airflow on the machine.
        env = {**self.env, "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}
        try:
            self.proc = subprocess.Popen([AIRFLOW, *self.args], env=env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        finally:
            log.close()

    def kill_main(self) -> None:
        """SIGKILL the component's main process only, as a crash would."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=20)
            try:  # children a SIGKILLed main process left behind share its session
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def tail(self) -> str:
        path = self.logs / f"{self.name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _task_errors(home: Path, run_id: str) -> list[str]:
    """The exception line of every failed task attempt of a run, from its task logs."""
    import re

    found = []
    for log in sorted((home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}").rglob("*.log")):
        for m in re.finditer(r"""["']exc_type["']: ?["'](\w+)["'], ?["']exc_value["']: ?"""
                             r"""["']([^"']{0,300})""", log.read_text(errors="replace")):
            found.append(f"{log.parent.name}/{log.name}: {m.group(1)}: {m.group(2)}")
    return found


def _until(predicate, timeout: float, what: str, components=(), interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        for c in components:
            if c.proc.poll() is not None:
                raise AssertionError(f"{c.name} exited ({c.proc.returncode}) while waiting for "
                                     f"{what}:\n{c.tail()}")
        time.sleep(interval)
    tails = "\n".join(f"--- {c.name}\n{c.tail()}" for c in components)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")


@pytest.mark.skipif(not HEAVY, reason=(
    "opt-in (HANDOVER_SCHEDULER_FAULT=1): a real api-server + scheduler + dag-processor run "
    "takes 100-200 s on 2 shared cores, and in the full suite right after the Celery tests it "
    "failed once in CI-like conditions while passing alone; kept out of make test until that "
    "is understood"))
def test_scheduler_killed_and_restarted_mid_run(airflow, tmp_path):
    """SIGKILL the scheduler while the run is in its mapped stages, start a new one: the run
    completes, the target equals a clean run's, the ledger balances."""
    env = dict(airflow["env"])
    target = create_database("handover_af_sched")
    clean_db = create_database("handover_af_sched_clean")
    port = free_port()
    env.update({
        "AIRFLOW_CONN_HANDOVER_TARGET": pg_url(target, "postgres"),
        "HANDOVER_LAKE_URL": f"file://{tmp_path / 'lake'}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex * 2,
        "AIRFLOW__API__SECRET_KEY": uuid.uuid4().hex,
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "10",
        "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
    })
    logs = tmp_path / "logs"
    logs.mkdir()
    src = _export(tmp_path / "source", 150, seed=41)
    system = make_system(tmp_path / "system", SCHEDULER_TABLES)
    run_id = f"faults_sched_{uuid.uuid4().hex[:6]}"
    meta = airflow["meta"]
    components: list[Component] = []
    try:
        api = Component("api-server", ["api-server", "--host", "127.0.0.1", "--port",
                                       str(port)], env, logs)
        processor = Component("dag-processor", ["dag-processor"], env, logs)
        scheduler = Component("scheduler", ["scheduler"], env, logs)
        components += [api, processor, scheduler]

        def parsed():
            with psycopg.connect(pg_dsn(meta)) as conn:
                return conn.execute("SELECT 1 FROM serialized_dag WHERE dag_id=%s",
                                    (DAG_ID,)).fetchone()
        _until(parsed, 180, "the dag-processor to serialise the DAG", components)
        conf = json.dumps({"source_dir": str(src), "system": str(system)})
        trigger = subprocess.run([AIRFLOW, "dags", "trigger", DAG_ID, "--run-id", run_id,
                                  "--conf", conf], env=env, capture_output=True, text=True,
                                 timeout=180)
        assert trigger.returncode == 0, (trigger.stdout + trigger.stderr)[-2000:]

        def mid_run():
            states = _task_states(meta, run_id)
            return "success" in states.get("comply", []) and states
        before = _until(mid_run, 300, "the run to reach its mapped stages", components, 0.5)
        scheduler.kill_main()
        assert "success" not in before.get("publish", [])
        time.sleep(3)
        restarted = Component("scheduler-2", ["scheduler"], env, logs)
        components.append(restarted)

        def finished():
            with psycopg.connect(pg_dsn(meta)) as conn:
                row = conn.execute("SELECT state FROM dag_run WHERE dag_id=%s AND run_id=%s",
                                   (DAG_ID, run_id)).fetchone()
            return row and row[0] in ("success", "failed") and row[0]
        state = _until(finished, 420, "the run to finish after the restart",
                       [api, processor, restarted], 2.0)
        assert state == "success", json.dumps(
            [_task_states(meta, run_id), _task_errors(Path(env["AIRFLOW_HOME"]), run_id)])
    finally:
        for c in reversed(components):
            c.stop()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HANDOVER_TARGET_DSN", pg_dsn(clean_db))
            mp.setenv("HANDOVER_LAKE_URL", f"file://{tmp_path / 'clean_lake'}")
            mp.setenv("AIRFLOW_CONN_HANDOVER_KEYS", env["AIRFLOW_CONN_HANDOVER_KEYS"])
            run_stages("clean", src, system, gates=False)
        assert content_checksums(pg_dsn(target), str(system)) == content_checksums(
            pg_dsn(clean_db), str(system))
        assert_ledger_balanced(pg_dsn(target), run_id, SCHEDULER_TABLES)
    finally:
        drop_database(target)
        drop_database(clean_db)
