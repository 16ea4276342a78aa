"""A backup's files in the lake: encrypted, keyed, fetched back and checked.

Lake layout::

    backups/<backup_id>/<schema>.<table>.parquet.enc   the encrypted Parquet file
    backups/<backup_id>/manifest.json                  files, rows, sha256s, checksums
    backup-keys/<backup_id>/<schema>.<table>.json       the file's wrapped data key

Each file is encrypted with its own random AES-256 data key; the data key is stored,
wrapped by the keyring's active key, as a separate lake object. Destroying that object
crypto-shreds the file in every copy of the backup (handover.lifecycle.backup.shred).

Encrypted file format (``HOBK`` v1): an 16-byte header (8-byte magic, 8-byte random
nonce prefix), then segments of ``u32 length || ciphertext+tag``. Segment i is sealed
with nonce ``prefix || u32 i`` and associated data ``header || u32 i || final flag``, so
a reordered, truncated or extended file fails to decrypt.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

from handover.core.errors import BackupCorrupt, LifecycleError
from handover.lifecycle.lake_purge import s3_key
from handover.storage.objects import Lake, LocalLake
from handover.storage.s3 import S3Lake

BACKUPS = "backups"
KEYS = "backup-keys"
MAGIC = b"HOBK\x00\x01\x00\x00"
SEGMENT = 1 << 20


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


def download(lake: Lake, key: str, path: Path) -> None:
    """Copy a lake object to a local file without holding it in memory."""
    if not lake.exists(key):
        raise BackupCorrupt(f"{lake.uri(key)} is missing")
    if isinstance(lake, LocalLake):
        shutil.copyfile(lake.path(key), path)
    elif isinstance(lake, S3Lake):
        lake.client.download_file(lake.bucket, s3_key(lake, key), str(path), Config=lake.transfer)
    else:
        Path(path).write_bytes(lake.get_bytes(key))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
