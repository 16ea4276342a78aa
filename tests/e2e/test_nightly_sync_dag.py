"""One night of nightly_sync through Airflow itself: `airflow dags test nightly_sync <date>`.

Day 0 is migrated in-process (the migration has its own end-to-end test); Airflow then
runs the night whose data interval is the first legacy day after the export, from the
sensor to publish. Asserts what the parallel run relies on: the run takes its interval
from Airflow, the night's books balance, old and new agree, the day's changes landed.

To stay near a minute the operator is cut to three tables (subscribers, consents, call
records: a parent, its policy facts, a partitioned child) through the run's `system`
param; the wiring is the same for every table, and all seven are synced in-process by
tests/integration/test_nightly_sync.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from handover.config.loader import CONFIG_ROOT
from handover_synth import changes as synth_changes
from handover_synth import legacy_bss as synth
from tests.conftest import AIRFLOW, fresh_airflow, pg_dsn

pytestmark = pytest.mark.e2e
DAY = "2026-11-01"
TABLES = ("subscribers", "consents", "call_records")


def _three_table_system(folder: Path) -> Path:
    """legacy_bss's configuration restricted to TABLES, one partition each."""
    import yaml

    folder.mkdir()
    for name in ("catalog", "policy", "cleansing", "mapping"):
        data = yaml.safe_load((CONFIG_ROOT / "legacy_bss" / f"{name}.yaml").read_text())
        if "tables" in data:
            data["tables"] = {t: v for t, v in data["tables"].items() if t in TABLES}
            for spec in data["tables"].values():
                if "partitions" in spec:
                    spec["partitions"] = 1
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    return folder


@pytest.fixture(scope="module")
def night(tmp_path_factory, keyring_file):
    root = tmp_path_factory.mktemp("sync_e2e")
    # Airflow's metadata database: a copy of the session's migrated template.
    with fresh_airflow(root, keyring_file, target_prefix="handover_sync_e2e") as af:
        env, target = af["env"], af["target"]
        source, changes = root / "source", root / "changes"
        system = _three_table_system(root / "three_bss")
        synth.generate(source, 200, seed=11)
        synth_changes.generate_changes(source, changes, days=1, seed=3)
        mp = pytest.MonkeyPatch()
        mp.setenv("HANDOVER_TARGET_DSN", pg_dsn(target))
        mp.setenv("HANDOVER_LAKE_URL", env["HANDOVER_LAKE_URL"])
        mp.setenv("HANDOVER_KEYRING_FILE", str(keyring_file))
        mp.delenv("AIRFLOW_CONN_HANDOVER_KEYS", raising=False)
        mp.delenv("AIRFLOW_CONN_HANDOVER_TARGET", raising=False)
        try:
            from handover.flows.runner import run_migration

            run_migration(run_id="e2e_day0", source_dir=str(source), system=str(system))
        finally:
            mp.undo()
        # The night of legacy day DAY ends at midnight Shanghai; `dags test` infers the
        # data interval of a daily schedule as the last whole day before the given date.
        night_end = f"{pd.Timestamp(DAY) + pd.Timedelta(days=1):%Y-%m-%d}T00:00:00+08:00"
        conf = json.dumps({"changes_dir": str(changes), "system": str(system)})
        run = subprocess.run(
            [AIRFLOW, "dags", "test", "nightly_sync", night_end, "-c", conf],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        yield {"run": run, "dsn": pg_dsn(target), "changes": changes}


def test_night_runs_through_airflow_and_old_new_agree(night):
    run = night["run"]
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    manifest = json.loads((night["changes"] / DAY / "change_manifest.json").read_text())
    with psycopg.connect(night["dsn"]) as conn:
        status, exported_at = conn.execute(
            "SELECT status, exported_at FROM handover_meta.run WHERE run_id=%s",
            (f"nightly_sync__{DAY}",),
        ).fetchone()
        recon = conn.execute(
            "SELECT table_name, source_rows, loaded + merged + quarantined + excluded, missing_keys, "
            "field_mismatches, balanced FROM handover_meta.reconciliation WHERE run_id=%s",
            (f"nightly_sync__{DAY}",),
        ).fetchall()
        customers = {r[0] for r in conn.execute("SELECT customer_id FROM crm.customer")}
        gates = conn.execute(
            "SELECT count(*), bool_and(success) FROM handover_meta.gate_result WHERE run_id=%s",
            (f"nightly_sync__{DAY}",),
        ).fetchone()
        # orphans of the migration the night took in again (rows not in its files)
        again = dict(
            conn.execute(
                "SELECT table_name, coalesce(sum((detail->>'released_orphans')::int), 0) FROM "
                "handover_meta.ledger WHERE run_id=%s AND stage='extract' GROUP BY 1",
                (f"nightly_sync__{DAY}",),
            ).fetchall()
        )
    assert status == "succeeded"
    assert str(exported_at) == f"{pd.Timestamp(DAY) + pd.Timedelta(days=1)}"
    assert len(recon) == len(TABLES)
    for table, rows, accounted, missing, mismatches, balanced in recon:
        m = manifest["tables"][table]
        assert rows == accounted == m["rows"] + m["deleted_rows"] + again.get(table, 0), table
        assert (missing, mismatches, balanced) == (0, 0, True), table
    assert gates[0] == 4 * len(TABLES) + len(TABLES) and gates[1]
    truth = pd.read_csv(night["changes"] / DAY / "truth.csv", dtype=str, keep_default_na=False)
    subs = truth[truth["table"] == "subscribers"]
    assert set(subs.loc[subs["defect"] == "INSERT", "key"]) <= customers
    assert not set(subs.loc[subs["defect"] == "DELETED", "key"]) & customers
