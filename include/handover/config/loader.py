"""The configuration surface of a source system: catalog, policy, cleansing and mapping.

A data engineer onboards a new legacy system by writing these four YAML files, never
code. Each file is checked against a JSON Schema (handover.config.schemas) and against the
others (handover.config.checks: a mapped column must be catalogued, a cleansing rule must
name a real column), and every problem is reported as one line naming the file, the line
and the field, with the nearest valid name where there is one.

`load_config` lives here; the names callers have always imported from this module
(SourceConfig, resolve_source, ambiguous_formats, ConfigError, CONFIG_ROOT) stay
importable from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from handover.config.checks import cross_check
from handover.config.dates import ambiguous_formats
from handover.config.model import SourceConfig, resolve_source
from handover.config.problems import nearest
from handover.config.schemas import (
    CATALOG_SCHEMA,
    CLEANSING_SCHEMA,
    MAPPING_SCHEMA,
    POLICY_SCHEMA,
)
from handover.config.yaml_files import load_yaml, schema_check
from handover.core.errors import ConfigError
from handover.core.paths import CONFIG_ROOT

__all__ = [
    "CONFIG_ROOT",
    "ConfigError",
    "SourceConfig",
    "ambiguous_formats",
    "load_config",
    "resolve_source",
]


def load_config(system: str | Path = "legacy_bss") -> SourceConfig:
    """Load and check the four files of a source system (a name under include/config or a path)."""
    directory = Path(system)
    if not directory.is_dir():
        directory = CONFIG_ROOT / str(system)
    if not directory.is_dir():
        known = sorted(p.name for p in CONFIG_ROOT.iterdir() if p.is_dir())
        raise ConfigError(
            f"source system '{system}': no folder {directory}"
            f"{nearest(str(system), known)}; known: {', '.join(known)}"
        )
    docs: dict[str, Any] = {}
    lines: dict[str, dict[tuple[Any, ...], int]] = {}
    problems: list[str] = []  # every file's schema problems, then (if none) the cross-checks
    for name, schema in (
        ("catalog", CATALOG_SCHEMA),
        ("policy", POLICY_SCHEMA),
        ("cleansing", CLEANSING_SCHEMA),
        ("mapping", MAPPING_SCHEMA),
    ):
        path = directory / f"{name}.yaml"
        data, idx = load_yaml(path)
        try:
            schema_check(path, data, idx, schema)
        except ConfigError as exc:
            problems.extend(exc.problems)
        docs[name], lines[name] = data, idx
    if problems:
        # Still cross-check what can be: a newcomer gets every problem in one round. A
        # check that trips over a structure the schema already refused is skipped.
        try:
            cross_check(
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
    cross_check(cfg)
    return cfg
