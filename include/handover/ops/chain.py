"""The gated chain, wired once for both flows, and the DAG header every DAG shares.

``customer_migration`` and ``nightly_sync`` run the same chain over their partitions:

    intake gate → comply → compliance gate → resolve customers → cleanse →
    quality gate → map + protect → contract gate → load

:func:`gated_chain` builds its tasks from the steps a flow passes by reference
(:data:`handover.flows.steps.MIGRATION` or :data:`~handover.flows.steps.NIGHT`, whose
in-process runners run the very same steps in the same order); each DAG adds only what is
its own before (plan, extract) and after (deletions, reconcile, publish). The tasks sit
at the DAG's top level, not in an Airflow TaskGroup: a group starts collapsed in the
grid, and on-call would have to open it to see which gate is red (``validate_intake``,
``comply``, ``load`` appear in the grid, the runbook and the plugin as they always did).

Every task body goes through :func:`handover.ops.tasks.call`: known failures become one
line and fail without retry, transient ones are retried. Gates never retry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from airflow.sdk import task

from handover.core.contracts import Partition, RunContext
from handover.flows.gated_chain import ChainSteps, GateStep, PartStep
from handover.ops.tasks import DEFAULT_ARGS

#: a mapped task's label in the grid: ``table/partition``
LABEL = "{{ part_label }}"
#: the order of the gates between the stages (the reconciliation gate is per table)
GATES = ("intake", "compliance", "quality", "contract")


def part_label(part: Mapping[str, Any]) -> str:
    """How a partition is named in the grid, the logs and the ledger: ``table/partition``."""
    return f"{part['table']}/{part['partition']}"


def dag_header(
    dag_id: str,
    doc_md: str | None,
    *,
    start_date: datetime,
    tags: list[str],
    params: dict[str, Any],
    catchup: bool = False,
) -> dict[str, Any]:
    """The ``@dag`` arguments every handover DAG shares: one run at a time, handover's
    default args (retries with backoff, one notification per failed task), the tag
    ``handover`` first, the module docstring as the DAG's docs. The schedule stays in the
    DAG file, where a reader looks for it: ``@dag(schedule=..., **dag_header(...))``."""
    return {
        "dag_id": dag_id,
        "doc_md": doc_md,
        "start_date": start_date,
        "catchup": catchup,
        "max_active_runs": 1,
        "default_args": DEFAULT_ARGS,
        "tags": ["handover", *tags],
        "params": params,
    }


def gate_task(name: str, fn: GateStep) -> Any:
    """The gate ``validate_<name>`` over one partition; never retried (a data fault)."""

    @task(task_id=f"validate_{name}", retries=0, map_index_template=LABEL)
    def _gate(ctx: RunContext, part: Partition) -> Partition:
        from handover.ops import tasks

        result: Partition = tasks.call(fn, ctx, part, name, label=part_label(part))
        return result

    return _gate


def partition_task(task_id: str, fn: PartStep) -> Any:
    """A stage over one partition, labelled ``table/partition`` in the grid."""

    @task(task_id=task_id, map_index_template=LABEL)
    def _stage(ctx: RunContext, part: Partition) -> Partition:
        from handover.ops import tasks

        result: Partition = tasks.call(fn, ctx, part, label=part_label(part))
        return result

    return _stage


def table_task(task_id: str, fn: Callable[[RunContext, str], Any], **kwargs: Any) -> Any:
    """A step over one table (after the load): labelled with the table's name."""

    @task(task_id=task_id, map_index_template=LABEL, **kwargs)
    def _table(ctx: RunContext, table: str, after: Any = None) -> Any:
        from handover.ops import tasks

        return tasks.call(fn, ctx, table, label=table)

    return _table


def gated_chain(ctx: Any, parts: Any, steps: ChainSteps) -> Any:
    """Wire the gated chain over ``parts`` (an XCom list of partitions) in the current DAG;
    return the ``load`` task's mapped output (one manifest per partition)."""
    intake = gate_task("intake", steps.gate).partial(ctx=ctx).expand(part=parts)
    complied = partition_task("comply", steps.comply).partial(ctx=ctx).expand(part=intake)
    compliant = gate_task("compliance", steps.gate).partial(ctx=ctx).expand(part=complied)
    resolved = _resolve_task(steps.resolve_customers)(ctx, compliant)
    cleansed = partition_task("cleanse", steps.cleanse).partial(ctx=ctx).expand(part=compliant)
    resolved >> cleansed
    quality = gate_task("quality", steps.gate).partial(ctx=ctx).expand(part=cleansed)
    mapped = partition_task("map_protect", steps.map_protect).partial(ctx=ctx).expand(part=quality)
    contract = gate_task("contract", steps.gate).partial(ctx=ctx).expand(part=mapped)
    return partition_task("load", steps.load).partial(ctx=ctx).expand(part=contract)


def reconcile_and_publish(
    ctx: Any,
    tables: Any,
    after: Any,
    *,
    reconcile: Callable[[RunContext, str], Any],
    gate: Callable[[RunContext, str], Any],
    publish: Callable[[RunContext], Any],
) -> Any:
    """Per table: ``reconcile_table`` then the gate ``validate_reconciliation``; then
    ``publish`` (report, Data Docs, the run marked succeeded) once every gate passed."""
    reconciled = (
        table_task("reconcile_table", reconcile).partial(ctx=ctx, after=after).expand(table=tables)
    )
    checked = _reconciliation_gate_task(gate).partial(ctx=ctx).expand(result=reconciled)
    return _publish_task(publish)(ctx, checked)


def list_tables_task() -> Any:
    """The run's tables, from its plan (what the table steps expand over)."""

    @task(task_id="list_tables")
    def list_tables(ctx: RunContext) -> list[str]:
        return list(ctx["tables"])

    return list_tables


def list_partitions_task(fn: Callable[[list[list[Partition]]], list[Partition]]) -> Any:
    """Every table's partitions in one list (what the gated chain expands over)."""

    @task(task_id="list_partitions")
    def list_partitions(parts: Any) -> list[Partition]:
        return fn(list(parts))

    return list_partitions


def _reconciliation_gate_task(fn: Callable[[RunContext, str], Any]) -> Any:
    @task(task_id="validate_reconciliation", retries=0, map_index_template=LABEL)
    def validate_reconciliation(ctx: RunContext, result: Mapping[str, Any]) -> Any:
        from handover.ops import tasks

        return tasks.call(fn, ctx, result["table"], label=result["table"])

    return validate_reconciliation


def _publish_task(fn: Callable[[RunContext], Any]) -> Any:
    @task(task_id="publish")
    def publish(ctx: RunContext, gates: Any) -> Any:
        from handover.ops import tasks

        return tasks.call(fn, ctx)

    return publish


def _resolve_task(fn: Callable[[RunContext], Any]) -> Any:
    @task(task_id="resolve_customers")
    def resolve_customers(ctx: RunContext, parts: Any) -> Any:
        from handover.ops import tasks

        return tasks.call(fn, ctx)

    return resolve_customers
