"""The JSON Schemas of a source system's four files (catalog, policy, cleansing, mapping) and
the vocabulary they allow: levels, categories, protections, source formats, encodings,
mapping transforms and casts. The loader checks each file against its schema first; the
cross-checks (handover.config.checks) then check the files against each other."""

from __future__ import annotations

from typing import Any

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

_COLUMN: dict[str, Any] = {
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

_SCALAR: dict[str, Any] = {"type": ["string", "integer"]}
_SOURCE: dict[str, Any] = {
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

CATALOG_SCHEMA: dict[str, Any] = {
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

POLICY_SCHEMA: dict[str, Any] = {
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

_COLS: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
CLEANSING_SCHEMA: dict[str, Any] = {
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

MAPPING_SCHEMA: dict[str, Any] = {
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
