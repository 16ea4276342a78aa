"""Every step the two flows' DAGs run, by name, in one place.

The DAG files pass these functions to the gated chain (:mod:`handover.ops.chain`) by
reference. Each one imports its flow module when its task runs, not when the DAG file is
parsed: Airflow parses DAG files every few seconds, and the flows pull in pandas, pyarrow,
psycopg and Great Expectations (tests/unit/test_dag_parse.py keeps parsing free of them).
A tool follows each step to its body: the import names the module, the call names the
function.
"""

from __future__ import annotations

from typing import Any

from handover.core.contracts import Partition, RunContext, TableResult
from handover.flows.gated_chain import ChainSteps

# ---------------------------------------------------------------- shared by both flows


def run_gate(ctx: RunContext, part: Partition, gate: str) -> Partition:
    """A gate between two stages (intake, compliance, quality, contract) on one partition."""
    from handover.flows import migration

    return migration.run_gate_task(ctx, part, gate)


def cleanse(ctx: RunContext, part: Partition) -> Partition:
    """Cleanse one partition: normalise, type, quarantine what fails a rule."""
    from handover.flows import migration

    return migration.cleanse_partition(ctx, part)


def map_protect(ctx: RunContext, part: Partition) -> Partition:
    """Map one partition to the target's fields and protect its personal data."""
    from handover.flows import migration

    return migration.map_protect_partition(ctx, part)


def flatten(lists: list[list[Partition]]) -> list[Partition]:
    """The partitions of every table, one list (what the mapped stages expand over)."""
    from handover.flows import migration

    return migration.flatten(lists)


# ---------------------------------------------------------------- customer_migration


def plan_run(*, run_id: str, dag_id: str, system: str, source_dir: str) -> RunContext:
    """Check the export against its manifest and the config; open the run's books."""
    from handover.flows import migration

    return migration.plan_run(run_id=run_id, dag_id=dag_id, system=system, source_dir=source_dir)


def extract_table(ctx: RunContext, table: str) -> list[Partition]:
    """Read one exported table into the lake, in partitions."""
    from handover.flows import migration

    return migration.extract_table(ctx, table)


def comply(ctx: RunContext, part: Partition) -> Partition:
    """Consent, purpose and retention on one partition; excluded rows get a rule id."""
    from handover.flows import migration

    return migration.comply_partition(ctx, part)


def resolve_customers(ctx: RunContext) -> dict[str, Any]:
    """One person, one customer: match the export's customers to the target's."""
    from handover.flows import migration

    return migration.resolve_customers(ctx)


def load(ctx: RunContext, part: Partition) -> Partition:
    """Load one partition into the target (COPY, or keyed upsert on a rerun)."""
    from handover.flows import migration

    return migration.load_partition(ctx, part)


def reconcile(ctx: RunContext, table: str) -> TableResult:
    """Prove that what left the export arrived in the target, for one table."""
    from handover.flows import migration

    return migration.reconcile_table(ctx, table)


def reconciliation_gate(ctx: RunContext, table: str) -> TableResult:
    """The reconciliation gate for one table."""
    from handover.flows import migration

    return migration.reconciliation_gate(ctx, table)


def publish(ctx: RunContext) -> dict[str, Any]:
    """The run's report and Data Docs; the run marked succeeded."""
    from handover.flows import migration

    return migration.publish(ctx)


# ---------------------------------------------------------------- nightly_sync


def changes_dir(param: str | None) -> str:
    """The folder of the nightly change sets (run param, environment, or the demo's)."""
    from handover.flows import nightly

    return nightly.changes_dir(param)


def change_set_ready(changes_dir: str, data_interval_start: Any, data_interval_end: Any) -> bool:
    """For the sensor: has the legacy system delivered this night's change set?"""
    from handover.flows import nightly

    return nightly.change_set_ready(changes_dir, data_interval_start, data_interval_end)


def plan_night(
    *,
    dag_id: str,
    system: str,
    changes_dir: str,
    data_interval_start: Any,
    data_interval_end: Any,
    airflow_run_id: str | None = None,
) -> RunContext:
    """Check the night's change set and its place in the sequence; open the night's books."""
    from handover.flows import nightly

    return nightly.plan_night(
        dag_id=dag_id,
        system=system,
        changes_dir=changes_dir,
        data_interval_start=data_interval_start,
        data_interval_end=data_interval_end,
        airflow_run_id=airflow_run_id,
    )


def extract_changes(ctx: RunContext, table: str) -> list[Partition]:
    """Read one table's change set into the lake, in partitions."""
    from handover.flows import nightly

    return nightly.extract_changes(ctx, table)


def night_partitions(lists: list[list[Partition]]) -> list[Partition]:
    """The night's partitions of every table, one list."""
    from handover.flows import nightly

    return nightly.list_partitions(lists)


def night_comply(ctx: RunContext, part: Partition) -> Partition:
    """Comply for a night: the migration's rules plus what later nights deleted."""
    from handover.flows import nightly

    return nightly.comply_partition(ctx, part)


def night_resolve_customers(ctx: RunContext) -> dict[str, Any]:
    """One person, one customer, for the night's customers."""
    from handover.flows import nightly

    return nightly.resolve_customers(ctx)


def night_load(ctx: RunContext, part: Partition) -> Partition:
    """Load a night's partition: an older value never overwrites a newer one."""
    from handover.flows import nightly

    return nightly.load_partition(ctx, part)


def apply_deletions(ctx: RunContext, table: str) -> TableResult:
    """Delete in the target what the legacy system deleted that day."""
    from handover.flows import nightly

    return nightly.apply_deletions(ctx, table)


def night_reconcile(ctx: RunContext, table: str) -> TableResult:
    """Old vs new for one table, by segment hashes down to the differing keys."""
    from handover.flows import nightly

    return nightly.reconcile_table(ctx, table)


def night_reconciliation_gate(ctx: RunContext, table: str) -> TableResult:
    """The nightly reconciliation gate for one table."""
    from handover.flows import nightly

    return nightly.reconciliation_gate(ctx, table)


def night_publish(ctx: RunContext) -> dict[str, Any]:
    """The night's report and Data Docs; the night marked succeeded."""
    from handover.flows import nightly

    return nightly.publish(ctx)


# ---------------------------------------------------------------- the two chains

#: the migration's gated chain (customer_migration, flows.runner.run_migration)
MIGRATION = ChainSteps(
    gate=run_gate,
    comply=comply,
    resolve_customers=resolve_customers,
    cleanse=cleanse,
    map_protect=map_protect,
    load=load,
)
#: the night's gated chain (nightly_sync, flows.nightly.run_night): its own comply,
#: resolve and load (older never overwrites newer); cleanse, map + protect and the gates
#: are the migration's
NIGHT = ChainSteps(
    gate=run_gate,
    comply=night_comply,
    resolve_customers=night_resolve_customers,
    cleanse=cleanse,
    map_protect=map_protect,
    load=night_load,
)
