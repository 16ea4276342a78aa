"""The legacy_bss subscribers and consents tables: people, their IDs, numbers and consents.

Subscriber-level state that the child tables draw on (IDs, names, MSISDNs, open dates,
customer keys, browsing consent) is set here, on the generator, in a fixed draw order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from handover_synth.legacy_bss_arrays import (
    _check_chars,
    _day_strings,
    _numbers_with_prefix,
    _uniform_int,
    _unique_msisdns,
    _ymd,
)
from handover_synth.legacy_bss_spec import (
    _ID_CHECK_CHARS,
    DAY,
    HOUR,
    TABLE_COLUMNS,
    K,
)
from handover_synth.legacy_bss_state import _State
from handover_synth.legacy_bss_vocab import (
    _CONSENT_PURPOSES,
    _FULLWIDTH_DIGITS,
    _GIVEN_FEMALE,
    _GIVEN_MALE,
    _GIVEN_NEUTRAL,
    _IMPOSSIBLE_MONTH_DAYS,
    _REGION_WEIGHTS,
    _REGIONS,
    _STREETS,
    _SURNAMES,
)


class _People(_State):
    """Writes the subscribers and consents tables."""

    # -- subscribers ------------------------------------------------------------------------

    def subscribers(self) -> dict[str, Any]:
        rng, n, e_day = self.rng, self.n, self.e_day
        own = self.sub_own
        male = rng.random(n) < 0.51

        # Birth dates: ages 18.3-79.9 at E; "old" customers (open > 5 years ago) are >= 25.2.
        birth_lo = e_day - 29_200
        birth_hi = np.where(self.needs_old, e_day - 9_200, e_day - 6_670)
        birth = _uniform_int(rng, birth_lo, birth_hi, n)
        region, id_number = self._id_numbers(male, birth)
        self.id_number = id_number

        birth_field = birth.copy()
        mism = np.flatnonzero(own == K.ID_BIRTH_MISMATCH)
        if len(mism):
            shift = rng.integers(30, 1500, len(mism))
            up = birth[mism] + shift
            birth_field[mism] = np.where(up <= e_day - 6_670, up, birth[mism] - shift)
        gender = np.where(male, "男", "女")

        names = self._names(male)
        address, city = self._addresses(region)
        msisdn, all_msisdn = self._msisdns()
        open_day, open_field = self._open_dates(birth)
        upd_lo = self.since.copy()
        upd_lo[self.dup_orig] = np.maximum(self.E - 200 * DAY, self.since[self.dup_orig])
        updated = _uniform_int(rng, upd_lo, self.win_hi, n)
        status = np.where(rng.random(n) < 0.93, "1", "2").astype(object)
        objection = np.where(own == K.OBJECTED_TRANSFER, "1", "0").astype(object)

        # The DUPLICATE_PERSON extra rows: same person, new cust_id, older record.
        o = self.dup_orig
        dup_n = len(o)
        x_open = np.maximum(open_day[o] - rng.integers(0, 200, dup_n), birth[o] + 6_580)
        x_upd = _uniform_int(rng, self.win_lo, updated[o] - DAY, dup_n)
        x_status = np.where(rng.random(dup_n) < 0.8, "1", "2").astype(object)

        cust_all, base_pos, extra_pos = self._customer_keys(n + dup_n, dup_n)
        total = n + dup_n

        def place(base: np.ndarray, extra: np.ndarray) -> np.ndarray:
            out = np.empty(total, dtype=base.dtype)
            out[base_pos] = base
            out[extra_pos] = extra
            return out

        x_msisdn = np.array([str(x) for x in all_msisdn[n:].tolist()], dtype=object)
        columns: dict[str, Any] = {
            "cust_id": pa.array(cust_all.tolist(), type=pa.string()),
            "name": place(names, self.names[o]),
            "id_number": place(id_number, id_number[o]),
            "gender": place(gender.astype(object), gender[o].astype(object)),
            "birth_date": place(
                _day_strings(birth_field).astype(object),
                _day_strings(birth_field[o]).astype(object),
            ),
            "msisdn": place(msisdn, x_msisdn),
            "address": place(address, address[o]),
            "city": place(city, city[o]),
            "open_date": place(open_field, _day_strings(x_open).astype(object)),
            "status": place(status, x_status),
            "transfer_objection": place(objection, np.full(dup_n, "0", dtype=object)),
            "updated_at": pa.array(place(updated, x_upd), type=pa.timestamp("s")),
        }
        for name in TABLE_COLUMNS["subscribers"]:
            if isinstance(columns[name], np.ndarray):
                columns[name] = pa.array(columns[name].tolist(), type=pa.string())

        truth_code = np.zeros(total, dtype=np.int8)
        truth_code[base_pos] = own
        truth_code[extra_pos] = K.DUPLICATE_PERSON
        self._emit_truth("subscribers", columns["cust_id"], truth_code)
        return columns

    def _id_numbers(self, male: np.ndarray, birth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Region of issue and resident ID of every subscriber (BAD_ID_CHECKSUM placed)."""
        rng, n = self.rng, self.n
        region = rng.choice(len(_REGIONS), size=n, p=_REGION_WEIGHTS / _REGION_WEIGHTS.sum())
        seq = rng.integers(0, 500, n) * 2 + male.astype(np.int64)
        region_codes = np.array([int(r[0]) for r in _REGIONS], dtype=np.int64)
        while True:  # the first 17 digits must be unique (only duplicates share an ID)
            first17 = region_codes[region] * 10**11 + _ymd(birth) * 1000 + seq
            _, first = np.unique(first17, return_index=True)
            dup = np.ones(n, dtype=bool)
            dup[first] = False
            if not dup.any():
                break
            seq[dup] = rng.integers(0, 500, int(dup.sum())) * 2 + male[dup].astype(np.int64)
        check = _check_chars(first17)
        bad = np.flatnonzero(self.sub_own == K.BAD_ID_CHECKSUM)
        if len(bad):
            pos = np.array([_ID_CHECK_CHARS.index(c) for c in check[bad]], dtype=np.int64)
            shifted = (pos + rng.integers(1, 11, len(bad))) % 11
            check[bad] = np.array(list(_ID_CHECK_CHARS))[shifted]
        id_number = np.array(
            [f"{a:017d}{c}" for a, c in zip(first17.tolist(), check.tolist(), strict=True)],
            dtype=object,
        )
        return region, id_number

    def _names(self, male: np.ndarray) -> np.ndarray:
        """The name column (BLANK_MANDATORY blanked); the real names stay in `self.names`."""
        rng, n = self.rng, self.n
        sur_w = 1.0 / (np.arange(len(_SURNAMES)) + 4.0)
        surname = rng.choice(len(_SURNAMES), size=n, p=sur_w / sur_w.sum())
        three = rng.random(n) < 0.65
        pool_m = _GIVEN_MALE + _GIVEN_NEUTRAL
        pool_f = _GIVEN_FEMALE + _GIVEN_NEUTRAL
        g1 = rng.random(n)
        g2 = rng.random(n)
        names = np.empty(n, dtype=object)
        for i, (s, m, t, a, b) in enumerate(
            zip(
                surname.tolist(),
                male.tolist(),
                three.tolist(),
                g1.tolist(),
                g2.tolist(),
                strict=True,
            )
        ):
            pool = pool_m if m else pool_f
            given = pool[int(a * len(pool))]
            if t:
                given += pool[int(b * len(pool))]
            names[i] = _SURNAMES[s] + given
        self.names = names.copy()
        blank = np.flatnonzero(self.sub_own == K.BLANK_MANDATORY)
        names[blank] = np.array(["", " ", "   "], dtype=object)[rng.integers(0, 3, len(blank))]
        return names

    def _addresses(self, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Address and city: mostly where the ID was issued, some people moved."""
        rng, n = self.rng, self.n
        moved = rng.random(n) < 0.3
        home = np.where(
            moved,
            rng.choice(len(_REGIONS), size=n, p=_REGION_WEIGHTS / _REGION_WEIGHTS.sum()),
            region,
        )
        self.home_region = home
        street = rng.integers(0, len(_STREETS), n)
        number = rng.integers(1, 999, n)
        has_flat = rng.random(n) < 0.7
        building = rng.integers(1, 30, n)
        unit = rng.integers(1, 6, n)
        room = rng.integers(1, 33, n) * 100 + rng.integers(1, 5, n)
        address = np.empty(n, dtype=object)
        city = np.empty(n, dtype=object)
        for i in range(n):
            _, prov, cty, dist = _REGIONS[home[i]]
            head = prov + dist if prov == cty else prov + cty + dist
            addr = f"{head}{_STREETS[street[i]]}{number[i]}号"
            if has_flat[i]:
                addr += f"{building[i]}栋{unit[i]}单元{room[i]}室"
            address[i] = addr
            city[i] = cty
        return address, city

    def _msisdns(self) -> tuple[np.ndarray, np.ndarray]:
        """The msisdn column (defects placed) and all unique numbers, duplicates' lines last."""
        rng, n, own = self.rng, self.n, self.sub_own
        all_msisdn = _unique_msisdns(rng, n + len(self.dup_orig))
        self.msisdn_int = all_msisdn[:n]
        msisdn = np.array([str(x) for x in self.msisdn_int.tolist()], dtype=object)
        self.msisdn = msisdn.copy()
        mal = np.flatnonzero(own == K.MALFORMED_MSISDN)
        style = rng.integers(0, 3, len(mal))
        for i, s in zip(mal.tolist(), style.tolist(), strict=True):
            m = msisdn[i]
            msisdn[i] = m[:8] if s == 0 else ("2" + m[1:] if s == 1 else m[:10] + "x")
        full = np.flatnonzero(own == K.FULLWIDTH_MSISDN)
        style = rng.integers(0, 3, len(full))
        for i, s in zip(full.tolist(), style.tolist(), strict=True):
            m = msisdn[i]
            if s == 0:
                msisdn[i] = m.translate(_FULLWIDTH_DIGITS)
            elif s == 1:
                msisdn[i] = f"+86 {m[:3]} {m[3:7]} {m[7:]}"
            else:
                msisdn[i] = f"{m[:3]}-{m[3:7]}-{m[7:]}"
        return msisdn, all_msisdn

    def _open_dates(self, birth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Open day of every line and the open_date column (INVALID_DATE rows placed)."""
        rng, n, e_day, own = self.rng, self.n, self.e_day, self.sub_own
        age_days = e_day - birth
        hi_off = np.minimum(5_479, age_days - 6_580)
        lo_off = np.where(self.needs_old, 1_900, 60)
        open_day = e_day - _uniform_int(rng, lo_off, hi_off, n)
        self.open_ts = open_day * DAY
        self.since = np.maximum(self.win_lo, self.open_ts + DAY)
        open_field = _day_strings(open_day).astype(object)
        fut = np.flatnonzero(own == K.FUTURE_DATE)
        open_field[fut] = _day_strings(e_day + rng.integers(2, 400, len(fut)))
        imp = np.flatnonzero(own == K.IMPOSSIBLE_DATE)
        years = rng.integers(2012, 2026, len(imp))
        md = rng.integers(0, len(_IMPOSSIBLE_MONTH_DAYS), len(imp))
        open_field[imp] = [
            f"{y}-{_IMPOSSIBLE_MONTH_DAYS[k]}"
            for y, k in zip(years.tolist(), md.tolist(), strict=True)
        ]
        return open_day, open_field

    def _customer_keys(self, total: int, dup_n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """File order: ascending cust_id, extra rows at random places.

        Returns every row's key and the file positions of the base and the extra rows.
        """
        rng = self.rng
        gap_max = max(1, min(400, 79_999_999 // total))
        ids = 10_000_000 + np.cumsum(rng.integers(1, gap_max + 1, total))
        extra_pos = np.sort(rng.choice(total, size=dup_n, replace=False))
        is_extra = np.zeros(total, dtype=bool)
        is_extra[extra_pos] = True
        base_pos = np.flatnonzero(~is_extra)
        cust_all = np.array([f"C{x:08d}" for x in ids.tolist()], dtype=object)
        self.cust_id = cust_all[base_pos]
        self.cust_pos = base_pos
        self.cust_arrow = pa.array(self.cust_id.tolist(), type=pa.string())
        return cust_all, base_pos, extra_pos

    # -- consents ---------------------------------------------------------------------------

    def consents(self) -> dict[str, Any]:
        rng, n = self.rng, self.n
        subs = np.arange(n)
        sel = [subs, np.flatnonzero(self.marketing_row), np.flatnonzero(self.behavioural_row)]
        who = np.concatenate(sel)
        purpose = np.concatenate([np.full(len(s), p, dtype=np.int64) for p, s in enumerate(sel)])
        granted = np.concatenate(
            [np.ones(n, dtype=bool), self.marketing_granted[sel[1]], self.behavioural[sel[2]]]
        )
        order = np.lexsort((purpose, self.cust_pos[who]))
        who, purpose, granted = who[order], purpose[order], granted[order]
        m = len(who)
        # Consents are recorded when the line opens, or at the 2021+ re-consent campaigns.
        campaign = self.E - rng.integers(60, 1_820, n) * DAY
        base = np.maximum(self.open_ts[who], campaign[who])
        late = np.where(purpose == 0, HOUR, 20 * DAY)
        granted_at = base + (rng.random(m) * late).astype(np.int64)
        beh = np.flatnonzero((purpose == 2) & granted)
        self.since_browse = self.since.copy()
        self.since_browse[who[beh]] = np.maximum(self.since[who[beh]], granted_at[beh] + HOUR)

        ids = _numbers_with_prefix("K", 100_000_001 + np.arange(m, dtype=np.int64))
        columns = {
            "consent_id": ids,
            "cust_id": self.cust_arrow.take(pa.array(who)),
            "purpose": pa.array(list(_CONSENT_PURPOSES)).take(pa.array(purpose)),
            "granted": pa.array(np.where(granted, "1", "0").tolist(), type=pa.string()),
            "granted_at": pa.array(granted_at, type=pa.timestamp("s")),
        }
        self._emit_truth("consents", ids, self._cascade(who, np.zeros(m, dtype=np.int8)))
        return columns
