"""The nightly sync over three synthetic legacy days, in one process, on real PostgreSQL.

Migrates day 0, then syncs nights 1-3 of `handover_synth.changes`. After each night the
legacy state and the target are compared here independently of the sync's own
reconciliation (key sets per table, and fields): they agree. Deletions are applied, late
records land, defective rows are quarantined with their reasons and nothing else is,
the ledger balances (in = loaded + quarantined + excluded + deleted), a night cannot
overtake the one before it, rerunning night 2 after night 3 changes nothing, and a
target that drifts from the legacy fails the reconciliation gate with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import uuid

import pandas as pd
import psycopg
import pytest

from handover.config.loader import load_config
from handover.db.load import table_checksum
from handover.flows import migration as pipeline
from handover.flows import nightly as sync
from handover.flows import nightly_extract
from handover.flows.runner import run_migration
from handover_synth import changes as synth_changes
from handover_synth import legacy_bss as synth
from handover_synth.legacy_bss import TABLE_COLUMNS
from tests.conftest import pg_dsn, unhash_book_keys

pytestmark = pytest.mark.integration
SUBSCRIBERS = 300
DAYS = ("2026-11-01", "2026-11-02", "2026-11-03")
KEYS = {t: cols[0] for t, cols in TABLE_COLUMNS.items()}
STATUS = {"1": "active", "2": "suspended", "3": "closed"}


def _night(changes, day: str) -> dict:
    start = pd.Timestamp(day)
    return sync.run_night(
        changes_dir=str(changes),
        data_interval_start=start,
        data_interval_end=start + pd.Timedelta(days=1),
    )


def _target(dsn: str) -> dict[str, pd.DataFrame]:
    cfg = load_config("legacy_bss")
    out = {}
    with psycopg.connect(dsn) as conn:
        for t in cfg.tables:
            tmap = cfg.table_mapping(t)
            cur = conn.execute(f"SELECT * FROM crm.{tmap['target']}")
            out[t] = pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])
    return out


def _checksums(dsn: str) -> dict[str, tuple[int, str]]:
    cfg = load_config("legacy_bss")
    with psycopg.connect(dsn) as conn:
        return {
            t: table_checksum(
                conn, "crm", cfg.table_mapping(t)["target"], cfg.table_mapping(t)["key"]
            )
            for t in cfg.tables
        }


def _old_vs_new(source, changes, upto: int, dsn: str) -> dict[str, list]:
    """Independent check: legacy state after day `upto` versus the target.

    Expected in the target: every legacy key except those the answer keys (the export's
    truth.csv and each day's) send to quarantine or exclusion; a defective update
    (MALFORMED_MSISDN) keeps the customer's previous version, so its fields are not
    compared. Returns the problems found, per table.
    """
    days = pd.concat(
        [
            pd.read_csv(changes / d / "truth.csv", dtype=str, keep_default_na=False)
            for d in DAYS[:upto]
        ],
        ignore_index=True,
    )
    truth = pd.concat(
        [pd.read_csv(source / "truth.csv", dtype=str, keep_default_na=False), days],
        ignore_index=True,
    )
    kept_old = set(days.loc[days["defect"] == "MALFORMED_MSISDN", "key"])
    absent = truth[
        truth["expected_outcome"].isin(["quarantined", "excluded", "merged"])
        & ~truth["key"].isin(kept_old)
    ]
    state = changes / DAYS[upto - 1] / "state"
    target = _target(dsn)
    problems: dict[str, list] = {}
    for table, key in KEYS.items():
        legacy = pd.read_csv(state / f"{table}.csv", dtype=str, keep_default_na=False)
        gone = set(absent.loc[absent["table"] == table, "key"])
        expected = set(legacy[key]) - gone
        tkey = load_config("legacy_bss").table_mapping(table)["key"]
        got = set(target[table][tkey])
        problems[table] = sorted(expected ^ got)
        both = legacy[legacy[key].isin(got - kept_old)].set_index(key)
        new = target[table].set_index(tkey).loc[both.index]
        if table == "subscribers":
            pairs = [
                (both["status"].map(STATUS), new["status"]),
                (both["city"], new["city"]),
                (both["address"], new["address"]),
                (both["updated_at"], new["source_updated_at"].dt.strftime("%Y-%m-%d %H:%M:%S")),
            ]
            ascii_msisdn = both["msisdn"].str.fullmatch(r"1\d{10}")
            pairs.append((both.loc[ascii_msisdn, "msisdn"], new.loc[ascii_msisdn, "msisdn"]))
        elif table == "consents":
            pairs = [
                (both["granted"] == "1", new["granted"]),
                (both["granted_at"], new["granted_at"].dt.strftime("%Y-%m-%d %H:%M:%S")),
            ]
        elif table == "call_records":
            ascii_caller = both["caller"].str.fullmatch(r"1\d{10}")  # others get normalised
            pairs = [
                (both["start_time"], new["started_at"].dt.strftime("%Y-%m-%d %H:%M:%S")),
                (both["charge_fen"].astype(int), new["charge_fen"].astype(int)),
                (both.loc[ascii_caller, "caller"], new.loc[ascii_caller, "caller_msisdn"]),
            ]
        elif table == "payments":
            pairs = [(both["amount_fen"].astype(int), new["amount_fen"].astype(int))]
        else:
            pairs = []
        for old_col, new_col in pairs:
            differs = old_col.to_numpy() != new_col.to_numpy()
            problems[table] += [f"field of {k}" for k in old_col.index[differs]]
    return {t: p for t, p in problems.items() if p}


@pytest.fixture(scope="module")
def world(target_db, keyring_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("nightly")
    source, changes = root / "source", root / "changes"
    synth.generate(source, SUBSCRIBERS, seed=5)
    synth_changes.generate_changes(source, changes, days=len(DAYS), seed=1)
    dsn = pg_dsn(target_db)
    mp = pytest.MonkeyPatch()
    mp.setenv("HANDOVER_TARGET_DSN", dsn)
    mp.setenv("HANDOVER_LAKE_URL", f"file://{root / 'lake'}")
    mp.setenv("HANDOVER_KEYRING_FILE", str(keyring_file))
    mp.delenv("AIRFLOW_CONN_HANDOVER_KEYS", raising=False)
    mp.delenv("AIRFLOW_CONN_HANDOVER_TARGET", raising=False)
    run_migration(run_id=f"mig_{uuid.uuid4().hex[:6]}", source_dir=str(source))
    nights, checks, refused = {}, {}, None
    for i, day in enumerate(DAYS, start=1):
        nights[day] = _night(changes, day)
        checks[day] = _old_vs_new(source, changes, i, dsn)
        if i == 1:  # night 3 may not overtake night 2
            with pytest.raises(sync.NightOrderError) as err:
                _night(changes, DAYS[2])
            refused = str(err.value)
    yield {
        "root": root,
        "source": source,
        "changes": changes,
        "dsn": dsn,
        "nights": nights,
        "checks": checks,
        "refused": refused,
        "keyring": keyring_file,
    }
    mp.undo()


def _truth(world, day: str) -> pd.DataFrame:
    return pd.read_csv(world["changes"] / day / "truth.csv", dtype=str, keep_default_na=False)


def test_change_sets_are_deterministic(world, tmp_path):
    def digest(folder):
        return {
            p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }

    synth_changes.generate_changes(world["source"], tmp_path / "again", days=1, seed=1)
    first = digest(world["changes"] / DAYS[0])
    assert digest(tmp_path / "again" / DAYS[0]) == first
    synth_changes.generate_changes(world["source"], tmp_path / "other", days=1, seed=2)
    assert digest(tmp_path / "other" / DAYS[0]) != first


def test_old_and_new_agree_after_every_night(world):
    for day in DAYS:
        assert world["checks"][day] == {}, day
        recon = world["nights"][day]["reconciled"]
        assert len(recon) == 7 and all(r["balanced"] and r["differing"] == 0 for r in recon), day


def test_each_night_really_changed_something(world):
    for day in DAYS:
        loads = world["nights"][day]["loaded"]
        by_table = {}
        for r in loads:
            by_table.setdefault(r["table"], [0, 0])
            by_table[r["table"]][0] += r["inserted"]
            by_table[r["table"]][1] += r["updated"]
        assert by_table["subscribers"][0] >= 3 and by_table["subscribers"][1] >= 5, day
        assert by_table["call_records"][0] >= 10, day
        assert by_table["consents"][1] >= 1, day  # a revoked marketing consent


def test_ledger_balances_every_night(world):
    with psycopg.connect(world["dsn"]) as conn:
        for day in DAYS:
            run_id = sync.night_run_id(pd.Timestamp(day))
            rows = conn.execute(
                "SELECT table_name, sum(rows_in) FILTER (WHERE stage='extract'), "
                "sum(rows_out) FILTER (WHERE stage='load'), "
                "sum(rows_quarantined + rows_merged) FILTER (WHERE stage='cleanse'), "
                "sum(rows_excluded) FILTER (WHERE stage='comply'), "
                "sum(rows_excluded) FILTER (WHERE stage='extract' AND partition='deleted'), "
                # orphans of earlier runs the night took in again (not in its files)
                "coalesce(sum((detail->>'released_orphans')::int) FILTER (WHERE "
                "stage='extract'), 0) "
                "FROM handover_meta.ledger WHERE run_id=%s GROUP BY 1",
                (run_id,),
            ).fetchall()
            status = conn.execute(
                "SELECT status FROM handover_meta.run WHERE run_id=%s", (run_id,)
            ).fetchone()[0]
            manifest = json.loads((world["changes"] / day / "change_manifest.json").read_text())
            assert status == "succeeded"
            assert len(rows) == 7
            for table, rows_in, loaded, quarantined, excluded, deleted, again in rows:
                m = manifest["tables"][table]
                assert rows_in - again == m["rows"] + m["deleted_rows"], (day, table)
                assert deleted == m["deleted_rows"], (day, table)
                assert rows_in == loaded + quarantined + excluded + deleted, (day, table)


def test_deletions_applied_and_tombstoned(world):
    target = _target(world["dsn"])
    cfg = load_config("legacy_bss")
    with psycopg.connect(world["dsn"]) as conn:
        tombs = set(
            conn.execute("SELECT table_name, record_key FROM handover_meta.tombstone").fetchall()
        )
        removed = conn.execute(
            "SELECT sum((detail->>'deleted')::int) FROM handover_meta.ledger "
            "WHERE stage='delete' AND run_id LIKE 'nightly_sync__%'"
        ).fetchone()[0]
    deleted = pd.concat([_truth(world, d) for d in DAYS])
    deleted = deleted[deleted["defect"] == "DELETED"]
    assert deleted["table"].nunique() >= 5 and removed > 0
    for row in deleted.itertuples():
        assert (row.table, row.key) in tombs
        assert row.key not in set(target[row.table][cfg.table_mapping(row.table)["key"]])


def test_late_records_land_with_their_own_time(world):
    target = _target(world["dsn"])
    for day in DAYS:
        late = _truth(world, day)
        late = late[late["defect"] == "LATE_ARRIVAL"]
        calls = target["call_records"].set_index("cdr_id")
        keys = late.loc[late["table"] == "call_records", "key"]
        assert len(keys) == 3
        assert (calls.loc[keys, "started_at"] < pd.Timestamp(day)).all()
        assert set(late.loc[late["table"] == "data_sessions", "key"]) <= set(
            target["data_sessions"]["session_id"]
        )


def test_defective_rows_quarantined_with_reasons_and_nothing_else(world):
    with psycopg.connect(world["dsn"]) as conn:
        for day in DAYS:
            run_id = sync.night_run_id(pd.Timestamp(day))
            # orphans of earlier runs the night took in again are not its own defects
            again = {
                (t, k)
                for t, k in conn.execute(
                    "SELECT table_name, record_key FROM handover_meta.quarantine WHERE "
                    "released_by=%s",
                    (run_id,),
                )
            }
            got = {
                (t, k): ("quarantined", r)
                for t, k, r in conn.execute(
                    "SELECT table_name, record_key, reason FROM handover_meta.quarantine "
                    "WHERE run_id=%s",
                    (run_id,),
                )
                if (t, k) not in again
            }
            truth = _truth(world, day)
            # the night's end destroyed its excluded rows: the books hold keyed hashes
            excluded = unhash_book_keys(
                world["keyring"],
                conn.execute(
                    "SELECT table_name, record_key, rule_id FROM handover_meta.exclusion "
                    "WHERE run_id=%s",
                    (run_id,),
                ).fetchall(),
                set(zip(truth.table, truth.key, strict=True)),
            )
            got.update({(t, k): ("excluded", r) for t, k, r in excluded})
            got.update(
                {
                    (t, k): ("merged", r)
                    for t, k, r in conn.execute(
                        "SELECT table_name, merged_key, rule FROM handover_meta.merge_map "
                        "WHERE run_id=%s",
                        (run_id,),
                    )
                }
            )
            expected = {
                (r.table, r.key): (r.expected_outcome, r.expected_reason)
                for r in truth.itertuples()
                if r.expected_outcome in ("quarantined", "excluded", "merged")
            }
            reasons = {v[1] for v in expected.values()}
            assert {
                "INVALID_ID_CHECKSUM",
                "INVALID_MSISDN",
                "NEGATIVE_AMOUNT",
                "INVALID_DATE",
                "ORPHAN_RECORD",
                "MISSING_FIELD",
                "NO_CONSENT",
            } <= reasons, day
            assert got == expected, day
    assert ("subscribers", "EXISTING_CUSTOMER") in {
        (t, r) for t, _, _, _, r in _truth(world, DAYS[1]).itertuples(index=False)
    }


def test_a_night_cannot_overtake_the_one_before(world):
    assert "night 2026-11-02" in world["refused"] and "in order" in world["refused"]


def test_no_pii_in_sync_reports(world):
    state = world["changes"] / DAYS[-1] / "state" / "subscribers.csv"
    subs = pd.read_csv(state, dtype=str, keep_default_na=False)
    secrets = set(subs["id_number"]) | set(subs["msisdn"]) | set(subs["address"])
    texts = [
        p.read_text(errors="ignore")
        for day in DAYS
        for sub in ("reconcile", "reports")
        for p in (
            world["root"] / "lake" / "runs" / sync.night_run_id(pd.Timestamp(day)) / sub
        ).rglob("*")
        if p.is_file()
    ]
    assert len(texts) >= 7 * len(DAYS)
    blob = "\n".join(texts)
    assert [s for s in secrets if s and s in blob] == []


def test_postgres_side_matches_frame_side(world):
    from psycopg import sql

    from handover.stages.diff import FrameSide, PostgresSide, diff_sides, row_hash, sql_row_hash

    calls = _target(world["dsn"])["call_records"]
    cols = [
        ("started_at", "timestamp without time zone"),
        ("charge_fen", "bigint"),
        ("cell_id", "text"),
    ]
    frame = FrameSide(
        "old",
        calls["cdr_id"].tolist(),
        [row_hash(r) for r in calls[[c for c, _ in cols]].itertuples(index=False)],
    )
    with psycopg.connect(world["dsn"]) as conn, conn.transaction() as tx:
        conn.execute(
            "UPDATE crm.call_record SET charge_fen = charge_fen + 1 WHERE cdr_id = %s",
            (calls["cdr_id"].iloc[100],),
        )
        pg = PostgresSide(
            conn,
            "calls",
            sql.SQL("SELECT cdr_id AS k, {} AS h FROM crm.call_record").format(sql_row_hash(cols)),
        )
        result = diff_sides(frame, pg, bisection_factor=4, threshold=32)
        raise psycopg.Rollback(tx)  # leave the target as it was
    assert result.changed == [calls["cdr_id"].iloc[100]]
    assert result.only_left == [] and result.only_right == []
    assert result.rows_fetched <= 2 * 32


def test_rerun_night_2_after_night_3_changes_nothing(world):
    before = _checksums(world["dsn"])
    again = _night(world["changes"], DAYS[1])
    assert _checksums(world["dsn"]) == before
    assert sum(r["inserted"] + r["updated"] for r in again["loaded"]) == 0
    assert sum(r["deleted"] for r in again["deleted"]) == 0
    assert sum(r["stale"] for r in again["loaded"]) >= 1  # changed again on day 3
    assert sum(r["tombstoned"] for r in again["loaded"]) >= 2  # deleted on day 3
    assert all(r["balanced"] and r["differing"] == 0 for r in again["reconciled"])
    assert _old_vs_new(world["source"], world["changes"], 3, world["dsn"]) == {}


def test_drift_fails_the_reconciliation_gate_clearly(world):
    ctx = world["nights"][DAYS[-1]]["ctx"]
    with psycopg.connect(world["dsn"]) as conn:
        cdr = conn.execute("SELECT cdr_id FROM crm.call_record ORDER BY cdr_id LIMIT 1").fetchone()[
            0
        ]
        conn.execute("DELETE FROM crm.call_record WHERE cdr_id=%s", (cdr,))
        conn.execute(
            "UPDATE crm.customer SET city = city || '?' WHERE customer_id = "
            "(SELECT min(customer_id) FROM crm.customer)"
        )
    for table, differing in (
        ("call_records", "1 keys differ (1 missing in the target"),
        ("subscribers", "1 keys differ (0 missing in the target, 0 only in the target, 1 changed)"),
    ):
        assert sync.reconcile_table(ctx, table)["differing"] == 1
        with pytest.raises(pipeline.GateFailed) as err:
            sync.reconciliation_gate(ctx, table)
        message = str(err.value)
        assert f"reconciliation gate failed for {table}" in message
        assert differing in message and "old_new_agree" in message
        assert "\n" not in message


def test_extract_reads_a_change_file_as_the_migration_reads_an_export(world, tmp_path):
    """A BOM, CRLF line ends and a quoted comma and newline in a complaint's text are read;
    rows are split by the key as cleanse sees it (pipeline.HashSplit), so a full-width
    spelling of a key lands beside its ASCII one; every row lands once, in the ledger too."""
    from handover.storage.lake import lake_from_url, part_key

    header = "complaint_id,cust_id,created_at,category,text,satisfaction"
    rows = [f"CP{i:05d},C{i:05d},2026-11-02 10:00:00,billing,plain text {i},3" for i in range(600)]
    rows.append('CP00007x,C00007,2026-11-02 11:00:00,billing,"says ""hi"", then\nmore",2')
    rows.append("\uff23\uff30\uff10\uff10\uff10\uff11\uff12,C00012,2026-11-02 12:00:00,billing,t,1")
    (tmp_path / "complaints.csv").write_bytes(
        ("\ufeff" + "\r\n".join([header, *rows]) + "\r\n").encode("utf-8")
    )
    (tmp_path / "complaints_deleted.csv").write_text("complaint_id,deleted_at\n")
    run_id = f"extract_{uuid.uuid4().hex[:8]}"
    ctx = {
        "system": "legacy_bss",
        "run_id": run_id,
        "source_dir": str(tmp_path),
        "files": {
            "complaints": {"file": "complaints.csv", "deleted_file": "complaints_deleted.csv"}
        },
        "manifest_rows": {"complaints": len(rows)},
        "deleted_rows": {"complaints": 0},
    }
    mp = pytest.MonkeyPatch()
    mp.setattr(nightly_extract, "ROWS_PER_PARTITION", 100)  # several partitions of a small file
    mp.setattr(pipeline.SourceConfig, "partitions", lambda self, name: 8)
    try:
        parts = sync.extract_changes(ctx, "complaints")
    finally:
        mp.undo()
    assert len(parts) == 7 and sum(p["rows"] for p in parts) == len(rows)
    lake = lake_from_url()
    tables = {
        p["partition"]: lake.read_table(part_key(run_id, "raw", "complaints", p["partition"]))
        for p in parts
    }
    where = {k: p for p, t in tables.items() for k in t.column("complaint_id").to_pylist()}
    assert where["\uff23\uff30\uff10\uff10\uff10\uff11\uff12"] == where["CP00012"]
    quoted = next(t for t in tables.values() if "CP00007x" in t.column("complaint_id").to_pylist())
    texts = dict(
        zip(
            quoted.column("complaint_id").to_pylist(),
            quoted.column("text").to_pylist(),
            strict=True,
        )
    )
    assert texts["CP00007x"] == 'says "hi", then\nmore'
    assert sorted(r for t in tables.values() for r in t.column("_source_row").to_pylist()) == list(
        range(1, len(rows) + 1)
    )
    with psycopg.connect(world["dsn"]) as conn:
        ledger_rows = conn.execute(
            "SELECT sum(rows_out) FILTER (WHERE partition LIKE 'p%%'), count(*) FROM "
            "handover_meta.ledger WHERE run_id=%s AND stage='extract'",
            (run_id,),
        ).fetchone()
    assert ledger_rows == (len(rows), 8)  # seven partitions and the deletions' row


def test_deleted_keys_are_read_as_the_nights_rows_are(tmp_path):
    """A deleted-keys export: keys normalised like the rows they delete (NFKC, trimmed),
    so a full-width key deletes its row; a line without key or time names its line."""
    from handover.flows import migration as pl
    from handover.flows.nightly import _read_deletions

    path = tmp_path / "subscribers.deleted.csv"
    path.write_text(
        "cust_id,deleted_at\nＣ00000001 ,2026-11-02 08:00:00\nC00000002,2026-11-02 09:00:00\n",
        encoding="utf-8-sig",
    )
    dels = _read_deletions(path, "cust_id")
    assert dels["key"].tolist() == ["C00000001", "C00000002"]
    path.write_text(
        "cust_id,deleted_at\nC1,2026-11-02 08:00:00\n　,2026-11-02 08:00:00\n", encoding="utf-8"
    )
    with pytest.raises(pl.SourceError, match=r"deleted\.csv line 3: a deletion needs a key"):
        _read_deletions(path, "cust_id")
