"""Distributed: the unchanged DAG on Airflow's CeleryExecutor, with two workers.

On this machine, as separate processes: the api-server (execution API), a scheduler,
a dag-processor and two Celery workers (`airflow celery worker --concurrency 1`) on
the Redis broker at 127.0.0.1:6379, with a fresh Airflow metadata database and fresh
target databases on the machine's PostgreSQL, and an S3 lake on a moto server. Asserts
that the mapped partition tasks ran on both workers and that the target equals the
one the in-process run lands from the same export; then kills one worker (SIGKILL,
its whole process group) while it runs a load task (mid-transaction), and asserts that
the task is retried on the other worker and that the target still equals the clean run.

`CeleryStack` is also what `scripts/bench_workers.py` uses to time 1 and 2 workers.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from handover.config.loader import load_config
from tests.conftest import (
    ROOT,
    content_checksums,
    create_airflow_database,
    create_database,
    drop_database,
    free_port,
    lake_connection,
    pg_dsn,
    pg_url,
    start_moto_server,
    stop_session,
)

pytestmark = pytest.mark.e2e
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DAG_ID = "customer_migration"
PARTITION_TASKS = (
    "validate_intake",
    "comply",
    "validate_compliance",
    "cleanse",
    "validate_quality",
    "map_protect",
    "validate_contract",
    "load",
)
REDIS = os.environ.get("HANDOVER_TEST_REDIS", "redis://127.0.0.1:6379")
WORKER_PRELOAD = [
    "pandas",
    "pyarrow.parquet",
    "great_expectations",
    "boto3",
    "handover.flows.migration",
    "handover.gates.suites",
    "handover.stages.cleanse",
    "handover.stages.comply",
    "handover.stages.mapping",
    "handover.db.load",
    "handover.stages.reconcile",
    "handover.stages.report",
]


class CeleryStack:
    """Airflow's distributed components as local processes, torn down by `close()`.

    Everything is private to one stack: the metadata database, the Celery queue and a
    Redis key prefix (so parallel test runs on the shared Redis never see each
    other's messages), the api-server port, the lake bucket and AIRFLOW_HOME. The
    target connection lives in Airflow's metastore, not the environment, so a new
    target can be set between runs without restarting the workers.
    """

    def __init__(
        self,
        root: Path,
        *,
        keyring: dict,
        log_level: str = "INFO",
        migrated_db: bool = False,
        extra_env: dict[str, str] | None = None,
    ):
        self.root = Path(root)
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.uid = uuid.uuid4().hex[:8]
        self.keyring = keyring
        self.log_level = log_level
        # migrated_db: the metadata database is a copy of the test session's migrated
        # template (tests.conftest.create_airflow_database) instead of `airflow db migrate`.
        self.migrated_db = migrated_db
        self.extra_env = dict(extra_env or {})
        self.procs: dict[str, subprocess.Popen] = {}
        self.databases: list[str] = []
        self.moto: subprocess.Popen | None = None
        self.env: dict[str, str] = {}

    # -- lifecycle -------------------------------------------------------------
    def start(self, workers: tuple[str, ...] = ("w1", "w2")) -> CeleryStack:
        started = time.monotonic()
        if self.migrated_db:
            self.af_db = create_airflow_database("handover_af")
            self.databases.append(self.af_db)
        else:
            self.af_db = self._database("handover_af")
        self.moto, endpoint = start_moto_server(self.logs / "moto.log")
        api_port = free_port()
        self.queue = f"handover_{self.uid}"
        self.bucket = f"handover-{self.uid}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HANDOVER_"))},
            "AIRFLOW_HOME": str(self.root / "airflow"),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg_url(self.af_db, "postgresql+psycopg2"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # Other DAGs in the folder stay paused: only the migration runs on this stack.
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
            "AIRFLOW__API__PORT": str(api_port),
            # Shared by the scheduler (signs task tokens) and the api-server (checks them).
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__CELERY__BROKER_URL": f"{REDIS}/{int(self.uid, 16) % 15 + 1}",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + pg_url(self.af_db),
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": f"{self.queue}:",
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
            # Import the heavy libraries once in each worker's parent process: every
            # task process forks from it instead of importing them again (Great
            # Expectations alone takes seconds per gate task otherwise).
            "AIRFLOW__CELERY__EXTRA_CELERY_CONFIG": json.dumps({"imports": WORKER_PRELOAD}),
            # Two workers on one host: each records its own name on the task instance.
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.conftest.worker_hostname",
            # A killed worker stops heartbeating; notice it in seconds, not minutes.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": self.log_level,
            "AIRFLOW_CONN_HANDOVER_LAKE": lake_connection(endpoint),
            "AIRFLOW_CONN_HANDOVER_KEYS": json.dumps(
                {"conn_type": "generic", "extra": self.keyring}
            ),
            "HANDOVER_LAKE_URL": f"s3://{self.bucket}/handover",
            "PYTHONPATH": f"{ROOT / 'include'}{os.pathsep}{ROOT}",
            "PYTHONWARNINGS": "ignore",
            **self.extra_env,
        }
        self.run([sys.executable, "-m", "handover.storage.lake", "ensure-bucket"], timeout=60)
        if not self.migrated_db:
            self.airflow("db", "migrate", timeout=300)
        self._spawn(
            "api-server",
            [AIRFLOW, "api-server", "--apps", "execution", "-H", "127.0.0.1", "-p", str(api_port)],
        )
        self._spawn("dag-processor", [AIRFLOW, "dag-processor"])
        self._spawn("scheduler", [AIRFLOW, "scheduler"])
        for name in workers:
            self.start_worker(name, wait=False)
        self._wait(
            lambda: self._log_has("api-server", "Application startup complete"),
            "api-server startup",
            120,
        )
        self._wait(
            lambda: (
                self.sql("SELECT count(*) FROM serialized_dag WHERE dag_id=%s", (DAG_ID,))[0][0] > 0
            ),
            "the DAG to be parsed",
            180,
        )
        self.airflow("dags", "unpause", DAG_ID)
        for name in workers:
            self._wait(
                lambda n=name: self._log_has(f"worker-{n}", " ready."), f"worker {name} ready", 120
            )
        self.startup_seconds = time.monotonic() - started
        return self

    def close(self) -> None:
        """Stop every process the stack started, each with its whole session (a task
        process lives in a process group of its own: stopping the worker's group alone
        would leave it running), then remove the broker keys and drop the databases."""
        errors = []
        procs = [
            *(self.procs[n] for n in reversed(list(self.procs))),
            *([self.moto] if self.moto is not None else []),
        ]
        for proc in procs:
            try:
                stop_session(proc, timeout=20)
            except Exception as exc:  # noqa: BLE001 - stop the others, then report
                errors.append(f"{proc.args[:3]}: {exc!r}")
        if self.env:
            self._drop_broker_keys()
        for name in self.databases:
            try:
                drop_database(name)
            except Exception:  # noqa: BLE001 - teardown must go on
                pass
        if errors:
            raise RuntimeError(f"processes of the stack survived: {errors}")

    def _drop_broker_keys(self) -> None:
        """Remove this stack's keys (queue, unacked messages of a killed worker) from Redis."""
        try:
            import redis

            client = redis.Redis.from_url(self.env["AIRFLOW__CELERY__BROKER_URL"])
            for key in client.scan_iter(match=f"{self.queue}:*", count=500):
                client.delete(key)
            client.close()
        except Exception:  # noqa: BLE001 - teardown must go on
            pass

    def __enter__(self) -> CeleryStack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- processes -------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], env: dict | None = None) -> None:
        with open(self.logs / f"{name}.log", "ab") as log:
            # Own session: a worker can be killed together with its pool and task processes.
            self.procs[name] = subprocess.Popen(
                cmd,
                env=env or self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,
            )

    def start_worker(self, name: str, wait: bool = True) -> None:
        env = {**self.env, "HANDOVER_WORKER_HOSTNAME": name}
        self._spawn(
            f"worker-{name}",
            [
                AIRFLOW,
                "celery",
                "worker",
                "--concurrency",
                "1",
                "-H",
                f"{name}-{self.uid}@%h",
                "-q",
                self.queue,
                "--skip-serve-logs",
                "--without-gossip",
                "--without-mingle",
            ],
            env=env,
        )
        if wait:
            self._wait(
                lambda: self._log_has(f"worker-{name}", " ready."), f"worker {name} ready", 120
            )

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL the worker and every process under it, like a lost machine.

        Airflow puts each task process in a process group of its own, so killing the
        worker's group is not enough: the group is frozen first (nothing forks while
        the family is collected), then the whole family is killed. Returns the pids.
        """
        import psutil

        proc = self.procs[f"worker-{name}"]
        os.killpg(proc.pid, signal.SIGSTOP)
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for member in family:
            try:
                member.kill()
            except psutil.NoSuchProcess:
                pass
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(family, timeout=30)
        if alive:
            raise RuntimeError(f"worker {name}: processes survived SIGKILL: {alive}")
        return [m.pid for m in family]

    def _log_has(self, name: str, text: str) -> bool:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}: {self.tail(name)}")
        path = self.logs / f"{name}.log"
        return path.is_file() and text in path.read_text(errors="ignore")

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="ignore")[-chars:] if path.is_file() else ""

    def _wait(self, check, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.5)
        raise TimeoutError(
            f"timed out after {timeout:.0f}s waiting for {what}; logs in {self.logs}"
        )

    def run(self, cmd: list[str], timeout: float = 120) -> str:
        out = subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=self.root
        )
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:4])} failed: {(out.stdout + out.stderr)[-3000:]}")
        return out.stdout

    def airflow(self, *args: str, timeout: float = 120) -> str:
        return self.run([AIRFLOW, *args], timeout=timeout)

    # -- runs ------------------------------------------------------------------
    def _database(self, prefix: str) -> str:
        name = create_database(prefix)
        self.databases.append(name)
        return name

    def new_target(self) -> str:
        """A fresh target database, made the `handover_target` connection (metastore)."""
        name = self._database("handover_celery")
        self.sql("DELETE FROM connection WHERE conn_id='handover_target'")
        self.airflow(
            "connections", "add", "handover_target", "--conn-uri", pg_url(name, "postgres")
        )
        return name

    def trigger(self, source_dir: Path, run_id: str | None = None) -> str:
        run_id = run_id or f"celery__{uuid.uuid4().hex[:8]}"
        self.airflow(
            "dags",
            "trigger",
            DAG_ID,
            "-r",
            run_id,
            "-c",
            json.dumps({"source_dir": str(source_dir)}),
        )
        return run_id

    def wait_for_run(self, run_id: str, timeout: float, on_poll=None) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if on_poll is not None:
                on_poll()
            rows = self.sql(
                "SELECT state FROM dag_run WHERE dag_id=%s AND run_id=%s", (DAG_ID, run_id)
            )
            if rows and rows[0][0] in ("success", "failed"):
                return rows[0][0]
            time.sleep(0.25 if on_poll else 0.5)
        return "timeout"

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(pg_dsn(self.af_db), autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def task_instances(self, run_id: str) -> list[dict]:
        """Every try of every task instance of the run (history and current)."""
        cols = "task_id, map_index, try_number, state, hostname, start_date, end_date"
        rows = self.sql(
            f"SELECT {cols}, 'current' FROM task_instance WHERE dag_id=%s AND run_id=%s "
            f"UNION ALL SELECT {cols}, 'history' FROM task_instance_history "
            "WHERE dag_id=%s AND run_id=%s",
            (DAG_ID, run_id, DAG_ID, run_id),
        )
        keys = cols.split(", ") + ["row"]
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def failure_report(self, run_id: str) -> str:
        tis = [t for t in self.task_instances(run_id) if t["state"] != "success"]
        logs = "\n".join(f"--- {n}\n{self.tail(n, 1500)}" for n in self.procs)
        return f"not successful: {tis[:10]}\n{logs}"


class ReferenceRun:
    """The in-process (embedded-style) run of the same export: local lake, fresh target.

    Started in the background while the stack's first run goes on (that run mostly
    waits on scheduling), and joined when its checksums are first needed.
    """

    def __init__(self, source: Path, keyring_file: Path, root: Path):
        self.db = create_database("handover_ref")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HANDOVER_"))}
        env.update(
            HANDOVER_TARGET_DSN=pg_dsn(self.db),
            HANDOVER_KEYRING_FILE=str(keyring_file),
            HANDOVER_LAKE_URL=f"file://{root / 'ref-lake'}",
            PYTHONWARNINGS="ignore",
            PYTHONPATH=str(ROOT / "include"),
        )
        self.log = root / "reference.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "handover.flows.runner",
                    "--source-dir",
                    str(source),
                    "--run-id",
                    f"ref_{uuid.uuid4().hex[:6]}",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._checksums: dict | None = None

    def checksums(self) -> dict:
        if self._checksums is None:
            code = self.proc.wait(timeout=900)
            assert code == 0, self.log.read_text(errors="ignore")[-3000:]
            self._checksums = content_checksums(pg_dsn(self.db))
        return self._checksums

    def close(self) -> None:
        stop_session(self.proc)
        drop_database(self.db)


# ---------------------------------------------------------------- tests
# Latencies of the test stack (not of what it proves; scripts/bench_workers.py keeps
# Airflow's defaults):
TEST_TIMINGS = {
    # A task's supervisor notices its task process has exited only when it next wakes up
    # to heartbeat, up to [workers] min_heartbeat_interval (default 5 s) later; until then
    # the Celery slot (concurrency 1) stays busy. Measured: half of the ~90 tasks of a run
    # held their worker ~5 s longer than the task itself took.
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
    # A killed worker stops heartbeating; notice it in seconds, not minutes. With a live
    # supervisor heartbeating every second, 15 s is 15 missed heartbeats in a row.
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "15",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "1",
    # The scheduler's nap between loops with nothing to do (default 1 s): each stage's
    # tasks are scheduled that much sooner after the previous stage ends.
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, keyring_file):
    from handover_synth import legacy_bss as synth

    root = tmp_path_factory.mktemp("celery")
    synth.generate(root / "source", 1000, seed=31)
    keyring = json.loads(Path(keyring_file).read_text())
    with CeleryStack(root, keyring=keyring, migrated_db=True, extra_env=TEST_TIMINGS) as s:
        s.start(("w1", "w2"))
        s.source = root / "source"
        s.reference = ReferenceRun(root / "source", keyring_file, root)
        try:
            yield s
        finally:
            s.reference.close()


def test_partitions_run_on_both_workers_and_target_equals_embedded_run(stack):
    target = stack.new_target()
    run_id = stack.trigger(stack.source)
    state = stack.wait_for_run(run_id, timeout=600)
    assert state == "success", stack.failure_report(run_id)

    tis = [t for t in stack.task_instances(run_id) if t["row"] == "current"]
    mapped = [t for t in tis if t["task_id"] in PARTITION_TASKS and t["map_index"] >= 0]
    # the demo export is small: every table has the catalog's floor of partitions
    cfg = load_config("legacy_bss")
    partitions = sum(cfg.partitions(t) for t in cfg.tables)
    assert len(mapped) == partitions * len(PARTITION_TASKS)
    assert {t["state"] for t in mapped} == {"success"}
    hosts = {t["hostname"] for t in mapped}
    assert hosts == {"w1", "w2"}, hosts
    per_host = {h: sum(t["hostname"] == h for t in mapped) for h in hosts}
    assert min(per_host.values()) >= 10, per_host

    with psycopg.connect(pg_dsn(target)) as conn:
        recon = conn.execute(
            "SELECT table_name, source_rows, loaded + merged + quarantined + excluded, "
            "balanced FROM handover_meta.reconciliation WHERE run_id=%s",
            (run_id,),
        ).fetchall()
    assert len(recon) == 7 and all(n == acc and ok for _, n, acc, ok in recon), recon
    assert content_checksums(pg_dsn(target)) == stack.reference.checksums()


def test_worker_killed_mid_task_is_retried_on_the_other_worker(stack):
    target = stack.new_target()
    run_id = stack.trigger(stack.source)
    victim: dict = {}

    def kill_when_busy():
        if victim:
            return
        # Mid-load: the partition's upsert transaction dies with the worker, and the
        # retry must land exactly what the clean run landed.
        running = stack.sql(
            "SELECT task_id, map_index, hostname, try_number FROM task_instance WHERE "
            "dag_id=%s AND run_id=%s AND state='running' AND task_id = 'load' "
            "AND hostname IN ('w1', 'w2') ORDER BY start_date LIMIT 1",
            (DAG_ID, run_id),
        )
        if running:
            task_id, map_index, host, try_number = running[0]
            pids = stack.kill_worker(host)
            victim.update(
                task_id=task_id, map_index=map_index, host=host, try_number=try_number, pids=pids
            )

    state = stack.wait_for_run(run_id, timeout=720, on_poll=kill_when_busy)
    assert victim, "no load task was seen running on a worker"
    # Worker, pool process, task supervisor and the task process itself all died.
    assert len(victim["pids"]) >= 3, victim
    assert state == "success", stack.failure_report(run_id)
    survivor = ({"w1", "w2"} - {victim["host"]}).pop()

    tries = sorted(
        (
            t
            for t in stack.task_instances(run_id)
            if t["task_id"] == victim["task_id"] and t["map_index"] == victim["map_index"]
        ),
        key=lambda t: t["try_number"],
    )
    killed = [t for t in tries if t["try_number"] == victim["try_number"]]
    assert killed and killed[0]["hostname"] == victim["host"], tries
    assert killed[0]["state"] != "success", f"the task finished before the kill: {tries}"
    final = tries[-1]
    assert final["row"] == "current" and final["state"] == "success", tries
    assert final["try_number"] > victim["try_number"] and final["hostname"] == survivor, tries

    later = [
        t
        for t in stack.task_instances(run_id)
        if t["row"] == "current"
        and t["task_id"] in PARTITION_TASKS
        and t["end_date"]
        and killed[0]["start_date"]
        and t["start_date"] > killed[0]["start_date"]
    ]
    assert later and {t["hostname"] for t in later} == {survivor}
    with psycopg.connect(pg_dsn(target)) as conn:
        balanced = conn.execute(
            "SELECT bool_and(balanced), count(*) FROM handover_meta.reconciliation WHERE run_id=%s",
            (run_id,),
        ).fetchone()
    assert balanced == (True, 7)
    assert content_checksums(pg_dsn(target)) == stack.reference.checksums()
