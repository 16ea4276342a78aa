"""A source system's four YAML files: schemas, loader, cross-checks; secrets by reference (connections).

The public API is re-exported here for callers outside the library (tests, scripts);
modules inside the library import each name from the module that defines it.
"""

from handover.config.loader import (
    CONFIG_ROOT,
    ConfigError,
    SourceConfig,
    load_config,
    resolve_source,
)

__all__ = ["CONFIG_ROOT", "ConfigError", "SourceConfig", "load_config", "resolve_source"]
