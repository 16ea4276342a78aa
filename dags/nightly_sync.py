"""
### Nightly sync

Carries one legacy day into the new system while old and new run side by side, and
proves afterwards that they agree. A run handles exactly its data interval: one legacy
calendar day (midnight to midnight, Asia/Shanghai), i.e. the change set
`<changes_dir>/<YYYY-MM-DD>/` the legacy system exports for it (rows changed that day by
updated_at, records by arrival, a deleted-keys file per table).

wait for the change set → plan → extract → **intake gate** → comply →
**compliance gate** → resolve customers → cleanse → **quality gate** → map + protect →
**contract gate** → load (older never overwrites newer) → apply deletions →
reconcile old vs new (segment hashes down to the differing keys) →
**reconciliation gate** → publish.

Scheduled at midnight legacy time with catchup and one run at a time, so missed nights
run in order; a night refuses to start while the night before it has a change set but no
successful sync. Rerunning or backfilling any night is safe: each night writes its own
books (`nightly_sync__<day>`), loads only rows not older than the target's, and never
brings back what a later night deleted. Run config: `system` (a folder under
include/config), `changes_dir` (empty means `$HANDOVER_CHANGES_DIR` or `.state/changes`).
Guide: docs/nightly-sync.md.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

from handover.flows import steps
from handover.ops import chain

LEGACY_TZ = "Asia/Shanghai"


@dag(
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone=LEGACY_TZ),
    **chain.dag_header(
        "nightly_sync",
        __doc__,
        start_date=pendulum.datetime(2026, 11, 1, tz=LEGACY_TZ),  # the cut-over day
        catchup=True,
        tags=["sync"],
        params={
            "system": Param("legacy_bss", type="string", description="source system config folder"),
            "changes_dir": Param(
                "", type="string", description="folder of the nightly change sets"
            ),
        },
    ),
)
def nightly_sync():
    @task.sensor(poke_interval=600, timeout=8 * 3600, mode="reschedule")
    def wait_for_change_set(params=None, data_interval_start=None, data_interval_end=None):
        return steps.change_set_ready(
            steps.changes_dir(params["changes_dir"]), data_interval_start, data_interval_end
        )

    @task
    def plan_night(
        params=None, run_id=None, dag=None, data_interval_start=None, data_interval_end=None
    ):
        from handover.ops import tasks

        return tasks.call(
            steps.plan_night,
            dag_id=dag.dag_id,
            system=params["system"],
            changes_dir=steps.changes_dir(params["changes_dir"]),
            data_interval_start=data_interval_start,
            data_interval_end=data_interval_end,
            airflow_run_id=run_id,
        )

    @task(map_index_template=chain.LABEL)
    def extract_changes(ctx, table):
        from handover.ops import tasks

        return tasks.call(steps.extract_changes, ctx, table, label=table)

    ready = wait_for_change_set()
    ctx = plan_night()
    ready >> ctx
    tables = chain.list_tables_task()(ctx)
    extracted = extract_changes.partial(ctx=ctx).expand(table=tables)
    parts = chain.list_partitions_task(steps.night_partitions)(extracted)
    loaded = chain.gated_chain(ctx, parts, steps.NIGHT)
    deleted = (
        chain.table_task("apply_deletions", steps.apply_deletions)
        .partial(ctx=ctx, after=loaded)
        .expand(table=tables)
    )
    chain.reconcile_and_publish(
        ctx,
        tables,
        deleted,
        reconcile=steps.night_reconcile,
        gate=steps.night_reconciliation_gate,
        publish=steps.night_publish,
    )


nightly_sync()
