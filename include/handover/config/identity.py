"""What the policy's `identity` section can name, read from a system's files alone.

The merge of one person across systems (handover.stages.identity) matches on the
blind-indexed resident ID of the customer table, compares the customer fields about the
person and dates a record by the cleansing dedupe's `order_by`. Which fields those are
follows from the catalog, cleansing and mapping alone, so the loader's cross-checks and
the stage read them here, from one place.
"""

from __future__ import annotations

from typing import cast

from handover.config.model import SourceConfig
from handover.config.shapes import customer_table
from handover.core.errors import LifecycleError

# A field shaped on its way to the target cannot be compared with the target's value.
SHAPING = (
    "concat",
    "split",
    "lookup",
    "default",
    "parse_date",
    "yuan_to_fen",
    "cast",
    "from_resident_id",
)


def blind_indexed_field(cfg: SourceConfig, table: str, pii: str) -> str | None:
    """The mapped field of `table` that blind-indexes its column catalogued as `pii`."""
    columns = cfg.table(table)["columns"]
    for name, f in cfg.table_mapping(table)["fields"].items():
        if "blind_index" in f.get("protect", []) and columns[f["from"]].get("pii") == pii:
            return cast(str, name)  # a mapping.yaml field name
    return None


def match_columns(cfg: SourceConfig) -> tuple[str, str, str] | None:
    """(customer table, resident-ID column, its blind-indexed target field), or None where
    the customer table has no blind-indexed resident ID to match on."""
    try:
        table = customer_table(cfg)
    except LifecycleError:  # no table whose key is its customer: nothing to match on
        return None
    rid = (cfg.rules(table).get("resident_id") or {}).get("column")
    field = blind_indexed_field(cfg, table, "resident_id")
    if not rid or field is None:
        return None
    return table, rid, field


def person_fields(cfg: SourceConfig, table: str) -> list[tuple[str, str, str]]:
    """(target field, source column, how: bidx | text) of the customer mapping's fields
    that a merged record can be compared on without a transform."""
    tmap = cfg.table_mapping(table)
    out = []
    for name, f in tmap["fields"].items():
        if name == tmap["key"] or "from" not in f or any(t in f for t in SHAPING):
            continue
        pii = cfg.table(table)["columns"].get(f["from"], {}).get("pii")
        if pii in (None, "none", "resident_id"):
            continue  # not about the person (dates of the account), or the match itself
        protect = f.get("protect", [])
        if "blind_index" in protect:
            out.append((name, f["from"], "bidx"))
        elif not protect:
            out.append((name, f["from"], "text"))
    return out


def version_fields(cfg: SourceConfig) -> tuple[str, str] | None:
    """(source column, target field) that date a customer's record: the cleansing dedupe's
    `order_by` (the column that says which of a person's records is newer), as mapped."""
    found = match_columns(cfg)
    if found is None:
        return None
    table = found[0]
    order: str | None = (cfg.rules(table).get("dedupe") or {}).get("order_by")
    fields = cfg.table_mapping(table)["fields"]
    target = next((n for n, f in fields.items() if order and f.get("from") == order), None)
    return (order, target) if target and order else None  # a target means an order_by
