"""The lake: where data moves between stages (never through XCom).

Each stage writes `runs/<run_id>/<stage>/<table>/part-<partition>.parquet` plus its
quarantine and exclusions. Writes are atomic (a temporary object then a rename or a
single PUT), so a task killed mid-write never leaves a partial partition that a
rerun or the next stage could mistake for a complete one.

`file://` (the default, a local folder) and `s3://bucket/prefix` (boto3, any
S3-compatible endpoint, from the Airflow connection `handover_lake`) are supported.
On S3 every object is server-side encrypted, big partitions go up as parallel
multipart uploads, requests are retried with backoff, and what still fails raises one
line naming the bucket, the key and the fix. Every Celery worker reads and writes the
same bucket, which is what lets any worker run any partition.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from handover.core.errors import LakeError
from handover.core.paths import PROJECT_ROOT

DEFAULT_LAKE = PROJECT_ROOT / ".state" / "lake"


def safe_run_id(run_id: str) -> str:
    """Airflow run ids hold ':' and '+'; keep them readable but path-safe."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)


def part_key(run_id: str, stage: str, table: str, partition: str) -> str:
    return f"runs/{safe_run_id(run_id)}/{stage}/{table}/part-{partition}.parquet"


# Stage outputs are written once and read back once or twice within a run, whole: LZ4
# without dictionaries or column statistics (nothing filters on them) writes a call-record
# partition in ~0.08-0.12 s against ~0.13-0.28 s for zstd with both, reads it as fast, for
# files ~1.5x larger (docs/performance.md). Backups, kept for years, stay zstd.
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "lz4",
    "use_dictionary": False,
    "write_statistics": False,
}


class Lake(ABC):
    """A key/value view of the lake with Parquet helpers; subclasses hold the storage.

    Every Parquet object it writes is encrypted (handover.storage.lake_crypto: Parquet modular
    encryption under a key per run and stage, wrapped by the keyring); readers open it
    through the lake and nothing else can."""

    url: str
    encrypt: bool = True  # False only in the bench's plain-Parquet comparison

    @property
    def keys(self):
        """The lake's scope keys (handover.storage.lake_crypto.StageKeys), made on first use."""
        from handover.storage.lake_crypto import StageKeys

        if getattr(self, "_stage_keys", None) is None:
            self._stage_keys = StageKeys(self)
        return self._stage_keys

    def parquet_options(self, key: str) -> dict[str, Any]:
        """Writer options for the Parquet object `key`: PARQUET_OPTIONS, and the encryption
        properties of its scope (a fresh set of file keys each call)."""
        from handover.storage.lake_crypto import scope_of

        scope = scope_of(key) if self.encrypt else None
        if scope is None:
            return dict(PARQUET_OPTIONS)
        return {**PARQUET_OPTIONS, "encryption_properties": self.keys.encryption(scope)}

    def _open_parquet(self, source: Any, encrypted: bool) -> pq.ParquetFile:
        if not encrypted:
            return pq.ParquetFile(source)
        return pq.ParquetFile(source, decryption_properties=self.keys.decryption())

    def _check_sealed(self, key: str, tail: bytes) -> None:
        """A Parquet object of a scope that arrives as a ready file (put_file) must already
        be encrypted: nothing reaches the lake in clear by the back door."""
        from handover.storage.lake_crypto import is_encrypted_tail, scope_of

        if self.encrypt and scope_of(key) is not None and not is_encrypted_tail(tail):
            raise ValueError(
                f"lake object {key}: a stage Parquet file must be written with "
                "lake.parquet_options(key) (encrypted); it was plain Parquet"
            )

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write `data` at `key` only if no object is there; True if this call wrote it."""

    # -- storage primitives -------------------------------------------------
    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file (a partition written to disk first); big files stream."""
        data = Path(path).read_bytes()
        self._check_sealed(key, data[-4:])
        self.put_bytes(key, data)

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int: ...

    def uri(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

    # -- helpers -------------------------------------------------------------
    def write_table(self, key: str, table: pa.Table) -> dict[str, Any]:
        # Through a local file, not a buffer: the Parquet bytes of a partition never sit in
        # memory beside the table (put_file streams them up).
        with tempfile.TemporaryDirectory(prefix="handover-part-") as tmp:
            path = Path(tmp) / "part.parquet"
            pq.write_table(table, path, **self.parquet_options(key))
            size = path.stat().st_size
            self.put_file(key, path)
        return {"key": key, "rows": table.num_rows, "bytes": size}

    @contextmanager
    def table_writer(self, key: str, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
        """A Parquet object written a slice at a time (`write_table` on what this yields).
        It appears whole when the block ends, and not at all if the block raises: readers
        never see a partial object. Through a local file, like `write_table`."""
        with tempfile.TemporaryDirectory(prefix="handover-part-") as tmp:
            path = Path(tmp) / "part.parquet"
            with pq.ParquetWriter(path, schema, **self.parquet_options(key)) as writer:
                yield writer
            self.put_file(key, path)

    def schema(self, key: str) -> pa.Schema:
        """The Arrow schema of one Parquet object (its footer only)."""
        if not self.exists(key):
            raise self._missing(key)
        return self._parquet_file(key).schema_arrow

    def _missing(self, key: str) -> FileNotFoundError:
        from handover.storage.lake_crypto import MARKER, WorkingSetGone

        parts = key.split("/")
        if parts[0] == "runs" and len(parts) > 2 and self.exists(f"runs/{parts[1]}/{MARKER}"):
            info = self.read_json(f"runs/{parts[1]}/{MARKER}")
            return WorkingSetGone(
                f"lake object {self.uri(key)} is gone: the working set of run {parts[1]} was "
                f"destroyed on {info.get('destroyed_at', '?')} ({info.get('reason', 'retention')}"
                "); a destroyed run cannot be rerun: trigger a new run of the DAG on the export"
            )
        return FileNotFoundError(
            f"lake object {self.uri(key)} is missing: the stage that writes it has not "
            "run (or failed) for this run; clear that upstream task and run it again"
        )

    def read_table(self, key: str, columns: list[str] | None = None) -> pa.Table:
        if not self.exists(key):
            raise self._missing(key)
        return self._parquet_file(key).read(columns=columns)

    def iter_batches(self, key: str, columns: list[str] | None, batch_rows: int = 65536):
        """Record batches of `columns` (None: all) of one Parquet object, a slice at a time:
        for reading a big object without holding all of it."""
        if not self.exists(key):
            self.read_table(key)  # raises the one-line error above
        yield from self._parquet_file(key).iter_batches(batch_size=batch_rows, columns=columns)

    def _parquet_file(self, key: str) -> pq.ParquetFile:
        data = self.get_bytes(key)
        return self._open_parquet(io.BytesIO(data), data[-4:] == b"PARE")

    def read_projected(self, key: str, columns: list[str]) -> tuple[pa.Table, pa.Schema]:
        """Only `columns` (those the file has) of one Parquet object, and the file's whole
        schema, from one read of the object."""
        if not self.exists(key):
            return self.read_table(key), pa.schema([])  # raises the one-line error above
        pf = self._parquet_file(key)
        schema = pf.schema_arrow
        return pf.read(columns=[c for c in columns if c in schema.names]), schema

    def sync_dir(self, local_dir: Path, prefix: str) -> int:
        """Upload the files under `local_dir` whose content differs from `prefix/...`.

        For sites rebuilt locally and published again and again (Data Docs after every
        gate): only new or changed files travel, not the whole site each time.
        Returns the number of files uploaded.
        """
        import hashlib

        base = prefix.rstrip("/")
        known = self._digests(base + "/")
        sent = 0
        for f in sorted(Path(local_dir).rglob("*")):
            if not f.is_file():
                continue
            key = f"{base}/{f.relative_to(local_dir).as_posix()}"
            data = f.read_bytes()
            if known.get(key) == hashlib.md5(data, usedforsecurity=False).hexdigest():
                continue
            self.put_bytes(key, data)
            sent += 1
        return sent

    def _digests(self, prefix: str) -> dict[str, str]:
        """MD5 hex digest of each object under `prefix` that can tell it cheaply."""
        return {}

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

    @contextmanager
    def _replacing(self, key: str) -> Iterator[Path]:
        """A temporary path beside the object; when the block ends it is flushed to disk
        and renamed over the object: readers never see a partial object, and a block that
        raises leaves none (nor touches the object there was)."""
        target = self.path(key)
        self._mkdirs(target.parent)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            yield tmp
            try:
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o600)
                os.replace(tmp, target)
            except OSError as exc:
                raise self._fail(key, exc) from exc
        finally:
            if tmp.exists():
                tmp.unlink()

    def _replace(self, key: str, write: Callable[[Path], None]) -> None:
        """`write` the object's temporary file (see _replacing); its OSError is told as a
        lake write failure."""
        with self._replacing(key) as tmp:
            try:
                write(tmp)
            except OSError as exc:
                raise self._fail(key, exc) from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        self._replace(key, lambda tmp: tmp.write_bytes(data))

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - 4))
            self._check_sealed(key, fh.read())
        self._replace(key, lambda tmp: shutil.copyfile(path, tmp))

    def _mkdirs(self, folder: Path) -> None:
        """Folders of the lake are 0700 (only the pipeline's user reads the working set),
        the root included; every level created here gets that mode."""
        if folder.is_dir():
            return
        missing = []
        p = folder
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir(mode=0o700)
            except FileExistsError:
                pass
            else:
                os.chmod(d, 0o700)  # mkdir's mode is masked by the umask
        if self.root in missing or self.root == folder:
            os.chmod(self.root, 0o700)

    def make_private(self, prefix: str) -> None:
        """Files other writers (GX's site builder) made under `prefix`: 0600 in 0700 folders,
        like everything the lake writes itself."""
        base = self.path(prefix)
        if not base.exists():
            return
        self._mkdirs(base)
        for p in [base, *base.rglob("*")]:
            want = 0o700 if p.is_dir() else 0o600
            if p.stat().st_mode & 0o777 != want:
                os.chmod(p, want)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """A temporary file hard-linked to the object's name: the link fails if another
        writer got there first, and the object never appears half-written."""
        target = self.path(key)
        self._mkdirs(target.parent)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            return True
        finally:
            if tmp.exists():
                tmp.unlink()

    def _fail(self, key: str, exc: OSError) -> OSError:
        """One line naming the lake object and the fix (an OSError still: callers and
        Airflow's retries treat it as before)."""
        return OSError(
            exc.errno,
            f"lake write {self.uri(key)} failed: "
            f"{exc.strerror or exc}; free space on the lake's disk (or fix its "
            "permissions) or move HANDOVER_LAKE_URL, then clear the task",
        )

    def get_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def _parquet_file(self, key: str) -> pq.ParquetFile:
        path = self.path(key)  # read a column chunk at a time, not the file
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - 4))
            tail = fh.read()
        return self._open_parquet(path, tail == b"PARE")

    def write_table(self, key: str, table: pa.Table) -> dict[str, Any]:
        """Straight to the object's temporary file: no Parquet bytes held in memory."""
        opts = self.parquet_options(key)
        self._replace(key, lambda tmp: pq.write_table(table, tmp, **opts))
        return {"key": key, "rows": table.num_rows, "bytes": self.path(key).stat().st_size}

    @contextmanager
    def table_writer(self, key: str, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
        """Straight into the object's temporary file, renamed over the object when the
        block ends (see Lake.table_writer); removed if the block raises."""
        opts = self.parquet_options(key)
        with self._replacing(key) as tmp, pq.ParquetWriter(tmp, schema, **opts) as writer:
            yield writer

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root))
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            self.path(key).unlink()
        return len(keys)

    def _digests(self, prefix: str) -> dict[str, str]:
        import hashlib

        return {
            k: hashlib.md5(self.path(k).read_bytes(), usedforsecurity=False).hexdigest()
            for k in self.list(prefix)
        }


# Multipart defaults: parts of 16 MiB above 64 MiB, four parts in flight. A partition
# file is written once and read by one task, so big parts keep request counts low.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNKSIZE = 16 * 1024 * 1024
_MIB = 1024 * 1024


class S3Lake(Lake):
    """An S3-compatible lake through boto3.

    Every object is written with server-side encryption (``AES256`` by default,
    ``aws:kms`` with a key id when the connection says so). Objects above the multipart
    threshold go up in parallel parts (boto3's managed transfer), so a big partition
    never needs one huge request, and a failed part is retried alone. Requests are
    retried with exponential backoff by botocore (see `s3_client`); what still fails
    raises `LakeError` naming the bucket, the key and what to fix.
    """

    def __init__(
        self,
        url: str,
        client=None,
        sse: str | None = "AES256",
        kms_key_id: str | None = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        multipart_chunksize: int = MULTIPART_CHUNKSIZE,
    ):
        m = re.match(r"s3://([^/]+)/?(.*)$", url)
        if not m:
            raise ValueError(f"lake URL {url!r}: expected s3://bucket[/prefix]")
        self.url = url.rstrip("/")
        self.bucket, self.prefix = m.group(1), m.group(2).strip("/")
        self.client = client or s3_client()
        self.sse = None if (sse or "").lower() in ("", "none", "off") else sse
        self.kms_key_id = kms_key_id
        from boto3.s3.transfer import TransferConfig

        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=4,
            use_threads=True,
        )

    @classmethod
    def from_connection(cls, url: str) -> S3Lake:
        """The lake at `url` with client, encryption and part sizes from `handover_lake`."""
        extra = _lake_extra()
        return cls(
            url,
            client=s3_client(),
            sse=extra.get("sse", "AES256"),
            kms_key_id=extra.get("sse_kms_key_id"),
            multipart_threshold=int(float(extra.get("multipart_threshold_mb", 64)) * _MIB),
            multipart_chunksize=int(float(extra.get("multipart_chunksize_mb", 16)) * _MIB),
        )

    def _k(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _extra_args(self) -> dict[str, str]:
        if not self.sse:
            return {}
        extra = {"ServerSideEncryption": self.sse}
        if self.sse == "aws:kms" and self.kms_key_id:
            extra["SSEKMSKeyId"] = self.kms_key_id
        return extra

    def _endpoint(self) -> str:
        return getattr(getattr(self.client, "meta", None), "endpoint_url", None) or "S3"

    def _fail(self, action: str, key: str | None, exc: Exception) -> LakeError:
        """Turn a boto error into one line: what, where, what to do."""
        where = f"s3://{self.bucket}/{self._k(key)}" if key is not None else f"s3://{self.bucket}"
        code, status = _error_code(exc)
        if code == "NoSuchBucket":
            fix = (
                f"bucket '{self.bucket}' does not exist at {self._endpoint()}: create it "
                f"(python -m handover.storage.lake ensure-bucket {self.url}) or fix HANDOVER_LAKE_URL"
            )
        elif (
            code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403")
            or status == 403
        ):
            fix = (
                f"access denied ({code}) at {self._endpoint()}: check the login/password of "
                f"the Airflow connection '{_LAKE_CONN}' and the bucket policy"
            )
        elif code in ("NoCredentialsError", "PartialCredentialsError"):
            fix = (
                f"no S3 credentials: set login and password on the Airflow connection "
                f"'{_LAKE_CONN}' (AIRFLOW_CONN_{_LAKE_CONN.upper()})"
            )
        elif code in (
            "EndpointConnectionError",
            "ConnectTimeoutError",
            "ReadTimeoutError",
            "ConnectionClosedError",
        ):
            fix = (
                f"cannot reach {self._endpoint()} after retries ({code}): check that the "
                f"store is up and endpoint_url in the extra of connection '{_LAKE_CONN}'"
            )
        elif code in (
            "InvalidArgument",
            "InvalidEncryptionAlgorithmError",
            "KMS.NotFoundException",
        ):
            fix = (
                f"the store refused server-side encryption {self.sse!r} ({code}): set extra "
                f"'sse' (AES256 or aws:kms with sse_kms_key_id) on connection '{_LAKE_CONN}'"
            )
        else:
            fix = f"{code or type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return LakeError(f"lake {action} {where} failed: {fix}")

    # -- storage primitives -------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> None:
        self._upload(key, io.BytesIO(data))

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as fh:
            self._upload(key, fh)

    def _upload(self, key: str, fh) -> None:
        """One PUT below the threshold, parallel multipart above it: a new object
        appears only when complete, so readers never see a partial partition."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.upload_fileobj(
                fh, self.bucket, self._k(key), ExtraArgs=self._extra_args(), Config=self.transfer
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("write", key, exc) from exc
        except Exception as exc:  # s3transfer wraps ClientError in S3UploadFailedError
            if type(exc).__name__ == "S3UploadFailedError":
                raise self._fail("write", key, exc) from exc
            raise

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """A conditional PUT (`If-None-Match: *`): refused with 412 when the object exists."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._k(key),
                Body=data,
                IfNoneMatch="*",
                **self._extra_args(),
            )
        except ClientError as exc:
            code, status = _error_code(exc)
            if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise self._fail("write", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("write", key, exc) from exc
        return True

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        buf = io.BytesIO()
        try:
            self.client.download_fileobj(self.bucket, self._k(key), buf, Config=self.transfer)
        except ClientError as exc:
            code, status = _error_code(exc)
            if code == "NoSuchBucket" or (status == 404 and not self.bucket_exists()):
                raise self._fail("read", key, _NoSuchBucket()) from exc
            if status == 404:
                raise FileNotFoundError(
                    f"lake object {self.uri(key)} is missing: the stage that writes it has not "
                    "run (or failed) for this run; clear that upstream task and run it again"
                ) from exc
            raise self._fail("read", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("read", key, exc) from exc
        return buf.getvalue()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._k(key))
            return True
        except ClientError as exc:
            code, status = _error_code(exc)
            if code in ("404", "NoSuchKey", "NotFound") or status == 404:
                if not self.bucket_exists():
                    raise self._fail("read", key, _NoSuchBucket()) from exc
                return False
            raise self._fail("read", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("read", key, exc) from exc

    def bucket_exists(self) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return True
        except ClientError as exc:
            if _error_code(exc)[1] == 404:
                return False
            raise

    def list(self, prefix: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        keys: list[str] = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._k(prefix)):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("list", prefix, exc) from exc
        return sorted(keys)

    def _digests(self, prefix: str) -> dict[str, str]:
        """ETags from one listing: the MD5 of a single-part object under SSE-S3 (not of a
        multipart or SSE-KMS one, which then simply count as changed)."""
        from botocore.exceptions import BotoCoreError, ClientError

        if self.sse == "aws:kms":
            return {}
        out: dict[str, str] = {}
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._k(prefix)):
                for obj in page.get("Contents", []):
                    etag = obj.get("ETag", "").strip('"')
                    if etag and "-" not in etag:
                        out[obj["Key"][strip:]] = etag
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("list", prefix, exc) from exc
        return out

    def delete_prefix(self, prefix: str) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        keys = self.list(prefix)
        for i in range(0, len(keys), 1000):
            chunk = [{"Key": self._k(k)} for k in keys[i : i + 1000]]
            try:
                out = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True}
                )
            except (BotoCoreError, ClientError) as exc:
                raise self._fail("delete", prefix, exc) from exc
            errors = out.get("Errors") or []
            if errors:
                first = errors[0]
                raise LakeError(
                    f"lake delete s3://{self.bucket}/{first.get('Key')} failed: "
                    f"{first.get('Code')} ({len(errors)} of {len(chunk)} objects not deleted); "
                    f"check the delete permission of connection '{_LAKE_CONN}' and run again"
                )
        return len(keys)

    def ensure_bucket(self, default_encryption: bool = True) -> bool:
        """Create the bucket if it is missing (tests, compose init); True when created.

        With `default_encryption`, also sets the bucket's default encryption, so an
        object written by any other tool is encrypted too.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        created = False
        try:
            if not self.bucket_exists():
                region = self.client.meta.region_name
                kwargs: dict[str, Any] = {"Bucket": self.bucket}
                if region and region != "us-east-1":
                    kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
                try:
                    self.client.create_bucket(**kwargs)
                    created = True
                except ClientError as exc:
                    if _error_code(exc)[0] not in ("BucketAlreadyOwnedByYou",):
                        raise
                if created:
                    # Parts of an upload whose worker was killed are invisible but billed.
                    self.client.put_bucket_lifecycle_configuration(
                        Bucket=self.bucket,
                        LifecycleConfiguration={
                            "Rules": [
                                {
                                    "ID": "abort-incomplete-multipart",
                                    "Status": "Enabled",
                                    "Filter": {"Prefix": ""},
                                    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                                }
                            ]
                        },
                    )
            if default_encryption and self.sse:
                rule: dict[str, Any] = {"SSEAlgorithm": self.sse}
                if self.sse == "aws:kms" and self.kms_key_id:
                    rule["KMSMasterKeyID"] = self.kms_key_id
                self.client.put_bucket_encryption(
                    Bucket=self.bucket,
                    ServerSideEncryptionConfiguration={
                        "Rules": [{"ApplyServerSideEncryptionByDefault": rule}]
                    },
                )
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("create bucket", None, exc) from exc
        return created


class _NoSuchBucket(Exception):
    """Stands in for a HEAD 404 that turned out to be a missing bucket."""

    code = "NoSuchBucket"


_LAKE_CONN = "handover_lake"


def _error_code(exc: Exception) -> tuple[str, int | None]:
    """(error code, HTTP status) of a boto exception; the class name when it has none."""
    if isinstance(exc, _NoSuchBucket):
        return "NoSuchBucket", 404
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return (
            str(response.get("Error", {}).get("Code", "")),
            response.get("ResponseMetadata", {}).get("HTTPStatusCode"),
        )
    # s3transfer's S3UploadFailedError carries the ClientError as its cause/context.
    inner = exc.__cause__ or exc.__context__
    if inner is not None and inner is not exc and hasattr(inner, "response"):
        return _error_code(inner)
    return type(exc).__name__, None


def _lake_extra() -> dict[str, Any]:
    conn = _airflow_connection(_LAKE_CONN)
    return dict(conn.get("extra") or {}) if conn else {}


def s3_client():
    """boto3 client from the Airflow connection `handover_lake` (or AWS_* env vars).

    Connection: login/password are the access key pair; extra holds ``endpoint_url``
    (MinIO, Ceph, moto...), ``region_name``, and optionally ``max_attempts`` (default 12),
    ``addressing_style`` (``path`` by default when an endpoint is given), ``sse``
    (``AES256``, ``aws:kms`` or ``none``), ``sse_kms_key_id``, ``multipart_threshold_mb``
    and ``multipart_chunksize_mb``. Retries use botocore's standard mode: exponential
    backoff with jitter on throttling, 5xx and connection errors.
    """
    import boto3
    from botocore.config import Config

    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    conn = _airflow_connection(_LAKE_CONN)
    if conn is not None:
        extra = dict(conn.get("extra") or {})
        kwargs.update(
            aws_access_key_id=conn.get("login") or None,
            aws_secret_access_key=conn.get("password") or None,
            endpoint_url=extra.get("endpoint_url"),
            region_name=extra.get("region_name", "us-east-1"),
        )
    elif os.environ.get("AWS_ENDPOINT_URL"):
        kwargs["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    custom_endpoint = bool(kwargs.get("endpoint_url"))
    cfg_kwargs: dict[str, Any] = {
        "retries": {"max_attempts": int(extra.get("max_attempts", 12)), "mode": "standard"},
        "connect_timeout": 5,
        "read_timeout": 60,
        "s3": {
            "addressing_style": extra.get("addressing_style", "path" if custom_endpoint else "auto")
        },
    }
    if custom_endpoint:
        # S3-compatible stores differ in their support of the newer default CRC
        # checksums; send and check them only where the API requires them.
        cfg_kwargs.update(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
    return boto3.client("s3", config=Config(**cfg_kwargs), **{k: v for k, v in kwargs.items() if v})


def _airflow_connection(conn_id: str) -> dict | None:
    from handover.config.connections import connection_dict

    return connection_dict(conn_id)


def lake_from_url(url: str | None = None) -> Lake:
    """The lake named by `url`, else HANDOVER_LAKE_URL, else the local default folder."""
    url = url or os.environ.get("HANDOVER_LAKE_URL") or f"file://{DEFAULT_LAKE}"
    if url.startswith("file://"):
        return LocalLake(Path(url[len("file://") :]))
    if url.startswith("s3://"):
        return S3Lake.from_connection(url)
    if "://" not in url:
        return LocalLake(Path(url))
    raise ValueError(f"lake URL {url!r}: use file:///path or s3://bucket/prefix")


def iter_parts(lake: Lake, prefix: str) -> Iterator[str]:
    yield from (k for k in lake.list(prefix) if k.endswith(".parquet"))


def main(argv: list[str] | None = None) -> int:
    """`python -m handover.storage.lake ensure-bucket [s3://bucket/prefix]` (compose init, tests)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m handover.storage.lake")
    sub = ap.add_subparsers(dest="cmd", required=True)
    eb = sub.add_parser("ensure-bucket", help="create the lake bucket if missing")
    eb.add_argument("url", nargs="?", default=None, help="default: $HANDOVER_LAKE_URL")
    rw = sub.add_parser(
        "rewrap-keys",
        help="wrap every lake scope key under the keyring's "
        "active key (key rotation, before retiring a key)",
    )
    rw.add_argument("url", nargs="?", default=None, help="default: $HANDOVER_LAKE_URL")
    args = ap.parse_args(argv)
    if args.cmd == "rewrap-keys":
        lake = lake_from_url(args.url)
        print(
            f"lake {lake.url}: {lake.keys.rewrap()} scope keys rewrapped under "
            f"'{lake.keys.ring.active_key_id}'"
        )
        return 0
    lake = lake_from_url(args.url)
    if not isinstance(lake, S3Lake):
        print(f"lake {lake.url} is a local folder: nothing to create")
        return 0
    created = lake.ensure_bucket()
    print(
        f"lake bucket s3://{lake.bucket} {'created' if created else 'already exists'} "
        f"(default encryption {lake.sse or 'off'})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
