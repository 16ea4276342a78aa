"""
### Restore drill

Weekly proof that the newest complete backup restores: it is restored into a scratch
database on the target's server (created with today's DDL), then verified: every
table's row count and content checksum must equal the backup's manifest and the ledger
rows the backup wrote (stage `backup`), and the restored audit trail's hash chain must
be intact. Time to restore and to verify are measured; the drill and its result, passed
or failed, go to `handover_meta.restore_drill` and the audit trail.

restore_latest_backup → **validate_restore** → drop_scratch_database (teardown: runs
whatever the gate says, unless `keep_scratch`).

A damaged backup file fails `restore_latest_backup` with one line naming the file and
the fix (restore an earlier backup with param `backup_id`, take a new backup).
Run config: `backup_id` (empty: the newest complete backup), `keep_scratch`.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, task

from handover.ops.chain import dag_header


@dag(
    schedule="0 4 * * 0",
    **dag_header(
        "restore_drill",
        __doc__,
        start_date=datetime(2026, 1, 1),
        tags=["lifecycle"],
        params={
            "backup_id": Param(
                "", type="string", description="backup to restore; empty = newest complete backup"
            ),
            "keep_scratch": Param(
                False, type="boolean", description="keep the scratch database for inspection"
            ),
        },
    ),
)
def restore_drill():
    @task
    def restore_latest_backup(params=None, run_id=None):
        from handover.lifecycle import restore
        from handover.ops import tasks

        return tasks.call(restore.restore_backup, params["backup_id"] or None)

    @task(task_id="validate_restore", retries=0)
    def validate_restore(restored):
        from handover.lifecycle import restore
        from handover.ops import tasks

        return tasks.call(restore.verify_restore, restored)

    @task
    def drop_scratch_database(restored, params=None):
        from handover.lifecycle import restore

        if params["keep_scratch"]:
            return {"kept": restored["scratch_db"]}
        restore.drop_scratch(restored["scratch_db"])
        return {"dropped": restored["scratch_db"]}

    restored = restore_latest_backup()
    verified = validate_restore(restored)
    dropped = drop_scratch_database(restored).as_teardown(setups=restored)
    verified >> dropped


restore_drill()
