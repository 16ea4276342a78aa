"""telco_c: a third operator whose export is as hostile as a real legacy one, by config alone.

handover_synth.telco_c re-expresses a legacy_bss export the way a twenty-year-old back office
hands it over: no header rows, pinyin-initial columns named only in a data dictionary
(数据字典.txt, a non-data file beside the files), GB18030 and UTF-16 with CRLF and the
delimiters ^, 0x1F and ~, keys in mixed case and padded, 15-digit first-generation resident
IDs, the same person exported twice across ID generations, money as printed (`¥17,504.10`,
`(12.50)`, `负3.00`), dates written five ways in one column, phones of every class, and no
export manifest. As a receiver would, the test writes the manifest with `handover
manifest`, runs `handover check`, then migrates with handover.flows.runner.run_migration (the
DAG's task bodies in the DAG's order) and holds the result to the answer key, truth.csv,
which names the fate of every row: loaded, quarantined (reason), excluded (policy rule) or
merged (into the surviving record of the same person).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from datetime import date
from decimal import Decimal

import pandas as pd
import psycopg
import pytest

from handover.config.loader import load_config
from handover.flows.runner import run_migration
from handover.ops.check import run_check
from handover.protection.fields import Keyring, decrypt_value
from handover_synth import legacy_bss as synth
from handover_synth import telco_c as synth_c
from tests.conftest import ROOT, create_database, drop_database, pg_dsn, unhash_book_keys

pytestmark = pytest.mark.integration
SYSTEM = "telco_c"
SUBSCRIBERS = 300
SEED = 23
FATES = ("loaded", "quarantined", "excluded", "merged")
MONEY = {"thxd": "charge_fen", "swjl": "charge_fen", "jfjl": "amount_fen"}


def _export(root):
    """The telco_c export as the operator hands it over (no manifest), and what synth_c
    says about it (the export time the data dictionary states)."""
    legacy, source = root / "legacy_bss", root / "export"
    synth.generate(legacy, SUBSCRIBERS, seed=SEED)
    info = synth_c.derive(legacy, source)
    assert (source / synth_c.DICTIONARY).is_file()
    return source, info


@pytest.fixture(scope="module")
def run(tmp_path_factory, keyring_file):
    root = tmp_path_factory.mktemp("telco_c")
    source, info = _export(root)
    assert not (source / "export_manifest.json").exists()
    # the receiver writes the manifest from the files as received, with the export time
    # the operator states (the dictionary's 导出时间)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "include"), "PYTHONWARNINGS": "ignore"}
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "handover.ops.cli",
            "manifest",
            "--system",
            SYSTEM,
            "--source-dir",
            str(source),
            "--exported-at",
            info["exported_at"],
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    target = create_database("handover_telco_c")
    mp = pytest.MonkeyPatch()
    mp.setenv("HANDOVER_LAKE_URL", f"file://{root / 'lake'}")
    mp.setenv("HANDOVER_KEYRING_FILE", str(keyring_file))
    mp.setenv("HANDOVER_TARGET_DSN", pg_dsn(target))
    mp.delenv("AIRFLOW_CONN_HANDOVER_KEYS", raising=False)
    mp.delenv("AIRFLOW_CONN_HANDOVER_TARGET", raising=False)
    run_id = f"{SYSTEM}_{uuid.uuid4().hex[:6]}"
    try:
        run_migration(run_id=run_id, source_dir=str(source), system=SYSTEM)
        truth = pd.read_csv(source / "truth.csv", dtype=str, keep_default_na=False)
        yield {
            "source": source,
            "legacy": root / "legacy_bss",
            "info": info,
            "truth": truth,
            "dsn": pg_dsn(target),
            "run_id": run_id,
            "keyring": keyring_file,
        }
    finally:
        mp.undo()
        drop_database(target)


def _targets() -> dict[str, tuple[str, str]]:
    """telco_c table -> (target table, target key)."""
    cfg = load_config(SYSTEM)
    return {t: (cfg.table_mapping(t)["target"], cfg.table_mapping(t)["key"]) for t in cfg.tables}


def _outcomes(run) -> dict[tuple[str, str], tuple]:
    """What the run did with every row it reports on: (table, key) -> (fate, detail)."""
    truth = run["truth"]
    got: dict[tuple[str, str], tuple] = {}
    with psycopg.connect(run["dsn"]) as conn:
        for table, (target, key) in _targets().items():
            for (k,) in conn.execute(f"SELECT {key} FROM crm.{target}"):
                got[(table, k)] = ("loaded", "")
        q = conn.execute(
            "SELECT table_name, record_key, reason FROM handover_meta.quarantine WHERE run_id=%s",
            (run["run_id"],),
        ).fetchall()
        x = conn.execute(
            "SELECT table_name, record_key, rule_id FROM handover_meta.exclusion WHERE run_id=%s",
            (run["run_id"],),
        ).fetchall()
        m = conn.execute(
            "SELECT table_name, merged_key, rule, survivor_key FROM "
            "handover_meta.merge_map WHERE run_id=%s",
            (run["run_id"],),
        ).fetchall()
    # excluded rows were destroyed at the run's end: the books hold their keys hashed
    x = unhash_book_keys(run["keyring"], x, set(zip(truth.table, truth.key, strict=True)))
    for outcome, rows in (("quarantined", q), ("excluded", x)):
        for t, k, reason in rows:
            assert (t, k) not in got, f"{t} {k}: {got[(t, k)][0]} and {outcome}"
            got[(t, k)] = (outcome, reason)
    for t, k, rule, survivor in m:
        assert (t, k) not in got, f"{t} {k}: {got[(t, k)][0]} and merged"
        got[(t, k)] = ("merged", f"{rule}->{survivor}")
    return got


def _expected(truth: pd.DataFrame) -> dict[tuple[str, str], tuple]:
    out = {}
    for r in truth.itertuples():
        detail = (
            f"{r.expected_reason}->{r.merged_into}"
            if r.expected_outcome == "merged"
            else r.expected_reason
        )
        out[(r.table, r.key)] = (r.expected_outcome, detail)
    return out


@pytest.fixture(scope="module")
def outcomes(run):
    return _outcomes(run)


def test_the_receiver_wrote_the_manifest(run):
    manifest = json.loads((run["source"] / "export_manifest.json").read_text())
    counts = run["truth"].groupby("table").size().to_dict()

    assert manifest["made_by"] == "receiver"
    assert manifest["exported_at"] == run["info"]["exported_at"]
    assert {t: e["rows"] for t, e in manifest["tables"].items()} == counts
    # the data dictionary is no table's file: the catalog ignores it
    assert synth_c.DICTIONARY not in {e["file"] for e in manifest["tables"].values()}
    # the payments file ends with the billing system's count line, which is not a row
    payments = run["source"] / manifest["tables"]["jfjl"]["file"]
    last = payments.read_bytes().decode("gb18030").rstrip("\r\n").rsplit("\r\n", 1)[-1]
    assert last == f"共{counts['jfjl']}条"


def test_check_passes_on_the_hostile_export(run):
    result = run_check(SYSTEM, run["source"], rows=100_000)

    assert result.problems == []
    assert result.rows_read == run["truth"].groupby("table").size().to_dict()


@pytest.mark.parametrize("fate", FATES)
def test_every_fate_has_full_precision_and_recall(run, outcomes, fate):
    """Per fate, the rows the run gave it (with its reason, rule, or survivor) are exactly
    the rows the answer key gives it: precision and recall both 100 %."""
    expected = {k: v for k, v in _expected(run["truth"]).items() if v[0] == fate}
    got = {k: v for k, v in outcomes.items() if v[0] == fate}
    hits = sum(1 for k, v in got.items() if expected.get(k) == v)
    missed = sorted((k, v, outcomes.get(k)) for k, v in expected.items() if got.get(k) != v)
    wrong = sorted((k, v, expected.get(k)) for k, v in got.items() if expected.get(k) != v)

    assert expected, f"the answer key has no {fate} row"
    assert (missed[:5], wrong[:5]) == ([], [])
    assert hits / len(got) == 1.0 and hits / len(expected) == 1.0  # precision, recall


def test_every_row_of_the_export_has_exactly_one_fate(run, outcomes):
    truth = run["truth"]
    assert not truth.duplicated(["table", "key"]).any()
    assert set(truth.expected_outcome) == set(FATES)
    assert set(outcomes) == set(zip(truth.table, truth.key, strict=True))


def test_children_of_a_merged_customer_follow_the_survivor(run):
    truth = run["truth"]
    moved = truth[truth.reparented_to != ""]
    assert len(moved) > 0
    got = {}
    with psycopg.connect(run["dsn"]) as conn:
        for table, (target, key) in _targets().items():
            if table == "khzl":
                continue
            keys = moved.loc[moved.table == table, "key"].tolist()
            got |= {
                (table, k): c
                for k, c in conn.execute(
                    f"SELECT {key}, customer_id FROM crm.{target} WHERE {key} = ANY(%s)", (keys,)
                )
            }
    expected = dict(zip(zip(moved.table, moved.key, strict=True), moved.reparented_to, strict=True))
    assert got == expected


def _export_profiles(source) -> pd.DataFrame:
    """The customer file as the operator wrote it, keys and IDs in their canonical form."""
    cols = [c for c, _ in synth_c.COLUMNS["khzl"]]
    file = synth_c.FILES["subscribers"][1]
    df = pd.read_csv(
        source / file,
        sep="^",
        header=None,
        names=cols,
        dtype=str,
        encoding="gb18030",
        keep_default_na=False,
    )
    df["key"] = df["khbh"].str.strip().str.upper()
    df["id"] = df["zjhm"].str.replace(r"[\s-]", "", regex=True).str.upper()
    return df


def _upgraded(id15: str) -> str:
    """GB 11643-1989 -> -1999: century 19 after the area code, then the check digit
    (handover_synth.legacy_bss's own check-digit function, not the pipeline's)."""
    first17 = id15[:6] + "19" + id15[6:]
    return first17 + synth.id_check_digit(first17)


def _decrypted_ids(run) -> dict[str, str]:
    ring = Keyring.from_dict(json.loads(run["keyring"].read_text()))
    with psycopg.connect(run["dsn"]) as conn:
        rows = conn.execute(
            "SELECT customer_id, id_number_enc, id_number_key_id FROM crm.customer"
        ).fetchall()
    return {c: decrypt_value(enc, kid, ring, aad=b"customer.id_number") for c, enc, kid in rows}


def test_first_generation_ids_are_loaded_in_their_18_digit_form(run):
    truth = run["truth"]
    fate = truth[truth.table == "khzl"].set_index("key")
    profiles = _export_profiles(run["source"])
    old = profiles[profiles["id"].str.fullmatch(r"\d{15}")]
    ids = _decrypted_ids(run)

    assert len(old) >= 10
    checked = 0
    for key, id15 in zip(old["key"], old["id"], strict=True):
        outcome, into = fate.at[key, "expected_outcome"], fate.at[key, "merged_into"]
        if outcome == "loaded":
            assert ids[key] == _upgraded(id15), key
        elif outcome == "merged":  # its person's surviving record holds the same ID
            assert ids[into] == _upgraded(id15), (key, into)
        else:
            continue
        checked += 1
    assert (
        checked == len(old[old["key"].map(fate["expected_outcome"]).isin(["loaded", "merged"])]) > 0
    )
    # every loaded ID is an 18-digit GB 11643-1999 number, one customer per person
    assert all(
        re.fullmatch(r"\d{17}[\dX]", v) and synth.id_check_digit(v[:17]) == v[17]
        for v in ids.values()
    )
    assert len(set(ids.values())) == len(ids)
    # counted as normalised in the ledger, not quarantined
    with psycopg.connect(run["dsn"]) as conn:
        upgraded = conn.execute(
            "SELECT sum((detail->'normalised'->>'ID_UPGRADED_15_TO_18')::int) FROM "
            "handover_meta.ledger WHERE run_id=%s AND table_name='khzl' AND stage='cleanse'",
            (run["run_id"],),
        ).fetchone()[0]
    clean = old["key"].map(fate["expected_outcome"]).isin(["loaded", "merged"])
    assert upgraded >= clean.sum()


def test_no_placeholder_in_any_personal_field(run):
    """The export's 出生日期 is 19000101 / 00000000 / blank as often as not and its 性别 is
    0 or 9 for some: the target holds what each resident ID encodes, never a placeholder."""
    ids = _decrypted_ids(run)
    with psycopg.connect(run["dsn"]) as conn:
        rows = conn.execute(
            "SELECT customer_id, full_name, birth_date, gender, msisdn, "
            "opened_on, address, city FROM crm.customer"
        ).fetchall()
    profiles = _export_profiles(run["source"])
    placeholders = profiles["csrq"].isin(["19000101", "00000000", ""]) | profiles["xb"].isin(
        ["0", "9"]
    )
    assert placeholders.sum() >= 10  # the export does have them

    assert len(rows) == len(ids) > 0
    for cid, name, birth, gender, msisdn, opened, address, city in rows:
        assert name and name.strip() and "?" not in name, cid
        assert birth == date.fromisoformat(
            f"{ids[cid][6:10]}-{ids[cid][10:12]}-{ids[cid][12:14]}"
        ), cid
        assert date(1900, 1, 2) <= birth < date(2026, 11, 1), cid
        assert gender == ("M" if int(ids[cid][16]) % 2 else "F"), cid
        assert re.fullmatch(r"1\d{10}", msisdn), cid
        assert date(1980, 1, 1) <= opened < date(2026, 11, 1), cid
        for text in (address, city):
            assert text and text not in ("0", "00000000", "19000101", "NULL", "null"), cid


def test_every_amount_is_exact_to_the_fen(run):
    """Money printed as `¥17,504.10`, `RMB 1,000`, `12.50元`, `(12.50)`, `负3.00` (and
    whole fen for data sessions) lands as integer fen: row by row, and in total, equal to
    the answer key's amounts summed in Decimal."""
    truth = run["truth"]
    with psycopg.connect(run["dsn"]) as conn:
        for table, column in MONEY.items():
            target, key = _targets()[table]
            loaded = truth[(truth.table == table) & (truth.expected_outcome == "loaded")]
            want = {
                k: int(Decimal(a) * 100)
                for k, a in zip(loaded.key, loaded.amount_yuan, strict=True)
            }
            got = dict(conn.execute(f"SELECT {key}, {column} FROM crm.{target}").fetchall())
            total = conn.execute(f"SELECT sum({column}) FROM crm.{target}").fetchone()[0]

            assert all(a != "" for a in loaded.amount_yuan), table
            assert got == want, table
            assert Decimal(total) == sum(Decimal(a) for a in loaded.amount_yuan) * 100, table


def test_reconciliation_balances_for_every_table(run):
    manifest = json.loads((run["source"] / "export_manifest.json").read_text())
    with psycopg.connect(run["dsn"]) as conn:
        rows = conn.execute(
            "SELECT table_name, source_rows, loaded, merged, quarantined, excluded, "
            "target_rows, balanced FROM handover_meta.reconciliation WHERE run_id=%s",
            (run["run_id"],),
        ).fetchall()
        gates = {
            g
            for (g,) in conn.execute(
                "SELECT DISTINCT gate FROM handover_meta.gate_result WHERE run_id=%s AND success",
                (run["run_id"],),
            )
        }
    truth = run["truth"]
    merged = truth[truth.expected_outcome == "merged"].groupby("table").size().to_dict()

    assert sorted(r[0] for r in rows) == sorted(load_config(SYSTEM).tables)
    for table, n, loaded, m, q, x, target_rows, balanced in rows:
        assert n == manifest["tables"][table]["rows"], table
        assert n == loaded + m + q + x, table
        assert m == merged.get(table, 0), table
        assert target_rows == loaded > 0, table
        assert balanced, table
    assert gates == {"intake", "compliance", "quality", "contract", "reconciliation"}


def test_every_phone_class_reaches_the_target_normalised(run):
    with psycopg.connect(run["dsn"]) as conn:
        numbers = [
            n
            for (n,) in conn.execute(
                "SELECT callee_msisdn FROM crm.call_record UNION ALL "
                "SELECT caller_msisdn FROM crm.call_record"
            )
            if n
        ]
        customers = [n for (n,) in conn.execute("SELECT msisdn FROM crm.customer")]
    classes = {
        "mobile": r"1[3-9]\d{9}",
        "landline": r"0[1-9]\d{8,10}",
        "iot": r"1(?:4\d|0\d)\d{10}",
        "service": r"1\d{2,4}|9\d{4,5}",
        "international": r"\+(?:[1-79]|8[0-57-9])\d{6,13}",
    }
    seen = {name: sum(1 for n in numbers if re.fullmatch(p, n)) for name, p in classes.items()}

    assert all(seen.values()), seen
    assert all(any(re.fullmatch(p, n) for p in classes.values()) for n in numbers)
    assert all(re.fullmatch(r"1\d{10}", n) for n in customers)


def test_keys_are_canonical_in_the_target(run):
    """Keys typed as ` c10012080 ` or `c10012080` land as C10012080, children too."""
    truth = run["truth"]
    with psycopg.connect(run["dsn"]) as conn:
        for table, (target, key) in _targets().items():
            keys = [k for (k,) in conn.execute(f"SELECT {key} FROM crm.{target}")]
            assert all(k == k.strip().upper() for k in keys), table
            customers = [c for (c,) in conn.execute(f"SELECT customer_id FROM crm.{target}")]
            assert all(re.fullmatch(r"C\d{8}", c) for c in customers), table
    assert all(k == k.strip().upper() for k in truth.key)


def test_the_catalog_follows_the_data_dictionary(run):
    """The columns are named nowhere but in 数据字典.txt (GB18030, CRLF): the catalog lists
    them in the dictionary's order for each file."""
    raw = (run["source"] / synth_c.DICTIONARY).read_bytes()
    text = raw.decode("gb18030")
    assert "\r\n" in text
    files, current = {}, None
    for line in text.splitlines():
        m = re.search(r"文件 (\S+)，", line)
        if m:
            current = files.setdefault(m.group(1), [])
        m = re.match(r"\s+\d+\.\s+(\w+)\s", line)
        if m and current is not None:
            current.append(m.group(1))
    cfg = load_config(SYSTEM)
    catalog = {cfg.source(t)["file"]: list(cfg.table(t)["columns"]) for t in cfg.tables}

    assert files == catalog
    assert all(not cfg.source(t)["header"] for t in cfg.tables)


def _legacy(run, table: str) -> pd.DataFrame:
    return pd.read_csv(run["legacy"] / f"{table}.csv", dtype=str, keep_default_na=False)


def test_dates_written_every_way_are_read_as_written(run):
    """Open dates as `2006-4-24`, `2012/12/08 09:30`, `20240105`, `2024年1月5日` and Excel
    serial days, update times as epoch milliseconds, payment times three ways: every loaded
    value is the date or time legacy_bss wrote (to the minute where the shape has no
    seconds)."""
    subs = _legacy(run, "subscribers").set_index("cust_id")
    pays = _legacy(run, "payments").set_index("payment_id")
    calls = _legacy(run, "call_records").set_index("cdr_id")
    with psycopg.connect(run["dsn"]) as conn:
        customers = conn.execute(
            "SELECT customer_id, opened_on, source_updated_at FROM crm.customer"
        ).fetchall()
        paid = conn.execute("SELECT payment_id, paid_at FROM crm.payment").fetchall()
        started = conn.execute("SELECT cdr_id, started_at FROM crm.call_record").fetchall()
    profiles = _export_profiles(run["source"])
    shapes = profiles.loc[profiles["key"].isin(subs.index), "khrq"]

    assert shapes.str.fullmatch(r"\d{5}").any() and shapes.str.contains("年").any()
    assert shapes.str.fullmatch(r"\d{8}").any() and shapes.str.contains("/").any()
    assert shapes.str.fullmatch(r"\d{4}-\d{1,2}-\d{1,2}").any()
    known = [(c, o, u) for c, o, u in customers if c in subs.index]
    assert len(known) > 0.9 * len(customers)
    for cid, opened, updated in known:
        assert opened.isoformat() == subs.at[cid, "open_date"], cid
        assert str(updated) == subs.at[cid, "updated_at"], cid
    for pid, at in paid:
        want = pd.Timestamp(pays.at[pid, "paid_at"])
        assert at in (want, want.floor("min")), pid
    for cid, at in started:
        assert str(at) == calls.at[cid, "start_time"], cid


def test_no_code_names_telco_c():
    """By configuration alone: only synth_c (which writes the export) names the system."""
    library = [p for p in (ROOT / "include" / "handover").glob("*.py") if p.name != "synth_c.py"]
    dags = list((ROOT / "dags").glob("*.py"))
    assert [p.name for p in library + dags if SYSTEM in p.read_text(encoding="utf-8")] == []
