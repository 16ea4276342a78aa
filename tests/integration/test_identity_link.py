"""`identity.on_match: link`: the acquirer keeps every record (its CRM allows two customers
of one person), the person map gives both one person; requests by one identifier reach
both records. A target that allows one customer an ID refuses link in one line."""

from __future__ import annotations

import shutil
import uuid

import pandas as pd
import psycopg
import pytest
import yaml

from handover.config.loader import CONFIG_ROOT, ConfigError
from handover.flows import subject_request
from handover.flows.runner import run_migration
from handover.lifecycle import subject
from handover_synth import acquirer as synth_acquirer
from handover_synth import legacy_bss as synth
from tests.conftest import create_database, drop_database, pg_dsn

pytestmark = pytest.mark.integration


def _link_config(tmp_path):
    folder = tmp_path / "legacy_link"
    shutil.copytree(CONFIG_ROOT / "legacy_bss", folder)
    doc = yaml.safe_load((folder / "policy.yaml").read_text(encoding="utf-8"))
    doc["identity"] = {"match": ["resident_id"], "on_match": "link"}
    (folder / "policy.yaml").write_text(
        yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8"
    )
    return folder


@pytest.fixture
def env(tmp_path, keyring_file, monkeypatch):
    src = tmp_path / "export"
    synth.generate(src, 200, seed=23)
    db = create_database("handover_link")
    monkeypatch.setenv("HANDOVER_TARGET_DSN", pg_dsn(db))
    monkeypatch.setenv("HANDOVER_LAKE_URL", f"file://{tmp_path / 'lake'}")
    monkeypatch.setenv("HANDOVER_KEYRING_FILE", str(keyring_file))
    for var in ("AIRFLOW_CONN_HANDOVER_KEYS", "AIRFLOW_CONN_HANDOVER_TARGET"):
        monkeypatch.delenv(var, raising=False)
    yield {"src": src, "dsn": pg_dsn(db), "root": tmp_path, "config": _link_config(tmp_path)}
    drop_database(db)


def test_link_keeps_both_records_of_one_person(env):
    from handover.db import ledger

    with psycopg.connect(env["dsn"]) as conn:  # an acquirer whose CRM allows it
        ledger.ensure_schema(conn)
        conn.execute("DROP INDEX crm.customer_id_number_bidx")
        conn.execute("CREATE INDEX customer_id_number_bidx ON crm.customer (id_number_bidx)")
    synth_acquirer.seed(env["dsn"], env["src"], env["root"], share=0.1, others=5)
    truth = pd.read_csv(env["root"] / synth_acquirer.TRUTH, dtype=str, keep_default_na=False)
    pairs = dict(
        zip(
            truth.loc[truth.acquired_key != "", "acquired_key"],
            truth.loc[truth.acquired_key != "", "acquirer_key"],
            strict=True,
        )
    )
    run_id = f"link_{uuid.uuid4().hex[:6]}"
    run_migration(run_id=run_id, source_dir=str(env["src"]), system=str(env["config"]))

    with psycopg.connect(env["dsn"]) as conn:
        customers = {r[0] for r in conn.execute("SELECT customer_id FROM crm.customer")}
        person = {
            (s, k): p
            for s, k, p in conn.execute(
                "SELECT source_system, source_key, person_id FROM handover_meta.person_map"
            )
        }
        decisions = dict(
            conn.execute(
                "SELECT source_key, decision FROM handover_meta.person_map WHERE "
                "source_system = 'legacy_bss'"
            ).fetchall()
        )
        merged = conn.execute(
            "SELECT count(*) FROM handover_meta.merge_map WHERE run_id = %s "
            "AND rule = 'EXISTING_CUSTOMER'",
            (run_id,),
        ).fetchone()[0]
        balanced = conn.execute(
            "SELECT bool_and(balanced) FROM handover_meta.reconciliation WHERE run_id = %s",
            (run_id,),
        ).fetchone()[0]
    assert set(pairs) <= customers and set(pairs.values()) <= customers  # both kept
    assert merged == 0 and balanced
    for mine, theirs in pairs.items():
        assert decisions[mine] == "linked"
        assert person[("legacy_bss", mine)] == person[("acquirer", theirs)]
    assert {k for k, d in decisions.items() if d == "linked"} == set(pairs)

    # an erasure by one identifier reaches both records of the person
    mine, theirs = sorted(pairs.items())[0]
    form = {
        "request_id": f"REQ-{uuid.uuid4().hex[:8]}",
        "request_type": "erasure",
        "identifier_type": "customer_id",
        "identifier": theirs,
        "field": "",
        "new_value": "",
    }
    out = subject_request.handle_request(subject.submit_request(**form)["conf"])
    assert out["verified"]["remaining_in_lake"] == 0
    with psycopg.connect(env["dsn"]) as conn:
        left = conn.execute(
            "SELECT count(*) FROM crm.customer WHERE customer_id = ANY(%s)", ([mine, theirs],)
        ).fetchone()[0]
    assert left == 0


def test_link_into_a_target_that_allows_one_customer_an_id_stops_in_one_line(env):
    synth_acquirer.seed(env["dsn"], env["src"], env["root"], share=0.1, others=5)
    with pytest.raises(ConfigError) as err:
        run_migration(
            run_id=f"link_{uuid.uuid4().hex[:6]}",
            source_dir=str(env["src"]),
            system=str(env["config"]),
        )
    line = str(err.value)
    assert "\n" not in line and "on_match: link" in line and "UNIQUE index" in line


def test_an_export_key_the_target_holds_for_another_person_stops_the_run(env):
    """The acquirer's ids overlap the export's: its customer `C…` is another person than the
    export's `C…`. Loading would write one person over the other: the run stops, naming
    the count and the fix, never the key."""
    from handover.flows.migration import SourceError

    synth_acquirer.seed(env["dsn"], env["src"], env["root"], share=0.1, others=5)
    truth = pd.read_csv(env["root"] / synth_acquirer.TRUTH, dtype=str, keep_default_na=False)
    other = truth.loc[truth.acquired_key == "", "acquirer_key"].iloc[0]
    subs = pd.read_csv(env["src"] / "subscribers.csv", dtype=str, keep_default_na=False)
    clash = sorted(set(subs["cust_id"].str.strip()) - set(truth.acquired_key))[5]
    with psycopg.connect(env["dsn"]) as conn:
        conn.execute(
            "UPDATE crm.customer SET customer_id = %s WHERE customer_id = %s", (clash, other)
        )
        conn.execute(
            "UPDATE handover_meta.person_map SET source_key = %s, "
            "target_customer_id = %s WHERE source_key = %s",
            (clash, clash, other),
        )
    legacy = str(CONFIG_ROOT / "legacy_bss")
    with pytest.raises(SourceError) as err:
        run_migration(
            run_id=f"clash_{uuid.uuid4().hex[:6]}", source_dir=str(env["src"]), system=legacy
        )
    line = str(err.value)
    assert "\n" not in line and "1 customer id(s) of this export" in line
    assert "prefix" in line and clash not in line


def test_the_seed_command_fills_an_empty_target(env, capsys):
    """`python -m handover_synth.acquirer --export DIR` (ACQUIRER=1 make demo)."""
    assert (
        synth_acquirer.main(
            ["--export", str(env["src"]), "--out", str(env["root"]), "--others", "3"]
        )
        == 0
    )
    truth = pd.read_csv(env["root"] / synth_acquirer.TRUTH, dtype=str, keep_default_na=False)
    with psycopg.connect(env["dsn"]) as conn:
        held = {r[0] for r in conn.execute("SELECT customer_id FROM crm.customer")}
    assert held == set(truth.acquirer_key) and (truth.acquired_key != "").sum() >= 1
    assert "seeded" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        synth_acquirer.main(["--export", str(env["root"])])
