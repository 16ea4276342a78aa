"""Two operators, one DAG: legacy_bss and telco_b migrate with the same library, config only.

telco_b is derived from the same synthetic customers as legacy_bss but exported nothing
alike (GBK and GB18030 text with Chinese headers, a headerless file, Parquet, a table in a
PostgreSQL database, yuan amounts, three date shapes, split names). Both run through
handover.flows.runner.run_migration, which calls the DAG's task bodies in the DAG's order, each
into its own fresh target: both ledgers balance, telco_b catches exactly the defects its
answer key lists, and both targets end up holding the same customers. `handover check`
passes on telco_b and names a column deliberately left out of its catalog.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from handover.config.loader import CONFIG_ROOT, load_config
from handover.flows.runner import run_migration
from handover.ops import cli
from handover.ops.check import run_check
from handover_synth import legacy_bss as synth
from handover_synth import telco_b as synth_b
from tests.conftest import ROOT, create_database, drop_database, pg_dsn, unhash_book_keys

pytestmark = pytest.mark.integration
SUBSCRIBERS = 300
SYSTEMS = ("legacy_bss", "telco_b")


@pytest.fixture(scope="module")
def both(tmp_path_factory, keyring_file):
    root = tmp_path_factory.mktemp("two_operators")
    sources = {"legacy_bss": root / "legacy_bss", "telco_b": root / "telco_b"}
    synth.generate(sources["legacy_bss"], SUBSCRIBERS, seed=11)
    synth_b.derive(sources["legacy_bss"], sources["telco_b"])
    billing = create_database("handover_tb_billing")
    synth_b.load_database(sources["telco_b"], pg_dsn(billing))
    targets = {s: create_database(f"handover_{s}") for s in SYSTEMS}
    mp = pytest.MonkeyPatch()
    mp.setenv("AIRFLOW_CONN_TELCO_B_BILLING", f"postgresql://postgres@127.0.0.1:5432/{billing}")
    mp.setenv("HANDOVER_LAKE_URL", f"file://{root / 'lake'}")
    mp.setenv("HANDOVER_KEYRING_FILE", str(keyring_file))
    mp.delenv("AIRFLOW_CONN_HANDOVER_KEYS", raising=False)
    mp.delenv("AIRFLOW_CONN_HANDOVER_TARGET", raising=False)
    runs = {}
    try:
        for system in SYSTEMS:
            mp.setenv("HANDOVER_TARGET_DSN", pg_dsn(targets[system]))
            run_id = f"{system}_{uuid.uuid4().hex[:6]}"
            run_migration(run_id=run_id, source_dir=str(sources[system]), system=system)
            runs[system] = run_id
        yield {
            "keyring": keyring_file,
            "root": root,
            "sources": sources,
            "targets": targets,
            "runs": runs,
            "billing": billing,
        }
    finally:
        mp.undo()
        for name in (billing, *targets.values()):
            drop_database(name)


def _reconciliation(both, system):
    with psycopg.connect(pg_dsn(both["targets"][system])) as conn:
        return conn.execute(
            "SELECT table_name, source_rows, loaded, quarantined, excluded, target_rows, "
            "balanced, merged FROM handover_meta.reconciliation WHERE run_id=%s",
            (both["runs"][system],),
        ).fetchall()


@pytest.mark.parametrize("system", SYSTEMS)
def test_both_profiles_migrate_with_balanced_ledgers(both, system):
    manifest = json.loads((both["sources"][system] / "export_manifest.json").read_text())
    rows = _reconciliation(both, system)

    assert sorted(r[0] for r in rows) == sorted(load_config(system).tables)
    for table, n, loaded, q, x, target_rows, balanced, merged in rows:
        assert n == manifest["tables"][table]["rows"], table
        assert n == loaded + q + x + merged, table
        assert target_rows == loaded > 0, table
        assert balanced, table


def test_telco_b_catches_exactly_the_defects_of_its_answer_key(both):
    truth = pd.read_csv(both["sources"]["telco_b"] / "truth.csv", dtype=str, keep_default_na=False)
    with psycopg.connect(pg_dsn(both["targets"]["telco_b"])) as conn:
        q = conn.execute(
            "SELECT table_name, record_key, reason FROM handover_meta.quarantine WHERE run_id=%s",
            (both["runs"]["telco_b"],),
        ).fetchall()
        x = conn.execute(
            "SELECT table_name, record_key, rule_id FROM handover_meta.exclusion WHERE run_id=%s",
            (both["runs"]["telco_b"],),
        ).fetchall()
        m = conn.execute(
            "SELECT table_name, merged_key, rule FROM handover_meta.merge_map WHERE run_id=%s",
            (both["runs"]["telco_b"],),
        ).fetchall()
    # excluded rows were destroyed at the run's end: the books hold their keys hashed
    x = unhash_book_keys(both["keyring"], x, set(zip(truth.table, truth.key, strict=True)))
    got = {(t, k): ("quarantined", r) for t, k, r in q}
    got.update({(t, k): ("excluded", r) for t, k, r in x})
    got.update({(t, k): ("merged", r) for t, k, r in m})
    expected = {
        (r.table, r.key): (r.expected_outcome, r.expected_reason)
        for r in truth.itertuples()
        if r.expected_outcome != "loaded"
    }

    assert expected
    wrong = sorted(
        (k, expected.get(k), got.get(k))
        for k in set(got) | set(expected)
        if got.get(k) != expected.get(k)
    )[:5]
    assert wrong == []


# The target columns whose values do not depend on keys or on the source table's name
# (blind indexes and ciphertext are keyed by "<source table>.<field>").
def _comparable(conn, table: str) -> list[str]:
    cols = [
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema='crm' AND "
            "table_name=%s ORDER BY ordinal_position",
            (table,),
        )
    ]
    return [c for c in cols if not re.search(r"_(enc|key_id|bidx)$", c)]


def test_both_targets_hold_the_same_customers_and_records(both):
    tables = [
        "customer",
        "consent",
        "call_record",
        "data_session",
        "payment",
        "complaint",
        "browsing_event",
    ]
    with (
        psycopg.connect(pg_dsn(both["targets"]["legacy_bss"])) as a,
        psycopg.connect(pg_dsn(both["targets"]["telco_b"])) as b,
    ):
        for table in tables:
            cols = _comparable(a, table)
            select = f"SELECT {', '.join(cols)} FROM crm.{table} ORDER BY 1"
            left, right = a.execute(select).fetchall(), b.execute(select).fetchall()
            if table == "complaint":  # telco_b's agents broke texts into lines
                i = cols.index("body")
                right = [
                    r[:i] + ((r[i] or "").replace("\n", "") or None,) + r[i + 1 :] for r in right
                ]
            assert len(left) == len(right) > 0, table
            assert left == right, table


def test_the_same_dag_and_library_serve_both_profiles(both):
    """No code branches on a profile: only the generators (synth_b writes telco_b's export,
    synth_c derives another from it) name it, and both runs went through the same stages
    for every table."""
    library = [
        p for p in (ROOT / "include" / "handover").glob("*.py") if not p.name.startswith("synth_")
    ]
    dags = list((ROOT / "dags").glob("*.py"))
    mentions = [p.name for p in library + dags if "telco_b" in p.read_text(encoding="utf-8")]
    assert mentions == []

    stages = {}
    for system in SYSTEMS:
        with psycopg.connect(pg_dsn(both["targets"][system])) as conn:
            stages[system] = sorted(
                {
                    r[0]
                    for r in conn.execute(
                        "SELECT stage FROM handover_meta.ledger WHERE run_id=%s",
                        (both["runs"][system],),
                    )
                }
            )
            gates = conn.execute(
                "SELECT DISTINCT gate FROM handover_meta.gate_result WHERE run_id=%s AND success",
                (both["runs"][system],),
            ).fetchall()
            assert {g for (g,) in gates} == {
                "intake",
                "compliance",
                "quality",
                "contract",
                "reconciliation",
            }
    assert (
        stages["legacy_bss"] == stages["telco_b"] == ["cleanse", "comply", "extract", "load", "map"]
    )


def test_check_passes_on_telco_b(both, capsys):
    result = run_check("telco_b", both["sources"]["telco_b"], rows=400)
    assert result.problems == []
    assert result.rows_read["payment_log"] == 400

    code = cli.main(
        [
            "check",
            "--system",
            "telco_b",
            "--source-dir",
            str(both["sources"]["telco_b"]),
            "--rows",
            "200",
        ]
    )
    assert code == 0
    assert "check passed for telco_b" in capsys.readouterr().err


def _without_column(tmp_path: Path, column: str, *, everywhere: bool) -> Path:
    """A copy of telco_b's config with `column` left out of the catalog (and, if
    `everywhere`, out of the mapping and cleansing rules that name it)."""
    folder = tmp_path / "telco_b"
    shutil.copytree(CONFIG_ROOT / "telco_b", folder)
    edits = {"catalog.yaml": [f"      {column}: {{level: L2, pii: none}}\n"]}
    if everywhere:
        edits["mapping.yaml"] = [f"      satisfaction: {{from: {column}}}\n"]
        edits["cleansing.yaml"] = [f"    integers: [{column}]\n"]
    for name, lines in edits.items():
        text = (folder / name).read_text(encoding="utf-8")
        for line in lines:
            assert text.count(line) == 1, (name, line)
            text = text.replace(line, "")
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_check_names_a_column_left_out_of_the_catalog(both, tmp_path):
    folder = _without_column(tmp_path, "满意度", everywhere=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "include"), "PYTHONWARNINGS": "ignore"}

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "handover.ops.check",
            "--system",
            str(folder),
            "--source-dir",
            str(both["sources"]["telco_b"]),
            "--rows",
            "300",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )

    assert proc.returncode != 0, proc.stderr
    unclassified = [line for line in proc.stdout.splitlines() if "unclassified" in line]
    assert len(unclassified) == 1, proc.stdout
    assert unclassified[0].startswith(
        f"{folder / 'catalog.yaml'}: table complaint_ticket column 满意度: found in "
    )


def test_check_names_a_catalogue_gap_the_mapping_still_uses(both, tmp_path, capsys):
    folder = _without_column(tmp_path, "满意度", everywhere=False)

    code = cli.main(
        ["check", "--system", str(folder), "--source-dir", str(both["sources"]["telco_b"])]
    )
    out = capsys.readouterr().out.strip().splitlines()

    assert code == 1
    # every place that still uses the column, in one run: cleansing, then mapping
    assert len(out) == 2, out
    assert all("column '满意度' is not in catalog table complaint_ticket" in o for o in out)
    assert out[0].startswith(str(folder / "cleansing.yaml") + " line ")
    assert out[1].startswith(str(folder / "mapping.yaml") + " line ")


def test_check_counts_type_problems_and_codes_without_a_lookup(both, tmp_path):
    folder = tmp_path / "telco_b"
    shutil.copytree(CONFIG_ROOT / "telco_b", folder)
    for name, old, new in (
        ("cleansing.yaml", '开户日期: "%Y%m%d"', '开户日期: "%Y-%m-%d"'),
        ("mapping.yaml", ' "银行": bank,', ""),
    ):
        text = (folder / name).read_text(encoding="utf-8")
        assert text.count(old) == 1
        (folder / name).write_text(text.replace(old, new), encoding="utf-8")

    result = run_check(str(folder), both["sources"]["telco_b"], rows=200)

    dates = [p for p in result.problems if "column 开户日期" in p]
    codes = [p for p in result.problems if "column pay_channel" in p]
    shares = [p for p in result.problems if "would quarantine" in p]
    assert len(dates) == 1 and "(100.0%) do not match date format '%Y-%m-%d'" in dates[0]
    assert dates[0].startswith(f"{folder / 'cleansing.yaml'}: table cust_profile ")
    assert len(codes) == 1 and "without a lookup entry, e.g. '银行'" in codes[0]
    assert codes[0].startswith(f"{folder / 'mapping.yaml'}: table payment_log ")
    # the dry run of the rules: the wrong format would quarantine the whole table
    assert len(shares) == 1 and "table cust_profile" in shares[0]
    assert "INVALID_DATE 开户日期" in shares[0] and "max_quarantine_share" in shares[0]
    assert len(result.problems) == 3, result.problems


@pytest.mark.parametrize("system", SYSTEMS)
def test_scaffolded_suites_agree_with_what_the_stages_write(both, system, tmp_path):
    """scripts/scaffold_suites.py writes, from the four config files alone, suites that
    pass on what a good run's stages wrote (the mapping's casts and lookups included): a
    newcomer's first run does not fail on its own scaffolding."""
    import importlib.util

    from handover.flows.migration import GATE_INPUT, META
    from handover.gates.validate import run_gate
    from handover.storage.lake import lake_from_url, safe_run_id

    spec = importlib.util.spec_from_file_location(
        "scaffold", ROOT / "scripts" / "scaffold_suites.py"
    )
    scaffold = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scaffold)
    for (gate, table), expectations in scaffold.suites(system).items():
        path = tmp_path / gate / f"{table}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps({"name": f"{gate}.{table}", "expectations": expectations}), encoding="utf-8"
        )
    lake = lake_from_url()
    run = safe_run_id(both["runs"][system])
    checked = 0
    for gate, stage in GATE_INPUT.items():
        for table in load_config(system).tables:
            for key in lake.list(f"runs/{run}/{stage}/{table}/"):
                df = lake.read_table(key).to_pandas()
                df = df.drop(columns=[c for c in META if c in df.columns])
                result = run_gate(
                    df,
                    gate=gate,
                    table=table,
                    partition=key.rsplit("/", 1)[-1],
                    run_id=run,
                    suites_dir=tmp_path,
                    docs_dir=None,
                )
                assert result.success, (gate, table, result.summary())
                checked += 1
    assert checked >= 4 * len(load_config(system).tables)
