"""Destroying what the plan lists, in each place data lives, each its own way:

- the target (`crm`): rows are deleted, one transaction for all tables; in the books
  (`handover_meta.exclusion` / `quarantine`, the merge and person maps) the record key is
  replaced by its keyed hash, so counts still balance but the key is gone;
- the lake: every partition of every run is rewritten without the destroyed rows; on S3
  the older object versions are deleted too, so no version keeps them;
- backups, which cannot be edited: every file that holds a destroyed key is
  crypto-shredded (handover.lifecycle.backup.shred), and a fresh backup is taken.
"""

from __future__ import annotations

import logging

from handover.config.shapes import customer_table, shapes
from handover.db import ledger
from handover.lifecycle.backup.shred import files_containing, shred_files
from handover.lifecycle.books import lifecycle_connect
from handover.lifecycle.lake_purge import purge_noncurrent
from handover.lifecycle.retention.plan import (
    DESTROYED,
    columns_for,
    key_digest,
    lake_partitions,
    normalise,
)
from handover.storage.lake import lake_from_url

log = logging.getLogger("handover")


def books_with_keys(conn) -> list[str]:
    """handover_meta tables that name records by (table_name, record_key): quarantine,
    exclusion, and any added later (e.g. the nightly sync's tombstones)."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT c.table_name FROM information_schema.columns c JOIN information_schema.tables t "
            "USING (table_schema, table_name) WHERE c.table_schema = 'handover_meta' "
            "AND t.table_type = 'BASE TABLE' AND c.column_name IN ('table_name', 'record_key') "
            "GROUP BY 1 HAVING count(*) = 2 ORDER BY 1"
        ).fetchall()
    ]


def _pseudonymise_maps(conn, cfg, table: str) -> int:
    """The merge map's and (for the customer table) the person map's and the identity
    review queue's customer ids among _destroyed, replaced by their keyed hashes like
    every other book's keys."""
    n = 0
    if conn.execute("SELECT to_regclass('handover_meta.merge_map')").fetchone()[0]:
        for col in ("merged_key", "survivor_key"):
            n += conn.execute(
                f"UPDATE handover_meta.merge_map b SET {col} = d.d FROM _destroyed d "
                f"WHERE b.table_name = %s AND b.{col} = d.k",
                (table,),
            ).rowcount
    if table != customer_table(cfg):
        return n
    for book in ("person_map", "identity_review"):
        if conn.execute("SELECT to_regclass(%s)", (f"handover_meta.{book}",)).fetchone()[0]:
            for col in ("source_key", "target_customer_id"):
                n += conn.execute(
                    f"UPDATE handover_meta.{book} b SET {col} = d.d FROM _destroyed d "
                    f"WHERE b.{col} = d.k"
                ).rowcount
    return n


def destroy_in_target(keys: dict[str, set[str]], customers: set[str], *, system: str, ring) -> dict:
    """Delete the rows (and a customer's rows in every table) in one transaction; replace
    record keys in the books by their keyed hashes."""
    from psycopg import sql

    from handover.config.loader import load_config

    cfg = load_config(system)
    schema = cfg.mapping["schema"]
    deleted: dict[str, int] = {}
    books = 0
    with ledger.connect() as conn, conn.transaction():
        for table, s in shapes(cfg).items():
            mine = sorted(keys.get(table, ()))
            conds, args = [], []
            if mine:
                conds.append(sql.SQL("{} = ANY(%s)").format(sql.Identifier(s.target_key)))
                args.append(mine)
            if customers and s.target_customer:
                conds.append(sql.SQL("{} = ANY(%s)").format(sql.Identifier(s.target_customer)))
                args.append(sorted(customers))
            if not conds:
                continue
            cur = conn.execute(
                sql.SQL("DELETE FROM {} WHERE {}").format(
                    sql.Identifier(schema, s.target), sql.SQL(" OR ").join(conds)
                ),
                args,
            )
            if cur.rowcount:
                deleted[table] = cur.rowcount
        for table, values in keys.items():
            if not values:
                continue
            pairs = [(k, DESTROYED + key_digest(ring, table, k)) for k in values]
            conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS _destroyed (k text, d text) ON COMMIT DROP"
            )
            conn.execute("TRUNCATE _destroyed")
            with conn.cursor().copy("COPY _destroyed (k, d) FROM STDIN") as cp:
                for pair in pairs:
                    cp.write_row(pair)
            for book in books_with_keys(conn):
                cur = conn.execute(
                    sql.SQL(
                        "UPDATE handover_meta.{} b SET record_key = d.d FROM _destroyed d "
                        "WHERE b.table_name = %s AND b.record_key = d.k"
                    ).format(sql.Identifier(book)),
                    (table,),
                )
                books += cur.rowcount
            books += _pseudonymise_maps(conn, cfg, table)
    log.info(
        "destroyed in target: %s rows; %d record keys pseudonymised in the books", deleted, books
    )
    return {"target_rows_deleted": deleted, "book_keys_pseudonymised": books}


def destroy_in_lake(keys: dict[str, set[str]], customers: set[str], *, system: str) -> dict:
    """Rewrite every partition that holds a destroyed row without it (old S3 versions go)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from handover.config.loader import load_config

    cfg, lake = load_config(system), lake_from_url()
    all_shapes = shapes(cfg)
    needles = {t: pa.array(sorted(v), pa.string()) for t, v in keys.items() if v}
    cust = pa.array(sorted(customers), pa.string()) if customers else None
    rows: dict[str, int] = {}
    objects = versions = 0
    for key, stage, table in lake_partitions(lake, cfg):
        s = all_shapes[table]
        if table not in needles and cust is None:
            continue
        tbl = lake.read_table(key)
        kcol, ccol, _, _ = columns_for(s, stage, tbl.column_names)
        mask = None
        if kcol and table in needles:
            mask = pc.fill_null(pc.is_in(normalise(tbl[kcol]), value_set=needles[table]), False)
        if cust is not None and ccol and ccol in tbl.column_names:
            hit = pc.fill_null(pc.is_in(normalise(tbl[ccol]), value_set=cust), False)
            mask = hit if mask is None else pc.or_(mask, hit)
        if mask is None:
            continue
        n = pc.sum(mask).as_py() or 0
        if not n:
            continue
        lake.write_table(key, tbl.filter(pc.invert(mask)))
        versions += purge_noncurrent(lake, key)
        objects += 1
        rows[table] = rows.get(table, 0) + n
    log.info(
        "destroyed in lake: %s rows, %d objects rewritten, %d old versions deleted",
        rows,
        objects,
        versions,
    )
    return {
        "lake_rows_deleted": rows,
        "lake_objects_rewritten": objects,
        "lake_old_versions_deleted": versions,
    }


def _all_values(keys: dict[str, set[str]], customers: set[str]) -> set[str]:
    values = set(customers)
    for v in keys.values():
        values |= v
    return values


def shred_backups(keys: dict[str, set[str]], customers: set[str], *, reason: str, ring) -> dict:
    """Crypto-shred every backup file that holds a destroyed key or customer."""
    lake = lake_from_url()
    values = _all_values(keys, customers)
    destroyed = []
    with lifecycle_connect() as conn:
        hits = files_containing(conn, lake, ring, values, normalise=normalise)
        with conn.transaction():
            for backup_id, files in sorted(hits.items()):
                destroyed += shred_files(conn, lake, backup_id, files, reason)
            if destroyed:
                ledger.audit(
                    conn,
                    "backup_files_shredded",
                    detail={
                        "reason": reason,
                        "files": len(destroyed),
                        "backups": sorted(hits),
                        "data_key_ids": [d["data_key_id"] for d in destroyed],
                    },
                )
    log.info("crypto-shredded %d backup files in %d backups", len(destroyed), len(hits))
    fresh = None
    if destroyed:
        # A shredded backup is no longer restorable, and shredding reaches every backup that
        # held the data: a new one is taken at once (the data already gone from the target),
        # so a restore drill, or a real restore, always has a complete backup to use.
        from handover.lifecycle.backup.catalogue import run_backup

        fresh = run_backup(reason="after_destruction")["backup_id"]
        log.info("backup %s taken after the destruction (%s)", fresh, reason)
    return {
        "backups_shredded": sorted(hits),
        "backup_files_shredded": len(destroyed),
        "destroyed_data_keys": destroyed,
        "backup_after_destruction": fresh,
    }
