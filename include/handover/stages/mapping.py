"""Field mapping and protection: cleansed legacy rows -> rows of the target schema.

The mapping file says, per target field, where its value comes from and which transforms
apply, always in this order (the order in the YAML does not matter):

    from | concat  the source column, or several joined with a separator
    split          one part of the value split on a separator
    default        the value to use where the source is empty
    lookup         code table; a code without an entry is an error
    parse_date     text -> date/timestamp with explicit formats (strptime or epoch)
    yuan_to_fen    decimal yuan -> integer fen, exactly
    cast           string | int | float | bool | date | timestamp
    protect        encrypt, blind_index, mask, redact

The output holds no L4 value in clear: encrypted fields keep only ciphertext, key id,
blind index and mask. Data that does not fit (a code without a lookup entry, a date in
no listed format) stops the partition with one line naming table, field and source row;
cleansing rules are the place to quarantine such rows instead.

Text columns are transformed as Arrow arrays with pyarrow.compute, numeric ones with numpy;
per-value Python remains only where no exact vector form exists (AES-GCM and HMAC per
value, the redaction regex on the texts an Arrow prefilter lets through, and rare inputs
such as text that only Decimal or strptime parses, handled once per distinct value).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.api.types import infer_dtype, is_object_dtype

from handover.core.errors import MappingError
from handover.protection.fields import (
    Keyring,
    blind_index,
    encrypt_values,
    field_domain,
    mask_msisdn,
    mask_msisdn_array,
    mask_resident_id,
    mask_resident_id_array,
    redact_array,
    redact_text,
)

TRANSFORMS = (
    "from",
    "from_resident_id",
    "concat",
    "split",
    "default",
    "lookup",
    "parse_date",
    "yuan_to_fen",
    "cast",
    "protect",
)
VALUE_TRANSFORMS = (
    "from_resident_id",
    "concat",
    "split",
    "default",
    "parse_date",
    "yuan_to_fen",
    "cast",
)
CASTS = ("string", "int", "float", "bool", "date", "timestamp")
_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}


def _masker(pii: str):
    return {"resident_id": mask_resident_id, "msisdn": mask_msisdn}.get(pii)


def source_columns(spec: dict) -> list[str]:
    """The source columns a field reads."""
    if "concat" in spec:
        return list(spec["concat"]["columns"])
    return [spec["from"]]


def _objects(series: pd.Series) -> np.ndarray:
    values = series.to_numpy(dtype=object)
    return np.where(pd.isna(values), None, values)


def _text(v: Any) -> str:
    if isinstance(v, bool | np.bool_):
        return "true" if v else "false"
    if isinstance(v, pd.Timestamp):
        return v.isoformat(sep=" ")
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    return str(v)


# ------------------------------------------------------------------ vector forms
# A field's values travel as an Arrow array while every transform so far has an exact
# vector form (text columns above all), else as a numpy object array handled value by
# value as before. _Source stands for an untouched non-text column until a transform
# needs its Python objects, so plain columns never become objects at all.


class _Source:
    def __init__(self, series: pd.Series) -> None:
        self.series = series
        self._objs: np.ndarray | None = None

    def objects(self) -> np.ndarray:
        if self._objs is None:
            self._objs = _objects(self.series)
        return self._objs


Values = pa.Array | np.ndarray | _Source
_STRING_DTYPES = ("string", "large_string")


def _text_array(series: pd.Series) -> pa.Array | None:
    """A column holding only text (and missing values) as an Arrow string array."""
    dtype = series.dtype
    if isinstance(dtype, pd.StringDtype) or (
        isinstance(dtype, pd.ArrowDtype) and str(dtype.pyarrow_dtype) in _STRING_DTYPES
    ):
        arr = pa.array(series, from_pandas=True)
    elif is_object_dtype(dtype) and infer_dtype(series, skipna=True) in ("string", "empty"):
        arr = pa.array(series.where(series.notna(), None), pa.string(), from_pandas=True)
    else:
        return None
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr if arr.type == pa.string() else arr.cast(pa.string())


def _is_text(values: Values) -> bool:
    return isinstance(values, pa.Array) and values.type == pa.string()


def _as_objects(values: Values) -> np.ndarray:
    """The values as a numpy object array with None for missing (the per-value form)."""
    if isinstance(values, _Source):
        return values.objects()
    if isinstance(values, np.ndarray):
        return values
    if _is_text(values):
        return values.to_numpy(zero_copy_only=False)
    out = np.empty(len(values), dtype=object)
    out[:] = values.to_pylist()
    return out


def _per_distinct(values: pa.Array, fn, kind: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """fn on each distinct text (no vector form), spread back: (typed values, bad mask).
    fn returns the typed value or raises the errors _cast_one raises for bad input."""
    enc = values.dictionary_encode()
    out, bad = [], []
    for v in enc.dictionary.to_pylist():
        try:
            out.append(fn(v))
            bad.append(False)
        except (ValueError, TypeError, InvalidOperation, OverflowError):
            out.append(None)
            bad.append(True)
    indices = enc.indices
    typed = pa.array(out, kind).take(indices)
    idx = pc.fill_null(indices, 0).to_numpy(zero_copy_only=False)
    rows_bad = np.asarray(bad, dtype=bool)[idx] if bad else np.zeros(len(values), bool)
    return typed, rows_bad & values.is_valid().to_numpy(zero_copy_only=False)


def _strip(values: pa.Array) -> pa.Array:
    from handover.stages.comply import WHITESPACE

    return pc.utf8_trim(values, WHITESPACE)


def _strip_blank_to_null(values: pa.Array) -> pa.Array:
    stripped = _strip(values)
    return pc.if_else(pc.equal(stripped, ""), pa.scalar(None, pa.string()), stripped)


def _patch(typed: pa.Array, where: np.ndarray, other: pa.Array) -> pa.Array:
    """typed, with the rows in `where` taken from `other` (same length and type)."""
    if not where.any():
        return typed
    return pc.if_else(pa.array(where), other, typed)


def _numeric(series: pd.Series) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(values, present mask, 'int'|'float') of a numeric column, None otherwise."""
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype):
        return None
    if pd.api.types.is_signed_integer_dtype(dtype):
        present = series.notna().to_numpy()
        return series.to_numpy(dtype=np.int64, na_value=0), present, "int"
    if str(dtype) in ("float64", "Float64"):
        x = series.to_numpy(dtype=np.float64, na_value=np.nan)
        return x, ~np.isnan(x), "float"
    return None


class _Field:
    """One target field being computed; errors name the table, field and first source row."""

    def __init__(
        self, clean: pd.DataFrame, table: str, target: str, spec: dict, partition: str
    ) -> None:
        self.clean, self.table, self.target, self.spec = clean, table, target, spec
        self.partition = partition
        self.rows = (
            clean["_source_row"].to_numpy()
            if "_source_row" in clean.columns
            else np.arange(1, len(clean) + 1)
        )

    def fail(self, bad: np.ndarray, what: str, fix: str) -> None:
        n = int(np.sum(bad))
        if n:
            first = int(self.rows[np.flatnonzero(bad)[0]])
            src = "+".join(source_columns(self.spec))
            raise MappingError(
                f"mapping of {self.table} partition {self.partition}: field {self.target} "
                f"(from {src}): {n} value(s) {what}, first at source row {first}; {fix}"
            )

    def values(self) -> tuple[np.ndarray, pa.DataType | None]:
        """The values as Python objects (the public form, see field_values)."""
        values, kind = self.compute()
        return _as_objects(values), kind

    def compute(self) -> tuple[Values, pa.DataType | None]:
        """The values, as Arrow wherever a vector form exists, and their fixed type."""
        spec = self.spec
        values: Values
        if "concat" in spec:
            values = self._concat(spec["concat"])
        else:
            series = self.clean[spec["from"]]
            text = _text_array(series)
            values = _Source(series) if text is None else text
        kind: pa.DataType | None = None
        if "from_resident_id" in spec:
            values = self._from_resident_id(values, spec["from_resident_id"])
        if "split" in spec:
            values = self._split(values, spec["split"])
        if "default" in spec:
            values = self._default(values, spec["default"])
        if "lookup" in spec:
            values = self._lookup(values, spec["lookup"])
        if "parse_date" in spec:
            values, kind = self._parse_date(values, spec["parse_date"])
        if spec.get("yuan_to_fen"):
            values, kind = self._yuan_to_fen(values), pa.int64()
        if "cast" in spec:
            values, kind = self._cast(values, spec["cast"])
        return values, kind

    # -- from / concat
    def _concat(self, opt: dict) -> Values:
        sep = opt.get("separator", "")
        texts = [_text_array(self.clean[c]) for c in opt["columns"]]
        if all(t is not None for t in texts) and isinstance(sep, str):
            # sep.join of the present parts; None when no part is present
            acc = texts[0]
            for part in texts[1:]:
                acc = pc.coalesce(pc.binary_join_element_wise(acc, part, sep), acc, part)
            return acc
        parts = [_objects(self.clean[c]) for c in opt["columns"]]
        return np.array(
            [
                None
                if all(p is None for p in row)
                else sep.join(_text(p) for p in row if p is not None)
                for row in zip(*parts, strict=True)
            ],
            dtype=object,
        )

    # -- split
    def _split(self, values: Values, opt: dict) -> Values:
        sep, part, parts = opt["separator"], opt["part"], opt.get("parts")
        vector = (
            _is_text(values)
            and isinstance(sep, str)
            and sep
            and isinstance(part, int)
            and part >= 0
            and (not parts or (isinstance(parts, int) and parts >= 1))
        )
        if not vector:
            return self._split_objects(_as_objects(values), opt)
        lists = pc.split_pattern(values, sep, max_splits=parts - 1 if parts else None)
        offsets = lists.offsets.to_numpy()
        present = lists.is_valid().to_numpy(zero_copy_only=False) & (np.diff(offsets) > part)
        idx = pa.array(offsets[:-1] + part, pa.int64(), mask=~present)
        picked = lists.values.take(idx)
        return _strip_blank_to_null(picked)

    def _split_objects(self, values: np.ndarray, opt: dict) -> np.ndarray:
        sep, part, parts = opt["separator"], opt["part"], opt.get("parts")
        out = np.full(len(values), None, dtype=object)
        for i, v in enumerate(values):
            if v is None:
                continue
            pieces = _text(v).split(sep, parts - 1) if parts else _text(v).split(sep)
            if part < len(pieces):
                out[i] = pieces[part].strip() or None
        return out

    # -- from_resident_id
    def _from_resident_id(self, values: Values, what: str) -> Values:
        """Birth date (`YYYY-MM-DD`), gender (`男`/`女`) or region (the 6-digit area code)
        encoded in an 18-digit resident ID: a NOT NULL target field the export lacks gets
        the true value, not a placeholder. An ID not of that form gives None."""
        from handover.core.validators import resident_id_birth_gender, resident_id_valid

        ids = (
            values
            if _is_text(values)
            else pa.array(
                [None if v is None else _text(v) for v in _as_objects(values)], pa.string()
            )
        )
        ok = pa.array(resident_id_valid(ids))
        if what == "region":
            out = pc.utf8_slice_codeunits(ids, 0, 6)
        else:
            birth, gender = resident_id_birth_gender(ids)
            out = birth if what == "birth_date" else gender
        return pc.if_else(ok, out, pa.scalar(None, pa.string()))

    # -- default
    def _default(self, values: Values, default: Any) -> Values:
        if _is_text(values) and isinstance(default, str):
            return pc.fill_null(values, default)
        return np.array([default if v is None else v for v in _as_objects(values)], dtype=object)

    # -- lookup
    def _lookup(self, values: Values, lookup: dict) -> Values:
        table_map = {str(k): v for k, v in lookup.items()}
        if _is_text(values):
            present = set(pc.unique(values.drop_null()).to_pylist())
        else:
            values = _as_objects(values)
            present = {_text(v) for v in values if v is not None}
        missing = sorted(present - set(table_map))
        if missing:
            src = "+".join(source_columns(self.spec))
            raise MappingError(
                f"mapping of {self.table} partition {self.partition}: field {self.target} (from "
                f"{src}) has {len(missing)} code(s) without a lookup entry, e.g. {missing[0]!r}; "
                "add them to mapping.yaml or a codes rule to cleansing.yaml"
            )
        if not _is_text(values):
            return np.array(
                [None if v is None else table_map[_text(v)] for v in values], dtype=object
            )
        codes = list(table_map)
        targets = [table_map[c] for c in codes]
        at = pc.index_in(values, value_set=pa.array(codes, pa.string()))  # null: missing
        if all(type(t) is str for t in targets):
            return pa.array(targets, pa.string()).take(at)
        if all(type(t) is bool for t in targets):
            return pa.array(targets, pa.bool_()).take(at)
        table = np.empty(len(targets) + 1, dtype=object)
        table[:-1] = targets
        return table[pc.fill_null(at, len(targets)).to_numpy(zero_copy_only=False)]

    # -- parse_date
    def _parse_date(self, values: Values, opt: dict) -> tuple[Values, pa.DataType]:
        from handover.stages.cleanse import format_has_time, parse_dates

        formats = opt["format"] if isinstance(opt["format"], list) else [opt["format"]]
        to = opt.get("to") or ("timestamp" if any(format_has_time(f) for f in formats) else "date")
        if not _is_text(values):
            return self._parse_date_objects(_as_objects(values), formats, to)
        text_arr = _strip_blank_to_null(values)
        text = pd.Series(text_arr.to_numpy(zero_copy_only=False), dtype=object)
        parsed = np.full(len(text), np.datetime64("NaT"), dtype="datetime64[us]")
        todo = text.notna().to_numpy().copy()
        for fmt in formats:
            if not todo.any():
                break
            got = parse_dates(text[todo], fmt)
            if got.dtype.kind != "M" or getattr(got.dtype, "tz", None) is not None:
                # zoned or mixed results: the per-value form decides
                return self._parse_date_objects(_as_objects(values), formats, to)
            ok = got.notna().to_numpy()
            idx = np.flatnonzero(todo)[ok]
            parsed[idx] = got.to_numpy()[ok].astype("datetime64[us]")
            todo[idx] = False
        self.fail(
            todo,
            f"match none of the date formats {formats}",
            "add the format to parse_date in mapping.yaml, or a dates rule to "
            "cleansing.yaml to quarantine such rows",
        )
        missing = np.isnat(parsed)
        if to == "date":  # numpy floors to the day, as Timestamp.date() does
            return pa.array(parsed.astype("datetime64[D]"), pa.date32(), mask=missing), pa.date32()
        return pa.array(
            parsed.astype("datetime64[s]"), pa.timestamp("s"), mask=missing
        ), pa.timestamp("s")

    def _parse_date_objects(
        self, values: np.ndarray, formats: list, to: str
    ) -> tuple[np.ndarray, pa.DataType]:
        from handover.stages.cleanse import parse_dates

        parsed = np.full(len(values), None, dtype=object)
        typed = np.array(
            [v is not None and not isinstance(v, str) and hasattr(v, "year") for v in values],
            dtype=bool,
        )
        for i in np.flatnonzero(typed):
            parsed[i] = pd.Timestamp(values[i])
        text = pd.Series(
            [
                None if (v is None or t) else _text(v).strip() or None
                for v, t in zip(values, typed, strict=True)
            ],
            dtype=object,
        )
        todo = text.notna().to_numpy().copy()
        for fmt in formats:
            if not todo.any():
                break
            got = parse_dates(text[todo], fmt)
            ok = got.notna().to_numpy()
            idx = np.flatnonzero(todo)[ok]
            parsed[idx] = list(got[ok])
            todo[idx] = False
        self.fail(
            todo,
            f"match none of the date formats {formats}",
            "add the format to parse_date in mapping.yaml, or a dates rule to "
            "cleansing.yaml to quarantine such rows",
        )
        if to == "date":
            return np.array(
                [None if v is None else v.date() for v in parsed], dtype=object
            ), pa.date32()
        return np.array(
            [None if v is None else v.floor("s").to_pydatetime() for v in parsed], dtype=object
        ), pa.timestamp("s")

    # -- yuan_to_fen
    _YUAN = r"^[+-]?[0-9]{1,15}(\.[0-9]{1,2})?$"

    def _yuan_to_fen(self, values: Values) -> Values:
        what = "are not amounts in yuan with at most 2 decimals"
        fix = "add a decimals rule to cleansing.yaml to quarantine such rows"
        num = _numeric(values.series) if isinstance(values, _Source) else None
        if num is not None:
            x, present, kind = num
            if kind == "int":
                ok = present & (np.abs(x) < 2**63 // 100)
                fen = x * 100
            else:
                # |x| < 2**33: a float whose shortest repr has at most 2 decimals is exactly
                # one with round(x*100)/100 == x, and that repr times 100 is round(x*100).
                small = present & (np.abs(np.where(present, x, 0)) < 2**33)
                fen_f = np.round(np.where(small, x, 0) * 100)
                ok = small & (fen_f / 100 == x)
                fen = fen_f.astype(np.int64)
            bad = present & ~ok
            out = pa.array(fen, pa.int64(), mask=~ok)
            rest = present & ~ok
            if kind == "float":
                rest &= ~small  # large or non-finite: value by value
            if rest.any():
                objs = _as_objects(values)
                sub = np.full(len(objs), None, dtype=object)
                sub[rest] = objs[rest]
                fixed, sub_bad = _yuan_objects(sub)
                bad = (bad & ~rest) | sub_bad
                out = _patch(out, rest, pa.array(fixed.tolist(), pa.int64()))
            self.fail(bad, what, fix)
            return out
        if _is_text(values):
            text = _strip(values)
            simple = pc.fill_null(pc.match_substring_regex(text, self._YUAN), False)
            simple_np = simple.to_numpy(zero_copy_only=False)
            s = pc.if_else(simple, text, pa.scalar(None, pa.string()))
            dot = pc.find_substring(s, ".")
            decimals = pc.if_else(
                pc.equal(dot, -1), 0, pc.subtract(pc.subtract(pc.utf8_length(s), dot), 1)
            )
            digits = pc.replace_substring(pc.replace_substring(s, ".", ""), "+", "")
            scale = pc.power(10, pc.subtract(2, decimals))
            out = pc.multiply(pc.cast(digits, pa.int64()), pc.cast(scale, pa.int64()))
            rest = values.is_valid().to_numpy(zero_copy_only=False) & ~simple_np
            if rest.any():
                typed, bad = _per_distinct(pc.filter(values, pa.array(rest)), _yuan_one, pa.int64())
                full_bad = np.zeros(len(values), dtype=bool)
                full_bad[np.flatnonzero(rest)[bad]] = True
                self.fail(full_bad, what, fix)
                out = pc.replace_with_mask(out, pa.array(rest), typed)
            return out
        return self._yuan_to_fen_objects(_as_objects(values))

    def _yuan_to_fen_objects(self, values: np.ndarray) -> np.ndarray:
        out, bad = _yuan_objects(values)
        self.fail(
            bad,
            "are not amounts in yuan with at most 2 decimals",
            "add a decimals rule to cleansing.yaml to quarantine such rows",
        )
        return out

    # -- cast
    _KINDS = {
        "string": pa.string(),
        "int": pa.int64(),
        "float": pa.float64(),
        "bool": pa.bool_(),
        "date": pa.date32(),
        "timestamp": pa.timestamp("s"),
    }
    _INT = r"^[+-]?[0-9]{1,18}$"

    def _cast(self, values: Values, to: str) -> tuple[Values, pa.DataType]:
        kind = self._KINDS[to]
        what, fix = (
            f"cannot be cast to {to}",
            "fix the export, or add a cleansing rule that quarantines such rows",
        )
        if _is_text(values) and to == "string":
            return values, kind  # _text of a str is the str
        if to == "int" and isinstance(values, _Source):
            num = _numeric(values.series)
            if num is not None:
                x, present, nkind = num
                if nkind == "int":
                    return pa.array(x, pa.int64(), mask=~present), kind
                xs = np.where(present, x, 0)
                whole = present & (np.abs(xs) < 2**52) & (np.floor(xs) == xs)
                out = pa.array(np.where(whole, xs, 0).astype(np.int64), pa.int64(), mask=~whole)
                rest = present & ~whole  # fractions, huge or non-finite: value by value
                if rest.any():
                    objs = _as_objects(values)
                    sub = np.full(len(objs), None, dtype=object)
                    sub[rest] = objs[rest]
                    fixed, bad = _cast_objects(sub, to)
                    self.fail(bad, what, fix)
                    out = _patch(out, rest, pa.array(fixed.tolist(), pa.int64()))
                return out, kind
        if _is_text(values):
            if to == "int":
                text = _strip(values)
                simple = pc.fill_null(pc.match_substring_regex(text, self._INT), False)
                s = pc.if_else(
                    simple, pc.replace_substring(text, "+", ""), pa.scalar(None, pa.string())
                )
                out = pc.cast(s, pa.int64())
                rest = values.is_valid().to_numpy(zero_copy_only=False) & ~simple.to_numpy(
                    zero_copy_only=False
                )
            else:
                out, rest = (
                    pa.nulls(len(values), kind),
                    values.is_valid().to_numpy(zero_copy_only=False),
                )
            if rest.any():
                typed, bad = _per_distinct(
                    pc.filter(values, pa.array(rest)), lambda v: _cast_one(v, to), kind
                )
                full_bad = np.zeros(len(values), dtype=bool)
                full_bad[np.flatnonzero(rest)[bad]] = True
                self.fail(full_bad, what, fix)
                out = pc.replace_with_mask(out, pa.array(rest), typed)
            return out, kind
        return self._cast_objects(_as_objects(values), to)

    def _cast_objects(self, values: np.ndarray, to: str) -> tuple[np.ndarray, pa.DataType]:
        out, bad = _cast_objects(values, to)
        self.fail(
            bad,
            f"cannot be cast to {to}",
            "fix the export, or add a cleansing rule that quarantines such rows",
        )
        return out, self._KINDS[to]


def _per_value(
    values: np.ndarray, convert: Any, errors: tuple[type[Exception], ...]
) -> tuple[np.ndarray, np.ndarray]:
    """``convert`` on each non-null value; (results, mask of the values it refused)."""
    out = np.full(len(values), None, dtype=object)
    bad = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if v is None:
            continue
        try:
            out[i] = convert(v)
        except errors:
            bad[i] = True
    return out, bad


def _yuan_objects(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _per_value(values, _yuan_one, (InvalidOperation, ValueError))


def _cast_objects(values: np.ndarray, to: str) -> tuple[np.ndarray, np.ndarray]:
    return _per_value(
        values, lambda v: _cast_one(v, to), (ValueError, TypeError, InvalidOperation, OverflowError)
    )


def _yuan_one(v: Any) -> int:
    fen = Decimal(repr(float(v)) if isinstance(v, float | np.floating) else _text(v).strip()) * 100
    if not fen.is_finite() or fen != fen.to_integral_value() or abs(fen) >= 2**63:
        raise InvalidOperation
    return int(fen)


def _cast_one(v: Any, to: str) -> Any:
    import datetime as dt

    if to == "string":
        return _text(v)
    if to == "int":
        if isinstance(v, bool | np.bool_):
            return int(v)
        d = Decimal(repr(float(v)) if isinstance(v, float | np.floating) else _text(v).strip())
        if not d.is_finite() or d != d.to_integral_value() or abs(d) >= 2**63:
            raise ValueError("not a whole number in int64 range")
        return int(d)
    if to == "float":
        f = float(_text(v).strip()) if isinstance(v, str) else float(v)
        if not np.isfinite(f):
            raise ValueError("not finite")
        return f
    if to == "bool":
        if isinstance(v, bool | np.bool_):
            return bool(v)
        s = _text(v).strip().lower()
        if s in _TRUE or s in _FALSE:
            return s in _TRUE
        raise ValueError("not a boolean")
    if to == "date":
        if isinstance(v, dt.datetime | pd.Timestamp):
            return pd.Timestamp(v).date()
        if isinstance(v, dt.date):
            return v
        return dt.date.fromisoformat(_text(v).strip())
    # timestamp
    if isinstance(v, dt.datetime | pd.Timestamp):
        return pd.Timestamp(v).floor("s").to_pydatetime()
    if isinstance(v, dt.date):
        return dt.datetime(v.year, v.month, v.day)
    ts = pd.to_datetime(_text(v).strip(), format="ISO8601")
    if pd.isna(ts):
        raise ValueError("not a timestamp")
    if ts.tzinfo is not None:
        raise ValueError("timestamps with a zone are ambiguous; use parse_date with a zone")
    return ts.floor("s").to_pydatetime()


def field_values(
    clean: pd.DataFrame, table: str, target: str, spec: dict, *, partition: str = ""
) -> tuple[np.ndarray, pa.DataType | None]:
    """A field's values before protection (Python objects, None for missing), and their
    Arrow type if a transform fixed it."""
    return _Field(clean, table, target, spec, partition).values()


_ARRAY_MASKERS = {"resident_id": mask_resident_id_array, "msisdn": mask_msisdn_array}


def map_partition(
    clean: pd.DataFrame,
    table: str,
    mapping: dict,
    catalog_columns: dict,
    ring: Keyring | None,
    *,
    partition: str = "",
) -> pa.Table:
    """Apply the table's mapping; returns an Arrow table with the target's columns."""
    out: dict[str, pa.Array] = {}
    for target, spec in mapping["fields"].items():
        src = source_columns(spec)[0] if "concat" in spec else spec["from"]
        series = clean[src]
        values, kind = _Field(clean, table, target, spec, partition).compute()
        shaped = any(t in spec for t in VALUE_TRANSFORMS)
        protections = spec.get("protect", [])
        if protections and not _is_text(values):
            values = _as_objects(values)  # the per-value forms below
        if "redact" in protections:
            values = (
                redact_array(values)
                if _is_text(values)
                else np.array([redact_text(v) for v in values], dtype=object)
            )
        if protections and any(p in protections for p in ("encrypt", "blind_index")):
            if ring is None:
                raise RuntimeError(f"mapping of {table}: field {target} needs keys; none loaded")
        if "blind_index" in protections:
            out[f"{target}_bidx"] = pa.array(
                blind_index(values, ring, field_domain(mapping["target"], target)), pa.string()
            )
        if "mask" in protections:
            pii = catalog_columns[src].get("pii", "")
            masker = _masker(pii)
            if masker is None:
                raise MappingError(
                    f"mapping.yaml: tables.{table}.fields.{target}: mask needs a "
                    "catalogued pii type resident_id or msisdn"
                )
            out[f"{target}_masked"] = (
                _ARRAY_MASKERS[pii](values)
                if _is_text(values)
                else pa.array([masker(v) for v in values], pa.string())
            )
        if "encrypt" in protections:
            aad = field_domain(mapping["target"], target).encode()
            out[f"{target}_enc"] = pa.array(encrypt_values(values, ring, aad), pa.binary())
            if _is_text(values):
                out[f"{target}_key_id"] = pc.if_else(
                    values.is_valid(),
                    pa.scalar(ring.active_key_id, pa.string()),
                    pa.scalar(None, pa.string()),
                )
            else:
                out[f"{target}_key_id"] = pa.array(
                    [None if v is None else ring.active_key_id for v in values], pa.string()
                )
        elif kind is not None:
            out[target] = (
                values
                if isinstance(values, pa.Array) and values.type == kind
                else pa.array(_as_objects(values).tolist(), kind)
            )
        elif shaped:
            out[target] = _infer_arrow_any(values)
        else:
            out[target] = _to_arrow_any(series, values)
    return pa.table(out)


def _infer_arrow_any(values: Values) -> pa.Array:
    """_infer_arrow, without Python objects for text and boolean Arrow values."""
    if isinstance(values, pa.Array) and values.type in (pa.string(), pa.bool_()):
        if values.null_count == len(values):
            return pa.nulls(len(values), pa.string())
        return values
    return _infer_arrow(_as_objects(values))


def _to_arrow_any(series: pd.Series, values: Values) -> pa.Array:
    """_to_arrow, without Python objects for typed columns and text or boolean values."""
    dtype = series.dtype
    if str(dtype) == "Int64" or str(dtype).startswith("datetime64"):
        return _to_arrow(series, np.empty(0, dtype=object))  # built from the series
    if isinstance(values, pa.Array) and values.type in (pa.string(), pa.bool_()):
        if len(values) == 0:
            return pa.array([], pa.string())
        if values.null_count == len(values):
            return pa.nulls(len(values), pa.bool_())
        return values
    if (
        isinstance(values, _Source)
        and is_object_dtype(dtype)
        and infer_dtype(series, skipna=True) == "date"
    ):
        return pa.array(series.where(series.notna(), None), pa.date32(), from_pandas=True)
    return _to_arrow(series, _as_objects(values))


def _infer_arrow(values: np.ndarray) -> pa.Array:
    """Arrow type of values a transform produced (concat, split, default)."""
    import datetime as dt

    sample = [v for v in values if v is not None]
    if not sample:
        return pa.array(values.tolist(), pa.string())
    if all(isinstance(v, bool | np.bool_) for v in sample):
        return pa.array([None if v is None else bool(v) for v in values], pa.bool_())
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in sample):
        return pa.array([None if v is None else int(v) for v in values], pa.int64())
    if all(isinstance(v, int | float | np.integer | np.floating) for v in sample):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if all(isinstance(v, dt.datetime | pd.Timestamp) for v in sample):
        return pa.array(
            [None if v is None else pd.Timestamp(v).to_pydatetime() for v in values],
            pa.timestamp("s"),
        )
    if all(isinstance(v, dt.date) for v in sample):
        return pa.array(values.tolist(), pa.date32())
    return pa.array([None if v is None else _text(v) for v in values], pa.string())


def _to_arrow(series: pd.Series, values: np.ndarray) -> pa.Array:
    dtype = series.dtype
    if str(dtype) == "Int64":
        return pa.array(series.astype("Int64"), pa.int64())
    if str(dtype).startswith("datetime64"):
        return pa.array(series.astype("datetime64[s]"), pa.timestamp("s"))
    if len(values) and all(isinstance(v, bool) or v is None for v in values):
        return pa.array(values.tolist(), pa.bool_())
    sample = next((v for v in values if v is not None), None)
    if sample is not None and hasattr(sample, "isoformat") and not isinstance(sample, str):
        return pa.array(values.tolist(), pa.date32())
    return pa.array(values.tolist(), pa.string())


def target_columns(tmap: dict) -> list[str]:
    """The columns map_partition produces for a table mapping, in order."""
    cols: list[str] = []
    for target, spec in tmap["fields"].items():
        protections = spec.get("protect", [])
        if "blind_index" in protections:
            cols.append(f"{target}_bidx")
        if "mask" in protections:
            cols.append(f"{target}_masked")
        if "encrypt" in protections:
            cols += [f"{target}_enc", f"{target}_key_id"]
        else:
            cols.append(target)
    return cols
