"""Load paths against a real PostgreSQL: the direct COPY of a new partition, the keyed
upsert of a rerun, and the fallback when the key probe misses a key that is there."""

from __future__ import annotations

import os
import random

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from handover.load import (
    MERGE_RETURNING,
    PROBE_KEYS,
    bytea_hex,
    table_checksum,
    upsert_partition,
)
from tests.conftest import pg_dsn

N = 1000


@pytest.fixture(scope="module")
def embedded_dsn(tmp_path_factory):
    """The embedded PostgreSQL (18): its staged upsert is the MERGE form; the machine's
    PostgreSQL (15) runs the ON CONFLICT form. Both must behave the same."""
    from handover import embedded

    pgdata = tmp_path_factory.mktemp("embedded-load") / "pgdata"
    try:
        yield embedded.ensure_running(pgdata, databases=("handover",))["target_url"]
    finally:
        embedded.stop(pgdata)


@pytest.fixture(params=["machine", "embedded"])
def conn(request, target_db):
    dsn = (pg_dsn(target_db) if request.param == "machine"
           else request.getfixturevalue("embedded_dsn"))
    with psycopg.connect(dsn) as c:
        merge = c.info.server_version >= MERGE_RETURNING
        assert merge == (request.param == "embedded"), "each server runs its own form"
        c.execute("CREATE SCHEMA IF NOT EXISTS t")
        c.execute("DROP TABLE IF EXISTS t.item")
        c.execute("CREATE TABLE t.item (item_id text PRIMARY KEY, qty bigint NOT NULL "
                  "CHECK (qty >= 0), note text, secret_enc bytea)")
        c.commit()
        yield c


def _part(qty: int = 1) -> pa.Table:
    rng = random.Random(7)
    return pa.table({
        "item_id": [f"k{i:05d}" for i in range(N)],
        "qty": [qty + i for i in range(N)],
        "note": [None if i % 9 == 0 else f'say "hi", {i}\nline two' for i in range(N)],
        "secret_enc": [None if i % 11 == 0 else os.urandom(rng.randint(0, 30))
                       for i in range(N)],
    })


def _load(conn, table):
    with conn.transaction():
        return upsert_partition(conn, "t", "item", "item_id", table)


def test_new_partition_is_copied_and_a_rerun_changes_nothing(conn):
    part = _part()
    first = _load(conn, part)
    assert first == {"inserted": N, "updated": 0, "unchanged": 0, "method": "copy"}
    rows = conn.execute("SELECT item_id, qty, note, secret_enc FROM t.item "
                        "ORDER BY item_id").fetchall()
    assert [r[0] for r in rows] == part["item_id"].to_pylist()
    assert [r[2] for r in rows] == part["note"].to_pylist()  # quotes, commas, newlines
    assert [None if r[3] is None else bytes(r[3]) for r in rows] == part["secret_enc"].to_pylist()
    before = table_checksum(conn, "t", "item", "item_id")
    again = _load(conn, part)
    assert again == {"inserted": 0, "updated": 0, "unchanged": N, "method": "upsert"}
    assert table_checksum(conn, "t", "item", "item_id") == before


def test_a_key_the_probe_misses_falls_back_to_the_keyed_upsert(conn):
    part = _part()
    # Row 1 is not among the probed keys (0, ~16, ~32, ...): the probe sees a new partition,
    # the COPY hits the primary key, and the upsert must take over with nothing lost.
    assert N // PROBE_KEYS > 1
    conn.execute("INSERT INTO t.item (item_id, qty) VALUES ('k00001', 999999)")
    conn.commit()
    stats = _load(conn, part)
    assert stats == {"inserted": N - 1, "updated": 1, "unchanged": 0, "method": "upsert"}
    assert conn.execute("SELECT count(*), sum(qty) FROM t.item").fetchone() == (
        N, sum(part["qty"].to_pylist()))


def test_a_bad_row_still_fails_the_copy_path(conn):
    bad = _part().set_column(1, "qty", pa.array([-1] * N, pa.int64()))
    with pytest.raises(psycopg.errors.CheckViolation):
        _load(conn, bad)
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM t.item").fetchone()[0] == 0


def test_bytea_hex_matches_postgres_hex_text_for_slices_chunks_and_nulls():
    rng = random.Random(3)
    values = [None if rng.random() < 0.2 else os.urandom(rng.randint(0, 40)) for _ in range(3000)]
    arr = pa.array(values, pa.binary())

    def per_value(a):
        return pa.array([None if v is None else "\\x" + v.hex() for v in a.to_pylist()],
                        pa.string())

    for col in (arr, arr.slice(5, 2000), pa.chunked_array([arr.slice(0, 10), arr.slice(10)]),
                pa.array([None, None], pa.binary()), pa.array([], pa.binary())):
        flat = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        assert bytea_hex(col).equals(per_value(flat))


def test_bytea_hex_text_is_what_postgres_decodes(conn):
    values = [b"", b"\x00\xff\x10", None, os.urandom(64)]
    hexed = bytea_hex(pa.array(values, pa.binary())).to_pylist()
    got = [None if h is None else bytes(conn.execute(sql.SQL("SELECT %s::bytea"), (h,))
                                        .fetchone()[0]) for h in hexed]
    assert got == values


def test_a_rerun_repairs_a_changed_and_a_missing_row(conn):
    part = _part()
    _load(conn, part)
    before = table_checksum(conn, "t", "item", "item_id")
    conn.execute("UPDATE t.item SET qty = qty + 1 WHERE item_id = 'k00500'")
    conn.execute("DELETE FROM t.item WHERE item_id IN ('k00000', 'k00999')")
    conn.commit()
    stats = _load(conn, part)  # the probe finds keys: the staged upsert (MERGE on 17+)
    assert stats == {"inserted": 2, "updated": 1, "unchanged": N - 3, "method": "upsert"}
    assert table_checksum(conn, "t", "item", "item_id") == before


def test_copy_in_slices_made_ahead_equals_the_table_and_stops_cleanly(conn, monkeypatch):
    import threading

    from handover import load

    # Small slices, so the CSV of many slices is made ahead on the thread while sent.
    monkeypatch.setattr(load, "COPY_SLICE_BYTES", 2048)
    part = _part()
    names = load.copy_arrow(conn, sql.Identifier("t", "item"),
                            iter(part.to_batches(max_chunksize=300)))
    assert names == part.column_names
    assert conn.execute("SELECT count(*), sum(qty) FROM t.item").fetchone() == (
        N, sum(part["qty"].to_pylist()))
    got = conn.execute("SELECT item_id, note, secret_enc FROM t.item ORDER BY item_id").fetchall()
    assert got == [(r["item_id"], r["note"], r["secret_enc"]) for r in part.to_pylist()]
    conn.rollback()

    # A server error mid-stream (a CHECK violation) stops the producer thread too.
    bad = part.set_column(1, "qty", pa.array([-1 if i == N - 1 else 1 for i in range(N)]))
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(psycopg.errors.CheckViolation):
        load.copy_arrow(conn, sql.Identifier("t", "item"), bad)
    conn.rollback()
    assert "copy-csv" not in {t.name for t in threading.enumerate()} - before

    # An error while making the CSV reaches the caller, nothing is loaded.
    def broken():
        yield part.to_batches(max_chunksize=300)[0]
        raise OSError("lake read failed")
    with pytest.raises(OSError, match="lake read failed"):
        load.copy_arrow(conn, sql.Identifier("t", "item"), broken())
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM t.item").fetchone()[0] == 0
