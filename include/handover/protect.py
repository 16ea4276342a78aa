"""Field protection: encryption, blind indexes, masks and free-text redaction.

L4 fields (the resident ID number) leave the lake only as AES-256-GCM ciphertext with
the id of the key that made it; a keyed HMAC (blind index) lets the new system look a
customer up, or spot a duplicate, without decrypting; masked forms are what analysts
see. Keys come from the Airflow connection `handover_keys` (or a secrets backend),
never from the repository.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from handover.validators import luhn_ok, resident_id_ok


@dataclass(frozen=True)
class Keyring:
    active_key_id: str
    keys: dict[str, bytes]
    hmac_key: bytes

    @classmethod
    def from_dict(cls, data: dict) -> Keyring:
        try:
            keys = {k: base64.b64decode(v) for k, v in data["keys"].items()}
            ring = cls(data["active_key_id"], keys, base64.b64decode(data["hmac_key"]))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise ValueError(
                "keyring: expected {'active_key_id': ..., 'keys': {id: base64 32 bytes}, "
                f"'hmac_key': base64}} in connection 'handover_keys' extra ({exc!r})") from exc
        if ring.active_key_id not in ring.keys:
            raise ValueError(f"keyring: active key '{ring.active_key_id}' is not among the keys")
        for kid, key in ring.keys.items():
            if len(key) != 32:
                raise ValueError(f"keyring: key '{kid}' must be 32 bytes for AES-256")
        return ring

    @staticmethod
    def generate(key_id: str = "k1") -> dict:
        return {
            "active_key_id": key_id,
            "keys": {key_id: base64.b64encode(os.urandom(32)).decode()},
            "hmac_key": base64.b64encode(os.urandom(32)).decode(),
        }


def load_keyring() -> Keyring:
    from handover.connections import KEYS_CONN_ID, connection_dict

    conn = connection_dict(KEYS_CONN_ID)
    if conn is not None and conn.get("extra"):
        return Keyring.from_dict(conn["extra"])
    path = os.environ.get("HANDOVER_KEYRING_FILE")
    if path:
        return Keyring.from_dict(json.loads(Path(path).read_text()))
    raise RuntimeError(
        f"no encryption keys: define the Airflow connection '{KEYS_CONN_ID}' with extra "
        "{'active_key_id', 'keys', 'hmac_key'} (make demo creates one under .state/), "
        "or set HANDOVER_KEYRING_FILE")


def encrypt_values(values: np.ndarray, ring: Keyring, aad: bytes = b"") -> list[bytes | None]:
    """AES-256-GCM per value with a random 96-bit nonce; output is nonce || ciphertext+tag."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aes = AESGCM(ring.keys[ring.active_key_id])
    out: list[bytes | None] = []
    urandom = os.urandom
    for v in values:
        if v is None:
            out.append(None)
            continue
        nonce = urandom(12)
        out.append(nonce + aes.encrypt(nonce, str(v).encode(), aad))
    return out


def decrypt_value(blob: bytes, key_id: str, ring: Keyring, aad: bytes = b"") -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(ring.keys[key_id]).decrypt(blob[:12], blob[12:], aad).decode()


def blind_index(values: np.ndarray, ring: Keyring, domain: str) -> list[str | None]:
    """Keyed HMAC-SHA256, domain-separated per field so equal values in two fields differ."""
    base = hmac.new(ring.hmac_key, domain.encode() + b"\x00", hashlib.sha256)
    out: list[str | None] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        h = base.copy()
        h.update(str(v).encode())
        out.append(h.hexdigest())
    return out


def mask_resident_id(v: str | None) -> str | None:
    return None if v is None else v[:3] + "*" * (len(v) - 7) + v[-4:]


def mask_msisdn(v: str | None) -> str | None:
    return None if v is None else v[:3] + "****" + v[-4:]


_CANDIDATES = re.compile(
    r"(?<![0-9A-Za-z])(\d{17}[\dXx])(?![0-9A-Za-z])"  # resident ID
    r"|(?<!\d)(\d{15,19})(?!\d)"  # bank card or IMEI (Luhn)
    r"|(?<!\d)((?:\+?86[- ]?)?1[3-9]\d[- ]?\d{4}[- ]?\d{4})(?!\d)"  # MSISDN
    r"|([A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,})"  # e-mail
    r"|(?<!\d)(46[0-9]\d{12})(?!\d)"  # IMSI (MCC 46x)
)


def _redact_match(m: re.Match) -> str:
    rid, digits, msisdn, email, imsi = m.groups()
    if rid is not None:
        if resident_id_ok(rid.upper()):
            return "[身份证号]"
        # Not an ID, but 18 digits can still be a bank card.
        return "[银行卡号]" if rid.isdigit() and luhn_ok(rid) else rid
    if digits is not None:
        if luhn_ok(digits):
            return "[IMEI]" if len(digits) == 15 else "[银行卡号]"
        if len(digits) == 15 and digits.startswith("46"):
            return "[IMSI]"
        return digits
    if msisdn is not None:
        return "[手机号]"
    if email is not None:
        return "[邮箱]"
    return "[IMSI]" if imsi else m.group(0)


def redact_text(text: str | None) -> str | None:
    """Replace resident IDs, MSISDNs, bank cards, IMEI/IMSI and e-mails in free text."""
    if text is None:
        return None
    return _CANDIDATES.sub(_redact_match, text)
