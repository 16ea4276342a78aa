"""The `retention_and_destruction` DAG's task bodies, and the whole DAG in one process
(run_retention): find, destroy in the target, the lake and backups, verify, certify.
Each step reads the destruction plan from the lake; XCom carries only counts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from handover.lifecycle.lake_purge import purge
from handover.lifecycle.retention.certify import certify
from handover.lifecycle.retention.destroy import destroy_in_lake, destroy_in_target, shred_backups
from handover.lifecycle.retention.find import find_expired
from handover.lifecycle.retention.plan import plan_prefix, read_plan
from handover.lifecycle.retention.verify import verify_destroyed
from handover.lifecycle.retention.working_sets import destroy_working_sets, shred_scope
from handover.storage.lake import lake_from_url
from handover.storage.layout import safe_run_id


def destroy_target_task(found: dict) -> dict:
    from handover.protection.fields import load_keyring

    keys, customers = read_plan(lake_from_url(), found["run_id"])
    return destroy_in_target(keys, customers, system=found["system"], ring=load_keyring())


def destroy_lake_task(found: dict) -> dict:
    """Expired working sets go first (keys, then objects: nothing left to rewrite there),
    then every remaining lake copy of a record past retention is rewritten without it."""
    sets = destroy_working_sets(
        as_of=found["as_of"], system=found["system"], run_id=found["run_id"]
    )
    keys, customers = read_plan(lake_from_url(), found["run_id"])
    out = destroy_in_lake(keys, customers, system=found["system"])
    out["working_sets"] = {
        k: sets[k]
        for k in (
            "runs",
            "scope_keys_shredded",
            "objects_deleted",
            "quarantine_scopes_kept",
            "working_set_days",
            "quarantine_days",
        )
    }
    return out


def shred_backups_task(found: dict) -> dict:
    from handover.protection.fields import load_keyring

    keys, customers = read_plan(lake_from_url(), found["run_id"])
    return shred_backups(keys, customers, reason=f"retention {found['as_of']}", ring=load_keyring())


def validate_destruction_task(found: dict) -> dict:
    from handover.protection.fields import load_keyring

    keys, customers = read_plan(lake_from_url(), found["run_id"])
    return verify_destroyed(keys, customers, system=found["system"], ring=load_keyring())


def certify_task(
    found: dict, target: dict, lake_step: dict, shred: dict, verification: dict
) -> dict:
    """Certificate, then the plan (itself a list of the destroyed keys) is purged."""
    from handover.protection.fields import load_keyring

    lake = lake_from_url()
    keys, customers = read_plan(lake, found["run_id"])
    out = certify(
        kind="retention",
        certificate_id=f"dc_{safe_run_id(found['run_id'])}",
        keys=keys,
        customers=customers,
        ring=load_keyring(),
        steps={"target": target, "lake": lake_step, "shred": shred},
        verification=verification,
        as_of=found["as_of"],
        rules=found["rules"],
    )
    purge(lake, plan_prefix(found["run_id"]))
    shred_scope(lake, plan_prefix(found["run_id"]).rstrip("/"))  # the plan's own key
    return out


def run_retention(
    *, as_of: Any = None, system: str = "legacy_bss", run_id: str | None = None
) -> dict:
    """The retention_and_destruction DAG in one process."""
    run_id = run_id or f"retention_{datetime.now(UTC):%Y%m%dT%H%M%S}"
    found = find_expired(as_of=as_of, system=system, run_id=run_id)
    target = destroy_target_task(found)
    lake_step = destroy_lake_task(found)
    shred = shred_backups_task(found)
    verification = validate_destruction_task(found)
    cert = certify_task(found, target, lake_step, shred, verification)
    return {
        "found": found,
        "target": target,
        "lake": lake_step,
        "shred": shred,
        "verification": verification,
        "certificate": cert,
    }
