"""Run the customer migration in one process, without a scheduler.

The same task bodies as the DAG, in the DAG's order. Used by the library's tests and
by the benchmark to measure the pipeline's own cost apart from Airflow's; the DAG is
the way to run it for real.
"""

from __future__ import annotations

import argparse
import logging
import time

from handover.flows.cleansing import cleanse_partition, map_protect_partition
from handover.flows.common import flatten
from handover.flows.gated_chain import ChainSteps, Timer, run_chain
from handover.flows.gating import reconciliation_gate, run_gate_task
from handover.flows.migration import extract_table, plan_run
from handover.flows.migration_comply import comply_partition
from handover.flows.migration_load import load_partition, reconcile_table
from handover.flows.migration_resolve import resolve_customers
from handover.flows.publishing import publish

#: the migration's gated chain, the functions themselves (the DAG runs the same ones through
#: flows.steps.MIGRATION)
MIGRATION_STEPS = ChainSteps(
    gate=run_gate_task,
    comply=comply_partition,
    resolve_customers=resolve_customers,
    cleanse=cleanse_partition,
    map_protect=map_protect_partition,
    load=load_partition,
)


def run_migration(
    *,
    run_id: str,
    source_dir: str,
    system: str = "legacy_bss",
    dag_id: str = "customer_migration",
    timings: dict | None = None,
) -> dict:
    t = timings if timings is not None else {}
    timed = Timer(t)
    ctx = timed(
        "plan",
        plan_run,
        run_id=run_id,
        dag_id=dag_id,
        system=system,
        source_dir=source_dir,
    )
    parts = flatten([timed("extract", extract_table, ctx, table) for table in ctx["tables"]])
    loaded = run_chain(ctx, parts, MIGRATION_STEPS, timed)
    for table in ctx["tables"]:
        timed("reconcile", reconcile_table, ctx, table)
        timed("gate_reconciliation", reconciliation_gate, ctx, table)
    paths = timed("publish", publish, ctx)
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
