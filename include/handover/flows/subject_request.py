"""A data-subject request carried out (the `subject_request` DAG's fulfil step): access
and erasure are done by the lifecycle's own functions; a correction fixes one field and
runs the record through the migration's own stages and gates (so it is a flow: it knows
the order of stages)."""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import UTC, datetime

from handover.config.shapes import customer_table, shapes
from handover.core.contracts import Partition, RunContext
from handover.core.errors import RequestRejected
from handover.db import ledger
from handover.lifecycle.retention.plan import normalise
from handover.lifecycle.subject.access import access
from handover.lifecycle.subject.erasure import erase
from handover.lifecycle.subject.lookup import _context, subject_ref
from handover.lifecycle.subject.request import PREFIX, SubjectRequest
from handover.lifecycle.subject.steps import (
    _erasure_context,
    _reject,
    _small,
    record_outcome,
    validate_outcome,
    validate_request,
)
from handover.storage.lake import lake_from_url
from handover.storage.layout import part_key, safe_run_id
from handover.storage.objects import Lake

log = logging.getLogger("handover")


def _source_field(cfg, table: str, field: str) -> str:
    spec, tmap = cfg.table(table), cfg.table_mapping(table)
    source = field if field in spec["columns"] else tmap["fields"].get(field, {}).get("from")
    objection = (cfg.policy.get("objection") or {}).get("column")
    dates = cfg.rules(table).get("dates", {})
    frozen = {spec["key"], objection} | {c for c, f in dates.items() if "%H" in f}
    if source is None or source in frozen:
        allowed = sorted(c for c in spec["columns"] if c not in frozen)
        raise RequestRejected(
            f"field {field!r} cannot be corrected here; correctable: "
            f"{', '.join(allowed)} (or their target names in mapping.yaml)"
        )
    return source


def _source_value(cfg, table: str, source: str, value: str) -> str:
    """A target code (e.g. gender M) back to the source's code (男) where a lookup says so."""
    for f in cfg.table_mapping(table)["fields"].values():
        if f["from"] == source and "lookup" in f:
            reverse = {str(v): str(k) for k, v in f["lookup"].items()}
            return reverse.get(value, value)
    return value


def _latest_raw_row(conn, lake: Lake, cfg, table: str, customer_id: str):
    """The customer's newest source-form row: the raw extract of the latest run with it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    s = shapes(cfg)[table]
    needle = pa.array([customer_id], pa.string())
    runs = [
        r[0]
        for r in conn.execute(
            "SELECT run_id FROM handover_meta.run ORDER BY started_at DESC"
        ).fetchall()
    ]
    for run_id in runs:
        for key in lake.list(f"runs/{safe_run_id(run_id)}/raw/{table}/"):
            tbl = lake.read_table(key)
            mask = pc.fill_null(pc.is_in(normalise(tbl[s.key]), value_set=needle), False)
            if pc.any(mask).as_py():
                return tbl.filter(mask).slice(0, 1)
    raise RequestRejected(
        f"no source-form record of this customer in the lake ({table}); "
        "a correction needs the customer's migrated record"
    )


def correct(req: SubjectRequest, cfg, ring, customer_id: str) -> dict:
    """Fix one field, then run the row through the migration's own stages and gates."""
    from zoneinfo import ZoneInfo

    import psycopg
    import pyarrow as pa

    from handover.flows.cleansing import cleanse_partition, map_protect_partition
    from handover.flows.gating import run_gate_task
    from handover.flows.migration_comply import comply_partition
    from handover.flows.migration_load import load_partition
    from handover.flows.migration_resolve import resolve_customers

    table = customer_table(cfg)
    source = _source_field(cfg, table, req.field)
    value = _source_value(cfg, table, source, req.new_value)
    lake = lake_from_url()
    run_id = f"subject__{req.request_id}"
    local = datetime.now(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None, microsecond=0)
    with ledger.connect() as conn:
        row = _latest_raw_row(conn, lake, cfg, table, customer_id)
        with conn.transaction():
            conn.execute(
                "INSERT INTO handover_meta.run (run_id, dag_id, source_system, source_manifest, "
                "exported_at, kind) VALUES (%s, 'subject_request', %s, %s, %s, "
                "'subject_request') ON CONFLICT (run_id) "
                "DO UPDATE SET status = 'running', finished_at = NULL, "
                "exported_at = excluded.exported_at",
                (run_id, cfg.system, hashlib.sha256(req.request_id.encode()).hexdigest(), local),
            )
    # What the old value implied goes with it: a city that was part of the old address
    # is taken from the new one (or the correction is refused: nothing half-corrected).
    derived = _derived_fields(row, source, value, req.request_id)
    cols = {}
    for name in row.column_names:
        col = row[name]
        if name == source:
            col = pa.array([value], col.type)
        elif name in derived:
            col = pa.array([derived[name]], col.type)
        elif name == "_source_row":
            col = pa.array([1], col.type)
        # The source's update time stays: the correction's own time is in the ledger and
        # the request's record, so newer-wins comparisons keep the legacy system's clock.
        cols[name] = col
    lake.write_table(part_key(run_id, "raw", table, "p00"), pa.table(cols))
    with ledger.connect() as conn, conn.transaction():
        ledger.record(
            conn,
            run_id=run_id,
            table=table,
            partition="p00",
            stage="extract",
            rows_in=1,
            rows_out=1,
            detail={
                "request_id": req.request_id,
                "corrected_field": source,
                "derived_fields": sorted(derived),
                "corrected_at": str(local),
            },
        )
    ctx: RunContext = {"run_id": run_id, "system": req.system, "exported_at": str(local)}
    part: Partition = {"table": table, "partition": "p00"}
    run_gate_task(ctx, part, "intake")
    if comply_partition(ctx, part)["excluded"]:
        raise RequestRejected(
            f"correction {req.request_id}: the corrected record is excluded by "
            "the transfer policy (comply); nothing changed"
        )
    run_gate_task(ctx, part, "compliance")
    resolve_customers(ctx)
    if cleanse_partition(ctx, part)["quarantined"]:
        with ledger.connect() as conn:
            reason, field = conn.execute(
                "SELECT reason, field FROM handover_meta.quarantine WHERE run_id = %s", (run_id,)
            ).fetchone()  # type: ignore[misc]  # cleanse quarantined the row: it is there
        raise RequestRejected(
            f"correction {req.request_id}: cleanse rejects the new value "
            f"({reason} on field {field}); nothing changed in the new system; "
            "check the value with the customer"
        )
    run_gate_task(ctx, part, "quality")
    map_protect_partition(ctx, part)
    run_gate_task(ctx, part, "contract")
    try:
        loaded = load_partition(ctx, part)
    except psycopg.errors.UniqueViolation as exc:
        raise RequestRejected(
            f"correction {req.request_id}: the new value of {source} belongs "
            "to another customer (unique blind index); nothing changed"
        ) from exc
    from handover.lifecycle.retention.plan import key_digest

    with ledger.connect() as conn, conn.transaction():
        conn.execute(
            "UPDATE handover_meta.run SET status = 'succeeded', finished_at = now() "
            "WHERE run_id = %s",
            (run_id,),
        )
        # the nightly reconciliation expects this difference from the legacy system
        conn.execute(
            "INSERT INTO handover_meta.correction (table_name, key_hmac, request_id, "
            "corrected_at) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (table, key_digest(ring, table, customer_id), req.request_id, local),
        )
    return {
        "run_id": run_id,
        "field": source,
        "inserted": loaded.get("inserted", 0),
        "updated": loaded.get("updated", 0),
        "unchanged": loaded.get("unchanged", 0),
    }


_CITY = re.compile(r"^(?:.+?(?:省|自治区))?(.+?(?:市|自治州|地区|盟))")


def _derived_fields(row, source: str, value: str, request_id: str) -> dict[str, str]:
    """Fields derived from the corrected one: a `city` column whose value was read from the
    old address is read again from the new address."""
    out: dict[str, str] = {}
    names = row.column_names
    if "city" in names and source != "city":
        old_value, old_city = row[source][0].as_py() or "", row["city"][0].as_py() or ""
        if old_city and old_city.strip() in old_value:
            m = _CITY.match(value.strip())
            if not m:
                raise RequestRejected(
                    f"correction {request_id}: the city of the new {source} cannot be read from "
                    "it (no …市 / …自治州 / …地区 / …盟); submit the full address with its city; "
                    "nothing changed"
                )
            out["city"] = m.group(1)
    return out


def fulfil_request(params: dict) -> dict:
    req = SubjectRequest.from_params(params)
    if req.request_type == "erasure":
        # After a partial erasure the blind index may find nothing: reuse the recorded ref.
        cfg, ring, customer_id = _erasure_context(req)
    else:
        cfg, ring, customer_id = _context(req)
    fn = {"access": access, "correction": correct, "erasure": erase}[req.request_type]
    try:
        out = fn(req, cfg, ring, customer_id)
    except RequestRejected as exc:
        _reject(req, exc)
        raise
    ref = subject_ref(ring, customer_id)
    lake = lake_from_url()
    lake.write_json(
        f"{PREFIX}/{req.request_id}/request.json",
        {
            "request_id": req.request_id,
            "request_type": req.request_type,
            "subject_ref": ref,
            "fulfilled_at": datetime.now(UTC).isoformat(),
            "result": {
                k: v
                for k, v in out.items()
                if k in ("export", "export_sha256", "counts", "run_id", "field", "records")
            },
        },
    )
    log.info(
        "subject request %s (%s) fulfilled for subject %s",
        req.request_id,
        req.request_type,
        ref[:12],
    )
    return {"request_id": req.request_id, "request_type": req.request_type, **_small(out)}


def handle_request(params: dict) -> dict:
    """The subject_request DAG in one process."""
    checked = validate_request(params)
    done = fulfil_request(params)
    verified = validate_outcome(params, done)
    recorded = record_outcome(params, done, verified)
    return {"checked": checked, "done": done, "verified": verified, "recorded": recorded}
