"""Cleanse: normalise, validate and de-duplicate one partition; quarantine what fails.

Rules come from the source system's cleansing.yaml; the validators are built in. Every
row leaves either clean (typed: dates parsed, integers cast, MSISDNs normalised) or in
quarantine with one reason code and the field it concerns. The first failing rule in
REASON_ORDER wins, so a row's reason does not depend on the order of the YAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from handover.core.validators import (
    classify_phones,
    msisdn_valid,
    normalise_msisdn,
    normalise_text,
    parse_money,
    resident_id_birth_gender,
    resident_id_valid,
    trim_text,
    upgrade_resident_ids,
)

#: What pyarrow raises when a column cannot be taken as text as a whole (an object column
#: holding ints, bytes or mixed values). Each vectorised path catches exactly these and falls
#: back to its per-value form, which gives the same result (tests/unit/test_cleanse.py
#: compares the two); any other error is a real fault and propagates.
ARROW_REFUSED = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)

EPOCH_UNITS = {"epoch": "s", "epoch_ms": "ms"}
#: The clock of a Chinese operator's export (one zone, no daylight saving): times written
#: with an offset are converted into it, so they compare with the export's naive times.
LOCAL_ZONE = "Asia/Shanghai"

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
META_COLUMNS = ["_source_row"]


@dataclass
class ParentRegistry:
    """Fate of every parent key, decided once for the whole parent table."""

    # Python sets, or Arrow string arrays (the run's registry: no Python object per key).
    valid: set[str] | pa.Array
    quarantined: set[str] | pa.Array
    excluded: set[str] | pa.Array
    # parents merged into another record of their person: key -> survivor's key. They count
    # as valid (in `valid` too); their children are re-parented to the survivor.
    merged: dict[str, str] = field(default_factory=dict)

    def classify(self, keys: pd.Series | pa.Array) -> np.ndarray:
        """Per child row: None (parent fine) or the quarantine reason."""
        try:
            arr = keys if isinstance(keys, pa.Array) else _to_arrow(keys)
            in_valid, in_q, in_x = (
                _in(arr, s) for s in (self.valid, self.quarantined, self.excluded)
            )
            present = pc.is_valid(arr).to_numpy(zero_copy_only=False)
        except ARROW_REFUSED:  # not all text (ints, bytes, mixed objects): per-value path
            # keys or registry not all text: pandas' isin over objects
            keys = pd.Series(keys.to_pylist() if isinstance(keys, pa.Array) else keys, dtype=object)
            in_valid, in_q, in_x = (
                keys.isin(_members(s)).to_numpy()
                for s in (self.valid, self.quarantined, self.excluded)
            )
            present = pd.notna(keys.to_numpy(dtype=object))
        out = np.full(len(keys), None, dtype=object)
        out[~in_valid & in_q] = "PARENT_QUARANTINED"
        out[~in_valid & ~in_q & in_x] = "PARENT_EXCLUDED"
        out[~in_valid & ~in_q & ~in_x & present] = "ORPHAN_RECORD"
        return out


def _members(values: set[str] | pa.Array | pa.ChunkedArray) -> set:
    return set(values.to_pylist()) if isinstance(values, (pa.Array, pa.ChunkedArray)) else values


@dataclass
class CleanseResult:
    clean: pd.DataFrame
    quarantine: pd.DataFrame  # original (raw) row + _reason + _field
    counts: dict[str, int]
    normalised: dict[str, int] = field(default_factory=dict)  # e.g. 15-digit IDs upgraded
    # rows of a person merged into a surviving record: _key, _survivor, _rule
    merged: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(
            {"_key": [], "_survivor": [], "_rule": []}, dtype=object
        )
    )
    # merged records that win some fields of the target's customer (identity
    # survivorship), typed like `clean`: mapped, protected and gated like it
    adopted: pd.DataFrame | None = None


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


def is_epoch_format(fmt: str) -> bool:
    """`epoch` / `epoch_ms`, optionally `:<IANA zone>` (seconds since 1970 UTC, shown as the
    zone's local time; without a zone, UTC)."""
    return fmt.split(":", 1)[0] in EPOCH_UNITS


def format_has_time(fmt: str | list[str]) -> bool:
    if isinstance(fmt, list):  # a list of formats: with a time if any of them has one
        return any(format_has_time(f) for f in fmt)
    return is_epoch_format(fmt) or any(d in fmt for d in ("%H", "%I", "%M", "%S", "%X", "%c"))


def parse_dates(text: pd.Series, fmt: str | list[str]) -> pd.Series:
    """Parse text with a strptime format or an epoch spec; unparseable -> NaT. A list of
    formats (a column legacy systems wrote several ways: `2006-4-24`, `2012/12/08 09:30`,
    `20240105`) is tried in order, each on what the ones before could not read; check
    refuses a list that could read one value two ways (day/month)."""
    if isinstance(fmt, list):
        out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns]")
        for f in fmt:
            todo = out.isna() & text.notna()
            if not todo.any():
                break
            out.loc[todo] = parse_dates(text[todo], f).astype("datetime64[ns]")
        return out
    if not is_epoch_format(fmt):
        if fmt == "excel":  # Excel serial days (1900 system, 1899-12-30 as day 0)
            num = pd.to_numeric(text, errors="coerce")
            num = num.where((num > 0) & (num < 2958466))
            return pd.to_datetime(num, unit="D", origin="1899-12-30", errors="coerce")
        if "%z" in fmt:
            # Times with their offset (`+08:00`, `Z`, mixed): the same instant in the
            # export's own clock (LOCAL_ZONE), as every naive time of the export is read.
            aware = pd.to_datetime(text, format=fmt, errors="coerce", utc=True)
            return aware.dt.tz_convert(LOCAL_ZONE).dt.tz_localize(None)
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


def _to_arrow(s: pd.Series) -> pa.Array:
    """A text column as one pyarrow string array, nulls for NA; no Python object per value.

    Arrow-backed columns (what the lake's parquet reads into) hand over their buffers;
    object columns are converted by pyarrow in C. Anything pyarrow will not take as text
    goes the old way, value by value, so it fails (or not) exactly as before.
    """
    if isinstance(s.dtype, (pd.StringDtype, pd.ArrowDtype)):
        try:
            arr = pa.array(s.array)
            if isinstance(arr, pa.ChunkedArray):
                arr = arr.combine_chunks()
            if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
                return arr.cast(pa.string())
        except ARROW_REFUSED:  # not all text (ints, bytes, mixed objects): per-value path
            pass
    elif s.dtype == object:
        try:
            return pa.array(s.to_numpy(dtype=object), type=pa.string(), from_pandas=True)
        except ARROW_REFUSED:  # not all text (ints, bytes, mixed objects): per-value path
            pass
    return pa.array(s.astype(object).where(s.notna(), None).tolist(), pa.string())


def _arr(df: pd.DataFrame, col: str) -> pa.Array:
    return _to_arrow(df[col])


def _in(arr: pa.Array, values) -> np.ndarray:
    """Membership of each value of `arr` in the collection `values` (null -> False)."""
    if not len(values):
        return np.zeros(len(arr), dtype=bool)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    value_set = (
        values
        if isinstance(values, pa.Array)
        else pa.array(values if isinstance(values, list) else list(values), pa.string())
    )
    return pc.fill_null(
        pc.is_in(arr, value_set=value_set.cast(arr.type), skip_nulls=True), False
    ).to_numpy(zero_copy_only=False)


def _np(mask) -> np.ndarray:
    """A pyarrow boolean result as numpy, nulls as False."""
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False)


def _objects(arr: pa.Array, index: pd.Index) -> pd.Series:
    """Arrow text as the object column the typed frame has always had (str or None)."""
    return pd.Series(arr.to_numpy(zero_copy_only=False), index=index, dtype=object)


def _texts(arr: pa.Array, index: pd.Index) -> pd.Series:
    """Arrow text as pandas' Arrow-backed string column, handing over the buffers: the
    typed frame's text columns cost no Python object per value, and writing them back to
    Parquet costs no conversion (they read back from the lake as this same dtype)."""
    s = arr.to_pandas()
    s.index = index
    return s


# UTF-8 bytes below 0x20 only ever encode those ASCII controls, so a byte scan is exact.
_CONTROL_BYTES = np.zeros(256, dtype=bool)
_CONTROL_BYTES[[*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20)]] = True


def _has_control(arr: pa.Array) -> np.ndarray:
    """Per value: contains NUL or a C0 control other than tab and line ends (null -> False).

    Same as matching r"[\x00-\x08\x0b\x0c\x0e-\x1f]", over the string bytes with numpy.
    """
    n = len(arr)
    out = np.zeros(n, dtype=bool)
    if n == 0 or arr.null_count == n or arr.buffers()[2] is None:
        return out
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=width)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    low = data < 0x20  # a compare over the bytes is cheaper than the table lookup
    if not low.any():
        return out
    bad = low & _CONTROL_BYTES[data]
    if not bad.any():
        return out
    seen = np.concatenate(([0], np.cumsum(bad, dtype=np.int64)))
    rel = offsets - offsets[0]
    out = (seen[rel[1:]] - seen[rel[:-1]]) > 0
    if arr.null_count:
        out &= pc.is_valid(arr).to_numpy(zero_copy_only=False)
    return out


def _duplicated(arr: pa.Array) -> np.ndarray:
    """Per value: an earlier row has the same (non-null) value."""
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=bool)
    codes = pc.fill_null(pc.dictionary_encode(arr).indices, -1).to_numpy(zero_copy_only=False)
    dup = np.ones(n, dtype=bool)
    _, first = np.unique(codes, return_index=True)
    dup[first] = False
    return dup & (codes >= 0)


def duplicate_keys(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """DUPLICATE_KEY of a whole partition from its raw key column alone: per row, an earlier
    row has the same key once normalised as validate normalises it."""
    return _duplicated(normalise_text(keys))


def parent_fates(
    parent: ParentRegistry | None, rules: dict, values: pa.Array | pa.ChunkedArray
) -> np.ndarray | None:
    """The parent rules' verdict per row (ParentRegistry.classify) of a whole partition from
    its raw parent-key column, normalised as validate normalises it; None where validate
    would first turn the column into something else (typed, MSISDN, resident ID), so
    validate classifies it itself."""
    if parent is None or not rules.get("parent"):
        return None
    col = rules["parent"]["column"]
    transformed = {
        *rules.get("dates", {}),
        *rules.get("integers", []),
        *rules.get("money", {}),
        *rules.get("decimals", {}),
        *rules.get("msisdn", []),
        *rules.get("phones", {}),
        (rules.get("resident_id") or {}).get("column"),
    }
    if col in transformed:
        return None
    return parent.classify(normalise_text(values))


def _parse_decimal(arr: pa.Array, places: int, index: pd.Index) -> pd.Series:
    """Text with at most `places` decimals as float64; anything else NaN.

    The same floats pd.to_numeric over the text gave, to the bit. While a value has at
    most 15 digits, its digits form an integer a double holds exactly and both parsers
    round the one division by 10**k correctly, so Arrow's cast takes those. pandas
    returns an int64 result (so +0.0 for "-0") when every value is a plain integer, and
    floats (-0.0) otherwise; that is kept. A column with a longer digit run goes through
    pandas as before.
    """
    n = len(arr)
    p = int(places)
    shaped_re = rf"^[+-]?(?:[0-9]+(?:\.[0-9]{{0,{p}}})?|\.[0-9]{{1,{p}}})$"
    shaped = _np(pc.match_substring_regex(arr, shaped_re))
    values = np.full(n, np.nan)
    if not shaped.any():
        return pd.Series(values, index=index)
    long = shaped & _np(pc.greater(pc.count_substring_regex(arr, "[0-9]"), 15))
    if long.any():  # rare: pandas over the whole column, non-decimals masked as before
        text = _objects(arr, index).where(shaped)
        return pd.to_numeric(text, errors="coerce").astype("float64")
    text = pc.utf8_ltrim(pc.filter(arr, pa.array(shaped)), "+")
    values[shaped] = pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
    if shaped.all() and not _np(pc.match_substring_regex(arr, r"\.")).any():
        values[values == 0] = 0.0  # an all-integer column: pandas read "-0" as int 0
    return pd.Series(values, index=index)


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


def validate(
    raw: pd.DataFrame,
    rules: dict,
    *,
    key: str,
    exported_at: pd.Timestamp,
    parent: ParentRegistry | None = None,
    duplicate_key: np.ndarray | None = None,
    parent_fate: np.ndarray | None = None,
) -> tuple[pd.DataFrame, _Verdict]:
    """Normalise and type the partition; return the typed frame and the verdict per row.

    Every rule reads one row, except DUPLICATE_KEY (an earlier row of the partition has the
    key): a caller validating a partition slice by slice passes that mask, computed once
    over the partition's keys (`duplicate_keys`), as `duplicate_key`. Such a caller may
    also pass the parent rules' verdicts, computed once (`parent_fates`): looking keys up
    in the registry builds its hash table each time, ~20 ms a call at 400,000 parents.
    """
    n = len(raw)
    verdict = _Verdict(n)
    out = pd.DataFrame(index=raw.index)
    data_cols = [c for c in raw.columns if c not in META_COLUMNS]
    # Free text keeps its characters (trimmed only): NFKC would turn a complaint's "，" into
    # "," and "①" into "1". Redaction folds it for matching (protect.redact_text).
    verbatim = set(rules.get("verbatim", ()))
    norm: dict[str, pa.Array] = {
        c: (trim_text if c in verbatim else normalise_text)(_arr(raw, c)) for c in data_cols
    }

    # Control characters (NUL and C0 other than tab and line ends) break COPY and exports.
    for col in data_cols:
        verdict.fail(_has_control(norm[col]), "INVALID_CHARACTER", col)

    for col in rules.get("mandatory", []):
        verdict.fail(pc.is_null(norm[col]).to_numpy(zero_copy_only=False), "MISSING_FIELD", col)

    if duplicate_key is None:
        duplicate_key = _duplicated(norm[key])
    elif len(duplicate_key) != n:
        raise ValueError(f"validate: {len(duplicate_key)} duplicate-key flags for {n} rows")
    verdict.fail(duplicate_key, "DUPLICATE_KEY", key)

    rid = rules.get("resident_id")
    if rid:
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
            fmt = rules.get("dates", {}).get(rid["birth_date"])
            if fmt and fmt != "%Y-%m-%d":  # compare as dates, not as text
                text = _objects(other, pd.RangeIndex(len(other)))
                other = _to_arrow(parse_dates(text, fmt).dt.strftime("%Y-%m-%d"))
            same = _np(pc.equal(birth, other))
            verdict.fail(present & ok & ~same, "INVALID_ID_BIRTHDATE", rid["birth_date"])
        if rid.get("gender"):
            same = _np(pc.equal(gender, norm[rid["gender"]]))
            verdict.fail(present & ok & ~same, "INVALID_ID_GENDER", rid["gender"])

    for col in rules.get("msisdn", []):
        norm[col] = normalise_msisdn(norm[col])
        present = pc.is_valid(norm[col]).to_numpy(zero_copy_only=False)
        verdict.fail(present & ~msisdn_valid(norm[col]), "INVALID_MSISDN", col)
    for col, allowed in rules.get("phones", {}).items():
        # Numbers of any class the policy allows for this column (a callee may be a
        # landline, an IoT device, 10086 or abroad), each in its normal form.
        norm[col], cls = classify_phones(norm[col])
        present = pc.is_valid(norm[col]).to_numpy(zero_copy_only=False)
        verdict.fail(present & ~np.isin(cls.astype(str), list(allowed)), "INVALID_MSISDN", col)

    for col in data_cols:
        out[col] = _texts(norm[col], raw.index)

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
    bounds = {c: v for c, v in rules.get("max", {}).items()}
    for col in rules.get("integers", []):
        text = out[col]
        # Plain integers are parsed exactly (a float detour would round 2**53 + 1 silently);
        # anything else ("12.0", "1e3") must be a whole number a float holds exactly.
        arr = norm[col]
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
        bad = rest & ~pd.Series(whole, index=text.index)
        verdict.fail(bad.to_numpy(), "INVALID_NUMBER", col)
        _amount_rules(verdict, num, col, non_negative, bounds)
        out[col] = num

    for col, places in rules.get("decimals", {}).items():
        # Money in yuan and the like: at most `places` decimals, kept as float64 (exact to
        # the cent far beyond any amount; mapping's yuan_to_fen rounds to whole fen).
        text = out[col]
        num = _parse_decimal(norm[col], int(places), text.index)
        ok = num.notna() & (num.abs() < 2**53 / 100)
        verdict.fail((text.notna() & ~ok).to_numpy(), "INVALID_NUMBER", col)
        num = num.where(ok)
        _amount_rules(verdict, num, col, non_negative, bounds)
        out[col] = num.astype("float64")

    for col, spec in rules.get("money", {}).items():
        # Amounts as billing systems print them (`¥17,504.10`, `(12.50)`, `负3元`), read
        # exactly into whole fen: an Int64 column as `integers` gives.
        unit, places = spec.get("unit", "yuan"), int(spec.get("places", 2))
        text = out[col]
        fen = [parse_money(v, unit, places) if isinstance(v, str) else None for v in text]
        valid = np.array([f is not None for f in fen], dtype=bool)
        values = (
            np.array([f if f is not None else 0 for f in fen], dtype=np.int64)
            if len(fen)
            else np.zeros(0, dtype=np.int64)
        )
        num = pd.Series(pd.arrays.IntegerArray(values, ~valid), index=text.index)
        verdict.fail(
            (text.notna() & ~pd.Series(valid, index=text.index)).to_numpy(), "INVALID_NUMBER", col
        )
        _amount_rules(verdict, num, col, non_negative, bounds)
        out[col] = num

    # Columns still text in `out` can be checked on their Arrow form.
    typed_cols = {
        *rules.get("dates", {}),
        *rules.get("integers", []),
        *rules.get("decimals", {}),
        *rules.get("money", {}),
    }
    for col, allowed in rules.get("codes", {}).items():
        allowed = [str(a) for a in allowed]
        if col in typed_cols:
            bad = (out[col].notna() & ~out[col].isin(allowed)).to_numpy()
        else:
            bad = pc.is_valid(norm[col]).to_numpy(zero_copy_only=False) & ~_in(norm[col], allowed)
        verdict.fail(bad, "INVALID_CODE", col)

    if parent is not None and rules.get("parent"):
        col = rules["parent"]["column"]
        if parent_fate is None:
            fate = parent.classify(out[col] if col in typed_cols else norm[col])
        elif len(parent_fate) != n:
            raise ValueError(f"validate: {len(parent_fate)} parent verdicts for {n} rows")
        else:
            fate = parent_fate
        for reason in ("ORPHAN_RECORD", "PARENT_QUARANTINED", "PARENT_EXCLUDED"):
            verdict.fail(fate == reason, reason, col)
        if parent.merged and col not in typed_cols:
            # A child of a record merged into its person's survivor follows the survivor.
            moved = out[col].isin(parent.merged).to_numpy()
            if moved.any():
                out.loc[moved, col] = out.loc[moved, col].map(parent.merged)
                verdict.normalised["REPARENTED_TO_SURVIVOR"] = int(moved.sum())

    for col in META_COLUMNS:
        if col in raw.columns:
            out[col] = raw[col].to_numpy()
    return out, verdict


# What str.strip() removes, as a regex class (the running Python's Unicode tables).
_PY_SPACE = "".join(f"\\x{{{c:x}}}" for c in range(0x110000) if chr(c).isspace())
_BLANK = f"^[{_PY_SPACE}]*$"


def record_keys(keys: pd.Series, rows: pd.Series | None = None) -> list[str]:
    """Ledger key per row, as a list: see record_key_array."""
    return record_key_array(keys, rows).to_pylist()


def record_key_array(keys: pd.Series, rows: pd.Series | None = None) -> pa.Array:
    """Ledger key per row: the key if it is text with a non-blank character, else
    "row:<source row>". _record_keys_loop without a Python step per row (its
    str.strip() is matched with the exact character class); a key column that is not
    text, or source rows that are not integers, go through that loop instead.
    """
    rows = pd.Series(range(len(keys))) if rows is None else rows
    if not pd.api.types.is_integer_dtype(rows.dtype) or not (
        keys.dtype == object or isinstance(keys.dtype, (pd.StringDtype, pd.ArrowDtype))
    ):
        return pa.array(_record_keys_loop(keys, rows), pa.string())
    try:
        arr = _to_arrow(keys)
    except ARROW_REFUSED:  # not all text (ints, bytes, mixed objects): per-value path
        return pa.array(_record_keys_loop(keys, rows), pa.string())
    blank = pc.fill_null(pc.match_substring_regex(arr, _BLANK), True)
    fallback = pc.binary_join_element_wise(
        "row:", pc.cast(pa.array(rows.to_numpy(dtype=np.int64)), pa.string()), ""
    )
    return pc.if_else(blank, fallback, arr).cast(pa.string())


def _record_keys_loop(keys: pd.Series, rows: pd.Series) -> list[str]:
    keys = keys.astype(object).where(keys.notna(), None)
    return [
        k if isinstance(k, str) and k.strip() else f"row:{r}"
        for k, r in zip(keys, rows, strict=True)
    ]


def dedupe_losers(
    typed: pd.DataFrame | pa.Table, verdict_failed: np.ndarray, rules: dict, key: str
) -> list:
    """The losers' keys of survivorship (see dedupe_pairs)."""
    return dedupe_pairs(typed, verdict_failed, rules, key)[0]


def dedupe_pairs(
    typed: pd.DataFrame | pa.Table, verdict_failed: np.ndarray, rules: dict, key: str
) -> tuple[list, list]:
    """Survivorship: among valid rows of one person (same dedupe key, e.g. the normalised
    resident ID), one survives; returns (losers' keys, each one's survivor's key).

    The survivor by `keep`: newest / oldest by `order_by`, `first_key` (the smallest key),
    or `most_complete` (most filled fields, `_filled` in `typed`; then newest). Sorted in
    Arrow, nulls last; every row after the first of its group loses. Rows without a dedupe
    key are not one person: they never lose. Arrow, not pandas: a whole parent table's
    three columns as Python objects cost more than the rest of resolve_customers together.
    """
    spec = rules["dedupe"]
    keep = spec["keep"]
    extra = ["_filled"] if keep == "most_complete" else []
    cols = list(dict.fromkeys([key, spec["key"], spec["order_by"], *extra]))
    table = (
        typed.select(cols)
        if isinstance(typed, pa.Table)
        else pa.Table.from_pandas(typed[cols], preserve_index=False)
    )
    cand = table.filter(pa.array(~np.asarray(verdict_failed, dtype=bool)))
    cand = cand.filter(pc.is_valid(cand.column(spec["key"])))
    if cand.num_rows < 2:
        return [], []
    order_by = {
        "newest": [(spec["order_by"], "descending")],
        "oldest": [(spec["order_by"], "ascending")],
        "first_key": [],
        "most_complete": [("_filled", "descending"), (spec["order_by"], "descending")],
    }[keep]
    order = pc.sort_indices(
        cand,
        sort_keys=[(spec["key"], "ascending"), *order_by, (key, "ascending")],
        null_placement="at_end",
    )
    ordered = cand.take(order)
    group = ordered.column(spec["key"]).combine_chunks()
    cur, prev = group.slice(1), group.slice(0, len(group) - 1)
    same = np.concatenate([[False], _np(pc.fill_null(pc.equal(cur, prev), False))])
    first = np.flatnonzero(~same)  # each group's survivor, in order
    survivor_of = first[np.cumsum(~same) - 1]
    keys = ordered.column(key).combine_chunks()
    losers = pa.array(same)
    return (
        keys.filter(losers).to_pylist(),
        keys.take(pa.array(survivor_of)).filter(losers).to_pylist(),
    )


def cleanse(
    raw: pd.DataFrame,
    rules: dict,
    *,
    key: str,
    exported_at: pd.Timestamp,
    parent: ParentRegistry | None = None,
    duplicate_losers: set[str] | dict[str, str] | None = None,
    duplicate_key: np.ndarray | None = None,
    parent_fate: np.ndarray | None = None,
    same_key_rows: set[int] | None = None,
    merge_rules: dict[str, str] | None = None,
    adopt: set[str] | None = None,
    no_id_rows: set[int] | None = None,
) -> CleanseResult:
    """`duplicate_losers`: keys that lost survivorship, each with its survivor's key (a
    dict) where the rule merges (`dedupe.action: merge`, the default): those rows leave as
    merged; a set, or `action: quarantine`, quarantines them as DUPLICATE_PERSON.
    `same_key_rows`: source rows (`_source_row`) that repeat a key already held by a record
    of the same person (resolve decided): merged into it, not DUPLICATE_KEY.
    `merge_rules`: the rule per merged key where it is not SAME_PERSON (EXISTING_CUSTOMER:
    the person is already a target customer, handover.stages.identity). `adopt`: merged keys
    whose record wins fields of the target's customer (returned typed, as `adopted`).
    `no_id_rows`: source rows whose only fault is a missing resident ID that resolve merged
    into the one target customer with their name and birth date (identity's second rule):
    not quarantined for it, merged like `duplicate_losers` says."""
    typed, verdict = validate(
        raw,
        rules,
        key=key,
        exported_at=exported_at,
        parent=parent,
        duplicate_key=duplicate_key,
        parent_fate=parent_fate,
    )
    merge = (rules.get("dedupe") or {}).get("action", "merge") == "merge"
    if no_id_rows and "_source_row" in raw.columns:
        verdict.clear(
            raw["_source_row"].isin(no_id_rows).to_numpy() & (verdict.reason == "MISSING_FIELD")
        )
    merged_mask = np.zeros(len(raw), dtype=bool)
    survivors = np.full(len(raw), None, dtype=object)
    rule = np.full(len(raw), None, dtype=object)
    if duplicate_losers:
        hit = typed[key].isin(duplicate_losers).to_numpy() & ~verdict.failed
        if merge and isinstance(duplicate_losers, dict):
            merged_mask |= hit
            survivors[hit] = typed.loc[hit, key].map(duplicate_losers).to_numpy(dtype=object)
            rule[hit] = (
                typed.loc[hit, key].map(merge_rules).fillna("SAME_PERSON").to_numpy(dtype=object)
                if merge_rules
                else "SAME_PERSON"
            )
        else:
            verdict.fail(hit, "DUPLICATE_PERSON", rules.get("dedupe", {}).get("key", key))
    if same_key_rows and "_source_row" in raw.columns:
        hit = raw["_source_row"].isin(same_key_rows).to_numpy() & (
            verdict.reason == "DUPLICATE_KEY"
        )
        merged_mask |= hit
        survivors[hit] = typed.loc[hit, key].to_numpy(dtype=object)
        rule[hit] = "SAME_KEY"
        verdict.clear(hit)
    failed = verdict.failed
    merged = pd.DataFrame(
        {
            "_key": typed.loc[merged_mask, key].to_numpy(dtype=object),
            "_survivor": survivors[merged_mask],
            "_rule": rule[merged_mask],
        }
    )
    quarantine = raw.loc[failed].copy()
    quarantine["_reason"] = verdict.reason[failed]
    quarantine["_field"] = verdict.field[failed]
    quarantine["_key"] = typed.loc[failed, key].to_numpy()
    clean = typed.loc[~failed & ~merged_mask].reset_index(drop=True)
    adopted = (
        typed.loc[merged_mask & typed[key].isin(adopt).to_numpy()].reset_index(drop=True)
        if adopt is not None
        else None
    )
    counts = pd.Series(verdict.reason[failed]).value_counts().to_dict() if failed.any() else {}
    return CleanseResult(
        clean,
        quarantine.reset_index(drop=True),
        {str(k): int(v) for k, v in counts.items()},
        dict(verdict.normalised),
        merged,
        adopted,
    )


def export_time(value: str):
    """An export time as the books keep it: the export's own (Beijing) clock, no zone. A
    time given with an offset (`2026-11-01T00:00:00+08:00`, `...Z`) is converted."""
    import pandas as pd

    when = pd.Timestamp(value)
    if when.tzinfo is not None:
        when = when.tz_convert(LOCAL_ZONE).tz_localize(None)
    return when
