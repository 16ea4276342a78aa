"""The customer migration's task bodies: one function per task, no Airflow needed.

The DAG file only wires these together. Each function reads its input partition from
the lake, writes its own output prefix (overwriting, so reruns are idempotent),
records its counts in the ledger, and returns a small manifest (table, partition,
counts) for XCom. No row and no PII is ever returned or logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from handover.config.loader import SourceConfig, load_config
from handover.core.errors import GateFailed, SourceError
from handover.core.paths import PROJECT_ROOT
from handover.db import ledger
from handover.storage.lake import PARQUET_OPTIONS, Lake, lake_from_url, part_key, safe_run_id

log = logging.getLogger("handover")

#: jemalloc (Arrow's pool, see handover/__init__.py) keeps pages a task freed for a while
#: before it gives them back; a stage frees and allocates a partition's worth of buffers
#: several times within a second, so the pages kept piled up on the task's peak. Returned at
#: once, the peaks of the partition-bound tasks at 10 M call records fell by 16-93 MB
#: (docs/performance.md). HANDOVER_ARROW_DECAY_MS sets another delay.
ARROW_DECAY_MS = int(os.environ.get("HANDOVER_ARROW_DECAY_MS", "0"))
if pa.default_memory_pool().backend_name == "jemalloc":
    pa.jemalloc_set_decay_ms(ARROW_DECAY_MS)


SUITES_DIR = PROJECT_ROOT / "expectations"
META = ["_source_row"]


# ---------------------------------------------------------------- helpers
def _lake() -> Lake:
    return lake_from_url()


def _config(system: str) -> SourceConfig:
    """The checked config, re-read when a file changes (a fixed mapping + clear = new run)."""
    from handover.config.loader import CONFIG_ROOT

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


#: Rows comply, resolve and cleanse turn into pandas and work on at a time within a
#: partition. They hold several typed and text forms of each row they work on; in slices,
#: what a task holds grows with the slice, not with the partition (what they keep of each
#: slice is Arrow, about the size of the input).
SLICE_ROWS = int(os.environ.get("HANDOVER_SLICE_ROWS", "50000"))


def _part(part: dict, **counts: Any) -> dict:
    return {"table": part["table"], "partition": part["partition"], **counts}


def _date_format(cfg: SourceConfig, table: str, column: str | None) -> str | None:
    if column is None:
        return None
    return cfg.rules(table).get("dates", {}).get(column)


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


def plan_run(*, run_id: str, dag_id: str, system: str, source_dir: str) -> dict:
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
    from handover.sources.readers import SourceReadError, check_export_files

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


# ---------------------------------------------------------------- extract
# The partition is the unit of memory and of Airflow's per-task cost (~0.14-0.2 s a task
# instance, eight task instances a partition). Stages that can stream hold a 50,000-row
# slice, not the partition; what does hold a partition (the gates' frames, the key
# columns) keeps the largest task under 0.8 GB at this bound. A table near the bound
# fills its partitions near it at every size (1 M call records: one partition; 10 M:
# ten), so the largest task does not grow with the export; at 1,200,000 the 10 M-row
# partitions were 11 % fuller than the 1 M-row one and the peak grew 17 %.
# docs/performance.md has the trade measured from 260,000 to 1,200,000.
MAX_PARTITION_ROWS = int(os.environ.get("HANDOVER_MAX_PARTITION_ROWS", "1050000"))
# Rows alone do not bound a partition: 1,050,000 subscribers (165 bytes a row in the
# export) weigh twice 1,050,000 call records (90 bytes).
MAX_PARTITION_BYTES = int(os.environ.get("HANDOVER_MAX_PARTITION_BYTES", str(120 << 20)))


SPLIT_BYTES = 16 << 20  # source rows gathered before one hash split across partitions


def partition_count(
    configured: int, expected_rows: int | None, text_bytes: int | None = None
) -> int:
    """At least the catalog's count, more when the table is big: each partition (the unit of
    memory, retry and parallelism) stays under MAX_PARTITION_ROWS rows and, where the export
    is delimited text, under MAX_PARTITION_BYTES of it."""
    by_rows = -(-expected_rows // MAX_PARTITION_ROWS) if expected_rows else 0
    by_bytes = -(-text_bytes // MAX_PARTITION_BYTES) if text_bytes else 0
    return max(configured, by_rows, by_bytes)


class HashSplit:
    """Rows into `n_parts` raw Parquet files in `folder`, by a hash of their key as cleanse
    will see it (NFKC, trimmed), so that spellings of one key meet in one partition and are
    caught there as DUPLICATE_KEY. Keeps rows and a key-hash sum per partition (the
    ledger's extract checksum). The migration's extract and the nightly sync's share it.

    Batches (all columns text, plus `_source_row`) are gathered to SPLIT_BYTES before one
    split, so that each partition's file gets row groups of thousands of rows, not
    hundreds; the split is one `take` sorted by partition, then a slice per partition."""

    def __init__(
        self,
        folder: Path,
        columns: list[str],
        key: str,
        n_parts: int,
        options: Callable[[int], dict] | None = None,
        folds: dict[str, str] | None = None,
    ) -> None:
        """`options(i)`: the Parquet writer options of partition i, from the lake
        (`lake.parquet_options(key)`: encrypted under the raw stage's key), so the
        temporary files that hold raw rows on local disk are never plain Parquet.
        `folds` ({column: upper|lower}, SourceConfig.key_folds): key columns written
        normalised and case-folded, so every stage sees one spelling of a key."""
        import pyarrow.parquet as pq

        self.key, self.n_parts = key, n_parts
        self.folds = {c: f for c, f in (folds or {}).items() if c in columns}
        self.paths = [folder / f"{i}.parquet" for i in range(n_parts)]
        self.counts = [0] * n_parts
        self.rows = 0
        self._sums = [0] * n_parts
        self._pending: list[pa.RecordBatch] = []
        self._pending_bytes = 0
        schema = pa.schema([(c, pa.string()) for c in columns] + [("_source_row", pa.int64())])
        self._writers: list = []
        try:
            for path in self.paths:
                opts = options(len(self._writers)) if options else PARQUET_OPTIONS
                self._writers.append(pq.ParquetWriter(path, schema, **opts))
        except BaseException:
            self.close(flush=False)
            raise

    def add(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        self._pending.append(batch)
        self._pending_bytes += batch.nbytes
        if self._pending_bytes >= SPLIT_BYTES:
            self._flush()

    def checksum(self, i: int) -> str:
        return f"{self._sums[i]:016x}"

    def close(self, flush: bool = True) -> None:
        """Split what is gathered (unless `flush` is false: a failed read) and close every
        file; safe to call twice."""
        try:
            if flush:
                self._flush()
        finally:
            self._pending = []
            for w in self._writers:
                w.close()
            self._writers = []

    def _flush(self) -> None:
        import numpy as np

        from handover.core.validators import normalise_key, normalise_text

        if not self._pending:
            return
        batch = pa.Table.from_batches(self._pending).combine_chunks().to_batches()[0]
        self._pending, self._pending_bytes = [], 0
        for col, case in self.folds.items():
            i = batch.schema.get_field_index(col)
            batch = batch.set_column(i, col, normalise_key(batch.column(i), case))
        keys = normalise_text(batch.column(self.key)).to_numpy(zero_copy_only=False)
        hashed = pd.util.hash_array(keys, categorize=False)
        pid = (hashed % np.uint64(self.n_parts)).astype(np.int64)
        order = np.argsort(pid, kind="stable")
        bounds = np.searchsorted(pid[order], np.arange(self.n_parts + 1))
        grouped = batch.take(pa.array(order))
        for i in range(self.n_parts):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            if hi > lo:
                self._writers[i].write_batch(grouped.slice(lo, hi - lo))
                self.counts[i] += hi - lo
                self._sums[i] = (
                    self._sums[i] + int(np.sum(hashed[order[lo:hi]], dtype=np.uint64))
                ) % 2**64


def extract_table(ctx: dict, table: str) -> list[dict]:
    """Stream one source table (CSV, Parquet or SQL, as its catalog source block says) into
    hash partitions of raw Parquet (all values as text)."""
    import tempfile

    from handover.core.progress import Progress
    from handover.sources.readers import SourceReadError, open_source

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

    parts = []
    try:  # the temporary copy holds raw rows (PII): it goes whatever happens
        with ledger.connect() as conn, conn.transaction():
            from handover.lifecycle.retention import forget_purged

            forget_purged(conn, lake, run_id, table)
            for i in range(n_parts):
                partition = f"p{i:02d}"
                # from the file: a partition's Parquet bytes never sit in memory here
                lake.put_file(part_key(run_id, "raw", table, partition), split.paths[i])
                detail = {"source_file": source.name, "source_sha256": sha}
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


def _drop_dir(tmp: Path, split: HashSplit | None) -> None:
    import shutil

    if split is not None:
        split.close(flush=False)
    shutil.rmtree(tmp, ignore_errors=True)


def suites_dir_for(system: str, gate: str, table: str) -> Path:
    """Where a gate's suite lives: expectations/<system>/<gate>/<table>.json, else the shared
    expectations/<gate>/<table>.json (the layout before per-system folders)."""
    per_system = SUITES_DIR / _config(system).system
    if (per_system / gate / f"{table}.json").is_file():
        return per_system
    return SUITES_DIR


def flatten(lists: list[list[dict]]) -> list[dict]:
    return [p for sub in lists for p in sub]


# ---------------------------------------------------------------- gates
GATE_INPUT = {"intake": "raw", "compliance": "comply", "quality": "cleanse", "contract": "mapped"}


def _validate(frame: pd.DataFrame, ctx: dict, gate: str, table: str, partition: str):
    """Run one gate, publish its docs page, record its result (counts only); raise on breach."""
    from handover.gates.suites import run_gate

    run_id, lake = ctx["run_id"], _lake()
    docs_dir = docs_dir_for(lake, run_id)
    result = run_gate(
        frame,
        gate=gate,
        table=table,
        partition=partition,
        run_id=run_id,
        suites_dir=suites_dir_for(ctx["system"], gate, table),
        docs_dir=docs_dir,
    )
    publish_docs(lake, run_id, docs_dir)
    with ledger.connect() as conn, conn.transaction():
        conn.execute(
            "INSERT INTO handover_meta.gate_result (run_id, gate, table_name, partition, success, "
            "evaluated, rows, failed, docs_path) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) "
            "ON CONFLICT (run_id, gate, table_name, partition) DO UPDATE SET "
            "success=excluded.success, evaluated=excluded.evaluated, rows=excluded.rows, "
            "failed=excluded.failed, docs_path=excluded.docs_path, checked_at=now()",
            (
                run_id,
                gate,
                table,
                partition,
                result.success,
                result.evaluated,
                result.rows,
                json.dumps(result.to_manifest().get("failed", [])),
                result.docs_path,
            ),
        )
    summary = result.summary()
    if result.docs_path:
        page = f"runs/{safe_run_id(run_id)}/docs/{result.docs_path}"
        summary = summary.replace(
            f"see {result.docs_path}", f"see {lake.uri(page)} (UI: {ui_url('handover/' + page)})"
        )
    log.info(summary)
    if not result.success:
        raise GateFailed(summary)
    return result


def _gate_frame(ctx: dict, gate: str, table: str, partition: str) -> pd.DataFrame:
    """What the gate validates: the stage's output, with real values only in the columns
    some expectation of the suite reads. The others keep their name, type and row count
    (all the suite can see of them) as all-null Arrow columns, so they cost no decoding
    and no Python objects: most intake and contract suites read a column or two of ten."""
    from handover.gates.suites import load_suite, read_columns

    key = part_key(ctx["run_id"], GATE_INPUT[gate], table, partition)
    needed = read_columns(load_suite(suites_dir_for(ctx["system"], gate, table), gate, table))
    frame = _gate_part(key, needed)
    side = part_key(ctx["run_id"], ADOPT.get(GATE_INPUT[gate], "-"), table, partition)
    if GATE_INPUT[gate] in ADOPT and _lake().exists(side):
        # merged records whose fields the target's customer takes are gated like the rows
        frame = pd.concat([frame, _gate_part(side, needed)[frame.columns]], ignore_index=True)
    return frame


def _gate_part(key: str, needed: set[str] | None) -> pd.DataFrame:
    if needed is None:
        df = _lake().read_table(key).to_pandas()
        return df.drop(columns=[c for c in (*META, "_into", "_fields") if c in df.columns])
    data, schema = _lake().read_projected(key, sorted(needed))
    df = data.to_pandas()
    cols = {}
    for f in schema:
        if f.name in META or f.name in ("_into", "_fields"):
            continue
        cols[f.name] = (
            df[f.name]
            if f.name in df.columns
            else pd.Series(
                pd.arrays.ArrowExtensionArray(pa.nulls(data.num_rows, f.type)), index=df.index
            )
        )
    return pd.DataFrame(cols, index=df.index)


# A partition whose cleanse quarantined more than this share of its rows fails the quality
# gate (catalog.yaml tables.<t>.max_quarantine_share overrides): an export in a form no rule
# reads (every amount "¥17,504.10") must not end green with nothing loaded.
MAX_QUARANTINE_SHARE = 0.5
# ... and fails when less than this share of the rows cleanse took in came out clean,
# whatever the reasons (catalog min_loaded_share); comply's exclusions are bounded apart,
# at the compliance gate (catalog max_excluded_share): a policy that lets nothing move
# is as red as a format nobody reads.
MIN_LOADED_SHARE = 0.5
MAX_EXCLUDED_SHARE = 0.95
MIN_QUARANTINED_FOR_SHARE = 20
NOT_FORMAT_REASONS = (
    "ORPHAN_RECORD",
    "PARENT_QUARANTINED",
    "PARENT_EXCLUDED",
    "DUPLICATE_KEY",
    "DUPLICATE_PERSON",
)


def run_gate_task(ctx: dict, part: dict, gate: str) -> dict:
    """Validate what the previous stage wrote for this partition; fail loudly on a breach."""
    table, partition = part["table"], part["partition"]
    df = _gate_frame(ctx, gate, table, partition)
    result = _validate(df, ctx, gate, table, partition)
    if gate == "quality":
        _check_quarantine_share(ctx, table, partition)
    if gate == "compliance":
        _check_excluded_share(ctx, table, partition)
    return _part(part, rows=result.rows, gate=gate, docs_path=result.docs_path)


def _bound(ctx: dict, table: str, name: str, default: float) -> float:
    """A table's share bound from catalog.yaml (max_quarantine_share, ...), else the default."""
    return float(_config(ctx["system"]).table(table).get(name, default))


def _top(counts: dict[str, int]) -> str:
    """The three largest counts, as a gate's one line names them."""
    return ", ".join(f"{r} {n:,}" for r, n in sorted(counts.items(), key=lambda kv: -kv[1])[:3])


def _check_excluded_share(ctx: dict, table: str, partition: str) -> None:
    bound = _bound(ctx, table, "max_excluded_share", MAX_EXCLUDED_SHARE)
    with ledger.connect() as conn:
        row = conn.execute(
            "SELECT rows_in, rows_excluded, detail->'excluded_by_rule' FROM "
            "handover_meta.ledger WHERE run_id=%s AND table_name=%s AND partition=%s AND "
            "stage='comply'",
            (ctx["run_id"], table, partition),
        ).fetchone()
    if not row or not row[0]:
        return
    rows_in, excluded, rules = int(row[0]), int(row[1]), dict(row[2] or {})
    share = excluded / rows_in
    if share > bound and excluded >= MIN_QUARANTINED_FOR_SHARE:
        raise GateFailed(
            f"compliance gate failed for {table} partition {partition}: the policy excluded "
            f"{excluded:,} of {rows_in:,} rows ({share:.1%} > {bound:.0%} allowed); top rules: "
            f"{_top(rules)}; check policy.yaml (consent purposes, "
            f"retention) and the consent export, or raise catalog.yaml "
            f"tables.{table}.max_excluded_share if this is right"
        )


def _check_quarantine_share(ctx: dict, table: str, partition: str) -> None:
    bound = _bound(ctx, table, "max_quarantine_share", MAX_QUARANTINE_SHARE)
    with ledger.connect() as conn:
        row = conn.execute(
            "SELECT l.rows_in, l.rows_quarantined, l.detail->'quarantined_by_reason', r.kind "
            "FROM handover_meta.ledger l LEFT JOIN handover_meta.run r USING (run_id) WHERE "
            "l.run_id=%s AND l.table_name=%s AND l.partition=%s AND l.stage='cleanse'",
            (ctx["run_id"], table, partition),
        ).fetchone()
    if not row or not row[0]:
        return
    rows_in, reasons = int(row[0]), dict(row[2] or {})
    nightly = row[3] == "nightly"
    # Only what the rows themselves fail counts: a child waiting for its parent (an orphan a
    # night takes in again) or a duplicate is no sign of a format nobody reads; nor is a
    # handful of rows in a small partition (a night's few changes).
    quarantined = sum(n for r, n in reasons.items() if r not in NOT_FORMAT_REASONS)
    share = quarantined / rows_in
    if share > bound and quarantined >= MIN_QUARANTINED_FOR_SHARE:
        raise GateFailed(
            f"quality gate failed for {table} partition {partition}: cleanse quarantined "
            f"{quarantined:,} of {rows_in:,} rows ({share:.1%} > {bound:.0%} allowed); top "
            f"reasons: {_top(reasons)}; the export's form is not "
            f"what cleansing.yaml reads (fix the rule, then clear cleanse) or the bound is "
            f"wrong (catalog.yaml tables.{table}.max_quarantine_share)"
        )
    floor = _bound(ctx, table, "min_loaded_share", MIN_LOADED_SHARE)
    # A night's orphans wait for the night that brings their parent (not lost): they do
    # not count against it; a migration's orphans have no parent in the export at all.
    all_out = sum(n for r, n in reasons.items() if not (nightly and r == "ORPHAN_RECORD"))
    if (rows_in - all_out) / rows_in < floor and all_out >= MIN_QUARANTINED_FOR_SHARE:
        raise GateFailed(
            f"quality gate failed for {table} partition {partition}: only "
            f"{rows_in - all_out:,} of {rows_in:,} rows came out of cleanse "
            f"({(rows_in - all_out) / rows_in:.1%} < {floor:.0%} required); top reasons: "
            f"{_top(reasons)}; fix the rule or the export, then "
            f"clear cleanse, or lower catalog.yaml tables.{table}.min_loaded_share"
        )


def ui_url(path: str) -> str:
    """An absolute link into the Airflow UI (the log viewer makes URLs clickable):
    HANDOVER_UI_URL, else Airflow's own api base_url, else the api-server `make up` starts
    (127.0.0.1, HANDOVER_PORT)."""
    base = (
        os.environ.get("HANDOVER_UI_URL")
        or os.environ.get("AIRFLOW__API__BASE_URL")
        or f"http://127.0.0.1:{os.environ.get('HANDOVER_PORT', '8080')}"
    )
    return f"{base.rstrip('/')}/{path.lstrip('/')}"


def docs_dir_for(lake: Lake, run_id: str) -> Path:
    from handover.storage.lake import LocalLake

    if isinstance(lake, LocalLake):
        return lake.path(f"runs/{safe_run_id(run_id)}/docs")
    return PROJECT_ROOT / ".state" / "docs" / safe_run_id(run_id)


def publish_docs(lake: Lake, run_id: str, docs_dir: Path) -> None:
    """On an object-store lake, upload the Data Docs site built locally."""
    from handover.storage.lake import LocalLake

    if isinstance(lake, LocalLake):
        for folder in (docs_dir, docs_dir.with_name(f"{docs_dir.name}.gx")):
            lake.make_private(str(folder.relative_to(lake.root)))
        return
    if not docs_dir.is_dir():
        return
    lake.sync_dir(docs_dir, f"runs/{safe_run_id(run_id)}/docs")  # only what changed


# ---------------------------------------------------------------- comply
_facts_cache: dict[tuple, Any] = {}


def _policy_facts(run_id: str, system: str, exported_at: str):
    """Objections and consents, read from this run's raw extract.

    Every comply partition needs them, and reading them is most of a partition's cost (0.9
    of 2 s at 400,000 subscribers), so a process keeps the last facts it built: keyed by
    the extract ledger rows of the fact tables (partition, checksum, recorded_at), which a
    cleared and rerun extract rewrites, so rewritten raw data is never served stale.
    """
    from handover.stages.comply import facts_from_tables

    cfg = _config(system)
    tables = sorted({cfg.policy[w]["table"] for w in ("objection", "consent") if cfg.policy.get(w)})
    with ledger.connect() as conn:
        stamp = tuple(
            conn.execute(
                "SELECT table_name, partition, checksum, recorded_at FROM handover_meta.ledger "
                "WHERE run_id=%s AND stage='extract' AND table_name = ANY(%s) ORDER BY 1, 2",
                (run_id, tables),
            ).fetchall()
        )
    cache_key = (run_id, system, exported_at, stamp)
    if cache_key in _facts_cache:
        return _facts_cache[cache_key]
    lake = _lake()
    obj = cfg.policy.get("objection")
    cust_col = cfg.table(obj["table"]).get("customer_column", "cust_id") if obj else "cust_id"

    def slices(what: str):  # a fact table's raw rows, only the columns the rule reads
        spec = cfg.policy.get(what)
        if not spec:
            return
        t = spec["table"]
        cols = (
            [cust_col, spec["column"]]
            if what == "objection"
            else [spec["customer_column"], spec["purpose_column"], spec["granted_column"]]
        )
        for k in lake.list(f"runs/{safe_run_id(run_id)}/raw/{t}/"):
            yield from lake.iter_batches(k, cols)

    facts = facts_from_tables(
        slices("objection"),
        slices("consent"),
        cfg.policy,
        pd.Timestamp(exported_at),
        customer_column=cust_col,
    )
    facts = _withdrawn_elsewhere(cfg, lake, run_id, facts)
    _facts_cache.clear()  # one run's facts at a time: memory stays bounded
    _facts_cache[cache_key] = facts
    return facts


def _withdrawn_elsewhere(cfg: SourceConfig, lake: Lake, run_id: str, facts):
    """A consent this export grants but another system's record of the same person (a
    target customer, matched by blind index) withdrew is not given (handover.stages.identity)."""
    import pyarrow.compute as pc

    from handover.protection.fields import load_keyring
    from handover.stages import identity
    from handover.stages.comply import Members

    s = identity.settings(cfg)
    purposes = sorted(
        {
            c["consent_purpose"]
            for c in cfg.policy["categories"].values()
            if c.get("consent_purpose")
        }
    )
    if s is None or not purposes or not facts.consented:
        return facts
    with ledger.connect() as conn:
        if not identity.others_held(conn, cfg.system):
            return facts
    key = cfg.table(s["table"])["key"]
    keys: list[str] = []
    ids: list[pa.Array] = []
    for k in lake.list(f"runs/{safe_run_id(run_id)}/raw/{s['table']}/"):
        for batch in lake.iter_batches(k, [key, s["id_column"]]):
            keys += pc.utf8_trim_whitespace(batch.column(0).cast(pa.string())).to_pylist()
            ids.append(identity.normalised_ids(batch.column(1)))
    if not keys:
        return facts
    ring = load_keyring()
    bidx = identity.blind_indexes(cfg, ring, pa.concat_arrays(ids).to_pylist())
    with ledger.connect() as conn:
        gone = identity.withdrawn_elsewhere(conn, cfg, ring, keys, bidx, purposes)
    if not gone:
        return facts
    consented = dict(facts.consented)
    for purpose, members in gone.items():
        held = consented.get(purpose)
        if isinstance(held, Members):
            consented[purpose] = Members(
                pc.filter(
                    held.values,
                    pc.invert(
                        pc.is_in(held.values, value_set=pa.array(sorted(members), pa.string()))
                    ),
                )
            )
        elif held is not None:
            consented[purpose] = frozenset(held) - members
    log.info(
        "comply: %s consent(s) this export grants were withdrawn in another system's "
        "record of the same person (a target customer): not given",
        {p: len(m) for p, m in gone.items()},
    )
    return type(facts)(facts.exported_at, facts.objected, consented)


def comply_partition(ctx: dict, part: dict) -> dict:
    import pyarrow.compute as pc

    from handover.stages.cleanse import record_key_array
    from handover.stages.comply import decide

    cfg = _config(ctx["system"])
    table, partition, run_id = part["table"], part["partition"], ctx["run_id"]
    lake = _lake()
    raw_key = part_key(run_id, "raw", table, partition)
    schema = lake.schema(raw_key)
    spec = cfg.table(table)
    # The rules read the customer and the event time; the key and the row number name
    # what they exclude. Only those columns become pandas, and only a slice at a time: the
    # rest of the row stays in Arrow and is written from there, slice by slice, so the
    # task holds a slice, not the partition (the whole partition in Arrow, kept and
    # excluded copies beside it, was this task's peak: ~860 MB at 1.1 M call records).
    reads = [
        c
        for c in dict.fromkeys(
            [spec["key"], "_source_row", spec.get("customer_column"), spec.get("event_time")]
        )
        if c and c in schema.names
    ]
    facts = _policy_facts(run_id, ctx["system"], ctx["exported_at"])
    date_format = _date_format(cfg, table, spec.get("event_time"))
    cust_col = spec.get("customer_column")
    if cust_col and cust_col in schema.names:  # an erased person stays erased
        from handover.lifecycle.subject import erased_among

        erased = erased_among(lake.read_table(raw_key, columns=[cust_col]).column(0))
    else:
        erased = frozenset()
    moved_keys, ex_keys, ex_rules, ex_destroy = [], [], [], []
    counts: dict[str, int] = {}
    rows_in = 0
    with (
        lake.table_writer(
            part_key(run_id, "comply", table, partition),
            schema.append(pa.field("_basis", pa.string())),
        ) as moved_out,
        lake.table_writer(
            part_key(run_id, "comply/_excluded", table, partition),
            schema.append(pa.field("_rule", pa.large_string())).append(
                pa.field("_destroy_by", pa.date32())
            ),
        ) as excluded_out,
    ):
        for batch in lake.iter_batches(raw_key, None, batch_rows=SLICE_ROWS):
            chunk = pa.Table.from_batches([batch])
            res = decide(
                chunk.select(reads).to_pandas(),
                table_spec=spec,
                category_policy=cfg.category_policy(table),
                policy=cfg.policy,
                facts=facts,
                event_time_format=date_format,
                erased=erased,
            )
            keep = pa.array(res.keep)
            moved, excluded = chunk.filter(keep), chunk.filter(pc.invert(keep))
            if moved.num_rows != len(res.moved) or excluded.num_rows != len(res.excluded):
                # the files and the ledger count the same rows
                raise AssertionError(
                    f"comply {table} {partition}: {moved.num_rows} rows kept and "
                    f"{excluded.num_rows} excluded in Arrow but {len(res.moved)} and "
                    f"{len(res.excluded)} decided; nothing was written"
                )
            moved_out.write_table(
                moved.append_column(
                    "_basis", pa.repeat(pa.scalar(res.basis, pa.string()), moved.num_rows)
                )
            )
            rule = pa.array(res.excluded["_rule"].to_numpy(dtype=object), pa.large_string())
            destroy = pa.array(res.excluded["_destroy_by"].to_numpy(dtype=object), pa.date32())
            excluded_out.write_table(
                excluded.append_column("_rule", rule).append_column("_destroy_by", destroy)
            )
            moved_keys.append(moved.column(spec["key"]))
            ex_keys.append(
                record_key_array(res.excluded[spec["key"]], res.excluded.get("_source_row"))
            )
            ex_rules.append(rule)
            ex_destroy.append(destroy)
            for r, n in res.counts.items():
                counts[r] = counts.get(r, 0) + n
            rows_in += chunk.num_rows
            del chunk, res, moved, excluded
        kept = pa.chunked_array(
            [c for k in moved_keys for c in k.chunks], schema.field(spec["key"]).type
        )
        excluded_keys = pa.chunked_array(ex_keys, pa.string())
        if rows_in != len(kept) + len(excluded_keys):  # every row leaves one way
            raise AssertionError(
                f"comply {table} {partition}: {rows_in} rows in but "
                f"{len(kept)} kept and {len(excluded_keys)} excluded; "
                "nothing was written"
            )
    # Rows this run already destroyed at its end (objection, no consent): no longer in raw,
    # still excluded, and still counted, so the ledger balances against extract's.
    from handover.lifecycle.retention import count_purged

    n_purged = count_purged(lake, run_id, table, partition, counts)
    rows_in += n_purged
    order = [r["id"] for r in cfg.policy["rules"]]  # as decide orders them: most rows first
    counts = dict(
        sorted(
            counts.items(),
            key=lambda kv: (-kv[1], order.index(kv[0]) if kv[0] in order else len(order)),
        )
    )
    with ledger.connect() as conn, conn.transaction():
        ledger.replace_exclusions(
            conn,
            run_id,
            table,
            partition,
            excluded_keys.combine_chunks(),
            pa.chunked_array(ex_rules, pa.large_string()).combine_chunks(),
            pa.chunked_array(ex_destroy, pa.date32()).combine_chunks(),
        )
        ledger.record(
            conn,
            run_id=run_id,
            table=table,
            partition=partition,
            stage="comply",
            rows_in=rows_in,
            rows_out=len(kept),
            excluded=len(excluded_keys) + n_purged,
            checksum=ledger.key_checksum(kept),
            detail={"excluded_by_rule": counts, "destroyed_at_run_end": n_purged},
        )
    log.info(
        "comply %s %s: %d in, %d moved, %d excluded %s",
        table,
        partition,
        rows_in,
        len(kept),
        len(excluded_keys) + n_purged,
        counts,
    )
    return _part(part, rows=len(kept), excluded=len(excluded_keys) + n_purged)


# ---------------------------------------------------------------- cleanse
def _slices(
    lake: Lake, key: str, key_column: str, drop: tuple[str, ...] = (), whole: tuple[str, ...] = ()
):
    """One stage input a slice at a time: (the columns `whole` and the duplicate-key flags
    of the whole partition (None without the key column), then (rows before the slice,
    slice as pandas) pairs). Only those columns are read whole; the rest is read and
    converted a slice at a time, never all at once. A partition without rows gives one
    empty slice, so its outputs keep their columns."""
    from handover.stages.cleanse import duplicate_keys

    cols, schema = lake.read_projected(key, list(dict.fromkeys([key_column, *whole])))
    dup = duplicate_keys(cols.column(key_column)) if key_column in schema.names else None
    columns = [n for n in schema.names if n not in drop]

    def frames():
        start = 0
        for batch in lake.iter_batches(key, columns, batch_rows=SLICE_ROWS):
            yield start, batch.to_pandas()
            start += batch.num_rows
        if start == 0:
            yield 0, pa.schema([schema.field(c) for c in columns]).empty_table().to_pandas()

    return cols, dup, frames()


def _arrow_frame(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(df, preserve_index=False)


def _concat(tables: list[pa.Table]) -> pa.Table:
    """Slices' results as one table: a column null throughout one slice has Arrow's null
    type there and takes the other slices' type."""
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")  # no copy of the data


def parent_tables(cfg: SourceConfig) -> list[str]:
    """Tables resolved once per run: parents of other tables, and any table de-duplicated
    across partitions (survivorship needs the whole table even without children)."""
    rules = cfg.cleansing["tables"]
    return sorted(
        {r["parent"]["table"] for r in rules.values() if r.get("parent")}
        | {t for t, r in rules.items() if r.get("dedupe")}
    )


def resolve_customers(ctx: dict) -> dict:
    """Decide the fate of every parent row (validation + de-duplication) across all partitions.

    Survivorship needs the whole table at once, so it runs once per run, before the
    mapped cleanse; children then learn from this registry whether their parent lives.
    """
    import numpy as np
    import pyarrow.compute as pc

    from handover.stages.cleanse import dedupe_pairs, validate

    cfg = _config(ctx["system"])
    run_id, lake = ctx["run_id"], _lake()
    exported_at = pd.Timestamp(ctx["exported_at"])
    summary = {}
    for table in parent_tables(cfg):
        spec, rules = cfg.table(table), cfg.rules(table)
        key = spec["key"]
        # Only the columns survivorship reads are kept across partitions (the key, the
        # dedupe key and its order), as Arrow: memory grows by three columns of the table,
        # not all; each partition is validated a slice at a time, as cleanse does.
        dedupe = rules.get("dedupe") or {}
        from handover.stages import identity

        ident = identity.settings(cfg)
        ident = ident if ident and ident["table"] == table else None
        compared = [src for _, src, _, _ in identity.compared_fields(cfg)] if ident else []
        version = identity.version_fields(cfg) if ident else None
        compared += [version[0]] if version else []
        keep = list(
            dict.fromkeys(
                [
                    key,
                    *(dedupe[c] for c in ("key", "order_by") if c in dedupe),
                    *([ident["id_column"]] if ident else []),
                    *compared,
                ]
            )
        )
        typed_parts, failed_parts, dupkey_parts, rescue_parts = [], [], [], []
        name_birth = (
            identity.name_birth_fields(cfg) if ident and "name_birth" in ident["match"] else None
        )
        for k in lake.list(f"runs/{safe_run_id(run_id)}/comply/{table}/"):
            _, dup, frames = _slices(lake, k, key)
            for start, raw in frames:
                typed, verdict = validate(
                    raw,
                    rules,
                    key=key,
                    exported_at=exported_at,
                    duplicate_key=None if dup is None else dup[start : start + len(raw)],
                )
                frame = typed[keep].copy()
                frame["_source_row"] = (
                    raw["_source_row"].to_numpy()
                    if "_source_row" in raw.columns
                    else np.arange(start, start + len(raw))
                )
                # fields a row fills: survivorship `most_complete`
                frame["_filled"] = (
                    raw.drop(columns=["_source_row"], errors="ignore")
                    .notna()
                    .sum(axis=1)
                    .to_numpy(dtype=np.int32)
                )
                typed_parts.append(_arrow_frame(frame))
                failed_parts.append(verdict.failed)
                dupkey_parts.append(verdict.reason == "DUPLICATE_KEY")
                no_id = (
                    (verdict.reason == "MISSING_FIELD") & (verdict.field == ident["id_column"])
                    if name_birth
                    else None
                )
                if no_id is not None and no_id.any():  # the second rule's candidates
                    rescue_parts.append(
                        identity.name_birth_candidates(
                            raw[no_id], rules, key, exported_at, ident["id_column"], name_birth
                        )
                    )
                del raw, typed, frame
        if typed_parts:
            kept = _concat(typed_parts)
            keys = kept.column(key).combine_chunks().cast(pa.string())
        else:
            kept, keys = None, pa.array([], pa.string())
        del typed_parts
        failed = np.concatenate(failed_parts) if failed_parts else np.zeros(0, dtype=bool)
        dup_key = np.concatenate(dupkey_parts) if dupkey_parts else np.zeros(0, dtype=bool)
        losers, survivors = (
            dedupe_pairs(kept, failed, rules, key) if dedupe and kept is not None else ([], [])
        )
        merges = dedupe.get("action", "merge") == "merge"
        same_key = (
            _same_key_merges(kept, failed, dup_key, key, dedupe["key"])
            if dedupe and merges and kept is not None
            else []
        )
        rules_of: dict[str, str] = dict.fromkeys(losers, "SAME_PERSON")
        persons = decisions = None
        matched_of: dict[str, str] = {}
        if ident and kept is not None and merges:
            losers, survivors, rules_of, persons, decisions, matched_of = _match_existing(
                cfg, kept, failed, losers, survivors, key, ident
            )
        rescued: dict[str, tuple[str, str]] = {}
        rows_of: dict[str, int] = {}
        if rescue_parts and merges and persons is not None and ident["on_match"] == "merge":
            cands = pd.concat(rescue_parts, ignore_index=True)
            with ledger.connect() as conn:
                rescued, ambiguous = identity.match_name_birth(
                    conn, cfg, cands, ours=set(keys.to_pylist()) - {None}
                )
            # merged into the one target customer with their name and birth date: not
            # quarantined for the missing ID; their children follow that customer
            rows_of = dict(zip(cands["key"], cands["_source_row"], strict=True))
            back = set(
                np.flatnonzero(
                    np.isin(
                        kept.column("_source_row").to_numpy(zero_copy_only=False),
                        [rows_of[k] for k in rescued],
                    )
                )
            )
            failed = failed.copy()
            failed[sorted(back)] = False
            for k, (target, bidx) in rescued.items():
                losers.append(k)
                survivors.append(target)
                rules_of[k] = identity.NAME_BIRTH
                matched_of[k] = target
                persons.append((k, bidx, "merged_existing", target, "name_birth"))
            if rescued or ambiguous:
                log.info(
                    "identity: %d customers without a resident ID merged into the one "
                    "target customer with their name and birth date; %d left "
                    "quarantined (more than one target customer has them)",
                    len(rescued),
                    ambiguous,
                )
        del kept
        is_loser = (
            pc.fill_null(
                pc.is_in(
                    keys,
                    value_set=pa.array(sorted(x for x in losers if x is not None), pa.string()),
                ),
                False,
            ).to_numpy(zero_copy_only=False)
            if losers
            else np.zeros(len(keys), dtype=bool)
        )
        if merges:  # a merged record's children follow its survivor: its key stays valid
            fate = np.where(failed, "quarantined", np.where(is_loser, "merged", "valid"))
            into = dict(zip(losers, survivors, strict=True))
            key_list = keys.to_pylist()
            merged_into = (
                pa.array(
                    [into.get(k) if m else None for k, m in zip(key_list, is_loser, strict=True)],
                    pa.string(),
                )
                if losers
                else pa.nulls(len(keys), pa.string())
            )
            merge_rule = (
                pa.array(
                    [
                        rules_of.get(k) if m else None
                        for k, m in zip(key_list, is_loser, strict=True)
                    ],
                    pa.string(),
                )
                if losers
                else pa.nulls(len(keys), pa.string())
            )
        else:
            fate = np.where(~failed & ~is_loser, "valid", "quarantined")
            merged_into = merge_rule = pa.nulls(len(keys), pa.string())
        excluded = set()
        for k in lake.list(f"runs/{safe_run_id(run_id)}/comply/_excluded/{table}/"):
            ex = lake.read_table(k, columns=[key]).to_pandas()[key]
            excluded |= {v.strip() for v in ex.dropna()}
        registry = pa.concat_tables(
            [
                pa.table(
                    {
                        "key": keys,
                        "fate": pa.array(fate, pa.string()),
                        "duplicate_loser": pa.array(is_loser, pa.bool_()),
                        "merged_into": merged_into,
                        "merge_rule": merge_rule,
                    }
                ),
                pa.table(
                    {
                        "key": pa.array(sorted(excluded), pa.string()),
                        "fate": pa.array(["excluded"] * len(excluded), pa.string()),
                        "duplicate_loser": pa.array([False] * len(excluded), pa.bool_()),
                        "merged_into": pa.nulls(len(excluded), pa.string()),
                        "merge_rule": pa.nulls(len(excluded), pa.string()),
                    }
                ),
            ]
        )
        registry = registry.filter(pc.is_valid(registry.column("key")))
        lake.write_table(f"runs/{safe_run_id(run_id)}/resolve/{table}.parquet", registry)
        lake.write_table(
            f"runs/{safe_run_id(run_id)}/resolve/{table}.same_key.parquet",
            pa.table({"_source_row": pa.array(same_key, pa.int64())}),
        )
        # source rows without a resident ID merged by the second rule (name + birth date)
        lake.write_table(
            f"runs/{safe_run_id(run_id)}/resolve/{table}.name_birth.parquet",
            pa.table(
                {"_source_row": pa.array(sorted(int(rows_of[k]) for k in rescued), pa.int64())}
            ),
        )
        # the fields each merged record wins of the target's customer (survivorship): key
        # and field names only; cleanse sends those records on through map, protect, gates
        adopt: dict[str, list[str]] = {}
        for k, _, field, _, outcome in decisions or []:
            if outcome == "source":
                adopt.setdefault(k, []).append(field)
        lake.write_table(
            f"runs/{safe_run_id(run_id)}/resolve/{table}.adopt.parquet",
            pa.table(
                {
                    "key": pa.array(sorted(adopt), pa.string()),
                    "into": pa.array([matched_of[k] for k in sorted(adopt)], pa.string()),
                    "fields": pa.array(
                        [",".join(sorted(adopt[k])) for k in sorted(adopt)], pa.string()
                    ),
                }
            ),
        )
        valid_mask = fate == "valid"
        summary[table] = {
            "valid": int(valid_mask.sum()),
            "quarantined": int(failed.sum()),
            "duplicates": len(losers),
            "same_key": len(same_key),
            "merged": merges,
            "excluded": len(excluded),
        }
        if persons is not None:  # the person map, in the books before anything is loaded
            from handover.protection.fields import load_keyring

            with ledger.connect() as conn, conn.transaction():
                summary[table]["persons"] = identity.record_persons(
                    conn, cfg, load_keyring(), run_id, persons, matched_of
                )
                summary[table]["field_conflicts_recorded"] = identity.record_conflicts(
                    conn, cfg.system, run_id, decisions or []
                )
            summary[table]["fields_adopted"] = sum(len(v) for v in adopt.values())
            summary[table]["existing_customers"] = sum(
                1 for r in rules_of.values() if r == identity.EXISTING
            )
            summary[table]["matched_by_name_birth"] = len(rescued)
    log.info("resolved parents: %s", summary)
    return summary


def _match_existing(
    cfg, kept: pa.Table, failed, losers: list, survivors: list, key: str, ident: dict
) -> tuple[list, list, dict, list, list, dict]:
    """Survivors of this export whose person is already a target customer under another id
    (handover.stages.identity): merged into it (rule EXISTING_CUSTOMER), and their own losers
    with them; or, with `on_match: link`, linked to it (both records kept, one person).
    Returns (losers, their survivors, rule per loser, person-map entries, field conflicts,
    the matched target customer per export key)."""
    import numpy as np

    from handover.protection.fields import load_keyring
    from handover.stages import identity

    ring = load_keyring()
    keys = kept.column(key).combine_chunks().cast(pa.string()).to_pylist()
    ids = kept.column(ident["id_column"]).combine_chunks().cast(pa.string()).to_pylist()
    lost = set(losers)
    valid = ~np.asarray(failed, dtype=bool)
    cand = [i for i in range(len(keys)) if valid[i] and keys[i] is not None and keys[i] not in lost]
    cand_keys = [keys[i] for i in cand]
    bidx = identity.blind_indexes(cfg, ring, [ids[i] for i in cand])
    with ledger.connect() as conn:
        taken = identity.taken_keys(conn, cfg, cand_keys, bidx)
        if taken:  # never write one person over another
            raise SourceError(
                f"{len(taken)} customer id(s) of this export are already customers of another "
                f"system in the target, other persons (handover_meta.person_map); loading "
                f"them would overwrite those customers. Give this system's ids a prefix in "
                f"mapping.yaml (e.g. a concat transform) before migrating"
            )
        matched = identity.match_existing(
            conn, cfg, cand_keys, bidx, ours={k for k in keys if k is not None}
        )
        if matched and ident["on_match"] == "link":
            identity.require_linkable(conn, cfg)
            linked = matched
            bidx_of = dict(zip(cand_keys, bidx, strict=True))
            entries = [(k, bidx_of[k], "linked" if k in linked else "new", k) for k in cand_keys]
            entries += [
                (loser, bidx_of.get(s), "merged_same_person", s)
                for loser, s in zip(losers, survivors, strict=True)
            ]
            log.info(
                "identity: %d customers of this export are also target customers "
                "(linked to them by blind index: both records kept, one person)",
                len(linked),
            )
            return (
                list(losers),
                list(survivors),
                dict.fromkeys(losers, "SAME_PERSON"),
                entries,
                [],
                linked,
            )
        # fields where the export's record says another thing than the target's (kept)
        where = {k: i for i, k in enumerate(keys) if k in matched}
        values = {
            src: {k: kept.column(src)[i].as_py() for k, i in where.items()}
            for _, src, _, _ in identity.compared_fields(cfg)
            if src in kept.column_names
        }
        conflicts = identity.field_conflicts(conn, cfg, ring, matched, values)
        version = identity.version_fields(cfg)
        versions = (
            {k: kept.column(version[0])[i].as_py() for k, i in where.items()}
            if version and version[0] in kept.column_names
            else {}
        )
        decisions = identity.decide(conn, cfg, conflicts, versions)
    into = dict(zip(losers, survivors, strict=True))
    rules_of = dict.fromkeys(losers, "SAME_PERSON")
    for loser, survivor in into.items():  # a survivor merged away takes its losers along
        if survivor in matched:
            into[loser] = matched[survivor]
    for k, t in matched.items():
        into[k] = t
        rules_of[k] = identity.EXISTING
    bidx_of = dict(zip(cand_keys, bidx, strict=True))
    entries = [
        (k, bidx_of[k], "merged_existing" if k in matched else "new", matched.get(k, k))
        for k in cand_keys
    ]
    for loser, survivor in zip(losers, survivors, strict=True):
        entries.append((loser, bidx_of.get(survivor), "merged_same_person", into[loser]))
    if matched:
        log.info(
            "identity: %d customers of this export are already target customers "
            "(merged into them by blind index)",
            len(matched),
        )
    return list(into), list(into.values()), rules_of, entries, decisions, matched


def _same_key_merges(kept: pa.Table, failed, dup_key, key: str, person: str) -> list[int]:
    """Source rows flagged DUPLICATE_KEY (and nothing else) whose key's first record is the
    same person (same dedupe key): one customer written twice (` c10012080 ` beside
    `C10012080` once keys are normalised), merged into it rather than quarantined."""
    import numpy as np

    only_dup = np.asarray(dup_key, dtype=bool)
    if not only_dup.any():
        return []
    frame = kept.select([key, person, "_source_row"]).to_pandas()
    firsts = frame[~np.asarray(failed, dtype=bool)].drop_duplicates(key).set_index(key)[person]
    dups = frame[only_dup]
    same = dups[person].notna() & (dups[key].map(firsts) == dups[person])
    return [int(r) for r in dups.loc[same, "_source_row"]]


# Merged records that win fields of the target's customer (identity survivorship) travel
# beside a partition's rows, through map, protect and the gates, to the load.
ADOPT = {"cleanse": "cleanse/_adopt", "mapped": "mapped/_adopt"}


def _adopt_map(run_id: str, table: str) -> dict[str, tuple[str, str]] | None:
    """{merged export key: (target customer, fields it wins)}, None where resolve wrote no
    survivorship file for the table (no identity match runs on it)."""
    name = f"runs/{safe_run_id(run_id)}/resolve/{table}.adopt.parquet"
    lake = _lake()
    if not lake.exists(name):
        return None
    t = lake.read_table(name)
    return {
        k: (i, f)
        for k, i, f in zip(
            t.column("key").to_pylist(),
            t.column("into").to_pylist(),
            t.column("fields").to_pylist(),
            strict=True,
        )
    }


def _registry(run_id: str, table: str):
    import pyarrow.compute as pc

    from handover.stages.cleanse import ParentRegistry

    lake = _lake()
    reg = lake.read_table(f"runs/{safe_run_id(run_id)}/resolve/{table}.parquet")
    keys = reg.column("key")

    def where(mask) -> pa.Array:
        return keys.filter(pc.fill_null(mask, False)).combine_chunks()

    fate = reg.column("fate")
    # Arrow arrays, not Python sets: a set of 400,000 parent keys cost ~1 s and ~60 MB to
    # build for every child partition; the losers (duplicates only) stay a small set.
    loser_mask = reg.column("duplicate_loser")
    losers = set(where(loser_mask).to_pylist())
    merged: dict[str, str] = {}
    if "merged_into" in reg.column_names:
        is_merged = pc.equal(fate, "merged")
        merged = dict(
            zip(
                where(is_merged).to_pylist(),
                reg.column("merged_into").filter(pc.fill_null(is_merged, False)).to_pylist(),
                strict=True,
            )
        )
    rules_of: dict[str, str] = {}
    if merged and "merge_rule" in reg.column_names:
        is_merged = pc.fill_null(pc.equal(fate, "merged"), False)
        rules_of = {
            k: r
            for k, r in zip(
                where(is_merged).to_pylist(),
                reg.column("merge_rule").filter(is_merged).to_pylist(),
                strict=True,
            )
            if r
        }
    if merged:
        losers = merged  # merged into their survivor, not quarantined
    same_key_file = f"runs/{safe_run_id(run_id)}/resolve/{table}.same_key.parquet"
    same_key = (
        set(lake.read_table(same_key_file).column("_source_row").to_pylist())
        if lake.exists(same_key_file)
        else set()
    )
    valid = where(pc.or_(pc.equal(fate, "valid"), pc.equal(fate, "merged")))
    return (
        ParentRegistry(
            valid, where(pc.equal(fate, "quarantined")), where(pc.equal(fate, "excluded")), merged
        ),
        losers,
        same_key,
        rules_of,
    )


def cleanse_partition(ctx: dict, part: dict) -> dict:
    from handover.stages.cleanse import cleanse, parent_fates, record_key_array

    cfg = _config(ctx["system"])
    table, partition, run_id = part["table"], part["partition"], ctx["run_id"]
    lake = _lake()
    spec, rules = cfg.table(table), cfg.rules(table)
    parent = losers = same_key = merge_rules = None
    if rules.get("parent"):
        parent, _, _, _ = _registry(run_id, rules["parent"]["table"])
    adopt = no_id_rows = None
    if table in parent_tables(cfg):
        _, losers, same_key, merge_rules = _registry(run_id, table)
        adopt = _adopt_map(run_id, table)
        nb_file = f"runs/{safe_run_id(run_id)}/resolve/{table}.name_birth.parquet"
        if lake.exists(nb_file):
            no_id_rows = set(lake.read_table(nb_file).column("_source_row").to_pylist())
    exported_at = pd.Timestamp(ctx["exported_at"])
    # The one rule that reads more than its row (an earlier row with the same key) over
    # the whole partition's keys; every other rule slice by slice.
    parent_col = rules["parent"]["column"] if parent is not None else None
    whole, dup, frames = _slices(
        lake,
        part_key(run_id, "comply", table, partition),
        spec["key"],
        drop=("_basis",),
        whole=(parent_col,) if parent_col else (),
    )
    # So are the parent rules: the registry is looked up once, not once a slice.
    fates = (
        parent_fates(parent, rules, whole.column(parent_col))
        if parent_col in whole.column_names
        else None
    )
    del whole
    clean_parts, quarantine_parts, keys, merged_parts, adopted_parts = [], [], [], [], []
    counts: dict[str, int] = {}
    normalised: dict[str, int] = {}
    rows_in = 0
    for start, raw in frames:
        rows_in += len(raw)
        res = cleanse(
            raw,
            rules,
            key=spec["key"],
            exported_at=exported_at,
            parent=parent,
            duplicate_losers=losers,
            duplicate_key=None if dup is None else dup[start : start + len(raw)],
            parent_fate=None if fates is None else fates[start : start + len(raw)],
            same_key_rows=same_key,
            merge_rules=merge_rules,
            no_id_rows=no_id_rows,
            adopt=None if adopt is None else set(adopt),
        )
        clean_parts.append(_arrow_frame(res.clean))
        if res.adopted is not None:
            adopted_parts.append(res.adopted)
        if len(res.merged):
            merged_parts.append(res.merged)
        q = res.quarantine
        keys.append(record_key_array(q["_key"], q.get("_source_row")))
        quarantine_parts.append(_arrow_frame(q))
        for reason, n in res.counts.items():
            counts[reason] = counts.get(reason, 0) + n
        for kind, n in res.normalised.items():
            normalised[kind] = normalised.get(kind, 0) + n
        del raw, res, q
    clean, quarantine = _concat(clean_parts), _concat(quarantine_parts)
    merged = (
        pd.concat(merged_parts, ignore_index=True)
        if merged_parts
        else pd.DataFrame({"_key": [], "_survivor": [], "_rule": []}, dtype=object)
    )
    del clean_parts, quarantine_parts, merged_parts
    if clean.num_rows + quarantine.num_rows + len(merged) != rows_in:  # one way out each
        raise AssertionError(
            f"cleanse {table} {partition}: {rows_in} rows in but "
            f"{clean.num_rows} clean, {quarantine.num_rows} quarantined and "
            f"{len(merged)} merged; nothing was written"
        )
    lake.write_table(part_key(run_id, "cleanse", table, partition), clean)
    lake.write_table(part_key(run_id, "cleanse/_quarantine", table, partition), quarantine)
    adopted = pd.concat(adopted_parts, ignore_index=True) if adopted_parts else None
    adopt_key = part_key(run_id, ADOPT["cleanse"], table, partition)
    if adopted is not None and len(adopted):
        key_values = adopted[spec["key"]].astype(object)
        adopted["_into"] = key_values.map(lambda k: adopt[k][0])
        adopted["_fields"] = key_values.map(lambda k: adopt[k][1])
        lake.write_table(adopt_key, _arrow_frame(adopted))
    else:  # a rerun that adopts nothing leaves no earlier attempt's file behind
        lake.delete_prefix(adopt_key)
    with ledger.connect() as conn, conn.transaction():
        ledger.replace_quarantine(
            conn,
            run_id,
            table,
            partition,
            pa.concat_arrays(keys) if keys else pa.array([], pa.string()),
            quarantine.column("_reason"),
            quarantine.column("_field"),
        )
        ledger.replace_merges(
            conn, run_id, table, partition, merged["_key"], merged["_survivor"], merged["_rule"]
        )
        merged_by_rule = {str(k): int(v) for k, v in merged["_rule"].value_counts().items()}
        ledger.record(
            conn,
            run_id=run_id,
            table=table,
            partition=partition,
            stage="cleanse",
            rows_in=rows_in,
            rows_out=clean.num_rows,
            quarantined=quarantine.num_rows,
            merged=len(merged),
            checksum=ledger.key_checksum(clean.column(spec["key"])),
            detail={
                "quarantined_by_reason": counts,
                "normalised": normalised,
                "merged_by_rule": merged_by_rule,
            },
        )
    log.info(
        "cleanse %s %s: %d in, %d clean, %d quarantined %s, %d merged %s%s",
        table,
        partition,
        rows_in,
        clean.num_rows,
        quarantine.num_rows,
        counts,
        len(merged),
        merged_by_rule,
        f", normalised {normalised}" if normalised else "",
    )
    return _part(part, rows=clean.num_rows, quarantined=quarantine.num_rows)


# ---------------------------------------------------------------- map + protect
def map_protect_partition(ctx: dict, part: dict) -> dict:
    from handover.protection.fields import load_keyring
    from handover.stages.mapping import map_partition

    cfg = _config(ctx["system"])
    table, partition, run_id = part["table"], part["partition"], ctx["run_id"]
    lake = _lake()
    clean = _read(lake, run_id, "cleanse", table, partition)
    tmap = cfg.table_mapping(table)
    needs_keys = any(
        set(f.get("protect", [])) & {"encrypt", "blind_index"} for f in tmap["fields"].values()
    )
    ring = load_keyring() if needs_keys else None
    mapped = map_partition(
        clean, table, tmap, cfg.table(table)["columns"], ring, partition=partition
    )
    lake.write_table(part_key(run_id, "mapped", table, partition), mapped)
    adopt_key = part_key(run_id, ADOPT["cleanse"], table, partition)
    lake.delete_prefix(part_key(run_id, ADOPT["mapped"], table, partition))
    if lake.exists(adopt_key):  # merged records' winning fields: mapped and protected alike
        side = lake.read_table(adopt_key)
        body = map_partition(
            side.drop_columns(["_into", "_fields"]).to_pandas(),
            table,
            tmap,
            cfg.table(table)["columns"],
            ring,
            partition=partition,
        )
        lake.write_table(
            part_key(run_id, ADOPT["mapped"], table, partition),
            body.append_column("_into", side.column("_into")).append_column(
                "_fields", side.column("_fields")
            ),
        )
    with ledger.connect() as conn, conn.transaction():
        ledger.record(
            conn,
            run_id=run_id,
            table=table,
            partition=partition,
            stage="map",
            rows_in=len(clean),
            rows_out=mapped.num_rows,
            checksum=ledger.key_checksum(mapped[tmap["key"]]),
            detail={
                "target": f"{cfg.mapping['schema']}.{tmap['target']}",
                "key_id": ring.active_key_id if ring else None,
            },
        )
    return _part(part, rows=mapped.num_rows)


# ---------------------------------------------------------------- load
def newer_writer(conn, system: str, table: str, run_id: str) -> str | None:
    """A run of the same source system, with a newer export (a later migration or night),
    that has loaded `table`: the target's truth for it is that run's now."""
    row = conn.execute(
        "SELECT r.run_id FROM handover_meta.run r JOIN handover_meta.run me ON me.run_id = %s "
        "WHERE r.source_system = me.source_system AND r.run_id <> me.run_id AND "
        "r.exported_at > me.exported_at AND coalesce(r.kind, 'migration') IN ('migration', "
        "'nightly') AND EXISTS (SELECT 1 FROM handover_meta.ledger l WHERE l.run_id = r.run_id "
        "AND l.table_name = %s AND l.stage = 'load') ORDER BY r.exported_at DESC LIMIT 1",
        (run_id, table),
    ).fetchone()
    return row[0] if row else None


def _remove_set_aside(
    conn,
    schema: str,
    target: str,
    key: str,
    run_id: str,
    table: str,
    partition: str,
    mapped: pa.Table,
) -> int:
    """Rows of this partition that this run now quarantines or excludes (a rule tightened,
    cleanse or comply cleared and rerun) but an earlier load of it put in the target: they
    go, in the load's transaction, so the target equals the ledger. A key the partition
    still loads (a duplicate's surviving copy) stays."""
    import pyarrow.compute as pc
    from psycopg import sql

    doomed = [
        r[0]
        for r in conn.execute(
            sql.SQL(
                "SELECT b.record_key FROM (SELECT record_key FROM handover_meta.quarantine WHERE "
                "run_id=%s AND table_name=%s AND partition=%s UNION SELECT record_key FROM "
                "handover_meta.exclusion WHERE run_id=%s AND table_name=%s AND partition=%s) b "
                "JOIN {t} t ON t.{k} = b.record_key"
            ).format(t=sql.Identifier(schema, target), k=sql.Identifier(key)),
            (run_id, table, partition, run_id, table, partition),
        ).fetchall()
    ]
    if not doomed:
        return 0
    loaded = pc.cast(mapped[key], pa.string()) if mapped.num_rows else pa.array([], pa.string())
    keep = set(
        pc.filter(
            pa.array(doomed, pa.string()), pc.is_in(pa.array(doomed, pa.string()), value_set=loaded)
        ).to_pylist()
    )
    gone = [k for k in doomed if k not in keep]
    if not gone:
        return 0
    return conn.execute(
        sql.SQL("DELETE FROM {t} WHERE {k} = ANY(%s)").format(
            t=sql.Identifier(schema, target), k=sql.Identifier(key)
        ),
        (gone,),
    ).rowcount


def load_adopted(conn, cfg, run_id: str, table: str, partition: str) -> dict:
    """The fields merged records of this partition win of the target's customers."""
    from handover.stages import identity

    name = part_key(run_id, ADOPT["mapped"], table, partition)
    if not _lake().exists(name):
        return {}
    side = _lake().read_table(name)
    return {"fields_adopted": identity.apply_adopted(conn, cfg, side)} if side.num_rows else {}


def load_partition(ctx: dict, part: dict) -> dict:
    from handover.db.load import upsert_partition
    from handover.flows.nightly import version_column

    cfg = _config(ctx["system"])
    table, partition, run_id = part["table"], part["partition"], ctx["run_id"]
    tmap = cfg.table_mapping(table)
    schema, target, key = cfg.mapping["schema"], tmap["target"], tmap["key"]
    mapped = _lake().read_table(part_key(run_id, "mapped", table, partition))
    started = time.monotonic()
    with ledger.connect(bulk=True) as conn, conn.transaction():
        newer = newer_writer(conn, cfg.system, table, run_id)
        version = version_column(cfg, table)
        if newer is not None:
            # An older run cleared and rerun after a newer one loaded: the newer values stay,
            # every row of this partition is left alone and counted stale.
            stats = {
                "inserted": 0,
                "updated": 0,
                "unchanged": 0,
                "stale": mapped.num_rows,
                "removed": 0,
                "method": "superseded",
                "superseded_by": newer,
            }
            log.warning(
                "load %s %s: run %s is older than %s, which loaded %s since: "
                "%d rows left alone (stale)",
                table,
                partition,
                run_id,
                newer,
                table,
                mapped.num_rows,
            )
        else:
            # an older row never replaces a newer one (the table's version column)
            stats = upsert_partition(conn, schema, target, key, mapped, version)
            stats["removed"] = _remove_set_aside(
                conn, schema, target, key, run_id, table, partition, mapped
            )
            stats.update(load_adopted(conn, cfg, run_id, table, partition))
        secs = time.monotonic() - started
        ledger.record(
            conn,
            run_id=run_id,
            table=table,
            partition=partition,
            stage="load",
            rows_in=mapped.num_rows,
            rows_out=mapped.num_rows,
            checksum=ledger.key_checksum(mapped[tmap["key"]]),
            detail={**stats, "seconds": round(secs, 3)},
        )
    log.info(
        "load %s %s: %d rows (%s) in %.1fs, %.0f rows/s",
        table,
        partition,
        mapped.num_rows,
        stats,
        secs,
        mapped.num_rows / max(secs, 1e-9),
    )
    return _part(part, rows=mapped.num_rows, **stats)


# ---------------------------------------------------------------- reconcile + publish
def reconcile_table(ctx: dict, table: str) -> dict:
    from handover.flows.nightly import version_column
    from handover.stages.reconcile import reconcile

    cfg = _config(ctx["system"])
    with ledger.connect(bulk=True) as conn, conn.transaction():
        result = reconcile(
            conn,
            _lake(),
            cfg,
            ctx["run_id"],
            table,
            manifest_rows=ctx.get("manifest_rows", {}).get(table),
            manifest_sha256=manifest_sha256(ctx["source_dir"], table)
            if ctx.get("source_dir")
            else None,
            version=version_column(cfg, table),
        )
    log.info("reconcile %s: %s", table, {k: v for k, v in result.items() if k != "money"})
    return {"table": table, "partition": "all", "balanced": result["balanced"]}


def reconciliation_gate(ctx: dict, table: str) -> dict:
    """Gate on the reconciliation row of one table (counts only)."""
    run_id = ctx["run_id"]
    with ledger.connect() as conn:
        cur = conn.execute(
            "SELECT table_name, source_rows, loaded, quarantined, excluded, target_rows, "
            "missing_keys, field_mismatches, money_source, money_target, balanced, merged "
            "FROM handover_meta.reconciliation WHERE run_id=%s AND table_name=%s",
            (run_id, table),
        )
        cols = [d.name for d in cur.description]
        frame = pd.DataFrame(cur.fetchall(), columns=cols)
    frame["accounted"] = (
        frame["loaded"] + frame["merged"] + frame["quarantined"] + frame["excluded"]
    )
    frame["unaccounted"] = frame["source_rows"] - frame["accounted"]
    for c in ("money_source", "money_target"):  # numeric in the books (never overflows)
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("float64")
    frame["money_diff"] = frame["money_source"].fillna(0) - frame["money_target"].fillna(0)
    try:
        result = _validate(frame, ctx, "reconciliation", table, "all")
    except GateFailed as exc:
        raise GateFailed(f"{exc}; {reconciliation_failures(ctx, table, frame)}") from None
    return {"table": table, "partition": "all", "docs_path": result.docs_path}


def reconciliation_failures(ctx: dict, table: str, frame: pd.DataFrame) -> str:
    """The checks of the reconciliation that failed, with their counts, in words."""
    r = frame.iloc[0] if len(frame) else None
    key = f"runs/{safe_run_id(ctx['run_id'])}/reconcile/{table}.json"
    try:
        checks = _lake().read_json(key).get("checks", {})
    except (OSError, ValueError):
        checks = {}
    words = {
        "ledger_balances": lambda: (
            f"ledger: {int(r['source_rows']):,} in but "
            f"{int(r['accounted']):,} loaded+merged+quarantined+excluded"
        ),
        "manifest_matches": lambda: "row count differs from the export manifest",
        "digest_matches": lambda: "the export's sha256 differs from the manifest's",
        "no_missing_keys": lambda: (
            f"key set: {int(r['missing_keys']):,} keys sent are missing in the target"
        ),
        "no_extra_rows": lambda: (
            f"key set: the target holds {int(r['target_rows']):,} rows "
            f"but the run loaded {int(r['loaded']):,}"
        ),
        "fields_equal": lambda: (
            f"fields: {int(r['field_mismatches']):,} rows differ from what the run sent"
        ),
        "money_equal": lambda: (
            f"money: source {r['money_source']:,.0f} fen, target {r['money_target']:,.0f} fen"
        ),
    }
    failed = [words.get(k, lambda k=k: k)() for k, ok in checks.items() if not ok and r is not None]
    return (
        "failed checks: " + "; ".join(failed) if failed else "see the checks in"
    ) + f" ({_lake().uri(key)})"


def report_failed_run(ctx: dict) -> dict:
    """A failed run's report and Data Docs index, written when a task fails for good: what
    the run did before it stopped, where it stopped and why (the same line as the task's
    log and the ledger view). A later successful publish replaces both."""
    from handover.gates.suites import build_docs_index
    from handover.stages.report import write_reports

    run_id = ctx["run_id"]
    lake = _lake()
    docs_dir = docs_dir_for(lake, run_id)
    if docs_dir.is_dir():
        build_docs_index(docs_dir)
        publish_docs(lake, run_id, docs_dir)
    with ledger.connect() as conn, conn.transaction():
        paths = write_reports(conn, lake, _config(ctx["system"]), run_id)
    log.info("failed run %s: report %s", run_id, paths.get("report_html"))
    return paths


def publish(ctx: dict) -> dict:
    from handover.gates import docs_assets
    from handover.gates.suites import build_docs_index
    from handover.stages.report import write_reports

    run_id = ctx["run_id"]
    lake = _lake()
    docs_dir = docs_dir_for(lake, run_id)
    if docs_dir.is_dir():
        build_docs_index(docs_dir)
        bundled = docs_assets.bundle(docs_dir)  # opened from the lake, the site is whole
        log.info("data docs of %s: %s", run_id, bundled)
        publish_docs(lake, run_id, docs_dir)
    from handover.lifecycle.retention import destroy_run_exclusions

    # What may not move leaves the lake at the run's end: excluded rows are destroyed
    # before the run is called succeeded (a failure here fails publish, visibly).
    destroyed = destroy_run_exclusions(run_id, ctx["system"])
    with ledger.connect() as conn, conn.transaction():
        paths = write_reports(conn, lake, _config(ctx["system"]), run_id)
        ledger.audit(
            conn,
            "run_exclusions_destroyed",
            run_id=run_id,
            detail={
                k: destroyed[k]
                for k in (
                    "rows_destroyed_by_table_rule",
                    "raw_objects_rewritten",
                    "scope_keys_shredded",
                    "books_pseudonymised",
                )
            },
        )
        conn.execute(
            "UPDATE handover_meta.run SET status='succeeded', finished_at=now() WHERE run_id=%s",
            (run_id,),
        )
        ledger.audit(conn, "run_published", run_id=run_id, detail={"reports": paths})
    log.info("published run %s: %s", run_id, paths)
    return paths
