"""The S3-compatible lake (`S3Lake`) and its boto3 client, from the Airflow connection `handover_lake`.

On S3 every object is server-side encrypted, big partitions go up as parallel multipart
uploads, requests are retried with backoff, and what still fails raises one line naming the
bucket, the key and the fix. Every Celery worker reads and writes the same bucket, which is
what lets any worker run any partition.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

from handover.core.errors import LakeError
from handover.storage.objects import Lake

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


def _error_code(exc: BaseException) -> tuple[str, int | None]:
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
