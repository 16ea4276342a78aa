"""Clearing any task of any run leads to the truth, run through Airflow as on-call does
(`airflow dags test`, then `airflow tasks test` of a run's task instances, which is what a
clear in the UI runs again).

- An older run's load, rerun after a newer run loaded newer values, leaves the target as
  the newer run left it and counts its rows stale.
- An export edited after it was sealed (amounts multiplied, row count kept) is red at
  extract, naming the file and both digests.
- A rule tightened after load (payments before March are now quarantined), cleanse and
  what follows it rerun: the rows leave the target, target equals ledger, reconciliation
  is green.

docs/runbook.md gives these steps.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from handover.config.loader import load_config
from handover.db.load import table_checksum
from handover_synth import legacy_bss as synth
from tests.conftest import AIRFLOW, fresh_airflow, pg_dsn

pytestmark = pytest.mark.e2e


def _airflow(env, *args, timeout=900):
    return subprocess.run(
        [AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _checksums(dsn: str) -> dict:
    cfg = load_config("legacy_bss")
    with psycopg.connect(dsn) as conn:
        return {
            t: table_checksum(
                conn, "crm", cfg.table_mapping(t)["target"], cfg.table_mapping(t)["key"]
            )
            for t in cfg.tables
        }


def _reseal(src: Path) -> None:
    """The operator's manifest for the files as they are now (a new, sealed export)."""
    manifest = json.loads((src / "export_manifest.json").read_text())
    for entry in manifest["tables"].values():
        entry["sha256"] = hashlib.sha256((src / entry["file"]).read_bytes()).hexdigest()
    (src / "export_manifest.json").write_text(json.dumps(manifest))


def _map_index(meta: str, run_id: str, task_id: str, label: str) -> int:
    with psycopg.connect(pg_dsn(meta)) as conn:
        row = conn.execute(
            "SELECT map_index FROM task_instance WHERE dag_id='customer_migration' AND "
            "run_id=%s AND task_id=%s AND rendered_map_index=%s",
            (run_id, task_id, label),
        ).fetchone()
    assert row is not None, (task_id, label)
    return row[0]


def _latest_run(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT run_id FROM handover_meta.run WHERE kind='migration' "
            "ORDER BY started_at DESC LIMIT 1"
        ).fetchone()[0]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, keyring_file):
    """Run 1 on an export of November, run 2 on the December export of the same operator:
    three customers moved house (newer updated_at), five payments were corrected."""
    root = tmp_path_factory.mktemp("reruns")
    with fresh_airflow(root, keyring_file, target_prefix="handover_rerun") as af:
        system = root / "config" / "legacy_bss"  # a copy on-call may edit (scenario 3)
        shutil.copytree(
            Path(__file__).resolve().parents[2] / "include" / "config" / "legacy_bss", system
        )
        nov, dec = root / "nov", root / "dec"
        synth.generate(nov, 500, seed=19)
        shutil.copytree(nov, dec)
        subs = pd.read_csv(dec / "subscribers.csv", dtype=str, keep_default_na=False)
        movers = subs.index[(subs["transfer_objection"] == "0")][:3]
        subs.loc[movers, "address"] = "广东省广州市天河区体育西路9号"
        subs.loc[movers, "city"] = "广州市"
        subs.loc[movers, "updated_at"] = "2026-11-20 10:00:00"
        subs.to_csv(dec / "subscribers.csv", index=False)
        pays = pd.read_csv(dec / "payments.csv", dtype=str, keep_default_na=False)
        fixed = pays.index[pays["amount_fen"].str.fullmatch(r"\d{3,6}")][:5]
        pays.loc[fixed, "amount_fen"] = "12345"
        pays.to_csv(dec / "payments.csv", index=False)
        manifest = json.loads((dec / "export_manifest.json").read_text())
        manifest["exported_at"] = "2026-12-01 00:00:00"
        (dec / "export_manifest.json").write_text(json.dumps(manifest))
        _reseal(dec)
        env, dsn = af["env"], pg_dsn(af["target"])
        runs = {}
        for name, src in (("nov", nov), ("dec", dec)):
            out = _airflow(
                env,
                "dags",
                "test",
                "customer_migration",
                "-c",
                json.dumps({"source_dir": str(src), "system": str(system)}),
            )
            assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
            runs[name] = _latest_run(dsn)
        yield {
            **af,
            "dsn": dsn,
            "runs": runs,
            "nov": nov,
            "dec": dec,
            "system": system,
            "movers": subs.loc[movers, "cust_id"].str.strip().tolist(),
            "fixed": pays.loc[fixed, "payment_id"].str.strip().tolist(),
        }


def test_an_older_runs_load_rerun_leaves_the_newer_values(two_runs):
    t = two_runs
    before = _checksums(t["dsn"])
    with psycopg.connect(t["dsn"]) as conn:
        newer = conn.execute(
            "SELECT source_updated_at FROM crm.customer WHERE customer_id = ANY(%s)", (t["movers"],)
        ).fetchall()
        amounts = conn.execute(
            "SELECT amount_fen FROM crm.payment WHERE payment_id = ANY(%s)", (t["fixed"],)
        ).fetchall()
    assert {r[0].isoformat() for r in newer} == {"2026-11-20T10:00:00"}
    assert {r[0] for r in amounts} == {12345}
    for label in ("subscribers/p00", "payments/p00"):
        i = _map_index(t["meta"], t["runs"]["nov"], "load", label)
        out = _airflow(
            t["env"],
            "tasks",
            "test",
            "customer_migration",
            "load",
            t["runs"]["nov"],
            "--map-index",
            str(i),
        )
        assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert _checksums(t["dsn"]) == before, "an older run put older values back"
    with psycopg.connect(t["dsn"]) as conn:
        stale = conn.execute(
            "SELECT table_name, (detail->>'stale')::int, detail->>'superseded_by' FROM "
            "handover_meta.ledger WHERE run_id=%s AND stage='load' AND table_name IN "
            "('subscribers', 'payments')",
            (t["runs"]["nov"],),
        ).fetchall()
    assert stale and all(n > 0 and by == t["runs"]["dec"] for _, n, by in stale), stale


def test_an_export_edited_after_its_manifest_is_red_at_extract(two_runs, tmp_path):
    t = two_runs
    edited = tmp_path / "dec-edited"
    shutil.copytree(t["dec"], edited)
    pays = pd.read_csv(edited / "payments.csv", dtype=str, keep_default_na=False)
    pays.loc[pays.index[:5], "amount_fen"] = (
        pays.loc[pays.index[:5], "amount_fen"].astype(int) * 100
    ).astype(str)
    pays.to_csv(edited / "payments.csv", index=False)  # same rows, manifest not resealed
    before = _checksums(t["dsn"])
    out = _airflow(
        t["env"],
        "dags",
        "test",
        "customer_migration",
        "-c",
        json.dumps({"source_dir": str(edited), "system": str(t["system"])}),
    )
    text = out.stdout + out.stderr
    assert out.returncode != 0
    line = next(ln for ln in text.splitlines() if "differs from the export manifest" in ln)
    want = json.loads((edited / "export_manifest.json").read_text())["tables"]["payments"]
    got = hashlib.sha256((edited / "payments.csv").read_bytes()).hexdigest()
    assert "payments.csv" in line and want["sha256"][:12] in line and got[:12] in line
    assert _checksums(t["dsn"]) == before


def test_a_tightened_rule_then_clearing_cleanse_converges(two_runs):
    t = two_runs
    run = t["runs"]["dec"]
    rules = (t["system"] / "cleansing.yaml").read_text()
    tightened = rules.replace(
        '    dates: {paid_at: "%Y-%m-%d %H:%M:%S"}\n',
        '    dates: {paid_at: "%Y-%m-%d %H:%M:%S"}\n    not_before: {paid_at: "2026-03-01"}\n',
        1,
    )
    assert tightened != rules
    (t["system"] / "cleansing.yaml").write_text(tightened)
    try:
        label = "payments/p00"
        for task in ("cleanse", "validate_quality", "map_protect", "validate_contract", "load"):
            i = _map_index(t["meta"], run, task, label)
            out = _airflow(
                t["env"], "tasks", "test", "customer_migration", task, run, "--map-index", str(i)
            )
            assert out.returncode == 0, (task, (out.stdout + out.stderr)[-3000:])
        for task in ("reconcile_table", "validate_reconciliation"):
            i = _map_index(t["meta"], run, task, "payments")
            out = _airflow(
                t["env"], "tasks", "test", "customer_migration", task, run, "--map-index", str(i)
            )
            assert out.returncode == 0, (task, (out.stdout + out.stderr)[-3000:])
        with psycopg.connect(t["dsn"]) as conn:
            early = conn.execute(
                "SELECT count(*) FROM handover_meta.quarantine WHERE run_id=%s AND "
                "table_name='payments' AND reason='INVALID_DATE'",
                (run,),
            ).fetchone()[0]
            still = conn.execute(
                "SELECT count(*) FROM crm.payment p JOIN handover_meta.quarantine q ON "
                "q.record_key = p.payment_id WHERE q.run_id=%s AND q.table_name='payments'",
                (run,),
            ).fetchone()[0]
            loaded = conn.execute(
                "SELECT sum(rows_out) FROM handover_meta.ledger WHERE "
                "run_id=%s AND table_name='payments' AND stage='load'",
                (run,),
            ).fetchone()[0]
            in_target = conn.execute("SELECT count(*) FROM crm.payment").fetchone()[0]
            green = conn.execute(
                "SELECT balanced FROM handover_meta.reconciliation WHERE "
                "run_id=%s AND table_name='payments'",
                (run,),
            ).fetchone()[0]
        assert early > 100, "the tightened rule quarantined nothing"
        assert still == 0, "quarantined payments are still in the target"
        assert in_target == loaded and green
    finally:
        (t["system"] / "cleansing.yaml").write_text(rules)
