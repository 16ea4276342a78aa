"""Access (PIPL Art. 45): everything held about the customer (the new system, every lake
copy of every run including quarantine and exclusions, the decisions taken on their
records, and the backups that still hold them) as one JSON document, encrypted for the
customer (handover.lifecycle.subject.export).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from handover.db import ledger
from handover.lifecycle.subject.export import _wrap_passphrase, new_passphrase, openssl_encrypt
from handover.lifecycle.subject.request import PREFIX, SubjectRequest
from handover.lifecycle.subject.search import _jsonable, lake_rows, subject_keys, target_rows
from handover.storage.lake import lake_from_url


def access(req: SubjectRequest, cfg, ring, customer_id: str) -> dict:
    from handover.stages.identity import linked_customers

    lake = lake_from_url()
    with ledger.connect() as conn:
        # the person's every record: the customer, records linked to it or merged into it
        linked = sorted(linked_customers(conn, customer_id))
        in_target: dict[str, list] = {}
        copies: list[dict] = []
        keys: dict[str, set[str]] = {}
        for cid in linked:
            for t, rows in target_rows(conn, cfg, ring, cid).items():
                in_target.setdefault(t, []).extend(rows)
            copies += lake_rows(lake, cfg, cid, ring)
            for t, v in subject_keys(conn, lake, cfg, cid).items():
                keys.setdefault(t, set()).update(v)
        decisions: dict[str, list[dict]] = {"quarantine": [], "exclusion": []}
        for table, values in keys.items():
            for run_id, key, reason, field in conn.execute(
                "SELECT run_id, record_key, reason, field FROM handover_meta.quarantine "
                "WHERE table_name = %s AND record_key = ANY(%s)",
                (table, sorted(values)),
            ).fetchall():
                decisions["quarantine"].append(
                    {"run_id": run_id, "table": table, "key": key, "reason": reason, "field": field}
                )
            for run_id, key, rule, destroy_by in conn.execute(
                "SELECT run_id, record_key, rule_id, destroy_by FROM handover_meta.exclusion "
                "WHERE table_name = %s AND record_key = ANY(%s)",
                (table, sorted(values)),
            ).fetchall():
                decisions["exclusion"].append(
                    {
                        "run_id": run_id,
                        "table": table,
                        "key": key,
                        "rule": rule,
                        "destroy_by": destroy_by,
                    }
                )
        backups = [
            {"backup_id": b, "taken": t, "expires": e}
            for b, t, e in conn.execute(
                "SELECT backup_id, started_at, expires_at FROM handover_meta.backup "
                "WHERE status IN ('written', 'complete', 'shredded') ORDER BY started_at"
            ).fetchall()
        ]
    doc = {
        "request_id": req.request_id,
        "request_type": "access",
        "generated_at": datetime.now(UTC).isoformat(),
        "customer_id": customer_id,
        "new_system": {t: _jsonable(rows) for t, rows in in_target.items()},
        "migration_copies": [{**c, "rows": _jsonable(c["rows"])} for c in copies],
        "decisions": decisions,
        "backups": {
            "note": "encrypted backups of the new system that may hold the data "
            "above; each is deleted when it expires",
            "items": backups,
        },
    }
    body = json.dumps(doc, ensure_ascii=False, indent=1, default=str).encode()
    passphrase = new_passphrase()
    blob = openssl_encrypt(body, passphrase)
    prefix = f"{PREFIX}/{req.request_id}/"
    lake.put_bytes(f"{prefix}access-export.json.enc", blob)
    lake.write_json(f"{prefix}passphrase.json", _wrap_passphrase(ring, req.request_id, passphrase))
    counts = {
        "new_system_rows": sum(len(r) for r in in_target.values()),
        "lake_objects": len(copies),
        "lake_rows": sum(len(c["rows"]) for c in copies),
        "quarantine_decisions": len(decisions["quarantine"]),
        "exclusion_decisions": len(decisions["exclusion"]),
        "backups_listed": len(backups),
    }
    return {
        "export": lake.uri(f"{prefix}access-export.json.enc"),
        "export_sha256": hashlib.sha256(blob).hexdigest(),
        "counts": counts,
    }
