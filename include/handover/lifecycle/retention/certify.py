"""Destruction certificates: what was destroyed, by which rule, counts per place, the ids
of the destroyed data keys, and the destroyed record keys as keyed hashes (HMAC-SHA256
under the keyring's blind-index key, so nobody can enumerate them back) with the sha256
of that list. Each goes to the lake as JSON, to `handover_meta.destruction_certificate`,
and, bound by its sha256, to the audit trail.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime

from handover.db import ledger
from handover.lifecycle.books import lifecycle_connect
from handover.lifecycle.retention.plan import key_digest
from handover.storage.lake import lake_from_url

log = logging.getLogger("handover")

CERTIFICATES = "certificates"


def certify(
    *,
    kind: str,
    certificate_id: str,
    keys: dict[str, set[str]],
    customers: set[str],
    ring,
    steps: dict,
    verification: dict,
    as_of: str | None = None,
    request_id: str | None = None,
    rules: list | None = None,
    customer_table_name: str = "subscribers",
) -> dict:
    """Write the destruction certificate (lake JSON + catalogue + audit); no key in clear."""
    lake = lake_from_url()
    items = sorted(
        {(t, key_digest(ring, t, k)) for t, vs in keys.items() for k in vs}
        | {(customer_table_name, key_digest(ring, customer_table_name, c)) for c in customers}
    )
    listing = "\n".join(f"{t}\t{d}" for t, d in items).encode()
    list_sha = hashlib.sha256(listing).hexdigest()
    destroyed_keys = steps.get("shred", {}).get("destroyed_data_keys", [])
    counts = {
        "records": len(items),
        "records_by_table": _count_by_table(items),
        "target_rows_deleted": steps.get("target", {}).get("target_rows_deleted", {}),
        "book_keys_pseudonymised": steps.get("target", {}).get("book_keys_pseudonymised", 0),
        "lake_rows_deleted": steps.get("lake", {}).get("lake_rows_deleted", {}),
        "lake_objects_rewritten": steps.get("lake", {}).get("lake_objects_rewritten", 0),
        "lake_old_versions_deleted": steps.get("lake", {}).get("lake_old_versions_deleted", 0),
        "backup_files_shredded": len(destroyed_keys),
        "lake_working_sets_destroyed": len(
            steps.get("lake", {}).get("working_sets", {}).get("runs", [])
        ),
        "lake_scope_keys_shredded": steps.get("lake", {})
        .get("working_sets", {})
        .get("scope_keys_shredded", 0),
        "lake_objects_deleted": steps.get("lake", {})
        .get("working_sets", {})
        .get("objects_deleted", 0),
    }
    cert = {
        "certificate_id": certificate_id,
        "kind": kind,
        "issued_at": datetime.now(UTC).isoformat(),
        "as_of": as_of,
        "request_id": request_id,
        "controller_note": "record keys appear only as HMAC-SHA256 under the keyring's "
        "blind-index key: handover.lifecycle.retention.key_digest(ring, table, key)",
        "rules": rules or [],
        "counts": counts,
        "places": [
            "target database (crm)",
            "books (handover_meta.exclusion/quarantine)",
            "lake runs/* (raw, comply, comply/_excluded, cleanse, cleanse/_quarantine, "
            "mapped, resolve), all object versions",
            "backups (crypto-shredded)",
        ],
        "destroyed_data_keys": destroyed_keys,
        "lake_working_sets": steps.get("lake", {}).get("working_sets", {}).get("runs", []),
        "backups_shredded": steps.get("shred", {}).get("backups_shredded", []),
        "keys": {
            "hash": "HMAC-SHA256",
            "count": len(items),
            "list_sha256": list_sha,
            "items": [{"table": t, "key_hmac": d} for t, d in items],
        },
        "verification": verification,
    }
    body = json.dumps(cert, indent=2, ensure_ascii=False).encode()
    cert_sha = hashlib.sha256(body).hexdigest()
    lake_key = f"{CERTIFICATES}/{kind}/{certificate_id}.json"
    lake.put_bytes(lake_key, body)
    with lifecycle_connect() as conn:
        with conn.transaction():
            conn.execute(
                "INSERT INTO handover_meta.destruction_certificate (certificate_id, kind, as_of, "
                "request_id, keys, key_list_sha256, certificate_sha256, lake_key, counts) "
                "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (certificate_id) DO UPDATE SET "
                "issued_at = now(), keys = excluded.keys, key_list_sha256 = "
                "excluded.key_list_sha256, certificate_sha256 = excluded.certificate_sha256, "
                "counts = excluded.counts",
                (
                    certificate_id,
                    kind,
                    as_of,
                    request_id,
                    len(items),
                    list_sha,
                    cert_sha,
                    lake_key,
                    json.dumps(counts),
                ),
            )
            ledger.audit(
                conn,
                "destruction_certified",
                detail={
                    "certificate_id": certificate_id,
                    "kind": kind,
                    "as_of": as_of,
                    "request_id": request_id,
                    "rules": [r.get("rule") for r in rules or []],
                    "counts": counts,
                    "data_key_ids": [d["data_key_id"] for d in destroyed_keys],
                    "key_list_sha256": list_sha,
                    "certificate_sha256": cert_sha,
                    "certificate": lake.uri(lake_key),
                },
            )
    log.info(
        "destruction certificate %s: %d records, list sha256 %s, %s",
        certificate_id,
        len(items),
        list_sha[:16],
        lake.uri(lake_key),
    )
    return {
        "certificate_id": certificate_id,
        "lake_key": lake_key,
        "records": len(items),
        "key_list_sha256": list_sha,
        "certificate_sha256": cert_sha,
        "counts": counts,
    }


def _count_by_table(items: list[tuple[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t, _ in items:
        out[t] = out.get(t, 0) + 1
    return out


def certify_simple(
    *, kind: str, certificate_id: str, run_id: str | None, body: dict, as_of: str | None = None
) -> dict:
    """A destruction certificate without record keys (counts, scopes, key ids): lake JSON,
    catalogue row, audit entry bound by its sha256."""
    lake = lake_from_url()
    cert = {
        "certificate_id": certificate_id,
        "kind": kind,
        "run_id": run_id,
        "issued_at": datetime.now(UTC).isoformat(),
        "as_of": as_of,
        **body,
    }
    data = json.dumps(cert, indent=2, ensure_ascii=False, default=str).encode()
    cert_sha = hashlib.sha256(data).hexdigest()
    lake_key = f"{CERTIFICATES}/{kind}/{certificate_id}.json"
    lake.put_bytes(lake_key, data)
    with lifecycle_connect() as conn, conn.transaction():
        conn.execute(
            "INSERT INTO handover_meta.destruction_certificate (certificate_id, kind, as_of, "
            "keys, key_list_sha256, certificate_sha256, lake_key, counts) VALUES "
            "(%s,%s,%s,0,%s,%s,%s,%s) ON CONFLICT (certificate_id) DO UPDATE SET "
            "issued_at = now(), certificate_sha256 = excluded.certificate_sha256, "
            "counts = excluded.counts",
            (
                certificate_id,
                kind,
                as_of,
                hashlib.sha256(b"").hexdigest(),
                cert_sha,
                lake_key,
                json.dumps(body, default=str),
            ),
        )
        ledger.audit(
            conn,
            "destruction_certified",
            run_id=run_id,
            detail={
                "certificate_id": certificate_id,
                "kind": kind,
                "certificate_sha256": cert_sha,
                "certificate": lake.uri(lake_key),
            },
        )
    return {"certificate_id": certificate_id, "lake_key": lake_key, "certificate_sha256": cert_sha}
