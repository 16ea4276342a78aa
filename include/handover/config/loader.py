"""The configuration surface of a source system: catalog, policy, cleansing and mapping.

A data engineer onboards a new legacy system by writing these four YAML files, never
code. Each file is checked against a JSON Schema and against the others (a mapped
column must be catalogued, a cleansing rule must name a real column), and every
problem is reported as one line naming the file, the line and the field, with the
nearest valid name where there is one.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from handover.config.identity import match_columns, person_fields, version_fields
from handover.config.target import TARGET_SQL, target_columns, target_tables
from handover.core.errors import ConfigError
from handover.core.paths import CONFIG_ROOT

LEVELS = ["L1", "L2", "L3", "L4"]
CATEGORIES = ["personal", "consumption", "feedback", "behavioural"]
PROTECTIONS = ["encrypt", "blind_index", "mask", "redact"]
SOURCE_FORMATS = ["csv", "parquet", "sql", "jsonl", "fixed", "xlsx"]
ENCODINGS = ["utf-8", "utf-8-sig", "gbk", "gb18030", "big5", "utf-16", "utf-16-le", "utf-16-be"]
# Mapping transforms, in the order map_partition applies them (see handover.stages.mapping).
TRANSFORMS = [
    "from",
    "from_resident_id",
    "concat",
    "split",
    "default",
    "lookup",
    "parse_date",
    "yuan_to_fen",
    "cast",
    "protect",
]
CASTS = ["string", "int", "float", "bool", "date", "timestamp"]
FILE_SOURCE_OPTIONS = (
    "file",
    "files",
    "encoding",
    "delimiter",
    "header",
    "quote",
    "trailer",
    "widths",
    "width_unit",
    "sheet",
)
CSV_ONLY_OPTIONS = ("encoding", "delimiter", "header", "quote", "trailer")
SQL_SOURCE_OPTIONS = ("conn_id", "query", "table", "range")
DATE_DIRECTIVES = set("aAwdbBmyYHIpMSfzZjUWcxXGuV%")

_COLUMN = {
    "type": "object",
    "additionalProperties": False,
    "required": ["level", "pii"],
    "properties": {
        "level": {"enum": LEVELS},
        "pii": {"type": "string"},
        "category": {"enum": CATEGORIES},
        "migrate": {"type": "boolean"},
    },
}

_SCALAR = {"type": ["string", "integer"]}
_SOURCE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "format": {"enum": SOURCE_FORMATS},
        "file": {"type": "string", "minLength": 1},
        "files": {"type": "string", "minLength": 1},  # a glob: one table in several files
        "encoding": {"enum": ENCODINGS},
        # one character, or several (`~|~`, `||`)
        "delimiter": {"type": "string", "minLength": 1, "maxLength": 8},
        "header": {"type": "boolean"},
        "quote": {"type": "string", "maxLength": 1},
        # a last line that is not a row (`共2条`, `TOTAL 2`, `EOF`): a regex for it; its
        # first group, if any, is the row count the file must hold
        "trailer": {"type": "string", "minLength": 1},
        # format fixed (mainframe-era text): each catalog column's width, in the catalog's
        # column order; counted in bytes of the file's encoding (a GBK character is two), or
        # in characters with width_unit: chars
        "widths": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
        "width_unit": {"enum": ["bytes", "chars"]},
        # format xlsx: the worksheet (its name, or its position from 0; default the first)
        "sheet": {"oneOf": [{"type": "string", "minLength": 1}, {"type": "integer", "minimum": 0}]},
        "conn_id": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
        "query": {"type": "string", "minLength": 1},
        "table": {
            "type": "string",
            "pattern": "^[A-Za-z_][A-Za-z0-9_$]*([.][A-Za-z_][A-Za-z0-9_$]*)?$",
        },
        "chunk_rows": {"type": "integer", "minimum": 1, "maximum": 10_000_000},
        "range": {
            "type": "object",
            "additionalProperties": False,
            "required": ["column"],
            "properties": {"column": {"type": "string"}, "start": _SCALAR, "end": _SCALAR},
        },
    },
}

CATALOG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["system", "tables"],
    "properties": {
        "system": {"type": "string"},
        # files in the export folder that are not data (a data dictionary, a README, the
        # operator's cover letter): glob patterns; any other file no table reads stops
        # `check` and the run
        "ignore": {"type": "array", "items": {"type": "string", "minLength": 1}},
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
                    # A run that moves nothing is never green: the quality gate fails a
                    # partition whose cleanse quarantined more than this share of its
                    # rows (default MAX_QUARANTINE_SHARE), naming the top reasons.
                    "max_quarantine_share": {"type": "number", "minimum": 0, "maximum": 1},
                    # ... or where less than this share of cleanse's rows came out clean
                    # (any reason; default MIN_LOADED_SHARE); the compliance gate fails a
                    # partition the policy excluded more than max_excluded_share of
                    "min_loaded_share": {"type": "number", "minimum": 0, "maximum": 1},
                    "max_excluded_share": {"type": "number", "minimum": 0, "maximum": 1},
                    "file": {"type": "string"},
                    "source": _SOURCE,
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
        # The lake is a working set (handover.storage.lake_crypto): a run's stage objects are
        # destroyed this many days after it ends; quarantined rows wait for a fix as long
        # as quarantine_days (never less than the working set).
        "working_set_days": {"type": "integer", "minimum": 0},
        "quarantine_days": {"type": "integer", "minimum": 0},
        # One person, one customer across systems (handover.stages.identity): a customer of this
        # export whose normalised resident ID (by blind index, never in clear) is already
        # a customer of the target under another id (the acquirer's own, or another
        # acquired operator's) is merged into that customer: its record is not loaded, its
        # child rows follow the existing customer, the person map records the decision.
        "identity": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                # resident_id: the blind index of the normalised 18-digit ID; name_birth:
                # for a customer whose ID is missing, the blind index of the normalised
                # name and birth date, merged only where exactly one target customer has it
                "match": {
                    "type": "array",
                    "minItems": 1,
                    "uniqueItems": True,
                    "items": {"enum": ["resident_id", "name_birth"]},
                },
                # field-level survivorship of a merge, per target field of the customer
                # (`default` for the others): target (the target's value stays), source
                # (the export's wins), newest (the record with the newer version column
                # wins), review (the target's stays; a person decides in the review queue)
                "survivorship": {
                    "type": "object",
                    "additionalProperties": {"enum": ["target", "source", "newest", "review"]},
                },
                # target field -> boolean column of the target that marks its value
                # verified: a verified value is never overwritten by an export's
                "verified": {
                    "type": "object",
                    "additionalProperties": {"type": "string", "minLength": 1},
                },
                # the target's own retention (months per category of policy.yaml): for a
                # person the target also holds, the stricter of the two holds
                "target_retention_months": {
                    "type": "object",
                    "additionalProperties": {"type": "integer", "minimum": 0},
                },
                # merge: one customer; link: both records kept, one person id (needs a
                # target that allows two customers with one ID)
                "on_match": {"enum": ["merge", "link"]},
                # the name the target's own customers go under in the person map
                "target_system": {"type": "string", "minLength": 1},
            },
        },
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
            "required": [
                "table",
                "customer_column",
                "purpose_column",
                "granted_column",
                "granted_value",
            ],
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
                    # {column: 'YYYY-MM-DD'}: earlier dates are INVALID_DATE (sentinels such
                    # as 1899-12-30); values checked in _check_cleansing_table (YAML may
                    # read an unquoted date as a date, not a string).
                    "not_before": {"type": "object", "additionalProperties": {}},
                    "integers": _COLS,
                    "non_negative": _COLS,
                    # {column: largest value}: above it AMOUNT_OUT_OF_RANGE (a charge of
                    # 999,999,999,999,999,999 fen is a legacy sentinel, not money)
                    "max": {"type": "object", "additionalProperties": {"type": "number"}},
                    # {column: [classes]}: telephone numbers of these classes are valid
                    # (mobile, landline, iot, service, international), each normalised
                    "phones": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "enum": ["mobile", "landline", "iot", "service", "international"]
                            },
                        },
                    },
                    # {column: {unit: yuan|jiao|fen, places: 0-2}}: amounts as printed
                    # (`¥17,504.10`, `(12.50)`, `负3元`) read exactly into whole fen
                    "money": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "unit": {"enum": ["yuan", "jiao", "fen"]},
                                "places": {"type": "integer", "minimum": 0, "maximum": 2},
                            },
                        },
                    },
                    "decimals": {
                        "type": "object",
                        "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 6},
                    },
                    # {column: format} or {column: [format, ...]}: strptime formats,
                    # 'epoch' / 'epoch_ms' (':<zone>'), 'excel' (serial days); a list is
                    # tried in order (columns a legacy system wrote several ways)
                    "dates": {
                        "type": "object",
                        "additionalProperties": {
                            "oneOf": [
                                {"type": "string"},
                                {"type": "array", "items": {"type": "string"}, "minItems": 1},
                            ]
                        },
                    },
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
                            # the survivor of one person's records
                            "keep": {"enum": ["newest", "oldest", "first_key", "most_complete"]},
                            # merge (default): the others merged into it, their children
                            # re-parented (merge map); quarantine: DUPLICATE_PERSON
                            "action": {"enum": ["merge", "quarantine"]},
                        },
                    },
                    # upper | lower: the table's key (and its children's parent column) is
                    # case-folded at extract, after NFKC and trimming, so ` c1 ` and `C1`
                    # are one key before duplicates are decided
                    "key_case": {"enum": ["upper", "lower", "keep"]},
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
                            "properties": {
                                "from": {"type": "string"},
                                # what the (18-digit, cleansed) resident ID in `from`
                                # encodes: the true value of a field the export lacks
                                "from_resident_id": {"enum": ["birth_date", "gender", "region"]},
                                "concat": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["columns"],
                                    "properties": {
                                        "columns": {
                                            "type": "array",
                                            "minItems": 2,
                                            "items": {"type": "string"},
                                        },
                                        "separator": {"type": "string"},
                                    },
                                },
                                "split": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["separator", "part"],
                                    "properties": {
                                        "separator": {"type": "string", "minLength": 1},
                                        "part": {"type": "integer", "minimum": 0},
                                        "parts": {"type": "integer", "minimum": 2},
                                    },
                                },
                                "default": {"type": ["string", "number", "boolean"]},
                                "lookup": {"type": "object", "minProperties": 1},
                                "parse_date": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["format"],
                                    "properties": {
                                        "format": {
                                            "type": ["string", "array"],
                                            "minItems": 1,
                                            "items": {"type": "string"},
                                        },
                                        "to": {"enum": ["date", "timestamp"]},
                                    },
                                },
                                "yuan_to_fen": {"type": "boolean"},
                                "cast": {"enum": CASTS},
                                "protect": {"type": "array", "items": {"enum": PROTECTIONS}},
                            },
                        },
                    },
                },
            },
        },
    },
}


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
        """The table's cleansing rules, plus `verbatim`: its free-text columns (catalog
        `pii: free_text`), which cleanse trims but does not NFKC-normalise."""
        rules = self.cleansing["tables"].get(name, {})
        columns = self.catalog["tables"].get(name, {}).get("columns") or {}
        verbatim = [c for c, spec in columns.items() if (spec or {}).get("pii") == "free_text"]
        return {**rules, "verbatim": verbatim} if verbatim else rules

    def key_folds(self, name: str) -> dict[str, str]:
        """Columns extract writes as keys (NFKC, trimmed, case-folded): the table's key by
        its own `key_case`, its parent column by the parent table's. Empty without any."""
        rules = self.cleansing["tables"].get(name, {})
        folds = {}
        if rules.get("key_case", "keep") != "keep":
            folds[self.table(name)["key"]] = rules["key_case"]
        parent = rules.get("parent")
        if parent:
            case = self.cleansing["tables"].get(parent["table"], {}).get("key_case", "keep")
            if case != "keep":
                folds[parent["column"]] = case
        return folds

    def table_mapping(self, name: str) -> dict[str, Any]:
        return self.mapping["tables"][name]

    def category_policy(self, name: str) -> dict[str, Any]:
        return self.policy["categories"][self.table(name)["category"]]

    def source(self, name: str) -> dict[str, Any]:
        """The table's source block with defaults filled in (default: UTF-8 CSV with header)."""
        return resolve_source(name, self.table(name))


def resolve_source(table: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A catalog table's `source:` block with every default filled in."""
    given = dict(spec.get("source") or {})
    fmt = given.get("format", "csv")
    out: dict[str, Any] = {
        "format": fmt,
        "encoding": "utf-8",
        "delimiter": ",",
        "header": True,
        "quote": '"',
        "chunk_rows": 50_000,
    }
    out.update(given)
    if fmt != "sql" and not given.get("files"):
        ext = {"parquet": "parquet", "jsonl": "jsonl", "fixed": "txt", "xlsx": "xlsx"}.get(
            fmt, "csv"
        )
        out["file"] = given.get("file") or spec.get("file") or f"{table}.{ext}"
    return out


def ambiguous_formats(formats: list[str]) -> tuple[str, str] | None:
    """Two formats of a list that read the same text two ways: equal once day and month
    directives are swapped (`%d/%m/%Y` and `%m/%d/%Y`)."""
    swap = {"%d": "%m", "%m": "%d"}
    for i, a in enumerate(formats):
        flipped = re.sub(r"%[dm]", lambda m: swap[m.group(0)], a)
        for b in formats[i + 1 :]:
            if flipped == b and flipped != a:
                return a, b
    return None


def check_date_format(fmt: str) -> str | None:
    """Why a date format is unusable, or None. strptime formats or epoch[_ms][:<IANA zone>]."""
    if fmt == "excel":
        return None
    head, _, zone = fmt.partition(":")
    if head in ("epoch", "epoch_ms"):
        if zone:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                return (
                    f"unknown time zone '{zone}' in '{fmt}' (use an IANA name, e.g. Asia/Shanghai)"
                )
        return None
    directives = re.findall(r"%(.)", fmt)
    if not directives:
        return (
            f"'{fmt}' has no %-directives; use a strptime format such as '%Y%m%d' "
            "or 'epoch' / 'epoch_ms' (optionally ':Asia/Shanghai')"
        )
    unknown = [d for d in directives if d not in DATE_DIRECTIVES]
    if unknown:
        return f"unknown date directive '%{unknown[0]}' in '{fmt}'"
    return None


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
        raise ConfigError(
            f"{path}: file not found; every source system needs catalog.yaml, "
            "policy.yaml, cleansing.yaml and mapping.yaml in its folder"
        )
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from exc
    if node is None:
        raise ConfigError(f"{path}: file is empty")
    _no_duplicate_keys(path, node)
    return data, _line_index(node)


def _no_duplicate_keys(path: Path, node: yaml.Node, keys: tuple = ()) -> None:
    """YAML keeps the last of two equal keys silently; a second `gender:` is a mistake."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                dotted = ".".join(map(str, keys + (key_node.value,)))
                raise ConfigError(
                    f"{path} line {line}: {dotted}: duplicate key "
                    f"'{key_node.value}' (first at line {seen[key_node.value]})"
                )
            seen[key_node.value] = line
            _no_duplicate_keys(path, value_node, keys + (key_node.value,))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _no_duplicate_keys(path, item, keys + (i,))


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
    problems = []
    for err in errors:
        try:
            problems.append(_schema_message(path, lines, err))
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(problems[0], list(dict.fromkeys(problems)))


def _schema_message(path: Path, lines: dict, err) -> str:
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
            if len(keys) == 5 and keys[2] == "fields" and allowed == TRANSFORMS:
                message += f"; a field's transforms are {', '.join(TRANSFORMS)}"
    elif err.validator == "enum":
        message = f"'{err.instance}' is not one of {err.validator_value}" + _nearest(
            err.instance, err.validator_value
        )
    elif err.validator == "propertyNames":
        message = f"{err.message}{_nearest(err.instance, err.schema.get('enum', []))}"
    return f"{_where(path, lines, keys)}: {dotted}: {message}"


def _cross_check(cfg: SourceConfig) -> None:
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
    d = cfg.directory
    cat_tables = cfg.catalog["tables"]

    def fail(fname: str, keys: tuple, message: str) -> None:
        lines = cfg._lines[fname.removesuffix(".yaml")]
        line = f"{_where(d / fname, lines, keys)}: {'.'.join(map(str, keys))}: {message}"
        if line not in problems:
            problems.append(line)

    for fname, doc, lines in (
        ("cleansing.yaml", cfg.cleansing, cfg._lines["cleansing"]),
        ("mapping.yaml", cfg.mapping, cfg._lines["mapping"]),
    ):
        for table, spec in doc["tables"].items():
            where = _where(d / fname, lines, ("tables", table))
            if table not in cat_tables:
                problems.append(
                    f"{where}: tables.{table}: table not in catalog.yaml"
                    f"{_nearest(table, cat_tables)}"
                )
                continue
            columns = cat_tables[table]["columns"]

            def need(
                col: str, keys: tuple, _cols=columns, _table=table, _fname=fname, _lines=lines
            ) -> None:
                if col not in _cols:
                    problems.append(
                        f"{_where(d / _fname, _lines, keys)}: {'.'.join(map(str, keys))}: "
                        f"column '{col}' is not in catalog table {_table}{_nearest(col, _cols)}"
                    )

            if fname == "cleansing.yaml":
                _check_cleansing_table(cfg, table, spec, need, fail)
            else:
                _check_mapping_table(cfg, table, spec, need, fail)
    for table, spec in cat_tables.items():
        lines = cfg._lines["catalog"]
        for attr in ("key", "customer_column", "event_time"):
            col = spec.get(attr)
            if col is not None and col not in spec["columns"]:
                problems.append(
                    f"{_where(d / 'catalog.yaml', lines, ('tables', table, attr))}: "
                    f"tables.{table}.{attr}: '{col}' is not a column of {table}"
                    f"{_nearest(col, spec['columns'])}"
                )
        if table not in cfg.mapping["tables"]:
            problems.append(
                f"{_where(d / 'mapping.yaml', cfg._lines['mapping'], ('tables',))}: "
                f"tables.{table}: catalog table '{table}' has no mapping; add it "
                "(or remove it from the catalog)"
            )
        _check_source(table, spec, fail)
    for cat in sorted({t["category"] for t in cat_tables.values()}):
        if cat not in cfg.policy["categories"]:
            problems.append(
                f"{_where(d / 'policy.yaml', cfg._lines['policy'], ('categories',))}: "
                f"categories.{cat}: no policy for category '{cat}' used in catalog.yaml"
            )
    if problems:  # what follows reads tables, columns and categories checked above
        return
    _check_policy(cfg, fail)
    _check_event_times(cfg, fail)
    _check_target(cfg, fail)


def _check_cleansing_table(cfg: SourceConfig, table: str, spec: dict, need, fail) -> None:
    cat_tables = cfg.catalog["tables"]
    f = "cleansing.yaml"
    for rule in ("mandatory", "msisdn", "not_future", "integers", "non_negative"):
        for i, col in enumerate(spec.get(rule, [])):
            need(col, ("tables", table, rule, i))
    for rule in ("dates", "codes", "decimals", "money", "max", "phones"):
        for col in spec.get(rule, {}):
            need(col, ("tables", table, rule, col))
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
    bounds = spec.get("not_before", {})
    for col, value in bounds.items():
        keys = ("tables", table, "not_before", col)
        need(col, keys)
        if col not in spec.get("dates", {}):
            fail(f, keys, f"'{col}' needs a format under dates")
        day = _iso_day(value)
        if day is None:
            fail(f, keys, f"'{value}' is not a date; write the earliest valid date as 'YYYY-MM-DD'")
        bounds[col] = day  # a string, however YAML read it
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
    rid = spec.get("resident_id")
    if rid:
        for k, col in rid.items():
            need(col, ("tables", table, "resident_id", k))
    parent = spec.get("parent")
    if parent:
        need(parent["column"], ("tables", table, "parent", "column"))
        if parent["table"] not in cat_tables:
            fail(
                f,
                ("tables", table, "parent", "table"),
                f"unknown table '{parent['table']}'{_nearest(parent['table'], cat_tables)}",
            )
        if parent["table"] == table:
            fail(f, ("tables", table, "parent", "table"), "a table cannot be its own parent")
    dedupe = spec.get("dedupe")
    if dedupe:
        need(dedupe["key"], ("tables", table, "dedupe", "key"))
        need(dedupe["order_by"], ("tables", table, "dedupe", "order_by"))
        if dedupe["order_by"] not in set(spec.get("dates", {})) | set(spec.get("integers", [])):
            fail(
                f,
                ("tables", table, "dedupe", "order_by"),
                f"'{dedupe['order_by']}' must have a format under dates (or be listed under "
                "integers) so that newest/oldest compares values, not text",
            )


def _iso_day(value: Any) -> str | None:
    """A `not_before` value as 'YYYY-MM-DD', or None when it is not a real date."""
    import datetime as dt

    if isinstance(value, dt.datetime):
        return None  # a date, not a time
    if isinstance(value, dt.date):
        return value.isoformat()
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return None
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        return None


def _check_mapping_table(cfg: SourceConfig, table: str, spec: dict, need, fail) -> None:
    f = "mapping.yaml"
    columns = cfg.catalog["tables"][table]["columns"]
    codes = cfg.cleansing["tables"].get(table, {}).get("codes", {})
    for target, fspec in spec["fields"].items():
        keys = ("tables", table, "fields", target)
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
        if (
            "lookup" in fspec
            and "concat" not in fspec
            and not any(t in fspec for t in ("split", "default"))
            and fspec["from"] in codes
        ):
            missing = [
                str(c)
                for c in codes[fspec["from"]]
                if str(c) not in {str(k) for k in fspec["lookup"]}
            ]
            if missing:
                fail(
                    f,
                    keys + ("lookup",),
                    f"code '{missing[0]}' allowed by cleansing.yaml codes.{fspec['from']} has "
                    "no lookup entry",
                )
    if spec["key"] not in spec["fields"]:
        fail(
            f,
            ("tables", table, "key"),
            f"'{spec['key']}' is not a mapped field{_nearest(spec['key'], spec['fields'])}",
        )


def _check_source(table: str, spec: dict, fail) -> None:
    src = spec.get("source")
    if src is None:
        return
    keys = ("tables", table, "source")
    fmt = src.get("format", "csv")
    if fmt == "sql":
        wrong = [o for o in FILE_SOURCE_OPTIONS if o in src]
        if wrong:
            fail(
                "catalog.yaml",
                keys + (wrong[0],),
                f"'{wrong[0]}' applies to file sources, not to format sql",
            )
        if "file" in spec:
            fail(
                "catalog.yaml",
                ("tables", table, "file"),
                "a table read with format sql has no file; remove it",
            )
        if "conn_id" not in src:
            fail("catalog.yaml", keys, "format sql needs conn_id (an Airflow connection id)")
        if ("query" in src) == ("table" in src):
            fail("catalog.yaml", keys, "format sql needs exactly one of 'table' or 'query'")
        rng = src.get("range")
        if rng and rng["column"] not in spec["columns"]:
            fail(
                "catalog.yaml",
                keys + ("range", "column"),
                f"column '{rng['column']}' is not in catalog table {table}"
                f"{_nearest(rng['column'], spec['columns'])}",
            )
        return
    wrong = [o for o in SQL_SOURCE_OPTIONS if o in src]
    if wrong:
        fail("catalog.yaml", keys + (wrong[0],), f"'{wrong[0]}' applies only to format sql")
    if fmt == "parquet":
        wrong = [o for o in CSV_ONLY_OPTIONS if o in src]
        if wrong:
            fail("catalog.yaml", keys + (wrong[0],), f"'{wrong[0]}' applies to csv, not to parquet")
    if fmt == "fixed":
        widths = src.get("widths")
        if not widths:
            fail(
                "catalog.yaml",
                keys,
                "format fixed needs widths: one per catalog column, in the catalog's column order",
            )
        elif len(widths) != len(spec["columns"]):
            fail(
                "catalog.yaml",
                keys + ("widths",),
                f"{len(widths)} widths for {len(spec['columns'])} catalog columns; give one "
                "per column, in the catalog's order",
            )
    elif "widths" in src or "width_unit" in src:
        fail(
            "catalog.yaml",
            keys + ("widths" if "widths" in src else "width_unit",),
            "widths apply only to format fixed",
        )
    if "sheet" in src and fmt != "xlsx":
        fail("catalog.yaml", keys + ("sheet",), "sheet applies only to format xlsx")
    if fmt == "xlsx":
        wrong = [o for o in ("encoding", "delimiter", "quote", "trailer") if o in src]
        if wrong:
            fail(
                "catalog.yaml",
                keys + (wrong[0],),
                f"'{wrong[0]}' applies to text files, not to a workbook",
            )
    if fmt in ("jsonl", "fixed"):
        wrong = [o for o in ("delimiter", "header", "quote") if o in src]
        if wrong:
            fail(
                "catalog.yaml",
                keys + (wrong[0],),
                f"'{wrong[0]}' applies to csv, not to format {fmt}",
            )
    if "file" in src and "file" in spec:
        fail(
            "catalog.yaml",
            keys + ("file",),
            "the file is named twice (tables.<t>.file and source.file); keep one",
        )
    if "files" in src:
        if "file" in src or "file" in spec:
            fail(
                "catalog.yaml",
                keys + ("files",),
                "use either file (one file) or files (a glob matching several), not both",
            )
        pattern = src["files"]
        if pattern.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", pattern):
            fail(
                "catalog.yaml",
                keys + ("files",),
                f"'{pattern}' must be a glob relative to the export folder (such as payments*.csv)",
            )
    if src.get("quote") and src["quote"] == src.get("delimiter", ","):
        fail("catalog.yaml", keys + ("quote",), "quote and delimiter must differ")


def _check_policy(cfg: SourceConfig, fail) -> None:
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
                f"{_nearest(spec['table'], cat_tables)}",
            )
        columns = cat_tables[spec["table"]]["columns"]
        for attr in cols:
            if spec[attr] not in columns:
                fail(
                    f,
                    (what, attr),
                    f"column '{spec[attr]}' is not in catalog table "
                    f"{spec['table']}{_nearest(spec[attr], columns)}",
                )
        if what == "objection" and not cat_tables[spec["table"]].get("customer_column"):
            fail(
                f,
                (what, "table"),
                f"catalog table {spec['table']} needs a customer_column "
                "to say whose objection a row records",
            )
    for cat, spec in cfg.policy["categories"].items():
        if spec["lawful_basis"] == "separate_consent":
            if not spec.get("consent_purpose"):
                fail(
                    f,
                    ("categories", cat, "lawful_basis"),
                    "separate_consent needs consent_purpose (the purpose value to look for)",
                )
            if not cfg.policy.get("consent"):
                fail(
                    f,
                    ("categories", cat, "lawful_basis"),
                    "separate_consent needs a top-level consent block saying where consents are",
                )
    _check_identity(cfg, fail)
    seen: dict[str, int] = {}
    for i, rule in enumerate(cfg.policy["rules"]):
        if rule["id"] in seen:
            fail(
                f,
                ("rules", i, "id"),
                f"rule '{rule['id']}' is listed twice (first as rules.{seen[rule['id']]})",
            )
        seen[rule["id"]] = i


def _check_identity(cfg: SourceConfig, fail) -> None:
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
                    f"{_nearest(name, compared)}",
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
                f"{_nearest(cat, cfg.policy['categories'])}",
            )


def _check_event_times(cfg: SourceConfig, fail) -> None:
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


def _check_target(cfg: SourceConfig, fail) -> None:
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
            f"schema '{schema}' is not in {TARGET_SQL.name}{_nearest(schema, schemas)}",
        )
    tables = sorted(t for s, t in known if s == schema)
    for table, tmap in cfg.mapping["tables"].items():
        target = tmap["target"]
        if (schema, target) not in known:
            fail(
                "mapping.yaml",
                ("tables", table, "target"),
                f"target table '{schema}.{target}' is not in {TARGET_SQL.name}"
                f"{_nearest(target, tables)}",
            )
        cols = known[(schema, target)]
        produced: set[str] = set()
        for field_name, fspec in tmap["fields"].items():
            for col in target_columns({"fields": {field_name: fspec}}):
                if col not in cols:
                    fail(
                        "mapping.yaml",
                        ("tables", table, "fields", field_name),
                        f"'{col}' is not a column of {schema}.{target}{_nearest(col, cols)}",
                    )
                produced.add(col)
        missing = [c for c, required in cols.items() if required and c not in produced]
        if missing:
            fail(
                "mapping.yaml",
                ("tables", table, "fields"),
                f"{schema}.{target}.{missing[0]} is NOT NULL but no field produces it",
            )


def load_config(system: str | Path = "legacy_bss") -> SourceConfig:
    """Load and check the four files of a source system (a name under include/config or a path)."""
    directory = Path(system)
    if not directory.is_dir():
        directory = CONFIG_ROOT / str(system)
    if not directory.is_dir():
        known = sorted(p.name for p in CONFIG_ROOT.iterdir() if p.is_dir())
        raise ConfigError(
            f"source system '{system}': no folder {directory}"
            f"{_nearest(str(system), known)}; known: {', '.join(known)}"
        )
    docs, lines = {}, {}
    problems: list[str] = []  # every file's schema problems, then (if none) the cross-checks
    for name, schema in (
        ("catalog", CATALOG_SCHEMA),
        ("policy", POLICY_SCHEMA),
        ("cleansing", CLEANSING_SCHEMA),
        ("mapping", MAPPING_SCHEMA),
    ):
        path = directory / f"{name}.yaml"
        data, idx = _load_yaml(path)
        try:
            _schema_check(path, data, idx, schema)
        except ConfigError as exc:
            problems.extend(exc.problems)
        docs[name], lines[name] = data, idx
    if problems:
        # Still cross-check what can be: a newcomer gets every problem in one round. A
        # check that trips over a structure the schema already refused is skipped.
        try:
            _cross_check(
                SourceConfig(
                    system=str((docs["catalog"] or {}).get("system", "")),
                    directory=directory,
                    _lines=lines,
                    **docs,
                )
            )
        except ConfigError as exc:
            problems.extend(p for p in exc.problems if p not in problems)
        except (KeyError, TypeError, AttributeError, ValueError):
            pass  # a check tripped over a structure the schema refused: its line says so
        raise ConfigError(problems[0], problems)
    cfg = SourceConfig(system=docs["catalog"]["system"], directory=directory, _lines=lines, **docs)
    _cross_check(cfg)
    return cfg
