"""The legacy_bss child tables: call records, data sessions, payments, complaints, browsing.

`_write_child` streams a table in chunks of `CHUNK_ROWS`, placing the planned own defects
and orphan keys; one `_build_*` method a table draws the table's own columns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from handover_synth.legacy_bss_arrays import (
    _CsvSink,
    _epoch,
    _months_before,
    _numbers_with_prefix,
    _random_msisdns,
)
from handover_synth.legacy_bss_spec import (
    CHUNK_ROWS,
    DAY,
    PAST_RETENTION_MONTHS,
    TABLE_COLUMNS,
    K,
)
from handover_synth.legacy_bss_state import _State
from handover_synth.legacy_bss_vocab import (
    _CATEGORIES,
    _CHANNEL_P,
    _CHANNELS,
    _COMPLAINT_TEMPLATES,
    _DOMAIN_P,
    _DOMAINS,
    _PAYMENT_AMOUNTS,
    _PII_ID_SUFFIXES,
    _PII_MSISDN_SUFFIXES,
    _REGIONS,
    _SEARCH_DOMAINS,
    _SEARCH_QUERIES,
)


class _Events(_State):
    """Writes the five child tables."""

    def _timestamps(
        self, table: str, parent: np.ndarray, own: np.ndarray, since: np.ndarray
    ) -> np.ndarray:
        rng = self.rng
        m = len(parent)
        lo = since[parent]
        ts = lo + (rng.random(m) * (self.win_hi - lo)).astype(np.int64)
        fut = np.flatnonzero(own == K.FUTURE_DATE)
        ts[fut] = self.E + rng.integers(DAY, 400 * DAY, len(fut))
        past = np.flatnonzero(own == K.PAST_RETENTION)
        if len(past):
            near, far = PAST_RETENTION_MONTHS[table]
            p_lo = _epoch(_months_before(self.e_dt, far)) + 2 * DAY
            p_hi = _epoch(_months_before(self.e_dt, near)) - 2 * DAY
            ts[past] = rng.integers(p_lo, p_hi, len(past))
        return ts

    def _cells(self, parent: np.ndarray) -> pa.Array:
        rng = self.rng
        m = len(parent)
        region = self.home_region[parent]
        roam = rng.random(m) < 0.05
        region = np.where(roam, rng.integers(0, len(_REGIONS), m), region)
        idx = region * self.cells_per_region + rng.integers(0, self.cells_per_region, m)
        return self.cell_pool.take(pa.array(idx))

    def _make_cell_pool(self) -> None:
        rng = self.rng
        lacs_per_region, cells_per_lac = 8, 16
        self.cells_per_region = lacs_per_region * cells_per_lac
        lac = rng.choice(
            np.arange(4096, 65535), size=len(_REGIONS) * lacs_per_region, replace=False
        )
        ci = rng.integers(10_000, 65_535, len(_REGIONS) * self.cells_per_region)
        lac_of_cell = np.repeat(lac, cells_per_lac)
        self.cell_pool = pa.array(
            [f"460-00-{a}-{b}" for a, b in zip(lac_of_cell.tolist(), ci.tolist(), strict=True)]
        )

    def _write_child(
        self,
        table: str,
        id_prefix: str,
        id_base: int,
        build: Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, Any]],
        since: np.ndarray,
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        sink = _CsvSink(self.out_dir / f"{table}.csv", TABLE_COLUMNS[table])
        starts = self.starts[table]
        total = int(starts[-1])
        d_rows, d_codes = self.child_defects[table]
        orphan_rows = d_rows[d_codes == K.ORPHAN_RECORD]
        orphan_ids = pa.array(
            [
                f"C{x:08d}"
                for x in self.rng.integers(90_000_000, 100_000_000, len(orphan_rows)).tolist()
            ],
            type=pa.string(),
        )
        cust_pool = pa.concat_arrays([self.cust_arrow, orphan_ids])
        for a in range(0, total, CHUNK_ROWS):
            b = min(total, a + CHUNK_ROWS)
            rows = np.arange(a, b, dtype=np.int64)
            parent = np.searchsorted(starts, rows, side="right") - 1
            own = np.zeros(b - a, dtype=np.int8)
            lo, hi = np.searchsorted(d_rows, [a, b])
            own[d_rows[lo:hi] - a] = d_codes[lo:hi]
            if table == "browsing_events":
                own[~self.behavioural[parent]] = K.NO_CONSENT
            ts = self._timestamps(table, parent, own, since)
            cust_idx = parent.copy()
            orphan = np.flatnonzero(own == K.ORPHAN_RECORD)
            cust_idx[orphan] = self.n + np.searchsorted(orphan_rows, rows[orphan])
            ids = _numbers_with_prefix(id_prefix, id_base + rows)
            columns = build(parent, own, ts)
            columns[TABLE_COLUMNS[table][0]] = ids
            columns["cust_id"] = cust_pool.take(pa.array(cust_idx))
            sink.write(columns)
            self._emit_truth(table, ids, self._cascade(parent, own))
        meta = sink.close()
        self._report(table, meta["rows"], time.perf_counter() - t0)
        return meta

    def _build_calls(self, parent: np.ndarray, own: np.ndarray, ts: np.ndarray) -> dict[str, Any]:
        rng = self.rng
        m = len(parent)
        mine = self.msisdn_int[parent]
        orphan = own == K.ORPHAN_RECORD
        mine[orphan] = _random_msisdns(rng, int(orphan.sum()))
        other = _random_msisdns(rng, m)
        outgoing = rng.random(m) < 0.6
        caller = np.where(outgoing, mine, other)
        callee = np.where(outgoing, other, mine)
        duration = np.minimum(7_200, rng.gamma(1.2, 90.0, m).astype(np.int64) + 1)
        rate = np.array([0, 0, 0, 0, 0, 0, 0, 10, 15, 19], dtype=np.int64)[rng.integers(0, 10, m)]
        charge = (duration + 59) // 60 * rate
        neg = own == K.NEGATIVE_AMOUNT
        charge[neg] = -rng.integers(1, 2_000, int(neg.sum()))
        return {
            "caller": pa.array(caller).cast(pa.string()),
            "callee": pa.array(callee).cast(pa.string()),
            "start_time": pa.array(ts, type=pa.timestamp("s")),
            "duration_s": pa.array(duration),
            "cell_id": self._cells(parent),
            "charge_fen": pa.array(charge),
        }

    def _build_sessions(
        self, parent: np.ndarray, own: np.ndarray, ts: np.ndarray
    ) -> dict[str, Any]:
        rng = self.rng
        m = len(parent)
        down = np.minimum(rng.lognormal(15.0, 1.8, m), 2e10).astype(np.int64)
        up = (down * rng.uniform(0.02, 0.3, m)).astype(np.int64)
        charge = np.where(rng.random(m) < 0.85, 0, rng.integers(1, 500, m))
        neg = own == K.NEGATIVE_AMOUNT
        charge[neg] = -rng.integers(1, 2_000, int(neg.sum()))
        return {
            "start_time": pa.array(ts, type=pa.timestamp("s")),
            "bytes_up": pa.array(up),
            "bytes_down": pa.array(down),
            "cell_id": self._cells(parent),
            "charge_fen": pa.array(charge),
        }

    def _build_payments(
        self, parent: np.ndarray, own: np.ndarray, ts: np.ndarray
    ) -> dict[str, Any]:
        rng = self.rng
        m = len(parent)
        round_amount = _PAYMENT_AMOUNTS[rng.integers(0, len(_PAYMENT_AMOUNTS), m)]
        bill = rng.integers(100, 30_000, m)
        amount = np.where(rng.random(m) < 0.6, round_amount, bill)
        neg = own == K.NEGATIVE_AMOUNT
        amount[neg] = -rng.integers(100, 20_000, int(neg.sum()))
        blank = own == K.BLANK_MANDATORY
        channel = rng.choice(len(_CHANNEL_P), size=m, p=_CHANNEL_P)
        return {
            "paid_at": pa.array(ts, type=pa.timestamp("s")),
            "amount_fen": pa.array(amount, mask=blank),
            "channel": _CHANNELS.take(pa.array(channel)),
        }

    def _build_complaints(
        self, parent: np.ndarray, own: np.ndarray, ts: np.ndarray
    ) -> dict[str, Any]:
        rng = self.rng
        m = len(parent)
        cat = rng.choice(len(_CATEGORIES), size=m, p=[0.35, 0.3, 0.25, 0.1])
        tpl = rng.integers(0, 5, m)
        num = rng.integers(2, 99, m)
        pii_kind = rng.integers(0, 5, m)  # 0-2 MSISDN suffixes, 3-4 resident ID suffixes
        texts: list[str] = []
        pii = own == K.PII_IN_TEXT
        for i in range(m):
            text = _COMPLAINT_TEMPLATES[_CATEGORIES[cat[i]]][tpl[i]].format(n=num[i])
            if pii[i]:
                k = int(pii_kind[i])
                if k < 3:
                    text += _PII_MSISDN_SUFFIXES[k].format(v=self.msisdn[parent[i]])
                else:
                    text += _PII_ID_SUFFIXES[k - 3].format(v=self.id_number[parent[i]])
            texts.append(text)
        sat = rng.choice(6, size=m, p=[0.25, 0.12, 0.1, 0.18, 0.2, 0.15])
        return {
            "created_at": pa.array(ts, type=pa.timestamp("s")),
            "category": pa.array(list(_CATEGORIES)).take(pa.array(cat)),
            "text": pa.array(texts, type=pa.string()),
            "satisfaction": pa.array(["", "1", "2", "3", "4", "5"]).take(pa.array(sat)),
        }

    def _build_browsing(
        self, parent: np.ndarray, own: np.ndarray, ts: np.ndarray
    ) -> dict[str, Any]:
        rng = self.rng
        m = len(parent)
        dom = rng.choice(len(_DOMAINS), size=m, p=_DOMAIN_P / _DOMAIN_P.sum())
        searchy = np.array([d in _SEARCH_DOMAINS for d in _DOMAINS])[dom]
        has_query = searchy & (rng.random(m) < 0.7)
        query = rng.integers(0, len(_SEARCH_QUERIES), m) + 1
        query[~has_query] = 0
        return {
            "ts": pa.array(ts, type=pa.timestamp("s")),
            "domain": pa.array(list(_DOMAINS)).take(pa.array(dom)),
            "search_text": pa.array(["", *_SEARCH_QUERIES]).take(pa.array(query)),
        }
