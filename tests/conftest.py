"""Shared test setup: the library on sys.path, and real services on loopback.

Integration and end-to-end tests use the machine's PostgreSQL (127.0.0.1:5432, trust
auth; PGHOST/PGPORT/PGUSER override) with a fresh database per test module, so runs
never see each other's rows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

PG = {
    "host": os.environ.get("PGHOST", "127.0.0.1"),
    "port": os.environ.get("PGPORT", "5432"),
    "user": os.environ.get("PGUSER", "postgres"),
}


def pg_dsn(dbname: str) -> str:
    return f"host={PG['host']} port={PG['port']} user={PG['user']} dbname={dbname}"


def pg_url(dbname: str, driver: str = "postgresql") -> str:
    return f"{driver}://{PG['user']}@{PG['host']}:{PG['port']}/{dbname}"


def create_database(prefix: str, template: str | None = None) -> str:
    """A new database named `prefix`_<random>; a copy of `template` when given."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn("postgres"), autocommit=True) as conn:
        if template:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        else:
            conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(pg_dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def target_db():
    """A fresh target database on the machine's PostgreSQL, dropped afterwards."""
    name = create_database("handover_test")
    yield name
    drop_database(name)


@pytest.fixture(scope="session", autouse=True)
def _session_keyring(tmp_path_factory):
    """Every Parquet object the lake writes is encrypted (handover.storage.lake_crypto), so any test
    that writes to a lake needs a keyring: one for the session, unless the environment
    or the test brings its own (module fixtures below override it)."""
    if os.environ.get("HANDOVER_KEYRING_FILE") or os.environ.get("AIRFLOW_CONN_HANDOVER_KEYS"):
        yield None
        return
    import json

    from handover.protection.fields import Keyring

    path = tmp_path_factory.mktemp("session-keys") / "keys.json"
    path.write_text(json.dumps(Keyring.generate("k-session")))
    os.environ["HANDOVER_KEYRING_FILE"] = str(path)
    yield path
    os.environ.pop("HANDOVER_KEYRING_FILE", None)


@pytest.fixture(scope="module")
def keyring_file(tmp_path_factory) -> Path:
    import json

    from handover.protection.fields import Keyring

    path = tmp_path_factory.mktemp("keys") / "keys.json"
    path.write_text(json.dumps(Keyring.generate("k-test-1")))
    return path


# ---------------------------------------------------------------- S3 endpoint, workers
def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto_server(log_path: Path | None = None):
    """moto in server mode on a free loopback port: a real S3 endpoint over HTTP.

    Returns (process, endpoint_url); the caller terminates the process.
    """
    import subprocess
    import time
    import urllib.request

    port = free_port()
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("moto_server")),
                "-H",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if log_path:
            out.close()
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode} on port {port}")
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"moto_server did not answer on {endpoint} within 30s")


def stop_process(proc, timeout: float = 10) -> None:
    """Terminate a process we started (and its session), then kill it if it lingers."""
    import signal
    import subprocess

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait(timeout=timeout)


def session_members(sid: int) -> list[int]:
    """Pids of the live (not zombie) processes of session `sid`.

    A process started with `start_new_session=True` leads a session of its own, and
    everything it forks stays in it, including Airflow's task processes, which move to
    process groups of their own (so `os.killpg` on the leader's group misses them). The
    kernel does not reuse a pid while a session or group still carries it, so the sid
    of a dead leader still names only its own family.
    """
    import psutil

    members = []
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getsid(p.pid) == sid:
                members.append(p.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return members


def kill_session(sid: int, timeout: float = 30) -> list[int]:
    """SIGKILL every process of session `sid` at once, like a host or container dying.

    The family is frozen first (SIGSTOP, scanning again until no new member appears), so
    nothing forks while it is collected, then killed. Returns the pids killed; raises
    RuntimeError if any is still alive after `timeout` seconds.
    """
    import signal
    import time

    stopped: set[int] = set()
    for _ in range(50):
        new = set(session_members(sid)) - stopped
        if not new:
            break
        for pid in new:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        stopped |= new
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while (alive := session_members(sid)) and time.monotonic() < deadline:
        for pid in alive:  # a member forked between the last scan and its parent's SIGSTOP
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    if alive:
        raise RuntimeError(f"session {sid}: processes survived SIGKILL: {alive}")
    return sorted(stopped)


def stop_session(proc, timeout: float = 10) -> list[int]:
    """`stop_process` (SIGTERM to the process group, SIGKILL if it lingers), then SIGKILL
    whatever is left of the session the process leads (see `session_members`). For
    processes started with `start_new_session=True`; returns the pids of the leftovers."""
    import subprocess

    try:
        stop_process(proc, timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    leftovers = kill_session(proc.pid)
    if proc.poll() is None:
        proc.wait(timeout=timeout)
    return leftovers


# ---------------------------------------------------------------- Airflow for e2e tests
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def make_airflow_env(
    home: Path,
    metadata_db: str,
    *,
    dags: Path | None = None,
    target: str | None = None,
    lake: Path | None = None,
    keyring_file: Path | None = None,
    log_level: str = "WARNING",
    **extra: str,
) -> dict[str, str]:
    """The environment of an Airflow command or component run by a test.

    Nothing named AIRFLOW* or HANDOVER* is inherited from the caller (a shell that sourced
    scripts/env.sh, a test's leftovers): the metadata database `metadata_db`, AIRFLOW_HOME
    `home`, the DAG folder (the project's unless `dags`), the plugins, and when given the
    target database (the handover_target connection), the lake folder and the keyring
    (the handover_keys connection) are the test's own. `extra` adds or overrides variables.
    """
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HANDOVER"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg_url(metadata_db, "postgresql+psycopg2"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags or ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": log_level,
            "PYTHONPATH": str(ROOT / "include"),
            "PYTHONWARNINGS": "ignore",
        }
    )
    if target is not None:
        env["AIRFLOW_CONN_HANDOVER_TARGET"] = pg_url(target, "postgres")
    if lake is not None:
        env["HANDOVER_LAKE_URL"] = f"file://{lake}"
    if keyring_file is not None:
        env["AIRFLOW_CONN_HANDOVER_KEYS"] = json.dumps(
            {"conn_type": "generic", "extra": json.loads(Path(keyring_file).read_text())}
        )
    env.update(extra)
    return env


def migrate_airflow(env: dict[str, str], timeout: float = 300) -> None:
    """`airflow db migrate` on the environment's metadata database; fails the test on error."""
    import subprocess

    run = subprocess.run(
        [AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-2000:]


_AIRFLOW_TEMPLATE: dict[str, str] = {}


def airflow_template_db() -> str:
    """A metadata database that `airflow db migrate` brought to Airflow's schema, once per
    test session (the first caller pays the ~10-20 s of the migration); copies of it
    (`CREATE DATABASE … TEMPLATE`, well under a second) are what a fresh migrated metadata
    database costs afterwards. Nothing connects to it but the migration, so it stays
    copyable; dropped at the session's end (`_drop_airflow_template`)."""
    if "name" not in _AIRFLOW_TEMPLATE:
        import tempfile

        name = create_database("handover_af_template")
        try:
            with tempfile.TemporaryDirectory(prefix="af-template-") as home:
                migrate_airflow(make_airflow_env(Path(home), name))
        except BaseException:
            drop_database(name)
            raise
        _AIRFLOW_TEMPLATE["name"] = name
    return _AIRFLOW_TEMPLATE["name"]


def create_airflow_database(prefix: str) -> str:
    """A fresh metadata database at Airflow's migrated schema (a copy of the session's
    migrated template: see `airflow_template_db`)."""
    return create_database(prefix, template=airflow_template_db())


@pytest.fixture(scope="session", autouse=True)
def _drop_airflow_template():
    yield
    name = _AIRFLOW_TEMPLATE.pop("name", None)
    if name:
        drop_database(name)


@contextlib.contextmanager
def fresh_airflow(
    root: Path,
    keyring_file: Path,
    *,
    target_prefix: str = "handover_e2e",
    migrate: bool = True,
    log_level: str = "WARNING",
    **extra: str,
):
    """Airflow for `airflow dags test` / `tasks test` in a test module: a fresh metadata
    database and a fresh target database on the machine's PostgreSQL, AIRFLOW_HOME
    `root`/airflow, the lake `root`/lake, the keyring of `keyring_file` (see
    `make_airflow_env`); migrated (a copy of the session's migrated template,
    `create_airflow_database`) unless `migrate=False`. Yields {"env", "root", "meta",
    "target"}; both databases are dropped on exit."""
    meta = create_airflow_database("handover_af") if migrate else create_database("handover_af")
    try:
        target = create_database(target_prefix)
        try:
            env = make_airflow_env(
                root / "airflow",
                meta,
                target=target,
                lake=root / "lake",
                keyring_file=keyring_file,
                log_level=log_level,
                **extra,
            )
            yield {"env": env, "root": root, "meta": meta, "target": target}
        finally:
            drop_database(target)
    finally:
        drop_database(meta)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """Endpoint URL of a moto S3 server that lives for the test session."""
    proc, endpoint = start_moto_server(tmp_path_factory.mktemp("moto") / "moto.log")
    yield endpoint
    stop_process(proc)


def lake_connection(endpoint: str, **extra) -> str:
    """AIRFLOW_CONN_HANDOVER_LAKE value (JSON) for an S3 endpoint with moto's dummy keys."""
    import json

    return json.dumps(
        {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": endpoint, "region_name": "us-east-1", **extra},
        }
    )


def worker_hostname() -> str:
    """`[core] hostname_callable` for test workers sharing one machine.

    Airflow records the hostname of the worker that ran a task instance; two Celery
    workers on one host would record the same name, so each gets its own through
    HANDOVER_WORKER_HOSTNAME.
    """
    import socket

    return os.environ.get("HANDOVER_WORKER_HOSTNAME") or socket.getfqdn()


def content_checksums(dsn: str, system: str = "legacy_bss") -> dict[str, tuple[int, str]]:
    """Row count and content checksum of every target table, comparable across runs.

    `handover.db.load.table_checksum` hashes whole rows, ciphertext included; AES-GCM
    with a random nonce makes two independent runs differ there even when they landed
    the same data. This hashes the columns the loader itself compares
    (`handover.db.load.comparable_columns`): everything but `*_enc` and `*_key_id`, while
    the keyed blind index of each encrypted field still pins its plaintext.
    """
    import psycopg
    from psycopg import sql

    from handover.config.loader import load_config
    from handover.db.load import comparable_columns

    cfg = load_config(system)
    out = {}
    with psycopg.connect(dsn) as conn:
        for table in cfg.tables:
            tmap = cfg.table_mapping(table)
            cols = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema=%s "
                    "AND table_name=%s ORDER BY ordinal_position",
                    (cfg.mapping["schema"], tmap["target"]),
                )
            ]
            keep = sql.SQL(", ").join(
                sql.SQL("t.{}").format(sql.Identifier(c)) for c in comparable_columns(cols)
            )
            row = conn.execute(
                sql.SQL(
                    "SELECT count(*), coalesce(md5(string_agg(md5(row({keep})::text), '' "
                    "ORDER BY t.{key})), '') FROM {tbl} t"
                ).format(
                    keep=keep,
                    key=sql.Identifier(tmap["key"]),
                    tbl=sql.Identifier(cfg.mapping["schema"], tmap["target"]),
                )
            ).fetchone()
            out[table] = (int(row[0]), row[1])
    return out


# ---------------------------------------------------------------- fault and corpus helpers
def make_system(
    dest: Path,
    tables: tuple[str, ...],
    *,
    partitions: dict | None = None,
    catalog_extra: dict | None = None,
) -> Path:
    """A source-system config folder: legacy_bss pruned to `tables` (read, never copied by
    hand, so it follows every change to legacy_bss). Policy parts that name a dropped table
    go too; `partitions` and `catalog_extra` ({table: {key: value}}) override the catalog.
    """
    import yaml

    from handover.config.loader import CONFIG_ROOT

    src = CONFIG_ROOT / "legacy_bss"
    docs = {
        n: yaml.safe_load((src / f"{n}.yaml").read_text(encoding="utf-8"))
        for n in ("catalog", "policy", "cleansing", "mapping")
    }
    for name in ("catalog", "cleansing", "mapping"):
        docs[name]["tables"] = {t: s for t, s in docs[name]["tables"].items() if t in tables}
    for t, n in (partitions or {}).items():
        docs["catalog"]["tables"][t]["partitions"] = n
    for t, extra in (catalog_extra or {}).items():
        docs["catalog"]["tables"][t].update(extra)
    policy = docs["policy"]
    for what in ("objection", "consent"):
        if what in policy and policy[what]["table"] not in tables:
            del policy[what]
    used = {docs["catalog"]["tables"][t]["category"] for t in tables}
    policy["categories"] = {c: p for c, p in policy["categories"].items() if c in used}
    dest.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        (dest / f"{name}.yaml").write_text(
            yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8"
        )
    return dest


def write_manifest(
    source: Path, rows: dict[str, int | None], exported_at: str = "2026-11-01 00:00:00"
) -> None:
    """export_manifest.json for the files in `source` (rows None: not declared)."""
    import hashlib
    import json

    tables = {}
    for table, n in rows.items():
        entry: dict = {"file": f"{table}.csv"}
        if n is not None:
            entry["rows"] = n
        f = source / entry["file"]
        if f.is_file():
            entry["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
        tables[table] = entry
    (source / "export_manifest.json").write_text(
        json.dumps({"system": "legacy_bss", "exported_at": exported_at, "tables": tables})
    )


def run_stages(
    run_id: str,
    source_dir: Path | str,
    system: str | Path = "legacy_bss",
    *,
    gates: bool | set = True,
    hook=None,
    on_error=None,
    until: str | None = None,
    dag_id: str = "handover_tests",
) -> dict:
    """The task bodies in the DAG's (and handover.flows.runner's) order, in this process.

    `hook(stage, item)` runs before every call (the place to inject a fault);
    `on_error(stage, item, exc, attempt)` returning True retries the failed call, the way
    Airflow retries a task. `until` stops before that stage ("load" leaves a run whose
    every gate passed and nothing loaded). `gates=False` skips the Great Expectations
    gates, which write neither the target nor the ledger, to keep fault tests in budget;
    a set of gate names runs only those.
    """
    from handover.flows import migration as pipeline

    state: dict = {"run_id": run_id}

    def call(stage, fn, item, *args):
        attempt = 0
        while True:
            attempt += 1
            if hook is not None:
                hook(stage, item)
            try:
                return fn(*args)
            except Exception as exc:
                if on_error is None or not on_error(stage, item, exc, attempt):
                    raise

    def gate(name, parts):
        if not gates or (gates is not True and name not in gates):
            return parts
        return [
            call(f"validate_{name}", pipeline.run_gate_task, p, state["ctx"], p, name)
            for p in parts
        ]

    ctx = state["ctx"] = call(
        "plan_run",
        lambda: pipeline.plan_run(
            run_id=run_id, dag_id=dag_id, system=str(system), source_dir=str(source_dir)
        ),
        None,
    )
    order = [
        "extract",
        "comply",
        "resolve",
        "cleanse",
        "map_protect",
        "load",
        "reconcile",
        "publish",
    ]
    stop = order.index(until) if until else len(order)
    parts = []
    if stop > 0:
        parts = pipeline.flatten(
            [call("extract", pipeline.extract_table, t, ctx, t) for t in ctx["tables"]]
        )
        parts = gate("intake", parts)
    if stop > 1:
        parts = [call("comply", pipeline.comply_partition, p, ctx, p) for p in parts]
        parts = gate("compliance", parts)
    if stop > 2:
        call("resolve_customers", pipeline.resolve_customers, None, ctx)
    if stop > 3:
        parts = [call("cleanse", pipeline.cleanse_partition, p, ctx, p) for p in parts]
        parts = gate("quality", parts)
    if stop > 4:
        parts = [call("map_protect", pipeline.map_protect_partition, p, ctx, p) for p in parts]
        parts = gate("contract", parts)
    state["parts"] = parts
    if stop > 5:
        state["loaded"] = [call("load", pipeline.load_partition, p, ctx, p) for p in parts]
    if stop > 6:
        for t in ctx["tables"]:
            call("reconcile_table", pipeline.reconcile_table, t, ctx, t)
            if gates is True or (gates and "reconciliation" in gates):
                call("validate_reconciliation", pipeline.reconciliation_gate, t, ctx, t)
    if stop > 7:
        state["reports"] = call("publish", pipeline.publish, None, ctx)
    return state


def finish_run(state: dict, *, gates: bool = False) -> dict:
    """Load every partition (again: loads are idempotent), reconcile, publish."""
    from handover.flows import migration as pipeline

    ctx = state["ctx"]
    state["loaded"] = [pipeline.load_partition(ctx, p) for p in state["parts"]]
    for t in ctx["tables"]:
        pipeline.reconcile_table(ctx, t)
        if gates:
            pipeline.reconciliation_gate(ctx, t)
    state["reports"] = pipeline.publish(ctx)
    return state


def ledger_report(dsn: str, run_id: str) -> dict[str, dict]:
    """Per table: the reconciliation row, and whether the ledger's stages chain
    (each stage's rows in = the previous stage's rows out, per table)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        recon = {
            r[0]: {
                "source_rows": r[1],
                "loaded": r[2],
                "quarantined": r[3],
                "excluded": r[4],
                "target_rows": r[5],
                "balanced": r[6],
                "merged": r[7],
            }
            for r in conn.execute(
                "SELECT table_name, source_rows, loaded, quarantined, excluded, "
                "target_rows, balanced, merged FROM handover_meta.reconciliation WHERE "
                "run_id=%s",
                (run_id,),
            )
        }
        stages = conn.execute(
            "SELECT table_name, stage, sum(rows_in), sum(rows_out), sum(rows_quarantined), "
            "sum(rows_excluded), sum(rows_merged) FROM handover_meta.ledger WHERE run_id=%s "
            "GROUP BY 1, 2",
            (run_id,),
        ).fetchall()
    by: dict[str, dict] = {}
    for t, stage, i, o, q, x, m in stages:
        by.setdefault(t, {})[stage] = (int(i), int(o), int(q), int(x), int(m))
    for t, st in by.items():
        chain = [s for s in ("extract", "comply", "cleanse", "map", "load") if s in st]
        ok = all(st[s][0] == st[s][1] + st[s][2] + st[s][3] + st[s][4] for s in chain)
        ok &= all(st[a][1] == st[b][0] for a, b in zip(chain, chain[1:], strict=False))
        recon.setdefault(t, {})["stages"] = st
        recon[t]["chained"] = ok
    return recon


def assert_ledger_balanced(dsn: str, run_id: str, tables) -> dict:
    """Every table reconciled and balanced: in = loaded + merged + quarantined + excluded, the
    target holds exactly the loaded rows, and the ledger's stages chain."""
    report = ledger_report(dsn, run_id)
    for t in tables:
        r = report.get(t)
        assert r is not None and "balanced" in r, f"{t}: no reconciliation row in {run_id}"
        assert r["source_rows"] == (r["loaded"] + r["merged"] + r["quarantined"] + r["excluded"]), (
            t,
            r,
        )
        assert r["target_rows"] == r["loaded"] and r["balanced"] and r["chained"], (t, r)
    return report


def empty_target(dsn: str) -> None:
    """Empty every target table (crm.*) of a database, keeping handover_meta's history."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT format('%I.%I', table_schema, table_name) FROM information_schema.tables "
                "WHERE table_schema = 'crm' AND table_type = 'BASE TABLE'"
            )
        ]
        if tables:
            conn.execute(f"TRUNCATE {', '.join(tables)}")


# ---------------------------------------------------------------- books' keyed hashes
def unhash_book_keys(keyring_file: Path, rows, candidates) -> list:
    """Rows of (table, record_key, ...) from the books with keyed hashes
    ('destroyed:<HMAC>', what a run's end and retention leave) turned back into the clear
    key among `candidates` ({(table, key)} the test knows from the export). A hash that
    matches no candidate stays as it is, so a test still sees it."""
    import json

    from handover.lifecycle.retention import DESTROYED, key_digest
    from handover.protection.fields import Keyring

    ring = Keyring.from_dict(json.loads(Path(keyring_file).read_text()))
    names = {(t, DESTROYED + key_digest(ring, t, k)): k for t, k in candidates}
    return [(r[0], names.get((r[0], r[1]), r[1]), *r[2:]) for r in rows]


def reseal(src: Path, rows: bool = False) -> None:
    """The export's manifest with each file's sha256 as it is now (and, with `rows`, its
    row count: a CSV with a header line and one line a row): an export as the operator
    seals it (tests that plant a defect in a file are handing over a bad export, not
    editing a sealed one, which extract refuses)."""
    import hashlib
    import json

    import pandas as pd

    manifest = json.loads((Path(src) / "export_manifest.json").read_text())
    for entry in manifest.get("tables", {}).values():
        f = Path(src) / entry.get("file", "")
        if isinstance(entry, dict) and entry.get("file") and f.is_file():
            entry["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
            if rows:
                entry["rows"] = len(pd.read_csv(f, dtype=str, keep_default_na=False))
    (Path(src) / "export_manifest.json").write_text(json.dumps(manifest))


def point_at(mp: pytest.MonkeyPatch, dsn: str, lake: Path, keyring_file: Path) -> None:
    """Library calls in this process use this target, this local lake and this keyring
    (the environment variables win; any Airflow connection of the same name is unset)."""
    mp.setenv("HANDOVER_TARGET_DSN", dsn)
    mp.setenv("HANDOVER_LAKE_URL", f"file://{lake}")
    mp.setenv("HANDOVER_KEYRING_FILE", str(keyring_file))
    for var in (
        "AIRFLOW_CONN_HANDOVER_KEYS",
        "AIRFLOW_CONN_HANDOVER_TARGET",
        "AIRFLOW_CONN_HANDOVER_LAKE",
    ):
        mp.delenv(var, raising=False)


class LogCapture(logging.Handler):
    """Every message logged (any logger, any level) while in the `with` block, as text:
    what a planted-PII search reads."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> LogCapture:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeHandler(self)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)
