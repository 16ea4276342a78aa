"""A sweep like an auditor's: after a migration, every resident ID and MSISDN of the export
(plain and full-width) is searched for in everything the run left behind.

The lake (every object, as bytes and, for Parquet, as whatever a reader without the keys
can decode), the run's whole log, and every text column of every table in the target
database: none holds a resident ID in clear; MSISDNs only in the target columns the
catalog keeps in clear (crm). Every stage object is encrypted (Parquet modular
encryption), files are 0600 in 0700 folders. The rows that may not move (objection, no
consent) are gone from the lake at the end of the run; after the working-set window and
a retention run no stage object of the run is left, and a rerun says why in one line.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import unicodedata
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import psycopg
import pyarrow.parquet as pq
import pytest

from handover.flows import migration as pipeline
from handover.storage.lake import lake_from_url, safe_run_id
from handover.storage.lake_crypto import MARKER, WorkingSetGone
from handover_synth import legacy_bss as synth
from tests.conftest import pg_dsn

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FULL_WIDTH = str.maketrans("0123456789X", "０１２３４５６７８９Ｘ")


def _norm(v: str) -> str:
    return unicodedata.normalize("NFKC", v).strip()


@pytest.fixture(scope="module")
def swept(target_db, keyring_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    source = root / "source"
    synth.generate(source, 1500, seed=11)
    env = {
        **os.environ,
        "HANDOVER_TARGET_DSN": pg_dsn(target_db),
        "HANDOVER_LAKE_URL": f"file://{root / 'lake'}",
        "HANDOVER_KEYRING_FILE": str(keyring_file),
        "PYTHONPATH": str(ROOT / "include"),
    }
    env.pop("AIRFLOW_CONN_HANDOVER_KEYS", None)
    env.pop("AIRFLOW_CONN_HANDOVER_TARGET", None)
    run_id = f"sweep_{uuid.uuid4().hex[:6]}"
    log = root / "run.log"
    with open(log, "wb") as fh:  # the run's whole log, as a scheduler's log file would be
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "handover.flows.runner",
                "--source-dir",
                str(source),
                "--run-id",
                run_id,
            ],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            timeout=600,
            cwd=ROOT,
        )
    assert proc.returncode == 0, log.read_text()[-3000:]
    subs = pd.read_csv(source / "subscribers.csv", dtype=str, keep_default_na=False)
    ids = {_norm(v) for v in subs["id_number"] if len(_norm(v)) >= 15}
    msisdns = {_norm(v) for v in subs["msisdn"] if len(_norm(v)) == 11}
    objectors = {
        _norm(c)
        for c, o in zip(subs["cust_id"], subs["transfer_objection"], strict=True)
        if _norm(o) == "1"
    }
    mp = pytest.MonkeyPatch()
    for k in ("HANDOVER_TARGET_DSN", "HANDOVER_LAKE_URL", "HANDOVER_KEYRING_FILE"):
        mp.setenv(k, env[k])
    mp.delenv("AIRFLOW_CONN_HANDOVER_KEYS", raising=False)
    mp.delenv("AIRFLOW_CONN_HANDOVER_TARGET", raising=False)
    yield {
        "root": root,
        "lake": root / "lake",
        "run_id": run_id,
        "log": log,
        "dsn": pg_dsn(target_db),
        "ids": ids,
        "msisdns": msisdns,
        "objectors": objectors,
    }
    mp.undo()


def _needles(values: set[str]) -> list[bytes]:
    out = []
    for v in values:
        out += [v.encode(), v.translate(FULL_WIDTH).encode()]
    return out


def _hits(data: bytes, needles: list[bytes]) -> int:
    return sum(1 for n in needles if n in data)


def test_the_planted_values_are_there_to_find(swept):
    assert len(swept["ids"]) > 1000 and len(swept["msisdns"]) > 1000
    assert swept["objectors"], "the synthetic operator has no objectors"


def test_every_lake_object_is_clean_as_bytes_and_as_decoded_parquet(swept):
    needles = _needles(swept["ids"]) + _needles(swept["msisdns"])
    files = [p for p in swept["lake"].rglob("*") if p.is_file()]
    parquet = [p for p in files if p.suffix == ".parquet"]
    assert len(parquet) > 20, "the run wrote no stage objects?"
    dirty = {}
    for p in files:
        n = _hits(p.read_bytes(), needles)
        if n:
            dirty[str(p.relative_to(swept["lake"]))] = n
    assert not dirty, f"values in clear in lake objects: {dirty}"
    for p in parquet:
        assert p.read_bytes()[-4:] == b"PARE", f"{p} is plain Parquet"
        with pytest.raises(OSError):  # without the keys nothing opens, not even the schema
            pq.read_table(p)


def test_the_lake_still_reads_its_own_objects(swept):
    """The sweep found nothing because the values are encrypted, not because they are
    absent: through the lake (with the keys) the cleansed stage holds them."""
    lake = lake_from_url()
    keys = lake.list(f"runs/{safe_run_id(swept['run_id'])}/cleanse/subscribers/")
    ids = set()
    for k in keys:
        ids |= {
            _norm(v) for v in lake.read_table(k, columns=["id_number"]).column(0).to_pylist() if v
        }
    assert len(ids & swept["ids"]) > 1000


def test_lake_files_are_private(swept):
    for p in [swept["lake"], *swept["lake"].rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), f"{p}: {oct(mode)}"


def test_the_run_log_is_clean(swept):
    data = swept["log"].read_bytes()
    assert b"published run" in data or b"publish" in data
    assert _hits(data, _needles(swept["ids"]) + _needles(swept["msisdns"])) == 0


def _found(runs: list[str], values: set[str]) -> bool:
    """Any value of `values` inside a digit run (NFKC: full-width digits count)?"""
    lengths = {len(v) for v in values}
    for run in runs:
        text = _norm(run).upper()
        for n in lengths:
            if any(text[i : i + n] in values for i in range(len(text) - n + 1)):
                return True
    return False


def test_database_holds_ids_only_encrypted_and_msisdns_only_where_the_catalog_keeps_them(swept):
    where_msisdn = set()
    with psycopg.connect(swept["dsn"]) as conn:
        cols = conn.execute(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns c "
            "JOIN information_schema.tables t USING (table_schema, table_name) WHERE "
            "t.table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', "
            "'information_schema') AND data_type IN ('text', 'character varying', 'jsonb', "
            "'json', 'character')"
        ).fetchall()
        assert len(cols) > 30
        for schema, table, col in cols:
            # every run of 11+ digits (ASCII or full-width) the column holds, then in Python
            runs = [
                r[0]
                for r in conn.execute(
                    f'SELECT DISTINCT m[1] FROM "{schema}"."{table}", regexp_matches('
                    f'"{col}"::text, %s, %s) m',
                    ("([0-9０-９]{11,}[XxＸ]?)", "g"),
                ).fetchall()
            ]
            assert not _found(runs, swept["ids"]), (
                f"{schema}.{table}.{col} holds resident IDs in clear"
            )
            if _found(runs, swept["msisdns"]):
                where_msisdn.add((schema, table, col))
    assert where_msisdn, "no MSISDN loaded at all?"
    assert all(s == "crm" for s, _, _ in where_msisdn), where_msisdn


def test_rows_that_may_not_move_are_gone_from_the_lake_at_the_end_of_the_run(swept):
    lake = lake_from_url()
    run = f"runs/{safe_run_id(swept['run_id'])}"
    assert not lake.list(f"{run}/comply/_excluded/"), "excluded objects outlived the run"
    assert not lake.list(f"_keys/{run}/comply/_excluded"), "their key outlived the run"
    seen = set()
    for k in lake.list(f"{run}/"):
        if not k.endswith(".parquet") or "/_purged/" in k:
            continue
        names = lake.schema(k).names
        col = next((c for c in ("cust_id", "customer_id") if c in names), None)
        if col:
            seen |= {_norm(v) for v in lake.read_table(k, columns=[col]).column(0).to_pylist() if v}
    assert not (seen & swept["objectors"]), "an objector's rows are still in the lake"
    with psycopg.connect(swept["dsn"]) as conn:
        rules = dict(
            conn.execute(
                "SELECT rule_id, count(*) FROM handover_meta.exclusion WHERE run_id=%s GROUP BY 1",
                (swept["run_id"],),
            ).fetchall()
        )
        clear = conn.execute(
            "SELECT count(*) FROM handover_meta.exclusion WHERE run_id=%s AND (record_key NOT "
            "LIKE 'destroyed:%%' OR destroy_by IS NULL)",
            (swept["run_id"],),
        ).fetchone()[0]
        cert = conn.execute(
            "SELECT lake_key FROM handover_meta.destruction_certificate WHERE kind='exclusion' "
            "AND certificate_id=%s",
            (f"dx_{safe_run_id(swept['run_id'])}",),
        ).fetchone()
    assert {"OBJECTED_TRANSFER", "NO_CONSENT"} <= set(rules)
    assert clear == 0, "exclusion evidence holds keys in clear or no destroy-by date"
    assert cert is not None
    body = lake.read_json(cert[0])
    destroyed = {r for t in body["rows_destroyed_by_table_rule"].values() for r in t}
    assert {"OBJECTED_TRANSFER", "NO_CONSENT"} <= destroyed
    assert sum(n for t in body["rows_destroyed_by_table_rule"].values() for n in t.values()) == sum(
        rules.values()
    )


def test_a_comply_rerun_after_the_end_still_balances(swept):
    """Cleared after the run ended, comply no longer sees the destroyed rows in raw but
    counts them: its ledger row is the one the run wrote."""
    ctx = {"run_id": swept["run_id"], "system": "legacy_bss"}
    with psycopg.connect(swept["dsn"]) as conn:
        ctx["exported_at"] = str(
            conn.execute(
                "SELECT exported_at FROM handover_meta.run WHERE run_id=%s", (swept["run_id"],)
            ).fetchone()[0]
        )
        before = conn.execute(
            "SELECT rows_in, rows_out, rows_excluded FROM handover_meta.ledger WHERE run_id=%s "
            "AND stage='comply' AND table_name='subscribers' ORDER BY partition",
            (swept["run_id"],),
        ).fetchall()
        parts = [
            r[0]
            for r in conn.execute(
                "SELECT partition FROM handover_meta.ledger WHERE run_id=%s AND stage='comply' "
                "AND table_name='subscribers' ORDER BY 1",
                (swept["run_id"],),
            ).fetchall()
        ]
    for p in parts:
        pipeline.comply_partition(ctx, {"table": "subscribers", "partition": p})
    with psycopg.connect(swept["dsn"]) as conn:
        after = conn.execute(
            "SELECT rows_in, rows_out, rows_excluded FROM handover_meta.ledger WHERE run_id=%s "
            "AND stage='comply' AND table_name='subscribers' ORDER BY partition",
            (swept["run_id"],),
        ).fetchall()
    assert after == before and sum(r[2] for r in after) > 0


def test_after_the_window_retention_leaves_no_stage_object_and_a_rerun_says_why(swept):
    from handover.lifecycle.retention import run_retention

    lake = lake_from_url()
    run = f"runs/{safe_run_id(swept['run_id'])}"
    assert lake.list(f"{run}/cleanse/_quarantine/")
    soon = (datetime.now(UTC) + timedelta(days=8)).date().isoformat()
    first = run_retention(as_of=soon, run_id=f"retention_sweep_{uuid.uuid4().hex[:4]}")
    sets = first["lake"]["working_sets"]
    assert any(r["run"] == safe_run_id(swept["run_id"]) for r in sets["runs"])
    left = [k for k in lake.list(f"{run}/") if k.endswith(".parquet")]
    assert left and all("/_quarantine/" in k for k in left), left  # kept for a fix
    later = (datetime.now(UTC) + timedelta(days=31)).date().isoformat()
    run_retention(as_of=later, run_id=f"retention_sweep_{uuid.uuid4().hex[:4]}")
    assert not [k for k in lake.list(f"{run}/") if k.endswith(".parquet")]
    assert not lake.list(f"_keys/{run}/"), "scope keys outlived the working set"
    marker = json.loads((swept["lake"] / run / MARKER).read_text())
    assert "working set expired" in marker["reason"]
    assert lake.exists(f"{run}/reports/report.json")  # the evidence stays
    ctx = {"run_id": swept["run_id"], "system": "legacy_bss"}
    with pytest.raises(WorkingSetGone, match="working set of run .* was destroyed.*new run"):
        pipeline.cleanse_partition(ctx, {"table": "subscribers", "partition": "p00"})
    with psycopg.connect(swept["dsn"]) as conn:
        kinds = {
            r[0]
            for r in conn.execute(
                "SELECT kind FROM handover_meta.destruction_certificate"
            ).fetchall()
        }
    assert {"working_set", "exclusion"} <= kinds
