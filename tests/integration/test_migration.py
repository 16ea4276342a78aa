"""The whole migration, in one process, on the machine's real PostgreSQL.

Proves the spine's promises without a scheduler: the ledger balances, every injected
defect is caught with the right reason and no clean row is (precision and recall
100 %), reruns change nothing, bad config or input stops before the target is touched,
and no PII reaches reports, gate results or validation docs.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from handover.config.loader import CONFIG_ROOT, ConfigError
from handover.db.load import table_checksum
from handover.flows import migration as pipeline
from handover.flows import partitioner
from handover.flows.runner import run_migration
from handover.lifecycle.retention import DESTROYED, key_digest
from handover.protection.fields import Keyring, decrypt_value
from handover.storage.lake import safe_run_id
from handover_synth import legacy_bss as synth
from tests.conftest import create_database, drop_database, pg_dsn

pytestmark = pytest.mark.integration
SUBSCRIBERS = 2000


@pytest.fixture(scope="module")
def env(target_db, keyring_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("migration")
    source = root / "source"
    synth.generate(source, SUBSCRIBERS, seed=7)
    mp = pytest.MonkeyPatch()
    mp.setenv("HANDOVER_TARGET_DSN", pg_dsn(target_db))
    mp.setenv("HANDOVER_LAKE_URL", f"file://{root / 'lake'}")
    mp.setenv("HANDOVER_KEYRING_FILE", str(keyring_file))
    mp.delenv("AIRFLOW_CONN_HANDOVER_KEYS", raising=False)
    mp.delenv("AIRFLOW_CONN_HANDOVER_TARGET", raising=False)
    run_id = f"it_{uuid.uuid4().hex[:6]}"
    out = run_migration(run_id=run_id, source_dir=str(source))
    yield {
        "root": root,
        "source": source,
        "run_id": run_id,
        "dsn": pg_dsn(target_db),
        "out": out,
        "keyring": keyring_file,
    }
    mp.undo()


def _checksums(dsn: str) -> dict[str, tuple[int, str]]:
    cfg = pipeline._config("legacy_bss")
    with psycopg.connect(dsn) as conn:
        return {
            t: table_checksum(
                conn, "crm", cfg.table_mapping(t)["target"], cfg.table_mapping(t)["key"]
            )
            for t in cfg.tables
        }


def test_every_table_balances(env):
    manifest = json.loads((env["source"] / "export_manifest.json").read_text())
    with psycopg.connect(env["dsn"]) as conn:
        rows = conn.execute(
            "SELECT table_name, source_rows, loaded, quarantined, excluded, target_rows, "
            "balanced, merged FROM handover_meta.reconciliation WHERE run_id=%s",
            (env["run_id"],),
        ).fetchall()
    assert len(rows) == 7
    for table, n, loaded, q, x, target_rows, balanced, m in rows:
        assert n == manifest["tables"][table]["rows"], table
        assert n == loaded + m + q + x, table
        assert target_rows == loaded, table
        assert balanced, table


def test_truth_file_precision_and_recall(env):
    truth = pd.read_csv(env["source"] / "truth.csv", dtype=str, keep_default_na=False)
    with psycopg.connect(env["dsn"]) as conn:
        q = conn.execute(
            "SELECT table_name, record_key, reason FROM handover_meta.quarantine WHERE run_id=%s",
            (env["run_id"],),
        ).fetchall()
        x = conn.execute(
            "SELECT table_name, record_key, rule_id FROM handover_meta.exclusion WHERE run_id=%s",
            (env["run_id"],),
        ).fetchall()
        m = conn.execute(
            "SELECT table_name, merged_key, rule FROM handover_meta.merge_map WHERE run_id=%s",
            (env["run_id"],),
        ).fetchall()
    got = {(t, k): ("quarantined", r) for t, k, r in q}
    got.update({(t, k): ("excluded", r) for t, k, r in x})
    got.update({(t, k): ("merged", r) for t, k, r in m})
    # Excluded rows are destroyed at the run's end; the books keep their keys only as
    # keyed hashes (retention.key_digest), under which they are compared here.
    ring = Keyring.from_dict(json.loads(Path(env["keyring"]).read_text()))
    expected = {
        (
            r.table,
            r.key
            if r.expected_outcome != "excluded"
            else DESTROYED + key_digest(ring, r.table, r.key),
        ): (r.expected_outcome, r.expected_reason)
        for r in truth.itertuples()
        if r.expected_outcome != "loaded"
    }
    assert expected, "the synthetic operator injected no defects"
    true_pos = {k for k in expected if got.get(k) == expected[k]}
    precision = len(true_pos) / len(got)
    recall = len(true_pos) / len(expected)
    wrong = sorted((k, expected.get(k), got.get(k)) for k in set(got) ^ true_pos)[:5]
    assert (precision, recall) == (1.0, 1.0), wrong


def test_repaired_defects_are_loaded_clean(env):
    truth = pd.read_csv(env["source"] / "truth.csv", dtype=str, keep_default_na=False)
    fullwidth = truth.loc[truth.defect == "FULLWIDTH_MSISDN", "key"].tolist()
    pii_text = truth.loc[truth.defect == "PII_IN_TEXT", "key"].tolist()
    assert fullwidth and pii_text
    with psycopg.connect(env["dsn"]) as conn:
        msisdns = [
            r[0]
            for r in conn.execute(
                "SELECT msisdn FROM crm.customer WHERE customer_id = ANY(%s)", (fullwidth,)
            )
        ]
        bodies = [
            r[0]
            for r in conn.execute(
                "SELECT body FROM crm.complaint WHERE complaint_id = ANY(%s)", (pii_text,)
            )
        ]
    assert len(msisdns) == len(fullwidth)
    assert all(len(m) == 11 and m.isdigit() for m in msisdns)
    assert len(bodies) == len(pii_text)
    assert all("[手机号]" in b or "[身份证号]" in b for b in bodies)
    source = pd.read_csv(env["source"] / "subscribers.csv", dtype=str)
    for body in bodies:
        assert not any(i in body for i in source["id_number"].head(500))


def test_resident_ids_only_encrypted(env):
    source = pd.read_csv(env["source"] / "subscribers.csv", dtype=str).set_index("cust_id")
    ring = Keyring.from_dict(json.loads(Path(env["keyring"]).read_text()))
    with psycopg.connect(env["dsn"]) as conn:
        dump = conn.execute("SELECT t::text FROM crm.customer t LIMIT 300").fetchall()
        sample = conn.execute(
            "SELECT customer_id, id_number_enc, id_number_key_id, "
            "id_number_masked FROM crm.customer LIMIT 50"
        ).fetchall()
    text = "\n".join(r[0] for r in dump)
    assert not any(i in text for i in source["id_number"])
    for cid, enc, kid, masked in sample:
        plain = decrypt_value(enc, kid, ring, aad=b"customer.id_number")
        assert plain == source.loc[cid, "id_number"].strip().upper()
        assert masked == plain[:3] + "*" * 11 + plain[-4:]


def test_no_pii_in_reports_gate_results_or_docs(env):
    source = pd.read_csv(env["source"] / "subscribers.csv", dtype=str)
    secrets = set(source["id_number"].dropna()) | set(source["msisdn"].dropna())
    secrets |= {n for n in source["name"].dropna() if len(n.strip()) == 3}
    lake_run = env["root"] / "lake" / "runs" / env["run_id"]
    texts = [
        p.read_text(errors="ignore")
        for sub in ("reports", "docs", "reconcile")
        for p in (lake_run / sub).rglob("*")
        if p.is_file()
    ]
    with psycopg.connect(env["dsn"]) as conn:
        texts += [
            r[0]
            for r in conn.execute(
                "SELECT failed::text FROM handover_meta.gate_result WHERE run_id=%s",
                (env["run_id"],),
            )
        ]
        texts += [r[0] for r in conn.execute("SELECT detail::text FROM handover_meta.audit_log")]
    assert len(texts) > 20
    blob = "\n".join(texts)
    leaked = [s for s in secrets if s and s in blob]
    assert leaked == []


def test_rerun_whole_migration_and_one_load_leave_target_identical(env):
    before = _checksums(env["dsn"])
    run_migration(run_id=f"{env['run_id']}_again", source_dir=str(env["source"]))
    assert _checksums(env["dsn"]) == before
    ctx = env["out"]["ctx"]
    part = {"table": "call_records", "partition": "p00"}
    stats = pipeline.load_partition(ctx, part)
    assert stats["inserted"] == 0 and stats["updated"] == 0 and stats["unchanged"] > 0
    assert _checksums(env["dsn"]) == before


def test_audit_trail_is_append_only_and_chained(env):
    from handover.db.ledger import verify_audit_chain

    with psycopg.connect(env["dsn"]) as conn:
        intact, n = verify_audit_chain(conn)
        assert intact and n >= 3
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("UPDATE handover_meta.audit_log SET actor='x'")
        conn.rollback()
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("DELETE FROM handover_meta.audit_log")


def _empty_target(monkeypatch):
    name = create_database("handover_untouched")
    monkeypatch.setenv("HANDOVER_TARGET_DSN", pg_dsn(name))
    return name


def _has_meta_schema(name: str) -> bool:
    with psycopg.connect(pg_dsn(name)) as conn:
        return (
            conn.execute(
                "SELECT count(*) FROM information_schema.schemata WHERE "
                "schema_name IN ('handover_meta', 'crm')"
            ).fetchone()[0]
            > 0
        )


def test_bad_config_stops_before_touching_target(env, tmp_path, monkeypatch):
    name = _empty_target(monkeypatch)
    try:
        bad = tmp_path / "broken_bss"
        shutil.copytree(CONFIG_ROOT / "legacy_bss", bad)
        mapping = bad / "mapping.yaml"
        mapping.write_text(
            mapping.read_text().replace("{from: gender, lookup:", "{from: gender, lookpu:")
        )
        with pytest.raises(ConfigError) as err:
            pipeline.plan_run(
                run_id="bad1", dag_id="t", system=str(bad), source_dir=str(env["source"])
            )
        message = str(err.value)
        assert "mapping.yaml line" in message and "lookpu" in message
        assert "did you mean 'lookup'" in message and "\n" not in message
        assert not _has_meta_schema(name)
    finally:
        drop_database(name)


def test_missing_input_file_stops_before_touching_target(env, tmp_path, monkeypatch):
    name = _empty_target(monkeypatch)
    try:
        src = tmp_path / "export"
        shutil.copytree(env["source"], src)
        (src / "payments.csv").unlink()
        with pytest.raises(pipeline.SourceError) as err:
            pipeline.plan_run(run_id="bad2", dag_id="t", system="legacy_bss", source_dir=str(src))
        assert "payments.csv" in str(err.value) and "not found" in str(err.value)
        assert not _has_meta_schema(name)
    finally:
        drop_database(name)


def test_reconcile_catches_a_tampered_target_and_recovers(env):
    """Each reconciliation check can fail alone: a changed field, a changed amount, a row
    gone and a row nobody sent are each counted; reloading (and removing the stray row)
    balances the table again. Runs last in this module: it restores what it changes."""
    ctx = env["out"]["ctx"]
    with psycopg.connect(env["dsn"], autocommit=True) as conn:
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT cdr_id FROM crm.call_record ORDER BY cdr_id LIMIT 3"
            ).fetchall()
        ]
        conn.execute("UPDATE crm.call_record SET cell_id = 'tampered' WHERE cdr_id = %s", (ids[0],))
        conn.execute(
            "UPDATE crm.call_record SET charge_fen = charge_fen + 7 WHERE cdr_id = %s", (ids[1],)
        )
        conn.execute("DELETE FROM crm.call_record WHERE cdr_id = %s", (ids[2],))
        conn.execute(
            "INSERT INTO crm.call_record SELECT (jsonb_populate_record("
            'NULL::crm.call_record, to_jsonb(c) || \'{"cdr_id": "STRAY-1"}\')).* '
            "FROM crm.call_record c WHERE cdr_id = %s",
            (ids[0],),
        )
    pipeline.reconcile_table(ctx, "call_records")
    with psycopg.connect(env["dsn"]) as conn:
        row = conn.execute(
            "SELECT missing_keys, field_mismatches, money_source - money_target, target_rows - "
            "loaded, balanced FROM handover_meta.reconciliation WHERE run_id=%s AND "
            "table_name='call_records'",
            (env["run_id"],),
        ).fetchone()
    missing, mismatched, money_diff, surplus, balanced = row
    assert missing == 1
    assert mismatched == 2, "the changed cell and the changed charge"
    assert money_diff != 0
    assert surplus == 0, "one row gone, one stray row: the count alone would not tell"
    assert not balanced
    report = json.loads(
        (
            env["root"] / "lake" / "runs" / env["run_id"] / "reconcile" / "call_records.json"
        ).read_text()
    )
    assert report["extra_rows"] == 1 and not report["checks"]["no_extra_rows"]
    assert (
        sum(m["source_fen"] - m["target_fen"] for m in report["money"])
        == report["money_source"] - report["money_target"]
    )

    with psycopg.connect(env["dsn"], autocommit=True) as conn:
        conn.execute("DELETE FROM crm.call_record WHERE cdr_id = 'STRAY-1'")
    for part in [p for p in env["out"]["loaded"] if p["table"] == "call_records"]:
        pipeline.load_partition(ctx, part)
    assert pipeline.reconcile_table(ctx, "call_records")["balanced"]


def test_policy_facts_are_reused_until_an_extract_is_rerun(env):
    ctx = env["out"]["ctx"]
    first = pipeline._policy_facts(ctx["run_id"], ctx["system"], ctx["exported_at"])
    assert pipeline._policy_facts(ctx["run_id"], ctx["system"], ctx["exported_at"]) is first
    with psycopg.connect(env["dsn"], autocommit=True) as conn:  # what a rerun extract does
        conn.execute(
            "UPDATE handover_meta.ledger SET recorded_at = now() WHERE run_id=%s AND "
            "stage='extract' AND table_name='consents'",
            (ctx["run_id"],),
        )
    again = pipeline._policy_facts(ctx["run_id"], ctx["system"], ctx["exported_at"])
    assert again is not first
    assert again.objected == first.objected and again.consented == first.consented


def test_stages_in_slices_equal_stages_whole(env, monkeypatch):
    """Comply, resolve and cleanse working a few rows at a time write the same files,
    registry, ledger, exclusion and quarantine entries as working on whole partitions,
    duplicate keys whose first row sits in an earlier slice included. Runs under a run
    id of its own (the run's raw extract with duplicates added), so the module's run is
    left as it was."""
    import pyarrow as pa

    ctx, lake = env["out"]["ctx"], pipeline._lake()
    run_id = f"{ctx['run_id']}_slices"
    sctx = {**ctx, "run_id": run_id}
    dst = f"runs/{safe_run_id(run_id)}"

    def partition_of(k: str) -> str:
        return k.rsplit("part-", 1)[1].removesuffix(".parquet")

    parts = []
    # Extracted again under the run id of its own: the module's run ended, and its raw
    # copy no longer holds the rows it excluded (destroyed at the run's end).
    for table in ("subscribers", "consents"):  # the parents and the policy facts
        for p in pipeline.extract_table(sctx, table):
            if table == "subscribers":
                parts.append({"table": table, "partition": p["partition"]})
    pipeline.extract_table(sctx, "call_records")
    k = lake.list(f"{dst}/raw/call_records/")[0]
    t = lake.read_table(k)
    # Rows 5, 40 and 41 again at the end: with slices of 37 rows their first copies are
    # two and more slices earlier; one has its key padded, which normalises to the same.
    again = t.take([5, 40, 41]).to_pydict()
    again["cdr_id"][2] = "  " + again["cdr_id"][2] + " "
    lake.write_table(k, pa.concat_tables([t, pa.Table.from_pydict(again, schema=t.schema)]))
    parts.append({"table": "call_records", "partition": partition_of(k)})

    def outputs() -> dict:
        for p in parts:
            pipeline.comply_partition(sctx, p)
        pipeline.resolve_customers(sctx)
        for p in parts:
            pipeline.cleanse_partition(sctx, p)
        out = {}
        with psycopg.connect(env["dsn"]) as conn:
            out["ledger"] = conn.execute(
                "SELECT stage, table_name, partition, rows_in, rows_out, rows_quarantined, "
                "rows_excluded, checksum, detail FROM handover_meta.ledger WHERE run_id=%s "
                "ORDER BY 1, 2, 3",
                (run_id,),
            ).fetchall()
            for what in ("quarantine", "exclusion"):
                out[what] = conn.execute(
                    f"SELECT * FROM handover_meta.{what} WHERE run_id=%s ORDER BY 1, 2, 3, 4, 5",
                    (run_id,),
                ).fetchall()
        out["registry"] = lake.read_table(f"{dst}/resolve/subscribers.parquet").to_pandas()
        for p in parts:
            for stage in ("comply", "comply/_excluded", "cleanse", "cleanse/_quarantine"):
                t = lake.read_table(pipeline.part_key(run_id, stage, p["table"], p["partition"]))
                out[stage, p["table"], p["partition"]] = t.to_pandas()
        return out

    try:
        whole = outputs()
        dup = [r for r in whole["quarantine"] if r[4] == "DUPLICATE_KEY"]
        assert len(dup) == 3, dup  # the later copies
        assert whole["registry"]["duplicate_loser"].sum() > 0
        assert (whole["registry"]["fate"] == "excluded").sum() > 0
        assert len(whole["exclusion"]) > 0
        monkeypatch.setattr(partitioner, "SLICE_ROWS", 37)
        sliced = outputs()
        assert sliced.keys() == whole.keys()
        for k, value in whole.items():
            if isinstance(value, pd.DataFrame):
                pd.testing.assert_frame_equal(sliced[k], value, obj=str(k))
            else:
                assert sliced[k] == value, k
    finally:
        lake.delete_prefix(f"{dst}/")
        with psycopg.connect(env["dsn"], autocommit=True) as conn:
            for t in ("ledger", "quarantine", "exclusion"):
                conn.execute(f"DELETE FROM handover_meta.{t} WHERE run_id=%s", (run_id,))


def test_complaint_text_is_kept_as_written_apart_from_redaction(env):
    """Free text is not NFKC-normalised: a loaded complaint is the source text, trimmed,
    with only its PII replaced by tags (its "，" and "。" stay full-width)."""
    import unicodedata

    from handover.protection.fields import redact_text

    src = pd.read_csv(env["source"] / "complaints.csv", dtype=str, keep_default_na=False)
    src["key"] = [unicodedata.normalize("NFKC", k).strip() for k in src["complaint_id"]]
    src = src.drop_duplicates("key", keep="first")
    with psycopg.connect(env["dsn"]) as conn:
        body = dict(conn.execute("SELECT complaint_id, body FROM crm.complaint").fetchall())
    pairs = [
        (body[k], t.strip())
        for k, t in zip(src["key"], src["text"], strict=True)
        if k in body and t.strip()
    ]
    assert len(pairs) > 100
    assert all(got == redact_text(text) for got, text in pairs)
    assert sum("，" in got for got, _ in pairs) > 10
    assert any("[手机号]" in got or "[身份证号]" in got for got, _ in pairs)


def test_published_data_docs_open_from_the_lake_without_a_cdn(env):
    """The run's Data Docs site in the lake carries its scripts, styles and fonts (publish
    bundles them), so an auditor can open it from the lake or a copy, offline."""
    import re

    docs = env["root"] / "lake" / "runs" / safe_run_id(env["run_id"]) / "docs"
    assert (docs / "vendor" / "jquery" / "dist" / "jquery.min.js").is_file()
    pages = [p for p in docs.rglob("*.html") if "vendor" not in p.relative_to(docs).parts]
    assert len(pages) > 10
    cdn = re.compile(r'(?:src|href)="https?://(?!greatexpectations\.io)[^"]+"')
    assert [p.name for p in pages if cdn.search(p.read_text(encoding="utf-8"))] == []
