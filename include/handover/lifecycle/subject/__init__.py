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

- request: the form and its sealed intake (submit_request, load_request);
- lookup: the customer a request names (blind index), subject_ref, erased customers;
- search: everything held about a customer, in the target and the lake;
- export: the access export's encryption and its passphrase;
- access, erasure: fulfilling those two (a correction is a flow:
  handover.flows.subject_request);
- steps: the DAG's validate, check and record steps;
- cli: `python -m handover.lifecycle.subject`.

This package re-exports the public names for DAGs, scripts and tests; modules of the
library import from the module that defines a name.
"""

from handover.core.errors import LifecycleError, RequestRejected
from handover.lifecycle.subject.access import access
from handover.lifecycle.subject.cli import main
from handover.lifecycle.subject.erasure import erase
from handover.lifecycle.subject.export import (
    PBKDF2_ROUNDS,
    new_passphrase,
    openssl_decrypt,
    openssl_encrypt,
    read_export,
    reveal_passphrase,
)
from handover.lifecycle.subject.lookup import (
    erased_among,
    erased_customers,
    resolve_customer,
    subject_ref,
)
from handover.lifecycle.subject.request import (
    IDENTIFIER_TYPES,
    PREFIX,
    REQUEST_TYPES,
    SubjectRequest,
    load_request,
    submit_request,
)
from handover.lifecycle.subject.search import lake_rows, subject_keys, target_rows
from handover.lifecycle.subject.steps import record_outcome, validate_outcome, validate_request

__all__ = [
    "IDENTIFIER_TYPES",
    "PBKDF2_ROUNDS",
    "PREFIX",
    "REQUEST_TYPES",
    "LifecycleError",
    "RequestRejected",
    "SubjectRequest",
    "access",
    "erase",
    "erased_among",
    "erased_customers",
    "lake_rows",
    "load_request",
    "main",
    "new_passphrase",
    "openssl_decrypt",
    "openssl_encrypt",
    "read_export",
    "record_outcome",
    "resolve_customer",
    "reveal_passphrase",
    "subject_keys",
    "subject_ref",
    "submit_request",
    "target_rows",
    "validate_outcome",
    "validate_request",
]
