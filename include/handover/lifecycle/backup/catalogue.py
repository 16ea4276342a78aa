"""A backup's life in the catalogue: taken, verified, expired, its keys re-wrapped.

Every table of the `crm` and `handover_meta` schemas is read in one REPEATABLE READ
transaction (one snapshot for all tables), dumped to Parquet (handover.lifecycle.backup.dump)
and encrypted into the lake (handover.lifecycle.backup.files). The catalogue
(`handover_meta.backup`, `backup_file`; include/sql/lifecycle.sql) and one ledger row per
table (stage `backup`, run id = backup id) record counts and checksums, so a restore is
verified against the database's own books, not only the manifest. Backups expire by
policy (`retention_days`); expired ones are deleted, every S3 object version included.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from handover.core.errors import BackupCorrupt, LifecycleError
from handover.db import ledger
from handover.lifecycle.backup.dump import dump_table
from handover.lifecycle.backup.files import (
    BACKUPS,
    KEYS,
    SEGMENT,
    encrypt_file,
    fetch_file,
    key_object,
    read_manifest,
    unwrap_data_key,
    wrap_data_key,
)
from handover.lifecycle.backup.tables import (
    SESSION,
    content_checksum,
    snapshot_tables,
    table_columns,
)
from handover.lifecycle.books import ensure_lifecycle_schema, lifecycle_connect
from handover.lifecycle.lake_purge import purge, purge_noncurrent
from handover.storage.lake import lake_from_url
from handover.storage.layout import safe_run_id
from handover.storage.objects import Lake

log = logging.getLogger("handover")

FORMAT = "handover-backup/1"


@dataclass
class BackupFile:
    file: str
    table: str
    columns: list[tuple[str, str]]
    rows: int
    bytes: int
    sha256: str
    plain_sha256: str
    content_checksum: str
    data_key_id: str
    wrapping_key_id: str

    def to_dict(self) -> dict:
        return {**self.__dict__, "columns": [list(c) for c in self.columns]}


def new_backup_id(run_id: str | None = None) -> str:
    if run_id:
        return f"bk_{safe_run_id(run_id)}"
    return f"bk_{datetime.now(UTC):%Y%m%dT%H%M%S}_{uuid.uuid4().hex[:6]}"


def take_backup(
    *,
    backup_id: str | None = None,
    reason: str = "manual",
    retention_days: int = 35,
    run_id: str | None = None,
) -> dict:
    """Snapshot crm and handover_meta into the lake; returns a small manifest for XCom.

    Idempotent per backup id: a rerun starts the backup over (old objects and keys of the
    same id are purged first)."""
    import psycopg

    from handover.protection.fields import load_keyring

    if retention_days < 1:
        raise LifecycleError(f"retention_days must be at least 1 (got {retention_days})")
    backup_id = backup_id or new_backup_id(run_id)
    lake, ring = lake_from_url(), load_keyring()
    prefix = f"{BACKUPS}/{backup_id}/"
    started = time.monotonic()
    with lifecycle_connect() as conn:
        with conn.transaction():
            conn.execute("DELETE FROM handover_meta.backup_file WHERE backup_id = %s", (backup_id,))
            conn.execute(
                "INSERT INTO handover_meta.backup (backup_id, reason, run_id, lake_prefix, "
                "expires_at) VALUES (%s, %s, %s, %s, now() + %s * interval '1 day') "
                "ON CONFLICT (backup_id) DO UPDATE SET status = 'running', started_at = now(), "
                "finished_at = NULL, verified_at = NULL, reason = excluded.reason, "
                "expires_at = excluded.expires_at, run_id = excluded.run_id",
                (backup_id, reason, run_id, prefix, retention_days),
            )
    purge(lake, prefix)
    purge(lake, f"{KEYS}/{backup_id}/")

    files: list[BackupFile] = []
    workdir = Path(tempfile.mkdtemp(prefix="handover-backup-"))
    try:
        with ledger.connect() as snap:
            snap.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            snap.read_only = True
            with snap.transaction():
                for stmt in SESSION:
                    snap.execute(stmt)
                server = snap.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]  # SHOW always returns a row
                database = snap.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]  # current_database() always returns a row
                for schema, table in snapshot_tables(snap):
                    files.append(_backup_table(snap, lake, ring, backup_id, schema, table, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    manifest = {
        "format": FORMAT,
        "backup_id": backup_id,
        "reason": reason,
        "run_id": run_id,
        "created_at": datetime.now(UTC).isoformat(),
        "database": database,
        "server_version": server,
        "snapshot": "one REPEATABLE READ transaction",
        "encryption": {
            "cipher": "AES-256-GCM, chunked (HOBK v1)",
            "segment_bytes": SEGMENT,
            "data_keys": f"{KEYS}/{backup_id}/",
            "key_wrap": "AES-256-GCM under the keyring key named by wrapping_key_id",
        },
        "files": [f.to_dict() for f in files],
    }
    body = json.dumps(manifest, indent=2, ensure_ascii=False).encode()
    lake.put_bytes(f"{prefix}manifest.json", body)
    manifest_sha = hashlib.sha256(body).hexdigest()
    rows, size = sum(f.rows for f in files), sum(f.bytes for f in files)
    with ledger.connect() as conn, conn.transaction():
        for f in files:
            conn.execute(
                "INSERT INTO handover_meta.backup_file (backup_id, file, table_name, rows, bytes, "
                "sha256, plain_sha256, content_checksum, data_key_id, wrapping_key_id) "
                "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                (
                    backup_id,
                    f.file,
                    f.table,
                    f.rows,
                    f.bytes,
                    f.sha256,
                    f.plain_sha256,
                    f.content_checksum,
                    f.data_key_id,
                    f.wrapping_key_id,
                ),
            )
            ledger.record(
                conn,
                run_id=backup_id,
                table=f.table,
                partition="all",
                stage="backup",
                rows_in=f.rows,
                rows_out=f.rows,
                checksum=f.content_checksum,
                detail={"file": f.file, "sha256": f.sha256},
            )
        conn.execute(
            "UPDATE handover_meta.backup SET status = 'written', finished_at = now(), "
            "tables = %s, rows = %s, bytes = %s, manifest_sha256 = %s WHERE backup_id = %s",
            (len(files), rows, size, manifest_sha, backup_id),
        )
        ledger.audit(
            conn,
            "backup_taken",
            run_id=run_id,
            detail={
                "backup_id": backup_id,
                "reason": reason,
                "tables": len(files),
                "rows": rows,
                "bytes": size,
                "manifest_sha256": manifest_sha,
                "lake": lake.uri(prefix),
                "retention_days": retention_days,
            },
        )
    secs = time.monotonic() - started
    log.info(
        "backup %s: %d tables, %d rows, %d bytes in %.1fs", backup_id, len(files), rows, size, secs
    )
    return {
        "backup_id": backup_id,
        "tables": len(files),
        "rows": rows,
        "bytes": size,
        "manifest_sha256": manifest_sha,
        "seconds": round(secs, 3),
    }


def _backup_table(
    conn, lake: Lake, ring, backup_id: str, schema: str, table: str, workdir: Path
) -> BackupFile:
    columns = table_columns(conn, schema, table)
    count, checksum = content_checksum(conn, schema, table, [c for c, _ in columns])
    parquet, rows = dump_table(conn, schema, table, columns, workdir)
    if rows != count:
        raise RuntimeError(
            f"backup {backup_id}: {schema}.{table} streamed {rows} rows but "
            f"holds {count} in the same snapshot; run the backup again"
        )
    file = f"{schema}.{table}.parquet.enc"
    key, data_key_id = os.urandom(32), f"dk_{uuid.uuid4().hex}"
    enc = workdir / file
    plain_sha, cipher_sha = encrypt_file(parquet, enc, key)
    size = enc.stat().st_size
    lake.write_json(
        key_object(backup_id, file), wrap_data_key(ring, key, backup_id, file, data_key_id)
    )
    lake.put_file(f"{BACKUPS}/{backup_id}/{file}", enc)
    parquet.unlink()
    enc.unlink()
    return BackupFile(
        file,
        f"{schema}.{table}",
        columns,
        rows,
        size,
        cipher_sha,
        plain_sha,
        checksum,
        data_key_id,
        ring.active_key_id,
    )


def verify_backup(backup_id: str) -> dict:
    """The backup gate: every file downloads, matches its sha256s, decrypts and holds the
    rows the catalogue says; marks the backup complete (restorable)."""
    import pyarrow.parquet as pq

    from handover.protection.fields import load_keyring

    lake, ring = lake_from_url(), load_keyring()
    with ledger.connect() as conn:
        row = conn.execute(
            "SELECT manifest_sha256, status FROM handover_meta.backup WHERE backup_id = %s",
            (backup_id,),
        ).fetchone()
        # a backup a drill found corrupt is checked again (and stays corrupt unless whole)
        if row is None or row[1] not in ("written", "complete", "corrupt"):
            raise LifecycleError(
                f"backup {backup_id} is {row[1] if row else 'unknown'}, not "
                "written: run its snapshot task (take_backup) first"
            )
        manifest = read_manifest(lake, backup_id, row[0])
    workdir = Path(tempfile.mkdtemp(prefix="handover-verify-"))
    try:
        for entry in manifest["files"]:
            path = fetch_file(lake, ring, backup_id, entry, workdir)
            if path is None:
                raise LifecycleError(
                    f"backup {backup_id}: data key of {entry['file']} was "
                    "destroyed; this backup cannot be verified"
                )
            n = pq.ParquetFile(path).metadata.num_rows
            if n != entry["rows"]:
                raise BackupCorrupt(
                    f"backup {backup_id}: {entry['file']} holds {n} rows, the "
                    f"manifest says {entry['rows']}; take a new backup"
                )
            path.unlink()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    with ledger.connect() as conn, conn.transaction():
        conn.execute(
            "UPDATE handover_meta.backup SET status = 'complete', verified_at = now() "
            "WHERE backup_id = %s",
            (backup_id,),
        )
        ledger.audit(
            conn,
            "backup_verified",
            detail={"backup_id": backup_id, "files": len(manifest["files"])},
        )
    log.info("backup %s verified: %d files", backup_id, len(manifest["files"]))
    return {"backup_id": backup_id, "files": len(manifest["files"]), "verified": True}


def expire_backups(*, now: datetime | None = None, keep_last: int = 1) -> dict:
    """Delete backups past their expiry (objects, every version, and keys), keeping the
    newest `keep_last` complete ones whatever their age; the catalogue keeps the record."""
    lake = lake_from_url()
    with lifecycle_connect() as conn:
        keep = {
            r[0]
            for r in conn.execute(
                "SELECT backup_id FROM handover_meta.backup WHERE status = 'complete' "
                "ORDER BY started_at DESC LIMIT %s",
                (keep_last,),
            ).fetchall()
        }
        due = [
            r[0]
            for r in conn.execute(
                "SELECT backup_id FROM handover_meta.backup WHERE status <> 'expired' "
                "AND expires_at <= coalesce(%s, now()) ORDER BY started_at",
                (now,),
            ).fetchall()
        ]
    expired = []
    for backup_id in due:
        if backup_id in keep:
            continue
        objects = purge(lake, f"{BACKUPS}/{backup_id}/") + purge(lake, f"{KEYS}/{backup_id}/")
        with ledger.connect() as conn, conn.transaction():
            conn.execute(
                "UPDATE handover_meta.backup SET status = 'expired', expired_at = now() "
                "WHERE backup_id = %s",
                (backup_id,),
            )
            conn.execute(
                "UPDATE handover_meta.backup_file SET shredded_at = coalesce("
                "shredded_at, now()), shred_reason = coalesce(shred_reason, 'expired') "
                "WHERE backup_id = %s",
                (backup_id,),
            )
            ledger.audit(
                conn, "backup_expired", detail={"backup_id": backup_id, "objects_deleted": objects}
            )
        expired.append(backup_id)
    log.info("backups expired: %d (%s); kept by policy: %s", len(expired), expired, sorted(keep))
    return {"expired": expired, "kept": sorted(keep)}


def rewrap_keys() -> dict:
    """Re-wrap every backup data key under the keyring's active key (before retiring one)."""
    from handover.protection.fields import load_keyring

    lake, ring = lake_from_url(), load_keyring()
    done = 0
    for key in lake.list(f"{KEYS}/"):
        if not key.endswith(".json"):
            continue
        obj = lake.read_json(key)
        if obj["wrapping_key_id"] == ring.active_key_id:
            continue
        plain = unwrap_data_key(ring, obj)
        lake.write_json(
            key, wrap_data_key(ring, plain, obj["backup_id"], obj["file"], obj["data_key_id"])
        )
        purge_noncurrent(lake, key)
        done += 1
    with ledger.connect() as conn, conn.transaction():
        if conn.execute("SELECT to_regclass('handover_meta.backup_file')").fetchone()[0] is None:  # type: ignore[index]  # to_regclass always returns a row
            ensure_lifecycle_schema(conn)  # (the loader role may not create; it exists here)
        conn.execute(
            "UPDATE handover_meta.backup_file SET wrapping_key_id = %s WHERE shredded_at IS NULL",
            (ring.active_key_id,),
        )
        ledger.audit(
            conn, "backup_keys_rewrapped", detail={"keys": done, "key_id": ring.active_key_id}
        )
    return {"rewrapped": done, "key_id": ring.active_key_id}


def run_backup(
    *,
    reason: str = "manual",
    retention_days: int = 35,
    run_id: str | None = None,
    backup_id: str | None = None,
) -> dict:
    """The backup DAG in one process: snapshot, verify, expire."""
    taken = take_backup(
        backup_id=backup_id, reason=reason, retention_days=retention_days, run_id=run_id
    )
    verify_backup(taken["backup_id"])
    expired = expire_backups()
    return {**taken, "expired": expired["expired"]}
