"""Load paths against a real PostgreSQL: the direct COPY of a new partition, the keyed
upsert of a rerun, and the fallback when the key probe misses a key that is there."""

from __future__ import annotations

import os
import random

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from handover.db.bulk_copy import bytea_hex
from handover.db.load import (
    MERGE_RETURNING,
    PROBE_KEYS,
    table_checksum,
    upsert_partition,
)
from tests.conftest import pg_dsn

N = 1000


@pytest.fixture(scope="module")
def embedded_dsn(tmp_path_factory):
    """The embedded PostgreSQL (18): its staged upsert is the MERGE form; the machine's
    PostgreSQL (15) runs the ON CONFLICT form. Both must behave the same."""
    from handover.storage import embedded

    pgdata = tmp_path_factory.mktemp("embedded-load") / "pgdata"
    try:
        yield embedded.ensure_running(pgdata, databases=("handover",))["target_url"]
    finally:
        embedded.stop(pgdata)


@pytest.fixture(params=["machine", "embedded"])
def conn(request, target_db):
    dsn = (
        pg_dsn(target_db) if request.param == "machine" else request.getfixturevalue("embedded_dsn")
    )
    with psycopg.connect(dsn) as c:
        merge = c.info.server_version >= MERGE_RETURNING
        assert merge == (request.param == "embedded"), "each server runs its own form"
        c.execute("CREATE SCHEMA IF NOT EXISTS t")
        c.execute("CREATE SCHEMA IF NOT EXISTS handover_work")  # ledger.ensure_schema's
        c.execute("DROP TABLE IF EXISTS t.item")
        c.execute(
            "CREATE TABLE t.item (item_id text PRIMARY KEY, qty bigint NOT NULL "
            "CHECK (qty >= 0), note text, secret_enc bytea)"
        )
        c.commit()
        yield c


def _part(qty: int = 1) -> pa.Table:
    rng = random.Random(7)
    return pa.table(
        {
            "item_id": [f"k{i:05d}" for i in range(N)],
            "qty": [qty + i for i in range(N)],
            "note": [None if i % 9 == 0 else f'say "hi", {i}\nline two' for i in range(N)],
            "secret_enc": [
                None if i % 11 == 0 else os.urandom(rng.randint(0, 30)) for i in range(N)
            ],
        }
    )


def _load(conn, table):
    with conn.transaction():
        return upsert_partition(conn, "t", "item", "item_id", table)


def test_new_partition_is_copied_and_a_rerun_changes_nothing(conn):
    part = _part()
    first = _load(conn, part)
    assert first == {"inserted": N, "updated": 0, "unchanged": 0, "stale": 0, "method": "copy"}
    rows = conn.execute(
        "SELECT item_id, qty, note, secret_enc FROM t.item ORDER BY item_id"
    ).fetchall()
    assert [r[0] for r in rows] == part["item_id"].to_pylist()
    assert [r[2] for r in rows] == part["note"].to_pylist()  # quotes, commas, newlines
    assert [None if r[3] is None else bytes(r[3]) for r in rows] == part["secret_enc"].to_pylist()
    before = table_checksum(conn, "t", "item", "item_id")
    versions = conn.execute("SELECT xmin::text, ctid::text FROM t.item ORDER BY item_id").fetchall()
    again = _load(conn, part)
    assert again == {"inserted": 0, "updated": 0, "unchanged": N, "stale": 0, "method": "upsert"}
    assert table_checksum(conn, "t", "item", "item_id") == before
    # the rerun only read: no row version was written, and its staging table is gone
    assert (
        conn.execute("SELECT xmin::text, ctid::text FROM t.item ORDER BY item_id").fetchall()
        == versions
    )
    assert _staging_tables(conn) == []


def _staging_tables(conn) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'handover_work'"
        ).fetchall()
    ]


def test_a_rerun_that_finds_one_changed_row_writes_that_row_only(conn):
    part = _part()
    _load(conn, part)
    conn.execute("UPDATE t.item SET note = 'edited' WHERE item_id = 'k00007'")
    conn.commit()
    versions = dict(conn.execute("SELECT item_id, ctid::text FROM t.item").fetchall())
    stats = _load(conn, part)
    assert stats == {
        "inserted": 0,
        "updated": 1,
        "unchanged": N - 1,
        "stale": 0,
        "method": "upsert",
    }
    after = dict(conn.execute("SELECT item_id, ctid::text FROM t.item").fetchall())
    assert {k for k in after if after[k] != versions[k]} == {"k00007"}
    assert (
        conn.execute("SELECT note FROM t.item WHERE item_id = 'k00007'").fetchone()[0]
        == part["note"][7].as_py()
    )
    assert _staging_tables(conn) == []

    # a failing rerun leaves no staging table behind either (the rollback takes it)
    bad = part.set_column(1, "qty", pa.array([-1] * N, pa.int64()))
    with pytest.raises(psycopg.errors.CheckViolation):
        _load(conn, bad)
    conn.rollback()
    assert _staging_tables(conn) == []


def test_the_check_probes_a_big_target_and_hashes_a_small_one_alike(conn):
    """A rerun's check reads the target by key probes when it is big beside the partition
    and by a hash join when it is not (or unknown: never analyzed); both give the same
    counts, a changed row included."""
    from handover.db.load import _present_and_differing, _worth_probing

    target = sql.Identifier("t", "item")
    assert _worth_probing(conn, target, N)  # never analyzed: probe
    part = _part()
    _load(conn, part)
    conn.execute("UPDATE t.item SET note = 'edited' WHERE item_id = 'k00007'")
    conn.commit()
    conn.autocommit = True
    conn.execute("ANALYZE t.item")
    conn.autocommit = False
    assert not _worth_probing(conn, target, N)  # the whole table again: hash it
    assert _worth_probing(conn, target, N // 3)  # a third of it: probe
    with conn.transaction():
        conn.execute("CREATE UNLOGGED TABLE handover_work.stg (LIKE t.item)")
        conn.execute("INSERT INTO handover_work.stg SELECT * FROM t.item")
        conn.execute("UPDATE handover_work.stg SET note = 'x' WHERE item_id = 'k00007'")
        conn.execute("INSERT INTO handover_work.stg VALUES ('new', 1, NULL, NULL)")
        stg = sql.Identifier("handover_work", "stg")
        compare = ["qty", "note", "secret_enc"]
        plans = {}
        for probe in (True, False):
            plans[probe] = _present_and_differing(
                conn, target, stg, "item_id", compare, probe=probe
            )
            # the planner settings are back to normal after either
            assert conn.execute("SHOW enable_hashjoin").fetchone()[0] == "on"
        assert plans[True] == plans[False] == (N, 1)
        conn.execute("DROP TABLE handover_work.stg")


def test_a_key_the_probe_misses_falls_back_to_the_keyed_upsert(conn):
    part = _part()
    # Row 1 is not among the probed keys (0, ~16, ~32, ...): the probe sees a new partition,
    # the COPY hits the primary key, and the upsert must take over with nothing lost.
    assert N // PROBE_KEYS > 1
    conn.execute("INSERT INTO t.item (item_id, qty) VALUES ('k00001', 999999)")
    conn.commit()
    stats = _load(conn, part)
    assert stats == {
        "inserted": N - 1,
        "updated": 1,
        "unchanged": 0,
        "stale": 0,
        "method": "upsert",
    }
    assert conn.execute("SELECT count(*), sum(qty) FROM t.item").fetchone() == (
        N,
        sum(part["qty"].to_pylist()),
    )


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
        return pa.array(
            [None if v is None else "\\x" + v.hex() for v in a.to_pylist()], pa.string()
        )

    for col in (
        arr,
        arr.slice(5, 2000),
        pa.chunked_array([arr.slice(0, 10), arr.slice(10)]),
        pa.array([None, None], pa.binary()),
        pa.array([], pa.binary()),
    ):
        flat = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        assert bytea_hex(col).equals(per_value(flat))


def test_bytea_hex_text_is_what_postgres_decodes(conn):
    values = [b"", b"\x00\xff\x10", None, os.urandom(64)]
    hexed = bytea_hex(pa.array(values, pa.binary())).to_pylist()
    got = [
        None if h is None else bytes(conn.execute(sql.SQL("SELECT %s::bytea"), (h,)).fetchone()[0])
        for h in hexed
    ]
    assert got == values


def test_a_rerun_repairs_a_changed_and_a_missing_row(conn):
    part = _part()
    _load(conn, part)
    before = table_checksum(conn, "t", "item", "item_id")
    conn.execute("UPDATE t.item SET qty = qty + 1 WHERE item_id = 'k00500'")
    conn.execute("DELETE FROM t.item WHERE item_id IN ('k00000', 'k00999')")
    conn.commit()
    stats = _load(conn, part)  # the probe finds keys: the staged upsert (MERGE on 17+)
    assert stats == {
        "inserted": 2,
        "updated": 1,
        "unchanged": N - 3,
        "stale": 0,
        "method": "upsert",
    }
    assert table_checksum(conn, "t", "item", "item_id") == before


def test_copy_in_slices_made_ahead_equals_the_table_and_stops_cleanly(conn, monkeypatch):
    import threading

    from handover.db import bulk_copy as load

    # Small slices, so the CSV of many slices is made ahead on the thread while sent.
    monkeypatch.setattr(load, "COPY_SLICE_BYTES", 2048)
    part = _part()
    names = load.copy_arrow(
        conn, sql.Identifier("t", "item"), iter(part.to_batches(max_chunksize=300))
    )
    assert names == part.column_names
    assert conn.execute("SELECT count(*), sum(qty) FROM t.item").fetchone() == (
        N,
        sum(part["qty"].to_pylist()),
    )
    got = conn.execute("SELECT item_id, note, secret_enc FROM t.item ORDER BY item_id").fetchall()
    assert got == [(r["item_id"], r["note"], r["secret_enc"]) for r in part.to_pylist()]
    conn.rollback()

    # A server error mid-stream (a CHECK violation) stops the producer thread too.
    bad = part.set_column(1, "qty", pa.array([-1 if i == N - 1 else 1 for i in range(N)]))
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(psycopg.errors.CheckViolation):
        load.copy_arrow(conn, sql.Identifier("t", "item"), bad)
    conn.rollback()
    assert "copy-encode" not in {t.name for t in threading.enumerate()} - before

    # An error while making the CSV reaches the caller, nothing is loaded.
    def broken():
        yield part.to_batches(max_chunksize=300)[0]
        raise OSError("lake read failed")

    with pytest.raises(OSError, match="lake read failed"):
        load.copy_arrow(conn, sql.Identifier("t", "item"), broken())
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM t.item").fetchone()[0] == 0


def _typed() -> pa.Table:
    """Every Arrow type a mapping writes, with nulls, sub-second times, old dates, odd text."""
    n = 500
    base = 1_700_000_000_123  # ms
    return pa.table(
        {
            "k": pa.array([f"k{i:04d}" for i in range(n)]),
            "big": pa.array(
                [None if i % 7 == 0 else (i - 250) * 10**12 for i in range(n)], pa.int64()
            ),
            "flag": pa.array([None if i % 5 == 0 else i % 2 == 0 for i in range(n)]),
            "at": pa.array(
                [None if i % 6 == 0 else base + i * 1_000_001 for i in range(n)], pa.timestamp("ms")
            ),
            "day": pa.array(
                [None if i % 8 == 0 else -20_000 + i * 97 for i in range(n)], pa.date32()
            ),
            "code": pa.array([None if i % 4 == 0 else "MF"[i % 2] for i in range(n)]),
            "txt": pa.array(
                [None if i % 3 == 0 else f'ä,"q"\\N\n\t{i}' for i in range(n)], pa.large_string()
            ),
            "blob": pa.array(
                [None if i % 9 == 0 else bytes([i % 256]) * (i % 17) for i in range(n)], pa.binary()
            ),
        }
    )


TYPED_DDL = (
    "(k text PRIMARY KEY, big bigint, flag boolean, at timestamp, day date, "
    "code char(1), txt text, blob bytea)"
)


def test_binary_copy_loads_what_csv_copy_loads(conn, monkeypatch):
    from handover.db import bulk_copy as load

    data = _typed()
    for name in ("typed_csv", "typed_bin"):
        conn.execute(sql.SQL("CREATE TABLE t.{} " + TYPED_DDL).format(sql.Identifier(name)))
    assert load.copy_format(conn, sql.Identifier("t", "typed_bin"), data.schema) == "binary"
    load.copy_arrow(conn, sql.Identifier("t", "typed_bin"), data)
    monkeypatch.setattr(load, "copy_format", lambda *_: "csv")
    load.copy_arrow(conn, sql.Identifier("t", "typed_csv"), data)
    rows = [
        conn.execute(f"SELECT * FROM t.{name} ORDER BY k").fetchall()
        for name in ("typed_csv", "typed_bin")
    ]
    assert len(rows[0]) == data.num_rows
    assert rows[0] == rows[1]
    # and both equal the Arrow values (timestamps to the millisecond, no time zone shift)
    assert [r[3] for r in rows[1]] == data["at"].to_pylist()
    assert [r[4] for r in rows[1]] == data["day"].to_pylist()
    assert [r[7] for r in rows[1]] == data["blob"].to_pylist()
    conn.rollback()


def test_copy_falls_back_to_csv_where_binary_input_would_misread(conn):
    from handover.db import bulk_copy as load

    conn.execute("CREATE DOMAIN t.code AS text CHECK (VALUE <> '')")
    conn.execute(
        "CREATE TABLE t.odd (k text, n integer, d date, z timestamptz, c t.code, m numeric(12, 2))"
    )
    odd = sql.Identifier("t", "odd")

    def fmt(**columns: pa.Array) -> str:
        return load.copy_format(conn, odd, pa.table(columns).schema)

    assert fmt(k=pa.array(["a"])) == "binary"
    assert fmt(k=pa.array(["a"]), n=pa.array([1], pa.int64())) == "csv"  # int8 -> int4
    assert fmt(k=pa.array(["a"]), n=pa.array([1], pa.int32())) == "binary"
    assert fmt(d=pa.array(["2024-01-31"])) == "csv"  # text -> date
    assert fmt(z=pa.array([0], pa.timestamp("ms"))) == "csv"  # naive -> tz
    assert fmt(z=pa.array([0], pa.timestamp("us", tz="UTC"))) == "binary"
    assert fmt(z=pa.array([0], pa.timestamp("ns", tz="UTC"))) == "csv"  # pgpq: no ns
    assert fmt(c=pa.array(["x"])) == "csv"  # a domain
    assert fmt(m=pa.array(["1.50"])) == "csv"
    assert fmt(nope=pa.array(["x"])) == "csv"  # no such column

    # the CSV path still loads what binary input would refuse: int64 into integer, text dates
    load.copy_arrow(
        conn,
        odd,
        pa.table(
            {
                "k": ["a", "b"],
                "n": pa.array([1, None], pa.int64()),
                "d": ["2024-01-31", None],
                "m": ["1.50", "2"],
            }
        ),
    )
    assert conn.execute("SELECT k, n, d::text, m::text FROM t.odd ORDER BY k").fetchall() == [
        ("a", 1, "2024-01-31", "1.50"),
        ("b", None, None, "2.00"),
    ]
    conn.rollback()


def test_binary_copy_takes_batches_whose_types_drift_to_the_first_schema(conn):
    """A later file of a table can type an all-null column as null; one encoder serves all."""
    from handover.db import bulk_copy as load

    first = pa.record_batch(
        {
            "item_id": ["a1"],
            "qty": pa.array([1], pa.int64()),
            "note": ["x"],
            "secret_enc": pa.array([b"\x00"], pa.binary()),
        }
    )
    later = pa.record_batch(
        {
            "item_id": ["a2"],
            "qty": pa.array([2], pa.int64()),
            "note": pa.nulls(1),
            "secret_enc": pa.nulls(1),
        }
    )
    load.copy_arrow(conn, sql.Identifier("t", "item"), iter([first, later]))
    assert conn.execute(
        "SELECT item_id, qty, note, secret_enc FROM t.item ORDER BY 1"
    ).fetchall() == [("a1", 1, "x", b"\x00"), ("a2", 2, None, None)]
    conn.rollback()


def test_sync_upsert_and_delete_count_what_they_wrote(conn):
    """The nightly sync's writes: older never beats newer, and every staged row and
    deletion is counted once as inserted, updated, unchanged, stale, deleted, absent or
    superseded, counted in the server."""
    from datetime import datetime

    from handover.db.load import delete_keys, upsert_newer

    conn.execute("ALTER TABLE t.item ADD COLUMN changed_at timestamp")
    conn.commit()

    def night(keys, qty, at):
        return pa.table(
            {
                "item_id": keys,
                "qty": [qty] * len(keys),
                "note": ["n"] * len(keys),
                "secret_enc": pa.nulls(len(keys), pa.binary()),
                "changed_at": [datetime(2026, 11, at)] * len(keys),
            }
        )

    with conn.transaction():
        first = upsert_newer(
            conn, "t", "item", "item_id", night(["a", "b", "c", "d"], 1, 2), "changed_at"
        )
    assert first == {"inserted": 4, "updated": 0, "stale": 0, "unchanged": 0}
    with conn.transaction():  # a night of the 3rd: b and c change, e is new, a is as it was
        later = night(["b", "c", "e"], 2, 3)
        again = upsert_newer(
            conn,
            "t",
            "item",
            "item_id",
            pa.concat_tables([night(["a"], 1, 2), later]),
            "changed_at",
        )
    assert again == {"inserted": 1, "updated": 2, "stale": 0, "unchanged": 1}
    with conn.transaction():  # the night of the 2nd replayed: b and c stay as the 3rd left them
        replay = upsert_newer(conn, "t", "item", "item_id", night(["b", "c"], 1, 2), "changed_at")
    assert replay == {"inserted": 0, "updated": 0, "stale": 2, "unchanged": 0}
    with conn.transaction():
        gone = delete_keys(
            conn,
            "t",
            "item",
            "item_id",
            [
                ("a", datetime(2026, 11, 4)),
                ("b", datetime(2026, 11, 2, 12)),
                ("zz", datetime(2026, 11, 4)),
            ],
            "changed_at",
        )
    assert gone == {"deleted": 1, "absent": 1, "superseded": 1}
    rows = dict(conn.execute("SELECT item_id, qty FROM t.item ORDER BY 1").fetchall())
    assert rows == {"b": 2, "c": 2, "d": 1, "e": 2}


def test_a_changed_blind_index_rewrites_the_row_ciphertext_included(conn):
    """docs/protection.md: a target loaded when blind indexes were named by the source
    table is upgraded by loading again. The index differs, so the row is rewritten, and
    the ciphertext (never compared itself) is replaced with the new one."""
    conn.execute("ALTER TABLE t.item ADD COLUMN secret_bidx text")
    conn.commit()
    old = _part().append_column("secret_bidx", pa.array([f"old{i}" for i in range(N)]))
    _load(conn, old)
    new = (
        _part()
        .set_column(3, "secret_enc", pa.array([b"new"] * N, pa.binary()))
        .append_column("secret_bidx", pa.array([f"new{i}" for i in range(N)]))
    )

    assert _load(conn, new)["updated"] == N
    assert (
        conn.execute(
            "SELECT count(*) FROM t.item WHERE secret_enc = 'new'::bytea AND "
            "secret_bidx LIKE 'new%'"
        ).fetchone()[0]
        == N
    )
