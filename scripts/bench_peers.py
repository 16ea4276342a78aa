"""make bench: what handover's whole DAG is measured against, on the same export and the
same PostgreSQL (scripts/bench.py runs them; docs/performance.md says how to read them).

  (a) raw COPY of every export file into keyless text tables: the floor for these bytes;
  (b) naive pandas read_csv + to_sql of the call records, on a sample;
  (d) dlt, the loader a data engineer would pick (scripts/bench_dlt.py, its own process);
  (e) the keyed-COPY limit: binary COPY of the run's final mapped rows into an empty copy
      of the target schema with its keys and constraints, the load alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import psycopg

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".state" / "bench"

TABLES = [
    "subscribers",
    "consents",
    "call_records",
    "data_sessions",
    "payments",
    "complaints",
    "browsing_events",
]

# Runs argv with its output to stderr, then prints the child's peak RSS in MB (wait4).
LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=2)
_, status, usage = os.wait4(proc.pid, 0)
code = os.waitstatus_to_exitcode(status)
print(usage.ru_maxrss // 1024)
sys.exit(code)
"""


def _with_db(dsn: str, name: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    return make_conninfo(**{**conninfo_to_dict(dsn), "dbname": name})


def admin_dsn() -> str:
    from handover.config.connections import target_dsn

    return _with_db(target_dsn(), "postgres")


def fresh_db(name: str) -> str:
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return _with_db(admin_dsn(), name)


def drop_db(name: str) -> None:
    """A peer's database goes once counted: its autovacuum must not run beside what follows."""
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def raw_copy(source: Path, dsn: str) -> tuple[int, float]:
    """COPY every file as-is into text tables: PostgreSQL's own floor for these bytes."""
    rows, started = 0, time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in TABLES:
            path = source / f"{table}.csv"
            header = path.open(encoding="utf-8").readline().strip().split(",")
            cols = ", ".join(f'"{c}" text' for c in header)
            conn.execute(f'CREATE TABLE "{table}" ({cols})')
            with (
                conn.cursor().copy(f'COPY "{table}" FROM STDIN (FORMAT csv, HEADER)') as cp,
                path.open("rb") as fh,
            ):
                while chunk := fh.read(1 << 20):
                    cp.write(chunk)
            rows += conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
    return rows, time.monotonic() - started


def naive_pandas(source: Path, dsn: str, sample: int) -> tuple[int, float, int]:
    """What most people write first: read_csv + to_sql (SQLAlchemy + psycopg2)."""
    code = f"""
import time, pandas as pd, sqlalchemy as sa, resource
t = time.monotonic()
df = pd.read_csv({str(source / "call_records.csv")!r}, nrows={sample})
eng = sa.create_engine({sa_url(dsn)!r})
df.to_sql("call_records_naive", eng, if_exists="replace", index=False)
print(len(df), time.monotonic() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[0]), float(out[1]), int(out[2]) // 1024


def sa_url(dsn: str) -> str:
    parts = dict(p.split("=", 1) for p in dsn.split())
    host = parts.get("host", "")
    if host.startswith("/"):
        return (
            f"postgresql+psycopg2://{parts.get('user', 'postgres')}@/{parts['dbname']}?host={host}"
        )
    return (
        f"postgresql+psycopg2://{parts.get('user', 'postgres')}@{host}:"
        f"{parts.get('port', 5432)}/{parts['dbname']}"
    )


def libpq_url(dsn: str) -> str:
    """The DSN as a postgresql:// URL dlt accepts: dlt insists on a host and a password, so a
    socket directory goes in `?host=` behind `localhost` (libpq lets the query win), and a
    server that asks no password gets a placeholder it never reads."""
    from psycopg.conninfo import conninfo_to_dict

    p = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    user, pw = quote(p.get("user", "postgres"), safe=""), quote(p.get("password", "unused"), "")
    host, port = p.get("host", "localhost"), p.get("port", "5432")
    if host.startswith("/"):
        return f"postgresql://{user}:{pw}@localhost:{port}/{p['dbname']}?host={quote(host)}"
    return f"postgresql://{user}:{pw}@{host}:{port}/{p['dbname']}"


def natural_keys(system: str = "legacy_bss") -> dict[str, str]:
    """Per export table, the source column of the key handover loads on (mapping.yaml)."""
    from handover.config.loader import load_config

    cfg = load_config(system)
    out = {}
    for table in TABLES:
        tmap = cfg.table_mapping(table)
        out[table] = tmap["fields"][tmap["key"]]["from"]
    return out


def dlt_peer(source: Path, total: int, fmt: str) -> dict:
    """(d) The export through dlt (scripts/bench_dlt.py) into a fresh database, in a process
    of its own: its wall time (interpreter and imports included, as the DAG's is) and its
    peak RSS from the kernel (wait4, through the launcher); then the rows that landed."""
    site = os.environ.get("HANDOVER_BENCH_SITE") or str(BENCH / "site")
    if not Path(site, "dlt").is_dir():
        raise SystemExit(f"bench: dlt is not installed in {site}; run `make bench` (bench.sh)")
    name = f"bench_dlt_{fmt}"
    dsn = fresh_db(name)
    work = BENCH / f"dlt-pipelines-{fmt}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = BENCH / f"dlt-{fmt}-{source.name}.log"
    env = {
        **os.environ,
        "PYTHONPATH": site,  # dlt and its pins; nothing of handover
        "DESTINATION__POSTGRES__CREDENTIALS": libpq_url(dsn),
    }
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_dlt.py"), "--source", str(source)]
    cmd += ["--tables", json.dumps(natural_keys()), "--pipelines-dir", str(work), "--format", fmt]
    with log.open("w") as fh:
        started = time.monotonic()
        launched = subprocess.run(
            [sys.executable, "-S", "-c", LAUNCHER, *cmd],
            env=env,
            cwd=work,
            stdout=subprocess.PIPE,
            stderr=fh,
            text=True,
        )
        wall = time.monotonic() - started
    if launched.returncode != 0:
        raise SystemExit(f"bench: the dlt run ({fmt}) failed; see {log}")
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("{")]
    report = json.loads(lines[-1])
    if report["rows_read"] != total:
        raise SystemExit(f"bench: dlt read {report['rows_read']:,} rows of {total:,}; see {log}")
    with psycopg.connect(dsn) as conn:
        loaded = sum(
            conn.execute(f'SELECT count(*) FROM "{report["dataset"]}"."{t}"').fetchone()[0]
            for t in TABLES
        )
    drop_db(name)
    shutil.rmtree(work, ignore_errors=True)
    peak = int(launched.stdout.split()[-1])
    print(
        f"(d) dlt {report['dlt_version']} ({fmt} loader, merge on natural keys, Arrow batches "
        f"in): {total:,} rows in {wall:.1f}s = {total / wall:,.0f} rows/s, peak RSS {peak} MB "
        f"({loaded:,} rows landed: the merge keeps one row per key)",
        flush=True,
    )
    return {
        "format": fmt,
        "rows_per_s": round(total / wall),
        "seconds": round(wall, 2),
        "run_seconds": report["run_seconds"],
        "peak_rss_mb": peak,
        "rows_read": report["rows_read"],
        "rows_landed": loaded,
        "dlt_version": report["dlt_version"],
        "log": str(log),
    }


def keyed_copy(run_id: str, system: str = "legacy_bss") -> dict:
    """(e) The limit of any load into this schema: the run's final mapped rows (its `mapped`
    lake partitions, decrypted as the load reads them) COPYed, as the load does (binary
    where every column's type takes it), into an empty copy of include/sql/target.sql with
    its primary keys, unique index and checks, in a scratch database; one transaction per
    partition. Only the COPYs and commits are timed, not reading the lake."""
    from psycopg import sql

    from handover.config.loader import load_config
    from handover.config.target import TARGET_SQL
    from handover.db.bulk_copy import copy_arrow, copy_format
    from handover.storage.lake import iter_parts, lake_from_url, safe_run_id

    cfg = load_config(system)
    name = "bench_keyed_copy"
    dsn = fresh_db(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(TARGET_SQL.read_text())
    lake = lake_from_url()
    tables: dict[str, dict] = {}
    # autocommit: each `transaction()` below is a real BEGIN ... COMMIT, the commit timed
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in TABLES:
            target = sql.Identifier(cfg.mapping["schema"], cfg.table_mapping(table)["target"])
            t = tables.setdefault(table, {"rows": 0, "seconds": 0.0, "formats": []})
            for key in iter_parts(lake, f"runs/{safe_run_id(run_id)}/mapped/{table}/"):
                data = lake.read_table(key)
                if not data.num_rows:
                    continue
                started = time.monotonic()
                with conn.transaction():
                    copy_arrow(conn, target, data)
                t["seconds"] += time.monotonic() - started
                t["rows"] += data.num_rows
                fmt = copy_format(conn, target, data.schema)
                if fmt not in t["formats"]:
                    t["formats"].append(fmt)
                del data
        landed = sum(
            conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(
                    sql.Identifier(cfg.mapping["schema"], cfg.table_mapping(t)["target"])
                )
            ).fetchone()[0]
            for t in TABLES
        )
    drop_db(name)
    rows = sum(t["rows"] for t in tables.values())
    if landed != rows:
        raise SystemExit(f"bench: keyed COPY landed {landed:,} rows of {rows:,}")
    secs = sum(t["seconds"] for t in tables.values())
    for t in tables.values():
        t["seconds"] = round(t["seconds"], 3)
        t["rows_per_s"] = round(t["rows"] / t["seconds"]) if t["seconds"] else None
    if not rows:
        raise SystemExit(f"bench: no mapped partitions of run {run_id} in the lake")
    formats = sorted({f for t in tables.values() for f in t["formats"]})
    print(
        f"(e) keyed COPY ({'/'.join(formats)}) of the run's {rows:,} mapped rows into the "
        f"empty keyed target schema: {secs:.1f}s = {rows / secs:,.0f} rows/s (load alone)",
        flush=True,
    )
    return {
        "rows": rows,
        "seconds": round(secs, 2),
        "rows_per_s": round(rows / secs),
        "formats": formats,
        "tables": tables,
    }


def peer_summary(r: dict) -> str:
    """The summary's words for (d) and (e)."""
    dlt = (
        f"{r['ratio_vs_dlt']:.2f}x dlt ({r['dlt_rows_per_s']:,}, {r['dlt_format']} loader, "
        f"peak RSS {r['dlt_peak_rss_mb']} MB)"
        if r["dlt_rows_per_s"]
        else "dlt not run"
    )
    return f"{dlt}, {r['ratio_vs_keyed_copy']:.1%} of keyed COPY ({r['keyed_copy_rows_per_s']:,})"
