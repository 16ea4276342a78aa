"""Plays one day of the legacy operator after the export: inserts, updates, deletions, defects.

`_Player(legacy, index, start).play()` draws the day from its own generator
(`default_rng([seed, index])`), so a day depends only on the export, the seed and the
days before it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from handover_synth.changes_legacy import (
    _AMOUNTS,
    _CATEGORIES,
    _CHANNELS,
    _COMPLAINTS,
    _DOMAINS,
    DAILY_MIN,
    DAILY_RATE,
    EVENT_TABLES,
    KEYS,
    _cell,
    _Day,
    _Legacy,
    _msisdn,
    _pick,
    _resident_id,
    _ts,
)
from handover_synth.legacy_bss_spec import TABLE_COLUMNS


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
