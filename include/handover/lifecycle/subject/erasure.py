"""Erasure (PIPL Art. 47): handover.lifecycle.retention's destruction on the customer and
all their records: target rows deleted, lake copies rewritten (all versions), earlier
access exports deleted, backups holding them crypto-shredded; the keyed hash goes on
`handover_meta.erased_subject` so the nightly sync does not bring the customer back.
The check that nothing is left and the certificate are the request's later steps
(handover.lifecycle.subject.steps).
"""

from __future__ import annotations

from handover.db import ledger
from handover.lifecycle.lake_purge import purge
from handover.lifecycle.retention.destroy import destroy_in_lake, destroy_in_target, shred_backups
from handover.lifecycle.retention.plan import read_plan, write_plan
from handover.lifecycle.subject.lookup import subject_ref
from handover.lifecycle.subject.request import PREFIX, SubjectRequest, _run_id
from handover.lifecycle.subject.search import subject_keys
from handover.storage.lake import lake_from_url


def erase(req: SubjectRequest, cfg, ring, customer_id: str) -> dict:
    """Destroy every copy of the customer; the plan survives in the lake for a rerun."""
    from handover.stages.identity import linked_customers

    lake = lake_from_url()
    keys, customers = read_plan(lake, _run_id(req))
    with ledger.connect() as conn:
        # the person in every system: the customer and every record merged into it (the
        # acquirer's own, another operator's, a duplicate's), each with its rows
        linked = linked_customers(conn, customer_id)
        for cid in sorted(linked):
            for table, values in subject_keys(conn, lake, cfg, cid).items():
                keys.setdefault(table, set()).update(values)
    customers |= linked
    write_plan(lake, _run_id(req), keys, customers)
    ref = subject_ref(ring, customer_id)
    target = destroy_in_target(keys, customers, system=req.system, ring=ring)
    with ledger.connect() as conn, conn.transaction():
        for cid in sorted(customers):
            conn.execute(
                "INSERT INTO handover_meta.erased_subject (subject_ref, request_id) "
                "VALUES (%s, %s) ON CONFLICT (subject_ref) DO NOTHING",
                (subject_ref(ring, cid), req.request_id),
            )
    lake_step = destroy_in_lake(keys, customers, system=req.system)
    exports = 0
    for key in lake.list(f"{PREFIX}/"):
        if not key.endswith("/request.json"):
            continue
        meta = lake.read_json(key)
        if meta.get("subject_ref") == ref:
            folder = key.removesuffix("request.json")
            for name in ("access-export.json.enc", "passphrase.json"):
                exports += purge(lake, folder + name, exact=True)
    shred = shred_backups(keys, customers, reason=f"erasure {req.request_id}", ring=ring)
    # shredding left every backup that held the person unrestorable: shred_backups took a
    # new one at once (the person already gone), so the restore drill stays green
    return {
        "records": sum(len(v) for v in keys.values()),
        "target": target,
        "lake": lake_step,
        "exports_deleted": exports,
        "shred": shred,
        "backup_after_erasure": shred.get("backup_after_destruction"),
    }
