"""Fault injection against real components on loopback: nothing lost, nothing doubled.

Each test breaks one thing while the migration runs (the load task killed mid-COPY and
mid-upsert, PostgreSQL stopped under a stage, the S3 endpoint gone for a while, the
lake's disk full, a gate failing while other tables are ready to load), lets the task be
retried the way Airflow retries it, and ends with every target table identical to a
clean run of the same export (per-table content checksums) and the ledger balanced.

Faults that need the scheduler itself are in tests/e2e/test_faults_airflow.py; the
matrix is docs/reliability.md.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from handover.flows import migration as pipeline
from handover_synth import legacy_bss as synth
from tests.conftest import (
    ROOT,
    assert_ledger_balanced,
    content_checksums,
    create_database,
    drop_database,
    empty_target,
    finish_run,
    free_port,
    lake_connection,
    make_system,
    pg_dsn,
    reseal,
    run_stages,
    stop_process,
)

pytestmark = pytest.mark.integration
SMALL_TABLES = ("subscribers", "call_records", "payments", "complaints")
S3_TABLES = ("subscribers", "payments")  # moto answers slowly: fewer objects per run
GATE_TABLES = ("subscribers", "payments", "complaints")
BIG_TABLES = ("subscribers", "call_records")
BIG_SUBSCRIBERS = 6000  # ~115k call records in one partition: a COPY/upsert of ~0.5 s each


def _uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def keys_env(keyring_file):
    mp = pytest.MonkeyPatch()
    mp.setenv("HANDOVER_KEYRING_FILE", str(keyring_file))
    for var in (
        "AIRFLOW_CONN_HANDOVER_KEYS",
        "AIRFLOW_CONN_HANDOVER_TARGET",
        "AIRFLOW_CONN_HANDOVER_LAKE",
    ):
        mp.delenv(var, raising=False)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def faults_db(target_db) -> str:
    """The module's target database; each test empties crm.* and uses its own run id."""
    return pg_dsn(target_db)


@pytest.fixture(scope="module")
def small(tmp_path_factory, keys_env, faults_db):
    """A small export (four tables, call records in four partitions) and its clean run."""
    root = tmp_path_factory.mktemp("faults_small")
    synth.generate(root / "source", 200, seed=21)
    system = make_system(root / "system", SMALL_TABLES)
    mp = pytest.MonkeyPatch()
    mp.setenv("HANDOVER_TARGET_DSN", faults_db)
    mp.setenv("HANDOVER_LAKE_URL", f"file://{root / 'clean_lake'}")
    try:
        run_stages(_uid("clean"), root / "source", system, gates=False)
        clean = content_checksums(faults_db, str(system))
    finally:
        mp.undo()
    assert clean["call_records"][0] > 1000
    # A table's end state depends only on its own rows and its parents', so a system
    # with fewer tables ends with the same content in the tables it has.
    subsets = {
        tables: make_system(root / "_".join(tables), tables) for tables in (S3_TABLES, GATE_TABLES)
    }
    return {
        "root": root,
        "source": root / "source",
        "system": system,
        "clean": clean,
        "subsets": subsets,
    }


@pytest.fixture
def fresh_db(faults_db, monkeypatch, keys_env):
    """The module database with an empty target (a new CREATE/DROP DATABASE per test costs
    a checkpoint of the shared server each)."""
    empty_target(faults_db)
    monkeypatch.setenv("HANDOVER_TARGET_DSN", faults_db)
    return faults_db


def _ends_like_clean(dsn: str, run_id: str, small: dict, tables=SMALL_TABLES) -> None:
    system = small["system"] if tables == SMALL_TABLES else small["subsets"][tables]
    assert content_checksums(dsn, str(system)) == {t: small["clean"][t] for t in tables}
    assert_ledger_balanced(dsn, run_id, tables)


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message.strip(), f"not one line: {message[:300]!r}"
    return message


def _wait(predicate, timeout: float, what: str, interval: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# ---------------------------------------------------------------- SIGKILL of the load task
CHILD_LOAD = """
import json, sys
from handover.flows import migration as pipeline
pipeline.load_partition(json.loads(sys.argv[1]), json.loads(sys.argv[2]))
"""

MID_COPY = """
SELECT a.pid, p.tuples_processed FROM pg_stat_activity a JOIN pg_stat_progress_copy p
  ON p.pid = a.pid WHERE a.application_name = %s AND p.tuples_processed > 0
"""
MID_UPSERT = """
SELECT a.pid, pg_relation_size('crm.call_record') FROM pg_stat_activity a
 WHERE a.application_name = %s AND a.state = 'active'
   AND (a.query LIKE '%%INSERT INTO%%' OR a.query LIKE '%%MERGE INTO%%')
   AND pg_relation_size('crm.call_record') > 65536
"""
# The statement a load runs into the target: a new partition is COPYed straight in; one
# whose keys are there already (a rerun, or SEEDED below) goes through the keyed upsert.
INTO_TARGET = (
    'query LIKE \'%%INSERT INTO "crm"."call_record"%%\' OR '
    'query LIKE \'%%MERGE INTO "crm"."call_record"%%\' OR '
    'query LIKE \'COPY "crm"."call_record"%%\''
)


def _seed_first_row(dsn: str, ctx: dict, part: dict) -> int:
    """Put the partition's first row (a key the load's probe always asks about) into the
    target, so the load of that partition takes the keyed-upsert path; returns 1."""
    from psycopg import sql

    from handover.db.bulk_copy import copy_arrow
    from handover.storage.lake import lake_from_url, part_key

    mapped = lake_from_url().read_table(
        part_key(ctx["run_id"], "mapped", part["table"], part["partition"])
    )
    with psycopg.connect(dsn) as conn:
        copy_arrow(conn, sql.Identifier("crm", "call_record"), mapped.slice(0, 1))
    return 1


def _clone(template: str) -> str:
    """A copy of a database at this moment (CREATE DATABASE ... TEMPLATE)."""
    name = f"{template}_{uuid.uuid4().hex[:6]}"
    for attempt in range(50):  # a just-closed session may linger for a moment
        try:
            with psycopg.connect(pg_dsn("postgres"), autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            return name
        except psycopg.errors.ObjectInUse:
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError(f"database {template} stays in use; cannot clone it")


@pytest.fixture(scope="module")
def big(tmp_path_factory, keys_env):
    """A run stopped just before load (every stage done, nothing loaded), kept as a template
    database, and the checksums of the same run loaded without a fault."""
    root = tmp_path_factory.mktemp("faults_big")
    synth.generate(root / "source", BIG_SUBSCRIBERS, seed=3)
    system = make_system(root / "system", BIG_TABLES, partitions={"call_records": 1})
    base = create_database("handover_faults_big")
    mp = pytest.MonkeyPatch()
    mp.setenv("HANDOVER_TARGET_DSN", pg_dsn(base))
    mp.setenv("HANDOVER_LAKE_URL", f"file://{root / 'lake'}")
    clones: list[str] = []
    try:
        state = run_stages(_uid("big"), root / "source", system, gates=False, until="load")
        template = _clone(base)
        clones.append(template)
        finish_run(state)
        clean = content_checksums(pg_dsn(base), str(system))
        part = next(p for p in state["parts"] if p["table"] == "call_records")
        assert part["rows"] > 80_000
        yield {
            "state": state,
            "template": template,
            "clean": clean,
            "system": system,
            "part": part,
            "clones": clones,
        }
    finally:
        mp.undo()
        for name in [base, *clones]:
            drop_database(name)


def _kill_load_when(
    big: dict, watch_sql: str, monkeypatch, attempts: int = 3, seed: bool = False
) -> dict:
    """Start the load of the big partition in a child process, SIGKILL it the moment
    `watch_sql` sees it (mid-COPY or mid-upsert), and return what was seen. Retries on a
    fresh clone if the child finished before it could be caught. `seed`: one row of the
    partition is in the target first, so the load takes the keyed-upsert path."""
    for _ in range(attempts):
        db = _clone(big["template"])
        big["clones"].append(db)
        dsn = pg_dsn(db)
        seeded = _seed_first_row(dsn, big["state"]["ctx"], big["part"]) if seed else 0
        app = _uid("fault_load")
        env = {
            **os.environ,
            "HANDOVER_TARGET_DSN": dsn,
            "PGAPPNAME": app,
            "PYTHONPATH": str(ROOT / "include"),
            "PYTHONWARNINGS": "ignore",
        }
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD_LOAD,
                json.dumps(big["state"]["ctx"]),
                json.dumps(big["part"]),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        seen = None
        try:
            with psycopg.connect(pg_dsn(db), autocommit=True) as watch:

                def caught(w=watch, a=app, child=proc):
                    return w.execute(watch_sql, (a,)).fetchone() or child.poll() is not None

                got = _wait(caught, 180, "the child's load to start")
                if got is not True:
                    proc.send_signal(signal.SIGKILL)
                    seen = got
                proc.wait(timeout=60)
                if seen is None:
                    continue  # finished before we caught it: try again on a new clone
                # The killed client's backend must end without committing anything.
                _wait(
                    lambda w=watch, p=seen[0]: w.execute(
                        "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid=%s", (p,)
                    ).fetchone()[0],
                    120,
                    "the orphaned backend to end",
                    interval=0.1,
                )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        monkeypatch.setenv("HANDOVER_TARGET_DSN", dsn)
        return {"dsn": dsn, "seen": seen, "returncode": proc.returncode, "seeded": seeded}
    raise AssertionError(f"the load finished {attempts} times before it could be killed")


def _after_kill_then_rerun(big: dict, killed: dict) -> None:
    run_id, dsn = big["state"]["run_id"], killed["dsn"]
    assert killed["returncode"] == -signal.SIGKILL
    with psycopg.connect(dsn) as conn:  # nothing the killed load wrote is there
        assert (
            conn.execute("SELECT count(*) FROM crm.call_record").fetchone()[0] == killed["seeded"]
        )
        assert (
            conn.execute(
                "SELECT count(*) FROM handover_meta.ledger WHERE run_id=%s AND stage='load'",
                (run_id,),
            ).fetchone()[0]
            == 0
        )
    finish_run(big["state"])  # the retry: every load again, then reconcile and publish
    assert content_checksums(dsn, str(big["system"])) == big["clean"]
    assert_ledger_balanced(dsn, run_id, BIG_TABLES)


def test_load_killed_mid_copy_then_rerun(big, monkeypatch):
    """A new partition is COPYed straight into the target: killed mid-COPY."""
    killed = _kill_load_when(big, MID_COPY, monkeypatch)
    assert killed["seen"][1] > 0  # rows had reached the target
    _after_kill_then_rerun(big, killed)


def test_load_killed_mid_upsert_then_rerun(big, monkeypatch):
    """A partition with a key already in the target goes through the keyed upsert."""
    killed = _kill_load_when(big, MID_UPSERT, monkeypatch, seed=True)
    assert killed["seen"][1] > 65536  # the upsert had written pages of the target
    _after_kill_then_rerun(big, killed)


# ---------------------------------------------------------------- PostgreSQL stopped
@pytest.fixture
def private_pg(monkeypatch, keys_env):
    """A private PostgreSQL (the embedded wheel, unix socket only) this test may stop.

    Its data directory is not under pytest's tmp_path: every pytest session started on
    the machine resets /tmp/pytest-of-root to 0700, which would lock the server's OS user
    out of a pgdata below it while the test runs.
    """
    from handover.storage import embedded

    pgdata = Path(tempfile.mkdtemp(prefix="handover-faults-pg-", dir="/tmp"))
    try:
        info = embedded.ensure_running(pgdata, databases=("handover",))
        dsn = f"host={info['socket_dir']} user=postgres dbname=handover"
        monkeypatch.setenv("HANDOVER_TARGET_DSN", dsn)
        yield {"pgdata": pgdata, "dsn": dsn}
    finally:
        try:
            embedded.stop(pgdata)
        finally:
            shutil.rmtree(pgdata, ignore_errors=True)


def test_postgres_stopped_during_load_then_restarted_retry_succeeds(
    small, private_pg, monkeypatch, tmp_path
):
    from handover.ops.tasks import data_faults
    from handover.storage import embedded

    monkeypatch.setenv("HANDOVER_LAKE_URL", f"file://{tmp_path / 'lake'}")
    dsn, run_id = private_pg["dsn"], _uid("pgstop")
    state = run_stages(run_id, small["source"], small["system"], gates=False, until="load")
    part = next(p for p in state["parts"] if p["table"] == "call_records")
    outcome: dict = {}

    def load():
        try:
            outcome["result"] = pipeline.load_partition(state["ctx"], part)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    # Hold the target table so the load is caught inside its transaction (staging
    # filled, upsert waiting), then stop the server under it.
    blocker = psycopg.connect(dsn)
    try:
        blocker.execute("LOCK TABLE crm.call_record IN SHARE MODE")
        worker = threading.Thread(target=load)
        worker.start()
        with psycopg.connect(dsn, autocommit=True) as watch:
            _wait(
                lambda: watch.execute(
                    f"SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND "
                    f"({INTO_TARGET})"
                ).fetchone(),
                60,
                "the load to wait inside its transaction",
            )
        embedded.stop(private_pg["pgdata"])
        worker.join(60)
    finally:
        try:
            blocker.close()
        except psycopg.Error:
            pass
    error = outcome.get("error")
    assert isinstance(error, psycopg.OperationalError), outcome
    assert not isinstance(error, data_faults())  # Airflow retries it (retries=3, backoff)
    assert "terminating connection" in str(error).splitlines()[0]

    # A retry while the server is still down fails fast, again as a transient fault.
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        pipeline.load_partition(state["ctx"], part)
    assert time.monotonic() - started < 15

    embedded.ensure_running(private_pg["pgdata"], databases=("handover",))
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM crm.call_record").fetchone()[0] == 0
    finish_run(state)
    _ends_like_clean(dsn, run_id, small)


# ---------------------------------------------------------------- S3 endpoint unreachable
RELAY = r"""
import socket, sys, threading
listen, target = int(sys.argv[1]), int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", listen))
srv.listen(64)
print("ready", flush=True)

def pipe(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

while True:
    c, _ = srv.accept()
    try:
        u = socket.create_connection(("127.0.0.1", target))
    except OSError:
        c.close()
        continue
    threading.Thread(target=pipe, args=(c, u), daemon=True).start()
    threading.Thread(target=pipe, args=(u, c), daemon=True).start()
"""


class Endpoint:
    """The S3 endpoint the lake talks to: a TCP relay process in front of moto.

    Killing the relay makes the endpoint unreachable (connection refused, pooled
    connections reset) while moto keeps the bucket, the way a store outlives a network or
    proxy outage; `start` brings it back on the same port.
    """

    def __init__(self, moto_endpoint: str):
        self.target = int(moto_endpoint.rsplit(":", 1)[1])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.start()

    def start(self) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-c", RELAY, str(self.port), str(self.target)],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stdout.readline().strip() == b"ready"
        self.proc = proc

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def outage(self, seconds: float) -> threading.Thread:
        """Kill now; start again on the same port after `seconds`."""
        self.kill()
        timer = threading.Timer(seconds, self.start)
        timer.start()
        return timer

    def close(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@pytest.fixture
def s3_lake(moto_server, monkeypatch):
    from handover.storage.lake import lake_from_url

    endpoint = Endpoint(moto_server)
    bucket = f"faults-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("HANDOVER_LAKE_URL", f"s3://{bucket}")

    def configure(**extra):
        monkeypatch.setenv("AIRFLOW_CONN_HANDOVER_LAKE", lake_connection(endpoint.url, **extra))

    configure()
    lake_from_url().ensure_bucket()
    yield {"endpoint": endpoint, "configure": configure, "bucket": bucket}
    endpoint.close()


def _outage_before(stage: str, endpoint: Endpoint, seconds: float, log: dict):
    def hook(s, item):
        if s == stage and "timer" not in log:
            log["timer"] = endpoint.outage(seconds)
            log["started"] = time.monotonic()

    return hook


def test_s3_outage_within_retry_budget_is_ridden_out(small, fresh_db, s3_lake):
    """Backoff rides out an outage of a few seconds: the stage succeeds with no error.

    The connection's documented `max_attempts` is raised to 20 here, so the test is
    deterministic; what the default budget rides out is
    test_default_s3_retry_budget_rides_out_a_few_seconds.
    """
    s3_lake["configure"](max_attempts=20)
    run_id, log = _uid("s3ride"), {}
    hook = _outage_before("map_protect", s3_lake["endpoint"], 4.0, log)

    def timed_hook(stage, item):
        hook(stage, item)
        if stage == "load":  # every partition mapped: the outage has been waited out
            log.setdefault("map_done", time.monotonic())

    state = run_stages(
        run_id, small["source"], small["subsets"][S3_TABLES], gates=False, hook=timed_hook
    )
    log["timer"].join()
    assert log["map_done"] - log["started"] >= 3.5  # the first map call waited out the outage
    assert state["reports"]
    _ends_like_clean(fresh_db, run_id, small, S3_TABLES)


def test_s3_outage_outlasting_retry_budget_fails_clearly_then_retry_succeeds(
    small, fresh_db, s3_lake
):
    """When backoff gives up, the task fails with one line naming the bucket, the key and
    the endpoint, as a transient fault (Airflow retries it); the retry completes the run."""
    from handover.ops.tasks import data_faults
    from handover.storage.lake import LakeError

    s3_lake["configure"](max_attempts=2)  # a budget of 0.15 s at most: 3 s outlasts it
    run_id, log, failures = _uid("s3fail"), {}, []
    hook = _outage_before("map_protect", s3_lake["endpoint"], 3.0, log)

    def on_error(stage, item, exc, attempt):
        failures.append((stage, exc))
        log["timer"].join()  # the endpoint is back when Airflow's retry_delay has passed
        return attempt < 3

    state = run_stages(
        run_id,
        small["source"],
        small["subsets"][S3_TABLES],
        gates=False,
        hook=hook,
        on_error=on_error,
    )
    assert len(failures) == 1
    stage, exc = failures[0]
    assert stage == "map_protect" and isinstance(exc, LakeError)
    assert not isinstance(exc, data_faults())
    message = _one_line(exc)
    assert s3_lake["bucket"] in message and s3_lake["endpoint"].url in message
    assert "after retries" in message
    assert state["reports"]
    _ends_like_clean(fresh_db, run_id, small, S3_TABLES)


def test_default_s3_retry_budget_rides_out_a_few_seconds(monkeypatch):
    """How long an outage the lake's default client rides out, from botocore's own backoff.

    Simulated (seeded) with botocore's ExponentialBackoff and the lake client's real retry
    configuration: the share of requests that keep retrying through a 5 s outage.
    """
    from botocore.retries.standard import ExponentialBackoff, RetryContext

    from handover.storage.lake import s3_client

    monkeypatch.setenv(
        "AIRFLOW_CONN_HANDOVER_LAKE", lake_connection("http://127.0.0.1:9")
    )  # nothing is contacted
    total = s3_client().meta.config.retries["total_max_attempts"]
    rng = random.Random(9)
    backoff = ExponentialBackoff(random=rng.random)
    rides = 0
    for _ in range(10_000):
        waited = sum(backoff.delay_amount(RetryContext(attempt_number=n)) for n in range(1, total))
        rides += waited >= 5.0
    assert rides / 10_000 >= 0.99, (
        f"{total} attempts ride out a 5 s outage {rides / 100:.0f} % of the time"
    )


# ---------------------------------------------------------------- lake disk full
@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs for the lake, mounted for this test and unmounted after."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "lakefs"
    mnt.mkdir()
    run = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if run.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {run.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(fs: Path, leave: int) -> Path:
    filler = fs / f"filler-{uuid.uuid4().hex[:6]}"
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize
    with open(filler, "wb") as fh:
        try:
            fh.write(b"\0" * max(free - leave, 0))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def _lake_is_whole(lake_root: Path) -> list[Path]:
    """Every object in the lake is complete (Parquet readable, no temporary files)."""
    from handover.storage.lake import LocalLake

    lake = LocalLake(lake_root)  # objects are encrypted: opened through the lake's keys
    files = [p for p in lake_root.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.startswith(".") or p.suffix == ".tmp"], files
    for p in files:
        if p.suffix == ".parquet":
            lake.schema(str(p.relative_to(lake_root)))
    return files


@pytest.mark.parametrize("stage", ["extract", "cleanse"])
def test_lake_disk_full_during_write(stage, small, fresh_db, small_fs, monkeypatch, tmp_path):
    """The lake's filesystem fills up while a stage writes: the task fails with the
    filesystem's one line, leaves no partial object and no ledger row; once space is
    freed its retry completes the run."""
    from handover.storage.lake import part_key

    lake_root = small_fs / "lake"
    monkeypatch.setenv("HANDOVER_LAKE_URL", f"file://{lake_root}")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    run_id, seen = _uid(f"full_{stage}"), {}
    ctx = {"run_id": run_id, "system": str(small["system"])}

    def hook(s, item):
        table = item if isinstance(item, str) else (item or {}).get("table")
        if s == stage and table == "call_records" and "filler" not in seen:
            seen["filler"] = _fill(small_fs, leave=16 * 1024)

    def on_error(s, item, exc, attempt):
        seen.update(stage=s, exc=exc)
        _lake_is_whole(lake_root)
        partition = None if s == "extract" else item["partition"]
        with psycopg.connect(fresh_db) as conn:  # the failed task recorded nothing
            recorded = conn.execute(
                "SELECT count(*) FROM handover_meta.ledger WHERE run_id=%s AND stage=%s AND "
                "table_name='call_records' AND (%s::text IS NULL OR partition=%s)",
                (run_id, s, partition, partition),
            ).fetchone()[0]
        assert recorded == 0
        if s == "cleanse":
            key = part_key(run_id, "cleanse", "call_records", partition)
            if not (lake_root / key).exists():  # the next stage says what is missing
                with pytest.raises(FileNotFoundError, match="clear that upstream task"):
                    pipeline.map_protect_partition(ctx, item)
        seen["filler"].unlink()  # on-call frees space; Airflow retries the task
        return attempt == 1

    state = run_stages(
        run_id, small["source"], small["system"], gates=False, hook=hook, on_error=on_error
    )
    exc = seen.get("exc")
    assert isinstance(exc, OSError) and exc.errno == errno.ENOSPC, exc
    assert seen["stage"] == stage
    assert "No space left on device" in _one_line(exc)
    assert state["reports"]
    _lake_is_whole(lake_root)
    _ends_like_clean(fresh_db, run_id, small)


def test_lake_disk_full_error_names_the_lake_object(small_fs):
    from handover.storage.lake import LocalLake

    lake = LocalLake(small_fs / "lake")
    _fill(small_fs, leave=4096)
    with pytest.raises(OSError) as err:
        lake.put_bytes("runs/r1/raw/t/part-p00.parquet", b"x" * 65536)
    message = _one_line(err.value)
    assert "runs/r1/raw/t/part-p00.parquet" in message and "space" in message
    assert not list((small_fs / "lake").rglob("*.parquet"))


def test_failed_extract_leaves_no_raw_copy_in_tmp(small, fresh_db, small_fs, monkeypatch, tmp_path):
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    monkeypatch.setenv("HANDOVER_LAKE_URL", f"file://{small_fs / 'lake'}")
    _fill(small_fs, leave=4096)
    with pytest.raises(OSError):
        run_stages(_uid("tmpleak"), small["source"], small["system"], gates=False, until="comply")
    assert list(private_tmp.iterdir()) == []


# ---------------------------------------------------------------- a gate failing
ORDER_NO = "订单号202611010000123456未到账"  # 18 digits, not an ID, not a card: not redacted


def test_gate_failing_on_one_table_loads_nothing_then_fixed_run_matches_clean(
    small, fresh_db, monkeypatch, tmp_path
):
    """The contract gate fails for complaints while every other table's gates pass: no
    table loads (loads wait for every contract gate), nothing is published; the fixed
    export then runs to the same end state as a clean run."""
    from handover.flows.migration import GateFailed

    src = tmp_path / "export"
    shutil.copytree(small["source"], src)
    complaints = src / "complaints.csv"
    original = complaints.read_bytes()
    lines = original.decode().splitlines(keepends=True)
    # Every complaint mentions an order number in its free text.
    rows = list(csv.reader(io.StringIO("".join(lines))))
    col = rows[0].index("text")
    for r in rows[1:]:
        r[col] = r[col] + ORDER_NO
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    complaints.write_text(buf.getvalue())
    reseal(src)  # the operator's export, order numbers and all
    monkeypatch.setenv("HANDOVER_LAKE_URL", f"file://{tmp_path / 'lake'}")
    run_id = _uid("gate")
    system = small["subsets"][GATE_TABLES]
    with pytest.raises(GateFailed) as err:  # the contract gates: the one before load
        run_stages(run_id, src, system, gates={"contract"})
    message = _one_line(err.value)
    assert message.startswith("contract gate failed for complaints")
    with psycopg.connect(fresh_db) as conn:
        passed = {
            t
            for (t,) in conn.execute(
                "SELECT DISTINCT table_name FROM handover_meta.gate_result WHERE run_id=%s AND "
                "gate='contract' AND success",
                (run_id,),
            )
        }
        loads = conn.execute(
            "SELECT count(*) FROM handover_meta.ledger WHERE run_id=%s AND stage='load'", (run_id,)
        ).fetchone()[0]
        target = sum(
            conn.execute(f"SELECT count(*) FROM crm.{t}").fetchone()[0]
            for t in ("customer", "payment", "complaint")
        )
        status = conn.execute(
            "SELECT status FROM handover_meta.run WHERE run_id=%s", (run_id,)
        ).fetchone()[0]
    assert passed == {"subscribers", "payments"}
    assert (loads, target, status) == (0, 0, "running")
    assert not list((tmp_path / "lake").rglob("reports/*"))

    complaints.write_bytes(original)  # the export is fixed; the run is cleared and rerun
    reseal(src)  # (a re-export comes with its manifest)
    run_stages(run_id, src, system, gates=False)
    _ends_like_clean(fresh_db, run_id, small, GATE_TABLES)
