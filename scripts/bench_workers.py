#!/usr/bin/env python
"""Speed-up of the migration from 1 to 2 Celery workers, on this machine.

    .venv/bin/python scripts/bench_workers.py [--subscribers 20000] [--workers 1,2]

Same setup as tests/e2e/test_celery.py (api-server, scheduler, dag-processor and
`airflow celery worker --concurrency 1` processes, Redis broker, fresh PostgreSQL
databases, S3 lake on a moto server): generates a synthetic export, runs
customer_migration once per worker count into a fresh target, and prints the wall time
of each run and of each partitioned stage, from the task instances' start and end times
in the metadata database. A mapped stage starts only when the whole previous stage has
finished, so a stage's span (first start to last end) is what more workers shorten.

Needs the machine's PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379). The load
average is printed too: other work on the machine makes the figures noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "include")]
os.environ.setdefault("PYTHONWARNINGS", "ignore")


def stage_spans(tis: list[dict], stages: tuple[str, ...]) -> dict[str, dict]:
    """Per partitioned stage: span (first start to last end), summed task time, tries."""
    out = {}
    for stage in stages:
        rows = [
            t
            for t in tis
            if t["task_id"] == stage and t["row"] == "current" and t["start_date"] and t["end_date"]
        ]
        if not rows:
            continue
        span = max(t["end_date"] for t in rows) - min(t["start_date"] for t in rows)
        work = sum((t["end_date"] - t["start_date"]).total_seconds() for t in rows)
        out[stage] = {
            "span": span.total_seconds(),
            "work": work,
            "tasks": len(rows),
            "hosts": sorted({t["hostname"] for t in rows}),
        }
    return out


def cpu_seconds(stack) -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this stack's processes).

    The stack's processes are ours by session (each was started in its own); a task
    process's time reaches its supervisor's children times once it is reaped.
    """
    import psutil

    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
    sessions = {p.pid for p in stack.procs.values()} | ({stack.moto.pid} if stack.moto else set())
    ours = 0.0
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) in sessions:
                c = proc.cpu_times()
                ours += c.user + c.system + c.children_user + c.children_system
        except (psutil.Error, OSError):
            continue
    return busy, ours


def run_once(stack, source: Path, workers: int, timeout: float) -> dict:
    from tests.e2e.test_celery import PARTITION_TASKS

    stack.new_target()
    load_before = os.getloadavg()[0]
    cpu_before = cpu_seconds(stack)
    started = time.monotonic()
    run_id = stack.trigger(source, run_id=f"bench_{workers}w_{int(time.time())}")
    state = stack.wait_for_run(run_id, timeout=timeout)
    wall = time.monotonic() - started
    cpu_after = cpu_seconds(stack)
    if state != "success":
        raise SystemExit(
            f"run {run_id} on {workers} worker(s) ended {state}: "
            f"{stack.failure_report(run_id)[:3000]}"
        )
    ((start, end),) = stack.sql(
        "SELECT start_date, end_date FROM dag_run WHERE run_id=%s", (run_id,)
    )
    tis = stack.task_instances(run_id)
    spans = stage_spans(tis, PARTITION_TASKS)
    # Free moto's memory before the next run (every run writes its own prefix).
    stack.run(
        [
            sys.executable,
            "-c",
            "import sys; from handover.storage.lake import lake_from_url; "
            "lake_from_url().delete_prefix(f'runs/{sys.argv[1]}/')",
            run_id,
        ]
    )
    return {
        "workers": workers,
        "run_id": run_id,
        "wall": wall,
        "dag_run": (end - start).total_seconds(),
        "stages": spans,
        "partitioned": sum(s["span"] for s in spans.values()),
        "load": (load_before, os.getloadavg()[0]),
        # Average cores busy during the run: the whole machine, and this stack
        # (scheduler, api-server, dag-processor, workers, tasks, moto; PostgreSQL
        # and Redis are shared with the machine and not counted as ours).
        "cores_machine": (cpu_after[0] - cpu_before[0]) / wall,
        "cores_stack": (cpu_after[1] - cpu_before[1]) / wall,
    }


def report(results: list[dict], subscribers: int) -> str:
    base = results[0]
    lines = [
        f"customer_migration, {subscribers:,} subscribers, S3 lake on moto, "
        f"Celery workers of concurrency 1, {os.cpu_count()} CPUs",
        "",
    ]
    head = f"{'stage':<22}" + "".join(f"{str(r['workers']) + ' worker(s)':>14}" for r in results)
    head += "".join(f"{'speed-up ' + str(r['workers']):>13}" for r in results[1:])
    lines += [head, "-" * len(head)]
    for stage in base["stages"]:
        row = f"{stage:<22}" + "".join(f"{r['stages'][stage]['span']:>13.1f}s" for r in results)
        row += "".join(
            f"{base['stages'][stage]['span'] / r['stages'][stage]['span']:>12.2f}x"
            for r in results[1:]
        )
        lines.append(row)
    lines.append("-" * len(head))
    for label, key in (("partitioned stages", "partitioned"), ("whole DAG run", "dag_run")):
        row = f"{label:<22}" + "".join(f"{r[key]:>13.1f}s" for r in results)
        row += "".join(f"{base[key] / r[key]:>12.2f}x" for r in results[1:])
        lines.append(row)
    lines.append("")
    for r in results:
        hosts = sorted({h for s in r["stages"].values() for h in s["hosts"]})
        lines.append(
            f"{r['workers']} worker(s): run {r['run_id']}, tasks on {hosts}, "
            f"load average {r['load'][0]:.1f} before / {r['load'][1]:.1f} after, "
            f"cores busy: machine {r['cores_machine']:.2f}, this stack "
            f"{r['cores_stack']:.2f}"
        )
    others = max(r["cores_machine"] - r["cores_stack"] for r in results)
    if others > 0.3 or max(max(r["load"]) for r in results) > (os.cpu_count() or 1) + 0.5:
        lines.append(
            f"note: other work kept up to {others:.2f} of the {os.cpu_count()} cores "
            "busy during a run (PostgreSQL included): the figures are noisy"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, default=20000)
    ap.add_argument("--workers", default="1,2", help="worker counts to run, in order")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = ap.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]

    from handover.protection.fields import Keyring
    from handover_synth import legacy_bss as synth
    from tests.e2e.test_celery import CeleryStack

    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    print(f"work folder {work}; generating {args.subscribers:,} subscribers", flush=True)
    synth.generate(work / "source", args.subscribers, seed=5)
    results = []
    stack = CeleryStack(work, keyring=Keyring.generate("k-bench-1"))
    try:
        names = [f"w{i}" for i in range(1, max(counts) + 1)]
        stack.start(tuple(names[: counts[0]]))
        print(f"stack up in {stack.startup_seconds:.0f}s", flush=True)
        running = counts[0]
        for n in counts:
            if n < running:
                raise SystemExit("--workers must not decrease (workers are only added)")
            for name in names[running:n]:
                stack.start_worker(name)
            running = n
            print(f"running on {n} worker(s)...", flush=True)
            results.append(run_once(stack, work / "source", n, args.timeout))
            print(f"  {results[-1]['dag_run']:.0f}s", flush=True)
    finally:
        stack.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = report(results, args.subscribers)
    print("\n" + text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
