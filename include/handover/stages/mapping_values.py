"""The forms a mapped field's values travel in, and the per-value conversions.

handover.stages.mapping computes each target field in handover.stages.mapping_field; the
values go from transform to transform as an Arrow array while every transform so far has
an exact vector form (text columns above all), else as a numpy object array handled value
by value. This module holds those forms (and the conversions between them) and the
per-value casts used where no exact vector form exists.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.api.types import infer_dtype, is_object_dtype

if TYPE_CHECKING:
    from typing_extensions import TypeIs

_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}


def _objects(series: pd.Series) -> np.ndarray:
    values = series.to_numpy(dtype=object)
    # numpy's stubs take the three-argument where for the one-argument form
    return cast(np.ndarray, np.where(pd.isna(values), None, values))


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


Values: TypeAlias = pa.Array | np.ndarray | _Source
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


def _is_text(values: Values) -> TypeIs[pa.Array]:
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


def _cast_to_int(v: Any) -> int:
    if isinstance(v, bool | np.bool_):
        return int(v)
    d = Decimal(repr(float(v)) if isinstance(v, float | np.floating) else _text(v).strip())
    if not d.is_finite() or d != d.to_integral_value() or abs(d) >= 2**63:
        raise ValueError("not a whole number in int64 range")
    return int(d)


def _cast_to_float(v: Any) -> float:
    f = float(_text(v).strip()) if isinstance(v, str) else float(v)
    if not np.isfinite(f):
        raise ValueError("not finite")
    return f


def _cast_to_bool(v: Any) -> bool:
    if isinstance(v, bool | np.bool_):
        return bool(v)
    s = _text(v).strip().lower()
    if s in _TRUE or s in _FALSE:
        return s in _TRUE
    raise ValueError("not a boolean")


def _cast_to_date(v: Any) -> dt.date:
    if isinstance(v, dt.datetime | pd.Timestamp):
        return pd.Timestamp(v).date()
    if isinstance(v, dt.date):
        return v
    return dt.date.fromisoformat(_text(v).strip())


def _cast_to_timestamp(v: Any) -> dt.datetime:
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


_CASTERS: dict[str, Callable[[Any], Any]] = {
    "string": _text,
    "int": _cast_to_int,
    "float": _cast_to_float,
    "bool": _cast_to_bool,
    "date": _cast_to_date,
}


def _cast_one(v: Any, to: str) -> Any:
    """One value cast to `to` (any other name: timestamp); raises for bad input."""
    return _CASTERS.get(to, _cast_to_timestamp)(v)
