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
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from handover.protect import (
    Keyring,
    blind_index,
    encrypt_values,
    mask_msisdn,
    mask_resident_id,
    redact_text,
)

TRANSFORMS = ("from", "concat", "split", "default", "lookup", "parse_date", "yuan_to_fen",
              "cast", "protect")
VALUE_TRANSFORMS = ("concat", "split", "default", "parse_date", "yuan_to_fen", "cast")
CASTS = ("string", "int", "float", "bool", "date", "timestamp")
_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}


class MappingError(ValueError):
    """The data does not fit the mapping (e.g. a code without a lookup entry)."""


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


class _Field:
    """One target field being computed; errors name the table, field and first source row."""

    def __init__(self, clean: pd.DataFrame, table: str, target: str, spec: dict,
                 partition: str) -> None:
        self.clean, self.table, self.target, self.spec = clean, table, target, spec
        self.partition = partition
        self.rows = (clean["_source_row"].to_numpy() if "_source_row" in clean.columns
                     else np.arange(1, len(clean) + 1))

    def fail(self, bad: np.ndarray, what: str, fix: str) -> None:
        n = int(np.sum(bad))
        if n:
            first = int(self.rows[np.flatnonzero(bad)[0]])
            src = "+".join(source_columns(self.spec))
            raise MappingError(
                f"mapping of {self.table} partition {self.partition}: field {self.target} "
                f"(from {src}): {n} value(s) {what}, first at source row {first}; {fix}")

    def values(self) -> tuple[np.ndarray, pa.DataType | None]:
        spec = self.spec
        if "concat" in spec:
            sep = spec["concat"].get("separator", "")
            parts = [_objects(self.clean[c]) for c in spec["concat"]["columns"]]
            values = np.array([
                None if all(p is None for p in row) else
                sep.join(_text(p) for p in row if p is not None)
                for row in zip(*parts, strict=True)], dtype=object)
        else:
            values = _objects(self.clean[spec["from"]])
        kind: pa.DataType | None = None
        if "split" in spec:
            values = self._split(values, spec["split"])
        if "default" in spec:
            values = np.array([spec["default"] if v is None else v for v in values], dtype=object)
        if "lookup" in spec:
            values = self._lookup(values, spec["lookup"])
        if "parse_date" in spec:
            values, kind = self._parse_date(values, spec["parse_date"])
        if spec.get("yuan_to_fen"):
            values, kind = self._yuan_to_fen(values), pa.int64()
        if "cast" in spec:
            values, kind = self._cast(values, spec["cast"])
        return values, kind

    def _split(self, values: np.ndarray, opt: dict) -> np.ndarray:
        sep, part, parts = opt["separator"], opt["part"], opt.get("parts")
        out = np.full(len(values), None, dtype=object)
        for i, v in enumerate(values):
            if v is None:
                continue
            pieces = _text(v).split(sep, parts - 1) if parts else _text(v).split(sep)
            if part < len(pieces):
                out[i] = pieces[part].strip() or None
        return out

    def _lookup(self, values: np.ndarray, lookup: dict) -> np.ndarray:
        table_map = {str(k): v for k, v in lookup.items()}
        present = [v for v in values if v is not None]
        missing = sorted({_text(v) for v in present} - set(table_map))
        if missing:
            src = "+".join(source_columns(self.spec))
            raise MappingError(
                f"mapping of {self.table} partition {self.partition}: field {self.target} (from "
                f"{src}) has {len(missing)} code(s) without a lookup entry, e.g. {missing[0]!r}; "
                "add them to mapping.yaml or a codes rule to cleansing.yaml")
        return np.array([None if v is None else table_map[_text(v)] for v in values],
                        dtype=object)

    def _parse_date(self, values: np.ndarray, opt: dict) -> tuple[np.ndarray, pa.DataType]:
        from handover.cleanse import format_has_time, parse_dates

        formats = opt["format"] if isinstance(opt["format"], list) else [opt["format"]]
        to = opt.get("to") or ("timestamp" if any(format_has_time(f) for f in formats)
                               else "date")
        parsed = np.full(len(values), None, dtype=object)
        typed = np.array([v is not None and not isinstance(v, str) and hasattr(v, "year")
                          for v in values], dtype=bool)
        for i in np.flatnonzero(typed):
            parsed[i] = pd.Timestamp(values[i])
        text = pd.Series([None if (v is None or t) else _text(v).strip() or None
                          for v, t in zip(values, typed, strict=True)], dtype=object)
        todo = text.notna().to_numpy().copy()
        for fmt in formats:
            if not todo.any():
                break
            got = parse_dates(text[todo], fmt)
            ok = got.notna().to_numpy()
            idx = np.flatnonzero(todo)[ok]
            parsed[idx] = list(got[ok])
            todo[idx] = False
        self.fail(todo, f"match none of the date formats {formats}",
                  "add the format to parse_date in mapping.yaml, or a dates rule to "
                  "cleansing.yaml to quarantine such rows")
        if to == "date":
            return np.array([None if v is None else v.date() for v in parsed], dtype=object), \
                pa.date32()
        return np.array([None if v is None else v.floor("s").to_pydatetime() for v in parsed],
                        dtype=object), pa.timestamp("s")

    def _yuan_to_fen(self, values: np.ndarray) -> np.ndarray:
        out = np.full(len(values), None, dtype=object)
        bad = np.zeros(len(values), dtype=bool)
        for i, v in enumerate(values):
            if v is None:
                continue
            try:
                fen = Decimal(repr(float(v)) if isinstance(v, float | np.floating)
                              else _text(v).strip()) * 100
                if not fen.is_finite() or fen != fen.to_integral_value() or abs(fen) >= 2**63:
                    raise InvalidOperation
                out[i] = int(fen)
            except (InvalidOperation, ValueError):
                bad[i] = True
        self.fail(bad, "are not amounts in yuan with at most 2 decimals",
                  "add a decimals rule to cleansing.yaml to quarantine such rows")
        return out

    def _cast(self, values: np.ndarray, to: str) -> tuple[np.ndarray, pa.DataType]:
        out = np.full(len(values), None, dtype=object)
        bad = np.zeros(len(values), dtype=bool)
        for i, v in enumerate(values):
            if v is None:
                continue
            try:
                out[i] = _cast_one(v, to)
            except (ValueError, TypeError, InvalidOperation, OverflowError):
                bad[i] = True
        self.fail(bad, f"cannot be cast to {to}",
                  "fix the export, or add a cleansing rule that quarantines such rows")
        kinds = {"string": pa.string(), "int": pa.int64(), "float": pa.float64(),
                 "bool": pa.bool_(), "date": pa.date32(), "timestamp": pa.timestamp("s")}
        return out, kinds[to]


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


def field_values(clean: pd.DataFrame, table: str, target: str, spec: dict, *,
                 partition: str = "") -> tuple[np.ndarray, pa.DataType | None]:
    """A field's values before protection, and their Arrow type if a transform fixed it."""
    return _Field(clean, table, target, spec, partition).values()


def map_partition(clean: pd.DataFrame, table: str, mapping: dict, catalog_columns: dict,
                  ring: Keyring | None, *, partition: str = "") -> pa.Table:
    """Apply the table's mapping; returns an Arrow table with the target's columns."""
    out: dict[str, pa.Array] = {}
    for target, spec in mapping["fields"].items():
        src = source_columns(spec)[0] if "concat" in spec else spec["from"]
        series = clean[src]
        values, kind = field_values(clean, table, target, spec, partition=partition)
        shaped = any(t in spec for t in VALUE_TRANSFORMS)
        protections = spec.get("protect", [])
        if "redact" in protections:
            values = np.array([redact_text(v) for v in values], dtype=object)
        if protections and any(p in protections for p in ("encrypt", "blind_index")):
            if ring is None:
                raise RuntimeError(f"mapping of {table}: field {target} needs keys; none loaded")
        if "blind_index" in protections:
            out[f"{target}_bidx"] = pa.array(blind_index(values, ring, f"{table}.{target}"),
                                             pa.string())
        if "mask" in protections:
            masker = _masker(catalog_columns[src].get("pii", ""))
            if masker is None:
                raise MappingError(f"mapping.yaml: tables.{table}.fields.{target}: mask needs a "
                                   "catalogued pii type resident_id or msisdn")
            out[f"{target}_masked"] = pa.array([masker(v) for v in values], pa.string())
        if "encrypt" in protections:
            aad = f"{table}.{target}".encode()
            out[f"{target}_enc"] = pa.array(encrypt_values(values, ring, aad), pa.binary())
            out[f"{target}_key_id"] = pa.array(
                [None if v is None else ring.active_key_id for v in values], pa.string())
        elif kind is not None:
            out[target] = pa.array(values.tolist(), kind)
        elif shaped:
            out[target] = _infer_arrow(values)
        else:
            out[target] = _to_arrow(series, values)
    ordered = {k: out[k] for k in sorted(out, key=lambda k: list(out).index(k))}
    return pa.table(ordered)


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
        return pa.array([None if v is None else pd.Timestamp(v).to_pydatetime()
                         for v in values], pa.timestamp("s"))
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
