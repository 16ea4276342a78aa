"""
### Key rotation

Re-encrypts every encrypted column of the target (the mapping's `encrypt` fields, stored
as `<field>_enc` beside `<field>_key_id`) under the active key of the `handover_keys`
connection, in batches of one transaction each, then checks that every value decrypts
under it. Idempotent: a rerun or a cleared task touches only values still under an old
key. Blind indexes do not change. Each step writes an audit entry (counts and key ids).

Runbook:

1. Add a new key and make it active:
   `python -m handover.ops.cli keys --from current.json --add k2` and store the output as
   the `handover_keys` connection's extra (keep the old key in it for now).
2. Trigger this DAG (unpause it first: `airflow dags unpause rotate_keys`). It also
   rewraps every backup data key and lake scope key under the new key. `validate_rotation`
   is the gate: green means no value, backup or lake key is left under an old key id.
3. Retire the old key: `python -m handover.ops.cli keys --from new.json --retire k1` (refused
   while anything still needs it).

Run config: `system` (a folder under include/config; its mapping names the columns).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, task

from handover.ops.chain import dag_header


@dag(
    schedule=None,
    **dag_header(
        "rotate_keys",
        __doc__,
        start_date=datetime(2026, 1, 1),
        tags=["keys"],
        params={
            "system": Param("legacy_bss", type="string", description="source system config folder"),
        },
    ),
)
def rotate_keys():
    @task
    def rotate_target_keys(params=None, run_id=None):
        from handover.lifecycle import rotation as keys
        from handover.ops import tasks

        return tasks.call(keys.rotate_target_keys, params["system"], run_id=run_id)

    @task(retries=0)
    def validate_rotation(rotated, params=None, run_id=None):
        from handover.lifecycle import rotation as keys
        from handover.ops import tasks

        return tasks.call(keys.validate_rotation, params["system"], run_id=run_id)

    validate_rotation(rotate_target_keys())


rotate_keys()
