"""The destruction gate: a search of the target, the books, the lake and every readable
backup for what was destroyed; anything found fails with the step to clear and rerun.
"""

from __future__ import annotations

from typing import Any

from handover.config.shapes import shapes
from handover.core.errors import DestructionIncomplete
from handover.db import ledger
from handover.lifecycle.backup.shred import files_containing
from handover.lifecycle.retention.destroy import _all_values, books_with_keys
from handover.lifecycle.retention.plan import columns_for, lake_partitions, normalise
from handover.storage.lake import lake_from_url


def remaining(keys: dict[str, set[str]], customers: set[str], *, system: str, ring) -> dict:
    """Search the target, the books, the lake and readable backups for what was destroyed."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from psycopg import sql

    from handover.config.loader import load_config

    cfg, lake = load_config(system), lake_from_url()
    found: dict[str, Any] = {"target": {}, "books": 0, "lake": {}, "backups": {}}
    with ledger.connect() as conn:
        for table, s in shapes(cfg).items():
            conds, args = [], []
            if keys.get(table):
                conds.append(sql.SQL("{} = ANY(%s)").format(sql.Identifier(s.target_key)))
                args.append(sorted(keys[table]))
            if customers and s.target_customer:
                conds.append(sql.SQL("{} = ANY(%s)").format(sql.Identifier(s.target_customer)))
                args.append(sorted(customers))
            if conds:
                n = conn.execute(  # type: ignore[index]  # count(*) always returns a row
                    sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
                        sql.Identifier(cfg.mapping["schema"], s.target), sql.SQL(" OR ").join(conds)
                    ),
                    args,
                ).fetchone()[0]
                if n:
                    found["target"][table] = n
        books = books_with_keys(conn)
        for table, values in keys.items():
            for book in books:
                found["books"] += conn.execute(  # type: ignore[index]  # count(*) always returns a row
                    sql.SQL(
                        "SELECT count(*) FROM handover_meta.{} WHERE table_name = %s AND "
                        "record_key = ANY(%s)"
                    ).format(sql.Identifier(book)),
                    (table, sorted(values)),
                ).fetchone()[0]
        found["backups"] = files_containing(
            conn, lake, ring, _all_values(keys, customers), normalise=normalise
        )
    all_shapes = shapes(cfg)
    needles = {t: pa.array(sorted(v), pa.string()) for t, v in keys.items() if v}
    cust = pa.array(sorted(customers), pa.string()) if customers else None
    for key, stage, table in lake_partitions(lake, cfg):
        tbl = lake.read_table(key)
        kcol, ccol, _, _ = columns_for(all_shapes[table], stage, tbl.column_names)
        n = 0
        if kcol and table in needles:
            n += pc.sum(pc.is_in(normalise(tbl[kcol]), value_set=needles[table])).as_py() or 0
        if cust is not None and ccol and ccol in tbl.column_names:
            n += pc.sum(pc.is_in(normalise(tbl[ccol]), value_set=cust)).as_py() or 0
        if n:
            found["lake"][key] = n
    return found


def verify_destroyed(keys: dict[str, set[str]], customers: set[str], *, system: str, ring) -> dict:
    """The destruction gate: nothing destroyed may remain readable anywhere."""
    found = remaining(keys, customers, system=system, ring=ring)
    if found["target"]:
        t, n = next(iter(found["target"].items()))
        raise DestructionIncomplete(
            f"destruction incomplete: {n} rows of {t} still in the "
            "target; clear the destroy_in_target task and run it again"
        )
    if found["books"]:
        raise DestructionIncomplete(
            f"destruction incomplete: {found['books']} record keys still "
            "in the books (handover_meta quarantine/exclusion/...); "
            "clear destroy_in_target and run it again"
        )
    if found["lake"]:
        k, n = next(iter(found["lake"].items()))
        raise DestructionIncomplete(
            f"destruction incomplete: {n} rows still in lake object {k} "
            f"(and {len(found['lake']) - 1} more objects); clear "
            "destroy_in_lake and run it again"
        )
    if found["backups"]:
        b, files = next(iter(found["backups"].items()))
        raise DestructionIncomplete(
            f"destruction incomplete: backup {b} file {files[0]} is "
            "still readable and holds destroyed keys; clear "
            "shred_backups and run it again"
        )
    return {
        "remaining_in_target": 0,
        "remaining_in_books": 0,
        "remaining_in_lake": 0,
        "readable_backup_files_holding_them": 0,
    }
