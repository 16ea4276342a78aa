"""The customer migration's task bodies: one function per task, no Airflow needed.

The DAG file only wires these together. Each function reads its input partition from
the lake, writes its own output prefix (overwriting, so reruns are idempotent),
records its counts in the ledger, and returns a small manifest (table, partition,
counts) for XCom. No row and no PII is ever returned or logged.

This module holds the run's planning and extract; the other task bodies live beside it
(gating, migration_comply, migration_resolve, cleansing, migration_load, publishing) and
are re-exported here, so `handover.flows.migration` names every task of the migration.
Nothing in the library imports through this re-export: it is for DAGs, scripts and tests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from handover.config.model import SourceConfig
from handover.core.contracts import Partition, RunContext
from handover.core.errors import GateFailed, SourceError
from handover.db import ledger
from handover.flows.cleansing import cleanse_partition, map_protect_partition
from handover.flows.common import (
    META,
    SUITES_DIR,
    _config,
    _lake,
    flatten,
    manifest_sha256,
    parent_tables,
)
from handover.flows.gating import (
    GATE_INPUT,
    MAX_EXCLUDED_SHARE,
    MAX_QUARANTINE_SHARE,
    MIN_LOADED_SHARE,
    MIN_QUARANTINED_FOR_SHARE,
    NOT_FORMAT_REASONS,
    _gate_frame,
    reconciliation_gate,
    run_gate_task,
    suites_dir_for,
)
from handover.flows.migration_comply import _policy_facts, comply_partition
from handover.flows.migration_load import (
    load_adopted,
    load_partition,
    newer_writer,
    reconcile_table,
)
from handover.flows.migration_resolve import resolve_customers
from handover.flows.partitioner import (
    MAX_PARTITION_BYTES,
    MAX_PARTITION_ROWS,
    SLICE_ROWS,
    SPLIT_BYTES,
    HashSplit,
    _drop_dir,
    partition_count,
)
from handover.flows.publishing import publish, report_failed_run
from handover.storage.lake import part_key

# The migration's whole API, for DAGs, scripts and tests (the library imports each name
# from the module that defines it).
__all__ = [
    "GATE_INPUT",
    "MAX_EXCLUDED_SHARE",
    "MAX_PARTITION_BYTES",
    "MAX_PARTITION_ROWS",
    "MAX_QUARANTINE_SHARE",
    "META",
    "MIN_LOADED_SHARE",
    "MIN_QUARANTINED_FOR_SHARE",
    "NOT_FORMAT_REASONS",
    "SLICE_ROWS",
    "SPLIT_BYTES",
    "SUITES_DIR",
    "GateFailed",
    "HashSplit",
    "SourceConfig",
    "SourceError",
    "_config",
    "_gate_frame",
    "_lake",
    "_policy_facts",
    "cleanse_partition",
    "comply_partition",
    "extract_table",
    "flatten",
    "ledger",
    "load_adopted",
    "load_partition",
    "manifest_sha256",
    "map_protect_partition",
    "newer_writer",
    "parent_tables",
    "part_key",
    "partition_count",
    "plan_run",
    "publish",
    "reconcile_table",
    "reconciliation_gate",
    "report_failed_run",
    "resolve_customers",
    "run_gate_task",
    "suites_dir_for",
]

log = logging.getLogger("handover")


def plan_run(*, run_id: str, dag_id: str, system: str, source_dir: str) -> RunContext:
    """Check config and inputs before anything touches the target, then open the run."""
    cfg = _config(system)
    src = Path(source_dir)
    manifest_path = src / "export_manifest.json"
    if not manifest_path.is_file():
        raise SourceError(
            f"{manifest_path}: export manifest not found; point the run's "
            "source_dir at a legacy export (python -m handover_synth.legacy_bss makes one)"
        )
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
        from handover.stages.cleanse import export_time

        exported_at = export_time(manifest["exported_at"])
    except (ValueError, KeyError) as exc:
        raise SourceError(f"{manifest_path}: needs JSON with 'exported_at' ({exc})") from exc
    from handover.core.errors import SourceReadError
    from handover.sources.folder import check_export_files

    try:  # every file a table reads is there, and no export file is left unread
        check_export_files(
            cfg.catalog["tables"],
            src,
            manifest,
            catalog=cfg.directory / "catalog.yaml",
            ignore=cfg.catalog.get("ignore", ()),
        )
    except SourceReadError as exc:
        raise SourceError(str(exc)) from exc
    with ledger.connect() as conn:
        ledger.ensure_schema(conn)
        with conn.transaction():
            conn.execute(
                "INSERT INTO handover_meta.run (run_id, dag_id, source_system, source_manifest, "
                "exported_at, kind) VALUES (%s, %s, %s, %s, %s, 'migration') ON CONFLICT "
                "(run_id) DO UPDATE SET status = 'running', finished_at = NULL",
                (
                    run_id,
                    dag_id,
                    cfg.system,
                    hashlib.sha256(raw).hexdigest(),
                    exported_at.to_pydatetime(),
                ),
            )
            ledger.audit(
                conn,
                "run_started",
                run_id=run_id,
                detail={"dag_id": dag_id, "system": cfg.system, "source": str(src)},
            )
    log.info("run %s planned: %d tables from %s", run_id, len(cfg.tables), src)
    return {
        "run_id": run_id,
        "system": system,
        "source_dir": str(src),
        "exported_at": str(exported_at),
        "tables": cfg.tables,
        "manifest_rows": {t: v.get("rows") for t, v in manifest.get("tables", {}).items()},
    }


def extract_table(ctx: RunContext, table: str) -> list[Partition]:
    """Stream one source table (CSV, Parquet or SQL, as its catalog source block says) into
    hash partitions of raw Parquet (all values as text)."""
    import tempfile

    from handover.core.errors import SourceReadError
    from handover.core.progress import Progress
    from handover.sources.open import open_source

    cfg = _config(ctx["system"])
    spec = cfg.table(table)
    expected = ctx.get("manifest_rows", {}).get(table)
    key = spec["key"]
    lake, run_id = _lake(), ctx["run_id"]
    started = time.monotonic()
    from handover.storage.lake_crypto import refuse_destroyed

    refuse_destroyed(lake, run_id)

    try:
        source = open_source(table, spec, ctx["source_dir"])
    except SourceReadError as exc:
        raise SourceError(str(exc)) from exc
    tmp = Path(tempfile.mkdtemp(prefix=f"extract-{table}-"))
    split: HashSplit | None = None
    try:
        with source:
            header = source.columns
            n_parts = partition_count(cfg.partitions(table), expected, source.text_bytes)
            if key not in header:
                where = " line 1" if source.what_columns == "header" else ""
                raise SourceError(
                    f"{source.location}{where}: key column '{key}' of table {table} "
                    f"is missing from the {source.what_columns}; fix the export or "
                    f"catalog.yaml tables.{table}.key"
                )
            split = HashSplit(
                tmp,
                header,
                key,
                n_parts,
                options=lambda i: lake.parquet_options(part_key(run_id, "raw", table, f"p{i:02d}")),
                folds=cfg.key_folds(table),
            )
            progress = Progress(f"extract {table}", total=expected, logger=log)
            for batch in source.batches():
                split.add(batch)
                progress.add(batch.num_rows)
            split.close()
        sha = source.fingerprint()
        pieces = getattr(source, "parts", None)
        files = [p.name for p in pieces] if pieces is not None else None
        # The export is what the operator sealed in its manifest, byte for byte: a file
        # changed after export (same row count, other amounts) stops here, before anything
        # reaches the lake or the ledger.
        want = manifest_sha256(ctx["source_dir"], table)
        if want and pieces is None and sha != want.lower():
            raise SourceError(
                f"{source.location}: sha256 {sha[:12]}… differs from the export manifest's "
                f"{want[:12]}…: the file was changed after export (or the manifest is wrong); "
                "get the export again from the operator, do not edit it"
            )
    except SourceReadError as exc:
        _drop_dir(tmp, split)
        raise SourceError(str(exc)) from exc
    except BaseException:
        _drop_dir(tmp, split)
        raise

    parts: list[Partition] = []
    try:  # the temporary copy holds raw rows (PII): it goes whatever happens
        with ledger.connect() as conn, conn.transaction():
            from handover.lifecycle.retention.run_end import forget_purged

            forget_purged(conn, lake, run_id, table)
            for i in range(n_parts):
                partition = f"p{i:02d}"
                # from the file: a partition's Parquet bytes never sit in memory here
                lake.put_file(part_key(run_id, "raw", table, partition), split.paths[i])
                detail: dict[str, Any] = {"source_file": source.name, "source_sha256": sha}
                if files is not None:  # a `files:` glob: which files it matched
                    detail["source_files"] = files
                ledger.record(
                    conn,
                    run_id=run_id,
                    table=table,
                    partition=partition,
                    stage="extract",
                    rows_in=split.counts[i],
                    rows_out=split.counts[i],
                    checksum=split.checksum(i),
                    detail=detail,
                )
                parts.append({"table": table, "partition": partition, "rows": split.counts[i]})
    finally:
        _drop_dir(tmp, None)
    if expected is not None and expected != split.rows:
        raise SourceError(
            f"{source.location}: read {split.rows} rows but the export manifest "
            f"says {expected}; the source is truncated or was changed after export"
        )
    log.info(
        "extract %s: %d rows into %d partitions in %.1fs",
        table,
        split.rows,
        n_parts,
        time.monotonic() - started,
    )
    return parts
