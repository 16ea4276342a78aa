"""Backups: a consistent, encrypted snapshot of the target in the lake, with a catalogue.

The `backup` DAG runs this before a load and on a schedule; the `restore_drill` DAG proves
each week that the newest backup restores (handover.lifecycle.restore). Every table of the `crm`
and `handover_meta` schemas is read in one REPEATABLE READ transaction (one snapshot for
all tables), streamed with COPY ... TO STDOUT into Arrow record batches and written as
Parquet, one file per table. Each file is encrypted with its own random AES-256 data key
(chunked AES-256-GCM, format below); the data key is stored, wrapped by the keyring's
active key, as a separate lake object. Destroying that object crypto-shreds the file in
every copy of the backup, which is how retention and erasure reach into backups that
cannot be edited (handover.lifecycle.retention).

Lake layout::

    backups/<backup_id>/<schema>.<table>.parquet.enc   the encrypted Parquet file
    backups/<backup_id>/manifest.json                  files, rows, sha256s, checksums
    backup-keys/<backup_id>/<schema>.<table>.json       the file's wrapped data key

The catalogue (`handover_meta.backup`, `backup_file`; include/sql/lifecycle.sql) and one
ledger row per table (stage `backup`, run id = backup id) record counts and checksums,
so a restore is verified against the database's own books, not only the manifest.
Backups expire by policy (`retention_days`); expired ones are deleted, every S3 object
version included.

Encrypted file format (``HOBK`` v1): an 16-byte header (8-byte magic, 8-byte random
nonce prefix), then segments of ``u32 length || ciphertext+tag``. Segment i is sealed
with nonce ``prefix || u32 i`` and associated data ``header || u32 i || final flag``, so
a reordered, truncated or extended file fails to decrypt.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from handover.core.errors import BackupCorrupt, LifecycleError
from handover.db import ledger
from handover.storage.lake import Lake, LocalLake, S3Lake, lake_from_url, safe_run_id

log = logging.getLogger("handover")

SCHEMAS = ("crm", "handover_meta")
# Not backed up: sealed identifiers of open data-subject requests. They live only until the
# request ends, and a backup would keep them past an erasure (the keyring is not shredded).
NOT_BACKED_UP = (("handover_meta", "subject_intake"),)
SQL_FILE = ledger.SQL_DIR / "lifecycle.sql"
BACKUPS = "backups"
KEYS = "backup-keys"
MAGIC = b"HOBK\x00\x01\x00\x00"
SEGMENT = 1 << 20
FORMAT = "handover-backup/1"
# Session settings under which checksums are computed, at backup and at restore alike.
SESSION = (
    "SET TimeZone = 'UTC'",
    "SET DateStyle = 'ISO, YMD'",
    "SET extra_float_digits = 1",
    "SET bytea_output = 'hex'",
    "SET IntervalStyle = 'postgres'",
)


# ---------------------------------------------------------------- schema
@contextlib.contextmanager
def lifecycle_connect() -> Iterator[Any]:
    """A connection to the target with the lifecycle's books in place (ensure_lifecycle_schema)."""
    with ledger.connect() as conn:
        ensure_lifecycle_schema(conn)
        yield conn


def ensure_lifecycle_schema(conn) -> None:
    """The migration's schemas, then the lifecycle's books (idempotent, serialised)."""
    ledger.ensure_schema(conn)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('handover_ddl'))")
        conn.execute(SQL_FILE.read_text(encoding="utf-8"))


def snapshot_tables(conn) -> list[tuple[str, str]]:
    """Every base table of the backed-up schemas, in a stable order."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "ORDER BY 1, 2",
        (list(SCHEMAS),),
    ).fetchall()
    return [(s, t) for s, t in rows if (s, t) not in NOT_BACKED_UP]


def table_columns(conn, schema: str, table: str) -> list[tuple[str, str]]:
    """(column, PostgreSQL type name) in table order, dropped columns left out."""
    from psycopg import sql

    rel = sql.Identifier(schema, table).as_string(conn)
    return [
        (n, t)
        for n, t in conn.execute(
            "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum",
            (rel,),
        ).fetchall()
    ]


def content_checksum(conn, schema: str, table: str, columns: list[str]) -> tuple[int, str]:
    """Row count and an order-independent checksum of the rows as PostgreSQL renders them
    (sum of 64-bit md5 prefixes): constant memory, equal iff the restored rows are equal."""
    from psycopg import sql

    row = sql.SQL("row({})").format(
        sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in columns)
    )
    count, total = conn.execute(
        sql.SQL(
            "SELECT count(*), coalesce(sum(('x' || left(md5({row}::text), 16))::bit(64)::bigint"
            "::numeric), 0)::text FROM {tbl} t"
        ).format(row=row, tbl=sql.Identifier(schema, table))
    ).fetchone()
    return int(count), hashlib.sha256(f"{count}:{total}".encode()).hexdigest()


# ---------------------------------------------------------------- encryption
def _aesgcm(key: bytes):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def encrypt_file(src: Path, dst: Path, key: bytes) -> tuple[str, str]:
    """Encrypt `src` into `dst` segment by segment; returns (sha256 plain, sha256 cipher)."""
    aes = _aesgcm(key)
    header = MAGIC + os.urandom(8)
    plain_sha, cipher_sha = hashlib.sha256(), hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(header)
        cipher_sha.update(header)
        i = 0
        chunk = fin.read(SEGMENT)
        while True:
            nxt = fin.read(SEGMENT) if chunk else b""
            final = not nxt
            plain_sha.update(chunk)
            ctr = struct.pack(">I", i)
            sealed = aes.encrypt(header[8:] + ctr, chunk, header + ctr + bytes([final]))
            out = struct.pack(">I", len(sealed)) + sealed
            fout.write(out)
            cipher_sha.update(out)
            if final:
                break
            chunk, i = nxt, i + 1
    return plain_sha.hexdigest(), cipher_sha.hexdigest()


def decrypt_file(src: Path, dst: Path, key: bytes, *, name: str) -> str:
    """Decrypt a file written by encrypt_file; returns the plaintext's sha256.

    Raises BackupCorrupt (naming `name`) when the file is not whole and authentic."""
    from cryptography.exceptions import InvalidTag

    aes = _aesgcm(key)
    sha = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        header = fin.read(16)
        if len(header) != 16 or header[:8] != MAGIC:
            raise BackupCorrupt(f"{name}: not a handover backup file (bad header)")
        i = 0
        pending = fin.read(4)
        while pending:
            if len(pending) != 4:
                raise BackupCorrupt(f"{name}: truncated in segment {i}")
            (n,) = struct.unpack(">I", pending)
            sealed = fin.read(n)
            if len(sealed) != n:
                raise BackupCorrupt(f"{name}: truncated in segment {i}")
            pending = fin.read(4)
            final = not pending
            ctr = struct.pack(">I", i)
            try:
                chunk = aes.decrypt(header[8:] + ctr, sealed, header + ctr + bytes([final]))
            except InvalidTag as exc:
                raise BackupCorrupt(f"{name}: segment {i} fails authentication") from exc
            sha.update(chunk)
            fout.write(chunk)
            i += 1
        if i == 0:
            raise BackupCorrupt(f"{name}: no data after the header")
    return sha.hexdigest()


def _key_aad(backup_id: str, file: str, data_key_id: str) -> bytes:
    return f"handover-backup-key|{backup_id}|{file}|{data_key_id}".encode()


def wrap_data_key(ring, key: bytes, backup_id: str, file: str, data_key_id: str) -> dict:
    nonce = os.urandom(12)
    blob = nonce + _aesgcm(ring.keys[ring.active_key_id]).encrypt(
        nonce, key, _key_aad(backup_id, file, data_key_id)
    )
    return {
        "backup_id": backup_id,
        "file": file,
        "data_key_id": data_key_id,
        "wrapping_key_id": ring.active_key_id,
        "alg": "AES-256-GCM",
        "wrapped": base64.b64encode(blob).decode(),
    }


def unwrap_data_key(ring, obj: dict) -> bytes:
    kid = obj["wrapping_key_id"]
    if kid not in ring.keys:
        raise LifecycleError(
            f"backup {obj['backup_id']} file {obj['file']}: its data key is wrapped by keyring "
            f"key '{kid}', which the keyring no longer holds; put that key back into the "
            "'handover_keys' connection (and run `python -m handover.lifecycle.backup rewrap` before "
            "retiring a key)"
        )
    blob = base64.b64decode(obj["wrapped"])
    return _aesgcm(ring.keys[kid]).decrypt(
        blob[:12], blob[12:], _key_aad(obj["backup_id"], obj["file"], obj["data_key_id"])
    )


def key_object(backup_id: str, file: str) -> str:
    return f"{KEYS}/{backup_id}/{file.removesuffix('.parquet.enc')}.json"


def data_key(lake: Lake, ring, backup_id: str, file: str) -> bytes | None:
    """The file's data key, or None when it was destroyed (the file is crypto-shredded)."""
    k = key_object(backup_id, file)
    if not lake.exists(k):
        return None
    return unwrap_data_key(ring, lake.read_json(k))


# ---------------------------------------------------------------- lake helpers
def _s3_key(lake: S3Lake, key: str) -> str:
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
    full = _s3_key(lake, prefix)
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
    full = _s3_key(lake, key)
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


def download(lake: Lake, key: str, path: Path) -> None:
    """Copy a lake object to a local file without holding it in memory."""
    if not lake.exists(key):
        raise BackupCorrupt(f"{lake.uri(key)} is missing")
    if isinstance(lake, LocalLake):
        shutil.copyfile(lake.path(key), path)
    elif isinstance(lake, S3Lake):
        lake.client.download_file(lake.bucket, _s3_key(lake, key), str(path), Config=lake.transfer)
    else:
        Path(path).write_bytes(lake.get_bytes(key))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- snapshot
def _arrow_types():
    import pyarrow as pa

    return {
        "int2": pa.int16(),
        "int4": pa.int32(),
        "int8": pa.int64(),
        "float4": pa.float32(),
        "float8": pa.float64(),
        "bool": pa.bool_(),
        "date": pa.date32(),
        "timestamp": pa.timestamp("us"),
        "timestamptz": pa.timestamp("us"),
    }


def _dump_table(
    conn, schema: str, table: str, columns: list[tuple[str, str]], workdir: Path
) -> tuple[Path, int]:
    """COPY one table to a local CSV, then CSV -> Arrow batches -> Parquet; bounded memory."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    from psycopg import sql

    types = _arrow_types()
    exprs = []
    for name, typ in columns:
        ident = sql.Identifier(name)
        if typ == "bytea":
            exprs.append(sql.SQL("encode({0}, 'hex') AS {0}").format(ident))
        elif typ == "timestamptz":
            exprs.append(sql.SQL("({0} AT TIME ZONE 'UTC') AS {0}").format(ident))
        else:
            exprs.append(ident)
    csv_path = workdir / f"{schema}.{table}.csv"
    with (
        open(csv_path, "wb") as fh,
        conn.cursor().copy(
            sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT csv)").format(
                sql.SQL(", ").join(exprs), sql.Identifier(schema, table)
            )
        ) as cp,
    ):
        for chunk in cp:
            fh.write(chunk)
    names = [n for n, _ in columns]
    final = pa.schema(
        [
            (
                n,
                pa.binary()
                if t == "bytea"
                else pa.timestamp("us", tz="UTC")
                if t == "timestamptz"
                else types.get(t, pa.string()),
            )
            for n, t in columns
        ],
        metadata={
            "handover.table": f"{schema}.{table}",
            "handover.pg_types": json.dumps(dict(columns)),
        },
    )
    out = workdir / f"{schema}.{table}.parquet"
    rows = 0
    with pq.ParquetWriter(out, final, compression="zstd") as writer:
        if csv_path.stat().st_size:
            reader = pacsv.open_csv(
                csv_path,
                read_options=pacsv.ReadOptions(
                    column_names=names, block_size=4 << 20, use_threads=False
                ),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types={n: types.get(t, pa.string()) for n, t in columns},
                    null_values=[""],
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                    true_values=["t"],
                    false_values=["f"],
                ),
            )
            for batch in reader:
                arrays = []
                for (_, typ), col in zip(columns, batch.columns, strict=True):
                    if typ == "bytea":
                        col = pa.array(
                            [None if v is None else bytes.fromhex(v) for v in col.to_pylist()],
                            pa.binary(),
                        )
                    elif typ == "timestamptz":
                        col = col.cast(pa.timestamp("us", tz="UTC"))
                    arrays.append(col)
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=final))
                rows += batch.num_rows
    csv_path.unlink()
    return out, rows


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
                server = snap.execute("SHOW server_version").fetchone()[0]
                database = snap.execute("SELECT current_database()").fetchone()[0]
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
    parquet, rows = _dump_table(conn, schema, table, columns, workdir)
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


# ---------------------------------------------------------------- read back
def read_manifest(lake: Lake, backup_id: str, expected_sha256: str | None = None) -> dict:
    key = f"{BACKUPS}/{backup_id}/manifest.json"
    if not lake.exists(key):
        raise BackupCorrupt(
            f"backup {backup_id}: manifest {lake.uri(key)} is missing; the "
            "backup is incomplete or expired: take a new one (backup DAG)"
        )
    body = lake.get_bytes(key)
    if expected_sha256 and hashlib.sha256(body).hexdigest() != expected_sha256:
        raise BackupCorrupt(
            f"backup {backup_id}: manifest {lake.uri(key)} does not match the "
            "sha256 in handover_meta.backup; restore an earlier backup"
        )
    return json.loads(body)


def fetch_file(lake: Lake, ring, backup_id: str, entry: dict, workdir: Path) -> Path | None:
    """Download, check and decrypt one backup file into `workdir`; the Parquet path, or
    None when its data key was destroyed. Raises BackupCorrupt naming the file and fix."""
    key = f"{BACKUPS}/{backup_id}/{entry['file']}"
    uri = lake.uri(key)
    fix = (
        "restore an earlier backup (restore_drill param backup_id) and take a new one "
        "(trigger the backup DAG)"
    )
    dk = data_key(lake, ring, backup_id, entry["file"])
    if dk is None:
        return None
    enc = workdir / entry["file"]
    try:
        download(lake, key, enc)
    except BackupCorrupt as exc:
        raise BackupCorrupt(f"backup {backup_id}: {exc}; {fix}") from exc
    got = sha256_file(enc)
    if got != entry["sha256"]:
        raise BackupCorrupt(
            f"backup {backup_id}: file {uri} is corrupt (sha256 {got[:16]}... "
            f"!= manifest {entry['sha256'][:16]}...); {fix}"
        )
    plain = workdir / entry["file"].removesuffix(".enc")
    try:
        plain_sha = decrypt_file(enc, plain, dk, name=uri)
    except BackupCorrupt as exc:
        raise BackupCorrupt(f"backup {backup_id}: {exc}; {fix}") from exc
    enc.unlink()
    if plain_sha != entry["plain_sha256"]:
        raise BackupCorrupt(
            f"backup {backup_id}: file {uri} decrypts to other data than was "
            f"backed up (plain sha256 mismatch); {fix}"
        )
    return plain


def read_backup_table(lake: Lake, ring, backup_id: str, file: str):
    """One backup file as an Arrow table, or None when crypto-shredded (tests, audits)."""
    import pyarrow.parquet as pq

    manifest = read_manifest(lake, backup_id)
    entry = next(e for e in manifest["files"] if e["file"] == file)
    workdir = Path(tempfile.mkdtemp(prefix="handover-read-"))
    try:
        path = fetch_file(lake, ring, backup_id, entry, workdir)
        return None if path is None else pq.read_table(path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


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


# ---------------------------------------------------------------- expiry and shredding
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


def shred_files(conn, lake: Lake, backup_id: str, files: Iterable[str], reason: str) -> list[dict]:
    """Crypto-shred files of a backup: destroy their data keys (every version). The caller
    owns the transaction that records it; returns what was destroyed (ids, no values)."""
    destroyed = []
    for file in files:
        row = conn.execute(
            "SELECT data_key_id, wrapping_key_id FROM handover_meta.backup_file "
            "WHERE backup_id = %s AND file = %s",
            (backup_id, file),
        ).fetchone()
        versions = purge(lake, key_object(backup_id, file), exact=True)
        conn.execute(
            "UPDATE handover_meta.backup_file SET shredded_at = now(), shred_reason = %s "
            "WHERE backup_id = %s AND file = %s AND shredded_at IS NULL",
            (reason, backup_id, file),
        )
        destroyed.append(
            {
                "backup_id": backup_id,
                "file": file,
                "data_key_id": row[0] if row else None,
                "wrapping_key_id": row[1] if row else None,
                "key_versions_deleted": versions,
            }
        )
    if destroyed:
        conn.execute(
            "UPDATE handover_meta.backup SET status = 'shredded' WHERE backup_id = %s "
            "AND status <> 'expired'",
            (backup_id,),
        )
    return destroyed


def readable_backups(conn) -> list[tuple[str, list[dict]]]:
    """(backup id, catalogue entries of the files whose data key was not destroyed) of
    every backup not expired; entries carry what fetch_file checks."""
    rows = conn.execute(
        "SELECT f.backup_id, f.file, f.sha256, f.plain_sha256, f.rows "
        "FROM handover_meta.backup_file f JOIN handover_meta.backup b USING (backup_id) "
        "WHERE b.status IN ('written', 'complete', 'shredded') AND f.shredded_at IS NULL "
        "ORDER BY 1, 2"
    ).fetchall()
    out: dict[str, list[dict]] = {}
    for backup_id, file, sha, plain, n in rows:
        out.setdefault(backup_id, []).append(
            {"file": file, "sha256": sha, "plain_sha256": plain, "rows": n}
        )
    return list(out.items())


def files_containing(
    conn, lake: Lake, ring, values: set[str], normalise: Callable | None = None
) -> dict[str, list[str]]:
    """Which readable backup files hold any of `values` in any text column: {backup: files}.

    Decrypts each file in turn (one at a time on local disk, deleted straight after). A
    file that cannot be checked (missing, corrupt) counts as holding them: what cannot be
    proven clean is shredded."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    hits: dict[str, list[str]] = {}
    if not values:
        return hits
    needles = pa.array(sorted(values), pa.string())
    for backup_id, entries in readable_backups(conn):
        workdir = Path(tempfile.mkdtemp(prefix="handover-scan-"))
        try:
            for entry in entries:
                try:
                    path = fetch_file(lake, ring, backup_id, entry, workdir)
                except BackupCorrupt as exc:
                    log.warning(
                        "cannot check %s/%s (%s): counted as holding the values",
                        backup_id,
                        entry["file"],
                        str(exc).split(";")[0],
                    )
                    hits.setdefault(backup_id, []).append(entry["file"])
                    continue
                if path is None:
                    continue
                pf = pq.ParquetFile(path)
                text_cols = [
                    f.name
                    for f in pf.schema_arrow
                    if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
                ]
                found = False
                if text_cols:
                    for batch in pf.iter_batches(batch_size=65536, columns=text_cols):
                        for col in batch.columns:
                            arr = normalise(col) if normalise else col
                            if pc.any(pc.is_in(arr, value_set=needles)).as_py():
                                found = True
                                break
                        if found:
                            break
                path.unlink()
                if found:
                    hits.setdefault(backup_id, []).append(entry["file"])
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return hits


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
        if conn.execute("SELECT to_regclass('handover_meta.backup_file')").fetchone()[0] is None:
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


def main(argv: list[str] | None = None) -> int:
    """`python -m handover.lifecycle.backup take|verify|expire|rewrap` (operators, before a load)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m handover.lifecycle.backup")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("take", help="snapshot, verify and expire (the backup DAG)")
    t.add_argument("--reason", default="manual")
    t.add_argument("--retention-days", type=int, default=35)
    v = sub.add_parser("verify")
    v.add_argument("backup_id")
    sub.add_parser("expire")
    sub.add_parser("rewrap", help="re-wrap data keys under the active keyring key")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.cmd == "take":
        out = run_backup(reason=args.reason, retention_days=args.retention_days)
    elif args.cmd == "verify":
        out = verify_backup(args.backup_id)
    elif args.cmd == "expire":
        out = expire_backups()
    else:
        out = rewrap_keys()
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
