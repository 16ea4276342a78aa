"""Data-subject requests (PIPL Art. 44-47): access, correction and erasure, end to end.

A privacy officer submits a request with `python -m handover.lifecycle.subject submit` (the
identifier, and a correction's new value, are read from stdin and stored sealed under the
keyring in `handover_meta.subject_intake`), then triggers the `subject_request` DAG with
only the request id; its tasks call the four steps here: validate the request, fulfil it,
check the outcome, record it. The seal is cleared when the request ends or is rejected.

- The customer is named by customer id, resident ID or MSISDN. ID numbers and MSISDNs
  are found through their blind index (keyed HMAC) in `crm.customer`, never by scanning
  clear text; a customer who was never migrated can be named by customer id.
- Logs, XCom, the books and the audit trail carry only a keyed hash of the customer id
  (`subject_ref`), never the identifier.
- access: everything held about the customer (the new system, every lake copy of every
  run including quarantine and exclusions, the decisions taken on their records, and
  the backups that still hold them) as one JSON document, encrypted with a one-time
  passphrase in OpenSSL's `enc` format (AES-256-CBC, PBKDF2-SHA256, 600,000 rounds),
  so the customer opens it with stock tools. The passphrase is stored only wrapped by
  the keyring (AES-256-GCM) beside the file; a privacy officer reveals it with
  `python -m handover.lifecycle.subject passphrase <request_id>` (audited) and hands it over on a
  separate channel.
- correction: the customer's latest source-form row, with the field fixed, runs as a
  one-row run (`runs/subject__<request_id>/`) through the migration's own stages and
  gates (intake, comply, compliance, cleanse, quality, map + protect, contract, load);
  a value a gate or cleanse rejects changes nothing and fails with the reason.
- erasure: handover.lifecycle.retention's destruction on the customer and all their records:
  target rows deleted, lake copies rewritten (all versions), earlier access exports
  deleted, backups holding them crypto-shredded, a search that must find nothing
  readable, an erasure certificate, and the keyed hash on `handover_meta.erased_subject`
  so the nightly sync does not bring the customer back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from handover.config.shapes import customer_table, shapes
from handover.core.errors import RequestRejected
from handover.db import ledger
from handover.lifecycle.backup import LifecycleError, lifecycle_connect, purge
from handover.lifecycle.retention import (
    certify,
    columns_for,
    destroy_in_lake,
    destroy_in_target,
    lake_partitions,
    normalise,
    plan_prefix,
    read_plan,
    shred_backups,
    verify_destroyed,
    write_plan,
)
from handover.storage.lake import Lake, lake_from_url, part_key, safe_run_id

log = logging.getLogger("handover")

REQUEST_TYPES = ("access", "correction", "erasure")
IDENTIFIER_TYPES = ("customer_id", "resident_id", "msisdn")
PREFIX = "subject-requests"
PBKDF2_ROUNDS = 600_000
REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PASSPHRASE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I


@dataclass(frozen=True)
class SubjectRequest:
    request_id: str
    request_type: str
    identifier_type: str
    identifier: str
    field: str = ""
    new_value: str = ""
    system: str = "legacy_bss"

    def checked(self) -> SubjectRequest:
        """Check the form; messages never repeat the identifier."""
        if not REQUEST_ID.match(self.request_id):
            raise RequestRejected(
                "request_id: give the ticket id of the request (letters, "
                "digits, '.', '_' or '-', at most 64)"
            )
        if self.request_type not in REQUEST_TYPES:
            raise RequestRejected(
                f"request_type {self.request_type!r}: use one of {', '.join(REQUEST_TYPES)}"
            )
        if self.identifier_type not in IDENTIFIER_TYPES:
            raise RequestRejected(
                f"identifier_type {self.identifier_type!r}: use one of "
                f"{', '.join(IDENTIFIER_TYPES)}"
            )
        if not self.identifier:
            raise RequestRejected(
                f"request {self.request_id}: identifier is empty; give the "
                f"customer's {self.identifier_type}"
            )
        if self.request_type == "correction" and not (self.field and self.new_value):
            raise RequestRejected(
                f"request {self.request_id}: a correction needs field and new_value"
            )
        return self

    @classmethod
    def from_params(cls, params: dict) -> SubjectRequest:
        """The request a run names by `request_id`, unsealed from its intake.

        The run config must not carry the identifier or a new value: Airflow keeps a run's
        config in its database and shows it in the UI to everyone who may see the DAG."""
        p = {k: ("" if v is None else str(v)).strip() for k, v in dict(params).items()}
        request_id = p.get("request_id", "")
        if not REQUEST_ID.match(request_id):
            raise RequestRejected(
                "request_id: give the ticket id of the request (letters, "
                "digits, '.', '_' or '-', at most 64)"
            )
        given = [k for k in SEALED if p.get(k)]
        if given:
            raise RequestRejected(
                f"request {request_id}: {' and '.join(given)} in the run config, which "
                "Airflow stores and shows in the UI; submit the request sealed with `python "
                f"-m handover.lifecycle.subject submit {request_id} --type <type> --identifier-type "
                "<type>` (reads them from stdin) and trigger with only request_id"
            )
        return load_request(request_id)


# ---------------------------------------------------------------- intake (sealed)
SEALED = ("identifier", "new_value")


def _seal(ring, plain: bytes, aad: bytes) -> tuple[str, bytes]:
    """(key id, nonce || AES-256-GCM ciphertext) under the keyring's active key."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    return ring.active_key_id, nonce + AESGCM(ring.keys[ring.active_key_id]).encrypt(
        nonce, plain, aad
    )


def _unseal(ring, key_id: str, blob: bytes, aad: bytes) -> bytes:
    """What _seal sealed; cryptography's InvalidTag if the blob or the aad was changed."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(ring.keys[key_id]).decrypt(blob[:12], blob[12:], aad)


def _intake_aad(req: SubjectRequest) -> bytes:
    """The request's other fields bound to the seal: a row edited in the database (another
    type, field or system for the same identifier) no longer opens."""
    return "|".join(
        (
            "handover-intake",
            req.request_id,
            req.request_type,
            req.identifier_type,
            req.field,
            req.system,
        )
    ).encode()


def submit_request(
    request_id: str,
    request_type: str,
    identifier_type: str,
    identifier: str,
    field: str = "",
    new_value: str = "",
    system: str = "legacy_bss",
) -> dict:
    """Check a request and store it with its identifier and new value sealed (AES-256-GCM
    under the keyring's active key) in `handover_meta.subject_intake`; the DAG is then
    triggered with only the request id. Submitting the same id again replaces it."""
    from handover.protection.fields import load_keyring

    req = SubjectRequest(
        *(
            str(v or "").strip()
            for v in (request_id, request_type, identifier_type, identifier, field, new_value)
        ),
        system=str(system or "legacy_bss").strip(),
    ).checked()
    ring = load_keyring()
    key_id, sealed = _seal(
        ring,
        json.dumps({"identifier": req.identifier, "new_value": req.new_value}).encode(),
        _intake_aad(req),
    )
    with lifecycle_connect() as conn:
        with conn.transaction():
            conn.execute(
                "INSERT INTO handover_meta.subject_intake (request_id, request_type, "
                "identifier_type, field, system, key_id, sealed) VALUES (%s,%s,%s,%s,%s,%s,%s) "
                "ON CONFLICT (request_id) DO UPDATE SET request_type = excluded.request_type, "
                "identifier_type = excluded.identifier_type, field = excluded.field, "
                "system = excluded.system, key_id = excluded.key_id, sealed = excluded.sealed, "
                "submitted_by = current_user, submitted_at = now(), cleared_at = NULL",
                (
                    req.request_id,
                    req.request_type,
                    req.identifier_type,
                    req.field,
                    req.system,
                    key_id,
                    sealed,
                ),
            )
            ledger.audit(
                conn,
                "subject_request_submitted",
                detail={
                    "request_id": req.request_id,
                    "request_type": req.request_type,
                    "identifier_type": req.identifier_type,
                    "field": req.field,
                    "system": req.system,
                },
            )
    log.info(
        "subject request %s (%s) submitted, identifier sealed", req.request_id, req.request_type
    )
    return {
        "request_id": req.request_id,
        "request_type": req.request_type,
        "conf": {"request_id": req.request_id},
    }


def load_request(request_id: str) -> SubjectRequest:
    """The submitted request, unsealed. After it ended (or was rejected) its identifier is
    cleared: the request comes back with an empty identifier."""
    from cryptography.exceptions import InvalidTag

    from handover.protection.fields import load_keyring

    with lifecycle_connect() as conn:
        row = conn.execute(
            "SELECT request_type, identifier_type, field, system, key_id, sealed FROM "
            "handover_meta.subject_intake WHERE request_id = %s",
            (request_id,),
        ).fetchone()
    if row is None:
        raise RequestRejected(
            f"request {request_id}: nothing was submitted under this id; submit it first: "
            f"python -m handover.lifecycle.subject submit {request_id} --type "
            "<access|correction|erasure> --identifier-type <customer_id|resident_id|msisdn>"
        )
    request_type, identifier_type, field, system, key_id, sealed = row
    req = SubjectRequest(request_id, request_type, identifier_type, "", field, "", system)
    if sealed is None:
        return req
    ring = load_keyring()
    if key_id not in ring.keys:
        raise RequestRejected(
            f"request {request_id}: sealed under key {key_id}, which the "
            "keyring no longer holds; submit the request again"
        )
    try:
        plain = json.loads(_unseal(ring, key_id, bytes(sealed), _intake_aad(req)))
    except InvalidTag:
        raise LifecycleError(
            f"request {request_id}: its sealed intake does not open with its "
            "own fields (changed in the database?); submit the request "
            "again"
        ) from None
    return SubjectRequest(
        request_id,
        request_type,
        identifier_type,
        plain["identifier"],
        field,
        plain["new_value"],
        system,
    )


def _clear_seal(conn, request_id: str) -> None:
    """Data minimisation: the identifier is kept only while the request runs."""
    conn.execute(
        "UPDATE handover_meta.subject_intake SET sealed = NULL, key_id = NULL, "
        "cleared_at = now() WHERE request_id = %s AND sealed IS NOT NULL",
        (request_id,),
    )


# ---------------------------------------------------------------- identity
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
            conn.execute("SELECT to_regclass('handover_meta.erased_subject')").fetchone()[0] is None
            or conn.execute(
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


# ---------------------------------------------------------------- finding a subject's data
def _jsonable(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        out.append(
            {
                k: (
                    base64.b64encode(v).decode()
                    if isinstance(v, bytes | bytearray | memoryview)
                    else v
                )
                for k, v in r.items()
            }
        )
    return out


def _decrypt_fields(cfg, table: str, row: dict, ring) -> dict:
    """Encrypted fields in clear (it is the subject's own data); internals dropped."""
    from handover.protection.fields import decrypt_value, field_domain

    target = cfg.table_mapping(table)["target"]
    out = dict(row)
    for name, f in cfg.table_mapping(table)["fields"].items():
        if "encrypt" in f.get("protect", []) and f"{name}_enc" in out:
            blob, kid = out.pop(f"{name}_enc"), out.pop(f"{name}_key_id", None)
            try:
                out[name] = (
                    None
                    if blob is None
                    else decrypt_value(
                        bytes(blob), kid, ring, aad=field_domain(target, name).encode()
                    )
                )
            except Exception:  # noqa: BLE001 - a key no longer held: say so, do not fail
                out[name] = "[encrypted under a key no longer held]"
    return {k: v for k, v in out.items() if not k.endswith(("_bidx", "_key_id", "_enc"))}


def target_rows(conn, cfg, ring, customer_id: str) -> dict[str, list[dict]]:
    from psycopg import sql
    from psycopg.rows import dict_row

    out = {}
    for table, s in shapes(cfg).items():
        if not s.target_customer:
            continue
        cur = conn.cursor(row_factory=dict_row)
        rows = cur.execute(
            sql.SQL("SELECT * FROM {} WHERE {} = %s ORDER BY 1").format(
                sql.Identifier(cfg.mapping["schema"], s.target), sql.Identifier(s.target_customer)
            ),
            (customer_id,),
        ).fetchall()
        if rows:
            out[s.target] = [_decrypt_fields(cfg, table, r, ring) for r in rows]
    return out


def lake_rows(lake: Lake, cfg, customer_id: str, ring=None) -> list[dict]:
    """Every lake partition row of the customer: [{object, stage, table, rows}]."""
    import pyarrow as pa
    import pyarrow.compute as pc

    found = []
    all_shapes = shapes(cfg)
    needle = pa.array([customer_id], pa.string())
    for key, stage, table in lake_partitions(lake, cfg):
        tbl = lake.read_table(key)
        _, ccol, _, _ = columns_for(all_shapes[table], stage, tbl.column_names)
        if not ccol or ccol not in tbl.column_names:
            continue
        mask = pc.fill_null(pc.is_in(normalise(tbl[ccol]), value_set=needle), False)
        if not pc.any(mask).as_py():
            continue
        rows = tbl.filter(mask).to_pylist()
        if ring is not None and stage == "mapped":
            rows = [_decrypt_fields(cfg, table, r, ring) for r in rows]
        found.append({"object": key, "stage": stage, "table": table, "rows": rows})
    return found


def subject_keys(conn, lake: Lake, cfg, customer_id: str) -> dict[str, set[str]]:
    """Record keys of the customer's rows, per source table, in the target and the lake."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from psycopg import sql

    all_shapes = shapes(cfg)
    keys: dict[str, set[str]] = {customer_table(cfg): {customer_id}}
    for table, s in all_shapes.items():
        if s.target_customer:
            keys.setdefault(table, set()).update(
                r[0]
                for r in conn.execute(
                    sql.SQL("SELECT {} FROM {} WHERE {} = %s").format(
                        sql.Identifier(s.target_key),
                        sql.Identifier(cfg.mapping["schema"], s.target),
                        sql.Identifier(s.target_customer),
                    ),
                    (customer_id,),
                ).fetchall()
            )
    needle = pa.array([customer_id], pa.string())
    for key, stage, table in lake_partitions(lake, cfg):
        if stage == "resolve":
            continue
        tbl = lake.read_table(key)
        kcol, ccol, _, _ = columns_for(all_shapes[table], stage, tbl.column_names)
        if not (kcol and ccol and ccol in tbl.column_names):
            continue
        mask = pc.fill_null(pc.is_in(normalise(tbl[ccol]), value_set=needle), False)
        keys.setdefault(table, set()).update(
            k for k in pc.filter(normalise(tbl[kcol]), mask).to_pylist() if k
        )
    return {t: v for t, v in keys.items() if v}


# ---------------------------------------------------------------- export encryption
def new_passphrase() -> str:
    groups = ["".join(secrets.choice(PASSPHRASE_ALPHABET) for _ in range(5)) for _ in range(5)]
    return "-".join(groups)


def openssl_encrypt(data: bytes, passphrase: str, rounds: int = PBKDF2_ROUNDS) -> bytes:
    """`openssl enc -aes-256-cbc -pbkdf2 -iter <rounds> -md sha256` compatible output."""
    from cryptography.hazmat.primitives import hashes, padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    salt = os.urandom(8)
    km = PBKDF2HMAC(hashes.SHA256(), 48, salt, rounds).derive(passphrase.encode())
    padder = padding.PKCS7(128).padder()
    body = padder.update(data) + padder.finalize()
    enc = Cipher(algorithms.AES(km[:32]), modes.CBC(km[32:])).encryptor()
    return b"Salted__" + salt + enc.update(body) + enc.finalize()


def openssl_decrypt(blob: bytes, passphrase: str, rounds: int = PBKDF2_ROUNDS) -> bytes:
    from cryptography.hazmat.primitives import hashes, padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    if blob[:8] != b"Salted__":
        raise LifecycleError("not an OpenSSL enc file (no 'Salted__' header)")
    km = PBKDF2HMAC(hashes.SHA256(), 48, blob[8:16], rounds).derive(passphrase.encode())
    dec = Cipher(algorithms.AES(km[:32]), modes.CBC(km[32:])).decryptor()
    body = dec.update(blob[16:]) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(body) + unpadder.finalize()


def _wrap_passphrase(ring, request_id: str, passphrase: str) -> dict:
    key_id, blob = _seal(ring, passphrase.encode(), f"handover-export|{request_id}".encode())
    return {"request_id": request_id, "key_id": key_id, "wrapped": base64.b64encode(blob).decode()}


def reveal_passphrase(request_id: str, *, audit: bool = True) -> str:
    """The export's passphrase, for the privacy officer who hands it over (audited)."""
    from handover.protection.fields import load_keyring

    lake, ring = lake_from_url(), load_keyring()
    key = f"{PREFIX}/{request_id}/passphrase.json"
    if not lake.exists(key):
        raise RequestRejected(
            f"request {request_id}: no export passphrase (never exported, or erased since)"
        )
    obj = lake.read_json(key)
    plain = _unseal(
        ring,
        obj["key_id"],
        base64.b64decode(obj["wrapped"]),
        f"handover-export|{request_id}".encode(),
    ).decode()
    if audit:
        with ledger.connect() as conn, conn.transaction():
            ledger.audit(conn, "export_passphrase_revealed", detail={"request_id": request_id})
    return plain


def read_export(request_id: str) -> dict:
    """Decrypt an access export (officers, tests); the passphrase reveal is audited."""
    lake = lake_from_url()
    blob = lake.get_bytes(f"{PREFIX}/{request_id}/access-export.json.enc")
    return json.loads(openssl_decrypt(blob, reveal_passphrase(request_id)))


# ---------------------------------------------------------------- the requests
def access(req: SubjectRequest, cfg, ring, customer_id: str) -> dict:
    from handover.stages.identity import linked_customers

    lake = lake_from_url()
    with ledger.connect() as conn:
        # the person's every record: the customer, records linked to it or merged into it
        linked = sorted(linked_customers(conn, customer_id))
        in_target: dict[str, list] = {}
        copies, keys = [], {}
        for cid in linked:
            for t, rows in target_rows(conn, cfg, ring, cid).items():
                in_target.setdefault(t, []).extend(rows)
            copies += lake_rows(lake, cfg, cid, ring)
            for t, v in subject_keys(conn, lake, cfg, cid).items():
                keys.setdefault(t, set()).update(v)
        decisions = {"quarantine": [], "exclusion": []}
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


def _run_id(req: SubjectRequest) -> str:
    """The request's one-row run (correction) and destruction plan (erasure)."""
    return f"subject__{req.request_id}"


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


# ---------------------------------------------------------------- the DAG's steps
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


def _reject(req: SubjectRequest, exc: Exception) -> None:
    """A request refused while being fulfilled ends `rejected`: its seal is cleared, and
    the one-row run a correction opened leaves nothing in the lake (the customer's raw
    row), only its books."""
    from handover.lifecycle.retention import shred_scope

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

    from handover.db.load import comparable_columns, copy_arrow

    table = customer_table(cfg)
    s = shapes(cfg)[table]
    run_id = _run_id(req)
    mapped = lake_from_url().read_table(part_key(run_id, "mapped", table, "p00"))
    compare = [c for c in comparable_columns(mapped.column_names) if c != s.target_key]
    tgt = sql.Identifier(cfg.mapping["schema"], s.target)
    with ledger.connect() as conn, conn.transaction():
        conn.execute(sql.SQL("CREATE TEMP TABLE _corr (LIKE {}) ON COMMIT DROP").format(tgt))
        copy_arrow(conn, sql.Identifier("_corr"), mapped)
        differs = conn.execute(
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


def _read_secret(prompt: str) -> str:
    """A value typed at a hidden prompt, or the next line of piped input: never an
    argument (other users of the machine see a process's arguments)."""
    import getpass
    import sys

    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return sys.stdin.readline().rstrip("\r\n")


def main(argv: list[str] | None = None) -> int:
    """`python -m handover.lifecycle.subject submit|passphrase|decrypt REQUEST_ID`: for privacy
    officers."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m handover.lifecycle.subject")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser(
        "submit",
        help="submit a request: its identifier (and a correction's "
        "new value) are read from stdin and stored sealed",
    )
    s.add_argument("request_id")
    s.add_argument("--type", required=True, choices=REQUEST_TYPES, dest="request_type")
    s.add_argument("--identifier-type", default="customer_id", choices=IDENTIFIER_TYPES)
    s.add_argument("--field", default="", help="the field a correction sets")
    s.add_argument("--system", default="legacy_bss", help="source system config folder")
    p = sub.add_parser("passphrase", help="print an access export's passphrase (audited)")
    p.add_argument("request_id")
    d = sub.add_parser("decrypt", help="decrypt an access export to a file (audited)")
    d.add_argument("request_id")
    d.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "submit":
        identifier = _read_secret(f"{args.identifier_type}: ")
        new_value = (
            _read_secret(f"new {args.field or 'value'}: ")
            if args.request_type == "correction"
            else ""
        )
        try:
            out = submit_request(
                args.request_id,
                args.request_type,
                args.identifier_type,
                identifier,
                args.field,
                new_value,
                args.system,
            )
        except RequestRejected as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(
            f"request {out['request_id']} ({out['request_type']}) submitted, identifier "
            f"sealed; trigger the subject_request DAG with {json.dumps(out['conf'])}"
        )
        # DAGs start paused here (nothing destroys data by surprise): a trigger of a paused
        # DAG waits, queued, for ever.
        print("  airflow dags unpause subject_request   # once; a paused DAG's runs stay queued")
        print(f"  airflow dags trigger subject_request -c '{json.dumps(out['conf'])}'")
        return 0
    if args.cmd == "passphrase":
        print(reveal_passphrase(args.request_id))
        return 0
    from pathlib import Path

    Path(args.out).write_text(
        json.dumps(read_export(args.request_id), ensure_ascii=False, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
