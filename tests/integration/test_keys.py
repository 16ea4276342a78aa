"""Key rotation and KMS envelope encryption, on a migrated target.

One small migration under key k1; then each test rotates from whatever key is active to
a new one and proves: every value decrypts under the new key id and the id column says
so, the old key can be retired, blind indexes and masks never change, a rerun does
nothing, a missing old key stops the rotation before any row changes, a failing batch
leaves earlier batches done and a rerun finishes. KMS runs as a real moto server on a
loopback port (a subprocess speaking HTTP), never an in-process mock.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
import pytest

from handover.config.loader import load_config
from handover.flows.runner import run_migration
from handover.lifecycle import rotation as keys
from handover.protection.fields import Keyring, decrypt_value, load_keyring
from handover.storage.lake import lake_from_url
from handover_synth import legacy_bss as synth
from tests.conftest import ROOT, pg_dsn

pytestmark = pytest.mark.integration
SUBSCRIBERS = 400


@pytest.fixture(scope="module")
def env(target_db, tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    source = root / "source"
    synth.generate(source, SUBSCRIBERS, seed=23)
    keyring = root / "keys.json"
    keyring.write_text(json.dumps(Keyring.generate("k1")))
    mp = pytest.MonkeyPatch()
    mp.setenv("HANDOVER_TARGET_DSN", pg_dsn(target_db))
    mp.setenv("HANDOVER_LAKE_URL", f"file://{root / 'lake'}")
    mp.setenv("HANDOVER_KEYRING_FILE", str(keyring))
    for var in (
        "AIRFLOW_CONN_HANDOVER_KEYS",
        "AIRFLOW_CONN_HANDOVER_TARGET",
        "AIRFLOW_CONN_HANDOVER_KMS",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_KMS",
    ):
        mp.delenv(var, raising=False)
    run_migration(run_id=f"keys_{uuid.uuid4().hex[:6]}", source_dir=str(source))
    cfg = load_config("legacy_bss")
    with psycopg.connect(pg_dsn(target_db)) as conn:
        plain = _decrypt_all(conn, Keyring.from_dict(json.loads(keyring.read_text())))
    yield {
        "dsn": pg_dsn(target_db),
        "keyring": keyring,
        "columns": keys.encrypted_columns(cfg),
        "plain": plain,
        "snapshot": _snapshot(pg_dsn(target_db)),
        "mp": mp,
    }
    mp.undo()


def _decrypt_all(conn: psycopg.Connection, ring: Keyring) -> dict[str, str]:
    rows = conn.execute(
        "SELECT customer_id, id_number_enc, id_number_key_id FROM crm.customer"
    ).fetchall()
    return {cid: decrypt_value(enc, kid, ring, aad=b"customer.id_number") for cid, enc, kid in rows}


def _snapshot(dsn: str) -> dict[str, tuple]:
    """What rotation must not change: blind indexes and masks, per customer."""
    with psycopg.connect(dsn) as conn:
        return {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT customer_id, id_number_bidx, id_number_masked, msisdn_bidx, msisdn_masked "
                "FROM crm.customer"
            )
        }


def _ciphertexts(dsn: str) -> dict[str, tuple[bytes, str]]:
    with psycopg.connect(dsn) as conn:
        return {
            r[0]: (bytes(r[1]), r[2])
            for r in conn.execute(
                "SELECT customer_id, id_number_enc, id_number_key_id FROM crm.customer"
            )
        }


def _ring_dict(env) -> dict:
    return json.loads(Path(env["keyring"]).read_text())


def _save(env, data: dict) -> None:
    Path(env["keyring"]).write_text(json.dumps(data))


def _assert_all_under(env, ring: Keyring) -> None:
    with psycopg.connect(env["dsn"]) as conn:
        kids = {r[0] for r in conn.execute("SELECT DISTINCT id_number_key_id FROM crm.customer")}
        assert kids == {ring.active_key_id}
        assert _decrypt_all(conn, ring) == env["plain"]
        assert keys.check_keys(conn, env["columns"], ring)["ok"]
    assert _snapshot(env["dsn"]) == env["snapshot"]


def test_encrypted_columns_come_from_the_mapping(env):
    [col] = env["columns"]

    assert (col.name, col.enc, col.key_id, col.aad) == (
        "crm.customer.id_number",
        "id_number_enc",
        "id_number_key_id",
        b"customer.id_number",
    )


def test_rotate_then_retire_old_key(env):
    assert len(env["plain"]) > 300
    old = _ring_dict(env)
    old_id = old["active_key_id"]
    before = _ciphertexts(env["dsn"])
    new = keys.add_key(old, "k2" if old_id != "k2" else "k2b")
    _save(env, new)
    ring = Keyring.from_dict(new)

    with psycopg.connect(env["dsn"]) as conn:
        out = keys.rotate_keys(conn, env["columns"], ring, batch_size=97, run_id="rot1")

    n = len(env["plain"])
    assert out["rows"] == n and out["batches"] == -(-n // 97)
    assert out["rotated"] == {"crm.customer.id_number": {old_id: n}}
    after = _ciphertexts(env["dsn"])
    assert all(after[c][0] != before[c][0] for c in before)  # every value re-encrypted
    _assert_all_under(env, ring)
    # what else the old key wraps (rotate_target_keys does this as part of the DAG)
    lake = lake_from_url()
    lake.keys._ring = ring
    assert lake.keys.rewrap() > 0
    assert not any(v for k, v in keys.key_still_needed(old_id).items() if k != "target_values")

    retired = keys.retire_key(new, old_id)
    _save(env, retired)
    ring = Keyring.from_dict(retired)
    assert old_id not in ring.keys
    _assert_all_under(env, ring)

    with psycopg.connect(env["dsn"]) as conn:
        detail = conn.execute(
            "SELECT detail::text FROM handover_meta.audit_log WHERE "
            "action='keys_rotated' AND run_id='rot1'"
        ).fetchone()[0]
    audit = json.loads(detail)
    assert audit["rows"] == n and audit["active_key_id"] == ring.active_key_id
    assert not any(v in detail for v in env["plain"].values())
    assert not any(v in detail for v in list(old["keys"].values()) + [old["hmac_key"]])


def test_rotation_is_idempotent(env):
    ring = load_keyring()
    before = _ciphertexts(env["dsn"])

    with psycopg.connect(env["dsn"]) as conn:
        out = keys.rotate_keys(conn, env["columns"], ring)

    assert (out["rows"], out["batches"]) == (0, 0)
    assert _ciphertexts(env["dsn"]) == before


def test_missing_old_key_stops_before_any_change(env):
    current = _ring_dict(env)
    stranger = Keyring.from_dict({**Keyring.generate("k-other"), "hmac_key": current["hmac_key"]})
    before = _ciphertexts(env["dsn"])

    with psycopg.connect(env["dsn"]) as conn, pytest.raises(keys.KeyringError) as err:
        keys.rotate_keys(conn, env["columns"], stranger)

    assert current["active_key_id"] in str(err.value) and "put the old key back" in str(err.value)
    assert _ciphertexts(env["dsn"]) == before


def test_failed_batch_keeps_earlier_batches_and_rerun_finishes(env):
    current = _ring_dict(env)
    new = keys.add_key(current, f"k-{uuid.uuid4().hex[:4]}")
    _save(env, new)
    ring = Keyring.from_dict(new)
    with psycopg.connect(env["dsn"], autocommit=True) as conn:
        ids = [r[0] for r in conn.execute("SELECT customer_id FROM crm.customer ORDER BY 1")]
        victim = ids[len(ids) // 2]
        saved = conn.execute(
            "SELECT id_number_enc FROM crm.customer WHERE customer_id=%s", (victim,)
        ).fetchone()[0]
        conn.execute(
            "UPDATE crm.customer SET id_number_enc = %s WHERE customer_id=%s",
            (bytes(saved[:-1]) + bytes([saved[-1] ^ 1]), victim),
        )
    try:
        with psycopg.connect(env["dsn"]) as conn, pytest.raises(keys.RotationIncomplete):
            keys.rotate_keys(conn, env["columns"], ring, batch_size=50)
        usage = _ciphertexts(env["dsn"])
        done = [c for c in ids if usage[c][1] == ring.active_key_id]
        assert 0 < len(done) < len(ids)
        assert done == ids[: len(done)] and len(done) % 50 == 0  # whole batches, in key order
        assert victim not in done
    finally:
        with psycopg.connect(env["dsn"], autocommit=True) as conn:
            conn.execute(
                "UPDATE crm.customer SET id_number_enc = %s WHERE customer_id=%s", (saved, victim)
            )

    with psycopg.connect(env["dsn"]) as conn:
        out = keys.rotate_keys(conn, env["columns"], ring, batch_size=50)
    assert out["rows"] == len(ids) - len(done)
    _assert_all_under(env, ring)


def test_rotation_as_loader_role_through_the_task_bodies_and_cli(env, monkeypatch):
    new = keys.add_key(_ring_dict(env), f"k-{uuid.uuid4().hex[:4]}")
    _save(env, new)
    monkeypatch.setenv("HANDOVER_TARGET_DSN", env["dsn"] + " options='-c role=handover_loader'")

    out = keys.rotate_target_keys("legacy_bss", run_id="rot-task", batch_size=1000)
    check = keys.validate_rotation("legacy_bss", run_id="rot-task")

    assert out["rows"] == len(env["plain"]) and out["columns"] == ["crm.customer.id_number"]
    assert check["ok"] and check["active_key_id"] == new["active_key_id"]
    _assert_all_under(env, Keyring.from_dict(new))
    cli = subprocess.run(
        [sys.executable, "-m", "handover.ops.cli", "rotate-keys"],
        env={**os.environ, "PYTHONPATH": str(ROOT / "include")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "rotated 0 values" in cli.stdout and new["active_key_id"] in cli.stdout


def test_validate_rotation_fails_while_old_values_remain(env):
    current = _ring_dict(env)
    _save(env, keys.add_key(current, f"k-{uuid.uuid4().hex[:4]}"))
    try:
        with pytest.raises(keys.RotationIncomplete, match="not under active key"):
            keys.validate_rotation("legacy_bss")
    finally:
        _save(env, current)


# ------------------------------------------------------------------ AWS KMS (moto server)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def kms_endpoint(tmp_path_factory):
    port = _free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    moto = Path(sys.executable).with_name("moto_server")
    cmd = [str(moto)] if moto.exists() else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen(
        [*cmd, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"moto_server exited with {proc.returncode}") from None
                time.sleep(0.1)
        else:
            raise RuntimeError("moto_server did not answer within 10 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def kms(kms_endpoint, monkeypatch):
    """A KMS key on the moto server, reached through the `handover_kms` connection."""
    import boto3

    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv(
        "AIRFLOW_CONN_HANDOVER_KMS",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": kms_endpoint, "region_name": "eu-west-1"},
            }
        ),
    )
    client = boto3.client("kms", endpoint_url=kms_endpoint, region_name="eu-west-1")
    key_id = client.create_key(Description="handover test CMK")["KeyMetadata"]["Arn"]
    return {"client": client, "key_id": key_id, "endpoint": kms_endpoint}


def test_envelope_keyring_holds_only_wrapped_keys(kms):
    data = keys.generate_envelope(kms["key_id"], "e1")

    ring = Keyring.from_dict(data)
    again = Keyring.from_dict(json.loads(json.dumps(data)))

    assert set(data) == {"kms_key_id", "active_key_id", "wrapped_keys", "wrapped_hmac_key"}
    assert ring.active_key_id == "e1" and len(ring.keys["e1"]) == 32 and len(ring.hmac_key) == 32
    assert again == ring
    text = json.dumps(data)
    assert ring.keys["e1"].hex() not in text and ring.keys["e1"] not in text.encode()
    swapped = {**data, "wrapped_keys": {"e1": data["wrapped_hmac_key"]}}
    with pytest.raises(RuntimeError, match="cannot unwrap key 'e1'"):
        Keyring.from_dict(swapped)  # the encryption context binds each blob to its key id


def test_endpoint_from_aws_endpoint_url(kms, monkeypatch):
    data = keys.generate_envelope(kms["key_id"], "e1")
    monkeypatch.delenv("AIRFLOW_CONN_HANDOVER_KMS")
    monkeypatch.setenv("AWS_ENDPOINT_URL", kms["endpoint"])

    assert Keyring.from_dict(data).active_key_id == "e1"


def test_unreachable_kms_fails_with_one_clear_line(kms, monkeypatch):
    data = keys.generate_envelope(kms["key_id"], "e1")
    monkeypatch.setenv(
        "AIRFLOW_CONN_HANDOVER_KMS",
        json.dumps(
            {
                "conn_type": "aws",
                "extra": {
                    "endpoint_url": f"http://127.0.0.1:{_free_port()}",
                    "region_name": "eu-west-1",
                },
            }
        ),
    )

    with pytest.raises(RuntimeError, match="cannot unwrap key 'e1'.*handover_kms"):
        Keyring.from_dict(data)


def test_move_keys_under_kms_then_rotate_to_a_kms_data_key(env, kms, monkeypatch):
    plain = _ring_dict(env)
    wrapped = keys.wrap_keyring(plain, kms["key_id"])
    assert "keys" not in wrapped and "hmac_key" not in wrapped
    assert not any(v in json.dumps(wrapped) for v in plain["keys"].values())
    # The keyring now lives only in the Airflow connection, wrapped.
    monkeypatch.delenv("HANDOVER_KEYRING_FILE")
    monkeypatch.setenv(
        "AIRFLOW_CONN_HANDOVER_KEYS", json.dumps({"conn_type": "generic", "extra": wrapped})
    )
    assert load_keyring() == Keyring.from_dict(plain)  # same keys: nothing to re-encrypt

    envelope = keys.add_key(wrapped, "kms-1")
    monkeypatch.setenv(
        "AIRFLOW_CONN_HANDOVER_KEYS", json.dumps({"conn_type": "generic", "extra": envelope})
    )
    out = keys.rotate_target_keys("legacy_bss", run_id="rot-kms")
    keys.validate_rotation("legacy_bss", run_id="rot-kms")

    assert out["active_key_id"] == "kms-1" and out["rows"] == len(env["plain"])
    for old in list(envelope["wrapped_keys"]):
        if old != "kms-1":
            assert not any(keys.key_still_needed(old).values())  # rotation rewrapped all
            envelope = keys.retire_key(envelope, old)
    assert list(envelope["wrapped_keys"]) == ["kms-1"]
    monkeypatch.setenv(
        "AIRFLOW_CONN_HANDOVER_KEYS", json.dumps({"conn_type": "generic", "extra": envelope})
    )
    _assert_all_under(env, load_keyring())
