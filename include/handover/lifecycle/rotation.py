"""Key handling after the load: rotation of field-encryption keys, and keyring upkeep.

Encrypted fields land as `<field>_enc` (AES-256-GCM) beside `<field>_key_id`, as the
mapping's `encrypt` protection says. Rotation re-encrypts, in place, every value whose
key id is not the keyring's active one: batch by batch along the natural key, one
transaction per batch, so a crash leaves only whole batches done and a rerun finishes
the rest (rows already under the active key are never touched). Blind indexes use the
separate HMAC key and do not change. When no row is left under an old key id, that key
can be retired from the keyring. Every rotation writes one audit entry with counts and
key ids, never a value.

The keyring helpers below work on the connection's extra (a dict): add a new active
key, retire an old one, or move plain keys under AWS KMS (envelope encryption).
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from handover.config.model import SourceConfig
from handover.core.errors import KeyringError, RotationIncomplete
from handover.db import ledger
from handover.protection.fields import (
    HMAC_CONTEXT_ID,
    Keyring,
    decrypt_value,
    encrypt_values,
    field_domain,
    kms_client,
    kms_generate,
    kms_wrap,
)

log = logging.getLogger("handover")

BATCH_SIZE = 5000


@dataclass(frozen=True)
class EncryptedColumn:
    """One encrypted field of the target, as the mapping declares it."""

    source_table: str  # the mapping's table name
    schema: str
    table: str
    key: str
    field: str

    @property
    def enc(self) -> str:
        return f"{self.field}_enc"

    @property
    def key_id(self) -> str:
        return f"{self.field}_key_id"

    @property
    def aad(self) -> bytes:
        return field_domain(self.table, self.field).encode()

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}.{self.field}"


def encrypted_columns(cfg: SourceConfig) -> list[EncryptedColumn]:
    """Every field the mapping encrypts, by the `<field>_enc` / `<field>_key_id` convention."""
    out = []
    for table in cfg.tables:
        tmap = cfg.table_mapping(table)
        for field, spec in tmap["fields"].items():
            if "encrypt" in spec.get("protect", []):
                out.append(
                    EncryptedColumn(
                        table, cfg.mapping["schema"], tmap["target"], tmap["key"], field
                    )
                )
    return out


def key_usage(conn: psycopg.Connection, columns: list[EncryptedColumn]) -> dict[str, dict]:
    """Rows per key id for each encrypted column: {'crm.customer.id_number': {'k1': n}}."""
    usage: dict[str, dict[str, int]] = {}
    for col in columns:
        rows = conn.execute(
            sql.SQL(
                "SELECT {kid}, count(*) FROM {tbl} WHERE {kid} IS NOT NULL GROUP BY 1 ORDER BY 1"
            ).format(kid=sql.Identifier(col.key_id), tbl=sql.Identifier(col.schema, col.table))
        ).fetchall()
        usage[col.name] = {str(k): int(n) for k, n in rows}
    return usage


def _key_type(conn: psycopg.Connection, col: EncryptedColumn) -> str:
    row = conn.execute(
        "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = %s::regclass AND a.attname = %s AND NOT a.attisdropped",
        (f'"{col.schema}"."{col.table}"', col.key),
    ).fetchone()
    if row is None:
        raise KeyringError(f"{col.schema}.{col.table}: key column {col.key} not found")
    return row[0]


def _rotate_batch(
    conn: psycopg.Connection,
    col: EncryptedColumn,
    ring: Keyring,
    after: Any,
    batch_size: int,
    key_type: str,
) -> tuple[int, Any, dict[str, int]]:
    """Re-encrypt one batch in one transaction; returns (rows, last key, rows per old key)."""
    from cryptography.exceptions import InvalidTag

    tbl = sql.Identifier(col.schema, col.table)
    key, enc, kid = (sql.Identifier(c) for c in (col.key, col.enc, col.key_id))
    where = sql.SQL("{kid} <> %s").format(kid=kid)
    params: list[Any] = [ring.active_key_id]
    if after is not None:
        where = sql.SQL("{} AND {key} > %s").format(where, key=key)
        params.append(after)
    with conn.transaction():
        rows = conn.execute(
            sql.SQL(
                "SELECT {key}, {enc}, {kid} FROM {tbl} WHERE {where} ORDER BY {key} LIMIT %s "
                "FOR UPDATE"
            ).format(key=key, enc=enc, kid=kid, tbl=tbl, where=where),
            [*params, batch_size],
        ).fetchall()
        if not rows:
            return 0, after, {}
        try:
            plain = np.array(
                [decrypt_value(bytes(blob), old, ring, aad=col.aad) for _, blob, old in rows],
                dtype=object,
            )
        except InvalidTag as exc:
            raise RotationIncomplete(
                f"key rotation: a value of {col.name} does not decrypt "
                "under its stored key id (wrong key material for that id, or the value was "
                "altered); nothing in this batch was changed"
            ) from exc
        fresh = encrypt_values(plain, ring, aad=col.aad)
        del plain
        conn.execute(
            sql.SQL(
                "UPDATE {tbl} AS t SET {enc} = v.enc, {kid} = %s "
                "FROM unnest(%s::{ktype}[], %s::bytea[]) AS v(k, enc) WHERE t.{key} = v.k"
            ).format(tbl=tbl, enc=enc, kid=kid, key=key, ktype=sql.SQL(key_type)),
            [ring.active_key_id, [r[0] for r in rows], fresh],
        )
        per_key: dict[str, int] = {}
        for _, _, old in rows:
            per_key[old] = per_key.get(old, 0) + 1
    return len(rows), rows[-1][0], per_key


def rotate_keys(
    conn: psycopg.Connection,
    columns: list[EncryptedColumn],
    ring: Keyring,
    *,
    batch_size: int = BATCH_SIZE,
    run_id: str | None = None,
    actor: str = "handover",
) -> dict[str, Any]:
    """Re-encrypt every value of `columns` not under the active key id; idempotent.

    Checks first that the keyring holds every old key id in use, so a missing key stops
    the rotation before any row changes. `conn` must not be inside a transaction.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    before = key_usage(conn, columns)
    conn.commit()
    missing = {name: sorted(k for k in ids if k not in ring.keys) for name, ids in before.items()}
    missing = {name: ids for name, ids in missing.items() if ids}
    if missing:
        name, ids = next(iter(missing.items()))
        raise KeyringError(
            f"key rotation: {name} has values under key id(s) {', '.join(ids)} that the "
            "keyring does not hold; put the old key back into the 'handover_keys' connection "
            "(keep it until rotation has finished), then rotate again"
        )
    rotated: dict[str, dict[str, int]] = {}
    batches = 0
    for col in columns:
        key_type = _key_type(conn, col)
        conn.commit()
        after: Any = None
        done: dict[str, int] = {}
        while True:
            n, after, per_key = _rotate_batch(conn, col, ring, after, batch_size, key_type)
            if n == 0:
                break
            batches += 1
            for k, c in per_key.items():
                done[k] = done.get(k, 0) + c
            log.info(
                "rotate %s: %d values re-encrypted under %s so far",
                col.name,
                sum(done.values()),
                ring.active_key_id,
            )
        rotated[col.name] = done
    after_usage = key_usage(conn, columns)
    summary = {
        "active_key_id": ring.active_key_id,
        "rotated": rotated,
        "rows": sum(sum(d.values()) for d in rotated.values()),
        "batches": batches,
        "batch_size": batch_size,
        "key_usage_before": before,
        "key_usage_after": after_usage,
    }
    with conn.transaction():
        ledger.audit(conn, "keys_rotated", run_id=run_id, actor=actor, detail=summary)
    return summary


def check_keys(
    conn: psycopg.Connection,
    columns: list[EncryptedColumn],
    ring: Keyring,
    *,
    fetch_size: int = 10_000,
) -> dict[str, Any]:
    """Decrypt every value under its stored key id; count values not under the active key.

    Returns {'ok': bool, 'columns': {name: {'rows', 'active', 'stale', 'undecryptable'}}}.
    """
    from cryptography.exceptions import InvalidTag

    result: dict[str, Any] = {"active_key_id": ring.active_key_id, "columns": {}}
    for col in columns:
        counts = {"rows": 0, "active": 0, "stale": 0, "undecryptable": 0}
        with conn.transaction(), conn.cursor(name="handover_check_keys") as cur:
            cur.itersize = fetch_size
            cur.execute(
                sql.SQL("SELECT {enc}, {kid} FROM {tbl} WHERE {enc} IS NOT NULL").format(
                    enc=sql.Identifier(col.enc),
                    kid=sql.Identifier(col.key_id),
                    tbl=sql.Identifier(col.schema, col.table),
                )
            )
            for blob, kid in cur:
                counts["rows"] += 1
                counts["active" if kid == ring.active_key_id else "stale"] += 1
                try:
                    decrypt_value(bytes(blob), kid, ring, aad=col.aad)
                except (KeyError, InvalidTag, ValueError):
                    counts["undecryptable"] += 1
        result["columns"][col.name] = counts
    result["ok"] = all(
        c["stale"] == 0 and c["undecryptable"] == 0 for c in result["columns"].values()
    )
    return result


# ------------------------------------------------------------------ task bodies
def rotate_target_keys(
    system: str = "legacy_bss", *, run_id: str | None = None, batch_size: int = BATCH_SIZE
) -> dict[str, Any]:
    """Task body: rotate the target's encrypted columns to the keyring's active key."""
    from handover.config.loader import load_config
    from handover.lifecycle.backup.catalogue import rewrap_keys
    from handover.protection.fields import load_keyring
    from handover.storage.lake import lake_from_url

    cfg = load_config(system)
    ring = load_keyring()  # read now, per task: a running scheduler rotates with today's keys
    columns = encrypted_columns(cfg)
    with ledger.connect() as conn:
        summary = rotate_keys(conn, columns, ring, batch_size=batch_size, run_id=run_id)
    # What else the old key wraps: every backup's data keys and the lake's scope keys. Left
    # out, the next restore drill fails and retiring the key loses every backup.
    with ledger.connect() as conn:  # no lifecycle books yet: no backup to rewrap
        has_backups = (
            conn.execute("SELECT to_regclass('handover_meta.backup_file')").fetchone()[0]  # type: ignore[index]  # to_regclass always returns a row
            is not None
        )
    backups = rewrap_keys()["rewrapped"] if has_backups else 0
    lake = lake_from_url()
    lake.keys._ring = ring
    lake_keys = lake.keys.rewrap()
    log.info(
        "key rotation to %s: %d values in %d batches; %d backup data keys and %d lake "
        "scope keys rewrapped",
        ring.active_key_id,
        summary["rows"],
        summary["batches"],
        backups,
        lake_keys,
    )
    return {
        "active_key_id": ring.active_key_id,
        "rows": summary["rows"],
        "batches": summary["batches"],
        "columns": [c.name for c in columns],
        "backup_keys_rewrapped": backups,
        "lake_keys_rewrapped": lake_keys,
    }


def key_still_needed(key_id: str, system: str = "legacy_bss") -> dict[str, int]:
    """Where keyring key `key_id` still protects something: encrypted values in the target,
    data keys of restorable backups, scope keys of the lake. Retiring it while any count is
    not zero loses that data."""
    from handover.config.loader import load_config
    from handover.storage.lake import lake_from_url

    out = {"target_values": 0, "backup_data_keys": 0, "lake_scope_keys": 0}
    with ledger.connect() as conn:
        for counts in key_usage(conn, encrypted_columns(load_config(system))).values():
            out["target_values"] += counts.get(key_id, 0)
        if conn.execute("SELECT to_regclass('handover_meta.backup_file')").fetchone()[0]:  # type: ignore[index]  # to_regclass always returns a row
            out["backup_data_keys"] = conn.execute(  # type: ignore[index]  # count(*) always returns a row
                "SELECT count(*) FROM handover_meta.backup_file f JOIN handover_meta.backup b "
                "USING (backup_id) WHERE f.wrapping_key_id = %s AND f.shredded_at IS NULL AND "
                "b.status NOT IN ('expired', 'failed')",
                (key_id,),
            ).fetchone()[0]
    lake = lake_from_url()
    for k in lake.list("_keys/"):
        if k.endswith(".json") and json.loads(lake.get_bytes(k)).get("wrapping_key_id") == key_id:
            out["lake_scope_keys"] += 1
    return out


def validate_rotation(system: str = "legacy_bss", *, run_id: str | None = None) -> dict[str, Any]:
    """Task body (a gate): every value decrypts and sits under the active key id."""
    from handover.config.loader import load_config
    from handover.protection.fields import load_keyring

    cfg = load_config(system)
    ring = load_keyring()
    with ledger.connect() as conn:
        result = check_keys(conn, encrypted_columns(cfg), ring)
        with conn.transaction():
            ledger.audit(conn, "keys_checked", run_id=run_id, detail=result)
    if not result["ok"]:
        bad = {n: c for n, c in result["columns"].items() if c["stale"] or c["undecryptable"]}
        name, c = next(iter(bad.items()))
        raise RotationIncomplete(
            f"key check failed for {name}: {c['stale']:,} of {c['rows']:,} values not under "
            f"active key {ring.active_key_id}, {c['undecryptable']:,} do not decrypt; run "
            "rotate_keys again with every old key in the keyring"
        )
    old = {k: key_still_needed(k, system) for k in ring.keys if k != ring.active_key_id}
    wrapped = {
        k: {p: n for p, n in v.items() if n and p != "target_values"} for k, v in old.items()
    }
    wrapped = {k: v for k, v in wrapped.items() if v}
    if wrapped:
        kid, places = next(iter(wrapped.items()))
        raise RotationIncomplete(
            f"key check failed: old key '{kid}' still wraps {places}; run rotate_keys again "
            "(it rewraps backups and lake keys) before retiring it"
        )
    log.info(
        "key check: every encrypted value decrypts under %s: %s",
        ring.active_key_id,
        {n: c["rows"] for n, c in result["columns"].items()},
    )
    return {
        "active_key_id": ring.active_key_id,
        "ok": True,
        "rows": {n: c["rows"] for n, c in result["columns"].items()},
    }


# ------------------------------------------------------------------ keyring upkeep
def _is_envelope(data: dict) -> bool:
    return "wrapped_keys" in data


def add_key(data: dict, key_id: str, *, kms: Any = None) -> dict:
    """The keyring (connection extra) with a new key `key_id`, made the active one.

    Envelope keyrings get a KMS-generated data key, stored only wrapped."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    pool = data["wrapped_keys"] if _is_envelope(data) else data["keys"]
    if key_id in pool:
        raise KeyringError(f"keyring: key id '{key_id}' exists already; choose a new id")
    if _is_envelope(data):
        kms = kms if kms is not None else kms_client(data["kms_key_id"])
        pool[key_id] = kms_generate(kms, data["kms_key_id"], key_id)
    else:
        pool[key_id] = base64.b64encode(os.urandom(32)).decode()
    data["active_key_id"] = key_id
    return data


def retire_key(data: dict, key_id: str) -> dict:
    """The keyring without `key_id` (only once no value uses it: see key_usage)."""
    if data.get("active_key_id") == key_id:
        raise KeyringError(
            f"keyring: '{key_id}' is the active key; add a new one and rotate before retiring it"
        )
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    pool = data["wrapped_keys"] if _is_envelope(data) else data["keys"]
    if key_id not in pool:
        raise KeyringError(f"keyring: no key '{key_id}' to retire; known: {', '.join(pool)}")
    del pool[key_id]
    return data


def generate_envelope(kms_key_id: str, key_id: str = "k1", *, kms: Any = None) -> dict:
    """A new keyring whose AES and HMAC keys exist only wrapped by the KMS key."""
    kms = kms if kms is not None else kms_client(kms_key_id)
    return {
        "kms_key_id": kms_key_id,
        "active_key_id": key_id,
        "wrapped_keys": {key_id: kms_generate(kms, kms_key_id, key_id)},
        "wrapped_hmac_key": kms_generate(kms, kms_key_id, HMAC_CONTEXT_ID),
    }


def wrap_keyring(data: dict, kms_key_id: str, *, kms: Any = None) -> dict:
    """Move a plain keyring under KMS: the same keys (so nothing needs re-encrypting), now
    stored only as KMS ciphertext blobs."""
    if _is_envelope(data):
        raise KeyringError("keyring: already wrapped by KMS")
    ring = Keyring.from_dict(data)
    kms = kms if kms is not None else kms_client(kms_key_id)
    return {
        "kms_key_id": kms_key_id,
        "active_key_id": ring.active_key_id,
        "wrapped_keys": {
            kid: kms_wrap(kms, kms_key_id, key, kid) for kid, key in ring.keys.items()
        },
        "wrapped_hmac_key": kms_wrap(kms, kms_key_id, ring.hmac_key, HMAC_CONTEXT_ID),
    }
