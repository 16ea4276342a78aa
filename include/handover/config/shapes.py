"""Where each source table's key, customer and event time live, in source and target:
derived from a system's catalog, mapping and policy, used by reconciliation, identity,
retention and data-subject requests."""

from __future__ import annotations

from dataclasses import dataclass

from handover.config.model import SourceConfig
from handover.core.errors import LifecycleError


@dataclass(frozen=True)
class Shape:
    """Where one source table's key, customer and event time live, in source and target."""

    table: str
    key: str  # source key column
    customer: str | None  # source customer column
    event: str | None  # source event-time column
    event_format: str | None
    target: str  # crm table
    target_key: str
    target_customer: str | None
    target_event: str | None
    retention_months: int | None
    category: str


def shapes(cfg: SourceConfig) -> dict[str, Shape]:
    """Every table's shape, by source table name."""
    out = {}
    for table in cfg.tables:
        spec, tmap = cfg.table(table), cfg.table_mapping(table)
        by_source = {f["from"]: name for name, f in tmap["fields"].items()}
        event = spec.get("event_time")
        customer = spec.get("customer_column")
        out[table] = Shape(
            table=table,
            key=spec["key"],
            customer=customer,
            event=event,
            event_format=cfg.rules(table).get("dates", {}).get(event) if event else None,
            target=tmap["target"],
            target_key=tmap["key"],
            target_customer=by_source.get(customer) if customer else None,
            target_event=by_source.get(event) if event else None,
            retention_months=cfg.category_policy(table).get("retention_months"),
            category=spec["category"],
        )
    return out


def customer_table(cfg: SourceConfig) -> str:
    """The source table whose key is the customer id (subscribers)."""
    for table in cfg.tables:
        spec = cfg.table(table)
        if spec.get("customer_column") == spec["key"]:
            return table
    raise LifecycleError("catalog.yaml: no table whose key is its customer_column")
