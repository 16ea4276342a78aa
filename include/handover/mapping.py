"""Field mapping and protection: cleansed legacy rows -> rows of the target schema.

The mapping file says, per target field, which source column feeds it and which
transforms apply (code lookups, then protection). The output holds no L4 value in
clear: encrypted fields keep only ciphertext, key id, blind index and mask.
"""

from __future__ import annotations

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


class MappingError(ValueError):
    """The data does not fit the mapping (e.g. a code without a lookup entry)."""


def _masker(pii: str):
    return {"resident_id": mask_resident_id, "msisdn": mask_msisdn}.get(pii)


def map_partition(clean: pd.DataFrame, table: str, mapping: dict, catalog_columns: dict,
                  ring: Keyring | None, *, partition: str = "") -> pa.Table:
    """Apply the table's mapping; returns an Arrow table with the target's columns."""
    out: dict[str, pa.Array] = {}
    for target, spec in mapping["fields"].items():
        src = spec["from"]
        series = clean[src]
        values = series.to_numpy(dtype=object)
        values = np.where(pd.isna(values), None, values)
        if "lookup" in spec:
            table_map = {str(k): v for k, v in spec["lookup"].items()}
            present = [v for v in values if v is not None]
            missing = sorted({str(v) for v in present} - set(table_map))
            if missing:
                raise MappingError(
                    f"mapping of {table} partition {partition}: field {target} (from {src}) has "
                    f"{len(missing)} code(s) without a lookup entry, e.g. {missing[0]!r}; add them "
                    "to mapping.yaml or a codes rule to cleansing.yaml")
            values = np.array([None if v is None else table_map[str(v)] for v in values],
                              dtype=object)
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
        else:
            out[target] = _to_arrow(series, values)
    ordered = {k: out[k] for k in sorted(out, key=lambda k: list(out).index(k))}
    return pa.table(ordered)


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
