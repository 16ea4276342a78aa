"""Encryption at rest of the lake's working set: Parquet modular encryption, one data key
per run and stage.

Every stage object (`runs/<run>/<stage>/<table>/part-*.parquet`, the resolve registry,
destruction plans) holds personal data in clear once read: names, resident IDs, MSISDNs,
addresses. The lake is a working set, not an archive (DESIGN rule 2), and it may sit on
a shared disk or bucket; so every Parquet object the lake writes is encrypted with
Parquet modular encryption (pyarrow's `parquet.encryption`, AES-GCM on every page and on
the footer: the file says `PARE`, not `PAR1`, and is unreadable, even its schema,
without the key).

Keys, in three layers:

- Parquet's own data and key-encryption keys, random per file, wrapped inside the file;
- a **scope key** per run and stage (`runs/<run>/raw`, `runs/<run>/comply/_excluded`, ...)
  that wraps them (this module's `KmsClient`); it is 32 random bytes, stored only
  wrapped, at `_keys/<scope>.json` in the lake;
- the keyring's active key (`handover_keys`, or its KMS envelope), which wraps the scope
  key with AES-256-GCM, the scope as associated data.

Destroying a run's working set deletes its scope keys first (crypto-shredding: any copy
of an object left on a disk, in a snapshot or as an old S3 version is then noise), then
the objects. A reader whose scope key is gone gets one line saying the working set was
destroyed and what to do (`WorkingSetGone`).

Scope keys are created once per scope and never replaced: two tasks writing the same
stage at once (mapped tasks, Celery workers) must agree on it, so creation is
create-if-absent (a hard link on a local lake, `If-None-Match: *` on S3) and the loser
reads the winner's key.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import threading
from typing import Any, Protocol

from handover.core.errors import WorkingSetGone
from handover.storage.layout import safe_run_id


class Lake(Protocol):
    """What the working set needs of a lake (`handover.storage.objects.Lake` has it all):
    named here so the objects can use this module without it importing them back."""

    def get_bytes(self, key: str) -> bytes: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def put_if_absent(self, key: str, data: bytes) -> bool: ...

    def exists(self, key: str) -> bool: ...

    def uri(self, key: str) -> str: ...

    def list(self, prefix: str) -> list[str]: ...


KEYS_PREFIX = "_keys"
MARKER = "working-set.json"  # runs/<run>/working-set.json: written when the set is destroyed
_AAD = "handover-lake-scope|"
_CACHE = _dt.timedelta(hours=1)


def scope_of(key: str) -> str | None:
    """The key scope of a lake object: run and stage for stage objects, the folder for
    other Parquet objects, None for what is not Parquet or is encrypted its own way
    (backups carry per-file keys of their own)."""
    if not key.endswith(".parquet"):
        return None
    parts = key.split("/")
    if parts[0] in ("backups", KEYS_PREFIX):
        return None
    if parts[0] == "runs" and len(parts) >= 4:
        stage = parts[2]
        if len(parts) >= 5 and parts[3].startswith("_"):  # comply/_excluded, cleanse/_quarantine
            stage = f"{stage}/{parts[3]}"
        return f"runs/{parts[1]}/{stage}"
    return "/".join(parts[:-1]) or "_root"


def key_object(scope: str) -> str:
    return f"{KEYS_PREFIX}/{scope}.json"


def run_scopes_prefix(safe_run: str) -> str:
    return f"{KEYS_PREFIX}/runs/{safe_run}/"


def _aesgcm(key: bytes):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


class StageKeys:
    """Scope keys of one lake: created on first write, cached per process, wrapped by
    the keyring. `ring` is loaded lazily (a lake that only lists needs no keys)."""

    def __init__(self, lake: Lake, ring: Any = None) -> None:
        self.lake = lake
        self._ring = ring
        self._plain: dict[str, bytes] = {}
        self._lock = threading.Lock()

    @property
    def ring(self):
        if self._ring is None:
            from handover.protection.fields import load_keyring

            self._ring = load_keyring()
        return self._ring

    def forget(self, scope_prefix: str = "") -> None:
        """Drop cached keys (after scope keys were destroyed); Parquet's own key caches go
        with the factory, so no file is ever wrapped with a destroyed key's cached KEK."""
        with self._lock:
            for s in [s for s in self._plain if s.startswith(scope_prefix)]:
                del self._plain[s]
            self._cf = None

    def get(self, scope: str, *, create: bool) -> bytes:
        with self._lock:
            if scope in self._plain:
                return self._plain[scope]
        obj = self._read(scope)
        if obj is None:
            if not create:
                raise self._gone(scope)
            obj = self._create(scope)
        key = self._unwrap(scope, obj)
        with self._lock:
            self._plain[scope] = key
        return key

    def _read(self, scope: str) -> dict | None:
        k = key_object(scope)
        try:
            return json.loads(self.lake.get_bytes(k))
        except FileNotFoundError:
            return None
        except OSError:
            if not self.lake.exists(k):
                return None
            raise

    def _create(self, scope: str) -> dict:
        ring = self.ring
        plain = os.urandom(32)
        nonce = os.urandom(12)
        blob = nonce + _aesgcm(ring.keys[ring.active_key_id]).encrypt(
            nonce, plain, (_AAD + scope).encode()
        )
        obj = {
            "scope": scope,
            "alg": "AES-256-GCM",
            "wrapping_key_id": ring.active_key_id,
            "wrapped": base64.b64encode(blob).decode(),
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        body = json.dumps(obj, indent=2).encode()
        if self.lake.put_if_absent(key_object(scope), body):
            return obj
        won = self._read(scope)  # another task created it first: use theirs
        if won is None:
            raise RuntimeError(f"lake key {key_object(scope)} was neither created nor found")
        return won

    def _unwrap(self, scope: str, obj: dict) -> bytes:
        ring = self.ring
        kid = obj.get("wrapping_key_id")
        if kid not in ring.keys:
            raise RuntimeError(
                f"lake key {key_object(scope)} is wrapped by keyring key '{kid}', which the "
                "keyring no longer holds: put that key back in the 'handover_keys' connection "
                "(python -m handover.storage.lake rewrap-keys before retiring a key)"
            )
        blob = base64.b64decode(obj["wrapped"])
        return _aesgcm(ring.keys[kid]).decrypt(blob[:12], blob[12:], (_AAD + scope).encode())

    def rewrap(self) -> int:
        """Wrap every scope key of the lake under the keyring's active key (key rotation)."""
        ring, n = self.ring, 0
        for k in self.lake.list(f"{KEYS_PREFIX}/"):
            if not k.endswith(".json"):
                continue
            obj = json.loads(self.lake.get_bytes(k))
            if obj.get("wrapping_key_id") == ring.active_key_id:
                continue
            scope = obj["scope"]
            plain = self._unwrap(scope, obj)
            nonce = os.urandom(12)
            blob = nonce + _aesgcm(ring.keys[ring.active_key_id]).encrypt(
                nonce, plain, (_AAD + scope).encode()
            )
            obj.update(wrapping_key_id=ring.active_key_id, wrapped=base64.b64encode(blob).decode())
            self.lake.put_bytes(k, json.dumps(obj, indent=2).encode())
            n += 1
        return n

    def _gone(self, scope: str) -> FileNotFoundError:
        parts = scope.split("/")
        if parts[0] == "runs" and len(parts) >= 2:
            marker = f"runs/{parts[1]}/{MARKER}"
            if self.lake.exists(marker):
                info = json.loads(self.lake.get_bytes(marker))
                return WorkingSetGone(
                    f"the working set of run {parts[1]} was destroyed on "
                    f"{info.get('destroyed_at', '?')} ({info.get('reason', 'retention')}): "
                    "its stage objects cannot be read or rerun; trigger a new run of the DAG "
                    "on the export instead"
                )
        return FileNotFoundError(
            f"lake key {self.lake.uri(key_object(scope))} is missing, so the objects of "
            f"{scope} cannot be opened: rerun the stage that writes them (clear its task)"
        )

    # -- Parquet modular encryption ----------------------------------------------------
    def _factory(self):
        import pyarrow.parquet.encryption as pe

        keys = self

        class ScopeKms(pe.KmsClient):
            """Wraps Parquet's key-encryption keys with the scope key named as master key."""

            def __init__(self, _config):
                super().__init__()

            def wrap_key(self, key_bytes, master_key_identifier):
                k = keys.get(master_key_identifier, create=True)
                nonce = os.urandom(12)
                return base64.b64encode(
                    nonce + _aesgcm(k).encrypt(nonce, key_bytes, master_key_identifier.encode())
                ).decode()

            def unwrap_key(self, wrapped_key, master_key_identifier):
                k = keys.get(master_key_identifier, create=False)
                blob = base64.b64decode(wrapped_key)
                return _aesgcm(k).decrypt(blob[:12], blob[12:], master_key_identifier.encode())

        return pe.CryptoFactory(lambda cfg: ScopeKms(cfg))

    @property
    def _crypto(self):
        if getattr(self, "_cf", None) is None:
            import pyarrow.parquet.encryption as pe

            self._cf = self._factory()
            self._kms = pe.KmsConnectionConfig()
        return self._cf

    def encryption(self, scope: str):
        """File encryption properties for a new object of `scope` (fresh file keys)."""
        import pyarrow.parquet.encryption as pe

        self.get(scope, create=True)  # create-if-absent before Parquet asks for a wrap
        cfg = pe.EncryptionConfiguration(
            footer_key=scope, uniform_encryption=True, cache_lifetime=_CACHE
        )
        return self._crypto.file_encryption_properties(self._kms, cfg)

    def decryption(self):
        import pyarrow.parquet.encryption as pe

        return self._crypto.file_decryption_properties(
            self._kms, pe.DecryptionConfiguration(cache_lifetime=_CACHE)
        )


def refuse_destroyed(lake: Lake, run_id: str) -> None:
    """A run whose working set retention destroyed is not written again: one line saying
    so and what to do (a new run), instead of a half-new working set under a dead run."""
    marker = f"runs/{safe_run_id(run_id)}/{MARKER}"
    if lake.exists(marker):
        info = json.loads(lake.get_bytes(marker))
        raise WorkingSetGone(
            f"run {run_id}: its working set was destroyed on {info.get('destroyed_at', '?')} "
            f"({info.get('reason', 'retention')}); it cannot be rerun: trigger a new run of "
            "the DAG on the export (its report and Data Docs stay readable)"
        )


def is_encrypted_tail(tail: bytes) -> bool:
    """Parquet with an encrypted footer ends with b'PARE' (plain Parquet: b'PAR1')."""
    return tail[-4:] == b"PARE"
