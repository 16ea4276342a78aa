"""make bench: the whole migration measured against raw COPY, naive pandas, dlt and keyed
COPY, in one run.

    python scripts/bench.py [--subscribers 200000] [--calls-per-subscriber 26]
                            [--scale 0.2] [--naive-sample 500000] [--dlt-formats csv,parquet]

For each size (the main one, then --scale times it) on the same PostgreSQL (the peers are
in scripts/bench_peers.py):
  (a) raw COPY ... FROM STDIN (FORMAT csv) of every source file into text tables (the floor);
  (b) naive pandas read_csv + DataFrame.to_sql of call records, on a sample, scaled;
  (d) dlt (scripts/bench_dlt.py, pinned in bench/requirements.txt), merge on the natural
      keys, Arrow batches in, once per loader format, each in its own process and database;
  (c) the whole customer_migration DAG through `airflow dags test`, every stage and gate;
  (e) keyed COPY: the run's mapped rows COPYed into an empty keyed copy of the target schema;
  (f) the cost of encrypting its working set, per stage (plain vs encrypted Parquet);
then three reruns of the largest finished load partition (once autovacuum has settled;
the median against its first load), and each task id's most-growing instance rerun alone
in a fresh process for its peak RSS. Prints rows/s, ratios, wall time per stage and peak
RSS, and writes bench/results.json. Not a test: numbers, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from bench_peers import (  # noqa: E402 - scripts/ is on the path as this script's folder
    LAUNCHER,
    dlt_peer,
    fresh_db,
    keyed_copy,
    naive_pandas,
    peer_summary,
    raw_copy,
)

from handover_synth import legacy_bss as synth  # noqa: E402 - importable only after the sys.path line above

BENCH_DB = "handover_bench"


class PeakRSS(threading.Thread):
    """Polls a process tree's resident memory; the peak of the biggest process."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                proc = psutil.Process(self.pid)
                for p in [proc, *proc.children(recursive=True)]:
                    self.peak = max(self.peak, p.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.2)


def dag_run(source: Path, env: dict) -> tuple[float, int, str]:
    conf = json.dumps({"source_dir": str(source)})
    log = ROOT / ".state" / "bench" / f"dag-run-{source.name}.log"  # one per size
    started = time.monotonic()
    with log.open("w") as fh:
        # INFO: each task logs its "task metrics" line (seconds, peak RSS) at that level.
        proc = subprocess.Popen(
            ["airflow", "dags", "test", "customer_migration", "-c", conf],
            env={**env, "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"},
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
        watch = PeakRSS(proc.pid)
        watch.start()
        rc = proc.wait()
        watch.stop.set()
    wall = time.monotonic() - started
    if rc != 0:
        raise SystemExit(f"bench: the DAG run failed; see {log}")
    return wall, watch.peak // (1 << 20), str(log)


METRIC = re.compile(
    r"task metrics: (?P<task>[\w.]+)\[(?P<index>-?\d+)\] (?P<secs>[\d.]+) s, "
    r"peak RSS (?P<mb>\d+) MB(?: \((?P<start>\d+) MB at start\))?"
)


def task_metrics(log: Path) -> dict[str, dict]:
    """Per task id, from the run's log: instances, summed seconds and the largest peak RSS of
    one instance (handover.ops.tasks resets the process's peak mark before each task body)."""
    out: dict[str, dict] = {}
    for m in METRIC.finditer(log.read_text(errors="replace")):
        t = out.setdefault(
            m["task"], {"instances": 0, "seconds": 0.0, "peak_rss_mb": 0, "own_rss_mb": 0}
        )
        t["instances"] += 1
        t["seconds"] = round(t["seconds"] + float(m["secs"]), 2)
        t["peak_rss_mb"] = max(t["peak_rss_mb"], int(m["mb"]))
        if m["start"] is not None:  # above what the process held when the task began
            own = int(m["mb"]) - int(m["start"])
            if own >= t["own_rss_mb"]:
                t["own_rss_mb"], t["largest_index"] = own, int(m["index"])
    return out


def task_process_peaks(run_id: str, tasks: dict[str, dict], env: dict, log: Path) -> dict:
    """Peak RSS of each task id in a process of its own, as an executor runs it.

    `dags test` runs every task in one process, so its per-task figures include what
    earlier tasks left there. Here, after the run, the instance of each task id that grew
    most in that process is run again by `airflow tasks test` in a fresh process (tasks
    are idempotent: a rerun rewrites the same outputs), in DAG order, and the process's
    peak RSS is read from the kernel (wait4's ru_maxrss): imports, Airflow, GX and the task.
    """
    out: dict[str, dict] = {}
    with log.open("w") as fh:
        for task_id, t in tasks.items():  # the log's order: the DAG's
            index = t.get("largest_index", -1)
            cmd = ["airflow", "tasks", "test", "customer_migration", task_id, run_id]
            if index >= 0:
                cmd += ["--map-index", str(index)]
            started = time.monotonic()
            # Through a small launcher: Linux keeps the high-water mark of the image a
            # process replaced by exec, and Python starts children with vfork, so a task
            # launched from this (large) process would report this process's peak.
            launched = subprocess.run(
                [sys.executable, "-S", "-c", LAUNCHER, *cmd],
                env={**env, "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"},
                stdout=subprocess.PIPE,
                stderr=fh,
                text=True,
            )
            if launched.returncode != 0:
                raise SystemExit(f"bench: rerunning {task_id}[{index}] failed; see {log}")
            peak_mb = int(launched.stdout.split()[-1])
            out[task_id] = {
                "map_index": index,
                "peak_rss_mb": peak_mb,
                "seconds": round(time.monotonic() - started, 1),
            }
            print(f"    own process: {task_id}[{index}] peak RSS {peak_mb} MB", flush=True)
    return out


def stage_times(run_id: str) -> dict[str, float]:
    """Wall span per task id (first start to last end over its mapped instances)."""
    from sqlalchemy import create_engine, text

    eng = create_engine(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    with eng.connect() as c:
        rows = c.execute(
            text(
                "SELECT task_id, extract(epoch FROM max(end_date) - min(start_date)), count(*) "
                "FROM task_instance WHERE run_id = :r GROUP BY task_id ORDER BY min(start_date)"
            ),
            {"r": run_id},
        ).fetchall()
    return {t: round(float(s or 0), 2) for t, s, _ in rows}


def rerun_largest_load(run_id: str, target_dsn: str) -> dict:
    from handover.db.load import table_checksum
    from handover.flows import migration as pipeline

    with psycopg.connect(target_dsn) as conn:
        table, part, rows, secs, first_method = conn.execute(
            "SELECT table_name, partition, rows_out, (detail->>'seconds')::float, "
            "detail->>'method' "
            "FROM handover_meta.ledger WHERE run_id=%s AND stage='load' "
            "ORDER BY rows_out DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        before = table_checksum(conn, "crm", "call_record", "cdr_id")
    # Autovacuum works through the tables the run just filled (10 M new rows trigger it):
    # a rerun measured beside it measures autovacuum too. Wait (at most 3 min) until it is
    # done, and say how long that took.
    settle = time.monotonic()
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        while (
            time.monotonic() - settle < 180
            and conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' "
                "AND datname = current_database()"
            ).fetchone()[0]
        ):
            time.sleep(1)
    settle = time.monotonic() - settle
    ctx = {"run_id": run_id, "system": "legacy_bss"}
    runs, changed = [], 0
    for _ in range(3):  # three reruns, the median reported: one is at the mercy of the host
        started = time.monotonic()
        stats = pipeline.load_partition(ctx, {"table": table, "partition": part})
        wall = time.monotonic() - started
        changed += stats["inserted"] + stats["updated"]
        with psycopg.connect(target_dsn) as conn:
            # Like with like: the rerun's own ledger row times the same span as the first
            # load's (the load transaction), not reading the Parquet file or connecting.
            again, method = conn.execute(
                "SELECT (detail->>'seconds')::float, detail->>'method' FROM "
                "handover_meta.ledger WHERE run_id=%s AND stage='load' AND table_name=%s "
                "AND partition=%s",
                (run_id, table, part),
            ).fetchone()
        runs.append((again, wall, method))
    with psycopg.connect(target_dsn) as conn:
        after = table_checksum(conn, "crm", "call_record", "cdr_id")
    again, wall, method = sorted(runs)[1]
    return {
        "table": table,
        "partition": part,
        "rows": rows,
        "first_load_s": secs,
        "first_method": first_method,
        "rerun_s": round(again, 2),
        "rerun_method": method,
        "rerun_wall_s": round(wall, 2),
        "reruns_s": [round(r[0], 2) for r in runs],
        "autovacuum_wait_s": round(settle, 1),
        "ratio": round(again / secs, 2) if secs else None,
        "changed": changed,
        "target_unchanged": before == after,
    }


def encryption_cost(run_id: str, wall: float) -> dict:
    """(f) What encrypting the working set costs, stage by stage: every stage object the
    run left in the lake, written and read back once encrypted (Parquet modular
    encryption under the stage's key, as the pipeline does) and once as plain Parquet
    with the same options, best of two each; the difference summed per stage, against
    the whole DAG's wall time. The run's end has already destroyed the excluded rows, so
    comply/_excluded is not among them (it is small)."""
    import pyarrow.parquet as pq

    from handover.lifecycle.retention.working_sets import shred_scope
    from handover.storage.lake import lake_from_url
    from handover.storage.lake_crypto import scope_of
    from handover.storage.layout import safe_run_id
    from handover.storage.objects import PARQUET_OPTIONS

    lake = lake_from_url()
    probe = ROOT / ".state" / "bench" / "encryption-probe.parquet"
    stages: dict[str, dict[str, float]] = {}
    for key in lake.list(f"runs/{safe_run_id(run_id)}/"):
        scope = scope_of(key)
        if scope is None or "/_purged" in scope:
            continue
        stage = scope.split("/", 2)[2]
        table = lake.read_table(key)
        probe_scope = key.replace(f"runs/{safe_run_id(run_id)}/", "runs/_bench_probe/", 1)
        best = {}
        for mode in ("plain", "encrypted"):
            w = r = float("inf")
            for _ in range(2):
                opts = (
                    dict(PARQUET_OPTIONS) if mode == "plain" else lake.parquet_options(probe_scope)
                )
                t0 = time.perf_counter()
                pq.write_table(table, probe, **opts)
                t1 = time.perf_counter()
                lake._open_parquet(probe, mode == "encrypted").read()
                t2 = time.perf_counter()
                w, r = min(w, t1 - t0), min(r, t2 - t1)
            best[mode] = (w, r)
        s = stages.setdefault(stage, {"objects": 0, "rows": 0, "plain_s": 0.0, "encrypted_s": 0.0})
        s["objects"] += 1
        s["rows"] += table.num_rows
        s["plain_s"] += sum(best["plain"])
        s["encrypted_s"] += sum(best["encrypted"])
        del table
    probe.unlink(missing_ok=True)
    for k in lake.list("_keys/runs/_bench_probe/"):
        shred_scope(lake, k.removeprefix("_keys/").removesuffix(".json"))
    extra = sum(v["encrypted_s"] - v["plain_s"] for v in stages.values())
    for v in stages.values():
        v["extra_s"] = round(v["encrypted_s"] - v["plain_s"], 3)
        v["extra_share_of_run"] = round(v["extra_s"] / wall, 4)
        v["plain_s"], v["encrypted_s"] = round(v["plain_s"], 3), round(v["encrypted_s"], 3)
    print(
        f"(f) encrypting the working set: +{extra:.2f}s of {wall:.1f}s = "
        f"{extra / wall:.1%} of the run (write + read once per object, per stage below)",
        flush=True,
    )
    for name, v in sorted(stages.items()):
        print(
            f"    {name:<22} {v['objects']:>4} objects {v['rows']:>12,} rows  plain "
            f"{v['plain_s']:7.2f}s  encrypted {v['encrypted_s']:7.2f}s  "
            f"extra {v['extra_s']:+6.2f}s = {v['extra_share_of_run']:.1%} of the run",
            flush=True,
        )
    return {
        "extra_seconds": round(extra, 2),
        "share_of_run": round(extra / wall, 4),
        "stages": stages,
        "method": encryption_cost.__doc__.split("\n\n")[0],
    }


def one_size(subscribers: int, calls: float, naive_sample: int, dlt_formats: list[str]) -> dict:
    base = ROOT / ".state" / "bench"
    source = base / f"source-{subscribers}"
    if not (source / "export_manifest.json").exists():
        print(f"== generating {subscribers:,} subscribers ({calls} calls each)", flush=True)
        synth.generate(source, subscribers, seed=42, call_records_per_subscriber=calls)
    manifest = json.loads((source / "export_manifest.json").read_text())
    total = sum(t["rows"] for t in manifest["tables"].values())
    calls_rows = manifest["tables"]["call_records"]["rows"]
    print(f"== {total:,} rows ({calls_rows:,} call records)", flush=True)

    copy_rows, copy_s = raw_copy(source, fresh_db("bench_copy"))
    print(
        f"(a) raw COPY: {copy_rows:,} rows in {copy_s:.1f}s = {copy_rows / copy_s:,.0f} rows/s",
        flush=True,
    )
    n, naive_s, naive_rss = naive_pandas(
        source, fresh_db("bench_naive"), min(naive_sample, calls_rows)
    )
    print(
        f"(b) naive read_csv+to_sql: {n:,}-row sample of call records in {naive_s:.1f}s = "
        f"{n / naive_s:,.0f} rows/s (sample, rate applies to all), peak RSS {naive_rss} MB",
        flush=True,
    )
    dlt_runs = [dlt_peer(source, total, fmt) for fmt in dlt_formats]
    dlt = max(dlt_runs, key=lambda r: r["rows_per_s"]) if dlt_runs else None

    # Its own target database and lake, not the demo's: `make demo` after `make bench`
    # finds its target as it left it (the bench's 20 M rows would collide with its keys).
    target = fresh_db(BENCH_DB)
    lake = base / f"lake-{source.name}"
    shutil.rmtree(lake, ignore_errors=True)
    # (set here too: the load rerun below runs in this process)
    os.environ.update(HANDOVER_TARGET_DSN=target, HANDOVER_LAKE_URL=f"file://{lake}")
    env = dict(os.environ)
    wall, peak_mb, log = dag_run(source, env)
    with psycopg.connect(target) as conn:
        run_id, status = conn.execute(
            "SELECT run_id, status FROM handover_meta.run ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
        balanced = conn.execute(
            "SELECT bool_and(balanced), count(*) FROM handover_meta.reconciliation WHERE run_id=%s",
            (run_id,),
        ).fetchone()
    stages = stage_times(run_id)
    tasks = task_metrics(Path(log))
    if not tasks:
        raise SystemExit(f"bench: no 'task metrics' lines in {log} (is the log level INFO?)")
    task_peak = max(t["peak_rss_mb"] for t in tasks.values())
    print(
        f"(c) customer_migration DAG: {total:,} rows in {wall:.1f}s = {total / wall:,.0f} rows/s,"
        f" run {status}, {balanced[1]} tables reconciled, all balanced: {balanced[0]}",
        flush=True,
    )
    rerun = rerun_largest_load(run_id, target)
    keyed = keyed_copy(run_id)
    encryption = encryption_cost(run_id, wall)
    own = task_process_peaks(
        run_id, tasks, env, ROOT / ".state" / "bench" / f"task-reruns-{source.name}.log"
    )
    return {
        "subscribers": subscribers,
        "total_rows": total,
        "call_records": calls_rows,
        "copy_rows_per_s": round(copy_rows / copy_s),
        "copy_seconds": round(copy_s, 2),
        "naive_rows_per_s": round(n / naive_s),
        "naive_sample_rows": n,
        "naive_peak_rss_mb": naive_rss,
        "pipeline_rows_per_s": round(total / wall),
        "pipeline_seconds": round(wall, 1),
        # (d) the fastest of the dlt runs (each loader format in `dlt_runs`) and (e)
        "dlt_rows_per_s": dlt and dlt["rows_per_s"],
        "dlt_peak_rss_mb": dlt and dlt["peak_rss_mb"],
        "dlt_format": dlt and dlt["format"],
        "dlt_seconds": dlt and dlt["seconds"],
        "dlt_runs": dlt_runs,
        "keyed_copy_rows_per_s": keyed["rows_per_s"],
        "keyed_copy": keyed,
        "ratio_vs_dlt": dlt and round((total / wall) / dlt["rows_per_s"], 3),
        "ratio_vs_keyed_copy": round((total / wall) / keyed["rows_per_s"], 3),
        "ratio_vs_copy": round((total / wall) / (copy_rows / copy_s), 3),
        "ratio_vs_naive": round((total / wall) / (n / naive_s), 2),
        # Per task, in a process of its own (an executor's view): the figure the target
        # is about. The shared-process figures of the `dags test` run follow.
        "max_task_peak_rss_mb": max(v["peak_rss_mb"] for v in own.values()),
        "task_process_peak_rss_mb": {k: v["peak_rss_mb"] for k, v in own.items()},
        "task_process_rerun": own,
        "max_shared_process_task_peak_rss_mb": task_peak,
        "task_peak_rss_mb": {k: v["peak_rss_mb"] for k, v in tasks.items()},
        "max_task_own_rss_mb": max(t["own_rss_mb"] for t in tasks.values()),
        "task_own_rss_mb": {k: v["own_rss_mb"] for k, v in tasks.items()},
        "task_seconds": {k: v["seconds"] for k, v in tasks.items()},
        "process_peak_rss_mb": peak_mb,
        "peak_rss_note": "max_task_peak_rss_mb and task_process_peak_rss_mb: each task id's "
        "most-growing instance rerun alone by `airflow tasks test` in a fresh "
        "process after the run, peak from wait4 (imports, Airflow, GX and the "
        "task); the rest is the dags-test run: "
        "airflow dags test runs every task in one process, one after another; "
        "each task's peak is that process's VmHWM after a reset at the task's "
        "start, so it includes what the process holds already (Airflow, GX, "
        "allocator pools, state earlier tasks left in this shared process); "
        "task_own_rss_mb is each task's peak above the RSS at its start; "
        "process_peak_rss_mb is the whole run's peak",
        "arrow_memory_pool": os.environ.get("ARROW_DEFAULT_MEMORY_POOL", "mimalloc"),
        "stages": stages,
        "load_rerun": rerun,
        "dag_log": log,
        "encryption": encryption,
        "all_balanced": bool(balanced[0]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subscribers", type=int, default=200_000)
    ap.add_argument("--calls-per-subscriber", type=float, default=26)
    ap.add_argument(
        "--scale",
        type=float,
        default=0.2,
        help="second size as a fraction of the first (0 to skip)",
    )
    ap.add_argument("--naive-sample", type=int, default=500_000)
    ap.add_argument(
        "--dlt-formats",
        default="csv,parquet",
        help="dlt loader file formats to run, the fastest reported (empty to skip dlt)",
    )
    args = ap.parse_args()
    (ROOT / ".state" / "bench").mkdir(parents=True, exist_ok=True)
    sizes = [args.subscribers]
    if args.scale:
        sizes.insert(0, max(1000, int(args.subscribers * args.scale)))
    formats = [f for f in args.dlt_formats.split(",") if f]
    results = [one_size(n, args.calls_per_subscriber, args.naive_sample, formats) for n in sizes]
    main_result = results[-1]
    out = {**main_result, "sizes": results}
    (ROOT / "bench").mkdir(exist_ok=True)
    (ROOT / "bench" / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    print("\n== summary")
    for r in results:
        print(
            f"{r['total_rows']:>12,} rows: pipeline {r['pipeline_rows_per_s']:>9,} rows/s = "
            f"{r['ratio_vs_copy']:.1%} of raw COPY ({r['copy_rows_per_s']:,}), "
            f"{r['ratio_vs_naive']:.1f}x naive ({r['naive_rows_per_s']:,}), {peer_summary(r)}; "
            f"peak RSS {r['max_task_peak_rss_mb']} MB; load rerun "
            f"{r['load_rerun']['ratio']}x first ({r['load_rerun']['first_method']} "
            f"{r['load_rerun']['first_load_s']}s, rerun {r['load_rerun']['rerun_method']} "
            f"{r['load_rerun']['rerun_s']}s, median of {r['load_rerun']['reruns_s']}), "
            f"target unchanged "
            f"{r['load_rerun']['target_unchanged']}"
        )
    if len(results) > 1:
        small, big = results[0], results[-1]
        growth = big["max_task_peak_rss_mb"] / small["max_task_peak_rss_mb"] - 1
        out["task_peak_rss_growth"] = round(growth, 3)
        own = big["max_task_own_rss_mb"] / max(1, small["max_task_own_rss_mb"]) - 1
        out["task_own_rss_growth"] = round(own, 3)
        shared = (
            big["max_shared_process_task_peak_rss_mb"]
            / small["max_shared_process_task_peak_rss_mb"]
            - 1
        )
        out["shared_process_task_peak_rss_growth"] = round(shared, 3)
        print(
            f"largest task peak RSS, each task in its own process: "
            f"{small['max_task_peak_rss_mb']} MB at {small['call_records']:,} call records, "
            f"{big['max_task_peak_rss_mb']} MB at {big['call_records']:,} ({growth:+.0%}); "
            f"in the shared dags-test process: {small['max_shared_process_task_peak_rss_mb']}"
            f" MB and {big['max_shared_process_task_peak_rss_mb']} MB ({shared:+.0%}), of "
            f"which above the process's RSS at the task's start: "
            f"{small['max_task_own_rss_mb']} MB and {big['max_task_own_rss_mb']} MB "
            f"({own:+.0%})"
        )
        (ROOT / "bench" / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    print("stages (s):", json.dumps(main_result["stages"]))
    print("task peak RSS, own process (MB):", json.dumps(main_result["task_process_peak_rss_mb"]))
    print("task peak RSS, shared process (MB):", json.dumps(main_result["task_peak_rss_mb"]))
    print("written: bench/results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
