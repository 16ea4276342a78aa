"""Finding the customer a request names, and standing for them without naming them.

The customer is named by customer id, resident ID or MSISDN. ID numbers and MSISDNs are
found through their blind index (keyed HMAC) in `crm.customer`, never by scanning clear
text; a customer who was never migrated can be named by customer id. Logs, XCom, the
books and the audit trail carry only a keyed hash of the customer id (`subject_ref`).
"""

from __future__ import annotations

import hashlib
import hmac

from handover.config.shapes import customer_table, shapes
from handover.core.errors import RequestRejected
from handover.db import ledger
from handover.lifecycle.books import lifecycle_connect
from handover.lifecycle.retention.plan import normalise
from handover.lifecycle.subject.request import SubjectRequest


def subject_ref(ring, customer_id: str) -> str:
    """The keyed hash that stands for the customer in logs, books and audit entries."""
    return hmac.new(
        ring.hmac_key, f"handover-subject|{customer_id}".encode(), hashlib.sha256
    ).hexdigest()


def erased_customers(conn, ring, customer_ids) -> set[str]:
    """Which of these customer ids were erased (handover_meta.erased_subject): the nightly
    sync drops their rows instead of bringing them back from the legacy system."""
    refs = {subject_ref(ring, c): c for c in customer_ids if c}
    if not refs:
        return set()
    rows = conn.execute(
        "SELECT subject_ref FROM handover_meta.erased_subject WHERE subject_ref = ANY(%s)",
        (list(refs),),
    ).fetchall()
    return {refs[r[0]] for r in rows}


def erased_among(values) -> frozenset[str]:
    """The customer ids among `values` (raw, any spelling) that an erasure removed, for
    comply to exclude (ERASED_SUBJECT). Cheap when nobody was erased: one query."""
    import pyarrow as pa

    with ledger.connect() as conn:
        if (
            conn.execute("SELECT to_regclass('handover_meta.erased_subject')").fetchone()[0] is None  # type: ignore[index]  # to_regclass always returns a row
            or conn.execute(  # type: ignore[index]  # NOT EXISTS always returns a row
                "SELECT NOT EXISTS (SELECT 1 FROM handover_meta.erased_subject)"
            ).fetchone()[0]
        ):
            return frozenset()
        from handover.protection.fields import load_keyring

        arr = (
            values
            if isinstance(values, pa.Array | pa.ChunkedArray)
            else pa.array([None if v is None else str(v) for v in values], pa.string())
        )
        distinct = {v for v in normalise(arr.cast(pa.string())).unique().to_pylist() if v}
        return frozenset(erased_customers(conn, load_keyring(), distinct))


def _norm(value: str) -> str | None:
    import pyarrow as pa

    return normalise(pa.array([value], pa.string()))[0].as_py()


def _bidx_column(cfg, table: str, pii: str) -> tuple[str, str]:
    """(target column, blind-index domain) of the customer field with this PII type."""
    from handover.protection.fields import field_domain

    columns = cfg.table(table)["columns"]
    tmap = cfg.table_mapping(table)
    for name, f in tmap["fields"].items():
        if "blind_index" in f.get("protect", []) and columns[f["from"]].get("pii") == pii:
            return f"{name}_bidx", field_domain(tmap["target"], name)
    raise RequestRejected(
        f"mapping.yaml: no blind index on a {pii} field of {table}; look the "
        "customer up by customer_id"
    )


def resolve_customer(conn, cfg, ring, req: SubjectRequest) -> str:
    """The customer id the request names, through the blind index for ID/MSISDN."""
    import pyarrow as pa
    from psycopg import sql

    from handover.core.validators import normalise_msisdn
    from handover.protection.fields import blind_index

    if not req.identifier:
        raise RequestRejected(
            f"request {req.request_id}: its identifier was cleared when the "
            "request ended or was rejected; submit it again to rerun it"
        )
    table = customer_table(cfg)
    s = shapes(cfg)[table]
    if req.identifier_type == "customer_id":
        value = _norm(req.identifier)
        if not value:
            raise RequestRejected(f"request {req.request_id}: the customer id is empty")
        # an id merged into another record of the person (another system's, or a
        # duplicate's) names the customer that holds the person now
        from handover.stages.identity import holder

        return holder(conn, value) or value
    pii = "resident_id" if req.identifier_type == "resident_id" else "msisdn"
    column, domain = _bidx_column(cfg, table, pii)
    if pii == "resident_id":  # in its one 18-digit form, as cleanse stored it
        from handover.core.validators import upgrade_resident_ids

        value = upgrade_resident_ids(pa.array([_norm(req.identifier) or ""], pa.string()))[0][
            0
        ].as_py()
    else:
        value = normalise_msisdn(pa.array([req.identifier], pa.string()))[0].as_py()
    bidx = blind_index([value], ring, domain)[0]
    rows = conn.execute(
        sql.SQL("SELECT {k} FROM {t} WHERE {c} = %s").format(
            k=sql.Identifier(s.target_key),
            t=sql.Identifier(cfg.mapping["schema"], s.target),
            c=sql.Identifier(column),
        ),
        (bidx,),
    ).fetchall()
    if not rows:
        raise RequestRejected(
            f"request {req.request_id}: no customer with this {req.identifier_type} in "
            f"{cfg.mapping['schema']}.{s.target} (blind index lookup); if the customer was not "
            "migrated (excluded or quarantined), name them by customer_id"
        )
    if len(rows) > 1:
        from handover.stages.identity import linked_customers

        ids = {r[0] for r in rows}
        if ids <= linked_customers(conn, rows[0][0]):  # one person, records linked
            return sorted(ids)[0]
        raise RequestRejected(
            f"request {req.request_id}: this {req.identifier_type} belongs to {len(rows)} "
            "customers; name the customer by customer_id"
        )
    return rows[0][0]


def _context(req: SubjectRequest):
    from handover.config.loader import load_config
    from handover.protection.fields import load_keyring

    cfg, ring = load_config(req.system), load_keyring()
    with lifecycle_connect() as conn:
        customer_id = resolve_customer(conn, cfg, ring, req)
    return cfg, ring, customer_id


def _in_target(conn, cfg, customer_id: str) -> bool:
    from psycopg import sql

    s = shapes(cfg)[customer_table(cfg)]
    return (
        conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
                sql.Identifier(cfg.mapping["schema"], s.target), sql.Identifier(s.target_key)
            ),
            (customer_id,),
        ).fetchone()[0]
        > 0
    )
