"""One person, one customer across systems: a target that already holds the acquirer's
own customers (handover_synth.acquirer), an acquired export in which some of them are
customers too (under the export's ids). Matched by the blind index of the resident ID,
never in clear; merged into the acquirer's record, children following it; the person map
gives every record one person; a rerun changes no person id and no target row; an erasure
by one identifier removes the person in both systems' records."""

from __future__ import annotations

import json
import uuid

import pandas as pd
import psycopg
import pytest

from handover.flows import subject_request
from handover.flows.runner import run_migration
from handover.lifecycle import subject
from handover_synth import acquirer as synth_acquirer
from handover_synth import legacy_bss as synth
from tests.conftest import LogCapture, create_database, drop_database, pg_dsn, point_at
from tests.integration.test_retention import search_everywhere

pytestmark = pytest.mark.integration
CHILDREN = {
    "call_records": ("call_record", "cdr_id"),
    "payments": ("payment", "payment_id"),
    "data_sessions": ("data_session", "session_id"),
    "complaints": ("complaint", "complaint_id"),
    "consents": ("consent", "consent_id"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory, keyring_file):
    from handover.protection.fields import Keyring

    root = tmp_path_factory.mktemp("identity")
    src = root / "export"
    synth.generate(src, 300, seed=19)
    db = create_database("handover_identity")
    mp = pytest.MonkeyPatch()
    point_at(mp, pg_dsn(db), root / "lake", keyring_file)
    try:
        seeded = synth_acquirer.seed(pg_dsn(db), src, root, share=0.1, others=30)
        with LogCapture() as captured:
            run_id = f"id_{uuid.uuid4().hex[:6]}"
            run_migration(run_id=run_id, source_dir=str(src))
        ring = Keyring.from_dict(json.loads(keyring_file.read_text()))
        yield {
            "src": src,
            "dsn": pg_dsn(db),
            "run_id": run_id,
            "root": root,
            "seeded": seeded,
            "log": captured.text,
            "ring": ring,
            "lake": root / "lake",
            "truth": pd.read_csv(root / synth_acquirer.TRUTH, dtype=str, keep_default_na=False),
        }
    finally:
        mp.undo()
        drop_database(db)


def _matches(world) -> dict[str, str]:
    t = world["truth"]
    return dict(
        zip(
            t.loc[t.acquired_key != "", "acquired_key"],
            t.loc[t.acquired_key != "", "acquirer_key"],
            strict=True,
        )
    )


def test_matches_are_exactly_the_truth_and_merged_into_the_acquirers_record(world):
    want = _matches(world)
    assert len(want) >= 10
    with psycopg.connect(world["dsn"]) as conn:
        got = dict(
            conn.execute(
                "SELECT merged_key, survivor_key FROM handover_meta.merge_map "
                "WHERE run_id = %s AND rule = 'EXISTING_CUSTOMER'",
                (world["run_id"],),
            ).fetchall()
        )
        loaded = {r[0] for r in conn.execute("SELECT customer_id FROM crm.customer")}
        twice = conn.execute(
            "SELECT count(*) FROM (SELECT id_number_bidx FROM crm.customer "
            "GROUP BY 1 HAVING count(*) > 1) x"
        ).fetchone()[0]
    assert got == want  # precision and recall 100 %
    assert not (set(want) & loaded)  # no person with two customer records
    assert set(want.values()) <= loaded and twice == 0
    assert set(world["truth"].acquirer_key) <= loaded  # the acquirer's records all stay


def test_children_of_a_merged_customer_follow_the_acquirers_record(world):
    want = _matches(world)
    moved = 0
    with psycopg.connect(world["dsn"]) as conn:
        for source, (target, key) in CHILDREN.items():
            rows = pd.read_csv(world["src"] / f"{source}.csv", dtype=str, keep_default_na=False)
            rows = rows[rows["cust_id"].str.strip().str.upper().isin(want)]
            owners = dict(
                conn.execute(
                    f"SELECT {key}, customer_id FROM crm.{target} WHERE {key} = ANY(%s)",
                    (rows[key].str.strip().tolist(),),
                ).fetchall()
            )
            for k, cust in zip(
                rows[key].str.strip(), rows["cust_id"].str.strip().str.upper(), strict=True
            ):
                if k in owners:
                    assert owners[k] == want[cust], (source, k)
                    moved += 1
    assert moved >= 20


def test_the_person_map_gives_both_records_one_person(world):
    want = _matches(world)
    with psycopg.connect(world["dsn"]) as conn:
        rows = conn.execute(
            "SELECT source_system, source_key, person_id, target_customer_id, "
            "decision FROM handover_meta.person_map"
        ).fetchall()
    by = {(s, k): (p, t, d) for s, k, p, t, d in rows}
    for acquired, acquirer in want.items():
        mine, theirs = by[("legacy_bss", acquired)], by[("acquirer", acquirer)]
        assert mine[0] == theirs[0] and mine[1] == acquirer and mine[2] == "merged_existing"
    persons = {p for p, _, _ in by.values()}
    assert len(persons) == len({t for _, t, _ in by.values()})  # one target record a person


def test_every_table_balances_with_the_acquirers_rows_in_the_target(world):
    with psycopg.connect(world["dsn"]) as conn:
        rows = conn.execute(
            "SELECT table_name, source_rows, loaded, merged, quarantined, "
            "excluded, balanced FROM handover_meta.reconciliation WHERE "
            "run_id = %s",
            (world["run_id"],),
        ).fetchall()
    assert len(rows) == 7
    for t, n, loaded, merged, q, x, ok in rows:
        assert n == loaded + merged + q + x and ok, t
    subs = next(r for r in rows if r[0] == "subscribers")
    assert subs[3] >= len(_matches(world))


def test_no_planted_id_or_phone_in_logs_books_or_reports(world):
    subs = pd.read_csv(world["src"] / "subscribers.csv", dtype=str, keep_default_na=False)
    want = _matches(world)
    mine = subs[subs["cust_id"].str.strip().str.upper().isin(want)]
    secrets = set(mine["id_number"].str.strip()) | set(mine["msisdn"].str.strip())
    with psycopg.connect(world["dsn"]) as conn:  # the acquirer's own numbers too
        secrets |= {
            r[0]
            for r in conn.execute("SELECT msisdn FROM crm.customer WHERE customer_id LIKE 'K88-%%'")
        }
    assert len(secrets) > 2 * len(want)
    # reports, Data Docs and every validation result the gates stored
    report = b"".join(
        p.read_bytes()
        for p in world["lake"].rglob("*")
        if p.is_file() and ("reports" in p.parts or "docs" in p.parts or p.suffix == ".json")
    )
    assert b"Expectation" in report or b"expectation" in report
    with psycopg.connect(world["dsn"]) as conn:
        books = json.dumps(
            [
                conn.execute(f"SELECT * FROM handover_meta.{t}").fetchall()
                for t in (
                    "person_map",
                    "merge_map",
                    "audit_log",
                    "gate_result",
                    "ledger",
                    "identity_review",
                    "quarantine",
                )
            ],
            default=str,
        )
    for s in secrets:
        assert s not in world["log"] and s.encode() not in report and s not in books


def test_a_rerun_changes_no_person_id_and_no_target_row(world):
    def state():
        with psycopg.connect(world["dsn"]) as conn:
            persons = sorted(
                conn.execute(
                    "SELECT source_system, source_key, person_id, "
                    "target_customer_id FROM handover_meta.person_map"
                ).fetchall()
            )
            customers = conn.execute(
                "SELECT md5(string_agg(c::text, '|' ORDER BY "
                "customer_id)) FROM (SELECT customer_id, full_name, "
                "msisdn, status FROM crm.customer) c"
            ).fetchone()[0]
            calls = conn.execute(
                "SELECT md5(string_agg(cdr_id || customer_id, '|' ORDER BY "
                "cdr_id)) FROM crm.call_record"
            ).fetchone()[0]
        return persons, customers, calls

    before = state()
    run_migration(run_id=f"id_{uuid.uuid4().hex[:6]}", source_dir=str(world["src"]))
    assert state() == before


def test_the_report_counts_persons_by_decision(world):
    from handover.storage.lake import safe_run_id

    report = json.loads(
        (
            world["lake"] / "runs" / safe_run_id(world["run_id"]) / "reports" / "report.json"
        ).read_text()
    )
    assert report["persons"]["merged_existing"] == len(_matches(world))
    assert report["persons"]["new"] > 100
    assert report["merges"]["subscribers"]["EXISTING_CUSTOMER"] == len(_matches(world))


def test_a_consent_withdrawn_in_either_system_holds_for_the_merged_customer(world):
    t = world["truth"]
    withdrawn = set(t.loc[t.marketing_withdrawn == "1", "acquirer_key"])
    assert withdrawn
    with psycopg.connect(world["dsn"]) as conn:
        eff = {
            c: (g, n, x)
            for c, g, n, x in conn.execute(
                "SELECT customer_id, granted, records, conflicting FROM crm.consent_effective "
                "WHERE purpose = 'marketing' AND customer_id = ANY(%s)",
                (sorted(withdrawn),),
            )
        }
        conflicts = conn.execute(
            "SELECT count(*) FROM crm.consent_effective WHERE conflicting"
        ).fetchone()[0]
    assert set(eff) == withdrawn and all(g is False for g, _, _ in eff.values())
    # where the export granted marketing, the two systems' records disagree: counted
    assert conflicts == sum(1 for _, n, x in eff.values() if x) >= 1
    assert any(n == 2 for _, n, _ in eff.values())


def test_conflicting_fields_wait_in_a_review_queue_that_a_person_resolves(world):
    """The acquirer's record keeps its value; where the export's said otherwise (another
    phone number, the name written another way) an entry waits for a person: field
    names only, never a value; resolving one is audited and a rerun does not reopen it."""
    from handover.stages.identity_survivorship import resolve_review

    t = world["truth"]
    want = {
        (r.acquired_key, f)
        for r in t.itertuples()
        if r.acquired_key
        for f in r.conflicts.split("|")
        if f in ("msisdn", "full_name")
    }
    assert any(f == "msisdn" for _, f in want) and any(f == "full_name" for _, f in want)
    with psycopg.connect(world["dsn"]) as conn:
        rows = conn.execute(
            "SELECT id, source_key, field, status FROM "
            "handover_meta.identity_review WHERE source_system = 'legacy_bss'"
        ).fetchall()
    got = {(k, f) for _, k, f, _ in rows if f in ("msisdn", "full_name")}
    assert got == want
    entry = next(i for i, _, f, s in rows if f == "msisdn" and s == "open")
    out = resolve_review(entry, "keep-target", by="data-steward")
    assert out["decision"] == "keep-target"
    with pytest.raises(ValueError, match="no open entry"):
        resolve_review(entry, "correct", by="data-steward")
    with psycopg.connect(world["dsn"]) as conn:
        audit = conn.execute(
            "SELECT actor, detail FROM handover_meta.audit_log WHERE action = "
            "'identity_review_resolved'"
        ).fetchall()
        status = conn.execute(
            "SELECT status FROM handover_meta.identity_review WHERE id = %s", (entry,)
        ).fetchone()[0]
    assert audit and audit[-1][0] == "data-steward" and audit[-1][1]["field"] == "msisdn"
    assert status == "keep-target"


def test_the_review_cli_lists_entries_without_values(world, capsys):
    from handover.ops import cli

    assert cli.main(["review", "--all"]) == 0
    out = capsys.readouterr().out
    assert "full_name" in out and "msisdn" in out and "keep-target" in out
    subs = pd.read_csv(world["src"] / "subscribers.csv", dtype=str, keep_default_na=False)
    assert not any(v.strip() and v.strip() in out for v in subs["msisdn"])


def test_an_erasure_by_the_old_systems_id_removes_the_person_everywhere(world):
    acquired, acquirer = sorted(_matches(world).items())[0]
    with psycopg.connect(world["dsn"]) as conn:
        keys = {
            r[0]
            for t, k in (("call_record", "cdr_id"), ("payment", "payment_id"))
            for r in conn.execute(f"SELECT {k} FROM crm.{t} WHERE customer_id = %s", (acquirer,))
        }
    assert keys
    form = {
        "request_id": f"REQ-{uuid.uuid4().hex[:8]}",
        "request_type": "erasure",
        "identifier_type": "customer_id",
        "identifier": acquired,
        "field": "",
        "new_value": "",
    }
    conf = subject.submit_request(**form)["conf"]
    out = subject_request.handle_request(conf)
    assert out["verified"]["remaining_in_lake"] == 0
    hits = search_everywhere(
        world["dsn"], world["lake"], world["ring"], keys | {acquired, acquirer}
    )
    assert hits["db"] == [] and hits["lake"] == [], hits


def test_an_erasure_by_the_first_generation_id_reaches_the_acquirers_record(world):
    """Given in the 15-digit form an old system wrote, the ID still finds the person (its
    18-digit form's blind index) in the acquirer's record and every record merged in."""
    subs = pd.read_csv(world["src"] / "subscribers.csv", dtype=str, keep_default_na=False)
    subs["cust_id"] = subs["cust_id"].str.strip().str.upper()
    pairs = sorted(_matches(world).items())[1:]
    acquired, acquirer = next(
        (a, b)
        for a, b in pairs
        if subs.set_index("cust_id").loc[a, "id_number"].strip()[6:8] == "19"
    )
    rid = subs.set_index("cust_id").loc[acquired, "id_number"].strip()
    form = {
        "request_id": f"REQ-{uuid.uuid4().hex[:8]}",
        "request_type": "erasure",
        "identifier_type": "resident_id",
        "identifier": rid[:6] + rid[8:17],
        "field": "",
        "new_value": "",
    }
    out = subject_request.handle_request(subject.submit_request(**form)["conf"])
    assert out["verified"]["remaining_in_lake"] == 0
    hits = search_everywhere(
        world["dsn"], world["lake"], world["ring"], {acquired, acquirer}, substrings={rid}
    )
    assert hits["db"] == [] and hits["lake"] == [], hits
