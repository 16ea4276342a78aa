"""Field protection: encryption, blind indexes, masks and free-text redaction.

L4 fields (the resident ID number) leave the lake only as AES-256-GCM ciphertext with
the id of the key that made it; a keyed HMAC (blind index) lets the new system look a
customer up, or spot a duplicate, without decrypting; masked forms are what analysts
see. Keys come from the Airflow connection `handover_keys` (or a secrets backend),
never from the repository. Optionally they are stored only wrapped by AWS KMS (envelope
encryption): the connection then holds KMS ciphertext blobs, unwrapped in memory through
the KMS endpoint of the connection `handover_kms` when a task loads the keyring.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc

from handover.core.validators import luhn_ok, nfkc, resident_id_ok


@dataclass(frozen=True)
class Keyring:
    active_key_id: str
    keys: dict[str, bytes]
    hmac_key: bytes

    @classmethod
    def from_dict(cls, data: dict[str, Any], kms: Any = None) -> Keyring:
        """A keyring from the connection extra: plain keys, or KMS-wrapped ones (envelope).

        Envelope form: {'kms_key_id', 'active_key_id', 'wrapped_keys': {id: base64 KMS
        ciphertext blob}, 'wrapped_hmac_key' (or a plain 'hmac_key')}; `kms` is a boto3 KMS
        client, by default kms_client().
        """
        if isinstance(data, dict) and "wrapped_keys" in data:
            return cls._from_envelope(data, kms)
        try:
            keys = {k: base64.b64decode(v) for k, v in data["keys"].items()}
            ring = cls(data["active_key_id"], keys, base64.b64decode(data["hmac_key"]))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise ValueError(
                "keyring: expected {'active_key_id': ..., 'keys': {id: base64 32 bytes}, "
                f"'hmac_key': base64}} in connection 'handover_keys' extra ({exc!r})"
            ) from exc
        return ring._checked()

    @classmethod
    def _from_envelope(cls, data: dict[str, Any], kms: Any) -> Keyring:
        try:
            cmk = data["kms_key_id"]
            wrapped = dict(data["wrapped_keys"])
            active = data["active_key_id"]
            hmac_wrapped = data.get("wrapped_hmac_key")
            hmac_plain = None if hmac_wrapped else base64.b64decode(data["hmac_key"])
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise ValueError(
                "keyring (KMS envelope): expected {'kms_key_id': ..., 'active_key_id': ..., "
                "'wrapped_keys': {id: base64 KMS ciphertext blob}, 'wrapped_hmac_key': base64} "
                f"in connection 'handover_keys' extra ({exc!r})"
            ) from exc
        kms = kms if kms is not None else kms_client(cmk)
        keys = {kid: kms_unwrap(kms, cmk, blob, kid) for kid, blob in wrapped.items()}
        hmac_key = (
            cast(bytes, hmac_plain)  # read above whenever no wrapped key is given
            if hmac_wrapped is None
            else kms_unwrap(kms, cmk, hmac_wrapped, HMAC_CONTEXT_ID)
        )
        return cls(active, keys, hmac_key)._checked()

    def _checked(self) -> Keyring:
        ring = self
        if ring.active_key_id not in ring.keys:
            raise ValueError(f"keyring: active key '{ring.active_key_id}' is not among the keys")
        for kid, key in ring.keys.items():
            if len(key) != 32:
                raise ValueError(f"keyring: key '{kid}' must be 32 bytes for AES-256")
        if not ring.hmac_key:
            raise ValueError("keyring: the blind-index (HMAC) key is empty")
        return ring

    @staticmethod
    def generate(key_id: str = "k1") -> dict[str, Any]:
        return {
            "active_key_id": key_id,
            "keys": {key_id: base64.b64encode(os.urandom(32)).decode()},
            "hmac_key": base64.b64encode(os.urandom(32)).decode(),
        }


# ------------------------------------------------------------------ AWS KMS (envelope)
KMS_CONN_ID = "handover_kms"
HMAC_CONTEXT_ID = "hmac"


def kms_context(key_id: str) -> dict[str, str]:
    """KMS encryption context: binds a wrapped blob to its key id (a swapped blob fails)."""
    return {"handover:purpose": "field-encryption", "handover:key_id": key_id}


def kms_client(kms_key_id: str | None = None) -> Any:
    """A boto3 KMS client for the connection `handover_kms` (an Airflow AWS connection:
    login/password = access key, extra endpoint_url, region_name), else the environment
    (AWS_ENDPOINT_URL_KMS / AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION, credentials
    chain). The region falls back to the one in a key ARN."""
    import boto3

    from handover.config.connections import connection_dict

    conn = connection_dict(KMS_CONN_ID) or {}
    extra = conn.get("extra") or {}
    endpoint = (
        extra.get("endpoint_url")
        or os.environ.get("AWS_ENDPOINT_URL_KMS")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    region = (
        extra.get("region_name")
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
    )
    if not region and kms_key_id and kms_key_id.startswith("arn:"):
        region = kms_key_id.split(":")[3]
    if not region:
        raise RuntimeError(
            f"KMS: no region; set region_name in the extra of the Airflow connection "
            f"'{KMS_CONN_ID}' or AWS_DEFAULT_REGION, or use a key ARN"
        )
    from botocore.config import Config

    kwargs: dict[str, Any] = {
        "region_name": region,
        "config": Config(
            connect_timeout=5, read_timeout=15, retries={"max_attempts": 3, "mode": "standard"}
        ),
    }
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    login = conn.get("login") or extra.get("aws_access_key_id")
    secret = conn.get("password") or extra.get("aws_secret_access_key")
    if login and secret:
        kwargs.update(aws_access_key_id=login, aws_secret_access_key=secret)
    return boto3.client("kms", **kwargs)


def kms_unwrap(kms: Any, kms_key_id: str, blob_b64: str, key_id: str) -> bytes:
    """Decrypt one wrapped key; the error names the key id and never the material."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        out = kms.decrypt(
            CiphertextBlob=base64.b64decode(blob_b64),
            KeyId=kms_key_id,
            EncryptionContext=kms_context(key_id),
        )
    except (ClientError, BotoCoreError, ValueError) as exc:
        raise RuntimeError(
            f"KMS: cannot unwrap key '{key_id}' with KMS key {kms_key_id}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}; check the connection "
            f"'{KMS_CONN_ID}' (endpoint, region, credentials) and the key's policy"
        ) from exc
    return cast(bytes, out["Plaintext"])  # boto3 response: untyped


def kms_wrap(kms: Any, kms_key_id: str, plaintext: bytes, key_id: str) -> str:
    out = kms.encrypt(KeyId=kms_key_id, Plaintext=plaintext, EncryptionContext=kms_context(key_id))
    return base64.b64encode(out["CiphertextBlob"]).decode()


def kms_generate(kms: Any, kms_key_id: str, key_id: str) -> str:
    """A new AES-256 data key, returned only wrapped (the plaintext is dropped here)."""
    out = kms.generate_data_key(
        KeyId=kms_key_id, KeySpec="AES_256", EncryptionContext=kms_context(key_id)
    )
    return base64.b64encode(out["CiphertextBlob"]).decode()


def load_keyring() -> Keyring:
    from handover.config.connections import KEYS_CONN_ID, connection_dict

    conn = connection_dict(KEYS_CONN_ID)
    if conn is not None and conn.get("extra"):
        return Keyring.from_dict(conn["extra"])
    path = os.environ.get("HANDOVER_KEYRING_FILE")
    if path:
        return Keyring.from_dict(json.loads(Path(path).read_text()))
    raise RuntimeError(
        f"no encryption keys: define the Airflow connection '{KEYS_CONN_ID}' with extra "
        "{'active_key_id', 'keys', 'hmac_key'} (make demo creates one under .state/), "
        "or set HANDOVER_KEYRING_FILE"
    )


def _texts(values: Any) -> tuple[list[bytes | None], int]:
    """UTF-8 bytes per value (None stays None), straight from Arrow for string arrays."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array) and (
        pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
    ):
        return values.cast(pa.large_binary()).to_pylist(), len(values)
    if isinstance(values, pa.Array):
        values = values.to_pylist()
    return [None if v is None else str(v).encode() for v in values], len(values)


def field_domain(target_table: str, field: str) -> str:
    """The blind-index domain and the AES-GCM associated data of a protected field:
    ``<target table>.<target field>`` (``customer.id_number``). Named by the target, not
    by the source table, so that every source system loading the same target column
    writes values that decrypt and index alike: one person's ID from two acquired systems
    gets one blind index, and key rotation and subject requests read every row."""
    return f"{target_table}.{field}"


def encrypt_values(values: Any, ring: Keyring, aad: bytes = b"") -> list[bytes | None]:
    """AES-256-GCM per value with a random 96-bit nonce; output is nonce || ciphertext+tag.

    One AESGCM object and one os.urandom call per batch; the per-value work is the AEAD
    itself, which has no vector form. `values`: an Arrow string array or any iterable."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    plain, _ = _texts(values)
    encrypt = AESGCM(ring.keys[ring.active_key_id]).encrypt
    present = sum(v is not None for v in plain)
    nonces = os.urandom(12 * present)
    out: list[bytes | None] = []
    at = 0
    for v in plain:
        if v is None:
            out.append(None)
            continue
        nonce = nonces[at : at + 12]
        at += 12
        out.append(nonce + encrypt(nonce, v, aad))
    return out


def decrypt_value(blob: bytes, key_id: str, ring: Keyring, aad: bytes = b"") -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(ring.keys[key_id]).decrypt(blob[:12], blob[12:], aad).decode()


def _hmac_pads(key: bytes, prefix: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256 (RFC 2104) split into its inner hash, already fed the key pad and
    `prefix`, and its outer hash fed the outer pad: per value only copy and update."""
    block = hashlib.sha256().block_size
    if len(key) > block:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(prefix)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


def blind_index(values: Any, ring: Keyring, domain: str) -> list[str | None]:
    """Keyed HMAC-SHA256, domain-separated per field so equal values in two fields differ.

    Equal to hmac.new(hmac_key, domain + b"\\x00" + value, sha256).hexdigest(); the pads are
    hashed once per call. `values`: an Arrow string array or any iterable."""
    plain, _ = _texts(values)
    inner, outer = _hmac_pads(ring.hmac_key, domain.encode() + b"\x00")
    icopy, ocopy = inner.copy, outer.copy
    out: list[str | None] = []
    append = out.append
    for v in plain:
        if v is None:
            append(None)
            continue
        i = icopy()
        i.update(v)
        o = ocopy()
        o.update(i.digest())
        append(o.hexdigest())
    return out


def mask_resident_id(v: str | None) -> str | None:
    return None if v is None else v[:3] + "*" * (len(v) - 7) + v[-4:]


def mask_msisdn(v: str | None) -> str | None:
    return None if v is None else v[:3] + "****" + v[-4:]


def _head_stars_tail(values: pa.Array, stars: pa.Array | str) -> pa.Array:
    """v[:3] + stars + v[-4:] per value, with Python's slicing of short strings."""
    head = pc.utf8_slice_codeunits(values, 0, 3)
    tail = pc.utf8_slice_codeunits(values, -4)
    return pc.binary_join_element_wise(head, stars, tail, "")


def mask_resident_id_array(values: pa.Array) -> pa.Array:
    """mask_resident_id on every value of an Arrow string array."""
    stars = pc.max_element_wise(pc.subtract(pc.utf8_length(values), 7), 0)
    return _head_stars_tail(values, pc.binary_repeat("*", stars))


def mask_msisdn_array(values: pa.Array) -> pa.Array:
    """mask_msisdn on every value of an Arrow string array."""
    return _head_stars_tail(values, "****")


_CANDIDATES = re.compile(
    # resident ID: bounded by non-digits only, as the contract gate's pattern is, so a
    # verified ID written against a letter ("ID110105...") is redacted, not left for the
    # gate to stop the run on
    r"(?<!\d)(\d{17}[\dXx])(?!\d)"
    r"|(?<!\d)(\d{15,19})(?!\d)"  # bank card or IMEI (Luhn)
    r"|(?<!\d)((?:\+?86[- ]?)?1[3-9]\d[- ]?\d{4}[- ]?\d{4})(?!\d)"  # MSISDN
    r"|([A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,})"  # e-mail
    r"|(?<!\d)(46[0-9]\d{12})(?!\d)"  # IMSI (MCC 46x)
)


def _redact_match(m: re.Match[str]) -> str:
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


def _folded(text: str) -> tuple[str, list[int]]:
    """`text` with every character NFKC-normalised on its own ("１３８" -> "138", "＠" ->
    "@"), and for each character of the result the index of the one it came from."""
    out: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        folded = ch if ch.isascii() else unicodedata.normalize("NFKC", ch)
        out.append(folded)
        origin.extend([i] * len(folded))
    return "".join(out), origin


def redact_text(text: str | None) -> str | None:
    """Replace resident IDs, MSISDNs, bank cards, IMEI/IMSI and e-mails in free text.

    Free text is kept as written (cleanse does not NFKC it), so the patterns are matched on
    a folded copy (full-width digits, letters and signs as ASCII) and each match replaces
    the characters it came from; the rest of the text is left as it was."""
    if text is None:
        return None
    if text.isascii():
        return _CANDIDATES.sub(_redact_match, text)
    folded, origin = _folded(text)
    parts: list[str] = []
    done = 0
    for m in _CANDIDATES.finditer(folded):
        tag = _redact_match(m)
        if tag == m.group(0):
            continue
        start, end = max(origin[m.start()], done), origin[m.end() - 1] + 1
        parts += [text[done:start], tag]
        done = end
    return "".join(parts) + text[done:] if parts else text


# Where Python's \d (str.isdecimal(), Unicode 14 as in Python 3.11) matches: ten-digit runs
# starting at these code points, plus the mathematical digits U+1D7CE-U+1D7FF.
# tests/unit/test_protect.py checks this against the running interpreter.
DIGIT_RUNS = (
    0x30,
    0x660,
    0x6F0,
    0x7C0,
    0x966,
    0x9E6,
    0xA66,
    0xAE6,
    0xB66,
    0xBE6,
    0xC66,
    0xCE6,
    0xD66,
    0xDE6,
    0xE50,
    0xED0,
    0xF20,
    0x1040,
    0x1090,
    0x17E0,
    0x1810,
    0x1946,
    0x19D0,
    0x1A80,
    0x1A90,
    0x1B50,
    0x1BB0,
    0x1C40,
    0x1C50,
    0xA620,
    0xA8D0,
    0xA900,
    0xA9D0,
    0xA9F0,
    0xAA50,
    0xABF0,
    0xFF10,
    0x104A0,
    0x10D30,
    0x11066,
    0x110F0,
    0x11136,
    0x111D0,
    0x112F0,
    0x11450,
    0x114D0,
    0x11650,
    0x116C0,
    0x11730,
    0x118E0,
    0x11950,
    0x11C50,
    0x11D50,
    0x11DA0,
    0x16A60,
    0x16AC0,
    0x16B50,
    0x1E140,
    0x1E2F0,
    0x1E950,
    0x1FBF0,
)
DIGIT_RANGES = tuple((a, a + 9) for a in DIGIT_RUNS) + ((0x1D7CE, 0x1D7FF),)


def _digit_class() -> str:
    """Python's \\d as an RE2 character class (RE2's own \\d is ASCII only)."""
    return "[" + "".join(f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in sorted(DIGIT_RANGES)) + "]"


# Every text _CANDIDATES can match in (and a few more): each alternative needs an '@', the
# digits "1[3-9]" (MSISDN) or 15 decimal digits in a row.
_PREFILTER = f"@|1[3-9]|{_digit_class()}{{15}}"


def redact_prefilter() -> str:
    """The RE2 pattern redact_array uses to pick the texts worth the Python regex."""
    return _PREFILTER


def redact_array(values: pa.Array) -> pa.Array:
    """redact_text on every value of an Arrow string array: the regex runs in Python only
    on the values the Arrow prefilter lets through (matched on their NFKC form, as
    redact_text matches a folded copy); the others are returned untouched."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    maybe = pc.fill_null(pc.match_substring_regex(nfkc(values), redact_prefilter()), False)
    if not pc.any(maybe).as_py():
        return values
    todo = pc.filter(values, maybe).to_pylist()
    return pc.replace_with_mask(
        values, maybe, pa.array([redact_text(v) for v in todo], values.type)
    )
