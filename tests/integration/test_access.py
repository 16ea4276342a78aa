"""Database roles on a migrated target: who may read and write what.

The analyst is refused every base table and every handover_meta table, can reach no
ciphertext, blind index, key id or key file, and reads from crm_masked only masked
values; the auditor reads the books and nothing about customers; the loader writes the
target but can only append to the audit trail. Roles are checked with SET ROLE from
the test's superuser session, the way a member login would act.
"""

from __future__ import annotations

import json
import re
import uuid

import pandas as pd
import psycopg
import pytest

from handover.db import access, ledger
from handover.flows import migration as pipeline
from handover.flows.runner import run_migration
from handover.protection.fields import Keyring
from handover_synth import legacy_bss as synth
from tests.conftest import pg_dsn

pytestmark = pytest.mark.integration
SUBSCRIBERS = 400
KEY_COLUMNS = {
    "customer_id",
    "consent_id",
    "cdr_id",
    "session_id",
    "payment_id",
    "complaint_id",
    "event_id",
}


@pytest.fixture(scope="module")
def env(target_db, keyring_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("access")
    source = root / "source"
    synth.generate(source, SUBSCRIBERS, seed=31)
    mp = pytest.MonkeyPatch()
    mp.setenv("HANDOVER_TARGET_DSN", pg_dsn(target_db))
    mp.setenv("HANDOVER_LAKE_URL", f"file://{root / 'lake'}")
    mp.setenv("HANDOVER_KEYRING_FILE", str(keyring_file))
    mp.delenv("AIRFLOW_CONN_HANDOVER_KEYS", raising=False)
    mp.delenv("AIRFLOW_CONN_HANDOVER_TARGET", raising=False)
    run_id = f"acc_{uuid.uuid4().hex[:6]}"
    out = run_migration(run_id=run_id, source_dir=str(source))
    yield {
        "dsn": pg_dsn(target_db),
        "source": source,
        "run_id": run_id,
        "ctx": out["ctx"],
        "keyring": keyring_file,
        "mp": mp,
    }
    mp.undo()


def _relations(conn: psycopg.Connection, schema: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'v', 'm', 'p') ORDER BY 1",
            (schema,),
        )
    ]


def _refused(conn: psycopg.Connection, statement: str) -> bool:
    try:
        with conn.transaction():
            conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


def _secrets(source) -> set[str]:
    subs = pd.read_csv(source / "subscribers.csv", dtype=str, keep_default_na=False)
    calls = pd.read_csv(source / "call_records.csv", dtype=str, keep_default_na=False)
    found = set(subs["id_number"]) | set(subs["msisdn"]) | set(calls["caller"])
    found |= set(calls["callee"]) | {a for a in subs["address"] if len(a) > 6}
    found |= {n.strip() for n in subs["name"] if len(n.strip()) == 3}
    return {s.strip() for s in found if len(s.strip()) >= 3}


def test_roles_exist_as_group_roles_without_login(env):
    with psycopg.connect(env["dsn"]) as conn:
        rows = dict(
            conn.execute(
                "SELECT rolname, rolcanlogin OR rolsuper OR rolbypassrls "
                "OR rolcreaterole FROM pg_roles WHERE rolname = ANY(%s)",
                (list(access.ROLES),),
            ).fetchall()
        )

    assert rows == dict.fromkeys(access.ROLES, False)


def test_role_ddl_is_idempotent(env):
    with psycopg.connect(env["dsn"]) as conn:
        before = {r: access.readable_columns(conn, r) for r in access.ROLES}
        ledger.ensure_schema(conn)
        ledger.ensure_schema(conn)
        after = {r: access.readable_columns(conn, r) for r in access.ROLES}

    assert after == before


def test_analyst_is_refused_every_base_table(env):
    with psycopg.connect(env["dsn"]) as conn:
        base = _relations(conn, "crm") + _relations(conn, "handover_meta")
        conn.execute("SET ROLE handover_analyst")
        allowed = [t for t in base if not _refused(conn, f"SELECT * FROM {t} LIMIT 1")]
        writes = [
            t for t in _relations(conn, "crm_masked") if not _refused(conn, f"DELETE FROM {t}")
        ]

    assert len(base) >= 14
    assert allowed == []
    assert writes == []


def test_analyst_reaches_no_ciphertext_index_key_id_or_key(env):
    with psycopg.connect(env["dsn"]) as conn:
        columns = access.readable_columns(conn, access.ANALYST)
        relations = access.readable_relations(conn, access.ANALYST)
        types = {
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON "
                "n.oid = c.relnamespace WHERE n.nspname = 'crm_masked' AND a.attnum > 0"
            )
        }
        powers = conn.execute(
            "SELECT r.rolname FROM pg_roles r WHERE r.rolname LIKE 'pg\\_%%' "
            "AND pg_has_role('handover_analyst', r.oid, 'MEMBER')"
        ).fetchall()
        conn.execute("SET ROLE handover_analyst")
        key_file = _refused(conn, f"SELECT pg_read_file('{env['keyring']}')")
        dump = "\n".join(
            r[0] for t in relations for r in conn.execute(f"SELECT t::text FROM {t} t")
        )

    assert relations and all(r.startswith("crm_masked.") for r in relations)
    leaky = [
        c
        for c in columns
        if re.search(
            r"(_enc|_key_id|_bidx)$|\.(msisdn|full_name|address|birth_date|"
            r"id_number|caller_msisdn|callee_msisdn|cell_id)$",
            c,
        )
    ]
    assert leaky == []
    assert "bytea" not in types
    assert powers == []
    assert key_file
    data = json.loads(env["keyring"].read_text())
    ring = Keyring.from_dict(data)
    material = [
        *data["keys"].values(),
        data["hmac_key"],
        ring.hmac_key.hex(),
        *(k.hex() for k in ring.keys.values()),
    ]
    assert len(dump) > 10_000 and [m for m in material if m in dump] == []


def test_analyst_reads_masked_values_only(env):
    secrets = _secrets(env["source"])
    with psycopg.connect(env["dsn"]) as conn:
        conn.execute("SET ROLE handover_analyst")
        customers = conn.execute(
            "SELECT id_number_masked, msisdn_masked, full_name_masked FROM crm_masked.customer"
        ).fetchall()
        calls = conn.execute(
            "SELECT caller_msisdn_masked, callee_msisdn_masked, cell_area "
            "FROM crm_masked.call_record"
        ).fetchall()
        values = []
        for view in access.readable_relations(conn, access.ANALYST):
            cur = conn.execute(f"SELECT * FROM {view}")
            names = [d.name for d in cur.description]
            values += [
                str(v)
                for row in cur
                for n, v in zip(names, row, strict=True)
                if n not in KEY_COLUMNS and v is not None
            ]

    assert len(customers) > 300 and len(calls) > 1000
    assert all(re.fullmatch(r"\d{3}\*{11}[\dX]{4}", i) for i, _, _ in customers)
    assert all(re.fullmatch(r"1\d{2}\*{4}\d{4}", m) for _, m, _ in customers)
    assert all(re.fullmatch(r".\*+", n) for _, _, n in customers)
    assert all(re.fullmatch(r"(\d{3}\*{4}\d{4}|\**)", c or "") for row in calls for c in row[:2])
    assert all(cell.endswith("-*") for _, _, cell in calls if cell)
    blob = "\n".join(values)
    assert [s for s in secrets if s in blob] == []


def test_auditor_reads_the_books_and_no_customer_data(env):
    books = ["ledger", "audit_log", "reconciliation", "quarantine", "exclusion"]
    with psycopg.connect(env["dsn"]) as conn:
        customer_data = _relations(conn, "crm") + _relations(conn, "crm_masked")
        conn.execute("SET ROLE handover_auditor")
        counts = {
            b: conn.execute(f"SELECT count(*) FROM handover_meta.{b}").fetchone()[0] for b in books
        }
        refused = [t for t in customer_data if _refused(conn, f"SELECT 1 FROM {t} LIMIT 1")]
        writes = [
            b for b in books if not _refused(conn, f"DELETE FROM handover_meta.{b} WHERE false")
        ]
        intact, n = ledger.verify_audit_chain(conn)

    assert all(counts[b] > 0 for b in ("ledger", "audit_log", "reconciliation", "exclusion"))
    assert refused == customer_data
    assert writes == []
    assert intact and n == counts["audit_log"]


def test_loader_loads_and_only_appends_to_the_audit_trail(env, monkeypatch):
    monkeypatch.setenv("HANDOVER_TARGET_DSN", env["dsn"] + " options='-c role=handover_loader'")

    stats = pipeline.load_partition(env["ctx"], {"table": "subscribers", "partition": "p00"})

    assert stats["rows"] > 300 and stats["unchanged"] == stats["rows"]
    with psycopg.connect(env["dsn"]) as conn:
        conn.execute("SET ROLE handover_loader")
        with conn.transaction():
            ledger.audit(conn, "loader_check", detail={"ok": True})
        assert _refused(conn, "UPDATE handover_meta.audit_log SET actor = 'x'")
        assert _refused(conn, "DELETE FROM handover_meta.audit_log")
        assert _refused(conn, "SELECT 1 FROM crm_masked.customer")
        assert not _refused(conn, "UPDATE crm.customer SET city = city WHERE false")
        assert ledger.verify_audit_chain(conn).intact


def test_auditor_sees_who_submitted_a_subject_request_but_not_its_seal(env):
    """handover_meta.subject_intake: the auditor reads the request's fields and its
    submitter, never the sealed identifier (a column-level grant in lifecycle.sql)."""
    from handover.lifecycle import subject
    from handover.lifecycle.backup import ensure_lifecycle_schema

    subject.submit_request("REQ-acc-1", "access", "customer_id", "C00000001")
    with psycopg.connect(env["dsn"]) as conn:
        ensure_lifecycle_schema(conn)  # roles.sql, then lifecycle.sql's grants, as a run does
        conn.commit()
        conn.execute("SET ROLE handover_auditor")
        seen = conn.execute(
            "SELECT request_type, submitted_by, cleared_at FROM "
            "handover_meta.subject_intake WHERE request_id = 'REQ-acc-1'"
        ).fetchone()
        sealed_refused = _refused(conn, "SELECT sealed FROM handover_meta.subject_intake")
        all_refused = _refused(conn, "SELECT * FROM handover_meta.subject_intake")
    assert seen[0] == "access" and seen[1] and seen[2] is None
    assert sealed_refused and all_refused
