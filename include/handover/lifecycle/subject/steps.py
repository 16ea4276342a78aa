"""The `subject_request` DAG's steps around the fulfilment: validate the request, check
the outcome, record it; and a request refused while being fulfilled (_reject). The
fulfilment itself, which for a correction runs the migration's stages, is a flow
(handover.flows.subject_request).
"""

from __future__ import annotations

import json
import logging

from handover.config.shapes import customer_table, shapes
from handover.core.errors import LifecycleError, RequestRejected
from handover.db import ledger
from handover.lifecycle.books import lifecycle_connect
from handover.lifecycle.lake_purge import purge
from handover.lifecycle.retention.certify import certify
from handover.lifecycle.retention.plan import plan_prefix, read_plan
from handover.lifecycle.retention.verify import verify_destroyed
from handover.lifecycle.subject.export import openssl_decrypt, reveal_passphrase
from handover.lifecycle.subject.lookup import _context, _in_target, subject_ref
from handover.lifecycle.subject.request import PREFIX, SubjectRequest, _clear_seal, _run_id
from handover.storage.lake import lake_from_url
from handover.storage.layout import part_key, safe_run_id

log = logging.getLogger("handover")


def validate_request(params: dict) -> dict:
    """Check the form and find the customer; XCom gets only the request and a hash."""
    try:
        req = SubjectRequest.from_params(params)
        cfg, ring, customer_id = _context(req)
    except RequestRejected as exc:
        with lifecycle_connect() as conn:
            with conn.transaction():
                request_id = str(params.get("request_id", ""))[:64]
                _clear_seal(conn, request_id)
                ledger.audit(
                    conn,
                    "subject_request_rejected",
                    detail={"request_id": request_id, "error": str(exc)[:300]},
                )
        raise
    ref = subject_ref(ring, customer_id)
    with ledger.connect() as conn, conn.transaction():
        in_target = _in_target(conn, cfg, customer_id)
        conn.execute(
            "INSERT INTO handover_meta.subject_request (request_id, request_type, subject_ref) "
            "VALUES (%s, %s, %s) ON CONFLICT (request_id) DO UPDATE SET status = 'running', "
            "finished_at = NULL",
            (req.request_id, req.request_type, ref),
        )
        ledger.audit(
            conn,
            "subject_request_received",
            detail={
                "request_id": req.request_id,
                "request_type": req.request_type,
                "identifier_type": req.identifier_type,
                "subject_ref": ref,
                "in_new_system": in_target,
            },
        )
    log.info(
        "subject request %s (%s): subject %s, in new system: %s",
        req.request_id,
        req.request_type,
        ref[:12],
        in_target,
    )
    return {
        "request_id": req.request_id,
        "request_type": req.request_type,
        "subject_ref": ref[:12],
        "in_new_system": in_target,
    }


def _reject(req: SubjectRequest, exc: Exception) -> None:
    """A request refused while being fulfilled ends `rejected`: its seal is cleared, and
    the one-row run a correction opened leaves nothing in the lake (the customer's raw
    row), only its books."""
    from handover.lifecycle.retention.working_sets import shred_scope

    lake = lake_from_url()
    run = f"runs/{safe_run_id(_run_id(req))}"
    for k in sorted(
        {k.removeprefix("_keys/").removesuffix(".json") for k in lake.list(f"_keys/{run}/")}
    ):
        shred_scope(lake, k)
    purge(lake, f"{run}/")
    with lifecycle_connect() as conn, conn.transaction():
        conn.execute(
            "UPDATE handover_meta.subject_request SET status = 'rejected', "
            "finished_at = now() WHERE request_id = %s",
            (req.request_id,),
        )
        conn.execute(
            "UPDATE handover_meta.run SET status = 'rejected', finished_at = now() "
            "WHERE run_id = %s",
            (_run_id(req),),
        )
        _clear_seal(conn, req.request_id)
        ledger.audit(
            conn,
            "subject_request_rejected",
            detail={
                "request_id": req.request_id,
                "request_type": req.request_type,
                "error": str(exc).splitlines()[0][:300] if str(exc) else "",
            },
        )
    log.info("subject request %s rejected: %s", req.request_id, exc)


def _erasure_context(req: SubjectRequest):
    """Like _context; on a rerun after the customer row is gone (so the blind index finds
    nothing), the customer comes from this request's destruction plan in the lake."""
    try:
        return _context(req)
    except RequestRejected:
        _, customers = read_plan(lake_from_url(), _run_id(req))
        if len(customers) != 1:
            raise
        from handover.config.loader import load_config
        from handover.protection.fields import load_keyring

        return load_config(req.system), load_keyring(), next(iter(customers))


def _small(out: dict) -> dict:
    """What may go to XCom: counts, paths, hashes and key ids, nothing about the person."""
    keep = (
        "export",
        "export_sha256",
        "counts",
        "run_id",
        "field",
        "inserted",
        "updated",
        "unchanged",
        "records",
        "exports_deleted",
        "target",
        "lake",
        "shred",
        "backup_after_erasure",
    )
    return {k: v for k, v in out.items() if k in keep}


def validate_outcome(params: dict, done: dict | None = None) -> dict:
    """The request's gate: access export opens and holds the data; the correction landed;
    erasure left nothing readable anywhere."""
    req = SubjectRequest.from_params(params)
    if req.request_type == "erasure":
        from handover.protection.fields import load_keyring

        keys, customers = read_plan(lake_from_url(), _run_id(req))
        if not customers:
            raise LifecycleError(
                f"erasure {req.request_id}: no destruction plan in the lake; "
                "clear fulfil_request and run it again"
            )
        return verify_destroyed(keys, customers, system=req.system, ring=load_keyring())
    cfg, ring, customer_id = _context(req)
    if req.request_type == "access":
        doc = json.loads(
            openssl_decrypt(
                lake_from_url().get_bytes(f"{PREFIX}/{req.request_id}/access-export.json.enc"),
                reveal_passphrase(req.request_id, audit=False),
            )
        )
        if doc.get("customer_id") != customer_id:
            raise LifecycleError(
                f"access {req.request_id}: the export is about someone else; "
                "clear fulfil_request and run it again"
            )
        rows = sum(len(r) for r in doc["new_system"].values())
        return {
            "export_opens": True,
            "new_system_rows": rows,
            "lake_objects": len(doc["migration_copies"]),
        }
    return _verify_correction(req, cfg, customer_id)


def _verify_correction(req: SubjectRequest, cfg, customer_id: str) -> dict:
    from psycopg import sql

    from handover.db.bulk_copy import copy_arrow
    from handover.db.load import comparable_columns

    table = customer_table(cfg)
    s = shapes(cfg)[table]
    run_id = _run_id(req)
    mapped = lake_from_url().read_table(part_key(run_id, "mapped", table, "p00"))
    compare = [c for c in comparable_columns(mapped.column_names) if c != s.target_key]
    tgt = sql.Identifier(cfg.mapping["schema"], s.target)
    with ledger.connect() as conn, conn.transaction():
        conn.execute(sql.SQL("CREATE TEMP TABLE _corr (LIKE {}) ON COMMIT DROP").format(tgt))
        copy_arrow(conn, sql.Identifier("_corr"), mapped)
        differs = conn.execute(  # type: ignore[index]  # count(*) always returns a row
            sql.SQL(
                "SELECT count(*) FROM _corr c LEFT JOIN {t} t USING ({k}) "
                "WHERE t.{k} IS NULL OR ({a}) IS DISTINCT FROM ({b})"
            ).format(
                t=tgt,
                k=sql.Identifier(s.target_key),
                a=sql.SQL(", ").join(sql.SQL("c.{}").format(sql.Identifier(c)) for c in compare),
                b=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in compare),
            )
        ).fetchone()[0]
    if differs:
        raise LifecycleError(
            f"correction {req.request_id}: the new system does not hold the "
            "corrected record; clear fulfil_request and run it again"
        )
    return {"corrected_record_in_new_system": True}


def record_outcome(params: dict, done: dict, verified: dict) -> dict:
    """Audit entry (and for erasure the certificate); the request is done."""
    from handover.config.loader import load_config
    from handover.protection.fields import load_keyring

    req = SubjectRequest.from_params(params)
    ring = load_keyring()
    lake = lake_from_url()
    meta = lake.read_json(f"{PREFIX}/{req.request_id}/request.json")
    ref = meta["subject_ref"]
    cert = None
    if req.request_type == "erasure":
        keys, customers = read_plan(lake, _run_id(req))
        steps = {
            "target": done.get("target", {}),
            "lake": done.get("lake", {}),
            "shred": done.get("shred", {}),
        }
        cert = certify(
            kind="erasure",
            certificate_id=f"er_{safe_run_id(req.request_id)}",
            keys=keys,
            customers=customers,
            ring=ring,
            steps=steps,
            verification=verified,
            request_id=req.request_id,
            rules=[{"rule": "SUBJECT_ERASURE", "request_id": req.request_id}],
            customer_table_name=customer_table(load_config(req.system)),
        )
        purge(lake, plan_prefix(_run_id(req)))
    detail = {
        "request_id": req.request_id,
        "request_type": req.request_type,
        "subject_ref": ref,
        "result": done,
        "verified": verified,
    }
    if cert:
        detail["certificate_id"] = cert["certificate_id"]
        detail["certificate_sha256"] = cert["certificate_sha256"]
    with ledger.connect() as conn, conn.transaction():
        conn.execute(
            "UPDATE handover_meta.subject_request SET status = 'done', finished_at = "
            "now(), detail = %s WHERE request_id = %s",
            (json.dumps(detail, default=str), req.request_id),
        )
        _clear_seal(conn, req.request_id)
        ledger.audit(conn, f"subject_{req.request_type}", detail=detail)
    log.info(
        "subject request %s (%s) done for subject %s", req.request_id, req.request_type, ref[:12]
    )
    return {
        "request_id": req.request_id,
        "request_type": req.request_type,
        "status": "done",
        **({"certificate_id": cert["certificate_id"]} if cert else {}),
    }
