"""The night's extract: a table's change file (and its deletions) split into partitions
with the migration's reader and hash split, and the waiting children whose parent arrived."""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from handover.config.model import SourceConfig
from handover.core.contracts import Partition, RunContext
from handover.core.errors import SourceError, SourceReadError
from handover.core.validators import normalise_text
from handover.db import ledger
from handover.flows.common import _config, _lake, flatten
from handover.flows.nightly_plan import DELETED, TIME_FMT
from handover.flows.partitioner import HashSplit
from handover.sources.delimited import DelimitedSource
from handover.storage.lake import Lake, part_key, safe_run_id

log = logging.getLogger("handover")

ROWS_PER_PARTITION = 250_000


# ---------------------------------------------------------------- extract
def _read_deletions(path: Path, key: str) -> pd.DataFrame:
    """The deleted-keys export: (key, deleted_at) as text, checked line by line."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    if list(frame.columns) != [key, "deleted_at"]:
        raise SourceError(
            f"{path} line 1: expected the header '{key},deleted_at', got "
            f"{','.join(frame.columns)}; fix the deleted-keys export"
        )
    # keys as cleanse sees them (NFKC, trimmed), as the night's rows are split and loaded
    keys = pd.Series(normalise_text(pa.array(frame[key], pa.string())).to_pylist(), dtype=object)
    at = pd.to_datetime(frame["deleted_at"].str.strip(), format=TIME_FMT, errors="coerce")
    bad = keys.isna() | at.isna()
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
        raise SourceError(
            f"{path} line {line}: a deletion needs a key and a deleted_at "
            f"'YYYY-MM-DD HH:MM:SS'; {int(bad.sum())} such line(s)"
        )
    return pd.DataFrame({"key": keys.astype(str), "deleted_at": at.dt.strftime(TIME_FMT)})


def extract_changes(ctx: RunContext, table: str) -> list[Partition]:
    """The night's changed rows into raw partitions, its deletions into the lake."""
    cfg = _config(ctx["system"])
    key = cfg.table(table)["key"]
    folder, files = Path(ctx["source_dir"]), ctx["files"][table]
    expected, expected_del = ctx["manifest_rows"][table], ctx["deleted_rows"][table]
    n_parts = max(1, min(cfg.partitions(table), math.ceil(expected / ROWS_PER_PARTITION)))  # type: ignore[operator]  # a change manifest counts every table's rows
    lake, run_id = _lake(), ctx["run_id"]
    from handover.storage.lake_crypto import refuse_destroyed

    refuse_destroyed(lake, run_id)
    path = folder / files["file"]
    with tempfile.TemporaryDirectory(prefix=f"sync-{table}-") as tmp:
        # The migration's reader and split: UTF-8 with or without BOM, quoted values may
        # hold commas and newlines, errors name the file and row; keys partitioned as
        # cleanse sees them, so two spellings of one key meet in one partition.
        source = DelimitedSource(path, table=table)
        split: HashSplit | None = None
        released: dict | None = None
        try:
            with source:
                if key not in source.columns:
                    raise SourceError(
                        f"{path} line 1: key column '{key}' is missing "
                        "from the header; fix the change export"
                    )
                split = HashSplit(
                    Path(tmp),
                    source.columns,
                    key,
                    n_parts,
                    options=lambda i: lake.parquet_options(
                        part_key(run_id, "raw", table, f"p{i:02d}")
                    ),
                    folds=cfg.key_folds(table),
                )
                for batch in source.batches():
                    split.add(batch)
                released = waiting_orphans(lake, cfg, table, run_id, source.columns)
                if released is not None:  # after the night's own rows: those win a tie
                    split.add(released["batch"])
                split.close()
            sha = source.fingerprint()
        except SourceReadError as exc:
            raise SourceError(str(exc)) from exc
        finally:
            if split is not None:
                split.close(flush=False)
        n_released = 0 if released is None else released["batch"].num_rows
        rows = split.rows - n_released
        if rows != expected:
            raise SourceError(
                f"{path}: read {rows} rows but the change manifest says "
                f"{expected}; the file is truncated or was changed"
            )
        del_path = folder / files["deleted_file"]
        deletions = _read_deletions(del_path, key)
        if len(deletions) != expected_del:
            raise SourceError(
                f"{del_path}: read {len(deletions)} deletions but the "
                f"change manifest says {expected_del}"
            )
        lake.write_table(
            f"runs/{safe_run_id(run_id)}/deleted/{table}.parquet",
            pa.Table.from_pandas(deletions, preserve_index=False),
        )
        parts: list[Partition] = []
        from handover.lifecycle.retention.run_end import forget_purged

        with ledger.connect() as conn, conn.transaction():
            forget_purged(conn, lake, run_id, table)
            for i in range(n_parts):
                partition = f"p{i:02d}"
                lake.put_file(part_key(run_id, "raw", table, partition), split.paths[i])
                ledger.record(
                    conn,
                    run_id=run_id,
                    table=table,
                    partition=partition,
                    stage="extract",
                    rows_in=split.counts[i],
                    rows_out=split.counts[i],
                    checksum=split.checksum(i),
                    detail={
                        "source_file": path.name,
                        "source_sha256": sha,
                        **({"released_orphans": n_released} if i == 0 else {}),
                    },
                )
                parts.append({"table": table, "partition": partition, "rows": split.counts[i]})
            if released is not None:
                for q_run, q_key in released["entries"]:
                    conn.execute(
                        "UPDATE handover_meta.quarantine SET released_by = %s WHERE run_id = %s "
                        "AND table_name = %s AND record_key = %s AND reason = 'ORPHAN_RECORD'",
                        (run_id, q_run, table, q_key),
                    )
            ledger.record(
                conn,
                run_id=run_id,
                table=table,
                partition=DELETED,
                stage="extract",
                rows_in=len(deletions),
                rows_out=0,
                excluded=len(deletions),
                checksum=ledger.key_checksum(deletions["key"].to_numpy(dtype=object)),
                detail={
                    "deleted_at_source": len(deletions),
                    "source_file": del_path.name,
                    "source_sha256": hashlib.sha256(del_path.read_bytes()).hexdigest(),
                },
            )
    log.info(
        "extract %s: %d changed rows into %d partitions, %d deletions, %d orphans of "
        "earlier nights taken in again",
        table,
        rows,
        n_parts,
        len(deletions),
        n_released,
    )
    return parts


def waiting_orphans(
    lake: Lake, cfg: SourceConfig, table: str, run_id: str, columns: list[str]
) -> dict | None:
    """Children earlier runs quarantined as ORPHAN_RECORD (their parent was unknown) and
    that no run has taken in since: their rows, from those runs' quarantine objects, to go
    through tonight's stages and gates after the night's own rows. Tonight may bring the
    parent (they load) or not (quarantined again, here). A key the night carries itself
    meets its own newer row first (DUPLICATE_KEY keeps that one)."""
    if not cfg.rules(table).get("parent"):
        return None
    with ledger.connect() as conn:
        rows = conn.execute(
            "SELECT q.run_id, q.partition, q.record_key FROM handover_meta.quarantine q JOIN "
            "handover_meta.run r USING (run_id) WHERE q.table_name = %s AND q.reason = "
            "'ORPHAN_RECORD' AND q.released_by IS NULL AND q.run_id <> %s AND r.status = "
            "'succeeded'",
            (table, run_id),
        ).fetchall()
    if not rows:
        return None
    key = cfg.table(table)["key"]
    wanted: dict[tuple[str, str], set[str]] = {}
    for q_run, q_part, q_key in rows:
        wanted.setdefault((q_run, q_part), set()).add(q_key)
    batches, entries = [], []
    numbered = 0
    for (q_run, q_part), keys in sorted(wanted.items()):
        obj = part_key(q_run, "cleanse/_quarantine", table, q_part)
        if not lake.exists(obj):  # its working set is gone: the orphan cannot be taken in
            continue
        t = lake.read_table(obj)
        if "_reason" not in t.column_names or key not in t.column_names:
            continue
        norm = pc.utf8_trim_whitespace(pc.utf8_normalize(t[key].cast(pa.string()), "NFKC"))
        mask = pc.and_(
            pc.equal(t["_reason"], "ORPHAN_RECORD"),
            pc.is_in(norm, value_set=pa.array(sorted(keys), pa.string())),
        )
        t = t.filter(pc.fill_null(mask, False))
        if not t.num_rows:
            continue
        cols = {
            c: (
                t[c].cast(pa.string()) if c in t.column_names else pa.nulls(t.num_rows, pa.string())
            )
            for c in columns
        }
        # numbered below zero: not a line of tonight's file (the key names the row)
        cols["_source_row"] = pa.array(
            -np.arange(numbered + 1, numbered + t.num_rows + 1), pa.int64()
        )
        numbered += t.num_rows
        batches.append(pa.table(cols))
        entries += [(q_run, k) for k in keys]
    if not batches:
        return None
    table_ = pa.concat_tables(batches).combine_chunks()
    return {"batch": table_.to_batches()[0] if table_.num_rows else None, "entries": entries}


def list_partitions(lists: list[list[Partition]]) -> list[Partition]:
    return flatten(lists)
