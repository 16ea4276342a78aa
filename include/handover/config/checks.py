"""Cross-checks: the four files of a source system checked against each other, every
problem collected so that one run names them all (mapped and cleansed tables are
catalogued, named columns exist, every catalog table is mapped and has a policy; then the
policy, event times and the target schema). The checks of one table's cleansing rules,
mapping and source block live in checks_tables and checks_source."""

from __future__ import annotations

from typing import Any

from handover.config.checks_source import check_source
from handover.config.checks_tables import check_cleansing_table, check_mapping_table
from handover.config.identity import match_columns, person_fields, version_fields
from handover.config.model import SourceConfig
from handover.config.problems import Fail, Need, nearest, where
from handover.config.target import TARGET_SQL, target_columns, target_tables
from handover.core.errors import ConfigError


def cross_check(cfg: SourceConfig) -> None:
    """Every cross-check, each problem collected: one run names them all."""
    problems: list[str] = []
    try:
        _cross_checks(cfg, problems)
    except ConfigError as exc:
        problems.extend(p for p in exc.problems if p not in problems)
    except (KeyError, TypeError, AttributeError, ValueError):
        if not problems:  # a check tripped over something no check names yet
            raise
    if problems:
        raise ConfigError(problems[0], problems)


def _cross_checks(cfg: SourceConfig, problems: list[str]) -> None:
    fail = _fail_into(cfg, problems)
    _check_rule_tables(cfg, problems, fail)
    for table, spec in cfg.catalog["tables"].items():
        _check_catalog_table(cfg, table, spec, problems)
        check_source(table, spec, fail)
    _check_categories(cfg, problems)
    if problems:  # what follows reads tables, columns and categories checked above
        return
    _check_policy(cfg, fail)
    _check_event_times(cfg, fail)
    _check_target(cfg, fail)


def _fail_into(cfg: SourceConfig, problems: list[str]) -> Fail:
    """The `fail` the checks call: one line per problem, each written once."""

    def fail(fname: str, keys: tuple[Any, ...], message: str) -> None:
        lines = cfg._lines[fname.removesuffix(".yaml")]
        line = f"{where(cfg.directory / fname, lines, keys)}: {'.'.join(map(str, keys))}: {message}"
        if line not in problems:
            problems.append(line)

    return fail


def _need_into(
    cfg: SourceConfig, problems: list[str], fname: str, table: str, columns: dict[str, Any]
) -> Need:
    """The `need` a table's checks call: a column the table's catalog entry must hold."""
    lines = cfg._lines[fname.removesuffix(".yaml")]

    def need(col: str, keys: tuple[Any, ...]) -> None:
        if col not in columns:
            problems.append(
                f"{where(cfg.directory / fname, lines, keys)}: {'.'.join(map(str, keys))}: "
                f"column '{col}' is not in catalog table {table}{nearest(col, columns)}"
            )

    return need


def _check_rule_tables(cfg: SourceConfig, problems: list[str], fail: Fail) -> None:
    """Each table of cleansing.yaml and mapping.yaml is catalogued and names its columns."""
    cat_tables = cfg.catalog["tables"]
    for fname, doc in (("cleansing.yaml", cfg.cleansing), ("mapping.yaml", cfg.mapping)):
        lines = cfg._lines[fname.removesuffix(".yaml")]
        for table, spec in doc["tables"].items():
            if table not in cat_tables:
                problems.append(
                    f"{where(cfg.directory / fname, lines, ('tables', table))}: "
                    f"tables.{table}: table not in catalog.yaml{nearest(table, cat_tables)}"
                )
                continue
            need = _need_into(cfg, problems, fname, table, cat_tables[table]["columns"])
            if fname == "cleansing.yaml":
                check_cleansing_table(cfg, table, spec, need, fail)
            else:
                check_mapping_table(cfg, table, spec, need, fail)


def _check_catalog_table(
    cfg: SourceConfig, table: str, spec: dict[str, Any], problems: list[str]
) -> None:
    """The table's key, customer and event-time columns exist, and the table is mapped."""
    d = cfg.directory
    lines = cfg._lines["catalog"]
    for attr in ("key", "customer_column", "event_time"):
        col = spec.get(attr)
        if col is not None and col not in spec["columns"]:
            problems.append(
                f"{where(d / 'catalog.yaml', lines, ('tables', table, attr))}: "
                f"tables.{table}.{attr}: '{col}' is not a column of {table}"
                f"{nearest(col, spec['columns'])}"
            )
    if table not in cfg.mapping["tables"]:
        problems.append(
            f"{where(d / 'mapping.yaml', cfg._lines['mapping'], ('tables',))}: "
            f"tables.{table}: catalog table '{table}' has no mapping; add it "
            "(or remove it from the catalog)"
        )


def _check_categories(cfg: SourceConfig, problems: list[str]) -> None:
    """Every category the catalog uses has a policy."""
    for cat in sorted({t["category"] for t in cfg.catalog["tables"].values()}):
        if cat not in cfg.policy["categories"]:
            problems.append(
                f"{where(cfg.directory / 'policy.yaml', cfg._lines['policy'], ('categories',))}: "
                f"categories.{cat}: no policy for category '{cat}' used in catalog.yaml"
            )


def _check_policy(cfg: SourceConfig, fail: Fail) -> None:
    _check_policy_tables(cfg, fail)
    _check_consent_purposes(cfg, fail)
    _check_identity(cfg, fail)
    seen: dict[str, int] = {}
    for i, rule in enumerate(cfg.policy["rules"]):
        if rule["id"] in seen:
            fail(
                "policy.yaml",
                ("rules", i, "id"),
                f"rule '{rule['id']}' is listed twice (first as rules.{seen[rule['id']]})",
            )
        seen[rule["id"]] = i


def _check_policy_tables(cfg: SourceConfig, fail: Fail) -> None:
    """The objection and consent blocks name catalogued tables and columns."""
    cat_tables = cfg.catalog["tables"]
    f = "policy.yaml"
    for what, cols in (
        ("objection", ("column",)),
        ("consent", ("customer_column", "purpose_column", "granted_column")),
    ):
        spec = cfg.policy.get(what)
        if not spec:
            continue
        if spec["table"] not in cat_tables:
            fail(
                f,
                (what, "table"),
                f"table '{spec['table']}' is not in catalog.yaml"
                f"{nearest(spec['table'], cat_tables)}",
            )
        columns = cat_tables[spec["table"]]["columns"]
        for attr in cols:
            if spec[attr] not in columns:
                fail(
                    f,
                    (what, attr),
                    f"column '{spec[attr]}' is not in catalog table "
                    f"{spec['table']}{nearest(spec[attr], columns)}",
                )
        if what == "objection" and not cat_tables[spec["table"]].get("customer_column"):
            fail(
                f,
                (what, "table"),
                f"catalog table {spec['table']} needs a customer_column "
                "to say whose objection a row records",
            )


def _check_consent_purposes(cfg: SourceConfig, fail: Fail) -> None:
    """A category under separate_consent names its purpose and where consents are."""
    for cat, spec in cfg.policy["categories"].items():
        if spec["lawful_basis"] == "separate_consent":
            if not spec.get("consent_purpose"):
                fail(
                    "policy.yaml",
                    ("categories", cat, "lawful_basis"),
                    "separate_consent needs consent_purpose (the purpose value to look for)",
                )
            if not cfg.policy.get("consent"):
                fail(
                    "policy.yaml",
                    ("categories", cat, "lawful_basis"),
                    "separate_consent needs a top-level consent block saying where consents are",
                )


def _check_identity(cfg: SourceConfig, fail: Fail) -> None:
    """Survivorship and verified flags name fields the merge compares (handover.stages.identity)."""
    spec = cfg.policy.get("identity") or {}
    if not (
        spec.get("survivorship") or spec.get("verified") or spec.get("target_retention_months")
    ):
        return
    found = match_columns(cfg)
    compared = [name for name, _, _ in person_fields(cfg, found[0])] if found else []
    for section in ("survivorship", "verified"):
        for name in spec.get(section) or {}:
            if name == "default" and section == "survivorship":
                continue
            if name not in compared:
                fail(
                    "policy.yaml",
                    ("identity", section, name),
                    f"'{name}' is not a field a merge compares (customer fields of "
                    f"mapping.yaml about the person: {', '.join(compared) or 'none'})"
                    f"{nearest(name, compared)}",
                )
    if "newest" in (spec.get("survivorship") or {}).values() and version_fields(cfg) is None:
        fail(
            "policy.yaml",
            ("identity", "survivorship"),
            "newest needs to know which record is newer: give the customer table's "
            "cleansing dedupe an order_by column that mapping.yaml maps to a target field",
        )
    for cat in spec.get("target_retention_months") or {}:
        if cat not in cfg.policy["categories"]:
            fail(
                "policy.yaml",
                ("identity", "target_retention_months", cat),
                f"category '{cat}' is not in policy.yaml categories"
                f"{nearest(cat, cfg.policy['categories'])}",
            )


def _check_event_times(cfg: SourceConfig, fail: Fail) -> None:
    """Retention compares each row's event time with the export date: it needs a format that
    comply can read (a strptime format; epoch times cannot be aged there)."""
    for table, spec in cfg.catalog["tables"].items():
        col = spec.get("event_time")
        if col is None or not cfg.policy["categories"].get(spec["category"], {}).get(
            "retention_months"
        ):
            continue
        fmt = cfg.cleansing["tables"].get(table, {}).get("dates", {}).get(col)
        if fmt is None:
            fail(
                "catalog.yaml",
                ("tables", table, "event_time"),
                f"'{col}' needs a format under cleansing.yaml tables.{table}.dates, so that "
                "retention can age the row",
            )
        elif any(
            f.split(":", 1)[0] in ("epoch", "epoch_ms")
            for f in (fmt if isinstance(fmt, list) else [fmt])
        ):
            fail(
                "cleansing.yaml",
                ("tables", table, "dates", col),
                f"event time '{col}' cannot use '{fmt}': retention reads event times with a "
                "strptime format; export it as text or use a strptime format",
            )


def _check_target(cfg: SourceConfig, fail: Fail) -> None:
    """Every mapped table and field must exist in the target schema (include/sql/target.sql),
    and every NOT NULL target column must be produced."""
    known = target_tables()
    if not known:
        return
    schema = cfg.mapping["schema"]
    schemas = sorted({s for s, _ in known})
    if schema not in schemas:
        fail(
            "mapping.yaml",
            ("schema",),
            f"schema '{schema}' is not in {TARGET_SQL.name}{nearest(schema, schemas)}",
        )
    tables = sorted(t for s, t in known if s == schema)
    for table, tmap in cfg.mapping["tables"].items():
        target = tmap["target"]
        if (schema, target) not in known:
            fail(
                "mapping.yaml",
                ("tables", table, "target"),
                f"target table '{schema}.{target}' is not in {TARGET_SQL.name}"
                f"{nearest(target, tables)}",
            )
        cols = known[(schema, target)]
        produced: set[str] = set()
        for field_name, fspec in tmap["fields"].items():
            for col in target_columns({"fields": {field_name: fspec}}):
                if col not in cols:
                    fail(
                        "mapping.yaml",
                        ("tables", table, "fields", field_name),
                        f"'{col}' is not a column of {schema}.{target}{nearest(col, cols)}",
                    )
                produced.add(col)
        missing = [c for c, required in cols.items() if required and c not in produced]
        if missing:
            fail(
                "mapping.yaml",
                ("tables", table, "fields"),
                f"{schema}.{target}.{missing[0]} is NOT NULL but no field produces it",
            )
