"""Everything held about a customer: their rows in the new system (encrypted fields in
clear: it is their own data), every lake copy of every run, and their record keys per
source table (what an access lists and an erasure destroys).
"""

from __future__ import annotations

import base64

from handover.config.shapes import customer_table, shapes
from handover.lifecycle.retention.plan import columns_for, lake_partitions, normalise
from handover.storage.objects import Lake


def _jsonable(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        out.append(
            {
                k: (
                    base64.b64encode(v).decode()
                    if isinstance(v, bytes | bytearray | memoryview)
                    else v
                )
                for k, v in r.items()
            }
        )
    return out


def _decrypt_fields(cfg, table: str, row: dict, ring) -> dict:
    """Encrypted fields in clear (it is the subject's own data); internals dropped."""
    from handover.protection.fields import decrypt_value, field_domain

    target = cfg.table_mapping(table)["target"]
    out = dict(row)
    for name, f in cfg.table_mapping(table)["fields"].items():
        if "encrypt" in f.get("protect", []) and f"{name}_enc" in out:
            blob, kid = out.pop(f"{name}_enc"), out.pop(f"{name}_key_id", None)
            try:
                out[name] = (
                    None
                    if blob is None
                    else decrypt_value(
                        bytes(blob), kid, ring, aad=field_domain(target, name).encode()
                    )
                )
            except Exception:  # noqa: BLE001 - a key no longer held: say so, do not fail
                out[name] = "[encrypted under a key no longer held]"
    return {k: v for k, v in out.items() if not k.endswith(("_bidx", "_key_id", "_enc"))}


def target_rows(conn, cfg, ring, customer_id: str) -> dict[str, list[dict]]:
    from psycopg import sql
    from psycopg.rows import dict_row

    out = {}
    for table, s in shapes(cfg).items():
        if not s.target_customer:
            continue
        cur = conn.cursor(row_factory=dict_row)
        rows = cur.execute(
            sql.SQL("SELECT * FROM {} WHERE {} = %s ORDER BY 1").format(
                sql.Identifier(cfg.mapping["schema"], s.target), sql.Identifier(s.target_customer)
            ),
            (customer_id,),
        ).fetchall()
        if rows:
            out[s.target] = [_decrypt_fields(cfg, table, r, ring) for r in rows]
    return out


def lake_rows(lake: Lake, cfg, customer_id: str, ring=None) -> list[dict]:
    """Every lake partition row of the customer: [{object, stage, table, rows}]."""
    import pyarrow as pa
    import pyarrow.compute as pc

    found = []
    all_shapes = shapes(cfg)
    needle = pa.array([customer_id], pa.string())
    for key, stage, table in lake_partitions(lake, cfg):
        tbl = lake.read_table(key)
        _, ccol, _, _ = columns_for(all_shapes[table], stage, tbl.column_names)
        if not ccol or ccol not in tbl.column_names:
            continue
        mask = pc.fill_null(pc.is_in(normalise(tbl[ccol]), value_set=needle), False)
        if not pc.any(mask).as_py():
            continue
        rows = tbl.filter(mask).to_pylist()
        if ring is not None and stage == "mapped":
            rows = [_decrypt_fields(cfg, table, r, ring) for r in rows]
        found.append({"object": key, "stage": stage, "table": table, "rows": rows})
    return found


def subject_keys(conn, lake: Lake, cfg, customer_id: str) -> dict[str, set[str]]:
    """Record keys of the customer's rows, per source table, in the target and the lake."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from psycopg import sql

    all_shapes = shapes(cfg)
    keys: dict[str, set[str]] = {customer_table(cfg): {customer_id}}
    for table, s in all_shapes.items():
        if s.target_customer:
            keys.setdefault(table, set()).update(
                r[0]
                for r in conn.execute(
                    sql.SQL("SELECT {} FROM {} WHERE {} = %s").format(
                        sql.Identifier(s.target_key),
                        sql.Identifier(cfg.mapping["schema"], s.target),
                        sql.Identifier(s.target_customer),
                    ),
                    (customer_id,),
                ).fetchall()
            )
    needle = pa.array([customer_id], pa.string())
    for key, stage, table in lake_partitions(lake, cfg):
        if stage == "resolve":
            continue
        tbl = lake.read_table(key)
        kcol, ccol, _, _ = columns_for(all_shapes[table], stage, tbl.column_names)
        if not (kcol and ccol and ccol in tbl.column_names):
            continue
        mask = pc.fill_null(pc.is_in(normalise(tbl[ccol]), value_set=needle), False)
        keys.setdefault(table, set()).update(
            k for k in pc.filter(normalise(tbl[kcol]), mask).to_pylist() if k
        )
    return {t: v for t, v in keys.items() if v}
