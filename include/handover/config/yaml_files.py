"""Reading a configuration file: YAML with every key's line, no duplicate keys, and the
file's JSON Schema problems each written as one line naming file, line and field."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from handover.config.problems import nearest, where
from handover.config.schemas import TRANSFORMS
from handover.core.errors import ConfigError

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError


def _line_index(
    node: yaml.Node, path: tuple[Any, ...] = (), out: dict[tuple[Any, ...], int] | None = None
) -> dict[tuple[Any, ...], int]:
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


def load_yaml(path: Path) -> tuple[Any, dict[tuple[Any, ...], int]]:
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


def _no_duplicate_keys(path: Path, node: yaml.Node, keys: tuple[Any, ...] = ()) -> None:
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


def schema_check(
    path: Path, data: Any, lines: dict[tuple[Any, ...], int], schema: dict[str, Any]
) -> None:
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


def _schema_message(path: Path, lines: dict[tuple[Any, ...], int], err: ValidationError) -> str:
    keys = tuple(err.absolute_path)
    dotted = ".".join(map(str, keys)) or "(top level)"
    message = err.message
    if err.validator == "additionalProperties":
        allowed = list(err.schema.get("properties", {}))
        extra = [k for k in err.instance if k not in allowed]
        if extra:
            keys = keys + (extra[0],)
            dotted = ".".join(map(str, keys))
            message = f"unknown field '{extra[0]}'{nearest(extra[0], allowed)}"
            if len(keys) == 5 and keys[2] == "fields" and allowed == TRANSFORMS:
                message += f"; a field's transforms are {', '.join(TRANSFORMS)}"
    elif err.validator == "enum":
        message = f"'{err.instance}' is not one of {err.validator_value}" + nearest(
            err.instance, err.validator_value
        )
    elif err.validator == "propertyNames":
        message = f"{err.message}{nearest(err.instance, err.schema.get('enum', []))}"
    return f"{where(path, lines, keys)}: {dotted}: {message}"
