"""
### Data-subject request

Triggered from the UI form (Trigger DAG → fill the fields). A customer's right to see,
correct or erase their data (PIPL Art. 44-47):

- **access**: everything held about the customer (new system, every lake copy incl.
  quarantine and exclusions, decisions, backups holding them) as one encrypted file in
  the lake under `subject-requests/<request_id>/`; the passphrase is revealed to the
  privacy officer by `python -m handover.subject passphrase <request_id>` (audited).
- **correction**: `field` set to `new_value`, then the row runs through the migration's
  own stages and gates before it is upserted; a rejected value changes nothing.
- **erasure**: deleted from the target and every lake copy, earlier exports deleted,
  backups holding them crypto-shredded, checked, certified.

validate_request → fulfil_request → **validate_outcome** → record_outcome.
The identifier (customer id, resident ID or MSISDN; the last two found by blind index)
is never logged: logs and the audit trail show a keyed hash. Run config is visible to
users who can see this DAG's runs: restrict the DAG to the privacy team and prefer the
customer id. Runbook: docs/lifecycle.md.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, task

from handover.tasks import DEFAULT_ARGS


@dag(
    dag_id="subject_request",
    doc_md=__doc__,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["handover", "lifecycle", "privacy"],
    params={
        "request_id": Param("", type="string", title="Request id",
                            description="ticket id of the customer's request (letters, digits, "
                                        ". _ -)"),
        "request_type": Param("access", type="string", title="Request type",
                              enum=["access", "correction", "erasure"]),
        "identifier_type": Param("customer_id", type="string", title="Identifier type",
                                 enum=["customer_id", "resident_id", "msisdn"]),
        "identifier": Param("", type="string", title="Customer identifier",
                            description="customer id, 18-digit resident ID or mobile number"),
        "field": Param("", type="string", title="Field (correction)",
                       description="e.g. address, name, msisdn, id_number, city"),
        "new_value": Param("", type="string", title="New value (correction)"),
        "system": Param("legacy_bss", type="string", title="Source system config folder"),
    },
)
def subject_request():
    @task(task_id="validate_request", retries=0)
    def validate_request(params=None):
        from handover import backup, subject

        return backup.call(subject.validate_request, dict(params))

    @task
    def fulfil_request(checked, params=None):
        from handover import backup, subject

        return backup.call(subject.fulfil_request, dict(params))

    @task(task_id="validate_outcome", retries=0)
    def validate_outcome(done, params=None):
        from handover import backup, subject

        return backup.call(subject.validate_outcome, dict(params), done)

    @task
    def record_outcome(done, verified, params=None):
        from handover import backup, subject

        return backup.call(subject.record_outcome, dict(params), done, verified)

    done = fulfil_request(validate_request())
    record_outcome(done, validate_outcome(done))


subject_request()
