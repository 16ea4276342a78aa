"""The S3 lake against a real S3 endpoint over HTTP: moto in server mode on loopback.

No in-process mock: the library talks HTTP to a separate moto process, the way the
Celery workers talk to MinIO or S3. Proves the primitives, that every object is
server-side encrypted, that a big partition takes the multipart path, that failures
say which bucket and key and what to fix, and that the whole migration on the S3 lake
lands exactly what it lands on the local lake.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import boto3
import psycopg
import pyarrow as pa
import pytest
from botocore.config import Config

from handover.flows.runner import run_migration
from handover.storage.lake import LakeError, S3Lake, lake_from_url, s3_client
from handover_synth import legacy_bss as synth
from tests.conftest import (
    ROOT,
    content_checksums,
    create_database,
    drop_database,
    free_port,
    lake_connection,
    pg_dsn,
)

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


@pytest.fixture
def s3_env(moto_server, monkeypatch):
    """The lake connection pointing at moto; a fresh bucket name per test."""
    monkeypatch.setenv("AIRFLOW_CONN_HANDOVER_LAKE", lake_connection(moto_server))
    return {"endpoint": moto_server, "bucket": f"lake-{uuid.uuid4().hex[:10]}"}


def _raw_client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )


def test_put_get_list_and_delete_prefix(s3_env):
    lake = lake_from_url(f"s3://{s3_env['bucket']}/handover")
    assert isinstance(lake, S3Lake)
    assert lake.ensure_bucket() is True
    assert lake.ensure_bucket() is False  # idempotent

    lake.put_bytes("runs/r1/raw/t/part-p00.parquet", b"a")
    lake.put_bytes("runs/r1/raw/t/part-p01.parquet", b"bb")
    lake.put_bytes("runs/r2/raw/t/part-p00.parquet", b"ccc")
    table = pa.table({"k": ["1", "2"], "v": [10, 20]})
    lake.write_table("runs/r1/cleanse/t/part-p00.parquet", table)
    lake.write_json("runs/r1/manifest.json", {"rows": 2})

    assert lake.get_bytes("runs/r1/raw/t/part-p01.parquet") == b"bb"
    assert lake.read_table("runs/r1/cleanse/t/part-p00.parquet").equals(table)
    assert lake.read_json("runs/r1/manifest.json") == {"rows": 2}
    assert lake.exists("runs/r1/raw/t/part-p00.parquet")
    assert not lake.exists("runs/r1/raw/t/part-p09.parquet")
    assert lake.list("runs/r1/raw/") == [
        "runs/r1/raw/t/part-p00.parquet",
        "runs/r1/raw/t/part-p01.parquet",
    ]
    # Keys are stored under the lake's prefix but listed relative to it.
    raw_keys = [
        o["Key"]
        for o in _raw_client(s3_env["endpoint"]).list_objects_v2(Bucket=s3_env["bucket"])[
            "Contents"
        ]
    ]
    data = [k for k in raw_keys if not k.startswith("handover/_keys/")]
    assert all(k.startswith("handover/runs/") for k in data) and len(data) == 5
    # the cleansed partition is encrypted under its stage's key, kept wrapped beside it
    assert raw_keys.count("handover/_keys/runs/r1/cleanse.json") == 1
    assert lake.get_bytes("runs/r1/cleanse/t/part-p00.parquet")[-4:] == b"PARE"
    assert lake.put_if_absent("_keys/runs/r1/cleanse.json", b"{}") is False  # If-None-Match
    assert lake.put_if_absent("runs/r1/once.json", b"1") is True
    lake.delete_prefix("runs/r1/once.json")

    assert lake.delete_prefix("runs/r1/") == 4
    assert lake.list("runs/r1/") == []
    assert lake.list("runs/") == ["runs/r2/raw/t/part-p00.parquet"]
    with pytest.raises(FileNotFoundError, match="is missing"):
        lake.read_table("runs/r1/cleanse/t/part-p00.parquet")
    with pytest.raises(FileNotFoundError, match="is missing"):
        lake.get_bytes("runs/r1/raw/t/part-p00.parquet")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_table_writer_shows_the_object_whole_or_not_at_all(where, s3_env, tmp_path):
    """Comply writes its outputs a slice at a time: the object appears when the writer
    closes and a failure half-way leaves none (nor an earlier complete one half-replaced),
    on the local lake and over HTTP alike."""
    url = f"file://{tmp_path}/lake" if where == "local" else f"s3://{s3_env['bucket']}/h"
    lake = lake_from_url(url)
    if where == "s3":
        lake.ensure_bucket()
    key = "runs/r1/comply/t/part-p00.parquet"
    schema = pa.schema([("k", pa.string()), ("v", pa.int64())])
    with lake.table_writer(key, schema) as out:
        out.write_table(pa.table({"k": ["1", "2"], "v": [1, 2]}, schema=schema))
        assert not lake.exists(key)  # nothing visible before the writer closes
        out.write_table(pa.table({"k": ["3"], "v": [3]}, schema=schema))
    assert lake.read_table(key).to_pydict() == {"k": ["1", "2", "3"], "v": [1, 2, 3]}
    assert lake.schema(key) == schema

    with pytest.raises(RuntimeError, match="half-way"):
        with lake.table_writer(key, schema) as out:
            out.write_table(pa.table({"k": ["9"], "v": [9]}, schema=schema))
            raise RuntimeError("failed half-way")
    assert lake.read_table(key).num_rows == 3  # the earlier object, untouched
    with pytest.raises(RuntimeError):
        with lake.table_writer("runs/r1/comply/t/part-p01.parquet", schema) as out:
            raise RuntimeError("failed before any row")
    assert lake.list("runs/r1/comply/") == [key]
    if where == "local":  # no temporary file left beside the object
        assert [p.name for p in (tmp_path / "lake/runs/r1/comply/t").iterdir()] == [
            "part-p00.parquet"
        ]
    # an empty partition is still a file with its columns
    with lake.table_writer("runs/r1/comply/t/part-p02.parquet", schema):
        pass
    empty = lake.read_table("runs/r1/comply/t/part-p02.parquet")
    assert empty.num_rows == 0 and empty.schema == schema


def test_every_object_is_server_side_encrypted(s3_env):
    """The bucket has no default encryption here, so the header must come from the lake."""
    raw = _raw_client(s3_env["endpoint"])
    raw.create_bucket(Bucket=s3_env["bucket"])
    raw.put_object(Bucket=s3_env["bucket"], Key="control", Body=b"x")
    assert "ServerSideEncryption" not in raw.head_object(Bucket=s3_env["bucket"], Key="control")

    lake = S3Lake(
        f"s3://{s3_env['bucket']}/p",
        client=s3_client(),
        multipart_threshold=5 * MIB,
        multipart_chunksize=5 * MIB,
    )
    lake.put_bytes("small.bin", b"tiny")
    lake.put_bytes("big.bin", os.urandom(6 * MIB))
    for key in ("p/small.bin", "p/big.bin"):
        head = raw.head_object(Bucket=s3_env["bucket"], Key=key)
        assert head["ServerSideEncryption"] == "AES256", key


def test_big_partition_takes_the_multipart_path(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_HANDOVER_LAKE",
        lake_connection(s3_env["endpoint"], multipart_threshold_mb=5, multipart_chunksize_mb=5),
    )
    lake = lake_from_url(f"s3://{s3_env['bucket']}")
    lake.ensure_bucket()
    assert lake.transfer.multipart_threshold == 5 * MIB

    big = os.urandom(11 * MIB + 123)
    lake.put_bytes("runs/r/raw/cdr/part-p00.parquet", big)
    part_file = tmp_path / "part.parquet"
    part_file.write_bytes(big[: 7 * MIB])
    lake.put_file("runs/r/raw/cdr/part-p01.parquet", part_file)
    lake.put_bytes("runs/r/raw/cdr/part-p02.parquet", big[: 4 * MIB])  # below threshold

    raw = _raw_client(s3_env["endpoint"])
    etags = {
        k: raw.head_object(Bucket=s3_env["bucket"], Key=f"runs/r/raw/cdr/part-{k}.parquet")
        for k in ("p00", "p01", "p02")
    }
    # A multipart object's ETag is "<md5 of part md5s>-<number of parts>".
    assert etags["p00"]["ETag"].strip('"').endswith("-3")
    assert etags["p01"]["ETag"].strip('"').endswith("-2")
    assert "-" not in etags["p02"]["ETag"].strip('"')
    assert all(h["ServerSideEncryption"] == "AES256" for h in etags.values())
    assert lake.get_bytes("runs/r/raw/cdr/part-p00.parquet") == big
    assert lake.get_bytes("runs/r/raw/cdr/part-p01.parquet") == big[: 7 * MIB]


def test_failures_are_one_line_naming_bucket_key_and_fix(s3_env, monkeypatch):
    missing = lake_from_url(f"s3://{s3_env['bucket']}-missing/pre")
    for action in (
        lambda: missing.put_bytes("runs/x/a.parquet", b"1"),
        lambda: missing.get_bytes("runs/x/a.parquet"),
        lambda: missing.read_table("runs/x/a.parquet"),
        lambda: missing.list("runs/x/"),
    ):
        with pytest.raises(LakeError) as err:
            action()
        message = str(err.value)
        assert f"s3://{s3_env['bucket']}-missing/pre/runs/x/" in message
        assert "does not exist" in message and "ensure-bucket" in message
        assert "\n" not in message

    # Nothing listens on this port: retried with backoff, then one line naming the fix.
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AIRFLOW_CONN_HANDOVER_LAKE", lake_connection(dead, max_attempts=2))
    unreachable = lake_from_url(f"s3://{s3_env['bucket']}")
    with pytest.raises(LakeError) as err:
        unreachable.put_bytes("runs/y/b.parquet", b"1")
    message = str(err.value)
    assert f"s3://{s3_env['bucket']}/runs/y/b.parquet" in message
    assert "cannot reach" in message and dead in message and "handover_lake" in message
    assert "\n" not in message


def test_ensure_bucket_command_creates_an_encrypted_bucket(s3_env):
    url = f"s3://{s3_env['bucket']}/handover"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "include"), "HANDOVER_LAKE_URL": url}
    cmd = [sys.executable, "-m", "handover.storage.lake", "ensure-bucket"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "created" in first.stdout
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "already exists" in again.stdout
    raw = _raw_client(s3_env["endpoint"])
    rules = raw.get_bucket_encryption(Bucket=s3_env["bucket"])["ServerSideEncryptionConfiguration"][
        "Rules"
    ]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    lifecycle = raw.get_bucket_lifecycle_configuration(Bucket=s3_env["bucket"])["Rules"]
    assert lifecycle[0]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1


def test_sync_dir_uploads_only_new_or_changed_files(s3_env, tmp_path):
    lake = lake_from_url(f"s3://{s3_env['bucket']}/handover")
    lake.ensure_bucket()
    site = tmp_path / "docs"
    (site / "static").mkdir(parents=True)
    (site / "index.html").write_text("v1")
    (site / "static" / "style.css").write_text("body{}")
    assert lake.sync_dir(site, "runs/r/docs") == 2
    assert lake.sync_dir(site, "runs/r/docs") == 0
    (site / "index.html").write_text("v2")
    (site / "validation-p01.html").write_text("new")
    assert lake.sync_dir(site, "runs/r/docs") == 2
    assert lake.get_bytes("runs/r/docs/index.html") == b"v2"
    assert lake.list("runs/r/docs/") == [
        "runs/r/docs/index.html",
        "runs/r/docs/static/style.css",
        "runs/r/docs/validation-p01.html",
    ]


# ---------------------------------------------------------------- whole migration
@pytest.fixture(scope="module")
def two_runs(moto_server, keyring_file, tmp_path_factory):
    """The same export migrated twice into fresh targets: once on the local lake, once
    on the S3 lake."""
    root = tmp_path_factory.mktemp("s3_migration")
    source = root / "source"
    synth.generate(source, 1000, seed=21)
    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    targets = {"local": create_database("handover_local"), "s3": create_database("handover_s3")}
    lakes = {"local": f"file://{root / 'lake'}", "s3": f"s3://{bucket}/handover"}
    run_ids = {}
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("HANDOVER_KEYRING_FILE", str(keyring_file))
        mp.setenv("AIRFLOW_CONN_HANDOVER_LAKE", lake_connection(moto_server))
        mp.delenv("AIRFLOW_CONN_HANDOVER_KEYS", raising=False)
        mp.delenv("AIRFLOW_CONN_HANDOVER_TARGET", raising=False)
        for kind in ("local", "s3"):
            mp.setenv("HANDOVER_TARGET_DSN", pg_dsn(targets[kind]))
            mp.setenv("HANDOVER_LAKE_URL", lakes[kind])
            if kind == "s3":
                lake_from_url().ensure_bucket(default_encryption=False)
            run_ids[kind] = f"s3it_{kind}_{uuid.uuid4().hex[:6]}"
            run_migration(run_id=run_ids[kind], source_dir=str(source))
        yield {
            "targets": targets,
            "run_ids": run_ids,
            "bucket": bucket,
            "endpoint": moto_server,
            "source": source,
        }
    finally:
        mp.undo()
        for name in targets.values():
            drop_database(name)


def test_migration_on_s3_lake_balances(two_runs):
    manifest = json.loads((two_runs["source"] / "export_manifest.json").read_text())
    with psycopg.connect(pg_dsn(two_runs["targets"]["s3"])) as conn:
        status = conn.execute(
            "SELECT status FROM handover_meta.run WHERE run_id=%s", (two_runs["run_ids"]["s3"],)
        ).fetchone()[0]
        rows = conn.execute(
            "SELECT table_name, source_rows, loaded, quarantined, excluded, balanced, merged "
            "FROM handover_meta.reconciliation WHERE run_id=%s",
            (two_runs["run_ids"]["s3"],),
        ).fetchall()
    assert status == "succeeded"
    assert len(rows) == 7
    for table, n, loaded, q, x, balanced, m in rows:
        assert n == manifest["tables"][table]["rows"] == loaded + m + q + x and balanced, table


def test_migration_on_s3_lake_lands_what_the_local_lake_lands(two_runs):
    local = content_checksums(pg_dsn(two_runs["targets"]["local"]))
    s3 = content_checksums(pg_dsn(two_runs["targets"]["s3"]))
    assert len(local) == 7 and all(n > 0 for n, _ in local.values())
    assert s3 == local


def test_migration_objects_are_in_the_bucket_and_encrypted(two_runs):
    raw = _raw_client(two_runs["endpoint"])
    run = two_runs["run_ids"]["s3"]
    keys = [
        o["Key"]
        for page in raw.get_paginator("list_objects_v2").paginate(
            Bucket=two_runs["bucket"], Prefix=f"handover/runs/{run}/"
        )
        for o in page.get("Contents", [])
    ]
    stages = {k.split("/")[3] for k in keys}
    assert {"raw", "comply", "cleanse", "mapped", "reports", "docs"} <= stages
    for key in keys[:: max(1, len(keys) // 25)]:
        assert (
            raw.head_object(Bucket=two_runs["bucket"], Key=key)["ServerSideEncryption"] == "AES256"
        ), key
