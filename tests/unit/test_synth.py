"""The synthetic legacy export: deterministic, exact defect rates, and clean rows truly clean."""

from __future__ import annotations

import csv
import hashlib
import io
import re
import time
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from handover_synth import legacy_bss as synth
from handover_synth.legacy_bss import (
    CHILD_DEFECT_RATES,
    MEAN_ROWS_PER_SUBSCRIBER,
    SUBSCRIBER_DEFECT_RATES,
    TABLE_COLUMNS,
    exact_count,
    generate,
    id_check_digit,
)

N = 2_000
E = datetime(2026, 11, 1)
WINDOW_START = E - timedelta(days=330)
MSISDN_RE = re.compile(r"^1(3\d|5[0-35-9]|7[3678]|8\d|9[189])\d{8}$")
ID_RE = re.compile(r"^\d{17}[\dX]$")
CHILD_TABLES = ("call_records", "data_sessions", "payments", "complaints", "browsing_events")
TS_COLUMN = {
    "call_records": "start_time",
    "data_sessions": "start_time",
    "payments": "paid_at",
    "complaints": "created_at",
    "browsing_events": "ts",
}
KEY = {table: cols[0] for table, cols in TABLE_COLUMNS.items()}


class Export:
    def __init__(self, root: Path, manifest: dict[str, Any], seconds: float) -> None:
        self.root = root
        self.manifest = manifest
        self.seconds = seconds
        self.rows = {t: read(root / f"{t}.csv") for t in TABLE_COLUMNS}
        self.truth: dict[tuple[str, str], dict[str, str]] = {}
        self.truth_rows = read(root / "truth.csv")
        for row in self.truth_rows:
            self.truth[(row["table"], row["key"])] = row
        self.subs = {r["cust_id"]: r for r in self.rows["subscribers"]}

    def defect(self, table: str, row: dict[str, str]) -> str | None:
        hit = self.truth.get((table, row[KEY[table]]))
        return hit["defect"] if hit else None

    def clean(self, table: str) -> list[dict[str, str]]:
        return [r for r in self.rows[table] if (table, r[KEY[table]]) not in self.truth]

    def with_defect(self, table: str, defect: str) -> list[dict[str, str]]:
        return [r for r in self.rows[table] if self.defect(table, r) == defect]


def read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def ts(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%d %H:%M:%S")


def id_ok(id_number: str) -> bool:
    return bool(ID_RE.match(id_number)) and id_check_digit(id_number[:17]) == id_number[17]


def id_birth(id_number: str) -> str:
    return f"{id_number[6:10]}-{id_number[10:12]}-{id_number[12:14]}"


def id_gender(id_number: str) -> str:
    return "男" if int(id_number[16]) % 2 else "女"


def normalise_msisdn(value: str) -> str:
    value = value.translate(str.maketrans("０１２３４５６７８９", "0123456789"))
    value = re.sub(r"[\s-]", "", value)
    return value[3:] if value.startswith("+86") else value


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Export:
    root = tmp_path_factory.mktemp("legacy")
    t0 = time.perf_counter()
    manifest = generate(root, N, seed=7)
    return Export(root, manifest, time.perf_counter() - t0)


def test_id_check_digit_known_values() -> None:
    assert id_check_digit("11010519491231002") == "X"
    assert id_check_digit("44052418800101001") == "4"
    with pytest.raises(ValueError, match="17 ASCII digits"):
        id_check_digit("1234")


def test_generation_is_fast(export: Export) -> None:
    assert export.seconds < 10


def test_manifest_matches_files(export: Export) -> None:
    m = export.manifest
    assert m["system"] == "legacy_bss"
    assert m["exported_at"] == "2026-11-01 00:00:00"
    assert m["seed"] == 7
    assert m["subscribers"] == N
    assert list(m["tables"]) == list(TABLE_COLUMNS)
    for table, meta in m["tables"].items():
        data = (export.root / meta["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == meta["sha256"]
        assert meta["rows"] == len(export.rows[table])
    on_disk = (export.root / "export_manifest.json").read_text(encoding="utf-8")
    assert '"legacy_bss"' in on_disk


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", 300, seed=11)
    b = generate(tmp_path / "b", 300, seed=11)
    c = generate(tmp_path / "c", 300, seed=12)
    assert a == b
    assert (tmp_path / "a/truth.csv").read_bytes() == (tmp_path / "b/truth.csv").read_bytes()
    assert a["tables"]["subscribers"]["sha256"] != c["tables"]["subscribers"]["sha256"]


def test_csv_dialect_is_csv_module_default_with_lf(export: Export) -> None:
    for name in [*TABLE_COLUMNS, "truth"]:
        raw = (export.root / f"{name}.csv").read_bytes()
        text = raw.decode("utf-8")
        rows = list(csv.reader(io.StringIO(text, newline="")))
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(rows)
        assert out.getvalue() == text, name
        if name in TABLE_COLUMNS:
            assert tuple(rows[0]) == TABLE_COLUMNS[name]


def test_unique_keys(export: Export) -> None:
    for table, rows in export.rows.items():
        keys = [r[KEY[table]] for r in rows]
        assert len(keys) == len(set(keys)), table
    truth_keys = [(r["table"], r["key"]) for r in export.truth_rows]
    assert len(truth_keys) == len(set(truth_keys))


def test_truth_keys_exist(export: Export) -> None:
    keys = {t: {r[KEY[t]] for r in rows} for t, rows in export.rows.items()}
    for row in export.truth_rows:
        assert row["key"] in keys[row["table"]], row
        assert row["expected_outcome"] in {"quarantined", "excluded", "loaded", "merged"}
        assert (row["expected_outcome"] == "loaded") == (row["expected_reason"] == "")


def test_subscriber_defect_counts(export: Export) -> None:
    seen = Counter(r["defect"] for r in export.truth_rows if r["table"] == "subscribers")
    seen["INVALID_DATE"] = seen.pop("FUTURE_DATE", 0) + seen.pop("IMPOSSIBLE_DATE", 0)
    assert seen == {d: exact_count(rate, N) for d, rate in SUBSCRIBER_DEFECT_RATES.items()}
    extra = exact_count(SUBSCRIBER_DEFECT_RATES["DUPLICATE_PERSON"], N)
    assert len(export.rows["subscribers"]) == N + extra


def test_child_defect_counts(export: Export) -> None:
    for table, rates in CHILD_DEFECT_RATES.items():
        seen = Counter(r["defect"] for r in export.truth_rows if r["table"] == table)
        rows = len(export.rows[table])
        for defect, rate in rates.items():
            assert seen[defect] == exact_count(rate, rows), (table, defect)


def test_clean_subscribers_are_clean(export: Export) -> None:
    clean = export.clean("subscribers")
    assert len(clean) > 0.9 * N
    ids = [r["id_number"] for r in clean]
    assert len(ids) == len(set(ids))
    msisdns = [r["msisdn"] for r in export.rows["subscribers"]]
    for r in clean:
        assert re.fullmatch(r"C\d{8}", r["cust_id"])
        assert id_ok(r["id_number"]), r
        assert r["birth_date"] == id_birth(r["id_number"])
        assert r["gender"] == id_gender(r["id_number"])
        age = (E.date() - date.fromisoformat(r["birth_date"])).days / 365.25
        assert 18 < age < 80
        assert MSISDN_RE.match(r["msisdn"]), r
        assert 2 <= len(r["name"]) <= 3
        assert r["name"].strip() == r["name"]
        assert r["address"]
        assert r["city"]
        assert r["city"] in r["address"]
        assert date.fromisoformat(r["open_date"]) < E.date()
        assert r["status"] in {"1", "2"}
        assert r["transfer_objection"] == "0"
        assert WINDOW_START <= ts(r["updated_at"]) < E
    assert len(msisdns) == len(set(msisdns))


def test_subscriber_defects_show(export: Export) -> None:
    def rows(defect: str) -> list[dict[str, str]]:
        return export.with_defect("subscribers", defect)

    for r in rows("BAD_ID_CHECKSUM"):
        assert ID_RE.match(r["id_number"])
        assert not id_ok(r["id_number"])
        assert r["birth_date"] == id_birth(r["id_number"])
    for r in rows("ID_BIRTH_MISMATCH"):
        assert id_ok(r["id_number"])
        assert r["birth_date"] != id_birth(r["id_number"])
        date.fromisoformat(r["birth_date"])
    for r in rows("MALFORMED_MSISDN"):
        assert not MSISDN_RE.match(normalise_msisdn(r["msisdn"]))
    for r in rows("FULLWIDTH_MSISDN"):
        assert not MSISDN_RE.match(r["msisdn"])
        assert MSISDN_RE.match(normalise_msisdn(r["msisdn"]))
    for r in rows("BLANK_MANDATORY"):
        assert r["name"].strip() == ""
    for r in rows("FUTURE_DATE"):
        assert date.fromisoformat(r["open_date"]) > E.date()
    for r in rows("IMPOSSIBLE_DATE"):
        with pytest.raises(ValueError, match="day is out of range|month must be"):
            date.fromisoformat(r["open_date"])
    for r in rows("OBJECTED_TRANSFER"):
        assert r["transfer_objection"] == "1"
    by_id = defaultdict(list)
    for r in export.rows["subscribers"]:
        by_id[r["id_number"]].append(r)
    for r in rows("DUPLICATE_PERSON"):
        twins = [o for o in by_id[r["id_number"]] if o["cust_id"] != r["cust_id"]]
        assert len(twins) == 1
        twin = twins[0]
        assert export.defect("subscribers", twin) is None
        assert twin["name"] == r["name"]
        assert ts(twin["updated_at"]) > ts(r["updated_at"])
        assert id_ok(r["id_number"])
        assert ts(r["updated_at"]) >= WINDOW_START
    for r in export.rows["subscribers"]:
        if export.defect("subscribers", r) not in {"BAD_ID_CHECKSUM", "ID_BIRTH_MISMATCH"}:
            assert id_ok(r["id_number"])


def test_duplicates_have_no_children(export: Export) -> None:
    dups = {r["cust_id"] for r in export.with_defect("subscribers", "DUPLICATE_PERSON")}
    for table in ("consents", *CHILD_TABLES):
        assert not dups & {r["cust_id"] for r in export.rows[table]}


def test_clean_children_are_clean(export: Export) -> None:
    loaded = {
        c
        for c, r in export.subs.items()
        if export.defect("subscribers", r) in {None, "FULLWIDTH_MSISDN"}
    }
    for table in CHILD_TABLES:
        for r in export.clean(table):
            assert r["cust_id"] in loaded, (table, r)
            assert WINDOW_START <= ts(r[TS_COLUMN[table]]) < E, (table, r)
    for r in export.clean("consents"):
        assert r["cust_id"] in loaded
        assert E - timedelta(days=5 * 365) < ts(r["granted_at"]) < E
    for r in export.clean("call_records"):
        assert MSISDN_RE.match(r["caller"])
        assert MSISDN_RE.match(r["callee"])
        assert export.subs[r["cust_id"]]["msisdn"] in {r["caller"], r["callee"]} or (
            export.defect("subscribers", export.subs[r["cust_id"]]) == "FULLWIDTH_MSISDN"
        )
        assert int(r["duration_s"]) > 0
        assert int(r["charge_fen"]) >= 0
        assert re.fullmatch(r"R\d{11}", r["cdr_id"])
        assert re.fullmatch(r"460-00-\d+-\d+", r["cell_id"])
    for r in export.clean("data_sessions"):
        assert int(r["bytes_up"]) >= 0
        assert int(r["bytes_down"]) >= 0
        assert int(r["charge_fen"]) >= 0
    for r in export.clean("payments"):
        assert int(r["amount_fen"]) > 0
        assert r["channel"] in {"alipay", "wechat", "bank", "cash"}
    for r in export.clean("complaints"):
        assert r["text"]
        assert r["category"] in {"计费", "网络", "服务", "其他"}
        assert r["satisfaction"] in {"", "1", "2", "3", "4", "5"}
        assert not re.search(r"\d{7}", r["text"])
    for r in export.clean("browsing_events"):
        assert r["domain"]
        assert not re.search(r"\d{7}", r["search_text"])


def test_child_defects_show(export: Export) -> None:
    amount = {"call_records": "charge_fen", "data_sessions": "charge_fen", "payments": "amount_fen"}
    for table in CHILD_TABLES:
        stamp = TS_COLUMN[table]
        for r in export.with_defect(table, "FUTURE_DATE"):
            assert ts(r[stamp]) > E
        oldest, newest = (60, 37) if table != "complaints" else (48, 25)
        for r in export.with_defect(table, "PAST_RETENTION"):
            age_months = (E - ts(r[stamp])).days / 30.44
            assert newest < age_months < oldest, (table, r)
        for r in export.with_defect(table, "NEGATIVE_AMOUNT"):
            assert int(r[amount[table]]) < 0
    for r in export.with_defect("payments", "BLANK_MANDATORY"):
        assert r["amount_fen"] == ""
    for r in export.with_defect("call_records", "ORPHAN_RECORD"):
        assert r["cust_id"] not in export.subs
        assert re.fullmatch(r"C9\d{7}", r["cust_id"])
    for r in export.with_defect("complaints", "PII_IN_TEXT"):
        sub = export.subs[r["cust_id"]]
        assert sub["msisdn"] in r["text"] or sub["id_number"] in r["text"]
    for table in CHILD_TABLES:  # own defects only on children of clean subscribers
        for row in export.truth_rows:
            if row["table"] == table and not row["defect"].startswith(("PARENT_", "NO_C")):
                key = row["key"]
                r = next(x for x in export.rows[table] if x[KEY[table]] == key)
                if row["defect"] != "ORPHAN_RECORD":
                    assert export.defect("subscribers", export.subs[r["cust_id"]]) is None


def test_cascade_to_children(export: Export) -> None:
    state = {c: export.defect("subscribers", r) for c, r in export.subs.items()}
    behavioural = {
        r["cust_id"]
        for r in export.rows["consents"]
        if r["purpose"] == "behavioural" and r["granted"] == "1"
    }
    for table in ("consents", *CHILD_TABLES):
        for r in export.rows[table]:
            parent = state.get(r["cust_id"], "ORPHAN")
            got = export.defect(table, r)
            if parent == "OBJECTED_TRANSFER":
                assert got == "PARENT_OBJECTED"
                hit = export.truth[(table, r[KEY[table]])]
                assert hit["expected_reason"] == "OBJECTED_TRANSFER"
            elif table == "browsing_events" and r["cust_id"] not in behavioural:
                assert got == "NO_CONSENT"
            elif parent not in {None, "FULLWIDTH_MSISDN", "ORPHAN"}:
                assert got == "PARENT_QUARANTINED"
            elif table == "browsing_events":
                assert got is None
            else:
                assert got is None or not got.startswith("PARENT_")


def test_proportions(export: Export) -> None:
    for table, mean in MEAN_ROWS_PER_SUBSCRIBER.items():
        per_sub = len(export.rows[table]) / N
        assert mean * 0.85 <= per_sub <= mean * 1.15 + 0.05, (table, per_sub)
    consents = export.rows["consents"]
    by_purpose = Counter((r["purpose"], r["granted"]) for r in consents)
    assert by_purpose[("service", "1")] == N
    assert 0.45 < by_purpose[("marketing", "1")] / N < 0.55
    assert 0.35 < by_purpose[("behavioural", "1")] / N < 0.45
    male = sum(r["gender"] == "男" for r in export.rows["subscribers"]) / N
    assert 0.45 < male < 0.57


def test_cli_writes_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        synth.main(
            [
                "--out",
                str(tmp_path),
                "--subscribers",
                "50",
                "--seed",
                "3",
                "--call-records-per-subscriber",
                "40",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "call_records" in err
    assert "rows" in err
    assert (tmp_path / "export_manifest.json").exists()
    assert len(read(tmp_path / "call_records.csv")) > 50 * 25


def test_handover_manifest_writes_what_the_operator_would_have(tmp_path):
    """An export without a manifest: `handover manifest` writes one from the files (rows as
    extract counts them, sha256), marked as made by the receiver; it never replaces the
    operator's."""
    import json

    from handover.ops import cli
    from handover_synth import legacy_bss as synth

    synth.generate(tmp_path, 60, seed=2)
    original = json.loads((tmp_path / "export_manifest.json").read_text())
    (tmp_path / "export_manifest.json").unlink()
    args = [
        "manifest",
        "--system",
        "legacy_bss",
        "--source-dir",
        str(tmp_path),
        "--exported-at",
        "2026-11-01 00:00:00",
    ]
    assert cli.main(args) == 0
    made = json.loads((tmp_path / "export_manifest.json").read_text())
    assert made["made_by"] == "receiver" and made["exported_at"] == "2026-11-01 00:00:00"
    for table, entry in original["tables"].items():
        assert made["tables"][table]["rows"] == entry["rows"]
        assert made["tables"][table]["sha256"] == entry["sha256"]
    assert cli.main(args) == 2  # a manifest is there now: never overwritten silently
