"""Synthetic days of the legacy operator after the cut-over export, for the nightly sync.

During the parallel run the legacy system keeps working: customers join, move, change
their number, are suspended, leave; calls and payments keep coming, some of them late.
This module plays those days on top of an export written by `handover_synth.legacy_bss`, so the
nightly sync can be proven against a known answer, night by night.

`generate_changes(export_dir, out_dir, days=3, seed=1)` writes one change set per day:

    <out_dir>/<YYYY-MM-DD>/change_manifest.json   interval [start, end), files, rows, sha256
    <out_dir>/<YYYY-MM-DD>/<table>.csv             rows inserted or changed that day (the
                                                   export's columns; subscribers by
                                                   updated_at, consents by granted_at,
                                                   event tables by arrival that day)
    <out_dir>/<YYYY-MM-DD>/<table>.deleted.csv     <key>,deleted_at of rows deleted that day
    <out_dir>/<YYYY-MM-DD>/truth.csv               the day's answer key (same columns as the
                                                   export's truth.csv)
    <out_dir>/<YYYY-MM-DD>/state/                  the whole legacy export as of the day's
                                                   end (what "old" means when old and new
                                                   are reconciled), with export_manifest.json

Each day brings inserts (new subscribers with consents and first records), updates
(address, status or MSISDN, with a newer updated_at; a marketing consent revoked),
deletions (a subscriber with everything that hangs on it, a few voided call records),
late-arriving records (timestamps up to three days before the day), browsing without
consent, and a few defective rows: a new subscriber with a bad ID check digit, an update
with a malformed MSISDN, a negative charge, a future call, an orphan call, a payment
without amount, and (day 2) a new customer number for a person already migrated. From day
2 on, one subscriber changed the day before changes again and another is deleted, and a
call record that arrived the day before is voided: what a replay of an older night must
not undo. Same export, days and seed give byte-identical files.

Run `python -m handover_synth.changes --export DIR --out DIR [--days 3] [--seed 1]`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from handover_synth.legacy_bss_spec import TABLE_COLUMNS, TRUTH_COLUMNS, id_check_digit

__all__ = ["KEYS", "generate_changes", "main"]

TIME_FMT = "%Y-%m-%d %H:%M:%S"
KEYS = {table: cols[0] for table, cols in TABLE_COLUMNS.items()}
EVENT_TABLES = ("call_records", "data_sessions", "payments", "complaints", "browsing_events")
#: Records per subscriber per day (the export's yearly volumes spread over 330 days).
DAILY_RATE = {
    "call_records": 20 / 330,
    "data_sessions": 10 / 330,
    "payments": 6 / 330,
    "complaints": 0.3 / 330,
    "browsing_events": 5 / 330,
}
DAILY_MIN = {
    "call_records": 10,
    "data_sessions": 5,
    "payments": 3,
    "complaints": 1,
    "browsing_events": 6,
}
_CHANNELS = ("alipay", "wechat", "bank", "cash")
_AMOUNTS = (1000, 2000, 3000, 5000, 10000, 20000)
_CATEGORIES = ("计费", "网络", "服务", "其他")
_COMPLAINTS = (
    "网络信号不稳定，希望尽快处理。",
    "账单金额有疑问，请核实。",
    "营业厅排队时间太长。",
    "宽带经常断线。",
)
_DOMAINS = ("baidu.com", "taobao.com", "qq.com", "weibo.com", "jd.com", "zhihu.com")
_MSISDN_PREFIXES = ("138", "139", "150", "186", "177", "199")


@dataclass
class _Day:
    """What one day does to the legacy system."""

    start: pd.Timestamp
    end: pd.Timestamp
    changes: dict[str, list[dict[str, str]]] = field(
        default_factory=lambda: {t: [] for t in TABLE_COLUMNS}
    )
    deletions: dict[str, list[tuple[str, str]]] = field(
        default_factory=lambda: {t: [] for t in TABLE_COLUMNS}
    )
    truth: list[tuple[str, str, str, str, str]] = field(default_factory=list)

    def note(
        self, table: str, key: str, defect: str, outcome: str = "loaded", reason: str = ""
    ) -> None:
        self.truth.append((table, key, defect, outcome, reason))


class _Legacy:
    """The legacy system's tables, and who may still be touched without side effects."""

    def __init__(self, export_dir: Path, seed: int):
        self.seed = seed
        manifest = json.loads((export_dir / "export_manifest.json").read_text(encoding="utf-8"))
        self.system = manifest.get("system", "legacy_bss")
        self.exported_at = pd.Timestamp(manifest["exported_at"])
        self.tables = {
            t: pd.read_csv(
                export_dir / f"{t}.csv", dtype=str, keep_default_na=False, encoding="utf-8"
            )
            for t in TABLE_COLUMNS
        }
        truth = pd.read_csv(export_dir / "truth.csv", dtype=str, keep_default_na=False)
        subs = self.tables["subscribers"]
        bad = set(
            truth.loc[
                (truth["table"] == "subscribers") & (truth["expected_outcome"] != "loaded"), "key"
            ]
        )
        shared_id = subs["id_number"].duplicated(keep=False)
        # Clean, uniquely identified subscribers: the ones a day may change or delete.
        self.pool = sorted(set(subs.loc[~shared_id, "cust_id"]) - bad)
        self.id_numbers = set(subs["id_number"])
        self.msisdns = set(subs["msisdn"])
        self.next_no = {
            t: max(int(k[1:]) for k in df[KEYS[t]] if k[1:].isdigit()) + 1
            for t, df in self.tables.items()
        }
        self.width = {t: len(df[KEYS[t]].iloc[0]) - 1 for t, df in self.tables.items()}
        self.prefix = {t: df[KEYS[t]].iloc[0][0] for t, df in self.tables.items()}
        self.prev_updated: list[str] = []
        self.prev_calls: list[str] = []

    # -- small helpers -------------------------------------------------------------
    def new_key(self, table: str) -> str:
        n = self.next_no[table]
        self.next_no[table] += 1
        return f"{self.prefix[table]}{n:0{self.width[table]}d}"

    def row(self, table: str, key: str) -> dict[str, str]:
        df = self.tables[table]
        return df.loc[df[KEYS[table]] == key].iloc[0].to_dict()

    def behavioural(self) -> set[str]:
        c = self.tables["consents"]
        return set(c.loc[(c["purpose"] == "behavioural") & (c["granted"] == "1"), "cust_id"])

    # -- applying a day ------------------------------------------------------------
    def apply(self, day: _Day) -> None:
        for table, rows in day.changes.items():
            if not rows:
                continue
            df, key = self.tables[table], KEYS[table]
            new = pd.DataFrame(rows, columns=list(TABLE_COLUMNS[table]))
            if table in EVENT_TABLES:
                df = pd.concat([df, new], ignore_index=True)
            else:
                pos = {k: i for i, k in enumerate(df[key])}
                known = new[key].isin(pos)
                for r in new[known].itertuples(index=False):
                    df.loc[pos[r[0]]] = list(r)
                df = pd.concat([df, new[~known]], ignore_index=True)
            self.tables[table] = df
        for table, dels in day.deletions.items():
            if dels:
                gone = {k for k, _ in dels}
                df = self.tables[table]
                self.tables[table] = df[~df[KEYS[table]].isin(gone)].reset_index(drop=True)


def _ts(rng: np.random.Generator, lo: pd.Timestamp, hi: pd.Timestamp) -> str:
    span = int((hi - lo).total_seconds())
    return (lo + pd.Timedelta(seconds=int(rng.integers(0, max(span, 1))))).strftime(TIME_FMT)


def _pick(rng: np.random.Generator, pool: list[str], n: int) -> list[str]:
    if n <= 0 or not pool:
        return []
    idx = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
    return [pool[i] for i in sorted(idx)]


def _msisdn(rng: np.random.Generator, taken: set[str]) -> str:
    while True:
        m = (
            f"{_MSISDN_PREFIXES[rng.integers(len(_MSISDN_PREFIXES))]}"
            f"{int(rng.integers(0, 10**8)):08d}"
        )
        if m not in taken:
            taken.add(m)
            return m


def _cell(rng: np.random.Generator) -> str:
    return f"460-00-{int(rng.integers(10000, 65535))}-{int(rng.integers(10000, 65535))}"


def _resident_id(rng: np.random.Generator, region: str, taken: set[str]) -> tuple[str, str, str]:
    """(id number, birth date, gender) with a valid GB 11643 check character."""
    while True:
        birth = pd.Timestamp("1955-01-01") + pd.Timedelta(days=int(rng.integers(0, 18000)))
        seq = int(rng.integers(0, 1000))
        first17 = f"{region}{birth:%Y%m%d}{seq:03d}"
        number = first17 + id_check_digit(first17)
        if number not in taken:
            taken.add(number)
            return number, f"{birth:%Y-%m-%d}", "男" if seq % 2 else "女"


class _Player:
    """Plays one day on the legacy tables."""

    def __init__(self, legacy: _Legacy, index: int, start: pd.Timestamp):
        self.lg = legacy
        self.rng = np.random.default_rng([legacy.seed, index])
        self.index = index
        self.day = _Day(start, start + pd.Timedelta(days=1))
        self.n = len(legacy.tables["subscribers"])

    def when(self) -> str:
        d = self.day
        return _ts(self.rng, d.start + pd.Timedelta(minutes=1), d.end - pd.Timedelta(minutes=1))

    def play(self) -> _Day:
        lg, rng, day = self.lg, self.rng, self.day
        pool = lg.pool
        again = _pick(rng, lg.prev_updated, 1)
        doomed = _pick(rng, [c for c in lg.prev_updated if c not in again], 1)
        rest = [c for c in pool if c not in again and c not in doomed]
        picks = _pick(rng, rest, max(5, round(0.02 * self.n)) + 3)
        updates, malformed, deleted = picks[:-3], picks[-3], picks[-2:-1] + doomed
        duplicated = picks[-1] if self.index == 2 else None
        updated_today = []
        for i, cust in enumerate(again + updates):
            kind = ("UPDATE_ADDRESS", "UPDATE_STATUS", "UPDATE_MSISDN")[i % 3]
            self.update_subscriber(cust, kind)
            updated_today.append(cust)
        self.update_subscriber(malformed, "MALFORMED_MSISDN")
        for cust in deleted:
            self.delete_subscriber(cust)
        gone = set(deleted) | {malformed} | ({duplicated} if duplicated else set())
        lg.pool = [c for c in pool if c not in gone]
        new = [self.new_subscriber() for _ in range(max(3, round(0.01 * self.n)))]
        self.bad_subscriber()
        if duplicated:
            self.duplicate_person(duplicated)
        self.revoke_marketing()
        alive = lg.pool + new
        consented = lg.behavioural() | {
            r["cust_id"]
            for r in day.changes["consents"]
            if r["purpose"] == "behavioural" and r["granted"] == "1"
        }
        calls = self.events(alive, consented)
        self.late_events(lg.pool)
        self.bad_events(lg.pool)
        self.void_calls(lg.pool)
        lg.prev_updated = [c for c in updated_today if c in lg.pool]
        lg.prev_calls = calls
        return day

    # -- subscribers ------------------------------------------------------------------
    def update_subscriber(self, cust: str, kind: str) -> None:
        lg, rng = self.lg, self.rng
        row = lg.row("subscribers", cust)
        if kind == "UPDATE_ADDRESS":
            other = lg.row("subscribers", lg.pool[int(rng.integers(len(lg.pool)))])
            row["address"], row["city"] = other["address"] + "东侧", other["city"]
        elif kind == "UPDATE_STATUS":
            row["status"] = {"1": "2", "2": "1", "3": "1"}.get(row["status"], "1")
        elif kind == "UPDATE_MSISDN":
            row["msisdn"] = _msisdn(rng, lg.msisdns)
        else:  # MALFORMED_MSISDN: the legacy front end let a broken number through
            row["msisdn"] = f"1{int(rng.integers(10**8, 10**9))}x"
        row["updated_at"] = self.when()
        self.day.changes["subscribers"].append(row)
        if kind == "MALFORMED_MSISDN":
            self.day.note("subscribers", cust, kind, "quarantined", "INVALID_MSISDN")
        else:
            self.day.note("subscribers", cust, kind)

    def delete_subscriber(self, cust: str) -> None:
        at = self.when()
        for table in TABLE_COLUMNS:
            df = self.lg.tables[table]
            keys = (
                df[KEYS[table]]
                if table == "subscribers"
                else df.loc[df["cust_id"] == cust, KEYS[table]]
            )
            if table == "subscribers":
                keys = keys[keys == cust]
            for k in keys:
                self.day.deletions[table].append((k, at))
                self.day.note(table, k, "DELETED", "deleted")

    def _subscriber_row(self) -> dict[str, str]:
        lg, rng = self.lg, self.rng
        model = lg.row("subscribers", lg.pool[int(rng.integers(len(lg.pool)))])
        donor = lg.row("subscribers", lg.pool[int(rng.integers(len(lg.pool)))])
        number, birth, gender = _resident_id(rng, model["id_number"][:6], lg.id_numbers)
        return {
            "cust_id": lg.new_key("subscribers"),
            "name": model["name"][0] + donor["name"][1:],
            "id_number": number,
            "gender": gender,
            "birth_date": birth,
            "msisdn": _msisdn(rng, lg.msisdns),
            "address": model["address"],
            "city": model["city"],
            "open_date": f"{self.day.start:%Y-%m-%d}",
            "status": "1",
            "transfer_objection": "0",
            "updated_at": self.when(),
        }

    def new_subscriber(self) -> str:
        rng, day = self.rng, self.day
        row = self._subscriber_row()
        cust = row["cust_id"]
        day.changes["subscribers"].append(row)
        day.note("subscribers", cust, "INSERT")
        grants = [("service", "1"), ("marketing", "1" if rng.random() < 0.5 else "0")]
        if rng.random() < 0.5:
            grants.append(("behavioural", "1"))
        for purpose, granted in grants:
            key = self.lg.new_key("consents")
            day.changes["consents"].append(
                {
                    "consent_id": key,
                    "cust_id": cust,
                    "purpose": purpose,
                    "granted": granted,
                    "granted_at": row["updated_at"],
                }
            )
            day.note("consents", key, "INSERT")
        return cust

    def bad_subscriber(self) -> None:
        row = self._subscriber_row()
        check = row["id_number"][-1]
        row["id_number"] = row["id_number"][:-1] + ("0" if check != "0" else "1")
        self.day.changes["subscribers"].append(row)
        self.day.note(
            "subscribers", row["cust_id"], "BAD_ID_CHECKSUM", "quarantined", "INVALID_ID_CHECKSUM"
        )

    def duplicate_person(self, cust: str) -> None:
        """A new customer number for a person already migrated: merged into the customer
        the target holds (one person, one customer; handover.stages.identity)."""
        row = self._subscriber_row()
        person = self.lg.row("subscribers", cust)
        for col in ("name", "id_number", "gender", "birth_date"):
            row[col] = person[col]
        self.day.changes["subscribers"].append(row)
        self.day.note(
            "subscribers", row["cust_id"], "DUPLICATE_PERSON", "merged", "EXISTING_CUSTOMER"
        )

    def revoke_marketing(self) -> None:
        c = self.lg.tables["consents"]
        pool = set(self.lg.pool)
        candidates = sorted(
            c.loc[
                (c["purpose"] == "marketing") & (c["granted"] == "1") & c["cust_id"].isin(pool),
                "consent_id",
            ]
        )
        for key in _pick(self.rng, candidates, 1):
            row = self.lg.row("consents", key)
            row["granted"], row["granted_at"] = "0", self.when()
            self.day.changes["consents"].append(row)
            self.day.note("consents", key, "REVOKE_CONSENT")

    # -- records ----------------------------------------------------------------------
    def record(self, table: str, cust: str, at: str) -> dict[str, str]:
        lg, rng = self.lg, self.rng
        key = lg.new_key(table)
        if table == "call_records":
            caller = (
                next(
                    (r["msisdn"] for r in self.day.changes["subscribers"] if r["cust_id"] == cust),
                    None,
                )
                or lg.row("subscribers", cust)["msisdn"]
            )
            return {
                "cdr_id": key,
                "cust_id": cust,
                "caller": caller,
                "callee": _msisdn(rng, set()),
                "start_time": at,
                "duration_s": str(int(rng.integers(1, 1800))),
                "cell_id": _cell(rng),
                "charge_fen": str(int(rng.integers(0, 500))),
            }
        if table == "data_sessions":
            return {
                "session_id": key,
                "cust_id": cust,
                "start_time": at,
                "bytes_up": str(int(rng.integers(1000, 10**7))),
                "bytes_down": str(int(rng.integers(1000, 10**8))),
                "cell_id": _cell(rng),
                "charge_fen": str(int(rng.integers(0, 300))),
            }
        if table == "payments":
            return {
                "payment_id": key,
                "cust_id": cust,
                "paid_at": at,
                "amount_fen": str(_AMOUNTS[int(rng.integers(len(_AMOUNTS)))]),
                "channel": _CHANNELS[int(rng.integers(len(_CHANNELS)))],
            }
        if table == "complaints":
            return {
                "complaint_id": key,
                "cust_id": cust,
                "created_at": at,
                "category": _CATEGORIES[int(rng.integers(len(_CATEGORIES)))],
                "text": _COMPLAINTS[int(rng.integers(len(_COMPLAINTS)))],
                "satisfaction": str(int(rng.integers(1, 6))),
            }
        return {
            "event_id": key,
            "cust_id": cust,
            "ts": at,
            "domain": _DOMAINS[int(rng.integers(len(_DOMAINS)))],
            "search_text": "",
        }

    def events(self, alive: list[str], consented: set[str]) -> list[str]:
        calls: list[str] = []
        for table in EVENT_TABLES:
            n = max(DAILY_MIN[table], round(DAILY_RATE[table] * self.n))
            for i in range(n):
                if table == "browsing_events":  # half of them by people who never consented
                    group = sorted(c for c in alive if (c in consented) == (i % 2 == 0))
                    group = group or alive
                    cust = group[int(self.rng.integers(len(group)))]
                else:
                    cust = alive[int(self.rng.integers(len(alive)))]
                row = self.record(table, cust, self.when())
                self.day.changes[table].append(row)
                key = row[KEYS[table]]
                if table == "browsing_events" and cust not in consented:
                    self.day.note(table, key, "NO_CONSENT", "excluded", "NO_CONSENT")
                else:
                    self.day.note(table, key, "INSERT")
                if table == "call_records":
                    calls.append(key)
        return calls

    def late_events(self, pool: list[str]) -> None:
        d = self.day
        for table, n in (("call_records", 3), ("data_sessions", 1), ("payments", 1)):
            for cust in _pick(self.rng, pool, n):
                at = _ts(self.rng, d.start - pd.Timedelta(days=3), d.start - pd.Timedelta(hours=1))
                row = self.record(table, cust, at)
                d.changes[table].append(row)
                d.note(table, row[KEYS[table]], "LATE_ARRIVAL")

    def bad_events(self, pool: list[str]) -> None:
        d, rng = self.day, self.rng
        a, b, c, e = _pick(rng, pool, 4)
        neg = self.record("call_records", a, self.when())
        neg["charge_fen"] = f"-{int(rng.integers(1, 500))}"
        future = self.record(
            "call_records", b, _ts(rng, d.end + pd.Timedelta(days=1), d.end + pd.Timedelta(days=3))
        )
        orphan = self.record("call_records", c, self.when())
        orphan["cust_id"] = f"C9{int(rng.integers(0, 10**7)):07d}"
        blank = self.record("payments", e, self.when())
        blank["amount_fen"] = ""
        for table, row, defect, reason in (
            ("call_records", neg, "NEGATIVE_AMOUNT", "NEGATIVE_AMOUNT"),
            ("call_records", future, "FUTURE_DATE", "INVALID_DATE"),
            ("call_records", orphan, "ORPHAN_RECORD", "ORPHAN_RECORD"),
            ("payments", blank, "BLANK_MANDATORY", "MISSING_FIELD"),
        ):
            d.changes[table].append(row)
            d.note(table, row[KEYS[table]], defect, "quarantined", reason)

    def void_calls(self, pool: list[str]) -> None:
        """Voided call records: the legacy billing system deletes them."""
        df = self.lg.tables["call_records"]
        ours = df.loc[df["cust_id"].isin(set(pool)), "cdr_id"]
        candidates = sorted(set(ours) - set(self.lg.prev_calls))
        victims = _pick(self.rng, candidates, 2)
        taken = {k for k, _ in self.day.deletions["call_records"]}
        voided_new = [
            k
            for k in _pick(self.rng, self.lg.prev_calls, 1)
            if k in set(df["cdr_id"]) and k not in taken
        ]
        for key in victims + voided_new:
            self.day.deletions["call_records"].append((key, self.when()))
            self.day.note("call_records", key, "DELETED", "deleted")


# ---------------------------------------------------------------- writing
def _write_csv(path: Path, frame: pd.DataFrame) -> dict[str, Any]:
    frame.to_csv(path, index=False, lineterminator="\n", encoding="utf-8")
    data = path.read_bytes()
    return {"file": path.name, "rows": len(frame), "sha256": hashlib.sha256(data).hexdigest()}


def _write_state(legacy: _Legacy, folder: Path, as_of: pd.Timestamp) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tables = {
        t: _write_csv(folder / f"{t}.csv", df[list(TABLE_COLUMNS[t])])
        for t, df in legacy.tables.items()
    }
    manifest = {
        "system": legacy.system,
        "exported_at": as_of.strftime(TIME_FMT),
        "seed": legacy.seed,
        "tables": tables,
    }
    (folder / "export_manifest.json").write_text(
        json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )


def _write_day(legacy: _Legacy, day: _Day, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    tables = {}
    for table, cols in TABLE_COLUMNS.items():
        info = _write_csv(
            folder / f"{table}.csv", pd.DataFrame(day.changes[table], columns=list(cols))
        )
        dels = _write_csv(
            folder / f"{table}.deleted.csv",
            pd.DataFrame(day.deletions[table], columns=[KEYS[table], "deleted_at"]),
        )
        tables[table] = {
            **info,
            "deleted_file": dels["file"],
            "deleted_rows": dels["rows"],
            "deleted_sha256": dels["sha256"],
        }
    pd.DataFrame(day.truth, columns=list(TRUTH_COLUMNS)).to_csv(
        folder / "truth.csv", index=False, lineterminator="\n", encoding="utf-8"
    )
    _write_state(legacy, folder / "state", day.end)
    manifest = {
        "system": legacy.system,
        "day": f"{day.start:%Y-%m-%d}",
        "interval_start": day.start.strftime(TIME_FMT),
        "interval_end": day.end.strftime(TIME_FMT),
        "seed": legacy.seed,
        "tables": tables,
        "state": "state",
    }
    (folder / "change_manifest.json").write_text(
        json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    return manifest


def generate_changes(
    export_dir: Path | str, out_dir: Path | str, days: int = 3, seed: int = 1
) -> list[dict[str, Any]]:
    """Write `days` change sets after the export in `export_dir`; returns their manifests."""
    if days < 1:
        raise ValueError("days must be >= 1")
    legacy = _Legacy(Path(export_dir), seed)
    first = legacy.exported_at.ceil("D")
    out = Path(out_dir)
    manifests = []
    for index in range(1, days + 1):
        start = first + pd.Timedelta(days=index - 1)
        day = _Player(legacy, index, start).play()
        legacy.apply(day)
        manifests.append(_write_day(legacy, day, out / f"{start:%Y-%m-%d}"))
    return manifests


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m handover_synth.changes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--export", type=Path, required=True, help="export written by handover_synth.legacy_bss"
    )
    ap.add_argument("--out", type=Path, required=True, help="folder for the change sets")
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    for m in generate_changes(args.export, args.out, args.days, args.seed):
        counts = {t: (v["rows"], v["deleted_rows"]) for t, v in m["tables"].items()}
        print(f"{m['day']}: (changed, deleted) {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
