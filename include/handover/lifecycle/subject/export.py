"""An access export's encryption: OpenSSL's `enc` format (AES-256-CBC, PBKDF2-SHA256,
600,000 rounds), so the customer opens it with stock tools, under a one-time passphrase.
The passphrase is stored only wrapped by the keyring (AES-256-GCM) beside the file; a
privacy officer reveals it with `python -m handover.lifecycle.subject passphrase
<request_id>` (audited) and hands it over on a separate channel.
"""

from __future__ import annotations

import base64
import json
import os
import secrets

from handover.core.errors import LifecycleError, RequestRejected
from handover.db import ledger
from handover.lifecycle.subject.request import PREFIX, _seal, _unseal
from handover.storage.lake import lake_from_url

PBKDF2_ROUNDS = 600_000
PASSPHRASE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I


def new_passphrase() -> str:
    groups = ["".join(secrets.choice(PASSPHRASE_ALPHABET) for _ in range(5)) for _ in range(5)]
    return "-".join(groups)


def openssl_encrypt(data: bytes, passphrase: str, rounds: int = PBKDF2_ROUNDS) -> bytes:
    """`openssl enc -aes-256-cbc -pbkdf2 -iter <rounds> -md sha256` compatible output."""
    from cryptography.hazmat.primitives import hashes, padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    salt = os.urandom(8)
    km = PBKDF2HMAC(hashes.SHA256(), 48, salt, rounds).derive(passphrase.encode())
    padder = padding.PKCS7(128).padder()
    body = padder.update(data) + padder.finalize()
    enc = Cipher(algorithms.AES(km[:32]), modes.CBC(km[32:])).encryptor()
    return b"Salted__" + salt + enc.update(body) + enc.finalize()


def openssl_decrypt(blob: bytes, passphrase: str, rounds: int = PBKDF2_ROUNDS) -> bytes:
    from cryptography.hazmat.primitives import hashes, padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    if blob[:8] != b"Salted__":
        raise LifecycleError("not an OpenSSL enc file (no 'Salted__' header)")
    km = PBKDF2HMAC(hashes.SHA256(), 48, blob[8:16], rounds).derive(passphrase.encode())
    dec = Cipher(algorithms.AES(km[:32]), modes.CBC(km[32:])).decryptor()
    body = dec.update(blob[16:]) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(body) + unpadder.finalize()


def _wrap_passphrase(ring, request_id: str, passphrase: str) -> dict:
    key_id, blob = _seal(ring, passphrase.encode(), f"handover-export|{request_id}".encode())
    return {"request_id": request_id, "key_id": key_id, "wrapped": base64.b64encode(blob).decode()}


def reveal_passphrase(request_id: str, *, audit: bool = True) -> str:
    """The export's passphrase, for the privacy officer who hands it over (audited)."""
    from handover.protection.fields import load_keyring

    lake, ring = lake_from_url(), load_keyring()
    key = f"{PREFIX}/{request_id}/passphrase.json"
    if not lake.exists(key):
        raise RequestRejected(
            f"request {request_id}: no export passphrase (never exported, or erased since)"
        )
    obj = lake.read_json(key)
    plain = _unseal(
        ring,
        obj["key_id"],
        base64.b64decode(obj["wrapped"]),
        f"handover-export|{request_id}".encode(),
    ).decode()
    if audit:
        with ledger.connect() as conn, conn.transaction():
            ledger.audit(conn, "export_passphrase_revealed", detail={"request_id": request_id})
    return plain


def read_export(request_id: str) -> dict:
    """Decrypt an access export (officers, tests); the passphrase reveal is audited."""
    lake = lake_from_url()
    blob = lake.get_bytes(f"{PREFIX}/{request_id}/access-export.json.enc")
    return json.loads(openssl_decrypt(blob, reveal_passphrase(request_id)))
