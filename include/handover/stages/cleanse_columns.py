"""Cleanse's column forms: text columns as Arrow string arrays, and checks over them.

Validate normalises every text column once into an Arrow string array and runs its rules
on those (no Python object per value); these are the conversions between pandas and
Arrow, and the vector checks (control characters, repeats, membership, decimals) the
rules share.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

#: What pyarrow raises when a column cannot be taken as text as a whole (an object column
#: holding ints, bytes or mixed values). Each vectorised path catches exactly these and falls
#: back to its per-value form, which gives the same result (tests/unit/test_cleanse.py
#: compares the two); any other error is a real fault and propagates.
ARROW_REFUSED = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)


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
