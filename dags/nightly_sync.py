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

from handover.ops.tasks import DEFAULT_ARGS

LABEL = "{{ part_label }}"
LEGACY_TZ = "Asia/Shanghai"


@dag(
    dag_id="nightly_sync",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone=LEGACY_TZ),
    start_date=pendulum.datetime(2026, 11, 1, tz=LEGACY_TZ),  # the cut-over day
    catchup=True,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["handover", "sync"],
    params={
        "system": Param("legacy_bss", type="string", description="source system config folder"),
        "changes_dir": Param("", type="string", description="folder of the nightly change sets"),
    },
)
def nightly_sync():
    @task.sensor(poke_interval=600, timeout=8 * 3600, mode="reschedule")
    def wait_for_change_set(params=None, data_interval_start=None, data_interval_end=None):
        from handover.flows import nightly as sync

        return sync.change_set_ready(
            sync.changes_dir(params["changes_dir"]), data_interval_start, data_interval_end
        )

    @task
    def plan_night(
        params=None, run_id=None, dag=None, data_interval_start=None, data_interval_end=None
    ):
        from handover.flows import nightly as sync
        from handover.ops import tasks

        return tasks.call(
            sync.plan_night,
            dag_id=dag.dag_id,
            system=params["system"],
            changes_dir=sync.changes_dir(params["changes_dir"]),
            data_interval_start=data_interval_start,
            data_interval_end=data_interval_end,
            airflow_run_id=run_id,
        )

    @task
    def list_tables(ctx):
        return ctx["tables"]

    @task(map_index_template=LABEL)
    def extract_changes(ctx, table):
        from handover.flows import nightly as sync
        from handover.ops import tasks

        return tasks.call(sync.extract_changes, ctx, table, label=table)

    @task
    def list_partitions(parts):
        from handover.flows import nightly as sync

        return sync.list_partitions(list(parts))

    def gate(name):
        @task(task_id=f"validate_{name}", retries=0, map_index_template=LABEL)
        def _gate(ctx, part):
            from handover.flows import migration as pipeline
            from handover.ops import tasks

            return tasks.call(
                pipeline.run_gate_task,
                ctx,
                part,
                name,
                label=f"{part['table']}/{part['partition']}",
            )

        return _gate

    def stage(module, fn_name, task_id):
        @task(task_id=task_id, map_index_template=LABEL)
        def _stage(ctx, part):
            import importlib

            from handover.ops import tasks

            fn = getattr(importlib.import_module(f"handover.{module}"), fn_name)
            return tasks.call(fn, ctx, part, label=f"{part['table']}/{part['partition']}")

        return _stage

    @task
    def resolve_customers(ctx, parts):
        from handover.flows import nightly as sync
        from handover.ops import tasks

        return tasks.call(sync.resolve_customers, ctx)

    @task(map_index_template=LABEL)
    def apply_deletions(ctx, table, loaded):
        from handover.flows import nightly as sync
        from handover.ops import tasks

        return tasks.call(sync.apply_deletions, ctx, table, label=table)

    @task(map_index_template=LABEL)
    def reconcile_table(ctx, table, deleted):
        from handover.flows import nightly as sync
        from handover.ops import tasks

        return tasks.call(sync.reconcile_table, ctx, table, label=table)

    @task(task_id="validate_reconciliation", retries=0, map_index_template=LABEL)
    def validate_reconciliation(ctx, result):
        from handover.flows import nightly as sync
        from handover.ops import tasks

        return tasks.call(sync.reconciliation_gate, ctx, result["table"], label=result["table"])

    @task
    def publish(ctx, gates):
        from handover.flows import nightly as sync
        from handover.ops import tasks

        return tasks.call(sync.publish, ctx)

    ready = wait_for_change_set()
    ctx = plan_night()
    ready >> ctx
    tables = list_tables(ctx)
    extracted = extract_changes.partial(ctx=ctx).expand(table=tables)
    parts = list_partitions(extracted)
    intake = gate("intake").partial(ctx=ctx).expand(part=parts)
    complied = stage("sync", "comply_partition", "comply").partial(ctx=ctx).expand(part=intake)
    compliant = gate("compliance").partial(ctx=ctx).expand(part=complied)
    resolved = resolve_customers(ctx, compliant)
    cleansed = (
        stage("pipeline", "cleanse_partition", "cleanse").partial(ctx=ctx).expand(part=compliant)
    )
    resolved >> cleansed
    quality = gate("quality").partial(ctx=ctx).expand(part=cleansed)
    mapped = (
        stage("pipeline", "map_protect_partition", "map_protect")
        .partial(ctx=ctx)
        .expand(part=quality)
    )
    contract = gate("contract").partial(ctx=ctx).expand(part=mapped)
    loaded = stage("sync", "load_partition", "load").partial(ctx=ctx).expand(part=contract)
    deleted = apply_deletions.partial(ctx=ctx, loaded=loaded).expand(table=tables)
    reconciled = reconcile_table.partial(ctx=ctx, deleted=deleted).expand(table=tables)
    checked = validate_reconciliation.partial(ctx=ctx).expand(result=reconciled)
    publish(ctx, checked)


nightly_sync()
