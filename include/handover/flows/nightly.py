"""The nightly sync: one legacy day, through the migration's own stages, provably.

During the parallel run the legacy system exports, every night, what changed on one
calendar day (legacy time, Asia/Shanghai): a *change set* (see handover_synth.changes).
The DAG run whose data interval is that day handles exactly that change set:

- **selection.** Subscribers and consents are in a change set by their change time
  (updated_at, granted_at) inside the day, which is how the legacy export selects them;
  event tables (calls, sessions, payments, complaints, browsing) by *arrival*: every row
  that reached the legacy system that day, whatever its own timestamp, so a call record
  of three days ago that arrives late lands in the night it arrives. Deletions come as
  `<table>.deleted.csv` (key, deleted_at).
- **same stages, same gates.** Intake, compliance, quality and contract gates, comply,
  cleanse, map + protect run the migration's code (`handover.flows.migration`) on the night's
  partitions under the run id `nightly_sync__<day>`, one per night whatever Airflow calls
  the run, so a rerun or a backfill of a night replaces that night's books. Two things
  differ, because a night is not a whole export: policy facts (objections, consents) come
  from the legacy state as of the night's end, and a child row's parent may already live
  in the new system (or, on a replay, have been deleted later), which the parent registry
  learns from the target and the tombstones.
- **older never beats newer.** Nights may be rerun or backfilled in any order. A row
  replaces the target's only if its version (the mapped updated_at / granted_at) is not
  older; every deletion leaves a tombstone (`handover_meta.tombstone`), and a replayed
  row that a later night deleted is not brought back. So rerunning night 2 after night 3
  changes nothing. New nights still run in order: a night refuses to start while the
  night before it has a change set but no successful sync.
- **the ledger still balances.** Per table and night: rows in (changed + deleted) =
  loaded + quarantined + excluded + deleted. Deletion records are booked at extract as
  excluded with `detail.deleted_at_source`, and at a `delete` stage whose detail says how
  many were removed, absent or superseded.
- **old versus new.** After the load, every table of the target is compared with the
  legacy state as of the newest night applied (`handover.stages.diff`: segment hashes, bisected
  down to the differing keys, only keys and counts leave the database). Keys the ledger
  accounts for (quarantined in a run no older than the legacy row; excluded and absent
  from the target) are set aside; any other difference fails the reconciliation gate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from handover.config.loader import SourceConfig, load_config
from handover.core.errors import NightOrderError
from handover.core.validators import normalise_text
from handover.db import ledger
from handover.flows import migration as pipeline
from handover.sources.readers import DelimitedSource, SourceReadError
from handover.stages import identity
from handover.storage.lake import Lake, lake_from_url, part_key, safe_run_id

log = logging.getLogger("handover")

DAG_ID = "nightly_sync"
LEGACY_TZ = "Asia/Shanghai"
TIME_FMT = "%Y-%m-%d %H:%M:%S"
ROWS_PER_PARTITION = 250_000
#: Source column that versions a row of a table; tables without one are append-only events.
VERSION_COLUMNS = {"subscribers": "updated_at", "consents": "granted_at"}
DELETED = "deleted"  # ledger partition of a table's deletion records
GATES = ("intake", "compliance", "quality", "contract")


# ---------------------------------------------------------------- helpers
def _lake() -> Lake:
    return lake_from_url()


def _config(system: str) -> SourceConfig:
    from handover.config.loader import CONFIG_ROOT

    folder = Path(system) if Path(system).is_dir() else CONFIG_ROOT / system
    stamp = tuple(p.stat().st_mtime_ns for p in sorted(folder.glob("*.yaml")))
    return _cached_config(system, stamp)


@lru_cache(maxsize=8)
def _cached_config(system: str, stamp: tuple) -> SourceConfig:
    return load_config(system)


def legacy_interval(start: Any, end: Any, tz: str = LEGACY_TZ) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Airflow's (aware) data interval as the legacy system's naive local times."""

    def local(t: Any) -> pd.Timestamp:
        t = pd.Timestamp(t)
        return t.tz_convert(tz).tz_localize(None) if t.tzinfo is not None else t

    return local(start), local(end)


def night_run_id(start: pd.Timestamp, dag_id: str = DAG_ID) -> str:
    return f"{dag_id}__{start:%Y-%m-%d}"


def change_set_dir(changes_dir: str | Path, start: pd.Timestamp) -> Path:
    return Path(changes_dir) / f"{start:%Y-%m-%d}"


def change_set_ready(
    changes_dir: str | Path, data_interval_start: Any, data_interval_end: Any
) -> bool:
    """For the sensor: has the legacy system delivered this night's change set?"""
    start, _ = legacy_interval(data_interval_start, data_interval_end)
    return (change_set_dir(changes_dir, start) / "change_manifest.json").is_file()


def changes_dir(param: str | None) -> str:
    """The run's change sets: the run param, else HANDOVER_CHANGES_DIR, else the demo's."""
    import os

    return (
        param
        or os.environ.get("HANDOVER_CHANGES_DIR")
        or str(pipeline.PROJECT_ROOT / ".state" / "changes")
    )


def version_column(cfg: SourceConfig, table: str) -> str | None:
    """The target column that versions a table's rows (mapped from VERSION_COLUMNS)."""
    src = VERSION_COLUMNS.get(table)
    if src is None:
        return None
    return next(
        (f for f, s in cfg.table_mapping(table)["fields"].items() if s.get("from") == src), None
    )


def state_file(state_dir: str | Path, table: str) -> Path:
    """A table's CSV in the legacy state folder, as its export_manifest.json names it."""
    manifest = json.loads((Path(state_dir) / "export_manifest.json").read_text(encoding="utf-8"))
    name = manifest.get("tables", {}).get(table, {}).get("file", f"{table}.csv")
    return Path(state_dir) / name


def _succeeded(conn, run_id: str) -> str | None:
    row = conn.execute("SELECT status FROM handover_meta.run WHERE run_id=%s", (run_id,)).fetchone()
    return row[0] if row else None


# ---------------------------------------------------------------- plan
def plan_night(
    *,
    dag_id: str = DAG_ID,
    system: str,
    changes_dir: str,
    data_interval_start: Any,
    data_interval_end: Any,
    airflow_run_id: str | None = None,
) -> dict:
    """Check the night's change set and its place in the sequence, then open the run."""
    cfg = _config(system)
    start, end = legacy_interval(data_interval_start, data_interval_end)
    if start != start.normalize() or end - start != pd.Timedelta(days=1):
        raise pipeline.SourceError(
            f"data interval {start} - {end} (legacy time) is not one whole legacy day; "
            "nightly_sync needs a daily schedule aligned on midnight Asia/Shanghai"
        )
    folder = change_set_dir(changes_dir, start)
    manifest_path = folder / "change_manifest.json"
    if not manifest_path.is_file():
        raise pipeline.SourceError(
            f"{manifest_path}: change set of {start:%Y-%m-%d} not found; "
            "point the run's changes_dir at the legacy change sets"
        )
    raw = manifest_path.read_bytes()
    manifest = json.loads(raw)
    got = (manifest.get("interval_start"), manifest.get("interval_end"))
    if got != (start.strftime(TIME_FMT), end.strftime(TIME_FMT)):
        raise pipeline.SourceError(
            f"{manifest_path}: covers {got[0]} - {got[1]}, but this run's "
            f"data interval is {start} - {end}; wrong folder?"
        )
    files: dict[str, dict[str, str]] = {}
    for table in cfg.tables:
        entry = manifest.get("tables", {}).get(table)
        if entry is None:
            raise pipeline.SourceError(f"{manifest_path}: no entry for table {table}")
        files[table] = {"file": entry["file"], "deleted_file": entry["deleted_file"]}
        for name in files[table].values():
            if not (folder / name).is_file():
                raise pipeline.SourceError(
                    f"{folder / name}: change file of table {table} "
                    "not found; the change set is incomplete"
                )
    state_dir = folder / manifest.get("state", "state")
    if not (state_dir / "export_manifest.json").is_file():
        raise pipeline.SourceError(
            f"{state_dir}: legacy state as of {end} not found; the "
            "sync needs it for policy facts and to reconcile"
        )
    run_id = night_run_id(start, dag_id)
    with ledger.connect() as conn:
        ledger.ensure_schema(conn)  # handover_meta.tombstone included (meta.sql)
        _check_order(conn, changes_dir, start, end, dag_id)
        with conn.transaction():
            conn.execute(
                "INSERT INTO handover_meta.run (run_id, dag_id, source_system, source_manifest, "
                "exported_at, kind) VALUES (%s, %s, %s, %s, %s, 'nightly') ON CONFLICT (run_id) "
                "DO UPDATE SET status = 'running', finished_at = NULL, source_manifest = "
                "excluded.source_manifest",
                (run_id, dag_id, cfg.system, hashlib.sha256(raw).hexdigest(), end.to_pydatetime()),
            )
            ledger.audit(
                conn,
                "run_started",
                run_id=run_id,
                detail={
                    "dag_id": dag_id,
                    "system": cfg.system,
                    "source": str(folder),
                    "interval": [str(start), str(end)],
                    "airflow_run_id": airflow_run_id,
                },
            )
    log.info("night %s planned: change set %s", run_id, folder)
    return {
        "run_id": run_id,
        "dag_id": dag_id,
        "system": system,
        "changes_dir": str(changes_dir),
        "source_dir": str(folder),
        "state_dir": str(state_dir),
        "exported_at": str(end),
        "interval_start": str(start),
        "interval_end": str(end),
        "tables": cfg.tables,
        "files": files,
        "manifest_rows": {t: manifest["tables"][t]["rows"] for t in cfg.tables},
        "deleted_rows": {t: manifest["tables"][t]["deleted_rows"] for t in cfg.tables},
    }


MIGRATION_DAG = "customer_migration"


def _check_order(
    conn, changes_dir: str, start: pd.Timestamp, end: pd.Timestamp, dag_id: str
) -> None:
    # The migration's export, from migration runs only: corrections, subject requests,
    # restores and retention runs record their own times but are not exports.
    baseline = conn.execute(
        "SELECT max(exported_at) FROM handover_meta.run WHERE status = 'succeeded' AND "
        "(kind = 'migration' OR (kind IS NULL AND dag_id = %s))",
        (MIGRATION_DAG,),
    ).fetchone()[0]
    if baseline is None:
        raise NightOrderError(
            "no completed migration in this target: run customer_migration "
            "first; the nightly sync only carries changes after it"
        )
    if end <= pd.Timestamp(baseline):
        raise NightOrderError(
            f"night {start:%Y-%m-%d} ends before the migration's export "
            f"({baseline}); nothing to sync: start nightly_sync on the "
            "cut-over day"
        )
    prev = start - pd.Timedelta(days=1)
    if start > pd.Timestamp(baseline) and change_set_dir(changes_dir, prev).is_dir():
        status = _succeeded(conn, night_run_id(prev, dag_id))
        if status != "succeeded":
            raise NightOrderError(
                f"night {prev:%Y-%m-%d} has a change set but its sync is "
                f"{status or 'missing'}; nights run in order: run or clear that night first"
            )


# ---------------------------------------------------------------- extract
def _read_deletions(path: Path, key: str) -> pd.DataFrame:
    """The deleted-keys export: (key, deleted_at) as text, checked line by line."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    if list(frame.columns) != [key, "deleted_at"]:
        raise pipeline.SourceError(
            f"{path} line 1: expected the header '{key},deleted_at', got "
            f"{','.join(frame.columns)}; fix the deleted-keys export"
        )
    # keys as cleanse sees them (NFKC, trimmed), as the night's rows are split and loaded
    keys = pd.Series(normalise_text(pa.array(frame[key], pa.string())).to_pylist(), dtype=object)
    at = pd.to_datetime(frame["deleted_at"].str.strip(), format=TIME_FMT, errors="coerce")
    bad = keys.isna() | at.isna()
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
        raise pipeline.SourceError(
            f"{path} line {line}: a deletion needs a key and a deleted_at "
            f"'YYYY-MM-DD HH:MM:SS'; {int(bad.sum())} such line(s)"
        )
    return pd.DataFrame({"key": keys.astype(str), "deleted_at": at.dt.strftime(TIME_FMT)})


def extract_changes(ctx: dict, table: str) -> list[dict]:
    """The night's changed rows into raw partitions, its deletions into the lake."""
    cfg = _config(ctx["system"])
    key = cfg.table(table)["key"]
    folder, files = Path(ctx["source_dir"]), ctx["files"][table]
    expected, expected_del = ctx["manifest_rows"][table], ctx["deleted_rows"][table]
    n_parts = max(1, min(cfg.partitions(table), math.ceil(expected / ROWS_PER_PARTITION)))
    lake, run_id = _lake(), ctx["run_id"]
    from handover.storage.lake_crypto import refuse_destroyed

    refuse_destroyed(lake, run_id)
    path = folder / files["file"]
    with tempfile.TemporaryDirectory(prefix=f"sync-{table}-") as tmp:
        # The migration's reader and split: UTF-8 with or without BOM, quoted values may
        # hold commas and newlines, errors name the file and row; keys partitioned as
        # cleanse sees them, so two spellings of one key meet in one partition.
        source = DelimitedSource(path, table=table)
        split: pipeline.HashSplit | None = None
        released: dict | None = None
        try:
            with source:
                if key not in source.columns:
                    raise pipeline.SourceError(
                        f"{path} line 1: key column '{key}' is missing "
                        "from the header; fix the change export"
                    )
                split = pipeline.HashSplit(
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
            raise pipeline.SourceError(str(exc)) from exc
        finally:
            if split is not None:
                split.close(flush=False)
        n_released = 0 if released is None else released["batch"].num_rows
        rows = split.rows - n_released
        if rows != expected:
            raise pipeline.SourceError(
                f"{path}: read {rows} rows but the change manifest says "
                f"{expected}; the file is truncated or was changed"
            )
        del_path = folder / files["deleted_file"]
        deletions = _read_deletions(del_path, key)
        if len(deletions) != expected_del:
            raise pipeline.SourceError(
                f"{del_path}: read {len(deletions)} deletions but the "
                f"change manifest says {expected_del}"
            )
        lake.write_table(
            f"runs/{safe_run_id(run_id)}/deleted/{table}.parquet",
            pa.Table.from_pandas(deletions, preserve_index=False),
        )
        parts = []
        from handover.lifecycle.retention import forget_purged

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


def list_partitions(lists: list[list[dict]]) -> list[dict]:
    return pipeline.flatten(lists)


# ---------------------------------------------------------------- comply
@lru_cache(maxsize=4)
def _facts(state_dir: str, system: str, exported_at: str, stamp: float):
    """Objections and consents as of the night's end, from the legacy state."""
    from handover.stages.comply import policy_facts

    cfg = _config(system)
    frames: dict[str, pd.DataFrame | None] = {"objection": None, "consent": None}
    for what in frames:
        spec = cfg.policy.get(what)
        if not spec:
            continue
        t = spec["table"]
        cols = (
            [cfg.table(t)["customer_column"], spec["column"]]
            if what == "objection"
            else [spec["customer_column"], spec["purpose_column"], spec["granted_column"]]
        )
        frames[what] = pd.read_csv(
            state_file(state_dir, t), usecols=cols, dtype=str, keep_default_na=False
        )
    obj = cfg.policy.get("objection")
    cust = cfg.table(obj["table"]).get("customer_column", "cust_id") if obj else "cust_id"
    return policy_facts(
        frames["objection"],
        frames["consent"],
        cfg.policy,
        pd.Timestamp(exported_at),
        customer_column=cust,
    )


def comply_partition(ctx: dict, part: dict) -> dict:
    """The migration's policy decision, with facts from the legacy state as of the night."""
    from handover.stages.comply import decide

    cfg = _config(ctx["system"])
    table, partition, run_id = part["table"], part["partition"], ctx["run_id"]
    lake = _lake()
    raw = lake.read_table(part_key(run_id, "raw", table, partition)).to_pandas()
    spec = cfg.table(table)
    state = Path(ctx["state_dir"]) / "export_manifest.json"
    facts = _facts(ctx["state_dir"], ctx["system"], ctx["exported_at"], state.stat().st_mtime)
    event_time = spec.get("event_time")
    cust_col = spec.get("customer_column")
    from handover.lifecycle.subject import erased_among

    erased = erased_among(raw[cust_col].tolist()) if cust_col in raw.columns else frozenset()
    res = decide(
        raw,
        table_spec=spec,
        category_policy=cfg.category_policy(table),
        policy=cfg.policy,
        facts=facts,
        erased=erased,
        event_time_format=cfg.rules(table).get("dates", {}).get(event_time) if event_time else None,
    )
    lake.write_table(
        part_key(run_id, "comply", table, partition),
        pa.Table.from_pandas(res.moved, preserve_index=False),
    )
    lake.write_table(
        part_key(run_id, "comply/_excluded", table, partition),
        pa.Table.from_pandas(res.excluded, preserve_index=False),
    )
    key = spec["key"]
    from handover.lifecycle.retention import count_purged

    counts = dict(res.counts)
    n_purged = count_purged(lake, run_id, table, partition, counts)  # destroyed at run end
    with ledger.connect() as conn, conn.transaction():
        keys = [
            str(k).strip() if isinstance(k, str) and k.strip() else f"row:{r}"
            for k, r in zip(res.excluded[key], res.excluded["_source_row"], strict=True)
        ]
        ledger.replace_exclusions(
            conn, run_id, table, partition, keys, res.excluded["_rule"], res.excluded["_destroy_by"]
        )
        ledger.record(
            conn,
            run_id=run_id,
            table=table,
            partition=partition,
            stage="comply",
            rows_in=len(raw) + n_purged,
            rows_out=len(res.moved),
            excluded=len(res.excluded) + n_purged,
            checksum=ledger.key_checksum(res.moved[key].to_numpy(dtype=object)),
            detail={"excluded_by_rule": counts, "destroyed_at_run_end": n_purged},
        )
    log.info(
        "comply %s %s: %d in, %d moved, %d excluded %s",
        table,
        partition,
        len(raw) + n_purged,
        len(res.moved),
        len(res.excluded) + n_purged,
        counts,
    )
    return {
        "table": table,
        "partition": partition,
        "rows": len(res.moved),
        "excluded": len(res.excluded) + n_purged,
    }


# ---------------------------------------------------------------- resolve
def resolve_customers(ctx: dict) -> dict:
    """The migration's parent registry for the night, completed with what the target knows.

    The night's own parents are validated and de-duplicated as in the migration; then a
    newcomer whose person (blind index) already lives in the target under another key is a
    DUPLICATE_PERSON (the sync never demotes a migrated customer), and parents the night's
    children refer to are looked up: alive in the target (or deleted only by a later
    night) is valid, else the fate an earlier run gave them.
    """
    from psycopg import sql

    summary = pipeline.resolve_customers(ctx)
    cfg, lake, run_id = _config(ctx["system"]), _lake(), ctx["run_id"]
    start = pd.Timestamp(ctx["interval_start"]).to_pydatetime()
    for table in pipeline.parent_tables(cfg):
        path = f"runs/{safe_run_id(run_id)}/resolve/{table}.parquet"
        reg = lake.read_table(path).to_pandas()
        tmap = cfg.table_mapping(table)
        tgt, key = sql.Identifier(cfg.mapping["schema"], tmap["target"]), tmap["key"]
        referenced: set[str] = set()
        for child, rules in cfg.cleansing["tables"].items():
            parent = rules.get("parent")
            if not parent or parent["table"] != table:
                continue
            for k in lake.list(f"runs/{safe_run_id(run_id)}/comply/{child}/"):
                col = lake.read_table(k, columns=[parent["column"]]).to_pandas()[parent["column"]]
                referenced |= {v.strip() for v in col.dropna() if v.strip()}
        wanted = sorted(referenced | set(reg["key"]))
        with ledger.connect() as conn:
            losers = _duplicates_in_target(conn, ctx, cfg, table, reg)
            alive = {
                r[0]
                for r in conn.execute(
                    sql.SQL("SELECT {k} FROM {t} WHERE {k} = ANY(%s)").format(
                        k=sql.Identifier(key), t=tgt
                    ),
                    (wanted,),
                )
            }
            alive |= {
                r[0]
                for r in conn.execute(
                    "SELECT record_key FROM handover_meta.tombstone WHERE table_name=%s AND "
                    "record_key = ANY(%s) AND deleted_at >= %s",
                    (table, wanted, start),
                )
            }
            # The fate an earlier finished run gave a parent; "quarantined" sorts before
            # "x_excluded", so a key with both is quarantined, as ParentRegistry ranks them.
            # Books name destroyed rows (excluded rows after their run's end, erased ones)
            # by keyed hash: look a parent up under both names.
            named = book_names(table, referenced)
            earlier: dict[str, str] = {}
            for k, fate in conn.execute(
                "SELECT e.record_key, min(e.fate) FROM (SELECT run_id, record_key, "
                "'quarantined' AS fate FROM handover_meta.quarantine WHERE table_name=%s "
                "UNION ALL SELECT run_id, record_key, 'x_excluded' FROM "
                "handover_meta.exclusion WHERE table_name=%s) e JOIN handover_meta.run r "
                "USING (run_id) WHERE r.status = 'succeeded' AND r.run_id <> %s AND "
                "e.record_key = ANY(%s) GROUP BY 1",
                (table, table, run_id, sorted(named)),
            ).fetchall():
                k = named[k]
                earlier[k] = min(fate, earlier.get(k, fate))
            # A parent merged into a customer of the target in an earlier run (the same
            # person under another id: the acquirer's, or a duplicate): its children follow
            # that customer, as they did in the migration (handover.stages.identity).
            merged_before: dict[str, str] = {}
            if conn.execute("SELECT to_regclass('handover_meta.person_map')").fetchone()[0]:
                merged_before = dict(
                    conn.execute(
                        "SELECT source_key, target_customer_id FROM handover_meta.person_map "
                        "WHERE source_system = %s AND source_key = ANY(%s) AND decision LIKE "
                        "'merged%%'",
                        (cfg.system, sorted(referenced)),
                    ).fetchall()
                )
        # merged tonight (into a target customer): not a duplicate to quarantine
        merged_now = set(reg.loc[reg["fate"] == "merged", "key"]) if "fate" in reg else set()
        dup = reg["key"].isin(losers - merged_now)
        reg.loc[dup, "fate"] = "quarantined"
        reg.loc[dup, "duplicate_loser"] = True
        # A parent whose row was quarantined tonight still lives in the target: its
        # children are fine.
        revived = reg["key"].isin(alive) & (reg["fate"] == "quarantined") & ~reg["duplicate_loser"]
        reg.loc[revived, "fate"] = "valid"
        extra = sorted(referenced - set(reg["key"]))
        fates = [
            "valid"
            if k in alive
            else "merged"
            if k in merged_before
            else earlier.get(k, "").removeprefix("x_")
            for k in extra
        ]
        more = pd.DataFrame(
            {
                "key": extra,
                "fate": fates,
                "duplicate_loser": False,
                "merged_into": [
                    merged_before.get(k) if f == "merged" else None
                    for k, f in zip(extra, fates, strict=True)
                ],
                "merge_rule": [identity.EXISTING if f == "merged" else None for f in fates],
            }
        )
        reg = pd.concat([reg, more[more["fate"] != ""]], ignore_index=True)
        for col in ("merged_into", "merge_rule"):  # text or null, never NaN
            reg[col] = reg[col].astype(object).where(reg[col].notna(), None)
        lake.write_table(path, pa.Table.from_pandas(reg, preserve_index=False))
        summary[table] = {
            **summary.get(table, {}),
            "duplicates_of_target": len(losers),
            "parents_in_target": int(len(alive & referenced)),
            "parents_unknown": int(sum(1 for f in fates if not f)),
        }
    log.info("resolved parents for the night: %s", summary)
    return summary


def _duplicates_in_target(
    conn, ctx: dict, cfg: SourceConfig, table: str, reg: pd.DataFrame
) -> set[str]:
    """Night-valid parents whose dedupe key (by blind index) belongs to another target row."""
    from psycopg import sql

    from handover.protection.fields import blind_index, field_domain, load_keyring
    from handover.stages.cleanse import validate

    rules, tmap = cfg.rules(table), cfg.table_mapping(table)
    dedupe = rules.get("dedupe")
    if not dedupe:
        return set()
    field = next(
        (
            f
            for f, s in tmap["fields"].items()
            if s.get("from") == dedupe["key"] and "blind_index" in s.get("protect", [])
        ),
        None,
    )
    valid = set(reg.loc[reg["fate"] == "valid", "key"])
    if field is None or not valid:
        return set()
    key = cfg.table(table)["key"]
    lake = _lake()
    frames = [
        lake.read_table(k).to_pandas()
        for k in lake.list(f"runs/{safe_run_id(ctx['run_id'])}/comply/{table}/")
    ]
    raw = pd.concat(frames, ignore_index=True).drop(columns=["_basis"], errors="ignore")
    typed, _ = validate(raw, rules, key=key, exported_at=pd.Timestamp(ctx["exported_at"]))
    typed = typed[typed[key].isin(valid)]
    bidx = blind_index(
        typed[dedupe["key"]].to_numpy(dtype=object),
        load_keyring(),
        field_domain(tmap["target"], field),
    )
    bcol = sql.Identifier(f"{field}_bidx")
    holders = dict(
        conn.execute(
            sql.SQL("SELECT {b}, {k} FROM {t} WHERE {b} = ANY(%s)").format(
                b=bcol,
                k=sql.Identifier(tmap["key"]),
                t=sql.Identifier(cfg.mapping["schema"], tmap["target"]),
            ),
            ([b for b in bidx if b],),
        ).fetchall()
    )
    return {k for k, b in zip(typed[key], bidx, strict=True) if b in holders and holders[b] != k}


# ---------------------------------------------------------------- load + delete
def load_partition(ctx: dict, part: dict) -> dict:
    """Upsert where not older than the target, skipping rows a later night deleted."""
    from psycopg import sql

    from handover.db.load import upsert_newer

    cfg = _config(ctx["system"])
    table, partition, run_id = part["table"], part["partition"], ctx["run_id"]
    tmap = cfg.table_mapping(table)
    mapped = _lake().read_table(part_key(run_id, "mapped", table, partition))
    version = version_column(cfg, table)
    started = time.monotonic()
    with ledger.connect() as conn, conn.transaction():
        keep, tombstoned = _drop_tombstoned(
            conn,
            table,
            mapped,
            tmap["key"],
            version,
            pd.Timestamp(ctx["interval_start"]),
            sql.Identifier(cfg.mapping["schema"], tmap["target"]),
        )
        stats = upsert_newer(
            conn, cfg.mapping["schema"], tmap["target"], tmap["key"], keep, version
        )
        stats["tombstoned"] = tombstoned
        stats.update(pipeline.load_adopted(conn, cfg, run_id, table, partition))
        ledger.record(
            conn,
            run_id=run_id,
            table=table,
            partition=partition,
            stage="load",
            rows_in=mapped.num_rows,
            rows_out=mapped.num_rows,
            checksum=ledger.key_checksum(mapped[tmap["key"]]),
            detail={**stats, "seconds": round(time.monotonic() - started, 3)},
        )
    log.info("load %s %s: %d rows %s", table, partition, mapped.num_rows, stats)
    return {"table": table, "partition": partition, "rows": mapped.num_rows, **stats}


def _drop_tombstoned(
    conn,
    table: str,
    mapped: pa.Table,
    key: str,
    version: str | None,
    start: pd.Timestamp,
    target: Any,
) -> tuple[pa.Table, int]:
    """The partition without the rows a tombstone forbids (deleted at or after the row's
    version, or after the night's start when there is none), and how many those were.

    Set-based: the keys (and versions) go to the server in one binary COPY and the join
    with the tombstones returns only the dead keys, which Arrow then filters out. (Keys as
    a Python list through `= ANY(...)` and a Python loop cost 0.33-0.6 s a 250,000-row
    partition.)"""
    from psycopg import sql

    from handover.db.load import copy_arrow

    cols = [key] + ([version] if version else [])
    probe = sql.Identifier("_tomb_probe")
    conn.execute(
        sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {p} AS SELECT {c} FROM {t} WITH NO DATA").format(
            p=probe, t=target, c=sql.SQL(", ").join(sql.Identifier(c) for c in cols)
        )
    )
    conn.execute(sql.SQL("TRUNCATE {}").format(probe))
    copy_arrow(conn, probe, mapped.select(cols))
    newest = sql.SQL("p.{}").format(sql.Identifier(version)) if version else sql.SQL("NULL")
    dead = [
        r[0]
        for r in conn.execute(
            sql.SQL(
                "SELECT p.{k} FROM {p} p JOIN handover_meta.tombstone d ON d.table_name = %s "
                "AND d.record_key = p.{k}::text WHERE d.deleted_at >= coalesce({v}, %s)"
            ).format(k=sql.Identifier(key), p=probe, v=newest),
            (table, start.to_pydatetime()),
        ).fetchall()
    ]
    conn.execute(sql.SQL("DROP TABLE {}").format(probe))
    if not dead:
        return mapped, 0
    gone = pc.is_in(mapped[key], value_set=pa.array(dead, mapped.schema.field(key).type))
    keep = pc.invert(pc.fill_null(gone, False))
    return mapped.filter(keep), mapped.num_rows - pc.sum(keep).as_py()


def apply_deletions(ctx: dict, table: str) -> dict:
    """Tombstone and delete the night's deleted keys (never a row newer than its deletion).

    Set-based, like the loads: the latest deletion per key is found in Arrow and goes to the
    server in one binary COPY; tombstones and deletions are one statement each. (A legacy
    system's own retention purge can delete millions of records in a night.)"""
    from psycopg import sql

    from handover.db.load import copy_arrow, delete_keys

    cfg = _config(ctx["system"])
    run_id = ctx["run_id"]
    tmap = cfg.table_mapping(table)
    dels = _lake().read_table(f"runs/{safe_run_id(run_id)}/deleted/{table}.parquet")
    latest = (
        pa.table(
            {"key": dels["key"], "at": pc.strptime(dels["deleted_at"], format=TIME_FMT, unit="s")}
        )
        .group_by("key")
        .aggregate([("at", "max")])
        .select(["key", "at_max"])
        .rename_columns(["key", "deleted_at"])
        .sort_by("key")
    )
    with ledger.connect() as conn, conn.transaction():
        night = sql.Identifier("_night_deletions")
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE {} (record_key text, deleted_at timestamp) ON COMMIT DROP"
            ).format(night)
        )
        copy_arrow(conn, night, latest.rename_columns(["record_key", "deleted_at"]))
        conn.execute(
            sql.SQL(
                "INSERT INTO handover_meta.tombstone AS t (table_name, record_key, deleted_at, "
                "run_id) SELECT %s, record_key, deleted_at, %s FROM {} "
                "ON CONFLICT (table_name, record_key) DO UPDATE "
                "SET deleted_at = excluded.deleted_at, run_id = excluded.run_id, "
                "recorded_at = now() WHERE excluded.deleted_at > t.deleted_at"
            ).format(night),
            (table, run_id),
        )
        stats = delete_keys(
            conn,
            cfg.mapping["schema"],
            tmap["target"],
            tmap["key"],
            latest,
            version_column(cfg, table),
        )
        ledger.record(
            conn,
            run_id=run_id,
            table=table,
            partition=DELETED,
            stage="delete",
            rows_in=dels.num_rows,
            rows_out=dels.num_rows,
            checksum=ledger.key_checksum(dels["key"]),
            detail={**stats, "duplicate_records": dels.num_rows - latest.num_rows},
        )
        if dels.num_rows:
            ledger.audit(conn, "rows_deleted", run_id=run_id, detail={"table": table, **stats})
    log.info("delete %s: %d deletion records %s", table, dels.num_rows, stats)
    return {"table": table, "partition": DELETED, "rows": dels.num_rows, **stats}


# ---------------------------------------------------------------- reconcile
def compare_fields(cfg: SourceConfig, table: str) -> list[tuple[str, str, dict | None]]:
    """(target column, source column, lookup) of every field kept in clear in the target.

    Encrypted and redacted fields are left out (their target value is not the legacy value
    both sides could hash; the blind index pins the plaintext), as are fields built from
    several columns.
    """
    tmap = cfg.table_mapping(table)
    out = []
    for field, spec in tmap["fields"].items():
        protect = set(spec.get("protect", []))
        if field == tmap["key"] or "from" not in spec or protect & {"encrypt", "redact"}:
            continue  # derived from several columns, or not a function of the legacy value
        lookup = {str(k): v for k, v in spec["lookup"].items()} if "lookup" in spec else None
        out.append((field, spec["from"], lookup))
    return out


def legacy_projection(
    cfg: SourceConfig,
    table: str,
    state_dir: Path,
    as_of: pd.Timestamp,
    reparent: dict[str, str] | None = None,
) -> pd.DataFrame:
    """The legacy state of a table as the target would hold it: key, row hash, version, money.

    The rows go through the migration's own normalisation (`cleanse.validate`) and the
    mapping's lookups, so a clean legacy row and its target row hash alike. `reparent`:
    a child row of a customer merged into another record of its person (merge map) is
    held by the survivor in the target, and is hashed so.
    """
    import pyarrow.csv as pacsv

    from handover.stages.cleanse import validate
    from handover.stages.diff import row_hash
    from handover.stages.reconcile import MONEY_COLUMNS

    spec, rules = cfg.table(table), cfg.rules(table)
    path = state_file(state_dir, table)
    with open(path, encoding="utf-8-sig", newline="") as fh:
        header = fh.readline().rstrip("\r\n").split(",")
    raw = pacsv.read_csv(
        path,
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in header}, strings_can_be_null=False
        ),
    ).to_pandas()
    typed, _ = validate(raw, rules, key=spec["key"], exported_at=as_of)
    fields = compare_fields(cfg, table)
    columns = []
    child_of = spec.get("customer_column") if spec.get("customer_column") != spec["key"] else None
    for _field, src, lookup in fields:
        values = typed[src].astype(object).tolist()
        if reparent and src == child_of:
            values = [reparent.get(v, v) if isinstance(v, str) else v for v in values]
        if lookup is not None:
            values = [lookup.get(str(v)) if isinstance(v, str) else None for v in values]
        columns.append(values)
    keys = typed[spec["key"]].astype(object)
    src_version = VERSION_COLUMNS.get(table)
    money = next((s for f, s, _ in fields if f in MONEY_COLUMNS), None)
    cust_col = spec.get("customer_column")
    out = pd.DataFrame(
        {
            "key": keys.to_numpy(),
            "customer": typed[cust_col].astype(object).to_numpy() if cust_col else None,
            "hash": [row_hash(vals) for vals in zip(*columns, strict=True)]
            if columns
            else [row_hash([]) for _ in range(len(keys))],
            "version": typed[src_version].to_numpy() if src_version else pd.NaT,
            "money": pd.to_numeric(typed[money], errors="coerce").to_numpy() if money else np.nan,
        }
    )
    out = out[out["key"].notna()]
    return out.drop_duplicates("key", keep="first").reset_index(drop=True)


def _latest_applied(conn, ctx: dict) -> tuple[pd.Timestamp, Path]:
    """As of when old and new must agree: the newest night applied (this one or later)."""
    row = conn.execute(
        "SELECT exported_at FROM handover_meta.run WHERE dag_id=%s AND (status='succeeded' OR "
        "run_id=%s) ORDER BY exported_at DESC LIMIT 1",
        (ctx["dag_id"], ctx["run_id"]),
    ).fetchone()
    as_of = pd.Timestamp(row[0])
    folder = change_set_dir(ctx["changes_dir"], as_of - pd.Timedelta(days=1))
    manifest = folder / "change_manifest.json"
    if not manifest.is_file():
        raise pipeline.SourceError(
            f"{manifest}: the newest night applied ends {as_of}; its change "
            "set (with the legacy state) is needed to reconcile"
        )
    state = folder / json.loads(manifest.read_text(encoding="utf-8")).get("state", "state")
    exported = json.loads((state / "export_manifest.json").read_text())["exported_at"]
    if pd.Timestamp(exported) != as_of:
        raise pipeline.SourceError(f"{state}: legacy state as of {exported}, expected {as_of}")
    return as_of, state


def book_names(table: str, keys) -> dict[str, str]:
    """Each key under the names the books may give it: itself, and the keyed hash that
    replaces it once its row is destroyed (retention.key_digest); name -> key."""
    from handover.lifecycle.retention import DESTROYED, key_digest
    from handover.protection.fields import load_keyring

    ring = load_keyring()
    out = {k: k for k in keys}
    out.update({DESTROYED + key_digest(ring, table, k): k for k in keys})
    return out


def _by_book_name(marks: dict[str, Any], table: str, keys: pd.Series) -> pd.Series:
    """`marks` (book name -> value) for each key, found by the key or by its keyed hash."""
    found = keys.map(marks)
    if any(str(k).startswith("destroyed:") for k in marks) and found.isna().any():
        missing = keys[found.isna()].dropna().astype(str)
        named = book_names(table, set(missing))
        by_key = {named[n]: v for n, v in marks.items() if n in named}
        found = found.where(found.notna(), keys.map(by_key))
    return found


def _corrected(conn, table: str, legacy: pd.DataFrame) -> np.ndarray:
    """Per legacy row: a subject request corrected it in the new system, and the legacy row
    has not changed since (its version is not newer than the correction)."""
    from handover.lifecycle.retention import key_digest
    from handover.protection.fields import load_keyring

    rows = conn.execute(
        "SELECT key_hmac, max(corrected_at) FROM handover_meta.correction "
        "WHERE table_name = %s GROUP BY 1",
        (table,),
    ).fetchall()
    if not rows:
        return np.zeros(len(legacy), dtype=bool)
    ring = load_keyring()
    at = dict(rows)
    when = pd.to_datetime(
        legacy["key"].map(
            lambda k: at.get(key_digest(ring, table, str(k))) if isinstance(k, str) else None
        )
    )
    hit = when.notna()
    versions = pd.to_datetime(legacy["version"], errors="coerce")
    return (hit & (versions.isna() | (versions <= when))).to_numpy()


def _survivors(conn, table: str) -> dict[str, str]:
    """{merged key: the record that holds its person now} of a parent table (merge map,
    the latest decision per key, followed to its end)."""
    pairs = dict(
        conn.execute(
            "SELECT DISTINCT ON (merged_key) merged_key, survivor_key FROM handover_meta.merge_map "
            "WHERE table_name = %s AND merged_key <> survivor_key ORDER BY merged_key, "
            "recorded_at DESC",
            (table,),
        ).fetchall()
    )
    out = {}
    for k, v in pairs.items():
        seen = {k}
        while v in pairs and v not in seen:
            seen.add(v)
            v = pairs[v]
        out[k] = v
    return out


def _accounted(conn, table: str, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per key, the newest as-of of a quarantine and of an exclusion in a finished run. A
    record merged into another of its person (merge map) is absent from the target as a
    quarantined one is: counted with them."""
    out: dict[str, dict[str, Any]] = {"q": {}, "x": {}}
    for kind, key, as_of in conn.execute(
        "SELECT e.kind, e.record_key, max(r.exported_at) FROM (SELECT 'q' AS kind, run_id, "
        "record_key FROM handover_meta.quarantine WHERE table_name=%s UNION ALL SELECT 'x', "
        "run_id, record_key FROM handover_meta.exclusion WHERE table_name=%s UNION ALL "
        "SELECT 'q', run_id, merged_key FROM handover_meta.merge_map WHERE table_name=%s "
        "AND merged_key <> survivor_key) e "
        "JOIN handover_meta.run r USING (run_id) "
        "WHERE r.status='succeeded' OR r.run_id=%s GROUP BY 1, 2",
        (table, table, table, run_id),
    ):
        out[kind][key] = as_of
    return out["q"], out["x"]


def reconcile_table(ctx: dict, table: str) -> dict:
    """The night's ledger balance, then old versus new for the whole table."""
    from psycopg import sql

    from handover.stages.diff import FrameSide, PostgresSide, diff_sides, sql_row_hash
    from handover.stages.reconcile import MONEY_COLUMNS

    cfg = _config(ctx["system"])
    run_id = ctx["run_id"]
    tmap = cfg.table_mapping(table)
    schema, target, key = cfg.mapping["schema"], tmap["target"], tmap["key"]
    with ledger.connect() as conn, conn.transaction():
        totals = {
            (stage, is_deleted): r
            for stage, is_deleted, *r in conn.execute(
                "SELECT stage, partition = %s AS d, sum(rows_in), sum(rows_out), "
                "sum(rows_quarantined), sum(rows_excluded), sum(rows_merged) FROM "
                "handover_meta.ledger WHERE "
                "run_id=%s AND table_name=%s GROUP BY 1, 2",
                (DELETED, run_id, table),
            ).fetchall()
        }
        need = [
            ("extract", False),
            ("extract", True),
            ("comply", False),
            ("cleanse", False),
            ("map", False),
            ("load", False),
            ("delete", True),
        ]
        for stage in need:
            if stage not in totals:
                raise RuntimeError(
                    f"reconcile {table}: no ledger rows for stage '{stage[0]}' "
                    f"in run {run_id}; that stage did not complete, rerun it"
                )
        t = {
            s: dict(zip(("in", "out", "q", "x", "m"), map(int, totals[s]), strict=True))
            for s in need
        }
        changed, deleted = t[("extract", False)]["in"], t[("extract", True)]["in"]
        # orphans of earlier nights taken in again are extra rows, not in tonight's file
        released = int(
            conn.execute(
                "SELECT coalesce(sum((detail->>'released_orphans')::int), 0) FROM "
                "handover_meta.ledger WHERE run_id=%s AND table_name=%s AND stage='extract'",
                (run_id, table),
            ).fetchone()[0]
        )
        loaded, quarantined = t[("load", False)]["out"], t[("cleanse", False)]["q"]
        merged = t[("cleanse", False)]["m"]  # into a customer the target already holds
        excluded = t[("comply", False)]["x"]
        chain = (
            t[("extract", False)]["out"] == t[("comply", False)]["in"]
            and t[("comply", False)]["out"] == t[("cleanse", False)]["in"]
            and t[("cleanse", False)]["out"] == t[("map", False)]["in"]
            and t[("map", False)]["out"] == t[("load", False)]["in"]
            and t[("delete", True)]["in"] == deleted
        )

        as_of, state_dir = _latest_applied(conn, ctx)
        parent = (cfg.rules(table).get("parent") or {}).get("table")
        reparent = _survivors(conn, parent) if parent else None
        legacy = legacy_projection(cfg, table, state_dir, as_of, reparent)
        q_at, x_at = _accounted(conn, table, run_id)
        has_version = table in VERSION_COLUMNS

        def covered(marks: dict, keys: pd.Series, versions: pd.Series) -> np.ndarray:
            """A run no older than the legacy row quarantined / excluded the key."""
            at = pd.to_datetime(_by_book_name(marks, table, keys))
            ok = at.notna()
            if has_version:
                ok &= (at >= pd.to_datetime(versions)) | versions.isna()
            return ok.to_numpy()

        in_quarantine = covered(q_at, legacy["key"], legacy["version"])
        in_exclusion = covered(x_at, legacy["key"], legacy["version"]) & ~in_quarantine
        # An erased person's rows are still in the legacy system; the new one must not
        # hold them: expected absences, not missing rows.
        from handover.lifecycle.subject import erased_among

        erased = erased_among(legacy["customer"].tolist())
        in_erasure = (
            (
                legacy["customer"].isin(erased).to_numpy()
                if erased
                else np.zeros(len(legacy), dtype=bool)
            )
            & ~in_quarantine
            & ~in_exclusion
        )
        in_exclusion = in_exclusion | in_erasure
        # A value the customer corrected in the new system (a subject request) differs from
        # the legacy row until the legacy row changes after the correction.
        in_correction = _corrected(conn, table, legacy) & ~in_quarantine & ~in_exclusion
        set_aside = legacy.loc[in_quarantine | in_correction, "key"].tolist()
        kept = legacy[~in_quarantine & ~in_exclusion & ~in_correction]

        aside = sql.Identifier(f"aside_{target}")
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} (k text PRIMARY KEY) ON COMMIT DROP").format(aside)
        )
        with conn.cursor().copy(sql.SQL("COPY {} (k) FROM STDIN").format(aside)) as cp:
            for k in set_aside:
                cp.write_row((k,))
        types = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE "
            "table_schema=%s AND table_name=%s",
            (schema, target),
        ).fetchall()
        types = dict(types)
        fields = [(f, types[f]) for f, _, _ in compare_fields(cfg, table)]
        tgt, kid = sql.Identifier(schema, target), sql.Identifier(key)
        # Rows the person map gives to another system (the acquirer's own customers and
        # their rows, another operator's) that the legacy system does not hold: not this
        # system's to agree with. A row of this system's re-parented to such a customer
        # is compared (the legacy side holds its key).
        theirs = sql.SQL("")
        from handover.config.shapes import shapes

        owner = shapes(cfg)[table].target_customer
        if owner and identity.others_held(conn, cfg.system):
            ours = sql.Identifier(f"ours_{target}")
            conn.execute(
                sql.SQL("CREATE TEMP TABLE {} (k text PRIMARY KEY) ON COMMIT DROP").format(ours)
            )
            with conn.cursor().copy(sql.SQL("COPY {} (k) FROM STDIN").format(ours)) as cp:
                for k in legacy["key"]:
                    cp.write_row((k,))
            theirs = sql.SQL(
                " AND NOT (EXISTS (SELECT 1 FROM handover_meta.person_map p WHERE "
                "p.source_key = t.{c} AND p.source_system <> {me}) AND NOT EXISTS (SELECT 1 "
                "FROM {o} o WHERE o.k = t.{k}::text))"
            ).format(
                c=sql.Identifier(owner), me=sql.Literal(cfg.system), o=ours, k=sql.Identifier(key)
            )
        right = PostgresSide(
            conn,
            "target",
            sql.SQL(
                "SELECT t.{k} AS k, {h} AS h FROM {t} t WHERE NOT EXISTS "
                "(SELECT 1 FROM {a} a WHERE a.k = t.{k}){theirs}"
            ).format(k=kid, h=sql_row_hash(fields), t=tgt, a=aside, theirs=theirs),
        )
        left = FrameSide("legacy", kept["key"].tolist(), kept["hash"].tolist())
        result = diff_sides(left, right)

        money_col = next((f for f, _ in fields if f in MONEY_COLUMNS), None)
        money_source = money_target = None
        if money_col:
            money_source = int(np.nansum(kept["money"].astype(float)))
            money_target = int(
                conn.execute(
                    sql.SQL(
                        "SELECT coalesce(sum(t.{m}), 0) FROM {t} t WHERE NOT EXISTS "
                        "(SELECT 1 FROM {a} a WHERE a.k = t.{k})"
                    ).format(m=sql.Identifier(money_col), t=tgt, a=aside, k=kid)
                ).fetchone()[0]
            )
        target_rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(tgt)).fetchone()[0]

        checks = {
            "ledger_balances": changed + deleted
            == (loaded + merged + quarantined + excluded + deleted),
            "stages_chain": chain,
            "manifest_matches": (
                changed - released == ctx["manifest_rows"][table]
                and deleted == ctx["deleted_rows"][table]
            ),
            "old_new_agree": result.differing == 0,
            "money_equal": money_source == money_target,
        }
        balanced = all(checks.values())
        conn.execute(
            "INSERT INTO handover_meta.reconciliation (run_id, table_name, source_rows, loaded, "
            "quarantined, excluded, target_rows, missing_keys, field_mismatches, money_source, "
            "money_target, balanced, merged) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
            "ON CONFLICT (run_id, table_name) DO UPDATE SET source_rows=excluded.source_rows, "
            "loaded=excluded.loaded, quarantined=excluded.quarantined, merged=excluded.merged, "
            "excluded=excluded.excluded, target_rows=excluded.target_rows, "
            "missing_keys=excluded.missing_keys, field_mismatches=excluded.field_mismatches, "
            "money_source=excluded.money_source, money_target=excluded.money_target, "
            "balanced=excluded.balanced, checked_at=now()",
            (
                run_id,
                table,
                changed + deleted,
                loaded,
                quarantined,
                excluded + deleted,
                target_rows,
                len(result.only_left) + len(result.only_right),
                len(result.changed),
                money_source,
                money_target,
                balanced,
                merged,
            ),
        )
        report = {
            "table": table,
            "run_id": run_id,
            "as_of": str(as_of),
            "balanced": balanced,
            "checks": checks,
            "changed_rows": changed,
            "deleted_rows": deleted,
            "loaded": loaded,
            "merged": merged,
            "quarantined": quarantined,
            "excluded": excluded,
            "target_rows": int(target_rows),
            "money_source": money_source,
            "money_target": money_target,
            "old_vs_new": {
                **result.counts(),
                "legacy_rows": len(legacy),
                "set_aside_quarantined": int(in_quarantine.sum()),
                "set_aside_excluded": int(in_exclusion.sum()),
                "set_aside_erased": int(in_erasure.sum()),
                "set_aside_corrected": int(in_correction.sum()),
            },
            # keys only (identifiers, as in handover_meta.quarantine), never values
            "differing_keys_sample": result.keys()[:20],
        }
        _lake().write_json(f"runs/{safe_run_id(run_id)}/reconcile/{table}.json", report)
        ledger.audit(
            conn,
            "table_reconciled",
            run_id=run_id,
            detail={k: v for k, v in report.items() if k != "differing_keys_sample"},
        )
    log.info(
        "reconcile %s as of %s: old %d vs new %d rows compared (%d quarantined and %d "
        "excluded set aside), %d keys differ (%d missing in new, %d only in new, "
        "%d changed); %d segments, %d rows fetched",
        table,
        as_of,
        result.left_rows,
        result.right_rows,
        in_quarantine.sum(),
        in_exclusion.sum(),
        result.differing,
        len(result.only_left),
        len(result.only_right),
        len(result.changed),
        result.segments_compared,
        result.rows_fetched,
    )
    return {"table": table, "partition": "all", "balanced": balanced, "differing": result.differing}


def reconciliation_gate(ctx: dict, table: str) -> dict:
    """The migration's reconciliation gate; on failure, say how old and new disagree."""
    try:
        return pipeline.reconciliation_gate(ctx, table)
    except pipeline.GateFailed as exc:
        key = f"runs/{safe_run_id(ctx['run_id'])}/reconcile/{table}.json"
        lake = _lake()
        rep = lake.read_json(key)
        d = rep["old_vs_new"]
        raise pipeline.GateFailed(
            f"{exc}; old vs new as of {rep['as_of']}: {d['differing']} keys differ "
            f"({d['only_left']} missing in the target, {d['only_right']} only in the target, "
            f"{d['changed']} changed); failed checks: "
            f"{', '.join(k for k, ok in rep['checks'].items() if not ok)}; keys in "
            f"{lake.uri(key)}"
        ) from exc


def publish(ctx: dict) -> dict:
    return pipeline.publish(ctx)


# ---------------------------------------------------------------- in-process runner
def run_night(
    *,
    changes_dir: str,
    data_interval_start: Any,
    data_interval_end: Any,
    system: str = "legacy_bss",
    dag_id: str = DAG_ID,
    timings: dict[str, float] | None = None,
) -> dict:
    """One night in one process, in the DAG's order (tests, and the CLI below)."""
    t = timings if timings is not None else {}

    def timed(name, fn, *a, **kw):
        started = time.monotonic()
        out = fn(*a, **kw)
        t[name] = t.get(name, 0.0) + time.monotonic() - started
        return out

    ctx = timed(
        "plan",
        plan_night,
        dag_id=dag_id,
        system=system,
        changes_dir=changes_dir,
        data_interval_start=data_interval_start,
        data_interval_end=data_interval_end,
    )
    parts = list_partitions(
        [timed("extract", extract_changes, ctx, table) for table in ctx["tables"]]
    )
    parts = [timed("gate_intake", pipeline.run_gate_task, ctx, p, "intake") for p in parts]
    parts = [timed("comply", comply_partition, ctx, p) for p in parts]
    parts = [timed("gate_compliance", pipeline.run_gate_task, ctx, p, "compliance") for p in parts]
    timed("resolve", resolve_customers, ctx)
    parts = [timed("cleanse", pipeline.cleanse_partition, ctx, p) for p in parts]
    parts = [timed("gate_quality", pipeline.run_gate_task, ctx, p, "quality") for p in parts]
    parts = [timed("map_protect", pipeline.map_protect_partition, ctx, p) for p in parts]
    parts = [timed("gate_contract", pipeline.run_gate_task, ctx, p, "contract") for p in parts]
    loaded = [timed("load", load_partition, ctx, p) for p in parts]
    deleted = [timed("delete", apply_deletions, ctx, table) for table in ctx["tables"]]
    reconciled = [timed("reconcile", reconcile_table, ctx, table) for table in ctx["tables"]]
    for r in reconciled:
        timed("gate_reconciliation", reconciliation_gate, ctx, r["table"])
    return {
        "ctx": ctx,
        "loaded": loaded,
        "deleted": deleted,
        "reconciled": reconciled,
        "reports": timed("publish", publish, ctx),
        "timings": t,
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m handover.flows.nightly",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--changes-dir", required=True)
    ap.add_argument("--day", required=True, help="legacy day YYYY-MM-DD (the data interval)")
    ap.add_argument("--system", default="legacy_bss")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = pd.Timestamp(args.day)
    out = run_night(
        changes_dir=args.changes_dir,
        data_interval_start=start,
        data_interval_end=start + pd.Timedelta(days=1),
        system=args.system,
    )
    for r in out["reconciled"]:
        print(f"{r['table']:<18} balanced={r['balanced']} differing={r['differing']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
