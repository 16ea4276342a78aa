"""Faults that need Airflow itself: the DAG's gate barrier, and the scheduler killed mid-run.

The library-level faults (load killed, PostgreSQL stopped, S3 unreachable, disk full, a
gate failing) are in tests/integration/test_faults.py; the matrix is docs/reliability.md.
Airflow's metadata lives in fresh databases on the machine's PostgreSQL (the scheduler
test has one of its own); every wait on a component is bounded, and every process a test
starts is killed with its whole session at teardown.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from handover_synth import legacy_bss as synth
from tests.conftest import (
    AIRFLOW,
    PG,
    ROOT,
    assert_ledger_balanced,
    content_checksums,
    create_airflow_database,
    create_database,
    drop_database,
    free_port,
    kill_session,
    make_airflow_env,
    make_system,
    pg_dsn,
    pg_url,
    run_stages,
)

pytestmark = pytest.mark.e2e
DAG_ID = "customer_migration"
GATE_TABLES = ("subscribers", "complaints")
# Not subscribers alone: with no child table, resolve_customers skips de-duplication and
# a duplicate person fails the load (see test_corpus duplicate_person_without_child_tables).
SCHEDULER_TABLES = ("subscribers", "payments")
ORDER_NO = "订单号202611010000123456未到账"  # 18 digits, not an ID, not a card: not redacted
PRE_LOAD_GATES = ("validate_intake", "validate_compliance", "validate_quality", "validate_contract")

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


def test_loads_wait_for_every_contract_gate(tmp_path):
    """Structure: `load` expands over the whole output of the mapped contract gate, so no
    load instance exists before every contract-gate instance has succeeded, and every
    earlier gate is upstream of it; a failed gate leaves every load upstream_failed."""
    env = make_airflow_env(
        tmp_path / "home",
        "none",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=("postgresql+psycopg2://nobody@127.0.0.1:1/none"),
    )
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT / "dags" / f"{DAG_ID}.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
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
def _dags_folder(root: Path) -> Path:
    """Only the migration DAG: the project's scheduled DAGs (backup, restore drill, nightly
    sync, retention) would otherwise run against the test's target as soon as a scheduler
    starts."""
    dags = root / "dags"
    dags.mkdir(parents=True)
    shutil.copy(ROOT / "dags" / f"{DAG_ID}.py", dags / f"{DAG_ID}.py")
    return dags


@pytest.fixture(scope="module")
def airflow(tmp_path_factory, keyring_file):
    """A fresh, migrated metadata database and the environment `airflow dags test` uses."""
    root = tmp_path_factory.mktemp("af_faults")
    meta = create_airflow_database("handover_af_faults")  # migrated (the session's template)
    try:
        env = make_airflow_env(
            root / "home",
            meta,
            dags=_dags_folder(root),
            keyring_file=keyring_file,
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        )
        yield {"root": root, "env": env, "meta": meta}
    finally:
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
        manifest = json.loads((dest / "export_manifest.json").read_text())
        manifest["tables"]["complaints"]["sha256"] = hashlib.sha256(
            (dest / "complaints.csv").read_bytes()
        ).hexdigest()  # the export as sealed
        (dest / "export_manifest.json").write_text(json.dumps(manifest))
    return dest


def _task_states(meta: str, run_id: str) -> dict[str, list[str]]:
    with psycopg.connect(pg_dsn(meta)) as conn:
        rows = conn.execute(
            "SELECT task_id, coalesce(state, 'none') FROM task_instance "
            "WHERE dag_id=%s AND run_id=%s ORDER BY task_id, map_index",
            (DAG_ID, run_id),
        ).fetchall()
    out: dict[str, list[str]] = {}
    for task_id, state in rows:
        out.setdefault(task_id, []).append(state)
    return out


def test_contract_gate_failing_on_one_table_loads_nothing(airflow, tmp_path):
    """Behaviour: `airflow dags test` with complaints failing its contract gate while the
    other tables pass theirs: no load instance runs, the target stays empty, the run is
    not published: its report says it failed, where and why."""
    env = dict(airflow["env"])
    target = create_database("handover_af_gate")
    env["AIRFLOW_CONN_HANDOVER_TARGET"] = pg_url(target, "postgres")
    env["HANDOVER_LAKE_URL"] = f"file://{tmp_path / 'lake'}"
    try:
        src = _export(tmp_path / "source", 150, seed=31, order_no=True)
        system = make_system(tmp_path / "system", GATE_TABLES)
        conf = json.dumps({"source_dir": str(src), "system": str(system)})
        run = subprocess.run(
            [AIRFLOW, "dags", "test", DAG_ID, "-c", conf],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        out = run.stdout + run.stderr
        assert run.returncode != 0, out[-3000:]
        assert "contract gate failed for complaints" in out
        with psycopg.connect(pg_dsn(airflow["meta"])) as conn:
            run_id = conn.execute(
                "SELECT run_id FROM dag_run WHERE dag_id=%s AND conf::text "
                "LIKE %s ORDER BY id DESC LIMIT 1",
                (DAG_ID, f"%{system.name}%"),
            ).fetchone()[0]
        states = _task_states(airflow["meta"], run_id)
        assert "failed" in states["validate_contract"]
        assert states["validate_contract"].count("success") == len(GATE_TABLES) - 1
        assert set(states["load"]) == {"upstream_failed"}, states["load"]
        with psycopg.connect(pg_dsn(target)) as conn:
            loads = conn.execute(
                "SELECT count(*) FROM handover_meta.ledger WHERE stage='load'"
            ).fetchone()[0]
            rows = conn.execute(
                "SELECT (SELECT count(*) FROM crm.customer) + (SELECT count(*) FROM crm.complaint)"
            ).fetchone()[0]
            status = conn.execute("SELECT status FROM handover_meta.run").fetchone()[0]
            published = conn.execute(
                "SELECT count(*) FROM handover_meta.audit_log WHERE action = 'run_published'"
            ).fetchone()[0]
        # the run's row follows Airflow: the failed gate marked it failed
        assert (loads, rows, status, published) == (0, 0, "failed", 0)
        reports = list((tmp_path / "lake").rglob("reports/report.html"))
        assert len(reports) == 1
        page = reports[0].read_text(encoding="utf-8")
        assert "This run FAILED at validate_contract" in page
        assert "contract gate failed for complaints" in page
    finally:
        drop_database(target)


# ---------------------------------------------------------------- the scheduler killed
class Component:
    """One Airflow process (api-server, scheduler, dag-processor) leading a session of its
    own: everything it forks (LocalExecutor workers, the log server, task supervisors and
    task processes, which move to process groups of their own) stays in that session, so
    `crash` and `stop` reach all of it."""

    def __init__(self, name: str, args: list[str], env: dict, logs: Path):
        self.name, self.args, self.env = name, args, env
        self.log = logs / f"{name}.log"
        self.killed: list[int] = []
        with open(self.log, "ab") as out:
            # Each its own log-server port: 8793 may be taken by another Airflow on the machine.
            self.proc = subprocess.Popen(
                [AIRFLOW, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**env, "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())},
            )

    def crash(self) -> list[int]:
        """SIGKILL the component with every process of its session at once, as when its
        host, container or service unit dies. Returns the pids killed.

        Not the main process alone: its forked children (executor workers, log server,
        task processes) inherit its metadata-database sockets, so PostgreSQL would never
        see the dead process's connection close; killed inside a transaction, its row
        locks on dag_run and slot_pool would then outlive it, and a new scheduler skips
        the locked run (SKIP LOCKED) for as long as the orphans live.
        """
        self.killed = kill_session(self.proc.pid)
        self.proc.wait(timeout=30)
        return self.killed

    def stop(self) -> None:
        kill_session(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.wait(timeout=30)

    def tail(self, chars: int = 4000) -> str:
        if not self.log.exists():
            return ""
        with open(self.log, "rb") as f:
            f.seek(max(0, self.log.stat().st_size - chars))
            return f.read().decode(errors="replace")


def _task_errors(home: Path, run_id: str) -> list[str]:
    """The exception line of every failed task attempt of a run, from its task logs."""
    import re

    found = []
    for log in sorted((home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}").rglob("*.log")):
        for m in re.finditer(
            r"""["']exc_type["']: ?["'](\w+)["'], ?["']exc_value["']: ?"""
            r"""["']([^"']{0,300})""",
            log.read_text(errors="replace"),
        ):
            found.append(f"{log.parent.name}/{log.name}: {m.group(1)}: {m.group(2)}")
    return found


def _open_transactions(meta: str) -> list[tuple]:
    """Backends of the metadata database inside a transaction: a dead scheduler's
    transaction left open is what blocks a new one."""
    with psycopg.connect(pg_dsn("postgres")) as conn:
        return conn.execute(
            "SELECT pid, state, date_trunc('second', now() - xact_start)::text, "
            "left(query, 120) FROM pg_stat_activity WHERE datname=%s AND xact_start IS NOT "
            "NULL AND pid <> pg_backend_pid() ORDER BY xact_start",
            (meta,),
        ).fetchall()


def _locking_runs(pid: int, meta: str) -> list[int]:
    """Backends of process `pid`'s connections to the metadata database `meta` that hold
    dag_run rows locked right now: the scheduler's loop examines the runs it schedules
    under `SELECT ... FOR UPDATE SKIP LOCKED`, inside a transaction."""
    import psutil

    ports = [
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == int(PG["port"])
    ]
    if not ports:
        return []
    with psycopg.connect(pg_dsn(meta)) as conn:  # pg_class is per database
        return [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
                "JOIN pg_class c ON c.oid = l.relation WHERE a.client_port = ANY(%s) AND "
                "a.client_addr = '127.0.0.1' AND l.granted AND l.mode = 'RowShareLock' AND "
                "c.relname = 'dag_run'",
                (ports,),
            )
        ]


def _until(
    predicate, timeout: float, what: str, components=(), interval: float = 1.0, diagnose=None
):
    """Poll `predicate` until truthy; fail with the components' log tails (and `diagnose()`)
    when a component exits or after `timeout` seconds."""

    def report(headline: str) -> str:
        parts = [headline, *(f"--- {c.name} (log {c.log}):\n{c.tail()}" for c in components)]
        if diagnose is not None:
            try:
                parts.append(f"--- diagnosis:\n{diagnose()}")
            except Exception as exc:  # noqa: BLE001 - the report must not hide the failure
                parts.append(f"--- diagnosis failed: {exc!r}")
        return "\n".join(parts)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        for c in components:
            if c.proc.poll() is not None:
                raise AssertionError(
                    report(f"{c.name} exited ({c.proc.returncode}) while waiting for {what}")
                )
        time.sleep(interval)
    raise AssertionError(report(f"timed out after {timeout:.0f}s waiting for {what}"))


def _healthy(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=3
        ) as r:
            return r.status == 200
    except OSError:
        return False


def _start_api_server(env: dict, logs: Path, started: list, attempts: int = 3) -> Component:
    """The api-server (UI, REST and execution API) on a fresh loopback port, answering.

    `free_port` only says the port was free a moment ago: if another process takes it
    before the api-server binds it, the api-server exits and a new port is tried. `env`
    gets the port's URLs, for every component started after it; `started` every
    api-server process, for the teardown.
    """
    for attempt in range(1, attempts + 1):
        port = free_port()
        env.update(
            {
                "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            }
        )
        api = Component(
            f"api-server-{attempt}",
            ["api-server", "--host", "127.0.0.1", "--port", str(port)],
            env,
            logs,
        )
        started.append(api)
        try:
            _until(lambda p=port: _healthy(p), 150, "the api-server to answer", [api])
            return api
        except AssertionError:
            api.stop()
            if attempt == attempts or "address already in use" not in api.tail().lower():
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def scheduler_stack(tmp_path, keyring_file):
    """Its own metadata and target databases, environment and log folder for the scheduler
    test; at teardown every component it started is killed with its session, and the
    databases are dropped, whatever happened."""
    meta = create_airflow_database("handover_af_sched_meta")  # migrated (session template)
    target = create_database("handover_af_sched")
    stack = {"meta": meta, "target": target, "components": [], "logs": tmp_path / "logs"}
    stack["logs"].mkdir()
    try:
        stack["env"] = make_airflow_env(
            tmp_path / "home",
            meta,
            dags=_dags_folder(tmp_path),
            target=target,
            lake=tmp_path / "lake",
            keyring_file=keyring_file,
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
            AIRFLOW__CORE__EXECUTOR="LocalExecutor",
            AIRFLOW__CORE__PARALLELISM="2",
            AIRFLOW__API_AUTH__JWT_SECRET=uuid.uuid4().hex * 2,
            AIRFLOW__API__SECRET_KEY=uuid.uuid4().hex,
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
            AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD="10",
            AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL="5",
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="60",
        )
        yield stack
    finally:
        errors = []
        for c in reversed(stack["components"]):
            try:
                c.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others, then report
                errors.append(f"{c.name}: {exc!r}")
        drop_database(target)
        drop_database(meta)
        assert not errors, errors


def test_scheduler_killed_and_restarted_mid_run(scheduler_stack, tmp_path):
    """SIGKILL the scheduler (its whole process session: main process, executor workers,
    log server, running tasks) while the run is in its mapped stages, start a new one: the
    run completes, the target equals a clean run's, the ledger balances."""
    env, meta, components = (
        scheduler_stack["env"],
        scheduler_stack["meta"],
        scheduler_stack["components"],
    )
    logs = scheduler_stack["logs"]
    src = _export(tmp_path / "source", 150, seed=41)
    system = make_system(tmp_path / "system", SCHEDULER_TABLES)
    run_id = f"faults_sched_{uuid.uuid4().hex[:6]}"

    def diagnose() -> str:
        return json.dumps(
            {
                "task_states": _task_states(meta, run_id),
                "task_errors": _task_errors(Path(env["AIRFLOW_HOME"]), run_id),
                "open_transactions": _open_transactions(meta),
            },
            default=str,
        )

    api = _start_api_server(env, logs, components)  # sets the API URLs in env: first
    # The schedulers log at INFO: their log tail is what a timeout reports.
    sched_env = {**env, "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"}
    processor = Component("dag-processor", ["dag-processor"], env, logs)
    components.append(processor)
    scheduler = Component("scheduler", ["scheduler"], sched_env, logs)
    components.append(scheduler)

    def parsed():
        with psycopg.connect(pg_dsn(meta)) as conn:
            return conn.execute(
                "SELECT 1 FROM serialized_dag WHERE dag_id=%s", (DAG_ID,)
            ).fetchone()

    _until(parsed, 150, "the dag-processor to serialise the DAG", components)
    conf = json.dumps({"source_dir": str(src), "system": str(system)})
    trigger = subprocess.run(
        [AIRFLOW, "dags", "trigger", DAG_ID, "--run-id", run_id, "--conf", conf],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert trigger.returncode == 0, (trigger.stdout + trigger.stderr)[-2000:]

    def mid_run():
        states = _task_states(meta, run_id)
        return "success" in states.get("comply", []) and states

    before = _until(mid_run, 200, "the run to reach its mapped stages", components, 0.5, diagnose)
    # The worst moment: while the scheduler holds the run's row lock, so a crash that
    # left the dead scheduler's connection (and transaction) open would block the new
    # scheduler every time rather than now and then.
    deadline = time.monotonic() + 30
    while not _locking_runs(scheduler.proc.pid, meta) and time.monotonic() < deadline:
        time.sleep(0.02)
    killed = scheduler.crash()
    # The main process, the log server and the LocalExecutor's workers at least.
    assert len(killed) >= 3, killed
    assert "success" not in before.get("publish", [])
    time.sleep(3)
    restarted = Component("scheduler-2", ["scheduler"], sched_env, logs)
    components.append(restarted)

    def finished():
        with psycopg.connect(pg_dsn(meta)) as conn:
            row = conn.execute(
                "SELECT state FROM dag_run WHERE dag_id=%s AND run_id=%s", (DAG_ID, run_id)
            ).fetchone()
        return row and row[0] in ("success", "failed") and row[0]

    state = _until(
        finished,
        330,
        "the run to finish after the restart",
        [restarted, processor, api],
        2.0,
        diagnose,
    )
    assert state == "success", diagnose()

    clean_db = create_database("handover_af_sched_clean")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HANDOVER_TARGET_DSN", pg_dsn(clean_db))
            mp.setenv("HANDOVER_LAKE_URL", f"file://{tmp_path / 'clean_lake'}")
            mp.setenv("AIRFLOW_CONN_HANDOVER_KEYS", env["AIRFLOW_CONN_HANDOVER_KEYS"])
            run_stages("clean", src, system, gates=False)
        target = pg_dsn(scheduler_stack["target"])
        assert content_checksums(target, str(system)) == content_checksums(
            pg_dsn(clean_db), str(system)
        )
        assert_ledger_balanced(target, run_id, SCHEDULER_TABLES)
    finally:
        drop_database(clean_db)
