"""
### Data-subject request

A customer's right to see, correct or erase their data (PIPL Art. 44-47):

- **access**: everything held about the customer (new system, every lake copy incl.
  quarantine and exclusions, decisions, backups holding them) as one encrypted file in
  the lake under `subject-requests/<request_id>/`; the passphrase is revealed to the
  privacy officer by `python -m handover.lifecycle.subject passphrase <request_id>` (audited).
- **correction**: `field` set to the new value, then the row runs through the migration's
  own stages and gates before it is upserted; a rejected value changes nothing.
- **erasure**: deleted from the target and every lake copy, earlier exports deleted,
  backups holding them crypto-shredded, checked, certified.

**Submit first, then trigger with only the request id.** A run's config is kept in
Airflow's database and shown here to everyone who may see this DAG, so the customer's
identifier never goes into it:

    python -m handover.lifecycle.subject submit REQ-123 --type erasure --identifier-type msisdn

reads the identifier (and a correction's new value) from stdin and stores it sealed
under the keyring; then Trigger DAG with `request_id` REQ-123. A run whose config
carries `identifier` or `new_value` is refused. The seal is cleared when the request
ends or is rejected.

validate_request → fulfil_request → **validate_outcome** → record_outcome.
Logs and the audit trail show a keyed hash of the customer, never the identifier.
Runbook: docs/lifecycle.md.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, task

from handover.ops.chain import dag_header


@dag(
    schedule=None,
    **dag_header(
        "subject_request",
        __doc__,
        start_date=datetime(2026, 1, 1),
        tags=["lifecycle", "privacy"],
        params={
            "request_id": Param(
                "",
                type="string",
                title="Request id",
                description="ticket id of a request submitted with `python -m "
                "handover.lifecycle.subject submit` (letters, digits, . _ -)",
            ),
        },
    ),
)
def subject_request():
    @task(task_id="validate_request", retries=0)
    def validate_request(params=None):
        from handover.lifecycle.subject import steps as subject
        from handover.ops import tasks

        return tasks.call(subject.validate_request, dict(params))

    @task
    def fulfil_request(checked, params=None):
        from handover.flows import subject_request
        from handover.ops import tasks

        return tasks.call(subject_request.fulfil_request, dict(params))

    @task(task_id="validate_outcome", retries=0)
    def validate_outcome(done, params=None):
        from handover.lifecycle.subject import steps as subject
        from handover.ops import tasks

        return tasks.call(subject.validate_outcome, dict(params), done)

    @task
    def record_outcome(done, verified, params=None):
        from handover.lifecycle.subject import steps as subject
        from handover.ops import tasks

        return tasks.call(subject.record_outcome, dict(params), done, verified)

    done = fulfil_request(validate_request())
    record_outcome(done, validate_outcome(done))


subject_request()
