"""Cleanse: normalise, validate and de-duplicate one partition; quarantine what fails.

Rules come from the source system's cleansing.yaml; the validators are built in. Every
row leaves either clean (typed: dates parsed, integers cast, MSISDNs normalised) or in
quarantine with one reason code and the field it concerns. The first failing rule in
REASON_ORDER wins, so a row's reason does not depend on the order of the YAML.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from handover.validators import (
    msisdn_valid,
    normalise_msisdn,
    normalise_text,
    resident_id_birth_gender,
    resident_id_valid,
)

EPOCH_UNITS = {"epoch": "s", "epoch_ms": "ms"}

REASON_ORDER = [
    "MISSING_FIELD", "INVALID_CHARACTER", "DUPLICATE_KEY", "INVALID_ID_CHECKSUM", "INVALID_ID_BIRTHDATE",
    "INVALID_ID_GENDER", "INVALID_MSISDN", "INVALID_DATE", "INVALID_NUMBER", "INVALID_CODE",
    "NEGATIVE_AMOUNT", "ORPHAN_RECORD", "PARENT_QUARANTINED", "PARENT_EXCLUDED",
    "DUPLICATE_PERSON",
]
META_COLUMNS = ["_source_row"]


@dataclass
class ParentRegistry:
    """Fate of every parent key, decided once for the whole parent table."""

    valid: set[str]
    quarantined: set[str]
    excluded: set[str]

    def classify(self, keys: pd.Series) -> np.ndarray:
        """Per child row: None (parent fine) or the quarantine reason."""
        out = np.full(len(keys), None, dtype=object)
        k = keys.to_numpy(dtype=object)
        in_valid = keys.isin(self.valid).to_numpy()
        in_q = keys.isin(self.quarantined).to_numpy()
        in_x = keys.isin(self.excluded).to_numpy()
        out[~in_valid & in_q] = "PARENT_QUARANTINED"
        out[~in_valid & ~in_q & in_x] = "PARENT_EXCLUDED"
        out[~in_valid & ~in_q & ~in_x & pd.notna(k)] = "ORPHAN_RECORD"
        return out


@dataclass
class CleanseResult:
    clean: pd.DataFrame
    quarantine: pd.DataFrame  # original (raw) row + _reason + _field
    counts: dict[str, int]


class _Verdict:
    """Collects the first failing reason (and field) per row."""

    def __init__(self, n: int):
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
        return pd.notna(self.reason)


def is_epoch_format(fmt: str) -> bool:
    """`epoch` / `epoch_ms`, optionally `:<IANA zone>` (seconds since 1970 UTC, shown as the
    zone's local time; without a zone, UTC)."""
    return fmt.split(":", 1)[0] in EPOCH_UNITS


def format_has_time(fmt: str) -> bool:
    return is_epoch_format(fmt) or any(d in fmt for d in ("%H", "%I", "%M", "%S", "%X", "%c"))


def parse_dates(text: pd.Series, fmt: str) -> pd.Series:
    """Parse text with a strptime format or an epoch spec; unparseable -> NaT."""
    if not is_epoch_format(fmt):
        return pd.to_datetime(text, format=fmt, errors="coerce")
    unit_name, _, zone = fmt.partition(":")
    num = pd.to_numeric(text, errors="coerce")
    whole = num.notna() & (num == num.round()) & (num.abs() < 2**53)
    num = num.where(whole)
    bound = 253402300799 * (1000 if unit_name == "epoch_ms" else 1)  # 9999-12-31
    num = num.where(num.abs() <= bound)
    parsed = pd.to_datetime(num, unit=EPOCH_UNITS[unit_name], utc=True, errors="coerce")
    if zone:
        parsed = parsed.dt.tz_convert(zone)
    return parsed.dt.tz_localize(None)


def _arr(df: pd.DataFrame, col: str) -> pa.Array:
    return pa.array(df[col].astype(object).where(df[col].notna(), None).tolist(), pa.string())


def validate(raw: pd.DataFrame, rules: dict, *, key: str, exported_at: pd.Timestamp,
             parent: ParentRegistry | None = None) -> tuple[pd.DataFrame, _Verdict]:
    """Normalise and type the partition; return the typed frame and the verdict per row."""
    n = len(raw)
    verdict = _Verdict(n)
    out = pd.DataFrame(index=raw.index)
    data_cols = [c for c in raw.columns if c not in META_COLUMNS]
    norm: dict[str, pa.Array] = {c: normalise_text(_arr(raw, c)) for c in data_cols}

    # Control characters (NUL and C0 other than tab and line ends) break COPY and exports.
    for col in data_cols:
        ctrl = pc.match_substring_regex(norm[col], r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
        verdict.fail(pc.fill_null(ctrl, False).to_numpy(zero_copy_only=False),
                     "INVALID_CHARACTER", col)

    for col in rules.get("mandatory", []):
        verdict.fail(pc.is_null(norm[col]).to_numpy(zero_copy_only=False), "MISSING_FIELD", col)

    keys = pd.Series(norm[key].to_pylist(), index=raw.index, dtype=object)
    verdict.fail(keys.duplicated(keep="first").to_numpy() & keys.notna().to_numpy(),
                 "DUPLICATE_KEY", key)

    rid = rules.get("resident_id")
    if rid:
        col = rid["column"]
        ids = pc.utf8_upper(norm[col])
        norm[col] = ids
        present = pc.is_valid(ids).to_numpy(zero_copy_only=False)
        ok = resident_id_valid(ids)
        verdict.fail(present & ~ok, "INVALID_ID_CHECKSUM", col)
        birth, gender = resident_id_birth_gender(ids)
        if rid.get("birth_date"):
            other = norm[rid["birth_date"]]
            fmt = rules.get("dates", {}).get(rid["birth_date"])
            if fmt and fmt != "%Y-%m-%d":  # compare as dates, not as text
                text = pd.Series(other.to_pylist(), dtype=object)
                iso = parse_dates(text, fmt).dt.strftime("%Y-%m-%d")
                other = pa.array(iso.astype(object).where(iso.notna(), None).tolist(),
                                 pa.string())
            same = pc.fill_null(pc.equal(birth, other), False).to_numpy(zero_copy_only=False)
            verdict.fail(present & ok & ~same, "INVALID_ID_BIRTHDATE", rid["birth_date"])
        if rid.get("gender"):
            other = norm[rid["gender"]]
            same = pc.fill_null(pc.equal(gender, other), False).to_numpy(zero_copy_only=False)
            verdict.fail(present & ok & ~same, "INVALID_ID_GENDER", rid["gender"])

    for col in rules.get("msisdn", []):
        norm[col] = normalise_msisdn(norm[col])
        present = pc.is_valid(norm[col]).to_numpy(zero_copy_only=False)
        verdict.fail(present & ~msisdn_valid(norm[col]), "INVALID_MSISDN", col)

    for col in data_cols:
        out[col] = pd.Series(norm[col].to_pylist(), index=raw.index, dtype=object)

    not_future = set(rules.get("not_future", []))
    not_before = rules.get("not_before", {})  # {column: 'YYYY-MM-DD'}: sentinels, typos
    for col, fmt in rules.get("dates", {}).items():
        text = out[col]
        parsed = parse_dates(text, fmt)
        bad = text.notna() & parsed.isna()
        if col in not_future:
            bad |= parsed > exported_at
        if col in not_before:
            bad |= parsed < pd.Timestamp(str(not_before[col]))
        verdict.fail(bad.to_numpy(), "INVALID_DATE", col)
        parsed = parsed.astype("datetime64[s]")
        out[col] = parsed.dt.date if not format_has_time(fmt) else parsed

    non_negative = set(rules.get("non_negative", []))
    for col in rules.get("integers", []):
        text = out[col]
        # Plain integers are parsed exactly (a float detour would round 2**53 + 1 silently);
        # anything else ("12.0", "1e3") must be a whole number a float holds exactly.
        plain = text.astype("string").str.fullmatch(r"[+-]?[0-9]{1,18}").fillna(False)
        values = np.zeros(len(text), dtype=np.int64)
        valid = plain.to_numpy(dtype=bool).copy()
        if valid.any():
            values[valid] = pd.to_numeric(text[plain]).to_numpy(dtype=np.int64)
        rest = text.notna() & ~plain
        other = pd.to_numeric(text[rest], errors="coerce")
        whole = (other.notna() & (other.abs() < 2**53) & (other == other.round())).reindex(
            text.index, fill_value=False).to_numpy(dtype=bool)
        if whole.any():
            values[whole] = pd.to_numeric(text[whole]).to_numpy(dtype=np.float64).astype(np.int64)
            valid |= whole
        # Built from int64 values and a mask: assigning into an Int64 series goes via float.
        num = pd.Series(pd.arrays.IntegerArray(values, ~valid), index=text.index)
        bad = rest & ~pd.Series(whole, index=text.index)
        verdict.fail(bad.to_numpy(), "INVALID_NUMBER", col)
        if col in non_negative:
            verdict.fail((num < 0).fillna(False).to_numpy(dtype=bool), "NEGATIVE_AMOUNT", col)
        out[col] = num

    for col, places in rules.get("decimals", {}).items():
        # Money in yuan and the like: at most `places` decimals, kept as float64 (exact to
        # the cent far beyond any amount; mapping's yuan_to_fen rounds to whole fen).
        text = out[col]
        pattern = rf"^[+-]?(?:\d+(?:\.\d{{0,{int(places)}}})?|\.\d{{1,{int(places)}}})$"
        shaped = text.astype("string").str.fullmatch(pattern).fillna(False).astype(bool)
        num = pd.to_numeric(text.where(shaped), errors="coerce")
        ok = shaped & num.notna() & (num.abs() < 2**53 / 100)
        verdict.fail((text.notna() & ~ok).to_numpy(), "INVALID_NUMBER", col)
        num = num.where(ok)
        if col in non_negative:
            verdict.fail((num < 0).fillna(False).to_numpy(), "NEGATIVE_AMOUNT", col)
        out[col] = num.astype("float64")

    for col, allowed in rules.get("codes", {}).items():
        bad = out[col].notna() & ~out[col].isin([str(a) for a in allowed])
        verdict.fail(bad.to_numpy(), "INVALID_CODE", col)

    if parent is not None and rules.get("parent"):
        col = rules["parent"]["column"]
        fate = parent.classify(out[col])
        for reason in ("ORPHAN_RECORD", "PARENT_QUARANTINED", "PARENT_EXCLUDED"):
            verdict.fail(fate == reason, reason, col)

    for col in META_COLUMNS:
        if col in raw.columns:
            out[col] = raw[col].to_numpy()
    return out, verdict


def dedupe_losers(typed: pd.DataFrame, verdict_failed: np.ndarray, rules: dict,
                  key: str) -> pd.Series:
    """Survivorship: among valid rows sharing the dedupe key, keep newest (or oldest)."""
    spec = rules["dedupe"]
    cand = typed.loc[~verdict_failed, [key, spec["key"], spec["order_by"]]]
    ascending = spec["keep"] == "oldest"
    ordered = cand.sort_values([spec["key"], spec["order_by"], key],
                               ascending=[True, ascending, True])
    losers = ordered[ordered.duplicated(subset=[spec["key"]], keep="first")]
    return losers[key]


def cleanse(raw: pd.DataFrame, rules: dict, *, key: str, exported_at: pd.Timestamp,
            parent: ParentRegistry | None = None,
            duplicate_losers: set[str] | None = None) -> CleanseResult:
    typed, verdict = validate(raw, rules, key=key, exported_at=exported_at, parent=parent)
    if duplicate_losers:
        verdict.fail(typed[key].isin(duplicate_losers).to_numpy(), "DUPLICATE_PERSON",
                     rules.get("dedupe", {}).get("key", key))
    failed = verdict.failed
    quarantine = raw.loc[failed].copy()
    quarantine["_reason"] = verdict.reason[failed]
    quarantine["_field"] = verdict.field[failed]
    quarantine["_key"] = typed.loc[failed, key].to_numpy()
    clean = typed.loc[~failed].reset_index(drop=True)
    counts = pd.Series(verdict.reason[failed]).value_counts().to_dict() if failed.any() else {}
    return CleanseResult(clean, quarantine.reset_index(drop=True),
                         {str(k): int(v) for k, v in counts.items()})
