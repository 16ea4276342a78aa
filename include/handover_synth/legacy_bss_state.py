"""The legacy_bss generator's shared state: the plan of defects and row counts, and the truth sink.

`_State.plan()` draws, in a fixed order, which subscribers and child rows carry which
defect and how many child rows each subscriber has; the table writers
(`legacy_bss_people`, `legacy_bss_events`) read that plan and emit the answer key
through `_emit_truth`.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from handover_synth.legacy_bss_arrays import Progress, _CsvSink, _epoch
from handover_synth.legacy_bss_spec import (
    _P_CLEAN,
    _P_OBJECTED,
    _P_QUARANTINED,
    _P_REPAIRED,
    _TRUTH_DEFECT,
    _TRUTH_OUTCOME,
    _TRUTH_REASON,
    BEHAVIOURAL_GRANTED,
    BEHAVIOURAL_REFUSED,
    CHILD_DEFECT_RATES,
    DAY,
    HOUR,
    MARKETING_GRANTED,
    MARKETING_REFUSED,
    MEAN_ROWS_PER_SUBSCRIBER,
    NORMAL_WINDOW_DAYS,
    SUBSCRIBER_DEFECT_RATES,
    K,
    exact_count,
)


class _State:
    """Holds the per-subscriber state that child tables draw on."""

    # Set by the subscribers and consents writers (legacy_bss_people), read by the child tables.
    id_number: np.ndarray
    names: np.ndarray
    home_region: np.ndarray
    msisdn_int: np.ndarray
    msisdn: np.ndarray
    open_ts: np.ndarray
    since: np.ndarray
    since_browse: np.ndarray
    cust_id: np.ndarray
    cust_pos: np.ndarray
    cust_arrow: pa.Array
    # Set by legacy_bss_events._Events._make_cell_pool.
    cells_per_region: int
    cell_pool: pa.Array

    def __init__(
        self,
        out_dir: Path,
        n: int,
        seed: int,
        exported_at: str,
        call_records_per_subscriber: float,
        progress: Progress | None,
    ) -> None:
        if n < 1:
            raise ValueError("subscribers must be >= 1")
        self.out_dir = out_dir
        self.n = n
        self.seed = seed
        self.exported_at = exported_at
        self.progress = progress
        self.rng = np.random.default_rng(seed)
        e_dt = datetime.strptime(exported_at, "%Y-%m-%d %H:%M:%S")
        self.e_dt = e_dt
        self.E = _epoch(e_dt)
        self.e_day = self.E // DAY
        self.win_lo = self.E - NORMAL_WINDOW_DAYS * DAY + HOUR
        self.win_hi = self.E - HOUR
        self.means = dict(MEAN_ROWS_PER_SUBSCRIBER)
        self.means["call_records"] = float(call_records_per_subscriber)
        self.truth: _CsvSink | None = None

    # -- planning ---------------------------------------------------------------------------

    def plan(self) -> None:
        rng, n = self.rng, self.n
        # Subscriber own defects: disjoint exact-count sets, plus the originals of duplicates.
        kinds = [
            (K.BAD_ID_CHECKSUM, "BAD_ID_CHECKSUM"),
            (K.ID_BIRTH_MISMATCH, "ID_BIRTH_MISMATCH"),
            (K.MALFORMED_MSISDN, "MALFORMED_MSISDN"),
            (K.FULLWIDTH_MSISDN, "FULLWIDTH_MSISDN"),
            (K.BLANK_MANDATORY, "BLANK_MANDATORY"),
            (K.FUTURE_DATE, "INVALID_DATE"),
            (K.OBJECTED_TRANSFER, "OBJECTED_TRANSFER"),
            (K.DUPLICATE_PERSON, "DUPLICATE_PERSON"),
        ]
        counts = [exact_count(SUBSCRIBER_DEFECT_RATES[name], n) for _, name in kinds]
        picked = rng.choice(n, size=min(sum(counts), n), replace=False)
        codes = np.repeat(np.array([int(k) for k, _ in kinds], dtype=np.int8), counts)
        codes = codes[: len(picked)]
        own = np.zeros(n, dtype=np.int8)
        own[picked] = codes
        # INVALID_DATE rows are a future open_date or an impossible calendar date.
        bad_date = np.flatnonzero(own == K.FUTURE_DATE)
        impossible = rng.random(len(bad_date)) < 0.5
        own[bad_date[impossible]] = K.IMPOSSIBLE_DATE
        self.dup_orig = np.flatnonzero(own == K.DUPLICATE_PERSON)
        own[self.dup_orig] = K.CLEAN  # the original row is clean; its extra copy is the defect
        self.sub_own = own
        state = np.full(n, _P_QUARANTINED, dtype=np.int8)
        state[own == K.CLEAN] = _P_CLEAN
        state[own == K.FULLWIDTH_MSISDN] = _P_REPAIRED
        state[own == K.OBJECTED_TRANSFER] = _P_OBJECTED
        self.state = state

        # Child row counts per subscriber (grouped by subscriber in the files).
        activity = rng.gamma(2.0, 0.5, n)
        data_activity = rng.gamma(1.5, 1 / 1.5, n)
        self.counts = {
            "call_records": rng.poisson(self.means["call_records"] * activity),
            "data_sessions": rng.poisson(self.means["data_sessions"] * data_activity),
            "payments": rng.poisson(self.means["payments"], n),
            "complaints": rng.poisson(self.means["complaints"] * activity),
            "browsing_events": rng.poisson(self.means["browsing_events"] * data_activity),
        }
        self.starts = {
            t: np.concatenate(([0], np.cumsum(c))).astype(np.int64) for t, c in self.counts.items()
        }

        # Consents.
        u = rng.random(n)
        self.marketing_row = u < MARKETING_GRANTED + MARKETING_REFUSED
        self.marketing_granted = u < MARKETING_GRANTED
        v = rng.random(n)
        self.behavioural_row = v < BEHAVIOURAL_GRANTED + BEHAVIOURAL_REFUSED
        self.behavioural = v < BEHAVIOURAL_GRANTED

        # Own defects of child rows: only children of subscribers without any defect.
        eligible = state == _P_CLEAN
        self.child_defects: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        needs_old = np.zeros(n, dtype=bool)
        needs_old[self.dup_orig] = True
        for table, rates in CHILD_DEFECT_RATES.items():
            rows, codes_ = self._plan_child(table, eligible, rates)
            self.child_defects[table] = (rows, codes_)
            past = rows[codes_ == K.PAST_RETENTION]
            needs_old[np.searchsorted(self.starts[table], past, side="right") - 1] = True
        self.needs_old = needs_old

    def _plan_child(
        self, table: str, eligible: np.ndarray, rates: dict[str, float]
    ) -> tuple[np.ndarray, np.ndarray]:
        counts = self.counts[table]
        total = int(counts.sum())
        ks = [exact_count(rate, total) for rate in rates.values()]
        codes = np.repeat(np.array([int(K[name]) for name in rates], dtype=np.int8), ks)
        clean_idx = np.flatnonzero(eligible)
        ccum = np.concatenate(([0], np.cumsum(counts[clean_idx]))).astype(np.int64)
        k = min(len(codes), int(ccum[-1]))
        if k == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int8)
        ranks = self.rng.choice(int(ccum[-1]), size=k, replace=False)
        j = np.searchsorted(ccum, ranks, side="right") - 1
        rows = self.starts[table][clean_idx[j]] + (ranks - ccum[j])
        order = np.argsort(rows)
        return rows[order], codes[:k][order]

    def _cascade(self, parent: np.ndarray, own: np.ndarray) -> np.ndarray:
        """Truth code of child rows: objection first, own exclusion next, then quarantine."""
        code = own.copy()
        ps = self.state[parent]
        policy = (code == K.PAST_RETENTION) | (code == K.NO_CONSENT)
        code[(ps == _P_QUARANTINED) & ~policy] = K.PARENT_QUARANTINED
        code[ps == _P_OBJECTED] = K.PARENT_OBJECTED
        return code

    def _emit_truth(self, table: str, keys: pa.Array, code: np.ndarray) -> None:
        assert self.truth is not None
        mask = code != K.CLEAN
        k = int(mask.sum())
        if k == 0:
            return
        sel = pa.array(code[mask].astype(np.int64))
        self.truth.write(
            {
                "table": pa.repeat(pa.scalar(table), k),
                "key": pc.filter(keys, pa.array(mask)),
                "defect": _TRUTH_DEFECT.take(sel),
                "expected_outcome": _TRUTH_OUTCOME.take(sel),
                "expected_reason": _TRUTH_REASON.take(sel),
            }
        )

    def _report(self, table: str, rows: int, seconds: float) -> None:
        if self.progress is not None:
            self.progress(table, rows, seconds)
