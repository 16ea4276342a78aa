"""
### Customer migration

Moves a legacy operator's customer data into the acquirer's CRM, lawfully and provably:

extract → **intake gate** → comply → **compliance gate** → resolve customers → cleanse →
**quality gate** → map + protect → **contract gate** → load → reconcile →
**reconciliation gate** → publish.

Each stage after extract is mapped over partitions (label `table/partition`); each gate
is its own task and links to its validation page in the run's Data Docs. Data moves
through the lake; XCom carries only small manifests. Clearing any task and running it
again is always safe: outputs are overwritten, loads are keyed upserts.

Run config: `system` (a folder under include/config), `source_dir` (the export; empty
means `$HANDOVER_SOURCE_DIR` or `.state/source`). Runbook: docs/runbook.md.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, task

from handover.ops.tasks import DEFAULT_ARGS

LABEL = "{{ part_label }}"


@dag(
    dag_id="customer_migration",
    doc_md=__doc__,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["handover", "migration"],
    params={
        "system": Param("legacy_bss", type="string", description="source system config folder"),
        "source_dir": Param(
            None,
            type=["null", "string"],
            description="legacy export folder (empty: $HANDOVER_SOURCE_DIR)",
        ),
    },
)
def customer_migration():
    @task
    def plan_run(params=None, run_id=None, dag=None):
        from handover.flows import migration as pipeline
        from handover.ops import tasks

        return tasks.call(
            pipeline.plan_run,
            run_id=run_id,
            dag_id=dag.dag_id,
            system=params["system"],
            source_dir=tasks.source_dir(params["source_dir"]),
        )

    @task(map_index_template="{{ part_label }}")
    def extract_table(ctx, table):
        from handover.flows import migration as pipeline
        from handover.ops import tasks

        return tasks.call(pipeline.extract_table, ctx, table, label=table)

    @task
    def list_tables(ctx):
        return ctx["tables"]

    @task
    def list_partitions(parts):
        from handover.flows import migration as pipeline

        return pipeline.flatten(list(parts))

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

    def stage(fn_name, task_id):
        @task(task_id=task_id, map_index_template=LABEL)
        def _stage(ctx, part):
            from handover.flows import migration as pipeline
            from handover.ops import tasks

            return tasks.call(
                getattr(pipeline, fn_name), ctx, part, label=f"{part['table']}/{part['partition']}"
            )

        return _stage

    @task
    def resolve_customers(ctx, parts):
        from handover.flows import migration as pipeline
        from handover.ops import tasks

        return tasks.call(pipeline.resolve_customers, ctx)

    @task(map_index_template=LABEL)
    def reconcile_table(ctx, table, loaded):
        from handover.flows import migration as pipeline
        from handover.ops import tasks

        return tasks.call(pipeline.reconcile_table, ctx, table, label=table)

    @task(task_id="validate_reconciliation", retries=0, map_index_template=LABEL)
    def validate_reconciliation(ctx, result):
        from handover.flows import migration as pipeline
        from handover.ops import tasks

        return tasks.call(pipeline.reconciliation_gate, ctx, result["table"], label=result["table"])

    @task
    def publish(ctx, gates):
        from handover.flows import migration as pipeline
        from handover.ops import tasks

        return tasks.call(pipeline.publish, ctx)

    ctx = plan_run()
    tables = list_tables(ctx)
    extracted = extract_table.partial(ctx=ctx).expand(table=tables)
    parts = list_partitions(extracted)
    intake = gate("intake").partial(ctx=ctx).expand(part=parts)
    complied = stage("comply_partition", "comply").partial(ctx=ctx).expand(part=intake)
    compliant = gate("compliance").partial(ctx=ctx).expand(part=complied)
    resolved = resolve_customers(ctx, compliant)
    cleansed = stage("cleanse_partition", "cleanse").partial(ctx=ctx).expand(part=compliant)
    resolved >> cleansed
    quality = gate("quality").partial(ctx=ctx).expand(part=cleansed)
    mapped = stage("map_protect_partition", "map_protect").partial(ctx=ctx).expand(part=quality)
    contract = gate("contract").partial(ctx=ctx).expand(part=mapped)
    loaded = stage("load_partition", "load").partial(ctx=ctx).expand(part=contract)
    reconciled = reconcile_table.partial(ctx=ctx, loaded=loaded).expand(table=tables)
    checked = validate_reconciliation.partial(ctx=ctx).expand(result=reconciled)
    publish(ctx, checked)


customer_migration()
