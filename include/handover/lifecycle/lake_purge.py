"""Deleting lake objects so that nothing stays recoverable.

On S3 a delete leaves older versions and a delete marker behind; destruction (retention,
erasure), backup expiry and crypto-shredding need every version gone, so they delete
through here rather than with the lake's own `delete_prefix`.
"""

from __future__ import annotations

from handover.core.errors import LifecycleError
from handover.storage.objects import Lake, LocalLake
from handover.storage.s3 import S3Lake


def s3_key(lake: S3Lake, key: str) -> str:
    return f"{lake.prefix}/{key}" if lake.prefix else key


def purge(lake: Lake, prefix: str, *, exact: bool = False) -> int:
    """Delete every object under `prefix` (or the one object `prefix` when `exact`), with
    every S3 version and delete marker, so nothing stays recoverable; returns the count."""
    if not isinstance(lake, S3Lake):
        if exact:
            if lake.exists(prefix):
                if isinstance(lake, LocalLake):
                    lake.path(prefix).unlink()
                    return 1
                return lake.delete_prefix(prefix)
            return 0
        return lake.delete_prefix(prefix)
    full = s3_key(lake, prefix)
    doomed = []
    for page in lake.client.get_paginator("list_object_versions").paginate(
        Bucket=lake.bucket, Prefix=full
    ):
        for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
            if exact and v["Key"] != full:
                continue
            doomed.append({"Key": v["Key"], "VersionId": v["VersionId"]})
    for i in range(0, len(doomed), 1000):
        out = lake.client.delete_objects(
            Bucket=lake.bucket, Delete={"Objects": doomed[i : i + 1000], "Quiet": True}
        )
        if out.get("Errors"):
            first = out["Errors"][0]
            raise LifecycleError(
                f"lake purge s3://{lake.bucket}/{first.get('Key')} version "
                f"{first.get('VersionId')} failed: {first.get('Code')}; the connection "
                "'handover_lake' needs s3:DeleteObjectVersion (and no object lock on the key)"
            )
    return len(doomed)


def purge_noncurrent(lake: Lake, key: str) -> int:
    """After an object was rewritten, delete its older S3 versions (none on a folder)."""
    if not isinstance(lake, S3Lake):
        return 0
    full = s3_key(lake, key)
    doomed = []
    for page in lake.client.get_paginator("list_object_versions").paginate(
        Bucket=lake.bucket, Prefix=full
    ):
        for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
            if v["Key"] == full and not v.get("IsLatest"):
                doomed.append({"Key": v["Key"], "VersionId": v["VersionId"]})
    for i in range(0, len(doomed), 1000):
        lake.client.delete_objects(
            Bucket=lake.bucket, Delete={"Objects": doomed[i : i + 1000], "Quiet": True}
        )
    return len(doomed)
