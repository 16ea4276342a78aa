"""The nightly sync: one legacy day, through the migration's own stages, provably.

During the parallel run the legacy system exports, every night, what changed on one
calendar day (legacy time, Asia/Shanghai): a *change set* (see handover_synth.changes).
The DAG run whose data interval is that day handles exactly that change set:

- **selection.** Subscribers and consents are in a change set by their change time
  (updated_at, granted_at) inside the day, which is how the legacy export selects them;
  event tables (calls, sessions, payments, complaints, browsing) by *arrival*: every row
  that reached the legacy system that day, whatever its own timestamp, so a call record
  of three days ago that arrives late lands in the night it arrives. Deletions come as
  `<table>.deleted.csv` (key, deleted_at).
- **same stages, same gates.** Intake, compliance, quality and contract gates, comply,
  cleanse, map + protect run the migration's code (`handover.flows.migration`) on the night's
  partitions under the run id `nightly_sync__<day>`, one per night whatever Airflow calls
  the run, so a rerun or a backfill of a night replaces that night's books. Two things
  differ, because a night is not a whole export: policy facts (objections, consents) come
  from the legacy state as of the night's end, and a child row's parent may already live
  in the new system (or, on a replay, have been deleted later), which the parent registry
  learns from the target and the tombstones.
- **older never beats newer.** Nights may be rerun or backfilled in any order. A row
  replaces the target's only if its version (the mapped updated_at / granted_at) is not
  older; every deletion leaves a tombstone (`handover_meta.tombstone`), and a replayed
  row that a later night deleted is not brought back. So rerunning night 2 after night 3
  changes nothing. New nights still run in order: a night refuses to start while the
  night before it has a change set but no successful sync.
- **the ledger still balances.** Per table and night: rows in (changed + deleted) =
  loaded + quarantined + excluded + deleted. Deletion records are booked at extract as
  excluded with `detail.deleted_at_source`, and at a `delete` stage whose detail says how
  many were removed, absent or superseded.
- **old versus new.** After the load, every table of the target is compared with the
  legacy state as of the newest night applied (`handover.stages.diff`: segment hashes, bisected
  down to the differing keys, only keys and counts leave the database). Keys the ledger
  accounts for (quarantined in a run no older than the legacy row; excluded and absent
  from the target) are set aside; any other difference fails the reconciliation gate.

The night's task bodies live beside this module (nightly_plan, nightly_extract,
nightly_resolve, nightly_load, nightly_legacy, nightly_reconcile) and are re-exported here
with the in-process runner, so `handover.flows.nightly` names every task of the night.
Nothing in the library imports through this re-export: it is for DAGs, scripts and tests.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from handover.core.errors import NightOrderError
from handover.flows.cleansing import cleanse_partition, map_protect_partition
from handover.flows.common import VERSION_COLUMNS, version_column
from handover.flows.gated_chain import ChainSteps, Timer, run_chain
from handover.flows.gating import run_gate_task
from handover.flows.nightly_extract import (
    ROWS_PER_PARTITION,
    _read_deletions,
    extract_changes,
    list_partitions,
    waiting_orphans,
)
from handover.flows.nightly_legacy import compare_fields, legacy_projection
from handover.flows.nightly_load import apply_deletions, load_partition
from handover.flows.nightly_plan import (
    DAG_ID,
    DELETED,
    GATES,
    LEGACY_TZ,
    MIGRATION_DAG,
    TIME_FMT,
    change_set_dir,
    change_set_ready,
    changes_dir,
    legacy_interval,
    night_run_id,
    plan_night,
    state_file,
)
from handover.flows.nightly_reconcile import publish, reconcile_table, reconciliation_gate
from handover.flows.nightly_resolve import comply_partition, resolve_customers

# The night's whole API, for DAGs, scripts and tests (the library imports each name from
# the module that defines it).
__all__ = [
    "DAG_ID",
    "DELETED",
    "GATES",
    "LEGACY_TZ",
    "MIGRATION_DAG",
    "ROWS_PER_PARTITION",
    "TIME_FMT",
    "VERSION_COLUMNS",
    "NightOrderError",
    "_read_deletions",
    "apply_deletions",
    "change_set_dir",
    "change_set_ready",
    "changes_dir",
    "comply_partition",
    "compare_fields",
    "extract_changes",
    "legacy_interval",
    "legacy_projection",
    "list_partitions",
    "load_partition",
    "main",
    "night_run_id",
    "plan_night",
    "publish",
    "reconcile_table",
    "reconciliation_gate",
    "resolve_customers",
    "run_night",
    "state_file",
    "version_column",
    "waiting_orphans",
]


#: the night's gated chain, the functions themselves (the DAG runs the same ones through
#: flows.steps.NIGHT)
NIGHT_STEPS = ChainSteps(
    gate=run_gate_task,
    comply=comply_partition,
    resolve_customers=resolve_customers,
    cleanse=cleanse_partition,
    map_protect=map_protect_partition,
    load=load_partition,
)


# ---------------------------------------------------------------- in-process runner
def run_night(
    *,
    changes_dir: str,
    data_interval_start: Any,
    data_interval_end: Any,
    system: str = "legacy_bss",
    dag_id: str = DAG_ID,
    timings: dict[str, float] | None = None,
) -> dict:
    """One night in one process, in the DAG's order (tests, and the CLI below)."""
    t = timings if timings is not None else {}
    timed = Timer(t)
    ctx = timed(
        "plan",
        plan_night,
        dag_id=dag_id,
        system=system,
        changes_dir=changes_dir,
        data_interval_start=data_interval_start,
        data_interval_end=data_interval_end,
    )
    parts = list_partitions(
        [timed("extract", extract_changes, ctx, table) for table in ctx["tables"]]
    )
    loaded = run_chain(ctx, parts, NIGHT_STEPS, timed)
    deleted = [timed("delete", apply_deletions, ctx, table) for table in ctx["tables"]]
    reconciled = [timed("reconcile", reconcile_table, ctx, table) for table in ctx["tables"]]
    for r in reconciled:
        timed("gate_reconciliation", reconciliation_gate, ctx, r["table"])
    return {
        "ctx": ctx,
        "loaded": loaded,
        "deleted": deleted,
        "reconciled": reconciled,
        "reports": timed("publish", publish, ctx),
        "timings": t,
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m handover.flows.nightly",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--changes-dir", required=True)
    ap.add_argument("--day", required=True, help="legacy day YYYY-MM-DD (the data interval)")
    ap.add_argument("--system", default="legacy_bss")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = pd.Timestamp(args.day)
    out = run_night(
        changes_dir=args.changes_dir,
        data_interval_start=start,
        data_interval_end=start + pd.Timedelta(days=1),
        system=args.system,
    )
    for r in out["reconciled"]:
        print(f"{r['table']:<18} balanced={r['balanced']} differing={r['differing']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
