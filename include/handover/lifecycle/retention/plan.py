"""Where destruction looks and what it destroys: the lake's table partitions and their
columns, keys as the target holds them, the keyed hash a destroyed key leaves behind,
and the destruction plan (the list of keys, kept in the lake, never in XCom).

Every step of a destruction (find, destroy, verify, certify) and erasure
(handover.lifecycle.subject) share these.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

from handover.config.shapes import Shape
from handover.core.errors import LifecycleError
from handover.lifecycle.lake_purge import purge
from handover.storage.layout import safe_run_id
from handover.storage.objects import Lake

PLAN_PREFIX = "lifecycle/destruction"
DESTROYED = "destroyed:"


def lake_partitions(lake: Lake, cfg) -> Iterator[tuple[str, str, str]]:
    """(object key, stage, table) of every table partition of every run in the lake."""
    for key in lake.list("runs/"):
        if not key.endswith(".parquet"):
            continue
        parts = key.split("/")
        if len(parts) == 4 and parts[2] == "resolve":
            table, stage = parts[3].removesuffix(".parquet").removesuffix(".adopt"), "resolve"
        elif len(parts) >= 5 and parts[-1].startswith("part-"):
            table, stage = parts[-2], "/".join(parts[2:-2])
        else:
            continue
        if table in cfg.tables:
            yield key, stage, table


def columns_for(shape: Shape, stage: str, names: list[str]) -> tuple[str | None, ...]:
    """(key, customer, event, event format) columns of a partition, by its naming."""
    if stage == "resolve":
        return "key", "key" if shape.customer == shape.key else None, None, None
    if shape.key in names:
        return shape.key, shape.customer, shape.event, shape.event_format
    if shape.target_key in names:
        return shape.target_key, shape.target_customer, shape.target_event, None
    return None, None, None, None


def normalise(arr):
    """Keys as the target holds them: NFKC, trimmed (raw copies may be full-width)."""
    import pyarrow as pa

    from handover.core.validators import normalise_text

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return normalise_text(arr.cast(pa.string()))


def key_digest(ring, table: str, key: str) -> str:
    """The keyed hash under which a destroyed key appears in certificates and the books."""
    return hmac.new(
        ring.hmac_key, f"handover-destruction|{table}|{key}".encode(), hashlib.sha256
    ).hexdigest()


def _as_of(value: Any) -> date:
    if value in (None, ""):
        return datetime.now(UTC).date()
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError as exc:
        raise LifecycleError(f"as_of {value!r}: use a date like 2027-01-31") from exc


def plan_prefix(run_id: str) -> str:
    return f"{PLAN_PREFIX}/{safe_run_id(run_id)}/plan/"


def write_plan(
    lake: Lake, run_id: str, keys: dict[str, set[str]], customers: set[str] | None = None
) -> dict:
    """The destruction list, in the lake (never XCom): one Parquet file per table."""
    import pyarrow as pa

    prefix = plan_prefix(run_id)
    purge(lake, prefix)
    for table, values in keys.items():
        lake.write_table(
            f"{prefix}{table}.parquet", pa.table({"key": pa.array(sorted(values), pa.string())})
        )
    if customers:
        lake.write_table(
            f"{prefix}_customers.parquet",
            pa.table({"key": pa.array(sorted(customers), pa.string())}),
        )
    return {"tables": {t: len(v) for t, v in keys.items()}}


def read_plan(lake: Lake, run_id: str) -> tuple[dict[str, set[str]], set[str]]:
    prefix = plan_prefix(run_id)
    keys: dict[str, set[str]] = {}
    customers: set[str] = set()
    for k in lake.list(prefix):
        name = k.rsplit("/", 1)[-1].removesuffix(".parquet")
        values = set(lake.read_table(k)["key"].to_pylist())
        if name == "_customers":
            customers = values
        else:
            keys[name] = values
    return keys, customers
