"""Retention and destruction after a real migration and a backup, on the real PostgreSQL.

The records past retention are worked out here from the legacy export itself (not by
the code under test); after the destruction run, the target, the books, every lake
object and every backup are searched for them and none is readable; the certificate
lists them only as keyed hashes, with counts, bound to the audit trail by its sha256.
Versioned S3 is covered against a real endpoint (moto server): no old object version
keeps a destroyed row, and a destroyed data key has no version left.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import unicodedata
import uuid
from datetime import date
from pathlib import Path

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from handover.config.loader import load_config
from handover.db.ledger import verify_audit_chain
from handover.flows.runner import run_migration
from handover.lifecycle import backup, retention, subject
from handover.protection.fields import Keyring
from handover_synth import legacy_bss as synth
from tests.conftest import create_database, drop_database, lake_connection, pg_dsn

pytestmark = pytest.mark.integration
AS_OF = date(2027, 6, 1)


def migrated_copy(request, tmp_path_factory, prefix: str) -> dict:
    """A target database and lake holding one whole migration, private to the caller.

    The migration runs once per test session into a template; each lifecycle test module
    gets a clone (CREATE DATABASE ... TEMPLATE, a copy of the lake), so the three modules
    pay for one migration, not three. The caller drops `dsn`'s database when done. (Kept
    on the pytest config: this module may be imported under two names.)"""
    if not hasattr(request.config, "_handover_lifecycle_template"):
        request.config._handover_lifecycle_template = {}
    _TEMPLATE = request.config._handover_lifecycle_template
    if not _TEMPLATE:
        root = tmp_path_factory.mktemp("lifecycle_template")
        synth.generate(root / "source", 250, seed=33)
        keys = root / "keys.json"
        keys.write_text(json.dumps(Keyring.generate("k-life-1")))
        db = create_database("handover_lc_tpl")
        request.config.add_cleanup(lambda: drop_database(db))
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HANDOVER_TARGET_DSN", pg_dsn(db))
            mp.setenv("HANDOVER_LAKE_URL", f"file://{root / 'lake'}")
            mp.setenv("HANDOVER_KEYRING_FILE", str(keys))
            for var in (
                "AIRFLOW_CONN_HANDOVER_KEYS",
                "AIRFLOW_CONN_HANDOVER_TARGET",
                "AIRFLOW_CONN_HANDOVER_LAKE",
            ):
                mp.delenv(var, raising=False)
            run_migration(run_id=f"lc_{uuid.uuid4().hex[:6]}", source_dir=str(root / "source"))
        _TEMPLATE.update(db=db, root=root, keys=keys)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{_TEMPLATE["db"]}"')
    root = tmp_path_factory.mktemp(prefix)
    shutil.copytree(_TEMPLATE["root"] / "lake", root / "lake")
    return {
        "db": name,
        "dsn": pg_dsn(name),
        "root": root,
        "lake": root / "lake",
        "source": _TEMPLATE["root"] / "source",
        "keys": _TEMPLATE["keys"],
        "ring": Keyring.from_dict(json.loads(_TEMPLATE["keys"].read_text())),
    }


def lifecycle_env(request, tmp_path_factory, prefix: str):
    """migrated_copy with the process environment pointing at it; yields the dict."""
    env = migrated_copy(request, tmp_path_factory, prefix)
    mp = pytest.MonkeyPatch()
    mp.setenv("HANDOVER_TARGET_DSN", env["dsn"])
    mp.setenv("HANDOVER_LAKE_URL", f"file://{env['lake']}")
    mp.setenv("HANDOVER_KEYRING_FILE", str(env["keys"]))
    for var in (
        "AIRFLOW_CONN_HANDOVER_KEYS",
        "AIRFLOW_CONN_HANDOVER_TARGET",
        "AIRFLOW_CONN_HANDOVER_LAKE",
    ):
        mp.delenv(var, raising=False)
    try:
        yield env
    finally:
        mp.undo()
        drop_database(env["db"])


def norm(value) -> str:
    return unicodedata.normalize("NFKC", str(value)).strip()


def search_everywhere(
    dsn: str, lake_root: Path, ring: Keyring, values: set[str], substrings: set[str] = frozenset()
) -> dict:
    """Where any of `values` (exact, after NFKC + trim) or `substrings` is still readable:
    crm and handover_meta text columns, audit details, every Parquet and JSON object of
    the lake, and every backup file whose data key still exists."""
    hits: dict = {"db": [], "lake": [], "backups": [], "unreadable_backup_files": 0}
    needles = pa.array(sorted(values), pa.string())

    def found_in(col) -> bool:
        col = col.cast(pa.string())
        normed = pc.utf8_trim_whitespace(pc.utf8_normalize(col, "NFKC"))
        if pc.any(pc.is_in(normed, value_set=needles)).as_py():
            return True
        return any(pc.any(pc.match_substring(col, s)).as_py() for s in substrings)

    with psycopg.connect(dsn) as conn:
        cols = conn.execute(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns "
            "WHERE table_schema IN ('crm', 'handover_meta') AND data_type IN ('text', "
            "'character varying', 'jsonb') AND table_name IN (SELECT table_name FROM "
            "information_schema.tables WHERE table_type = 'BASE TABLE')"
        ).fetchall()
        for schema, table, column in cols:
            texts = [
                r[0]
                for r in conn.execute(
                    f'SELECT "{column}"::text FROM "{schema}"."{table}" WHERE "{column}" IS NOT NULL'
                )
            ]
            if texts and found_in(pa.array(texts, pa.string())):
                hits["db"].append(f"{schema}.{table}.{column}")
    reader = backup.LocalLake(lake_root)  # stage objects are encrypted: read with the keys
    for path in lake_root.rglob("*"):
        if path.suffix == ".parquet":
            assert path.read_bytes()[-4:] == b"PARE", f"{path}: plain Parquet in the lake"
            tbl = reader.read_table(str(path.relative_to(lake_root)))
            for name in tbl.column_names:
                if pa.types.is_string(tbl[name].type) and found_in(tbl[name].combine_chunks()):
                    hits["lake"].append(f"{path.relative_to(lake_root)}:{name}")
        elif path.suffix == ".json":
            text = path.read_text(errors="ignore")
            if any(v in text for v in values | set(substrings)):
                hits["lake"].append(str(path.relative_to(lake_root)))
    lake = backup.LocalLake(lake_root)
    for manifest in (lake_root / "backups").glob("*/manifest.json"):
        bid = manifest.parent.name
        for entry in json.loads(manifest.read_text())["files"]:
            tbl = backup.read_backup_table(lake, ring, bid, entry["file"])
            if tbl is None:
                hits["unreadable_backup_files"] += 1
                continue
            for name in tbl.column_names:
                if pa.types.is_string(tbl[name].type) and found_in(tbl[name].combine_chunks()):
                    hits["backups"].append(f"{bid}/{entry['file']}:{name}")
    return hits


def expired_in_source(source: Path, as_of: date) -> dict[str, set[str]]:
    """Keys past retention at `as_of`, from the legacy export and policy.yaml alone."""
    cfg = load_config("legacy_bss")
    out = {}
    for table in cfg.tables:
        spec = cfg.table(table)
        months = cfg.category_policy(table).get("retention_months")
        if not (months and spec.get("event_time")):
            continue
        df = pd.read_csv(source / f"{table}.csv", dtype=str, keep_default_na=False)
        fmt = cfg.rules(table)["dates"][spec["event_time"]]
        ts = pd.to_datetime(df[spec["event_time"]].map(norm), format=fmt, errors="coerce")
        cutoff = pd.Timestamp(as_of) - pd.DateOffset(months=months)
        keys = {norm(k) for k in df.loc[(ts < cutoff).fillna(False), spec["key"]]}
        out[table] = {k for k in keys if k}
    return out


@pytest.fixture(scope="module")
def env(request, tmp_path_factory):
    for env in lifecycle_env(request, tmp_path_factory, "handover_ret"):
        taken = backup.run_backup(reason="scheduled")  # holds data that is about to expire
        # two data-subject requests waiting for their runs, one submitted 31 days ago
        for rid in ("REQ-stale", "REQ-fresh"):
            subject.submit_request(rid, "access", "customer_id", "C00000001")
        with psycopg.connect(env["dsn"]) as conn:
            before = conn.execute("SELECT count(*) FROM crm.browsing_event").fetchone()[0]
            conn.execute(
                "UPDATE handover_meta.subject_intake SET submitted_at = now() - "
                "interval '31 days' WHERE request_id = 'REQ-stale'"
            )
        out = retention.run_retention(as_of=AS_OF, run_id="retention_test")
        yield {**env, "out": out, "backup_id": taken["backup_id"], "events_before": before}


def test_nothing_destroyed_is_readable_anywhere(env):
    expected = expired_in_source(env["source"], AS_OF)
    values = set().union(*expected.values())
    assert len(expected["browsing_events"]) > 20 and expected["call_records"]
    hits = search_everywhere(env["dsn"], env["lake"], env["ring"], values)
    assert hits["db"] == [] and hits["lake"] == [] and hits["backups"] == []
    # crypto-shredded, not deleted (the books' copies of excluded keys were keyed hashes
    # already: the migration's end destroyed those rows, so no books file needed it)
    assert hits["unreadable_backup_files"] >= 1
    # ... and only what expired went: recent browsing events are still in the target.
    with psycopg.connect(env["dsn"]) as conn:
        left = conn.execute("SELECT count(*) FROM crm.browsing_event").fetchone()[0]
        oldest = conn.execute("SELECT min(occurred_at) FROM crm.browsing_event").fetchone()[0]
    deleted = env["out"]["target"]["target_rows_deleted"]["browsing_events"]
    assert 0 < left == env["events_before"] - deleted
    assert oldest.date() >= date(2026, 6, 1)


def test_certificate_lists_hashed_keys_counts_and_is_in_the_audit_trail(env):
    expected = expired_in_source(env["source"], AS_OF)
    cert_key = env["out"]["certificate"]["lake_key"]
    body = (env["lake"] / cert_key).read_bytes()
    cert = json.loads(body)
    listed = {(i["table"], i["key_hmac"]) for i in cert["keys"]["items"]}
    # what the migration excluded (past retention at the export, no consent) was
    # destroyed at its end, under its own certificate; this one lists what came due since
    with psycopg.connect(env["dsn"]) as conn:
        ended = {
            (t, k.removeprefix(retention.DESTROYED))
            for t, k in conn.execute(
                "SELECT table_name, record_key FROM handover_meta.exclusion"
            ).fetchall()
        }
    for table, keys in expected.items():
        for k in keys:
            if (table, retention.key_digest(env["ring"], table, k)) in ended:
                continue  # excluded by the migration (past retention, no consent)
            assert (table, retention.key_digest(env["ring"], table, k)) in listed, table
    lines = "\n".join(f"{t}\t{d}" for t, d in sorted(listed)).encode()
    assert cert["keys"]["list_sha256"] == hashlib.sha256(lines).hexdigest()
    assert cert["keys"]["count"] == len(listed)
    text = body.decode()
    assert not any(k in text for keys in expected.values() for k in keys)  # hashes only
    counts = cert["counts"]
    assert counts["target_rows_deleted"]["browsing_events"] > 0
    # the migration's working set had expired by AS_OF: destroyed whole, keys first
    assert counts["lake_working_sets_destroyed"] >= 1 and counts["lake_scope_keys_shredded"]
    # (book keys: the migration's end had already replaced every excluded key by its
    # keyed hash; test_nothing_destroyed_is_readable_anywhere searches the books)
    assert counts["backup_files_shredded"] >= 1
    assert {d["backup_id"] for d in cert["destroyed_data_keys"]} == {env["backup_id"]}
    assert all(d["data_key_id"].startswith("dk_") for d in cert["destroyed_data_keys"])
    # (excluded rows are destroyed at the end of the run that excluded them, so none is
    # left due here: no EXCLUSION_DESTROY_BY_DUE rule)
    assert "RETENTION_BEHAVIOURAL_12M" in {r["rule"] for r in cert["rules"]}
    assert "EXCLUSION_DESTROY_BY_DUE" not in {r["rule"] for r in cert["rules"]}
    assert cert["verification"]["remaining_in_lake"] == 0
    with psycopg.connect(env["dsn"]) as conn:
        audit = conn.execute(
            "SELECT detail FROM handover_meta.audit_log WHERE action = "
            "'destruction_certified' ORDER BY id DESC LIMIT 1"
        ).fetchone()[0]
        status = conn.execute(
            "SELECT status FROM handover_meta.backup WHERE backup_id = %s", (env["backup_id"],)
        ).fetchone()[0]
        intact, _ = verify_audit_chain(conn)
    assert audit["certificate_sha256"] == hashlib.sha256(body).hexdigest()
    assert audit["key_list_sha256"] == cert["keys"]["list_sha256"]
    assert set(audit["data_key_ids"]) == {d["data_key_id"] for d in cert["destroyed_data_keys"]}
    assert status == "shredded" and intact
    assert not list((env["lake"] / "lifecycle").rglob("*.parquet"))  # the plan is gone


def test_rerun_finds_nothing_more(env):
    again = retention.run_retention(as_of=AS_OF, run_id="retention_test_again")
    assert again["target"]["target_rows_deleted"] == {}
    assert again["lake"]["lake_objects_rewritten"] == 0
    assert again["shred"]["backup_files_shredded"] == 0


def test_s3_object_versions_and_data_keys_leave_nothing(moto_server, monkeypatch):
    """On a versioned bucket a rewrite deletes the old versions; a shred deletes them all."""
    monkeypatch.setenv("AIRFLOW_CONN_HANDOVER_LAKE", lake_connection(moto_server))
    bucket = f"ret-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("HANDOVER_LAKE_URL", f"s3://{bucket}/lake")
    lake = backup.lake_from_url()
    lake.ensure_bucket()
    lake.client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    key = "runs/r1/raw/call_records/part-p00.parquet"
    rows = {
        "cdr_id": ["R1", "R2", "R3"],
        "cust_id": ["C1", "C1", "C2"],
        "start_time": ["2020-01-01 00:00:00"] * 3,
    }
    lake.write_table(key, pa.table(rows))
    lake.write_table(key, pa.table(rows))  # a second version with the same rows
    out = retention.destroy_in_lake({"call_records": {"R2"}}, {"C2"}, system="legacy_bss")
    assert out["lake_rows_deleted"] == {"call_records": 2}
    assert out["lake_old_versions_deleted"] == 2
    versions = lake.client.list_object_versions(Bucket=bucket, Prefix=f"lake/{key}")
    assert len(versions.get("Versions", [])) == 1
    assert lake.read_table(key)["cdr_id"].to_pylist() == ["R1"]

    kobj = backup.key_object("bk1", "crm.customer.parquet.enc")
    lake.write_json(kobj, {"wrapped": "a"})
    lake.write_json(kobj, {"wrapped": "b"})
    lake.delete_prefix(kobj)  # a plain delete leaves the versions behind a marker...
    assert backup.purge(lake, kobj, exact=True) == 3  # ...purge removes all of them
    left = lake.client.list_object_versions(Bucket=bucket, Prefix=f"lake/{kobj}")
    assert not left.get("Versions") and not left.get("DeleteMarkers")


def test_a_subject_request_left_waiting_loses_its_seal(env):
    """Data minimisation for requests whose run failed and was left: the retention run
    clears seals older than intake.INTAKE_DAYS, audited; a recent one keeps its seal."""
    assert env["out"]["found"]["stale_subject_intakes_cleared"] == 1
    with psycopg.connect(env["dsn"]) as conn:
        sealed = dict(
            conn.execute(
                "SELECT request_id, sealed IS NOT NULL FROM handover_meta.subject_intake"
            ).fetchall()
        )
        audited = conn.execute(
            "SELECT detail FROM handover_meta.audit_log WHERE action = 'subject_intake_expired'"
        ).fetchall()
    assert sealed == {"REQ-stale": False, "REQ-fresh": True}
    assert [a[0]["request_ids"] for a in audited] == [["REQ-stale"]]
