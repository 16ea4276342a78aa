"""The same operator exported in three more shapes: consents as an Excel workbook,
payments as fixed-width GBK text with a count trailer (mainframe billing), complaints as
JSON lines. Configured by catalog source blocks alone, the run loads exactly what the CSV
export loads: the same rows, fields and money in every target table."""

from __future__ import annotations

import json
import re
import shutil
import uuid

import pandas as pd
import psycopg
import pytest
import yaml

from handover.config.loader import CONFIG_ROOT
from handover.flows.runner import run_migration
from handover.ops.cli import manifest_command
from handover_synth import legacy_bss as synth
from tests.conftest import create_database, drop_database, pg_dsn

pytestmark = pytest.mark.integration
TABLES = [
    "customer",
    "consent",
    "call_record",
    "data_session",
    "payment",
    "complaint",
    "browsing_event",
]


def _reshape(src, dst, config) -> None:
    """Copy the CSV export to `dst` with three tables in other shapes, and the config."""
    import openpyxl

    shutil.copytree(src, dst)
    read = {
        t: pd.read_csv(dst / f"{t}.csv", dtype=str, keep_default_na=False)
        for t in ("consents", "payments", "complaints")
    }
    for t in read:
        (dst / f"{t}.csv").unlink()
    (dst / "export_manifest.json").unlink()

    wb = openpyxl.Workbook()  # consents: a workbook, a cover sheet first
    wb.active.title = "封面"
    wb.active.append(["授权记录导出"])
    ws = wb.create_sheet("授权记录")
    ws.append(list(read["consents"].columns))
    for row in read["consents"].itertuples(index=False):
        ws.append([v if v != "" else None for v in row])
    wb.save(dst / "consents.xlsx")

    pays = read["payments"]  # payments: fixed width in GBK bytes, a count trailer
    widths = [
        max(1, int(pays[c].map(lambda v: len(v.encode("gbk"))).max())) + 2 for c in pays.columns
    ]
    with open(dst / "payments.txt", "wb") as fh:
        for row in pays.itertuples(index=False):
            fh.write(
                b"".join(v.encode("gbk").ljust(w) for v, w in zip(row, widths, strict=True))
                + b"\r\n"
            )
        fh.write(f"共{len(pays)}条\r\n".encode("gbk"))

    with open(dst / "complaints.jsonl", "w", encoding="utf-8") as fh:  # JSON lines
        for rec in read["complaints"].to_dict(orient="records"):
            fh.write(
                json.dumps(
                    {k: (v if v != "" else None) for k, v in rec.items()}, ensure_ascii=False
                )
                + "\n"
            )

    shutil.copytree(CONFIG_ROOT / "legacy_bss", config)
    doc = yaml.safe_load((config / "catalog.yaml").read_text(encoding="utf-8"))
    doc["tables"]["consents"]["source"] = {
        "format": "xlsx",
        "file": "consents.xlsx",
        "sheet": "授权记录",
    }
    doc["tables"]["payments"]["source"] = {
        "format": "fixed",
        "file": "payments.txt",
        "encoding": "gbk",
        "widths": widths,
        "trailer": r"共(\d+)条",
    }
    doc["tables"]["complaints"]["source"] = {"format": "jsonl", "file": "complaints.jsonl"}
    doc["ignore"] = ["truth.csv"]
    (config / "catalog.yaml").write_text(
        yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8"
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, keyring_file):
    root = tmp_path_factory.mktemp("shapes")
    synth.generate(root / "csv", 250, seed=31)
    _reshape(root / "csv", root / "shapes", root / "legacy_shapes")
    exported = json.loads((root / "csv" / "export_manifest.json").read_text())["exported_at"]
    assert manifest_command(str(root / "legacy_shapes"), str(root / "shapes"), exported, False) == 0
    dbs = {k: create_database(f"handover_shapes_{k}") for k in ("csv", "shapes")}
    mp = pytest.MonkeyPatch()
    mp.setenv("HANDOVER_LAKE_URL", f"file://{root / 'lake'}")
    mp.setenv("HANDOVER_KEYRING_FILE", str(keyring_file))
    for var in ("AIRFLOW_CONN_HANDOVER_KEYS", "AIRFLOW_CONN_HANDOVER_TARGET"):
        mp.delenv(var, raising=False)
    try:
        out = {}
        for kind, system in (("csv", "legacy_bss"), ("shapes", str(root / "legacy_shapes"))):
            mp.setenv("HANDOVER_TARGET_DSN", pg_dsn(dbs[kind]))
            run_id = f"shapes_{kind}_{uuid.uuid4().hex[:6]}"
            run_migration(run_id=run_id, source_dir=str(root / kind), system=system)
            out[kind] = (pg_dsn(dbs[kind]), run_id)
        yield {**out, "root": root}
    finally:
        mp.undo()
        for name in dbs.values():
            drop_database(name)


def test_the_manifest_counts_rows_not_the_cover_sheet_or_the_trailer(runs):
    manifest = json.loads((runs["root"] / "shapes" / "export_manifest.json").read_text())
    csv = json.loads((runs["root"] / "csv" / "export_manifest.json").read_text())
    assert {t: e["rows"] for t, e in manifest["tables"].items()} == {
        t: e["rows"] for t, e in csv["tables"].items()
    }


def test_every_table_balances_and_holds_what_the_csv_export_loads(runs):
    with psycopg.connect(runs["shapes"][0]) as conn:
        rows = conn.execute(
            "SELECT table_name, balanced FROM handover_meta.reconciliation WHERE run_id = %s",
            (runs["shapes"][1],),
        ).fetchall()
    assert len(rows) == 7 and all(ok for _, ok in rows), rows
    with psycopg.connect(runs["csv"][0]) as a, psycopg.connect(runs["shapes"][0]) as b:
        for table in TABLES:
            cols = [
                r[0]
                for r in a.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema='crm' "
                    "AND table_name=%s ORDER BY ordinal_position",
                    (table,),
                )
                if not re.search(r"_(enc|key_id)$", r[0])
            ]
            q = f"SELECT {', '.join(cols)} FROM crm.{table} ORDER BY 1"
            left, right = a.execute(q).fetchall(), b.execute(q).fetchall()
            assert len(left) == len(right) > 0, table
            assert left == right, table
