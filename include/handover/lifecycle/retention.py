"""Retention and destruction: find every copy of data past its retention, destroy it, prove it.

The daily `retention_and_destruction` DAG (and erasure requests, handover.lifecycle.subject) use
this module. Data lives in three places, and each is reached its own way:

- the target (`crm`): rows are deleted, one transaction for all tables; in the books
  (`handover_meta.exclusion` / `quarantine`) the record key is replaced by its keyed
  hash, so counts still balance but the key is gone;
- the lake: every partition of every run (`runs/<run>/<stage>/<table>/part-*.parquet`:
  raw, comply, comply/_excluded, cleanse, cleanse/_quarantine, mapped, and the resolve
  registry) is rewritten without the destroyed rows; on S3 the older object versions
  are deleted too, so no version keeps them;
- backups, which cannot be edited: every file that holds a destroyed key is
  crypto-shredded by destroying its data key (handover.lifecycle.backup.shred_files).

What is past retention: a row whose event time (the catalog's `event_time`) is older
than its category's `retention_months` in policy.yaml at the run's `as_of` date, in
the target or in any lake copy, and every excluded row whose destroy-by date is due.

Each destruction ends with a check that nothing destroyed is still readable anywhere,
then a destruction certificate: what, by which rule, counts per place, the ids of the
destroyed data keys, and the destroyed record keys as keyed hashes (HMAC-SHA256 under
the keyring's blind-index key, so nobody can enumerate them back) with the sha256 of
that list. It goes to the lake as JSON and, bound by its sha256, to the audit trail.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

from handover.config.shapes import Shape, customer_table, shapes
from handover.core.errors import DestructionIncomplete
from handover.db import ledger
from handover.lifecycle.backup import (
    LifecycleError,
    files_containing,
    lifecycle_connect,
    purge,
    purge_noncurrent,
    shred_files,
)
from handover.storage.lake import Lake, lake_from_url, safe_run_id

log = logging.getLogger("handover")

PLAN_PREFIX = "lifecycle/destruction"
CERTIFICATES = "certificates"
DESTROYED = "destroyed:"


# ---------------------------------------------------------------- shapes
def lake_partitions(lake: Lake, cfg) -> Iterator[tuple[str, str, str]]:
    """(object key, stage, table) of every table partition of every run in the lake."""
    for key in lake.list("runs/"):
        if not key.endswith(".parquet"):
            continue
        parts = key.split("/")
        if len(parts) == 4 and parts[2] == "resolve":
            table, stage = parts[3].removesuffix(".parquet").removesuffix(".adopt"), "resolve"
        elif len(parts) >= 5 and parts[-1].startswith("part-"):
            table, stage = parts[-2], "/".join(parts[2:-2])
        else:
            continue
        if table in cfg.tables:
            yield key, stage, table


def columns_for(shape: Shape, stage: str, names: list[str]) -> tuple[str | None, ...]:
    """(key, customer, event, event format) columns of a partition, by its naming."""
    if stage == "resolve":
        return "key", "key" if shape.customer == shape.key else None, None, None
    if shape.key in names:
        return shape.key, shape.customer, shape.event, shape.event_format
    if shape.target_key in names:
        return shape.target_key, shape.target_customer, shape.target_event, None
    return None, None, None, None


def normalise(arr):
    """Keys as the target holds them: NFKC, trimmed (raw copies may be full-width)."""
    import pyarrow as pa

    from handover.core.validators import normalise_text

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return normalise_text(arr.cast(pa.string()))


def _event_times(col, fmt: str | None):
    import pandas as pd
    import pyarrow as pa

    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        text = pd.Series(normalise(col).to_pylist(), dtype=object)
        if isinstance(fmt, list):
            from handover.stages.cleanse import parse_dates

            return parse_dates(text, fmt)
        return pd.to_datetime(text, format=fmt, errors="coerce")
    return pd.to_datetime(pd.Series(col.to_pylist(), dtype=object), errors="coerce")


def key_digest(ring, table: str, key: str) -> str:
    """The keyed hash under which a destroyed key appears in certificates and the books."""
    return hmac.new(
        ring.hmac_key, f"handover-destruction|{table}|{key}".encode(), hashlib.sha256
    ).hexdigest()


def _cutoff(as_of: date, months: int):
    import pandas as pd

    return pd.Timestamp(as_of) - pd.DateOffset(months=months)


def _as_of(value: Any) -> date:
    if value in (None, ""):
        return datetime.now(UTC).date()
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError as exc:
        raise LifecycleError(f"as_of {value!r}: use a date like 2027-01-31") from exc


# ---------------------------------------------------------------- find
def _persons_held(conn) -> bool:
    """Whether the person map holds persons of more than one system."""
    if conn.execute("SELECT to_regclass('handover_meta.person_map')").fetchone()[0] is None:
        return False
    return conn.execute(
        "SELECT count(DISTINCT source_system) > 1 FROM handover_meta.person_map"
    ).fetchone()[0]


def _customers_of(conn, system: str) -> list[str]:
    """Target customers whose person has a record in `system`."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT p.target_customer_id FROM handover_meta.person_map p WHERE "
            "p.person_id IN (SELECT person_id FROM handover_meta.person_map WHERE "
            "source_system = %s)",
            (system,),
        ).fetchall()
    ]


def _only_others(conn, system: str) -> list[str]:
    """Target customers whose person has no record in `system` (another's alone)."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT p.target_customer_id FROM handover_meta.person_map p WHERE NOT "
            "EXISTS (SELECT 1 FROM handover_meta.person_map q WHERE q.person_id = p.person_id "
            "AND q.source_system = %s)",
            (system,),
        ).fetchall()
    ]


def find_expired(
    *, as_of: Any = None, system: str = "legacy_bss", run_id: str = "retention"
) -> dict:
    """Which records are past retention, anywhere; writes the plan to the lake and returns
    counts per rule for XCom (the keys themselves never leave the lake)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    from psycopg import sql

    from handover.config.loader import load_config

    cfg, lake, day = load_config(system), lake_from_url(), _as_of(as_of)
    found: dict[str, set[str]] = {}
    rules: list[dict] = []
    undated: dict[str, int] = {}
    with lifecycle_connect() as conn:
        from handover.lifecycle.intake import clear_stale_intakes

        with conn.transaction():  # data-subject requests' identifiers left by failed runs
            stale_intakes = clear_stale_intakes(conn)
        held = _persons_held(conn)
        ident = cfg.policy.get("identity") or {}
        target_months = ident.get("target_retention_months") or {}
        target_system = ident.get("target_system", "acquirer")
        for table, s in shapes(cfg).items():
            if not (s.retention_months and s.event):
                continue
            target = sql.Identifier(cfg.mapping["schema"], s.target)
            cutoff = _cutoff(day, s.retention_months)
            # This system's period holds for its own rows and its persons' (merged into
            # another system's customer, their rows follow it), never for the rows of a
            # customer only another system holds (the acquirer's own, another export's).
            theirs, args = sql.SQL(""), [cutoff.to_pydatetime()]
            if held and s.target_customer:
                theirs = sql.SQL(" AND {c} <> ALL(%s)").format(c=sql.Identifier(s.target_customer))
                args.append(_only_others(conn, cfg.system))
            keys = {
                r[0]
                for r in conn.execute(
                    sql.SQL("SELECT {k} FROM {t} WHERE {e} < %s{theirs}").format(
                        k=sql.Identifier(s.target_key),
                        t=target,
                        e=sql.Identifier(s.target_event),
                        theirs=theirs,
                    ),
                    args,
                ).fetchall()
            }
            rules.append(
                {
                    "rule": f"RETENTION_{s.category.upper()}_{s.retention_months}M",
                    "table": table,
                    "category": s.category,
                    "retention_months": s.retention_months,
                    "event_time": s.event,
                    "cutoff": cutoff.date().isoformat(),
                    "in_target": len(keys),
                }
            )
            found.setdefault(table, set()).update(keys)
            stricter = target_months.get(s.category)
            if (
                held
                and s.target_customer
                and stricter is not None
                and stricter < s.retention_months
            ):
                # a person the target also holds: the stricter of the two periods wins
                cut = _cutoff(day, stricter)
                more = {
                    r[0]
                    for r in conn.execute(
                        sql.SQL("SELECT {k} FROM {t} WHERE {e} < %s AND {c} = ANY(%s)").format(
                            k=sql.Identifier(s.target_key),
                            t=target,
                            e=sql.Identifier(s.target_event),
                            c=sql.Identifier(s.target_customer),
                        ),
                        (cut.to_pydatetime(), _customers_of(conn, target_system)),
                    ).fetchall()
                }
                rules.append(
                    {
                        "rule": f"RETENTION_{s.category.upper()}_{stricter}M_"
                        f"{target_system.upper()}",
                        "table": table,
                        "category": s.category,
                        "retention_months": stricter,
                        "event_time": s.event,
                        "cutoff": cut.date().isoformat(),
                        "in_target": len(more - keys),
                        "description": f"persons {target_system} also holds: its "
                        "stricter retention wins",
                    }
                )
                found[table].update(more)
        due_rows = conn.execute(
            "SELECT table_name, record_key FROM handover_meta.exclusion WHERE destroy_by <= %s "
            "AND record_key NOT LIKE 'destroyed:%%' AND record_key NOT LIKE 'row:%%'",
            (day,),
        ).fetchall()
    due: dict[str, int] = {}
    for table, key in due_rows:
        found.setdefault(table, set()).add(key)
        due[table] = due.get(table, 0) + 1
    all_shapes = shapes(cfg)
    in_lake: dict[str, int] = {}
    for key, stage, table in lake_partitions(lake, cfg):
        s = all_shapes[table]
        tbl = lake.read_table(key)
        kcol, _, ecol, fmt = columns_for(s, stage, tbl.column_names)
        if kcol is None:
            continue
        mask = None
        if ecol and ecol in tbl.column_names and s.retention_months:
            times = _event_times(tbl[ecol], fmt)
            mask = (times < _cutoff(day, s.retention_months)).fillna(False).to_numpy()
            undated[table] = undated.get(table, 0) + int(times.isna().sum())
        if "_destroy_by" in tbl.column_names:
            times = _event_times(tbl["_destroy_by"], None)
            hit = (times <= pd.Timestamp(day)).fillna(False).to_numpy()
            mask = hit if mask is None else (mask | hit)
        if mask is None or not mask.any():
            continue
        keys = pc.filter(normalise(tbl[kcol]), pa.array(mask)).to_pylist()
        keys = {k for k in keys if k}
        in_lake[table] = in_lake.get(table, 0) + len(keys)
        found.setdefault(table, set()).update(keys)
    for r in rules:
        r["in_lake_copies"] = in_lake.get(r["table"], 0)
    if due:
        rules.append(
            {
                "rule": "EXCLUSION_DESTROY_BY_DUE",
                "tables": due,
                "description": "excluded at comply with a destroy-by date on or before "
                f"{day.isoformat()}",
            }
        )
    plan = write_plan(lake, run_id, {t: k for t, k in found.items() if k})
    total = sum(len(k) for k in found.values())
    log.info(
        "retention as of %s: %d records past retention in %d tables (%s)",
        day,
        total,
        len(plan["tables"]),
        {t: n for t, n in plan["tables"].items()},
    )
    return {
        "run_id": run_id,
        "as_of": day.isoformat(),
        "system": system,
        "rules": rules,
        "tables": plan["tables"],
        "keys": total,
        "undated_lake_rows": undated,
        "stale_subject_intakes_cleared": stale_intakes,
    }


def plan_prefix(run_id: str) -> str:
    return f"{PLAN_PREFIX}/{safe_run_id(run_id)}/plan/"


def write_plan(
    lake: Lake, run_id: str, keys: dict[str, set[str]], customers: set[str] | None = None
) -> dict:
    """The destruction list, in the lake (never XCom): one Parquet file per table."""
    import pyarrow as pa

    prefix = plan_prefix(run_id)
    purge(lake, prefix)
    for table, values in keys.items():
        lake.write_table(
            f"{prefix}{table}.parquet", pa.table({"key": pa.array(sorted(values), pa.string())})
        )
    if customers:
        lake.write_table(
            f"{prefix}_customers.parquet",
            pa.table({"key": pa.array(sorted(customers), pa.string())}),
        )
    return {"tables": {t: len(v) for t, v in keys.items()}}


def read_plan(lake: Lake, run_id: str) -> tuple[dict[str, set[str]], set[str]]:
    prefix = plan_prefix(run_id)
    keys: dict[str, set[str]] = {}
    customers: set[str] = set()
    for k in lake.list(prefix):
        name = k.rsplit("/", 1)[-1].removesuffix(".parquet")
        values = set(lake.read_table(k)["key"].to_pylist())
        if name == "_customers":
            customers = values
        else:
            keys[name] = values
    return keys, customers


# ---------------------------------------------------------------- destroy
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
        from handover.lifecycle.backup import run_backup

        fresh = run_backup(reason="after_destruction")["backup_id"]
        log.info("backup %s taken after the destruction (%s)", fresh, reason)
    return {
        "backups_shredded": sorted(hits),
        "backup_files_shredded": len(destroyed),
        "destroyed_data_keys": destroyed,
        "backup_after_destruction": fresh,
    }


# ---------------------------------------------------------------- verify and certify
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
                n = conn.execute(
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
                found["books"] += conn.execute(
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


def certify(
    *,
    kind: str,
    certificate_id: str,
    keys: dict[str, set[str]],
    customers: set[str],
    ring,
    steps: dict,
    verification: dict,
    as_of: str | None = None,
    request_id: str | None = None,
    rules: list | None = None,
    customer_table_name: str = "subscribers",
) -> dict:
    """Write the destruction certificate (lake JSON + catalogue + audit); no key in clear."""
    lake = lake_from_url()
    items = sorted(
        {(t, key_digest(ring, t, k)) for t, vs in keys.items() for k in vs}
        | {(customer_table_name, key_digest(ring, customer_table_name, c)) for c in customers}
    )
    listing = "\n".join(f"{t}\t{d}" for t, d in items).encode()
    list_sha = hashlib.sha256(listing).hexdigest()
    destroyed_keys = steps.get("shred", {}).get("destroyed_data_keys", [])
    counts = {
        "records": len(items),
        "records_by_table": _count_by_table(items),
        "target_rows_deleted": steps.get("target", {}).get("target_rows_deleted", {}),
        "book_keys_pseudonymised": steps.get("target", {}).get("book_keys_pseudonymised", 0),
        "lake_rows_deleted": steps.get("lake", {}).get("lake_rows_deleted", {}),
        "lake_objects_rewritten": steps.get("lake", {}).get("lake_objects_rewritten", 0),
        "lake_old_versions_deleted": steps.get("lake", {}).get("lake_old_versions_deleted", 0),
        "backup_files_shredded": len(destroyed_keys),
        "lake_working_sets_destroyed": len(
            steps.get("lake", {}).get("working_sets", {}).get("runs", [])
        ),
        "lake_scope_keys_shredded": steps.get("lake", {})
        .get("working_sets", {})
        .get("scope_keys_shredded", 0),
        "lake_objects_deleted": steps.get("lake", {})
        .get("working_sets", {})
        .get("objects_deleted", 0),
    }
    cert = {
        "certificate_id": certificate_id,
        "kind": kind,
        "issued_at": datetime.now(UTC).isoformat(),
        "as_of": as_of,
        "request_id": request_id,
        "controller_note": "record keys appear only as HMAC-SHA256 under the keyring's "
        "blind-index key: handover.lifecycle.retention.key_digest(ring, table, key)",
        "rules": rules or [],
        "counts": counts,
        "places": [
            "target database (crm)",
            "books (handover_meta.exclusion/quarantine)",
            "lake runs/* (raw, comply, comply/_excluded, cleanse, cleanse/_quarantine, "
            "mapped, resolve), all object versions",
            "backups (crypto-shredded)",
        ],
        "destroyed_data_keys": destroyed_keys,
        "lake_working_sets": steps.get("lake", {}).get("working_sets", {}).get("runs", []),
        "backups_shredded": steps.get("shred", {}).get("backups_shredded", []),
        "keys": {
            "hash": "HMAC-SHA256",
            "count": len(items),
            "list_sha256": list_sha,
            "items": [{"table": t, "key_hmac": d} for t, d in items],
        },
        "verification": verification,
    }
    body = json.dumps(cert, indent=2, ensure_ascii=False).encode()
    cert_sha = hashlib.sha256(body).hexdigest()
    lake_key = f"{CERTIFICATES}/{kind}/{certificate_id}.json"
    lake.put_bytes(lake_key, body)
    with lifecycle_connect() as conn:
        with conn.transaction():
            conn.execute(
                "INSERT INTO handover_meta.destruction_certificate (certificate_id, kind, as_of, "
                "request_id, keys, key_list_sha256, certificate_sha256, lake_key, counts) "
                "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (certificate_id) DO UPDATE SET "
                "issued_at = now(), keys = excluded.keys, key_list_sha256 = "
                "excluded.key_list_sha256, certificate_sha256 = excluded.certificate_sha256, "
                "counts = excluded.counts",
                (
                    certificate_id,
                    kind,
                    as_of,
                    request_id,
                    len(items),
                    list_sha,
                    cert_sha,
                    lake_key,
                    json.dumps(counts),
                ),
            )
            ledger.audit(
                conn,
                "destruction_certified",
                detail={
                    "certificate_id": certificate_id,
                    "kind": kind,
                    "as_of": as_of,
                    "request_id": request_id,
                    "rules": [r.get("rule") for r in rules or []],
                    "counts": counts,
                    "data_key_ids": [d["data_key_id"] for d in destroyed_keys],
                    "key_list_sha256": list_sha,
                    "certificate_sha256": cert_sha,
                    "certificate": lake.uri(lake_key),
                },
            )
    log.info(
        "destruction certificate %s: %d records, list sha256 %s, %s",
        certificate_id,
        len(items),
        list_sha[:16],
        lake.uri(lake_key),
    )
    return {
        "certificate_id": certificate_id,
        "lake_key": lake_key,
        "records": len(items),
        "key_list_sha256": list_sha,
        "certificate_sha256": cert_sha,
        "counts": counts,
    }


def _count_by_table(items: list[tuple[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t, _ in items:
        out[t] = out.get(t, 0) + 1
    return out


# ---------------------------------------------------------------- DAG task bodies
def destroy_target_task(found: dict) -> dict:
    from handover.protection.fields import load_keyring

    keys, customers = read_plan(lake_from_url(), found["run_id"])
    return destroy_in_target(keys, customers, system=found["system"], ring=load_keyring())


def destroy_lake_task(found: dict) -> dict:
    """Expired working sets go first (keys, then objects: nothing left to rewrite there),
    then every remaining lake copy of a record past retention is rewritten without it."""
    sets = destroy_working_sets(
        as_of=found["as_of"], system=found["system"], run_id=found["run_id"]
    )
    keys, customers = read_plan(lake_from_url(), found["run_id"])
    out = destroy_in_lake(keys, customers, system=found["system"])
    out["working_sets"] = {
        k: sets[k]
        for k in (
            "runs",
            "scope_keys_shredded",
            "objects_deleted",
            "quarantine_scopes_kept",
            "working_set_days",
            "quarantine_days",
        )
    }
    return out


def shred_backups_task(found: dict) -> dict:
    from handover.protection.fields import load_keyring

    keys, customers = read_plan(lake_from_url(), found["run_id"])
    return shred_backups(keys, customers, reason=f"retention {found['as_of']}", ring=load_keyring())


def validate_destruction_task(found: dict) -> dict:
    from handover.protection.fields import load_keyring

    keys, customers = read_plan(lake_from_url(), found["run_id"])
    return verify_destroyed(keys, customers, system=found["system"], ring=load_keyring())


def certify_task(
    found: dict, target: dict, lake_step: dict, shred: dict, verification: dict
) -> dict:
    """Certificate, then the plan (itself a list of the destroyed keys) is purged."""
    from handover.protection.fields import load_keyring

    lake = lake_from_url()
    keys, customers = read_plan(lake, found["run_id"])
    out = certify(
        kind="retention",
        certificate_id=f"dc_{safe_run_id(found['run_id'])}",
        keys=keys,
        customers=customers,
        ring=load_keyring(),
        steps={"target": target, "lake": lake_step, "shred": shred},
        verification=verification,
        as_of=found["as_of"],
        rules=found["rules"],
    )
    purge(lake, plan_prefix(found["run_id"]))
    shred_scope(lake, plan_prefix(found["run_id"]).rstrip("/"))  # the plan's own key
    return out


def run_retention(
    *, as_of: Any = None, system: str = "legacy_bss", run_id: str | None = None
) -> dict:
    """The retention_and_destruction DAG in one process."""
    run_id = run_id or f"retention_{datetime.now(UTC):%Y%m%dT%H%M%S}"
    found = find_expired(as_of=as_of, system=system, run_id=run_id)
    target = destroy_target_task(found)
    lake_step = destroy_lake_task(found)
    shred = shred_backups_task(found)
    verification = validate_destruction_task(found)
    cert = certify_task(found, target, lake_step, shred, verification)
    return {
        "found": found,
        "target": target,
        "lake": lake_step,
        "shred": shred,
        "verification": verification,
        "certificate": cert,
    }


# ---------------------------------------------------------------- excluded rows, at run end
PURGED = "_purged"  # runs/<run>/raw/_purged/<table>/part-<p>.parquet: row numbers and rules


def purged_marker(run_id: str, table: str, partition: str) -> str:
    return f"runs/{safe_run_id(run_id)}/raw/{PURGED}/{table}/part-{partition}.parquet"


def purged_rows(lake: Lake, run_id: str, table: str, partition: str):
    """(`_source_row`, `_rule`) of this partition's raw rows destroyed at the run's end,
    or None: comply, rerun after the end, counts them as excluded (they are no longer in
    raw), so its ledger still balances against extract's."""
    key = purged_marker(run_id, table, partition)
    return lake.read_table(key) if lake.exists(key) else None


def forget_purged(conn, lake: Lake, run_id: str, table: str) -> None:
    """A fresh raw copy of `table` (extract rerun) holds every row again: what the run's
    end destroyed before will be excluded (and destroyed) anew, so the old marks go."""
    for k in lake.list(f"runs/{safe_run_id(run_id)}/raw/{PURGED}/{table}/"):
        lake.delete_prefix(k)
    conn.execute(
        "DELETE FROM handover_meta.exclusion WHERE run_id=%s AND table_name=%s AND "
        "record_key LIKE 'destroyed:%%'",
        (run_id, table),
    )


def count_purged(
    lake: Lake, run_id: str, table: str, partition: str, counts: dict[str, int]
) -> int:
    """Add this partition's rows destroyed at the run's end to `counts` (by rule); their
    number, which comply adds to its rows in and excluded."""
    purged = purged_rows(lake, run_id, table, partition)
    if purged is None:
        return 0
    for r, n in zip(
        *[c.to_pylist() for c in purged.group_by("_rule").aggregate([("_rule", "count")]).columns],
        strict=True,
    ):
        counts[r] = counts.get(r, 0) + n
    return purged.num_rows


def destroy_run_exclusions(run_id: str, system: str) -> dict:
    """What may not move leaves nothing behind (PIPL Art. 22, 47): at the end of a run,
    every row it excluded (objection, missing consent, past retention) is destroyed in
    the run's lake copies, and its key in the books becomes a keyed hash.

    - raw partitions are rewritten without the excluded rows (by `_source_row`, exact),
      after their row numbers and rules are recorded (`raw/_purged/`, no values), so a
      rerun of comply still balances;
    - the `comply/_excluded` objects are crypto-shredded: their scope key goes first,
      then the objects (and every S3 version);
    - `handover_meta.exclusion` keeps the rule, the run and the count; the record key is
      replaced by HMAC-SHA256 under the keyring's blind-index key;
    - an `exclusion` destruction certificate lists the rows by table and rule.

    Idempotent: a second call finds nothing left to destroy.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from handover.protection.fields import load_keyring
    from handover.storage.lake import part_key

    lake, ring = lake_from_url(), load_keyring()
    sr = safe_run_id(run_id)
    by_table_rule: dict[str, dict[str, int]] = {}
    rewritten = 0
    for k in lake.list(f"runs/{sr}/comply/_excluded/"):
        if not k.endswith(".parquet"):
            continue
        table = k.split("/")[-2]
        partition = k.rsplit("/", 1)[-1].removeprefix("part-").removesuffix(".parquet")
        ex = lake.read_table(k, columns=["_source_row", "_rule"])
        if not ex.num_rows:
            continue
        marker = purged_marker(run_id, table, partition)
        prior = purged_rows(lake, run_id, table, partition)
        both = (
            ex
            if prior is None
            else pa.concat_tables([prior.select(ex.column_names).cast(ex.schema), ex])
        )
        rows = (
            both.group_by("_source_row")
            .aggregate([("_rule", "min")])
            .rename_columns(["_source_row", "_rule"])
        )
        lake.write_table(marker, rows)  # first: a crash after it leaves a rerun to finish
        raw_key = part_key(run_id, "raw", table, partition)
        if lake.exists(raw_key):
            gone = ex.column("_source_row")
            schema = lake.schema(raw_key)
            with lake.table_writer(raw_key, schema) as out:
                for batch in lake.iter_batches(raw_key, None):
                    keep = pc.invert(
                        pc.fill_null(pc.is_in(batch.column("_source_row"), value_set=gone), False)
                    )
                    out.write_table(pa.Table.from_batches([batch]).filter(keep))
            purge_noncurrent(lake, raw_key)
            rewritten += 1
        for rule, n in zip(
            *[c.to_pylist() for c in ex.group_by("_rule").aggregate([("_rule", "count")]).columns],
            strict=True,
        ):
            t = by_table_rule.setdefault(table, {})
            t[rule] = t.get(rule, 0) + n
    shredded = shred_scope(lake, f"runs/{sr}/comply/_excluded")
    with lifecycle_connect() as conn, conn.transaction():
        rows = conn.execute(
            "SELECT DISTINCT table_name, record_key FROM handover_meta.exclusion WHERE run_id=%s "
            "AND record_key NOT LIKE 'destroyed:%%'",
            (run_id,),
        ).fetchall()
        if rows:
            conn.execute("CREATE TEMP TABLE _exdestroyed (t text, k text, d text) ON COMMIT DROP")
            with conn.cursor().copy("COPY _exdestroyed (t, k, d) FROM STDIN") as cp:
                for t, key in rows:
                    cp.write_row((t, key, DESTROYED + key_digest(ring, t, key)))
            conn.execute(
                "UPDATE handover_meta.exclusion e SET record_key = x.d FROM _exdestroyed x "
                "WHERE e.run_id = %s AND e.table_name = x.t AND e.record_key = x.k",
                (run_id,),
            )
        counts = {
            t: dict(r)
            for t, r in conn.execute(
                "SELECT table_name, jsonb_object_agg(rule_id, n) FROM (SELECT table_name, rule_id, "
                "count(*) AS n FROM handover_meta.exclusion WHERE run_id=%s GROUP BY 1, 2) x "
                "GROUP BY 1",
                (run_id,),
            ).fetchall()
        }
    out = {
        "run_id": run_id,
        "rows_destroyed_by_table_rule": by_table_rule,
        "raw_objects_rewritten": rewritten,
        "scope_keys_shredded": shredded["keys"],
        "objects_deleted": shredded["objects"],
        "books_pseudonymised": len(rows),
        "evidence_by_table_rule": counts,
    }
    if by_table_rule or rows:
        certify_simple(
            kind="exclusion",
            certificate_id=f"dx_{sr}",
            run_id=run_id,
            body={
                "what": "rows excluded by the transfer policy (objection, missing consent, past "
                "retention): destroyed in the run's lake copies at the run's end; the "
                "books keep only the rule, the run and the count, keys as HMAC-SHA256",
                "rows_destroyed_by_table_rule": by_table_rule,
                "evidence_kept_by_table_rule": counts,
                "raw_objects_rewritten": rewritten,
                "scope_keys_shredded": shredded["key_ids"],
                "objects_deleted": shredded["objects"],
            },
        )
    log.info(
        "run %s: excluded rows destroyed at its end: %s; %d raw objects rewritten, "
        "%d book keys pseudonymised",
        run_id,
        by_table_rule,
        rewritten,
        len(rows),
    )
    return out


def shred_scope(lake: Lake, scope: str) -> dict:
    """Crypto-shred one key scope: its wrapped key first (every version), then every object
    written under it. Returns counts and the scope names shredded."""
    from handover.storage.lake_crypto import key_object, scope_of

    keys = purge(lake, key_object(scope), exact=True)
    lake.keys.forget(scope)
    prefix = scope + "/"
    if scope.startswith("runs/"):
        run, stage = scope.split("/", 2)[1], scope.split("/", 2)[2]
        prefix = f"runs/{run}/{stage}/"
    doomed = [k for k in lake.list(prefix) if scope_of(k) == scope]
    objects = 0
    for k in doomed:
        objects += purge(lake, k, exact=True)
    return {"keys": keys, "objects": objects, "key_ids": [scope] if keys else []}


def certify_simple(
    *, kind: str, certificate_id: str, run_id: str | None, body: dict, as_of: str | None = None
) -> dict:
    """A destruction certificate without record keys (counts, scopes, key ids): lake JSON,
    catalogue row, audit entry bound by its sha256."""
    lake = lake_from_url()
    cert = {
        "certificate_id": certificate_id,
        "kind": kind,
        "run_id": run_id,
        "issued_at": datetime.now(UTC).isoformat(),
        "as_of": as_of,
        **body,
    }
    data = json.dumps(cert, indent=2, ensure_ascii=False, default=str).encode()
    cert_sha = hashlib.sha256(data).hexdigest()
    lake_key = f"{CERTIFICATES}/{kind}/{certificate_id}.json"
    lake.put_bytes(lake_key, data)
    with lifecycle_connect() as conn, conn.transaction():
        conn.execute(
            "INSERT INTO handover_meta.destruction_certificate (certificate_id, kind, as_of, "
            "keys, key_list_sha256, certificate_sha256, lake_key, counts) VALUES "
            "(%s,%s,%s,0,%s,%s,%s,%s) ON CONFLICT (certificate_id) DO UPDATE SET "
            "issued_at = now(), certificate_sha256 = excluded.certificate_sha256, "
            "counts = excluded.counts",
            (
                certificate_id,
                kind,
                as_of,
                hashlib.sha256(b"").hexdigest(),
                cert_sha,
                lake_key,
                json.dumps(body, default=str),
            ),
        )
        ledger.audit(
            conn,
            "destruction_certified",
            run_id=run_id,
            detail={
                "certificate_id": certificate_id,
                "kind": kind,
                "certificate_sha256": cert_sha,
                "certificate": lake.uri(lake_key),
            },
        )
    return {"certificate_id": certificate_id, "lake_key": lake_key, "certificate_sha256": cert_sha}


# ---------------------------------------------------------------- the lake's working set
def destroy_working_sets(
    *, as_of: Any = None, system: str = "legacy_bss", run_id: str | None = None
) -> dict:
    """Destroy the stage objects of runs whose working set has expired: keys first, then
    objects; a marker (`runs/<run>/working-set.json`) makes a later read or rerun say so
    in one line. Reports, Data Docs and reconciliation JSON (counts, no values) stay.

    Due: a finished run `working_set_days` after it ended; a failed or abandoned run as
    soon as a later run of the same DAG on the same export succeeded, else the same days
    after it started; quarantined rows (`*/_quarantine`) `quarantine_days` after the run
    ended, for a fix and a rerun (at once for a superseded run). Runs the lake holds but
    the books do not know are due `working_set_days` after their first key was made.
    """
    from handover.config.loader import load_config
    from handover.storage.lake_crypto import KEYS_PREFIX, MARKER

    cfg, lake, day = load_config(system), lake_from_url(), _as_of(as_of)
    ws_days = int(cfg.policy.get("working_set_days", 7))
    q_days = max(ws_days, int(cfg.policy.get("quarantine_days", 30)))
    scopes: dict[str, set[str]] = {}
    created: dict[str, date] = {}
    for k in lake.list(f"{KEYS_PREFIX}/runs/"):
        parts = k.removeprefix(f"{KEYS_PREFIX}/").removesuffix(".json").split("/")
        if len(parts) < 3:
            continue
        run, scope = parts[1], "/".join(parts)
        scopes.setdefault(run, set()).add(scope)
        try:
            made = date.fromisoformat(lake.read_json(k).get("created_at", "")[:10])
        except ValueError:
            made = day
        created[run] = min(created.get(run, made), made)
    with lifecycle_connect() as conn:
        runs = conn.execute(
            "SELECT r.run_id, r.dag_id, r.status, r.started_at, r.finished_at, "
            "EXISTS (SELECT 1 FROM handover_meta.run n WHERE n.dag_id = r.dag_id AND "
            "n.source_manifest = r.source_manifest AND n.status = 'succeeded' AND "
            "n.started_at > r.started_at) FROM handover_meta.run r"
        ).fetchall()
    known = {safe_run_id(r[0]): r for r in runs}
    destroyed: list[dict] = []
    kept_quarantine = 0
    for run, run_scopes in sorted(scopes.items()):
        row = known.get(run)
        if row is None:
            ends, q_ends, why = created[run], created[run], "run unknown to the books"
        else:
            _, dag_id, status, started, finished, superseded = row
            if status == "succeeded" and finished is not None:
                ends, q_ends, why = finished.date(), finished.date(), f"{dag_id} run ended"
            elif superseded:
                ends, q_ends, why = day, day, "a later run of the same export succeeded"
            else:
                ends, q_ends, why = started.date(), started.date(), f"{dag_id} run {status}"
        due, gone = [], []
        for scope in sorted(run_scopes):
            limit = (
                q_days
                if scope.endswith("/_quarantine")
                and why != "a later run of the same export succeeded"
                else ws_days
            )
            start = q_ends if scope.endswith("/_quarantine") else ends
            if (
                why == "a later run of the same export succeeded"
                or (start.toordinal() + limit) <= day.toordinal()
            ):
                due.append(scope)
            elif scope.endswith("/_quarantine"):
                kept_quarantine += 1
        if not due:
            continue
        objects = 0
        for scope in due:
            res = shred_scope(lake, scope)
            objects += res["objects"]
            gone.append(scope)
        left = [s for s in run_scopes if s not in due]
        if lake.exists(f"runs/{run}/{MARKER}"):  # quarantine kept last time, gone now
            gone = sorted(set(gone) | set(lake.read_json(f"runs/{run}/{MARKER}").get("scopes", [])))
        lake.write_json(
            f"runs/{run}/{MARKER}",
            {
                "run": run,
                "destroyed_at": day.isoformat(),
                "reason": f"working set expired: "
                f"{why}; working_set_days={ws_days}, quarantine_days={q_days}",
                "scopes": gone,
                "scopes_kept": left,
            },
        )
        destroyed.append(
            {"run": run, "why": why, "scopes": gone, "objects": objects, "scopes_kept": left}
        )
    out = {
        "as_of": day.isoformat(),
        "working_set_days": ws_days,
        "quarantine_days": q_days,
        "runs": destroyed,
        "scope_keys_shredded": sum(len(d["scopes"]) for d in destroyed),
        "objects_deleted": sum(d["objects"] for d in destroyed),
        "quarantine_scopes_kept": kept_quarantine,
    }
    if destroyed:
        certify_simple(
            kind="working_set",
            run_id=run_id,
            as_of=day.isoformat(),
            certificate_id=f"dw_{safe_run_id(run_id or day.isoformat())}",
            body={
                "what": "the lake's working set of finished or superseded runs: "
                "scope keys shredded first, then every stage object",
                **{k: v for k, v in out.items() if k != "as_of"},
            },
        )
    log.info(
        "working sets as of %s: %d runs destroyed (%d scope keys, %d objects), %d "
        "quarantine scopes kept",
        day,
        len(destroyed),
        out["scope_keys_shredded"],
        out["objects_deleted"],
        kept_quarantine,
    )
    return out
