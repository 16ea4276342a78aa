"""Built-in validators and normalisers, available to every source system.

Vectorised over pyarrow / numpy where a vector form exists (they run on every row
of every partition); scalar forms are kept for free-text scanning and tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ID_WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2], dtype=np.int64)
ID_CHECK = "10X98765432"
ID_PATTERN = r"^\d{17}[\dX]$"
# Mobile prefixes of China Mobile, Unicom, Telecom and Broadnet (13x-19x, no 140-144/154/171-2).
MSISDN_PATTERN = r"^1(?:3\d|4[5-9]|5[0-35-9]|6[2567]|7[0-8]|8\d|9[0-35-9])\d{8}$"


def id_check_digit(first17: str) -> str:
    total = sum(int(c) * int(w) for c, w in zip(first17, ID_WEIGHTS, strict=True))
    return ID_CHECK[total % 11]


def resident_id_ok(value: str) -> bool:
    """GB 11643-1999: 17 digits, then the check digit (0-9 or X)."""
    return (
        bool(re.fullmatch(ID_PATTERN, value, flags=re.ASCII))
        and id_check_digit(value[:17]) == value[17]
    )


def luhn_ok(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def resident_id_valid(ids: pa.Array) -> np.ndarray:
    """Vectorised check: shape and check digit. Null -> False."""
    ids = pc.fill_null(ids.cast(pa.string()), "")
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    shape_ok = pc.match_substring_regex(ids, ID_PATTERN).to_numpy(zero_copy_only=False)
    result = np.zeros(len(ids), dtype=bool)
    idx = np.flatnonzero(shape_ok)
    if len(idx) == 0:
        return result
    # Well-formed IDs are exactly 18 ASCII bytes: read the string data buffer as an
    # (n, 18) byte matrix, no Python string per ID.
    good = pc.filter(ids, pa.array(shape_ok))
    offsets = np.frombuffer(good.buffers()[1], dtype=np.int32)[
        good.offset : good.offset + len(good) + 1
    ]
    data = np.frombuffer(good.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    mat = data.reshape(-1, 18)
    digits = (mat[:, :17] - ord("0")).astype(np.int64)
    expected = np.frombuffer(ID_CHECK.encode(), dtype=np.uint8)[(digits @ ID_WEIGHTS) % 11]
    result[idx] = expected == mat[:, 17]
    return result


def upgrade_resident_ids(ids: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Resident IDs as legacy systems hold them, in their one 18-digit form (GB 11643-1999):
    spaces and hyphens dropped, `x` upper-cased (NFKC, done before, turns full-width digits
    half-width), and first-generation 15-digit IDs (GB 11643-1989: area, YYMMDD, sequence)
    upgraded: century 19 inserted, check digit computed, only where the encoded birth date
    is a real date. Returns the IDs and a mask of those upgraded. One person then has one
    blind index whichever form an export used."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    ids = pc.utf8_upper(pc.replace_substring_regex(ids.cast(pa.string()), r"[\s\-]+", ""))
    short = pc.fill_null(pc.match_substring_regex(ids, r"^\d{15}$"), False)
    short_np = short.to_numpy(zero_copy_only=False)
    upgraded = np.zeros(len(ids), dtype=bool)
    if not short_np.any():
        return ids, upgraded
    idx = np.flatnonzero(short_np)
    old = pc.filter(ids, short).to_pylist()
    out = ids.to_pylist()
    import datetime as _dt

    for i, v in zip(idx, old, strict=True):
        try:
            _dt.date(1900 + int(v[6:8]), int(v[8:10]), int(v[10:12]))
        except ValueError:
            continue  # not a real birth date: left as it is (the check digit rule fails it)
        first17 = v[:6] + "19" + v[6:]
        out[i] = first17 + id_check_digit(first17)
        upgraded[i] = True
    return pa.array(out, pa.string()), upgraded


def resident_id_birth_gender(ids: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Birth date (YYYY-MM-DD text) and gender ('男'/'女') encoded in well-formed IDs."""
    ids = ids.cast(pa.string())
    ymd = pc.utf8_slice_codeunits(ids, 6, 14)
    birth = pc.binary_join_element_wise(
        pc.utf8_slice_codeunits(ymd, 0, 4),
        pc.utf8_slice_codeunits(ymd, 4, 6),
        pc.utf8_slice_codeunits(ymd, 6, 8),
        "-",
    )
    seq = pc.utf8_slice_codeunits(ids, 16, 17)
    odd = pc.is_in(seq, value_set=pa.array(["1", "3", "5", "7", "9"]))
    gender = pc.if_else(odd, "男", "女")
    return birth, gender


def _only_where(arr: pa.Array, todo: pa.Array, fn: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """fn applied to the values where `todo` is true; the others are kept as they are.

    For transforms that leave most values unchanged: the work runs on that subset only.
    """
    todo = pc.fill_null(todo, False)
    count = pc.sum(todo).as_py() or 0
    if count == 0:
        return arr
    if count == len(arr):
        return fn(arr)
    return pc.replace_with_mask(arr, todo, fn(pc.filter(arr, todo)))


def nfkc(arr: pa.Array) -> pa.Array:
    """NFKC of a string array. NFKC leaves ASCII text as it is: only the values with other
    characters are normalised."""
    return _only_where(
        arr, pc.invert(pc.string_is_ascii(arr)), lambda a: pc.utf8_normalize(a, "NFKC")
    )


def normalise_text(arr: pa.Array) -> pa.Array:
    """Full-width to half-width (NFKC), trim; empty becomes null."""
    arr = arr.cast(pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = pc.utf8_trim_whitespace(nfkc(arr))
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)


def normalise_key(arr: pa.Array, case: str | None = None) -> pa.Array:
    """A key as every stage compares it: normalise_text, then folded to `case` (upper,
    lower; keep or None: as written)."""
    arr = normalise_text(arr)
    if case == "upper":
        return pc.utf8_upper(arr)
    if case == "lower":
        return pc.utf8_lower(arr)
    return arr


def trim_text(arr: pa.Array) -> pa.Array:
    """Trim; empty becomes null; nothing else changes (free text: a customer's words as
    written, full-width punctuation and circled numbers included)."""
    arr = arr.cast(pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = pc.utf8_trim_whitespace(arr)
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)


def _fix_msisdn(arr: pa.Array) -> pa.Array:
    arr = pc.replace_substring_regex(arr, r"[\s\-()]", "")
    # NFKC again: removing a space can leave a combining mark that now composes (idempotence)
    arr = pc.utf8_normalize(arr, "NFKC")
    arr = pc.replace_substring_regex(arr, r"^(?:\+86|0086)+", "")
    arr = pc.replace_substring_regex(arr, r"^86(1\d{10})$", r"\1")
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)


def _fix_msisdn_to_rest(arr: pa.Array) -> pa.Array:
    """_fix_msisdn, repeated while it still changes a value: removing a separator can
    leave whitespace at an end that trimming takes next time ("-\\x85 138..."), or a
    second country prefix. Repeating makes normalise_msisdn idempotent."""
    arr = _fix_msisdn(arr)
    for _ in range(8):
        again = _fix_msisdn(normalise_text(arr))
        same = pc.or_(
            pc.fill_null(pc.equal(again, arr), False), pc.and_(pc.is_null(again), pc.is_null(arr))
        )
        if pc.all(same).as_py() is not False:
            break
        arr = again
    return arr


def normalise_msisdn(arr: pa.Array) -> pa.Array:
    """Strip separators and the +86 / 0086 country prefix; the result is 11 digits if valid."""
    arr = normalise_text(arr)
    # "1" and ten ASCII digits (most values) is a fixed point of every step: fix the others.
    return _only_where(
        arr, pc.invert(pc.match_substring_regex(arr, r"^1[0-9]{10}$")), _fix_msisdn_to_rest
    )


PHONE_CLASSES = ("mobile", "landline", "iot", "service", "international")
_PHONE_PATTERNS = {
    "mobile": MSISDN_PATTERN,
    "iot": r"^1(?:4[0-9]|0[0-9])\d{10}$",  # 13-digit M2M numbers (1440…, 1064…)
    "service": r"^(?:1\d{2,4}|9\d{4,5})$",  # 110, 10086, 12345, 95588, 96xxxx
    "landline": r"^0[1-9]\d{8,10}$",  # area code + local number
    "international": r"^\+(?:[1-79]|8[0-57-9])\d{6,13}$",  # E.164, not +86
}


def classify_phones(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Every number as telecom data has it, in its normal form, with its class: mobile
    (11 digits), landline (`0` + area code + number: `010-12345678`, `(0755)1234 5678`,
    `+86 10 12345678` all become `01012345678`), IoT/M2M (13 digits), service or short
    code (`10086`, `95588`), international (E.164 `+44…`; `00` read as `+`). Returns the
    normalised numbers and a class per value (None: no class, e.g. `2…` or 8 digits)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    text = normalise_text(arr.cast(pa.string()))
    bare = pc.replace_substring_regex(text, r"[\s\-().]+", "")
    bare = pc.replace_substring_regex(bare, r"^00", "+")
    china = pc.fill_null(pc.match_substring_regex(bare, r"^\+86"), False)
    national = pc.if_else(china, pc.utf8_slice_codeunits(bare, 3), bare)
    # +86 then an area code without its trunk 0 (10 12345678): the landline's own form
    area = pc.and_(china, pc.match_substring_regex(national, r"^[2-9]\d{8,10}$|^10\d{8}$"))
    national = pc.if_else(
        pc.fill_null(area, False), pc.binary_join_element_wise("0", national, ""), national
    )
    mobile = normalise_msisdn(arr)  # the existing, idempotent mobile normalisation
    cls = np.full(len(text), None, dtype=object)
    unclassified = np.ones(len(text), dtype=bool)  # the first class that matches wins
    out = national
    for name in ("mobile", "iot", "service", "landline", "international"):
        src = mobile if name == "mobile" else national
        hit = pc.fill_null(pc.match_substring_regex(src, _PHONE_PATTERNS[name]), False)
        hit_np = hit.to_numpy(zero_copy_only=False) & unclassified
        if hit_np.any():
            cls[hit_np] = name
            unclassified &= ~hit_np
            if name == "mobile":
                out = pc.if_else(pa.array(hit_np), mobile, out)
    return out, cls


def msisdn_valid(arr: pa.Array) -> np.ndarray:
    ok = pc.match_substring_regex(pc.fill_null(arr.cast(pa.string()), ""), MSISDN_PATTERN)
    out: np.ndarray = ok.to_numpy(zero_copy_only=False)
    return out


# Money as legacy billing systems print it: currency marks before or after, thousands
# separators, spaces, negatives as "-", "(...)" or "负".
_MONEY_MARKS = re.compile(r"^(?:¥|￥|RMB|CNY)\s*|\s*(?:元|RMB|CNY)$", re.IGNORECASE)
_MONEY = re.compile(r"^\d{1,3}(?:,\d{3})+(?:\.\d+)?$|^\d+(?:\.\d+)?$")
_UNIT_FEN = {"yuan": 100, "jiao": 10, "fen": 1}


def parse_money(value: str | None, unit: str = "yuan", places: int = 2) -> int | None:
    """One amount as whole fen, exactly (decimal arithmetic, never float), or None when the
    text is not an amount: `¥17,504.10`, `RMB 1 234`, `12元`, `(12.50)`, `负12.5`, `-3`.
    `unit` is what a bare number counts (yuan, jiao or fen); `places` the decimals it may
    have; a further decimal is an error, not rounded."""
    from decimal import Decimal, InvalidOperation

    if value is None:
        return None
    text = str(value).strip()
    negative = False
    if text.startswith("(") and text.endswith(")"):
        negative, text = True, text[1:-1].strip()
    if text.startswith("负"):
        negative, text = True, text[1:].strip()
    for _ in range(2):  # a mark on each side at most
        text = _MONEY_MARKS.sub("", text).strip()
    if text.startswith("-"):
        negative, text = not negative, text[1:].strip()
    text = text.replace(" ", "").replace("\u00a0", "")
    if not _MONEY.match(text):
        return None
    digits = text.replace(",", "")
    if "." in digits and len(digits.split(".", 1)[1]) > places:
        return None
    try:
        fen = Decimal(digits) * _UNIT_FEN[unit]
    except (InvalidOperation, KeyError):
        return None
    if fen != fen.to_integral_value():
        return None
    return -int(fen) if negative else int(fen)
