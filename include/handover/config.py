"""The configuration surface of a source system: catalog, policy, cleansing and mapping.

A data engineer onboards a new legacy system by writing these four YAML files, never
code. Each file is checked against a JSON Schema and against the others (a mapped
column must be catalogued, a cleansing rule must name a real column), and every
problem is reported as one line naming the file, the line and the field, with the
nearest valid name where there is one.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "config"

LEVELS = ["L1", "L2", "L3", "L4"]
CATEGORIES = ["personal", "consumption", "feedback", "behavioural"]
PROTECTIONS = ["encrypt", "blind_index", "mask", "redact"]

_COLUMN = {
    "type": "object",
    "additionalProperties": False,
    "required": ["level", "pii"],
    "properties": {
        "level": {"enum": LEVELS},
        "pii": {"type": "string"},
        "category": {"enum": CATEGORIES},
    },
}

CATALOG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["system", "tables"],
    "properties": {
        "system": {"type": "string"},
        "tables": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["category", "key", "columns"],
                "properties": {
                    "category": {"enum": CATEGORIES},
                    "key": {"type": "string"},
                    "customer_column": {"type": "string"},
                    "event_time": {"type": "string"},
                    "partitions": {"type": "integer", "minimum": 1, "maximum": 4096},
                    "file": {"type": "string"},
                    "columns": {
                        "type": "object",
                        "minProperties": 1,
                        "additionalProperties": _COLUMN,
                    },
                },
            },
        },
    },
}

POLICY_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["system", "purpose", "categories", "rules"],
    "properties": {
        "system": {"type": "string"},
        "purpose": {"type": "string"},
        "objection": {
            "type": "object",
            "additionalProperties": False,
            "required": ["table", "column", "value"],
            "properties": {
                "table": {"type": "string"},
                "column": {"type": "string"},
                "value": {"type": "string"},
            },
        },
        "consent": {
            "type": "object",
            "additionalProperties": False,
            "required": ["table", "customer_column", "purpose_column", "granted_column",
                         "granted_value"],
            "properties": {
                "table": {"type": "string"},
                "customer_column": {"type": "string"},
                "purpose_column": {"type": "string"},
                "granted_column": {"type": "string"},
                "granted_value": {"type": "string"},
            },
        },
        "categories": {
            "type": "object",
            "propertyNames": {"enum": CATEGORIES},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["lawful_basis"],
                "properties": {
                    "lawful_basis": {"enum": ["contract", "separate_consent", "legal_obligation"]},
                    "consent_purpose": {"type": "string"},
                    "retention_months": {"type": "integer", "minimum": 1},
                },
            },
        },
        "rules": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "description"],
                "properties": {
                    "id": {"enum": ["OBJECTED_TRANSFER", "RETENTION_EXPIRED", "NO_CONSENT"]},
                    "description": {"type": "string"},
                },
            },
        },
    },
}

_COLS = {"type": "array", "items": {"type": "string"}}
CLEANSING_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["system", "tables"],
    "properties": {
        "system": {"type": "string"},
        "tables": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "mandatory": _COLS,
                    "msisdn": _COLS,
                    "not_future": _COLS,
                    "integers": _COLS,
                    "non_negative": _COLS,
                    "dates": {"type": "object", "additionalProperties": {"type": "string"}},
                    "codes": {"type": "object", "additionalProperties": _COLS},
                    "resident_id": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["column"],
                        "properties": {
                            "column": {"type": "string"},
                            "birth_date": {"type": "string"},
                            "gender": {"type": "string"},
                        },
                    },
                    "parent": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["table", "column"],
                        "properties": {"table": {"type": "string"}, "column": {"type": "string"}},
                    },
                    "dedupe": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["key", "order_by", "keep"],
                        "properties": {
                            "key": {"type": "string"},
                            "order_by": {"type": "string"},
                            "keep": {"enum": ["newest", "oldest"]},
                        },
                    },
                },
            },
        },
    },
}

MAPPING_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["system", "schema", "tables"],
    "properties": {
        "system": {"type": "string"},
        "schema": {"type": "string", "pattern": "^[a-z_][a-z0-9_]*$"},
        "tables": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["target", "key", "fields"],
                "properties": {
                    "target": {"type": "string", "pattern": "^[a-z_][a-z0-9_]*$"},
                    "key": {"type": "string"},
                    "fields": {
                        "type": "object",
                        "minProperties": 1,
                        "propertyNames": {"pattern": "^[a-z_][a-z0-9_]*$"},
                        "additionalProperties": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["from"],
                            "properties": {
                                "from": {"type": "string"},
                                "lookup": {"type": "object"},
                                "protect": {"type": "array", "items": {"enum": PROTECTIONS}},
                            },
                        },
                    },
                },
            },
        },
    },
}


class ConfigError(ValueError):
    """A configuration file is wrong; the message names file, line and field."""


@dataclass(frozen=True)
class SourceConfig:
    """Everything handover knows about one legacy system, checked and cross-checked."""

    system: str
    directory: Path
    catalog: dict[str, Any]
    policy: dict[str, Any]
    cleansing: dict[str, Any]
    mapping: dict[str, Any]
    _lines: dict[str, dict[tuple, int]] = field(default_factory=dict, repr=False)

    @property
    def tables(self) -> list[str]:
        return list(self.catalog["tables"])

    def table(self, name: str) -> dict[str, Any]:
        return self.catalog["tables"][name]

    def partitions(self, name: str) -> int:
        return int(self.table(name).get("partitions", 1))

    def rules(self, name: str) -> dict[str, Any]:
        return self.cleansing["tables"].get(name, {})

    def table_mapping(self, name: str) -> dict[str, Any]:
        return self.mapping["tables"][name]

    def category_policy(self, name: str) -> dict[str, Any]:
        return self.policy["categories"][self.table(name)["category"]]


def _line_index(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict:
    """Map every key path of a YAML document to its 1-based line."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            sub = path + (key_node.value,)
            out[sub] = key_node.start_mark.line + 1
            _line_index(value_node, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, path + (i,), out)
    return out


def _load_yaml(path: Path) -> tuple[Any, dict]:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found; every source system needs catalog.yaml, "
                          "policy.yaml, cleansing.yaml and mapping.yaml in its folder")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    if node is None:
        raise ConfigError(f"{path}: file is empty")
    return data, _line_index(node)


def _nearest(word: str, options) -> str:
    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _where(path: Path, lines: dict, keys: tuple) -> str:
    probe = tuple(keys)
    while probe and probe not in lines:
        probe = probe[:-1]
    return f"{path} line {lines.get(probe, 1)}"


def _schema_check(path: Path, data: Any, lines: dict, schema: dict) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return
    err = errors[0]
    keys = tuple(err.absolute_path)
    dotted = ".".join(map(str, keys)) or "(top level)"
    message = err.message
    if err.validator == "additionalProperties":
        allowed = list(err.schema.get("properties", {}))
        extra = [k for k in err.instance if k not in allowed]
        if extra:
            keys = keys + (extra[0],)
            dotted = ".".join(map(str, keys))
            message = f"unknown field '{extra[0]}'{_nearest(extra[0], allowed)}"
    elif err.validator == "enum":
        message = f"'{err.instance}' is not one of {err.validator_value}" + _nearest(
            err.instance, err.validator_value)
    elif err.validator == "propertyNames":
        message = f"{err.message}{_nearest(err.instance, err.schema.get('enum', []))}"
    raise ConfigError(f"{_where(path, lines, keys)}: {dotted}: {message}")


def _cross_check(cfg: SourceConfig) -> None:
    d = cfg.directory
    cat_tables = cfg.catalog["tables"]
    for fname, doc, lines in (
        ("cleansing.yaml", cfg.cleansing, cfg._lines["cleansing"]),
        ("mapping.yaml", cfg.mapping, cfg._lines["mapping"]),
    ):
        for table, spec in doc["tables"].items():
            where = _where(d / fname, lines, ("tables", table))
            if table not in cat_tables:
                raise ConfigError(f"{where}: tables.{table}: table not in catalog.yaml"
                                  f"{_nearest(table, cat_tables)}")
            columns = cat_tables[table]["columns"]

            def need(col: str, keys: tuple, _cols=columns, _table=table, _fname=fname,
                     _lines=lines) -> None:
                if col not in _cols:
                    raise ConfigError(
                        f"{_where(d / _fname, _lines, keys)}: {'.'.join(map(str, keys))}: "
                        f"column '{col}' is not in catalog table {_table}{_nearest(col, _cols)}")

            if fname == "cleansing.yaml":
                for rule in ("mandatory", "msisdn", "not_future", "integers", "non_negative"):
                    for i, col in enumerate(spec.get(rule, [])):
                        need(col, ("tables", table, rule, i))
                for rule in ("dates", "codes"):
                    for col in spec.get(rule, {}):
                        need(col, ("tables", table, rule, col))
                for col in spec.get("not_future", []):
                    if col not in spec.get("dates", {}):
                        raise ConfigError(
                            f"{_where(d / fname, lines, ('tables', table, 'not_future'))}: "
                            f"tables.{table}.not_future: '{col}' needs a format under dates")
                rid = spec.get("resident_id")
                if rid:
                    for k, col in rid.items():
                        need(col, ("tables", table, "resident_id", k))
                parent = spec.get("parent")
                if parent:
                    need(parent["column"], ("tables", table, "parent", "column"))
                    if parent["table"] not in cat_tables:
                        raise ConfigError(
                            f"{_where(d / fname, lines, ('tables', table, 'parent'))}: "
                            f"tables.{table}.parent.table: unknown table '{parent['table']}'"
                            f"{_nearest(parent['table'], cat_tables)}")
                dedupe = spec.get("dedupe")
                if dedupe:
                    need(dedupe["key"], ("tables", table, "dedupe", "key"))
                    need(dedupe["order_by"], ("tables", table, "dedupe", "order_by"))
            else:
                for target, fspec in spec["fields"].items():
                    need(fspec["from"], ("tables", table, "fields", target, "from"))
                if spec["key"] not in spec["fields"]:
                    raise ConfigError(
                        f"{_where(d / fname, lines, ('tables', table, 'key'))}: "
                        f"tables.{table}.key: '{spec['key']}' is not a mapped field"
                        f"{_nearest(spec['key'], spec['fields'])}")
    for table, spec in cat_tables.items():
        lines = cfg._lines["catalog"]
        for attr in ("key", "customer_column", "event_time"):
            col = spec.get(attr)
            if col is not None and col not in spec["columns"]:
                raise ConfigError(
                    f"{_where(d / 'catalog.yaml', lines, ('tables', table, attr))}: "
                    f"tables.{table}.{attr}: '{col}' is not a column of {table}"
                    f"{_nearest(col, spec['columns'])}")
        if table not in cfg.mapping["tables"]:
            raise ConfigError(
                f"{_where(d / 'mapping.yaml', cfg._lines['mapping'], ('tables',))}: "
                f"tables.{table}: catalog table '{table}' has no mapping; add it "
                "(or remove it from the catalog)")
    for cat in {t["category"] for t in cat_tables.values()}:
        if cat not in cfg.policy["categories"]:
            raise ConfigError(
                f"{_where(d / 'policy.yaml', cfg._lines['policy'], ('categories',))}: "
                f"categories.{cat}: no policy for category '{cat}' used in catalog.yaml")


def load_config(system: str | Path = "legacy_bss") -> SourceConfig:
    """Load and check the four files of a source system (a name under include/config or a path)."""
    directory = Path(system)
    if not directory.is_dir():
        directory = CONFIG_ROOT / str(system)
    if not directory.is_dir():
        known = sorted(p.name for p in CONFIG_ROOT.iterdir() if p.is_dir())
        raise ConfigError(f"source system '{system}': no folder {directory}"
                          f"{_nearest(str(system), known)}; known: {', '.join(known)}")
    docs, lines = {}, {}
    for name, schema in (("catalog", CATALOG_SCHEMA), ("policy", POLICY_SCHEMA),
                         ("cleansing", CLEANSING_SCHEMA), ("mapping", MAPPING_SCHEMA)):
        path = directory / f"{name}.yaml"
        data, idx = _load_yaml(path)
        _schema_check(path, data, idx, schema)
        docs[name], lines[name] = data, idx
    cfg = SourceConfig(system=docs["catalog"]["system"], directory=directory, _lines=lines, **docs)
    _cross_check(cfg)
    return cfg
