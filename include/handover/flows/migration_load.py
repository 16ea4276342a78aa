"""The migration's load and reconcile: upsert a mapped partition into the target (after
rows a newer run wrote are set aside), then reconcile a table's ledger and contents."""

from __future__ import annotations

import logging
import time

import pyarrow as pa

from handover.core.contracts import Partition, RunContext, TableResult
from handover.db import ledger
from handover.flows.common import ADOPT, _config, _lake, _part, manifest_sha256
from handover.storage.lake import part_key

log = logging.getLogger("handover")


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
    from handover.stages import identity_survivorship

    name = part_key(run_id, ADOPT["mapped"], table, partition)
    if not _lake().exists(name):
        return {}
    side = _lake().read_table(name)
    return (
        {"fields_adopted": identity_survivorship.apply_adopted(conn, cfg, side)}
        if side.num_rows
        else {}
    )


def load_partition(ctx: RunContext, part: Partition) -> Partition:
    from handover.db.load import upsert_partition
    from handover.flows.common import version_column

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
def reconcile_table(ctx: RunContext, table: str) -> TableResult:
    from handover.flows.common import version_column
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
