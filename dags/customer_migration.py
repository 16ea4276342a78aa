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

from handover.flows import steps
from handover.ops import chain


@dag(
    schedule=None,
    **chain.dag_header(
        "customer_migration",
        __doc__,
        start_date=datetime(2026, 1, 1),
        tags=["migration"],
        params={
            "system": Param("legacy_bss", type="string", description="source system config folder"),
            "source_dir": Param(
                None,
                type=["null", "string"],
                description="legacy export folder (empty: $HANDOVER_SOURCE_DIR)",
            ),
        },
    ),
)
def customer_migration():
    @task
    def plan_run(params=None, run_id=None, dag=None):
        from handover.ops import tasks

        return tasks.call(
            steps.plan_run,
            run_id=run_id,
            dag_id=dag.dag_id,
            system=params["system"],
            source_dir=tasks.source_dir(params["source_dir"]),
        )

    @task(map_index_template=chain.LABEL)
    def extract_table(ctx, table):
        from handover.ops import tasks

        return tasks.call(steps.extract_table, ctx, table, label=table)

    ctx = plan_run()
    tables = chain.list_tables_task()(ctx)
    extracted = extract_table.partial(ctx=ctx).expand(table=tables)
    parts = chain.list_partitions_task(steps.flatten)(extracted)
    loaded = chain.gated_chain(ctx, parts, steps.MIGRATION)
    chain.reconcile_and_publish(
        ctx,
        tables,
        loaded,
        reconcile=steps.reconcile,
        gate=steps.reconciliation_gate,
        publish=steps.publish,
    )


customer_migration()
