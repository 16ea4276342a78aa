"""The audit trail is tamper-evident: an edit made behind the database's back is found.

The guard trigger refuses UPDATE and DELETE; a superuser can still switch it off. These
tests do exactly that, change or remove one entry, switch it back on, and expect both
ledger.verify_audit_chain and `python -m handover.ops.cli verify-audit` to name the entry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest

from handover.db import ledger
from tests.conftest import ROOT, create_database, drop_database, pg_dsn

pytestmark = pytest.mark.integration


@pytest.fixture
def trail():
    """A fresh target with six audit entries; yields (dsn, entry ids)."""
    name = create_database("handover_audit")
    dsn = pg_dsn(name)
    try:
        with psycopg.connect(dsn) as conn:
            ledger.ensure_schema(conn)
            with conn.transaction():
                for i in range(6):
                    ledger.audit(conn, "step", run_id="r1", detail={"n": i, "rows": 10 * i})
            ids = [r[0] for r in conn.execute("SELECT id FROM handover_meta.audit_log ORDER BY id")]
        yield dsn, ids
    finally:
        drop_database(name)


def _behind_the_guard(dsn: str, statement: str, params: tuple) -> None:
    """As superuser: disable the append-only trigger, run `statement`, re-enable it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE handover_meta.audit_log DISABLE TRIGGER audit_refuse")
        try:
            conn.execute(statement, params)
        finally:
            conn.execute("ALTER TABLE handover_meta.audit_log ENABLE TRIGGER audit_refuse")


def _cli(dsn: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HANDOVER_TARGET_DSN": dsn, "PYTHONPATH": str(ROOT / "include")}
    return subprocess.run(
        [sys.executable, "-m", "handover.ops.cli", "verify-audit"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_intact_trail_verifies(trail):
    dsn, ids = trail

    with psycopg.connect(dsn) as conn:
        check = ledger.verify_audit_chain(conn)
    intact, n = check  # the (bool, int) shape callers already unpack
    cli = _cli(dsn)

    assert (intact, n, check.first_bad_id, check.broken) == (True, 6, None, 0)
    assert cli.returncode == 0 and "intact: 6 entries" in cli.stdout


def test_chain_does_not_depend_on_the_session_time_zone(trail):
    dsn, _ = trail
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TimeZone = 'Asia/Shanghai'")
        ledger.audit(conn, "step", run_id="r1", detail={"from": "shanghai"})
        conn.commit()
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TimeZone = 'America/Los_Angeles'")
        check = ledger.verify_audit_chain(conn)
    assert (check.intact, check.broken) == (True, 0)


def test_the_guard_refuses_edits_without_superuser_tampering(trail):
    dsn, ids = trail

    with (
        psycopg.connect(dsn) as conn,
        pytest.raises(psycopg.errors.RaiseException, match="append-only"),
    ):
        conn.execute("UPDATE handover_meta.audit_log SET detail = '{}' WHERE id = %s", (ids[2],))


def test_edited_detail_is_reported_with_its_entry_id(trail):
    dsn, ids = trail
    victim = ids[3]

    _behind_the_guard(
        dsn,
        "UPDATE handover_meta.audit_log SET detail = %s WHERE id = %s",
        (json.dumps({"n": 3, "rows": 0}), victim),
    )
    with psycopg.connect(dsn) as conn:
        check = ledger.verify_audit_chain(conn)
        guard_on = conn.execute(
            "SELECT tgenabled FROM pg_trigger WHERE tgname = 'audit_refuse'"
        ).fetchone()[0]
    cli = _cli(dsn)

    assert guard_on == "O"
    assert (check.intact, check.first_bad_id, check.broken) == (False, victim, 1)
    assert "content" in check.reason
    assert cli.returncode == 1
    assert f"BROKEN at entry id {victim}" in cli.stdout


def test_edit_that_also_rewrites_the_hash_breaks_the_next_link(trail):
    dsn, ids = trail
    victim = ids[1]

    # A careful forger recomputes the edited entry's own hash; the next entry still
    # points at the old one.
    _behind_the_guard(
        dsn,
        'UPDATE handover_meta.audit_log SET detail = \'{"n": 1, "rows": 0}\', '
        "hash = encode(sha256(convert_to(prev_hash || '|' || "
        "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') || '|' || "
        "coalesce(run_id, '') || '|' || actor || '|' || action || '|' || "
        "'{\"n\": 1, \"rows\": 0}'::jsonb::text, 'UTF8')), 'hex') WHERE id = %s",
        (victim,),
    )
    with psycopg.connect(dsn) as conn:
        check = ledger.verify_audit_chain(conn)

    assert (check.intact, check.first_bad_id) == (False, ids[2])
    assert "link" in check.reason


def test_deleted_entry_is_reported_at_the_next_one(trail):
    dsn, ids = trail

    _behind_the_guard(dsn, "DELETE FROM handover_meta.audit_log WHERE id = %s", (ids[2],))
    with psycopg.connect(dsn) as conn:
        check = ledger.verify_audit_chain(conn)
    cli = _cli(dsn)

    assert (check.intact, check.entries, check.first_bad_id) == (False, 5, ids[3])
    assert cli.returncode == 1 and f"BROKEN at entry id {ids[3]}" in cli.stdout


def test_auditor_role_can_verify(trail):
    dsn, ids = trail

    with psycopg.connect(dsn) as conn:
        conn.execute("SET ROLE handover_auditor")
        check = ledger.verify_audit_chain(conn)

    assert check.intact and check.entries == 6


def test_concurrent_writers_keep_one_unbroken_chain(trail):
    """Task listeners of parallel workers append at the same moments: ids must follow the
    chain's order (the trigger draws the id inside its lock), or verification breaks."""
    import threading

    dsn, _ = trail
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                for i in range(40):
                    ledger.audit(conn, "task_finished", run_id=f"w{n}", detail={"i": i})
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with psycopg.connect(dsn) as conn:
        check = ledger.verify_audit_chain(conn)
    intact, checked = check
    assert intact, (check.first_bad_id, check.reason, check.broken)
    assert checked == 6 + 8 * 40


def test_task_listener_keeps_one_connection_and_survives_losing_it(trail):
    """The audit listener writes every event of a process on one connection: a dropped
    connection is replaced on the next event (which is kept), and a forked process opens
    its own instead of writing on its parent's."""
    import multiprocessing

    from handover_ui import listener

    dsn, _ = trail

    def event(state: str) -> dict:
        return {
            "dag_id": "customer_migration",
            "task_id": "load",
            "map_index": 0,
            "run_id": "r_listener",
            "try_number": 1,
            "state": state,
        }

    def backend() -> int:
        return listener._held["conn"].info.backend_pid

    try:
        assert listener.write_event(event("running"), dsn)
        first = backend()
        assert listener.write_event(event("success"), dsn)
        assert backend() == first  # no new connection for the second event
        with psycopg.connect(dsn, autocommit=True) as admin:  # the server drops it
            admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        assert listener.write_event(event("running"), dsn)  # replaced, and kept
        assert backend() != first
        child = multiprocessing.get_context("fork").Process(
            target=lambda: sys.exit(
                0 if listener.write_event(event("failed"), dsn) and backend() != parent else 1
            )
        )
        parent = backend()
        child.start()
        child.join(60)
        assert child.exitcode == 0
        assert listener.write_event(event("success"), dsn)  # the parent's still works
        assert backend() == parent
    finally:
        listener._forget()
    with psycopg.connect(dsn) as conn:
        actions = [
            r[0]
            for r in conn.execute(
                "SELECT action FROM handover_meta.audit_log WHERE run_id = 'r_listener' ORDER BY id"
            )
        ]
        intact, _ = ledger.verify_audit_chain(conn)
    assert actions == [
        "task_running",
        "task_success",
        "task_running",
        "task_failed",
        "task_success",
    ]
    assert intact
