"""scripts/bench_gates.py end to end on a few thousand rows: the three ways of running the
quality gate (run_gate per partition, GX SQL pushdown, pyarrow) find the same planted faults."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _postgres_up() -> bool:
    try:
        with psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=3
        ):
            return True
    except psycopg.Error:
        return False


pytestmark = pytest.mark.skipif(not _postgres_up(), reason="needs PostgreSQL on 127.0.0.1:5432")


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "bench_gates", ROOT / "scripts" / "bench_gates.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_three_methods_agree_on_planted_faults(tmp_path, capsys):
    bench = _load_script()
    out = tmp_path / "gates.json"
    db = "bench_gates_unit_test"
    code = bench.main(["--rows", "3000", "--partition-rows", "1000", "--out", str(out), "--db", db])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "all three agree" in printed
    record = json.loads(out.read_text())["3000"]
    assert record["rows"] == 3000 and len(record["partitions"]) == 3
    assert record["agree"] is True
    assert record["found"]["run_gate"] == record["planted"] == record["found"]["gx_sql"]
    assert record["planted"]["expect_column_values_to_be_unique:cdr_id"] == 6
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres") as conn:
        left = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone()
    assert left is None  # the scratch database is dropped
