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

import os
from collections.abc import Iterator
from pathlib import Path

from handover.core.errors import LakeError
from handover.storage.layout import DEFAULT_LAKE, part_key, safe_run_id
from handover.storage.objects import PARQUET_OPTIONS, Lake, LocalLake
from handover.storage.s3 import S3Lake, s3_client

# The lake's public names, for callers outside the library (DAGs, scripts, tests); library
# modules import each from the module that defines it.
__all__ = [
    "DEFAULT_LAKE",
    "PARQUET_OPTIONS",
    "Lake",
    "LakeError",
    "LocalLake",
    "S3Lake",
    "iter_parts",
    "lake_from_url",
    "main",
    "part_key",
    "s3_client",
    "safe_run_id",
]


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
