"""Validate's rules: the reasons a row is quarantined, and the checks of a row's columns.

Every rule marks the rows it fails in a _Verdict, which keeps per row the first failing
reason in REASON_ORDER (so a row's reason does not depend on the order of the YAML) and
the field it concerns. handover.stages.cleanse.validate runs COLUMN_RULES in order over
one partition, then the parent rules, which need the parent table's registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from handover.core.validators import (
    classify_phones,
    msisdn_valid,
    normalise_msisdn,
    parse_money,
    resident_id_birth_gender,
    resident_id_valid,
    upgrade_resident_ids,
)
from handover.stages.cleanse_columns import (
    _duplicated,
    _has_control,
    _in,
    _np,
    _objects,
    _parse_decimal,
    _texts,
    _to_arrow,
)
from handover.stages.cleanse_dates import format_has_time, parse_dates

REASON_ORDER = [
    "MISSING_FIELD",
    "INVALID_CHARACTER",
    "DUPLICATE_KEY",
    "INVALID_ID_CHECKSUM",
    "INVALID_ID_BIRTHDATE",
    "INVALID_ID_GENDER",
    "INVALID_MSISDN",
    "INVALID_DATE",
    "INVALID_NUMBER",
    "INVALID_CODE",
    "NEGATIVE_AMOUNT",
    "AMOUNT_OUT_OF_RANGE",
    "ORPHAN_RECORD",
    "PARENT_QUARANTINED",
    "PARENT_EXCLUDED",
    "DUPLICATE_PERSON",
]


class _Verdict:
    """Collects the first failing reason (and field) per row."""

    def __init__(self, n: int):
        self.normalised: dict[str, int] = {}  # values rewritten into their one form, by kind
        self.reason = np.full(n, None, dtype=object)
        self.field = np.full(n, None, dtype=object)
        self.rank = np.full(n, len(REASON_ORDER), dtype=np.int16)

    def fail(self, mask: np.ndarray, reason: str, field: str | None) -> None:
        rank = REASON_ORDER.index(reason)
        hit = np.asarray(mask, dtype=bool) & (rank < self.rank)
        self.reason[hit] = reason
        self.field[hit] = field
        self.rank[hit] = rank

    @property
    def failed(self) -> np.ndarray:
        return self.rank < len(REASON_ORDER)

    def clear(self, mask: np.ndarray) -> None:
        """Take back the verdict of these rows (they leave another way: merged)."""
        hit = np.asarray(mask, dtype=bool)
        self.reason[hit] = None
        self.field[hit] = None
        self.rank[hit] = len(REASON_ORDER)


def _amount_rules(
    verdict: _Verdict, num: pd.Series, col: str, non_negative: set[str], bounds: dict[str, float]
) -> None:
    """The sign and size rules of a numeric column (integers, decimals, money alike)."""
    if col in non_negative:
        verdict.fail((num < 0).fillna(False).to_numpy(dtype=bool), "NEGATIVE_AMOUNT", col)
    if col in bounds:
        verdict.fail(
            (num > bounds[col]).fillna(False).to_numpy(dtype=bool), "AMOUNT_OUT_OF_RANGE", col
        )


@dataclass
class RulePass:
    """One partition on its way through validate's column rules.

    `norm` holds every data column as normalised Arrow text (rules rewrite MSISDNs and
    resident IDs into their one form there); `out` is the typed frame, text columns first
    filled from `norm` (fill_text), then typed by the date and number rules.
    """

    raw: pd.DataFrame
    rules: dict
    key: str
    exported_at: pd.Timestamp
    data_cols: list[str]
    duplicate_key: np.ndarray | None
    verdict: _Verdict
    norm: dict[str, pa.Array]
    out: pd.DataFrame

    @property
    def typed_cols(self) -> set[str]:
        """Columns the rules typed in `out`; the others are still text there (and in norm)."""
        return {
            *self.rules.get("dates", {}),
            *self.rules.get("integers", []),
            *self.rules.get("decimals", {}),
            *self.rules.get("money", {}),
        }


def check_characters(p: RulePass) -> None:
    # Control characters (NUL and C0 other than tab and line ends) break COPY and exports.
    for col in p.data_cols:
        p.verdict.fail(_has_control(p.norm[col]), "INVALID_CHARACTER", col)


def check_mandatory(p: RulePass) -> None:
    for col in p.rules.get("mandatory", []):
        p.verdict.fail(pc.is_null(p.norm[col]).to_numpy(zero_copy_only=False), "MISSING_FIELD", col)


def check_duplicate_key(p: RulePass) -> None:
    n = len(p.raw)
    duplicate_key = p.duplicate_key
    if duplicate_key is None:
        duplicate_key = _duplicated(p.norm[p.key])
    elif len(duplicate_key) != n:
        raise ValueError(f"validate: {len(duplicate_key)} duplicate-key flags for {n} rows")
    p.verdict.fail(duplicate_key, "DUPLICATE_KEY", p.key)


def check_resident_id(p: RulePass) -> None:
    rid = p.rules.get("resident_id")
    if not rid:
        return
    norm, verdict = p.norm, p.verdict
    col = rid["column"]
    ids, upgraded = upgrade_resident_ids(norm[col])
    norm[col] = ids
    if upgraded.any():  # normalised, not quarantined: counted apart in the ledger
        verdict.normalised["ID_UPGRADED_15_TO_18"] = int(upgraded.sum())
    present = pc.is_valid(ids).to_numpy(zero_copy_only=False)
    ok = resident_id_valid(ids)
    verdict.fail(present & ~ok, "INVALID_ID_CHECKSUM", col)
    birth, gender = resident_id_birth_gender(ids)
    if rid.get("birth_date"):
        other = norm[rid["birth_date"]]
        fmt = p.rules.get("dates", {}).get(rid["birth_date"])
        if fmt and fmt != "%Y-%m-%d":  # compare as dates, not as text
            text = _objects(other, pd.RangeIndex(len(other)))
            other = _to_arrow(parse_dates(text, fmt).dt.strftime("%Y-%m-%d"))
        same = _np(pc.equal(birth, other))
        verdict.fail(present & ok & ~same, "INVALID_ID_BIRTHDATE", rid["birth_date"])
    if rid.get("gender"):
        same = _np(pc.equal(gender, norm[rid["gender"]]))
        verdict.fail(present & ok & ~same, "INVALID_ID_GENDER", rid["gender"])


def check_phones(p: RulePass) -> None:
    norm, verdict = p.norm, p.verdict
    for col in p.rules.get("msisdn", []):
        norm[col] = normalise_msisdn(norm[col])
        present = pc.is_valid(norm[col]).to_numpy(zero_copy_only=False)
        verdict.fail(present & ~msisdn_valid(norm[col]), "INVALID_MSISDN", col)
    for col, allowed in p.rules.get("phones", {}).items():
        # Numbers of any class the policy allows for this column (a callee may be a
        # landline, an IoT device, 10086 or abroad), each in its normal form.
        norm[col], cls = classify_phones(norm[col])
        present = pc.is_valid(norm[col]).to_numpy(zero_copy_only=False)
        verdict.fail(present & ~np.isin(cls.astype(str), list(allowed)), "INVALID_MSISDN", col)


def fill_text(p: RulePass) -> None:
    for col in p.data_cols:
        p.out[col] = _texts(p.norm[col], p.raw.index)


def type_dates(p: RulePass) -> None:
    out = p.out
    not_future = set(p.rules.get("not_future", []))
    not_before = p.rules.get("not_before", {})  # {column: 'YYYY-MM-DD'}: sentinels, typos
    for col, fmt in p.rules.get("dates", {}).items():
        text = out[col]
        parsed = parse_dates(text, fmt)
        bad = text.notna() & parsed.isna()
        if col in not_future:
            bad |= parsed > p.exported_at
        if col in not_before:
            bad |= parsed < pd.Timestamp(str(not_before[col]))
        p.verdict.fail(bad.to_numpy(), "INVALID_DATE", col)
        parsed = parsed.astype("datetime64[s]")
        out[col] = parsed.dt.date if not format_has_time(fmt) else parsed


def _amount_bounds(p: RulePass) -> tuple[set[str], dict[str, float]]:
    """(columns that may not be negative, {column: the largest amount allowed})."""
    return set(p.rules.get("non_negative", [])), {c: v for c, v in p.rules.get("max", {}).items()}


def type_integers(p: RulePass) -> None:
    non_negative, bounds = _amount_bounds(p)
    for col in p.rules.get("integers", []):
        num, bad = _integers(p.out[col], p.norm[col])
        p.verdict.fail(bad.to_numpy(), "INVALID_NUMBER", col)
        _amount_rules(p.verdict, num, col, non_negative, bounds)
        p.out[col] = num


def _integers(text: pd.Series, arr: pa.Array) -> tuple[pd.Series, pd.Series]:
    """(Int64 values, rows that are no whole number) of one column."""
    # Plain integers are parsed exactly (a float detour would round 2**53 + 1 silently);
    # anything else ("12.0", "1e3") must be a whole number a float holds exactly.
    plain_np = _np(pc.match_substring_regex(arr, r"^[+-]?[0-9]{1,18}$"))
    plain = pd.Series(plain_np, index=text.index)
    values = np.zeros(len(text), dtype=np.int64)
    valid = plain_np.copy()
    if valid.any():  # Arrow's integer parser takes no "+" sign
        digits = pc.utf8_ltrim(pc.filter(arr, pa.array(plain_np)), "+")
        values[valid] = pc.cast(digits, pa.int64()).to_numpy(zero_copy_only=False)
    rest = text.notna() & ~plain
    other = pd.to_numeric(text[rest], errors="coerce")
    whole = (
        (other.notna() & (other.abs() < 2**53) & (other == other.round()))
        .reindex(text.index, fill_value=False)
        .to_numpy(dtype=bool)
    )
    if whole.any():
        values[whole] = pd.to_numeric(text[whole]).to_numpy(dtype=np.float64).astype(np.int64)
        valid |= whole
    # Built from int64 values and a mask: assigning into an Int64 series goes via float.
    num = pd.Series(pd.arrays.IntegerArray(values, ~valid), index=text.index)
    return num, rest & ~pd.Series(whole, index=text.index)


def type_decimals(p: RulePass) -> None:
    non_negative, bounds = _amount_bounds(p)
    for col, places in p.rules.get("decimals", {}).items():
        # Money in yuan and the like: at most `places` decimals, kept as float64 (exact to
        # the cent far beyond any amount; mapping's yuan_to_fen rounds to whole fen).
        text = p.out[col]
        num = _parse_decimal(p.norm[col], int(places), text.index)
        ok = num.notna() & (num.abs() < 2**53 / 100)
        p.verdict.fail((text.notna() & ~ok).to_numpy(), "INVALID_NUMBER", col)
        num = num.where(ok)
        _amount_rules(p.verdict, num, col, non_negative, bounds)
        p.out[col] = num.astype("float64")


def type_money(p: RulePass) -> None:
    non_negative, bounds = _amount_bounds(p)
    for col, spec in p.rules.get("money", {}).items():
        # Amounts as billing systems print them (`¥17,504.10`, `(12.50)`, `负3元`), read
        # exactly into whole fen: an Int64 column as `integers` gives.
        unit, places = spec.get("unit", "yuan"), int(spec.get("places", 2))
        text = p.out[col]
        fen = [parse_money(v, unit, places) if isinstance(v, str) else None for v in text]
        valid = np.array([f is not None for f in fen], dtype=bool)
        values = (
            np.array([f if f is not None else 0 for f in fen], dtype=np.int64)
            if len(fen)
            else np.zeros(0, dtype=np.int64)
        )
        num = pd.Series(pd.arrays.IntegerArray(values, ~valid), index=text.index)
        p.verdict.fail(
            (text.notna() & ~pd.Series(valid, index=text.index)).to_numpy(), "INVALID_NUMBER", col
        )
        _amount_rules(p.verdict, num, col, non_negative, bounds)
        p.out[col] = num


def check_codes(p: RulePass) -> None:
    # Columns still text in `out` can be checked on their Arrow form.
    typed_cols = p.typed_cols
    out, norm = p.out, p.norm
    for col, allowed in p.rules.get("codes", {}).items():
        allowed = [str(a) for a in allowed]
        if col in typed_cols:
            bad = (out[col].notna() & ~out[col].isin(allowed)).to_numpy()
        else:
            bad = pc.is_valid(norm[col]).to_numpy(zero_copy_only=False) & ~_in(norm[col], allowed)
        p.verdict.fail(bad, "INVALID_CODE", col)


#: validate's rules of one row's own columns, in the order they run (a row's reason is the
#: first in REASON_ORDER whatever this order; among one reason's fields, the first here).
COLUMN_RULES: tuple[Callable[[RulePass], None], ...] = (
    check_characters,
    check_mandatory,
    check_duplicate_key,
    check_resident_id,
    check_phones,
    fill_text,
    type_dates,
    type_integers,
    type_decimals,
    type_money,
    check_codes,
)
