"""The records that travel between tasks through XCom: a run's context and a partition's
manifest. Small by rule: names, paths and counts, never a row or a personal value
(docs/architecture.md). At run time they are plain dicts (XCom serialises them as JSON);
these types let mypy check every stage that reads or writes one."""

from __future__ import annotations

from typing import Required, TypedDict


class RunContext(TypedDict, total=False):
    """What `plan_run` (migration) or `plan_night` (nightly sync) decided for one run."""

    run_id: Required[str]
    system: Required[str]
    source_dir: str
    exported_at: str
    tables: list[str]
    manifest_rows: dict[str, int | None]
    # the nightly sync only
    dag_id: str
    changes_dir: str
    state_dir: str
    interval_start: str
    interval_end: str
    files: dict[str, dict[str, str]]
    deleted_rows: dict[str, int]


class Partition(TypedDict, total=False):
    """One table partition as a stage hands it on: where it is and what the stage counted."""

    table: Required[str]
    partition: Required[str]
    rows: int
    rows_in: int
    rows_out: int
    excluded: int
    quarantined: int
    merged: int
    inserted: int
    updated: int
    unchanged: int
    skipped_older: int
    fields_adopted: int
    balanced: bool
    # a gate's result
    gate: str
    docs_path: str
    # load: how the rows went in (handover.db.load)
    stale: int
    removed: int
    method: str
    superseded_by: str
    tombstoned: int


class TableResult(TypedDict, total=False):
    """A table-level step's outcome (reconcile, apply deletions)."""

    table: Required[str]
    partition: str  # 'all', or the deletion records' partition
    ok: bool
    ledger_balances: bool
    docs_path: str
    balanced: bool
    differing: int  # nightly reconciliation: keys where old and new differ
    # apply deletions (handover.db.load.delete_keys)
    rows: int
    deleted: int
    absent: int
    superseded: int
