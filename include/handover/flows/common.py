"""What both flows' task bodies share: the lake, the checked config, reading and writing a
partition's stage output, the small manifest a task returns, and the facts about tables that
several stages ask (parents, version columns, the export's manifest digest).

Importing it tunes Arrow's memory pool (handover.core.memory), as every flow task wants."""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import pandas as pd
import pyarrow as pa

from handover.config.loader import load_config
from handover.config.model import SourceConfig
from handover.core.contracts import Partition
from handover.core.memory import tune_arrow_pool
from handover.core.paths import PROJECT_ROOT
from handover.storage.lake import Lake, lake_from_url, part_key

log = logging.getLogger("handover")

# Arrow returns freed pages at once: set when the flows load, before any task allocates.
tune_arrow_pool()


SUITES_DIR = PROJECT_ROOT / "expectations"
META = ["_source_row"]


# ---------------------------------------------------------------- helpers
def _lake() -> Lake:
    return lake_from_url()


def _config(system: str) -> SourceConfig:
    """The checked config, re-read when a file changes (a fixed mapping + clear = new run)."""
    from handover.core.paths import CONFIG_ROOT

    folder = Path(system) if Path(system).is_dir() else CONFIG_ROOT / system
    stamp = tuple(p.stat().st_mtime_ns for p in sorted(folder.glob("*.yaml")))
    return _cached_config(system, stamp)


@lru_cache(maxsize=8)
def _cached_config(system: str, stamp: tuple) -> SourceConfig:
    return load_config(system)


def _read(lake: Lake, run_id: str, stage: str, table: str, partition: str) -> pd.DataFrame:
    return lake.read_table(part_key(run_id, stage, table, partition)).to_pandas()


def _write(
    lake: Lake, run_id: str, stage: str, table: str, partition: str, df: pd.DataFrame
) -> None:
    lake.write_table(
        part_key(run_id, stage, table, partition), pa.Table.from_pandas(df, preserve_index=False)
    )


def _part(part: Partition, **counts: Any) -> Partition:
    # the counts are the stage's own (Partition names them); cast: mypy cannot check **counts
    return cast(Partition, {"table": part["table"], "partition": part["partition"], **counts})


# ---------------------------------------------------------------- plan
def manifest_sha256(source_dir: str, table: str) -> str | None:
    """The sha256 the export's manifest gives a table's file, read now: a re-export (new
    files, new manifest) cleared into a run passes, a file edited since its manifest
    does not."""
    try:
        entry = json.loads((Path(source_dir) / "export_manifest.json").read_text(encoding="utf-8"))[
            "tables"
        ][table]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return entry.get("sha256") if isinstance(entry, dict) else None


def flatten(lists: list[list[Partition]]) -> list[Partition]:
    return [p for sub in lists for p in sub]


def parent_tables(cfg: SourceConfig) -> list[str]:
    """Tables resolved once per run: parents of other tables, and any table de-duplicated
    across partitions (survivorship needs the whole table even without children)."""
    rules = cfg.cleansing["tables"]
    return sorted(
        {r["parent"]["table"] for r in rules.values() if r.get("parent")}
        | {t for t, r in rules.items() if r.get("dedupe")}
    )


# Merged records that win fields of the target's customer (identity survivorship) travel
# beside a partition's rows, through map, protect and the gates, to the load.
ADOPT = {"cleanse": "cleanse/_adopt", "mapped": "mapped/_adopt"}
#: Source column that versions a row of a table; tables without one are append-only events.
VERSION_COLUMNS = {"subscribers": "updated_at", "consents": "granted_at"}


def version_column(cfg: SourceConfig, table: str) -> str | None:
    """The target column that versions a table's rows (mapped from VERSION_COLUMNS)."""
    src = VERSION_COLUMNS.get(table)
    if src is None:
        return None
    return next(
        (f for f, s in cfg.table_mapping(table)["fields"].items() if s.get("from") == src), None
    )
