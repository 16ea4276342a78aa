"""Field-level survivorship and the second match rule (policy `identity`).

The acquirer's CRM holds persons of the export with other values (handover_synth.acquirer):
per field the policy says who wins: `full_name: target`, `address: source`, `msisdn:
newest` (the record with the newer version wins), and the acquirer's verified phone
numbers (`verified: {msisdn: msisdn_verified}`) are never overwritten. The export's value
travels to the target through cleanse, map, protect and the gates like any loaded row.
Customers of the export without a resident ID are matched by the second rule (name + birth
date), merged only where exactly one target customer has them. A rerun changes nothing.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import uuid

import pandas as pd
import psycopg
import pytest
import yaml

from handover.config.loader import CONFIG_ROOT, ConfigError, load_config
from handover.flows.runner import run_migration
from handover_synth import acquirer as synth_acquirer
from handover_synth import legacy_bss as synth
from tests.conftest import LogCapture, create_database, drop_database, pg_dsn, point_at

pytestmark = pytest.mark.integration
POLICY = {
    "match": ["resident_id", "name_birth"],
    "on_match": "merge",
    "survivorship": {
        "default": "review",
        "full_name": "target",
        "address": "source",
        "msisdn": "newest",
    },
    "verified": {"msisdn": "msisdn_verified"},
    "target_retention_months": {"consumption": 12},
}


def _config(root, identity: dict):
    folder = root / "legacy_surv"
    shutil.copytree(CONFIG_ROOT / "legacy_bss", folder)
    doc = yaml.safe_load((folder / "policy.yaml").read_text(encoding="utf-8"))
    doc["identity"] = identity
    (folder / "policy.yaml").write_text(
        yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8"
    )
    return folder


def _blank_ids(src, keys: set[str]) -> None:
    """The export loses the resident ID of these customers (a legacy form filled on paper);
    the manifest's digest follows, as the legacy system would write it."""
    path = src / "subscribers.csv"
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    head = rows[0]
    k, i = head.index("cust_id"), head.index("id_number")
    for r in rows[1:]:
        if r[k].strip().upper() in keys:
            r[i] = ""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    manifest = json.loads((src / "export_manifest.json").read_text(encoding="utf-8"))
    manifest["tables"]["subscribers"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (src / "export_manifest.json").write_text(
        json.dumps(manifest, ensure_ascii=False), encoding="utf-8"
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory, keyring_file):
    from handover.db import ledger
    from handover.protection.fields import Keyring

    root = tmp_path_factory.mktemp("survivorship")
    src = root / "export"
    synth.generate(src, 300, seed=29)
    db = create_database("handover_surv")
    mp = pytest.MonkeyPatch()
    point_at(mp, pg_dsn(db), root / "lake", keyring_file)
    try:
        with psycopg.connect(pg_dsn(db)) as conn:  # an acquirer that verifies phone numbers
            ledger.ensure_schema(conn)
            conn.execute(
                "ALTER TABLE crm.customer ADD COLUMN msisdn_verified boolean NOT NULL DEFAULT false"
            )
        synth_acquirer.seed(pg_dsn(db), src, root, share=0.2, others=10)
        truth = pd.read_csv(root / synth_acquirer.TRUTH, dtype=str, keep_default_na=False)
        pairs = truth[truth.acquired_key != ""].reset_index(drop=True)
        subs = pd.read_csv(src / "subscribers.csv", dtype=str, keep_default_na=False)
        subs["key"] = subs["cust_id"].str.strip().str.upper()
        subs = subs.set_index("key")
        # the target's record dates: even rows older than any export record, odd newer;
        # every fourth verified
        older = set(pairs.acquirer_key[::2])
        verified = set(pairs.acquirer_key[::4])
        # two persons lose their ID in the export: one the acquirer holds under the same
        # name (merged by name + birth date), one whose name and birth date two target
        # customers share (left quarantined)
        plain = pairs[~pairs.conflicts.str.contains("full_name")]
        by_name = plain.acquired_key.iloc[0]
        twice = plain.acquired_key.iloc[1]
        twin = subs.loc[twice]
        with psycopg.connect(pg_dsn(db)) as conn:
            conn.execute(
                "UPDATE crm.customer SET source_updated_at = CASE WHEN customer_id = "
                "ANY(%s) THEN timestamp '2000-01-01' ELSE timestamp '2099-01-01' END, "
                "msisdn_verified = customer_id = ANY(%s) WHERE customer_id LIKE "
                "'K88-%%'",
                (sorted(older), sorted(verified)),
            )
            conn.execute(
                "INSERT INTO crm.customer (customer_id, full_name, id_number_enc, "
                "id_number_key_id, id_number_bidx, id_number_masked, gender, birth_date, "
                "msisdn, msisdn_bidx, msisdn_masked, opened_on, status, source_updated_at) "
                "SELECT 'K88-TWIN', %s, id_number_enc, id_number_key_id, 'twin-bidx', "
                "id_number_masked, gender, birth_date, msisdn, msisdn_bidx, msisdn_masked, "
                "opened_on, status, source_updated_at FROM crm.customer WHERE customer_id = %s",
                (twin["name"].strip(), pairs.set_index("acquired_key").acquirer_key[twice]),
            )
            conn.execute(
                "INSERT INTO handover_meta.person_map (source_system, source_key, "
                "person_id, target_customer_id, decision, rule) VALUES ('acquirer', "
                "'K88-TWIN', 'P-twin', 'K88-TWIN', 'target', 'seed')"
            )
        # a person who granted behavioural analysis in the export withdrew it in the
        # acquirer's system: the withdrawal holds, their browsing rows do not move
        consents = pd.read_csv(src / "consents.csv", dtype=str, keep_default_na=False)
        browsing = pd.read_csv(src / "browsing_events.csv", dtype=str, keep_default_na=False)
        granted = set(
            consents.loc[
                (consents.purpose.str.strip() == "behavioural")
                & (consents.granted.str.strip() == "1"),
                "cust_id",
            ]
            .str.strip()
            .str.upper()
        )
        browsers = set(browsing.cust_id.str.strip().str.upper())
        acq = pairs.set_index("acquired_key").acquirer_key
        withdrew = sorted(
            k
            for k in pairs.acquired_key
            if k in granted and k in browsers and k not in (by_name, twice)
        )[0]
        with psycopg.connect(pg_dsn(db)) as conn:
            conn.execute(
                "INSERT INTO crm.consent (consent_id, customer_id, purpose, granted, "
                "granted_at) VALUES ('KC-BEH', %s, 'behavioural', false, "
                "'2024-05-01')",
                (acq[withdrew],),
            )
        _blank_ids(src, {by_name, twice})
        config = _config(root, POLICY)
        with LogCapture() as captured:
            run_id = f"surv_{uuid.uuid4().hex[:6]}"
            run_migration(run_id=run_id, source_dir=str(src), system=str(config))
        yield {
            "src": src,
            "dsn": pg_dsn(db),
            "run_id": run_id,
            "root": root,
            "subs": subs,
            "pairs": pairs,
            "older": older,
            "verified": verified,
            "by_name": by_name,
            "twice": twice,
            "withdrew": withdrew,
            "browsing": browsing,
            "config": config,
            "log": captured.text,
            "ring": Keyring.from_dict(json.loads(keyring_file.read_text())),
            "lake": root / "lake",
        }
    finally:
        mp.undo()
        drop_database(db)


def _target(world) -> dict[str, dict]:
    with psycopg.connect(world["dsn"]) as conn:
        cur = conn.execute(
            "SELECT customer_id, full_name, msisdn, msisdn_bidx, address FROM crm.customer"
        )
        names = [d.name for d in cur.description]
        return {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}


def _entries(world) -> dict[tuple[str, str], tuple[str, str]]:
    with psycopg.connect(world["dsn"]) as conn:
        return {
            (k, f): (r, s)
            for k, f, r, s in conn.execute(
                "SELECT source_key, field, rule, status FROM handover_meta.identity_review WHERE "
                "source_system = 'legacy_bss'"
            ).fetchall()
        }


def test_each_field_is_decided_by_its_rule(world):
    target, entries = _target(world), _entries(world)
    seen = {"applied_msisdn": 0, "kept_newer": 0, "verified": 0, "address": 0, "name": 0}
    for r in world["pairs"].itertuples():
        if r.acquired_key in (world["by_name"], world["twice"]):
            continue
        mine, theirs = world["subs"].loc[r.acquired_key], target[r.acquirer_key]
        for field in filter(None, r.conflicts.split("|")):
            rule, status = entries[(r.acquired_key, field)]
            if field == "full_name":  # the target wins, decided: nothing waits
                assert (rule, status) == ("target", "kept")
                assert theirs["full_name"] != mine["name"].strip()
                seen["name"] += 1
            elif field == "address":  # the export wins
                assert (rule, status) == ("source", "applied")
                assert theirs["address"] == mine["address"].strip()
                seen["address"] += 1
            elif r.acquirer_key in world["verified"] and r.acquirer_key in world["older"]:
                assert (rule, status) == ("verified_kept", "kept")
                assert theirs["msisdn"] != mine["msisdn"].strip()
                seen["verified"] += 1
            elif r.acquirer_key in world["older"]:  # the export's record is newer
                assert (rule, status) == ("newest", "applied")
                assert theirs["msisdn"] == mine["msisdn"].strip()
                seen["applied_msisdn"] += 1
            else:  # the target's record is newer
                assert (rule, status) == ("newest", "kept")
                assert theirs["msisdn"] != mine["msisdn"].strip()
                seen["kept_newer"] += 1
    assert all(n >= 1 for n in seen.values()), seen


def test_an_adopted_phone_number_is_protected_like_a_loaded_one(world):
    """The blind index and mask of a phone number the export won are the migration's."""
    from handover.protection.fields import blind_index, field_domain, mask_msisdn

    target = _target(world)
    applied = [
        k for k, (rule, st) in _entries(world).items() if k[1] == "msisdn" and st == "applied"
    ]
    assert applied
    acq = world["pairs"].set_index("acquired_key").acquirer_key
    with psycopg.connect(world["dsn"]) as conn:
        for key, _ in applied:
            value = world["subs"].loc[key]["msisdn"].strip()
            row = conn.execute(
                "SELECT msisdn_bidx, msisdn_masked FROM crm.customer WHERE customer_id = %s",
                (acq[key],),
            ).fetchone()
            assert (
                row[0] == blind_index([value], world["ring"], field_domain("customer", "msisdn"))[0]
            )
            assert row[1] == mask_msisdn(value) and target[acq[key]]["msisdn"] == value


def test_the_gates_saw_the_adopted_records(world):
    with psycopg.connect(world["dsn"]) as conn:
        rows = dict(
            conn.execute(
                "SELECT gate, sum(rows) FROM handover_meta.gate_result WHERE run_id = %s AND "
                "table_name = 'subscribers' GROUP BY 1",
                (world["run_id"],),
            ).fetchall()
        )
        loaded = conn.execute(
            "SELECT sum(rows_out) FROM handover_meta.ledger WHERE run_id = %s "
            "AND table_name = 'subscribers' AND stage = 'map'",
            (world["run_id"],),
        ).fetchone()[0]
        adopted = conn.execute(
            "SELECT count(DISTINCT source_key) FROM "
            "handover_meta.identity_review WHERE status = 'applied'"
        ).fetchone()[0]
    assert adopted >= 2
    assert rows["quality"] == rows["contract"] == loaded + adopted


def test_a_customer_without_an_id_is_merged_by_name_and_birth_date(world):
    acq = world["pairs"].set_index("acquired_key").acquirer_key
    with psycopg.connect(world["dsn"]) as conn:
        merged = dict(
            conn.execute(
                "SELECT merged_key, survivor_key FROM handover_meta.merge_map "
                "WHERE rule = 'EXISTING_NAME_BIRTH'"
            ).fetchall()
        )
        person = dict(
            conn.execute(
                "SELECT source_system || ':' || source_key, person_id FROM handover_meta.person_map"
            ).fetchall()
        )
        rule = conn.execute(
            "SELECT rule, decision FROM handover_meta.person_map WHERE source_key = %s",
            (world["by_name"],),
        ).fetchone()
        quarantined = dict(
            conn.execute(
                "SELECT record_key, reason FROM handover_meta.quarantine WHERE run_id = %s AND "
                "table_name = 'subscribers'",
                (world["run_id"],),
            ).fetchall()
        )
        owners = {
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT customer_id FROM crm.call_record WHERE cdr_id = ANY(%s)",
                (
                    pd.read_csv(world["src"] / "call_records.csv", dtype=str, keep_default_na=False)
                    .loc[lambda f: f.cust_id.str.strip().str.upper() == world["by_name"], "cdr_id"]
                    .str.strip()
                    .tolist(),
                ),
            ).fetchall()
        }
    assert merged == {world["by_name"]: acq[world["by_name"]]}
    assert rule == ("name_birth", "merged_existing")
    assert person[f"legacy_bss:{world['by_name']}"] == person[f"acquirer:{acq[world['by_name']]}"]
    assert owners <= {acq[world["by_name"]]}
    # two target customers have the other one's name and birth date: nobody guesses
    assert quarantined.get(world["twice"]) == "MISSING_FIELD"
    assert world["by_name"] not in quarantined


def test_the_books_balance_and_the_report_counts_rules(world):
    from handover.storage.lake import safe_run_id

    with psycopg.connect(world["dsn"]) as conn:
        rows = conn.execute(
            "SELECT table_name, source_rows, loaded, merged, quarantined, "
            "excluded, balanced FROM handover_meta.reconciliation WHERE "
            "run_id = %s",
            (world["run_id"],),
        ).fetchall()
    assert rows and all(n == lo + m + q + x and ok for _, n, lo, m, q, x, ok in rows)
    report = json.loads(
        (
            world["lake"] / "runs" / safe_run_id(world["run_id"]) / "reports" / "report.json"
        ).read_text()
    )
    review = report["field_conflicts"]
    assert review["address"]["source"]["applied"] >= 1
    assert review["full_name"]["target"]["kept"] >= 1
    assert review["msisdn"]["newest"]["applied"] >= 1


def test_no_planted_value_in_logs_books_or_the_report(world):
    pairs = world["pairs"]
    mine = world["subs"].loc[pairs.acquired_key]
    secrets = {v.strip() for v in mine["msisdn"]} | {
        v.strip() for v in mine["id_number"] if v.strip()
    }
    secrets |= {v.strip() for v in mine["address"] if len(v.strip()) > 6}
    report = b"".join(
        p.read_bytes()
        for p in world["lake"].rglob("*")
        if p.is_file() and ("reports" in p.parts or "docs" in p.parts)
    )
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


def test_a_rerun_changes_no_target_row_and_no_decision(world):
    def state():
        with psycopg.connect(world["dsn"]) as conn:
            return (
                conn.execute(
                    "SELECT md5(string_agg(c::text, '|' ORDER BY customer_id)) FROM crm.customer c"
                ).fetchone()[0],
                sorted(
                    conn.execute(
                        "SELECT source_system, source_key, person_id, "
                        "target_customer_id FROM handover_meta.person_map"
                    )
                ),
                _entries(world),
            )

    before = state()
    run_migration(
        run_id=f"surv_{uuid.uuid4().hex[:6]}",
        source_dir=str(world["src"]),
        system=str(world["config"]),
    )
    assert state() == before


def test_policy_names_only_fields_a_merge_compares(tmp_path):
    bad = _config(tmp_path, {"survivorship": {"msisnd": "source"}, "verified": {"gender": "x"}})
    with pytest.raises(ConfigError) as err:
        load_config(str(bad))
    text = str(err.value)
    assert "identity.survivorship.msisnd" in text and "did you mean 'msisdn'" in text


def test_the_stricter_retention_wins_for_a_person_both_systems_hold(world):
    """consumption: 36 months in this export's policy, 12 in the acquirer's: the call
    records of a person the acquirer also holds go after 12, the others after 36."""
    from handover.lifecycle import retention
    from handover.storage.lake import lake_from_url

    with psycopg.connect(world["dsn"]) as conn:
        calls = conn.execute(
            "SELECT cdr_id, customer_id, started_at FROM crm.call_record"
        ).fetchall()
    newest = max(t for _, _, t in calls)
    as_of = (pd.Timestamp(newest) + pd.DateOffset(months=8)).date()
    out = retention.find_expired(as_of=as_of, system=str(world["config"]), run_id="ret_surv")
    plan, _ = retention.read_plan(lake_from_url(), "ret_surv")
    held = set(world["pairs"].acquirer_key)
    cut12 = pd.Timestamp(as_of) - pd.DateOffset(months=12)
    cut36 = pd.Timestamp(as_of) - pd.DateOffset(months=36)
    want = {k for k, c, t in calls if t < cut36 or (c in held and t < cut12)}
    spared = {k for k, c, t in calls if c not in held and cut36 <= t < cut12}
    found = plan.get("call_records", set())
    assert want and spared  # both periods are at work in this data
    assert {k for k, _, _ in calls} & found == want
    rule = next(
        r
        for r in out["rules"]
        if r["rule"] == "RETENTION_CONSUMPTION_12M_ACQUIRER" and r["table"] == "call_records"
    )
    assert rule["in_target"] >= 1


def test_a_consent_withdrawn_in_the_acquirers_system_holds_at_migration(world):
    rows = world["browsing"]
    mine = rows.loc[rows.cust_id.str.strip().str.upper() == world["withdrew"], "event_id"]
    with psycopg.connect(world["dsn"]) as conn:
        excluded = dict(
            conn.execute(
                "SELECT record_key, rule_id FROM handover_meta.exclusion WHERE run_id = %s AND "
                "table_name = 'browsing_events'",
                (world["run_id"],),
            ).fetchall()
        )
        loaded = {r[0] for r in conn.execute("SELECT event_id FROM crm.browsing_event")}
    assert len(mine) >= 1
    from handover.lifecycle.retention import DESTROYED, key_digest

    for k in mine.str.strip():  # excluded, and destroyed at the run's end (a keyed hash)
        digest = DESTROYED + key_digest(world["ring"], "browsing_events", k)
        assert excluded.get(digest) == "NO_CONSENT" and k not in loaded
    assert "withdrawn in another system's record of the same person" in world["log"]


def test_a_night_applies_a_later_change_to_the_merged_customer(world):
    """The legacy system changes the address of a person the acquirer holds: the night
    merges the record again and writes the new address onto the acquirer's customer
    (`address: source`), never a second copy of the person."""
    from handover.flows import nightly as sync
    from handover_synth import changes as synth_changes

    changes = world["root"] / "changes"
    synth_changes.generate_changes(world["src"], changes, days=1, seed=3)
    day = changes / "2026-11-01"
    acq = world["pairs"].set_index("acquired_key").acquirer_key
    key = next(
        r.acquired_key
        for r in world["pairs"].itertuples()
        if "address" in r.conflicts
        and r.acquired_key not in (world["by_name"], world["twice"], world["withdrew"])
    )
    rows = pd.read_csv(day / "subscribers.csv", dtype=str, keep_default_na=False)
    rows = rows[rows.cust_id.str.strip().str.upper() != key]
    record = world["subs"].loc[[key]].reset_index(drop=True)[list(rows.columns)]
    record["address"] = "北京市海淀区中关村大街1号"
    record["updated_at"] = "2026-11-01 12:00:00"
    pd.concat([rows, record]).to_csv(day / "subscribers.csv", index=False)
    manifest = json.loads((day / "change_manifest.json").read_text(encoding="utf-8"))
    entry = manifest["tables"]["subscribers"]
    entry["rows"] = len(rows) + 1
    entry["sha256"] = hashlib.sha256((day / "subscribers.csv").read_bytes()).hexdigest()
    (day / "change_manifest.json").write_text(
        json.dumps(manifest, ensure_ascii=False), encoding="utf-8"
    )
    start = pd.Timestamp("2026-11-01")
    sync.run_night(
        changes_dir=str(changes),
        data_interval_start=start,
        data_interval_end=start + pd.Timedelta(days=1),
        system=str(world["config"]),
    )
    target = _target(world)
    assert target[acq[key]]["address"] == "北京市海淀区中关村大街1号"
    assert key not in target
    with psycopg.connect(world["dsn"]) as conn:
        adopted = conn.execute(
            "SELECT detail->>'fields_adopted' FROM handover_meta.ledger WHERE "
            "run_id = %s AND table_name = 'subscribers' AND stage = 'load'",
            ("nightly_sync__2026-11-01",),
        ).fetchone()[0]
        balanced = conn.execute(
            "SELECT bool_and(balanced) FROM handover_meta.reconciliation "
            "WHERE run_id = 'nightly_sync__2026-11-01'"
        ).fetchone()[0]
    assert int(adopted) >= 1 and balanced  # the acquirer's own rows are not the night's


def test_a_verified_flag_the_target_lacks_is_one_line(world, tmp_path):
    from handover.stages import identity_survivorship as identity

    cfg = load_config(str(_config(tmp_path, {"verified": {"msisdn": "msisdn_checked"}})))
    pair = world["pairs"].iloc[0]
    with psycopg.connect(world["dsn"]) as conn, pytest.raises(ConfigError) as err:
        identity.decide(conn, cfg, [(pair.acquired_key, pair.acquirer_key, "msisdn")], {})
    line = str(err.value)
    assert "identity.verified.msisdn" in line and "msisdn_checked" in line
    assert "\n" not in line
