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
from handover.stages.mapping_field import _Field, source_columns
from handover.stages.mapping_values import Values, _as_objects, _is_text, _Source, _text

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


def _masker(pii: str) -> Any:
    return {"resident_id": mask_resident_id, "msisdn": mask_msisdn}.get(pii)


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
        protections = spec.get("protect", [])
        if protections:
            values = _redacted(_as_objects(values) if not _is_text(values) else values, protections)
        if any(p in protections for p in ("encrypt", "blind_index")) and ring is None:
            raise RuntimeError(f"mapping of {table}: field {target} needs keys; none loaded")
        if "blind_index" in protections:
            assert ring is not None  # checked above
            domain = field_domain(mapping["target"], target)
            out[f"{target}_bidx"] = pa.array(blind_index(values, ring, domain), pa.string())
        if "mask" in protections:
            out[f"{target}_masked"] = _masked(values, catalog_columns[src], table, target)
        if "encrypt" in protections:
            assert ring is not None  # checked above
            domain = field_domain(mapping["target"], target)
            out[f"{target}_enc"], out[f"{target}_key_id"] = _encrypted(values, ring, domain)
        else:
            out[target] = _plain(values, kind, series, any(t in spec for t in VALUE_TRANSFORMS))
    return pa.table(out)


def _redacted(values: Values, protections: list[str]) -> Values:
    """The values with `redact` applied, if the field asks for it (text or objects)."""
    if "redact" not in protections:
        return values
    if _is_text(values):
        return redact_array(values)
    return np.array([redact_text(v) for v in _as_objects(values)], dtype=object)


def _masked(values: Values, column: dict, table: str, target: str) -> pa.Array:
    """The `_masked` column of a field, by the pii type its source column is catalogued as."""
    pii = column.get("pii", "")
    masker = _masker(pii)
    if masker is None:
        raise MappingError(
            f"mapping.yaml: tables.{table}.fields.{target}: mask needs a "
            "catalogued pii type resident_id or msisdn"
        )
    if _is_text(values):
        return _ARRAY_MASKERS[pii](values)
    return pa.array([masker(v) for v in _as_objects(values)], pa.string())


def _encrypted(values: Values, ring: Keyring, domain: str) -> tuple[pa.Array, pa.Array]:
    """The `_enc` and `_key_id` columns of an encrypted field."""
    enc = pa.array(encrypt_values(values, ring, domain.encode()), pa.binary())
    if _is_text(values):
        key_id = pc.if_else(
            values.is_valid(),
            pa.scalar(ring.active_key_id, pa.string()),
            pa.scalar(None, pa.string()),
        )
    else:
        key_id = pa.array(
            [None if v is None else ring.active_key_id for v in _as_objects(values)], pa.string()
        )
    return enc, key_id


def _plain(values: Values, kind: pa.DataType | None, series: pd.Series, shaped: bool) -> pa.Array:
    """A field stored as it is: in the type a transform fixed, else the one its values have."""
    if kind is not None:
        if isinstance(values, pa.Array) and values.type == kind:
            return values
        return pa.array(_as_objects(values).tolist(), kind)
    if shaped:
        return _infer_arrow_any(values)
    return _to_arrow_any(series, values)


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
