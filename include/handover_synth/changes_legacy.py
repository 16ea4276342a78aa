"""The legacy system as the change days see it: its tables, the day's record, small draws.

`_Legacy` holds the export's tables (and applies a played day to them); `_Day` records
what one day did (changes, deletions, the day's answer key). The helpers draw times,
keys, MSISDNs, cells and resident IDs for the player (`changes_player`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from handover_synth.legacy_bss_spec import TABLE_COLUMNS, id_check_digit

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
