"""Excluded rows, at a run's end (PIPL Art. 22, 47): what may not move leaves nothing
behind. The rows a run excluded are destroyed in its lake copies, their keys in the books
become keyed hashes, and the raw rows destroyed are remembered by row number
(`raw/_purged/`, no values) so a rerun of comply still balances.
"""

from __future__ import annotations

import logging

from handover.lifecycle.books import lifecycle_connect
from handover.lifecycle.lake_purge import purge_noncurrent
from handover.lifecycle.retention.certify import certify_simple
from handover.lifecycle.retention.plan import DESTROYED, key_digest
from handover.lifecycle.retention.working_sets import shred_scope
from handover.storage.lake import lake_from_url
from handover.storage.layout import safe_run_id
from handover.storage.objects import Lake

log = logging.getLogger("handover")


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
    from handover.storage.layout import part_key

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
