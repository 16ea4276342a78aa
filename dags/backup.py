"""
### Backup

A consistent snapshot of the target (`crm` and `handover_meta`, one REPEATABLE READ
transaction) into the lake as Parquet, one file per table, each encrypted with its own
AES-256 data key wrapped by the keyring (so retention and erasure can crypto-shred a
file). Checksums and row counts go to the backup catalogue (`handover_meta.backup`,
`backup_file`), the ledger (stage `backup`) and `backups/<backup_id>/manifest.json`.

snapshot_target → **validate_backup** (downloads every file, checks sha256s, decrypts,
counts) → expire_backups (deletes backups past `retention_days`, every S3 version; the
newest complete backup is always kept).

Runs nightly at 02:00 and **before each load**: trigger it with
`{"reason": "pre_load"}` and wait for it (see docs/lifecycle.md for the
TriggerDagRunOperator to put in front of a load, or
`airflow dags trigger backup -c '{"reason": "pre_load"}'`). The weekly `restore_drill`
proves the newest complete backup restores.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, task

from handover.ops.chain import dag_header


@dag(
    schedule="0 2 * * *",
    **dag_header(
        "backup",
        __doc__,
        start_date=datetime(2026, 1, 1),
        tags=["lifecycle"],
        params={
            "reason": Param(
                "scheduled",
                type="string",
                enum=["scheduled", "pre_load", "manual"],
                description="why this backup is taken (kept in the catalogue)",
            ),
            "retention_days": Param(
                35,
                type="integer",
                minimum=1,
                maximum=3650,
                description="days until this backup expires and is deleted",
            ),
        },
    ),
)
def backup_target():
    @task
    def snapshot_target(params=None, run_id=None):
        from handover.lifecycle.backup import catalogue as backup
        from handover.ops import tasks

        return tasks.call(
            backup.take_backup,
            reason=params["reason"],
            retention_days=int(params["retention_days"]),
            run_id=run_id,
        )

    @task(task_id="validate_backup", retries=0)
    def validate_backup(taken):
        from handover.lifecycle.backup import catalogue as backup
        from handover.ops import tasks

        return tasks.call(backup.verify_backup, taken["backup_id"])

    @task
    def expire_backups(verified):
        from handover.lifecycle.backup import catalogue as backup
        from handover.ops import tasks

        return tasks.call(backup.expire_backups)

    expire_backups(validate_backup(snapshot_target()))


backup_target()
