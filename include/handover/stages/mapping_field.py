"""One target field of a mapping, computed: the transforms in their fixed order.

handover.stages.mapping applies a table's mapping field by field; each field is a _Field
here, which reads its source column(s) and applies from | concat, from_resident_id,
split, default, lookup, parse_date, yuan_to_fen and cast (see the stage's docstring).
Data that does not fit stops the partition with one line naming table, field and the
first source row (MappingError).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from handover.core.errors import MappingError
from handover.stages.mapping_values import (
    Values,
    _as_objects,
    _cast_objects,
    _cast_one,
    _is_text,
    _numeric,
    _objects,
    _patch,
    _per_distinct,
    _Source,
    _strip,
    _strip_blank_to_null,
    _text,
    _text_array,
    _yuan_objects,
    _yuan_one,
)


def source_columns(spec: dict) -> list[str]:
    """The source columns a field reads."""
    if "concat" in spec:
        return list(spec["concat"]["columns"])
    return [spec["from"]]


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
        from handover.stages.cleanse_dates import format_has_time, parse_dates

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
        from handover.stages.cleanse_dates import parse_dates

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
