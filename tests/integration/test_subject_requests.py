"""Data-subject requests end to end, after a real migration and a backup.

access: the export is encrypted, opens with the passphrase (with stock `openssl` too)
and holds the customer's rows from the new system and the lake; correction: the new
value goes through the migration's gates into the target, a bad value changes nothing;
erasure: afterwards a search of the target, the books, the lake and the backups finds
nothing readable about the customer. The identifier never reaches logs or the audit.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import uuid

import pandas as pd
import psycopg
import pytest

from handover.flows import subject_request
from handover.lifecycle import backup, subject
from handover.protection.fields import blind_index
from tests.integration.test_retention import lifecycle_env, search_everywhere

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(request, tmp_path_factory):
    for env in lifecycle_env(request, tmp_path_factory, "handover_sr"):
        backup.run_backup(reason="scheduled")
        subs = pd.read_csv(env["source"] / "subscribers.csv", dtype=str, keep_default_na=False)
        truth = set(pd.read_csv(env["source"] / "truth.csv", dtype=str)["key"])
        ids = subs["id_number"].str.strip().str.upper()
        with psycopg.connect(env["dsn"]) as conn:
            busy = [
                r[0]
                for r in conn.execute(
                    "SELECT c.customer_id FROM crm.customer c WHERE (SELECT count(*) FROM "
                    "crm.call_record r WHERE r.customer_id = c.customer_id) >= 3 AND EXISTS ("
                    "SELECT 1 FROM crm.complaint q WHERE q.customer_id = c.customer_id) ORDER BY 1"
                )
            ]
        clean = [
            c
            for c in busy
            if c not in truth and (ids == ids[subs["cust_id"] == c].iloc[0]).sum() == 1
        ]
        assert len(clean) >= 2
        row = subs.set_index("cust_id").loc[clean[0]]
        yield {
            **env,
            "customer": clean[0],
            "other": clean[1],
            "id_number": row["id_number"].strip().upper(),
            "msisdn": row["msisdn"].strip(),
            "name": row["name"].strip(),
        }


def _request(**kw) -> dict:
    """Submit a request as the privacy officer does; the run config gets only its id."""
    form = {
        "request_id": f"REQ-{uuid.uuid4().hex[:8]}",
        "identifier_type": "customer_id",
        "field": "",
        "new_value": "",
        **kw,
    }
    out = subject.submit_request(**form)
    assert out["conf"] == {"request_id": form["request_id"]}
    return out["conf"]


def _intake(env, request_id: str):
    with psycopg.connect(env["dsn"]) as conn:
        return conn.execute(
            "SELECT request_type, sealed, key_id, cleared_at FROM "
            "handover_meta.subject_intake WHERE request_id = %s",
            (request_id,),
        ).fetchone()


def _no_identifier_in(env, text: str) -> None:
    for secret in (env["customer"], env["id_number"], env["msisdn"]):
        assert secret not in text


def test_access_exports_everything_encrypted(env, caplog):
    caplog.set_level(logging.INFO)
    req = _request(
        request_type="access", identifier_type="resident_id", identifier=env["id_number"]
    )
    sealed = bytes(_intake(env, req["request_id"])[1])
    assert env["id_number"].encode() not in sealed and len(sealed) > 12 + 16
    out = subject_request.handle_request(req)
    assert out["verified"]["export_opens"]
    _, sealed, key_id, cleared_at = _intake(env, req["request_id"])
    assert sealed is None and key_id is None and cleared_at is not None  # minimised
    with pytest.raises(subject.RequestRejected, match="cleared"):
        subject.validate_request(req)  # a rerun needs the request submitted again
    blob = (
        env["lake"] / "subject-requests" / req["request_id"] / "access-export.json.enc"
    ).read_bytes()
    assert blob[:8] == b"Salted__"
    for secret in (env["customer"], env["id_number"], env["name"]):
        assert secret.encode() not in blob
    doc = subject.read_export(req["request_id"])
    assert doc["customer_id"] == env["customer"]
    customer = doc["new_system"]["customer"][0]
    assert customer["id_number"] == env["id_number"]  # decrypted for the subject
    assert not any(k.endswith(("_enc", "_bidx")) for k in customer)
    with psycopg.connect(env["dsn"]) as conn:
        cdrs = conn.execute(
            "SELECT count(*) FROM crm.call_record WHERE customer_id = %s", (env["customer"],)
        ).fetchone()[0]
        audit = " ".join(
            r[0] for r in conn.execute("SELECT detail::text FROM handover_meta.audit_log")
        )
    assert len(doc["new_system"]["call_record"]) == cdrs
    stages = {c["stage"] for c in doc["migration_copies"]}
    assert {"raw", "comply", "cleanse", "mapped"} <= stages
    _no_identifier_in(env, audit)
    _no_identifier_in(env, caplog.text)
    if shutil.which("openssl"):  # the customer opens it with stock tools
        path = env["root"] / "export.enc"
        path.write_bytes(blob)
        plain = subprocess.run(
            [
                "openssl",
                "enc",
                "-d",
                "-aes-256-cbc",
                "-pbkdf2",
                "-iter",
                "600000",
                "-md",
                "sha256",
                "-in",
                str(path),
                "-pass",
                "stdin",
            ],
            input=subject.reveal_passphrase(req["request_id"]).encode(),
            capture_output=True,
            check=True,
        ).stdout
        assert json.loads(plain)["customer_id"] == env["customer"]


def test_correction_flows_through_the_gates(env):
    new = "13800138000"
    req = _request(
        request_type="correction", identifier=env["other"], field="msisdn", new_value=new
    )
    out = subject_request.handle_request(req)
    assert out["done"]["updated"] == 1 and out["verified"]["corrected_record_in_new_system"]
    run_id = f"subject__{req['request_id']}"
    with psycopg.connect(env["dsn"]) as conn:
        msisdn, bidx = conn.execute(
            "SELECT msisdn, msisdn_bidx FROM crm.customer WHERE customer_id = %s", (env["other"],)
        ).fetchone()
        gates = {
            r[0]
            for r in conn.execute(
                "SELECT gate FROM handover_meta.gate_result WHERE run_id = %s AND success",
                (run_id,),
            )
        }
        stages = {
            r[0]
            for r in conn.execute(
                "SELECT stage FROM handover_meta.ledger WHERE run_id = %s", (run_id,)
            )
        }
    assert msisdn == new
    assert bidx == blind_index([new], env["ring"], "customer.msisdn")[0]
    assert gates == {"intake", "compliance", "quality", "contract"}
    assert {"extract", "comply", "cleanse", "map", "load"} <= stages

    bad = _request(
        request_type="correction", identifier=env["other"], field="msisdn", new_value="12345"
    )
    with pytest.raises(subject.RequestRejected, match="INVALID_MSISDN"):
        subject_request.handle_request(bad)
    with psycopg.connect(env["dsn"]) as conn:
        still = conn.execute(
            "SELECT msisdn FROM crm.customer WHERE customer_id = %s", (env["other"],)
        ).fetchone()[0]
    assert still == new


def test_unknown_identifier_is_rejected_without_echoing_it(env):
    secret = "110101199003071234"
    req = _request(request_type="access", identifier_type="resident_id", identifier=secret)
    with pytest.raises(subject.RequestRejected) as err:
        subject_request.handle_request(req)
    assert secret not in str(err.value) and "customer_id" in str(err.value)
    assert _intake(env, req["request_id"])[1] is None  # a rejected request keeps no seal
    with psycopg.connect(env["dsn"]) as conn:
        rejected = [
            r[0]
            for r in conn.execute(
                "SELECT detail::text FROM handover_meta.audit_log WHERE action = "
                "'subject_request_rejected'"
            )
        ]
    assert rejected and all(secret not in r for r in rejected)


def test_identifier_in_the_run_config_is_refused(env):
    """Airflow keeps a run's config and shows it in the UI: an identifier there is refused,
    as is a request id nobody submitted, and a sealed intake edited in the database."""
    secret = env["msisdn"]
    with pytest.raises(subject.RequestRejected, match="run config") as err:
        subject_request.handle_request(
            {
                "request_id": "REQ-conf",
                "request_type": "access",
                "identifier_type": "msisdn",
                "identifier": secret,
            }
        )
    assert secret not in str(err.value)
    with pytest.raises(subject.RequestRejected, match="nothing was submitted"):
        subject_request.handle_request({"request_id": "REQ-never-submitted"})

    req = _request(request_type="access", identifier_type="msisdn", identifier=secret)
    with psycopg.connect(env["dsn"]) as conn:
        conn.execute(
            "UPDATE handover_meta.subject_intake SET request_type = 'erasure' "
            "WHERE request_id = %s",
            (req["request_id"],),
        )
    with pytest.raises(subject.LifecycleError, match="does not open"):
        subject_request.handle_request(req)
    with psycopg.connect(env["dsn"]) as conn:
        details = " ".join(
            r[0] for r in conn.execute("SELECT detail::text FROM handover_meta.audit_log")
        )
        assert ("handover_meta", "subject_intake") not in backup.snapshot_tables(conn)
    _no_identifier_in(env, details)


def test_submit_reads_the_identifier_from_stdin(env):
    """The officer's command: the identifier is piped (or typed at a hidden prompt), never
    an argument, and the command prints the run config to trigger with."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "handover.lifecycle.subject",
            "submit",
            "REQ-cli-1",
            "--type",
            "correction",
            "--identifier-type",
            "msisdn",
            "--field",
            "address",
        ],
        input=f"{env['msisdn']}\nNew Road 1\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert '{"request_id": "REQ-cli-1"}' in done.stdout and env["msisdn"] not in done.stdout
    req = subject.load_request("REQ-cli-1")
    assert (req.request_type, req.identifier, req.field, req.new_value) == (
        "correction",
        env["msisdn"],
        "address",
        "New Road 1",
    )
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "handover.lifecycle.subject",
            "submit",
            "REQ-cli-2",
            "--type",
            "access",
        ],
        input="\n",
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "identifier is empty" in bad.stderr


def test_erasure_leaves_nothing_readable(env):
    with psycopg.connect(env["dsn"]) as conn:
        keys = {
            r[0]
            for t, k in (
                ("call_record", "cdr_id"),
                ("data_session", "session_id"),
                ("payment", "payment_id"),
                ("complaint", "complaint_id"),
                ("consent", "consent_id"),
            )
            for r in conn.execute(
                f"SELECT {k} FROM crm.{t} WHERE customer_id = %s", (env["customer"],)
            )
        }
        customers_before = conn.execute("SELECT count(*) FROM crm.customer").fetchone()[0]
    assert len(keys) >= 4
    req = _request(request_type="erasure", identifier_type="msisdn", identifier=env["msisdn"])
    out = subject_request.handle_request(req)
    assert out["verified"]["remaining_in_lake"] == 0
    assert out["done"]["shred"]["backup_files_shredded"] >= 1
    assert out["done"]["exports_deleted"] >= 1  # the access export of the first test

    hits = search_everywhere(
        env["dsn"],
        env["lake"],
        env["ring"],
        keys | {env["customer"]},
        substrings={env["id_number"]},
    )
    assert hits["db"] == [] and hits["lake"] == [] and hits["backups"] == []
    assert hits["unreadable_backup_files"] >= 1
    assert not list((env["lake"] / "subject-requests").rglob("access-export.json.enc"))
    with psycopg.connect(env["dsn"]) as conn:
        customers_after = conn.execute("SELECT count(*) FROM crm.customer").fetchone()[0]
        erased = conn.execute(
            "SELECT subject_ref, request_id FROM handover_meta.erased_subject"
        ).fetchall()
        cert = conn.execute(
            "SELECT lake_key, keys FROM handover_meta.destruction_certificate "
            "WHERE request_id = %s",
            (req["request_id"],),
        ).fetchone()
        audit = conn.execute(
            "SELECT detail FROM handover_meta.audit_log WHERE action = 'subject_erasure'"
        ).fetchone()[0]
    assert customers_after == customers_before - 1
    assert erased == [(subject.subject_ref(env["ring"], env["customer"]), req["request_id"])]
    assert cert[1] >= len(keys) + 1  # plus records that only the lake held (excluded)
    assert audit["certificate_id"] == f"er_{req['request_id']}"
    _no_identifier_in(env, json.dumps(audit))
    _no_identifier_in(env, (env["lake"] / cert[0]).read_text())

    # A rerun (a cleared task) is safe, and the customer cannot be found any more.
    subject.submit_request(req["request_id"], "erasure", "customer_id", env["customer"])
    again = subject_request.handle_request(req)
    assert again["done"]["target"]["target_rows_deleted"] == {}
    assert again["done"]["lake"]["lake_objects_rewritten"] == 0
    with pytest.raises(subject.RequestRejected):
        subject_request.handle_request(
            _request(request_type="access", identifier_type="msisdn", identifier=env["msisdn"])
        )
