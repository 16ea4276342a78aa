"""Run the customer migration in one process, without a scheduler.

The same task bodies as the DAG, in the DAG's order. Used by the library's tests and
by the benchmark to measure the pipeline's own cost apart from Airflow's; the DAG is
the way to run it for real.
"""

from __future__ import annotations

import argparse
import logging
import time

from handover.flows import migration as pipeline

GATES = ("intake", "compliance", "quality", "contract")


def run_migration(
    *,
    run_id: str,
    source_dir: str,
    system: str = "legacy_bss",
    dag_id: str = "customer_migration",
    timings: dict | None = None,
) -> dict:
    t = timings if timings is not None else {}

    def timed(name, fn, *a, **kw):
        started = time.monotonic()
        out = fn(*a, **kw)
        t[name] = t.get(name, 0.0) + time.monotonic() - started
        return out

    ctx = timed(
        "plan",
        pipeline.plan_run,
        run_id=run_id,
        dag_id=dag_id,
        system=system,
        source_dir=source_dir,
    )
    parts = pipeline.flatten(
        [timed("extract", pipeline.extract_table, ctx, table) for table in ctx["tables"]]
    )
    parts = [timed("gate_intake", pipeline.run_gate_task, ctx, p, "intake") for p in parts]
    parts = [timed("comply", pipeline.comply_partition, ctx, p) for p in parts]
    parts = [timed("gate_compliance", pipeline.run_gate_task, ctx, p, "compliance") for p in parts]
    timed("resolve", pipeline.resolve_customers, ctx)
    parts = [timed("cleanse", pipeline.cleanse_partition, ctx, p) for p in parts]
    parts = [timed("gate_quality", pipeline.run_gate_task, ctx, p, "quality") for p in parts]
    parts = [timed("map_protect", pipeline.map_protect_partition, ctx, p) for p in parts]
    parts = [timed("gate_contract", pipeline.run_gate_task, ctx, p, "contract") for p in parts]
    loaded = [timed("load", pipeline.load_partition, ctx, p) for p in parts]
    for table in ctx["tables"]:
        timed("reconcile", pipeline.reconcile_table, ctx, table)
        timed("gate_reconciliation", pipeline.reconciliation_gate, ctx, table)
    paths = timed("publish", pipeline.publish, ctx)
    return {"ctx": ctx, "loaded": loaded, "reports": paths, "timings": t}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m handover.flows.runner", description=__doc__)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--run-id", default=f"local__{int(time.time())}")
    ap.add_argument("--system", default="legacy_bss")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = run_migration(run_id=args.run_id, source_dir=args.source_dir, system=args.system)
    for name, secs in out["timings"].items():
        print(f"{name:<22}{secs:8.2f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
