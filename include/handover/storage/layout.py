"""Where things lie in the lake: the default local folder and the key of a stage's partition.

The lowest module of the lake: the objects (`handover.storage.objects`), the working-set keys
(`handover.storage.lake_crypto`) and the callers all name runs and partitions through it.
"""

from __future__ import annotations

import re

from handover.core.paths import PROJECT_ROOT

DEFAULT_LAKE = PROJECT_ROOT / ".state" / "lake"


def safe_run_id(run_id: str) -> str:
    """Airflow run ids hold ':' and '+'; keep them readable but path-safe."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)


def part_key(run_id: str, stage: str, table: str, partition: str) -> str:
    return f"runs/{safe_run_id(run_id)}/{stage}/{table}/part-{partition}.parquet"
