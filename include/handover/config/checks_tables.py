"""Cross-checks of one table's cleansing rules and one table's mapping against the catalog:
every rule and field names a catalogued column, date formats are usable, numeric rules
name numeric columns, protections fit the column, lookups cover the allowed codes."""

from __future__ import annotations

from typing import Any

from handover.config.dates import ambiguous_formats, check_date_format, iso_day
from handover.config.model import SourceConfig
from handover.config.problems import Fail, Need, nearest

Keys = tuple[Any, ...]


# ---------------------------------------------------------------- cleansing.yaml
def check_cleansing_table(
    cfg: SourceConfig, table: str, spec: dict[str, Any], need: Need, fail: Fail
) -> None:
    for rule in ("mandatory", "msisdn", "not_future", "integers", "non_negative"):
        for i, col in enumerate(spec.get(rule, [])):
            need(col, ("tables", table, rule, i))
    for rule in ("dates", "codes", "decimals", "money", "max", "phones"):
        for col in spec.get(rule, {}):
            need(col, ("tables", table, rule, col))
    _check_dates(table, spec, fail)
    _check_not_before(table, spec, need, fail)
    _check_numbers(table, spec, fail)
    rid = spec.get("resident_id")
    if rid:
        for k, col in rid.items():
            need(col, ("tables", table, "resident_id", k))
    _check_parent(cfg, table, spec, need, fail)
    _check_dedupe(table, spec, need, fail)


def _check_dates(table: str, spec: dict[str, Any], fail: Fail) -> None:
    """Each date format is usable, a list of them reads no value two ways, and not_future
    names a column with a format."""
    f = "cleansing.yaml"
    for col, fmt in spec.get("dates", {}).items():
        for one in fmt if isinstance(fmt, list) else [fmt]:
            problem = check_date_format(one)
            if problem:
                fail(f, ("tables", table, "dates", col), problem)
        if isinstance(fmt, list):
            clash = ambiguous_formats(fmt)
            if clash:
                fail(
                    f,
                    ("tables", table, "dates", col),
                    f"'{clash[0]}' and '{clash[1]}' read one value two ways (day and month "
                    "swapped: 03/04/2024); keep the one the export uses",
                )
    for col in spec.get("not_future", []):
        if col not in spec.get("dates", {}):
            fail(f, ("tables", table, "not_future"), f"'{col}' needs a format under dates")


def _check_not_before(table: str, spec: dict[str, Any], need: Need, fail: Fail) -> None:
    """Each bound names a dated column and is a real day; it is rewritten as 'YYYY-MM-DD'."""
    f = "cleansing.yaml"
    bounds = spec.get("not_before", {})
    for col, value in bounds.items():
        keys = ("tables", table, "not_before", col)
        need(col, keys)
        if col not in spec.get("dates", {}):
            fail(f, keys, f"'{col}' needs a format under dates")
        day = iso_day(value)
        if day is None:
            fail(f, keys, f"'{value}' is not a date; write the earliest valid date as 'YYYY-MM-DD'")
        bounds[col] = day  # a string, however YAML read it


def _check_numbers(table: str, spec: dict[str, Any], fail: Fail) -> None:
    """non_negative and max name numeric columns; a column has one numeric kind."""
    f = "cleansing.yaml"
    numeric = (
        set(spec.get("integers", [])) | set(spec.get("decimals", {})) | set(spec.get("money", {}))
    )
    for i, col in enumerate(spec.get("non_negative", [])):
        if col not in numeric:
            fail(
                f,
                ("tables", table, "non_negative", i),
                f"'{col}' must also be listed under integers, decimals or money to be checked",
            )
    for col in spec.get("max", {}):
        if col not in numeric:
            fail(
                f,
                ("tables", table, "max", col),
                f"'{col}' must also be listed under integers, decimals or money to be checked",
            )
    kinds = [
        set(spec.get("integers", [])),
        set(spec.get("decimals", {})),
        set(spec.get("money", {})),
    ]
    both = sorted((kinds[0] & kinds[1]) | (kinds[0] & kinds[2]) | (kinds[1] & kinds[2]))
    if both:
        fail(
            f,
            ("tables", table, "decimals", both[0]),
            f"'{both[0]}' is listed under more than one of integers, decimals and money; "
            "choose one",
        )


def _check_parent(
    cfg: SourceConfig, table: str, spec: dict[str, Any], need: Need, fail: Fail
) -> None:
    parent = spec.get("parent")
    if not parent:
        return
    cat_tables = cfg.catalog["tables"]
    f = "cleansing.yaml"
    need(parent["column"], ("tables", table, "parent", "column"))
    if parent["table"] not in cat_tables:
        fail(
            f,
            ("tables", table, "parent", "table"),
            f"unknown table '{parent['table']}'{nearest(parent['table'], cat_tables)}",
        )
    if parent["table"] == table:
        fail(f, ("tables", table, "parent", "table"), "a table cannot be its own parent")


def _check_dedupe(table: str, spec: dict[str, Any], need: Need, fail: Fail) -> None:
    dedupe = spec.get("dedupe")
    if not dedupe:
        return
    need(dedupe["key"], ("tables", table, "dedupe", "key"))
    need(dedupe["order_by"], ("tables", table, "dedupe", "order_by"))
    if dedupe["order_by"] not in set(spec.get("dates", {})) | set(spec.get("integers", [])):
        fail(
            "cleansing.yaml",
            ("tables", table, "dedupe", "order_by"),
            f"'{dedupe['order_by']}' must have a format under dates (or be listed under "
            "integers) so that newest/oldest compares values, not text",
        )


# ---------------------------------------------------------------- mapping.yaml
def check_mapping_table(
    cfg: SourceConfig, table: str, spec: dict[str, Any], need: Need, fail: Fail
) -> None:
    columns = cfg.catalog["tables"][table]["columns"]
    codes = cfg.cleansing["tables"].get(table, {}).get("codes", {})
    for target, fspec in spec["fields"].items():
        keys = ("tables", table, "fields", target)
        _check_field_source(keys, fspec, need, fail)
        _check_field_conversions(keys, fspec, fail)
        _check_field_protection(keys, fspec, columns, fail)
        _check_field_lookup(keys, fspec, codes, fail)
    if spec["key"] not in spec["fields"]:
        fail(
            "mapping.yaml",
            ("tables", table, "key"),
            f"'{spec['key']}' is not a mapped field{nearest(spec['key'], spec['fields'])}",
        )


def _check_field_source(keys: Keys, fspec: dict[str, Any], need: Need, fail: Fail) -> None:
    """A field reads one column (`from`) or several (`concat`), each catalogued."""
    f = "mapping.yaml"
    if "from" in fspec and "concat" in fspec:
        fail(f, keys + ("concat",), "use either 'from' (one column) or 'concat' (several)")
    if "from" not in fspec and "concat" not in fspec:
        fail(f, keys, "needs 'from' (a source column) or 'concat' (several columns)")
    if "concat" in fspec:
        for i, col in enumerate(fspec["concat"]["columns"]):
            need(col, keys + ("concat", "columns", i))
        fspec["from"] = fspec["concat"]["columns"][0]  # lineage for reports
    else:
        need(fspec["from"], keys + ("from",))


def _check_field_conversions(keys: Keys, fspec: dict[str, Any], fail: Fail) -> None:
    """A split part exists, date formats are usable, a field is not both date and amount."""
    f = "mapping.yaml"
    split = fspec.get("split")
    if split and split.get("parts") and split["part"] >= split["parts"]:
        fail(
            f,
            keys + ("split", "part"),
            f"part {split['part']} does not exist when splitting into {split['parts']} parts "
            "(parts count from 0)",
        )
    parse = fspec.get("parse_date")
    if parse:
        formats = parse["format"] if isinstance(parse["format"], list) else [parse["format"]]
        for fmt in formats:
            problem = check_date_format(fmt)
            if problem:
                fail(f, keys + ("parse_date", "format"), problem)
    convs = [t for t in ("parse_date", "yuan_to_fen", "cast") if fspec.get(t)]
    if "parse_date" in convs and "yuan_to_fen" in convs:
        fail(f, keys + ("yuan_to_fen",), "a field cannot be both a date and an amount")


def _check_field_protection(
    keys: Keys, fspec: dict[str, Any], columns: dict[str, Any], fail: Fail
) -> None:
    """A mask fits the column's pii type; encrypt and redact exclude each other."""
    f = "mapping.yaml"
    prot = fspec.get("protect", [])
    if "mask" in prot and columns[fspec["from"]].get("pii") not in ("resident_id", "msisdn"):
        fail(
            f,
            keys + ("protect",),
            f"mask needs a catalogued pii type resident_id or msisdn; column "
            f"'{fspec['from']}' is catalogued as '{columns[fspec['from']].get('pii')}'",
        )
    if "encrypt" in prot and "redact" in prot:
        fail(f, keys + ("protect",), "encrypt and redact together make no sense; choose one")


def _check_field_lookup(
    keys: Keys, fspec: dict[str, Any], codes: dict[str, Any], fail: Fail
) -> None:
    """A plain lookup of a coded column has an entry for every code cleansing allows."""
    if (
        "lookup" in fspec
        and "concat" not in fspec
        and not any(t in fspec for t in ("split", "default"))
        and fspec["from"] in codes
    ):
        missing = [
            str(c) for c in codes[fspec["from"]] if str(c) not in {str(k) for k in fspec["lookup"]}
        ]
        if missing:
            fail(
                "mapping.yaml",
                keys + ("lookup",),
                f"code '{missing[0]}' allowed by cleansing.yaml codes.{fspec['from']} has "
                "no lookup entry",
            )
