"""A data-subject request: its form, and its sealed intake.

A privacy officer submits a request with `python -m handover.lifecycle.subject submit` (the
identifier, and a correction's new value, are read from stdin and stored sealed under the
keyring in `handover_meta.subject_intake`), then triggers the `subject_request` DAG with
only the request id: the run config never carries the identifier. The seal is cleared
when the request ends or is rejected.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass

from handover.core.errors import LifecycleError, RequestRejected
from handover.db import ledger
from handover.lifecycle.books import lifecycle_connect

log = logging.getLogger("handover")

REQUEST_TYPES = ("access", "correction", "erasure")
IDENTIFIER_TYPES = ("customer_id", "resident_id", "msisdn")
PREFIX = "subject-requests"
REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SEALED = ("identifier", "new_value")


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


def _run_id(req: SubjectRequest) -> str:
    """The request's one-row run (correction) and destruction plan (erasure)."""
    return f"subject__{req.request_id}"


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

    request_id, request_type, identifier_type, identifier, field, new_value = (
        str(v or "").strip()
        for v in (request_id, request_type, identifier_type, identifier, field, new_value)
    )
    req = SubjectRequest(
        request_id,
        request_type,
        identifier_type,
        identifier,
        field,
        new_value,
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
