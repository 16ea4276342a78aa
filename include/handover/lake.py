"""The lake: where data moves between stages (never through XCom).

Each stage writes `runs/<run_id>/<stage>/<table>/part-<partition>.parquet` plus its
quarantine and exclusions. Writes are atomic (a temporary object then a rename or a
single PUT), so a task killed mid-write never leaves a partial partition that a
rerun or the next stage could mistake for a complete one.

`file://` (the default, a local folder) and `s3://bucket/prefix` (boto3, any
S3-compatible endpoint, from the Airflow connection `handover_lake`) are supported.
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_LAKE = Path(__file__).resolve().parents[2] / ".state" / "lake"


def safe_run_id(run_id: str) -> str:
    """Airflow run ids hold ':' and '+'; keep them readable but path-safe."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)


def part_key(run_id: str, stage: str, table: str, partition: str) -> str:
    return f"runs/{safe_run_id(run_id)}/{stage}/{table}/part-{partition}.parquet"


class Lake:
    """A key/value view of the lake with Parquet helpers; subclasses hold the storage."""

    url: str

    # -- storage primitives -------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str) -> list[str]:
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> int:
        raise NotImplementedError

    def uri(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

    # -- helpers -------------------------------------------------------------
    def write_table(self, key: str, table: pa.Table) -> dict[str, Any]:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()
        self.put_bytes(key, data)
        return {"key": key, "rows": table.num_rows, "bytes": len(data)}

    def read_table(self, key: str, columns: list[str] | None = None) -> pa.Table:
        if not self.exists(key):
            raise FileNotFoundError(
                f"lake object {self.uri(key)} is missing: the stage that writes it has not "
                "run (or failed) for this run; clear that upstream task and run it again")
        return pq.read_table(io.BytesIO(self.get_bytes(key)), columns=columns)

    def write_json(self, key: str, obj: Any) -> None:
        self.put_bytes(key, json.dumps(obj, indent=2, ensure_ascii=False, default=str).encode())

    def read_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))


class LocalLake(Lake):
    def __init__(self, root: Path):
        self.root = Path(root)
        self.url = f"file://{self.root}"

    def path(self, key: str) -> Path:
        return self.root / key

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()

    def get_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root)) for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            self.path(key).unlink()
        return len(keys)


class S3Lake(Lake):
    """An S3-compatible lake through boto3, with server-side encryption on every object."""

    def __init__(self, url: str, client=None, sse: str | None = "AES256"):
        m = re.match(r"s3://([^/]+)/?(.*)$", url)
        if not m:
            raise ValueError(f"lake URL {url!r}: expected s3://bucket[/prefix]")
        self.url = url.rstrip("/")
        self.bucket, self.prefix = m.group(1), m.group(2).strip("/")
        self.client = client or s3_client()
        self.sse = sse

    def _k(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes) -> None:
        extra = {"ServerSideEncryption": self.sse} if self.sse else {}
        self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, **extra)

    def get_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._k(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._k(prefix)):
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for i in range(0, len(keys), 1000):
            chunk = [{"Key": self._k(k)} for k in keys[i:i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk})
        return len(keys)


def s3_client():
    """boto3 client from the Airflow connection `handover_lake` (or AWS_* env vars)."""
    import boto3
    from botocore.config import Config

    kwargs: dict[str, Any] = {}
    conn = _airflow_connection("handover_lake")
    if conn is not None:
        extra = conn.get("extra", {})
        kwargs.update(
            aws_access_key_id=conn.get("login") or None,
            aws_secret_access_key=conn.get("password") or None,
            endpoint_url=extra.get("endpoint_url"),
            region_name=extra.get("region_name", "us-east-1"),
        )
    elif os.environ.get("AWS_ENDPOINT_URL"):
        kwargs["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    cfg = Config(retries={"max_attempts": 8, "mode": "standard"}, connect_timeout=5,
                 read_timeout=60)
    return boto3.client("s3", config=cfg, **{k: v for k, v in kwargs.items() if v})


def _airflow_connection(conn_id: str) -> dict | None:
    from handover.connections import connection_dict

    return connection_dict(conn_id)


def lake_from_url(url: str | None = None) -> Lake:
    """The lake named by `url`, else HANDOVER_LAKE_URL, else the local default folder."""
    url = url or os.environ.get("HANDOVER_LAKE_URL") or f"file://{DEFAULT_LAKE}"
    if url.startswith("file://"):
        return LocalLake(Path(url[len("file://"):]))
    if url.startswith("s3://"):
        return S3Lake(url)
    if "://" not in url:
        return LocalLake(Path(url))
    raise ValueError(f"lake URL {url!r}: use file:///path or s3://bucket/prefix")


def iter_parts(lake: Lake, prefix: str) -> Iterator[str]:
    yield from (k for k in lake.list(prefix) if k.endswith(".parquet"))
