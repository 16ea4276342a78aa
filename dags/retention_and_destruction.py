"""
### Retention and destruction

Daily: finds every record past its retention (policy.yaml `retention_months` per
category, by each table's `event_time`) and every excluded record whose destroy-by date
is due, in the target, in every lake copy (all runs: raw, comply, comply/_excluded,
cleanse, cleanse/_quarantine, mapped) and in backups, and destroys it:

find_expired_data → destroy_in_target (rows deleted; record keys in the books replaced
by keyed hashes) · destroy_in_lake (partitions rewritten, old S3 versions deleted) ·
shred_backups (data keys of backup files holding them destroyed) →
**validate_destruction** (searches everywhere again: nothing destroyed may be readable) →
certify_destruction (certificate JSON in the lake under `certificates/retention/`, bound
in the audit trail by its sha256; keys only as HMACs).

The destruction list lives in the lake, never in XCom, and is deleted once certified.
Run config: `as_of` (date; empty = the run's data interval end), `system`.
Runs before the nightly backup, so the newest backup never holds destroyed data.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, task

from handover.ops.chain import dag_header


@dag(
    schedule="0 1 * * *",
    **dag_header(
        "retention_and_destruction",
        __doc__,
        start_date=datetime(2026, 1, 1),
        tags=["lifecycle"],
        params={
            "as_of": Param(
                "",
                type="string",
                description="retention date YYYY-MM-DD; empty = data interval end",
            ),
            "system": Param("legacy_bss", type="string", description="source system config folder"),
        },
    ),
)
def retention_and_destruction():
    @task
    def find_expired_data(params=None, run_id=None, data_interval_end=None):
        from handover.lifecycle.retention import find as retention
        from handover.ops import tasks

        as_of = params["as_of"] or (data_interval_end.date() if data_interval_end else None)
        return tasks.call(
            retention.find_expired, as_of=as_of, system=params["system"], run_id=run_id
        )

    @task
    def destroy_in_target(found):
        from handover.lifecycle.retention import steps as retention
        from handover.ops import tasks

        return tasks.call(retention.destroy_target_task, found)

    @task
    def destroy_in_lake(found):
        from handover.lifecycle.retention import steps as retention
        from handover.ops import tasks

        return tasks.call(retention.destroy_lake_task, found)

    @task
    def shred_backups(found):
        from handover.lifecycle.retention import steps as retention
        from handover.ops import tasks

        return tasks.call(retention.shred_backups_task, found)

    @task(task_id="validate_destruction", retries=0)
    def validate_destruction(found, target, lake, shred):
        from handover.lifecycle.retention import steps as retention
        from handover.ops import tasks

        return tasks.call(retention.validate_destruction_task, found)

    @task
    def certify_destruction(found, target, lake, shred, verification):
        from handover.lifecycle.retention import steps as retention
        from handover.ops import tasks

        return tasks.call(retention.certify_task, found, target, lake, shred, verification)

    found = find_expired_data()
    target, lake, shred = destroy_in_target(found), destroy_in_lake(found), shred_backups(found)
    verification = validate_destruction(found, target, lake, shred)
    certify_destruction(found, target, lake, shred, verification)


retention_and_destruction()
