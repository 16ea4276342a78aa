"""What is past retention, anywhere: a row whose event time (the catalog's `event_time`)
is older than its category's `retention_months` in policy.yaml at the run's `as_of` date,
in the target or in any lake copy, and every excluded row whose destroy-by date is due.
The keys go to the destruction plan in the lake; XCom gets counts per rule.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from handover.config.shapes import shapes
from handover.lifecycle.books import lifecycle_connect
from handover.lifecycle.retention.plan import (
    _as_of,
    columns_for,
    lake_partitions,
    normalise,
    write_plan,
)
from handover.storage.lake import lake_from_url
from handover.storage.objects import Lake

log = logging.getLogger("handover")


def _event_times(col, fmt: str | None):
    import pandas as pd
    import pyarrow as pa

    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        text = pd.Series(normalise(col).to_pylist(), dtype=object)
        if isinstance(fmt, list):
            from handover.stages.cleanse_dates import parse_dates

            return parse_dates(text, fmt)
        return pd.to_datetime(text, format=fmt, errors="coerce")
    return pd.to_datetime(pd.Series(col.to_pylist(), dtype=object), errors="coerce")


def _cutoff(as_of: date, months: int):
    import pandas as pd

    return pd.Timestamp(as_of) - pd.DateOffset(months=months)


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


def _expired_in_target(
    conn: Any, cfg: Any, day: date, found: dict[str, set[str]], rules: list[dict]
) -> None:
    """Keys of target rows past their table's retention (and, for persons the target's
    own system also holds, past its stricter period) into `found`, one rule each."""
    from psycopg import sql

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
        theirs: sql.Composable = sql.SQL("")
        args = [cutoff.to_pydatetime()]
        if held and s.target_customer:
            theirs = sql.SQL(" AND {c} <> ALL(%s)").format(c=sql.Identifier(s.target_customer))
            args.append(_only_others(conn, cfg.system))
        keys = {
            r[0]
            for r in conn.execute(
                sql.SQL("SELECT {k} FROM {t} WHERE {e} < %s{theirs}").format(
                    k=sql.Identifier(s.target_key),
                    t=target,
                    # a shape with an event time has its target column (config.shapes)
                    e=sql.Identifier(s.target_event),  # type: ignore[arg-type]
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
        if held and s.target_customer and stricter is not None and stricter < s.retention_months:
            # a person the target also holds: the stricter of the two periods wins
            cut = _cutoff(day, stricter)
            more = {
                r[0]
                for r in conn.execute(
                    sql.SQL("SELECT {k} FROM {t} WHERE {e} < %s AND {c} = ANY(%s)").format(
                        k=sql.Identifier(s.target_key),
                        t=target,
                        # a shape with an event time has its target column (config.shapes)
                        e=sql.Identifier(s.target_event),  # type: ignore[arg-type]
                        c=sql.Identifier(s.target_customer),
                    ),
                    (cut.to_pydatetime(), _customers_of(conn, target_system)),
                ).fetchall()
            }
            rules.append(
                {
                    "rule": f"RETENTION_{s.category.upper()}_{stricter}M_{target_system.upper()}",
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


def _expired_in_lake(
    lake: Lake, cfg: Any, day: date, found: dict[str, set[str]], undated: dict[str, int]
) -> dict[str, int]:
    """Keys of lake rows past retention or with a due `_destroy_by`, in every partition of
    every run, into `found`; returns their count per table (rows without a readable event
    time are counted in `undated`)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

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
    return in_lake


def find_expired(
    *, as_of: Any = None, system: str = "legacy_bss", run_id: str = "retention"
) -> dict:
    """Which records are past retention, anywhere; writes the plan to the lake and returns
    counts per rule for XCom (the keys themselves never leave the lake)."""
    from handover.config.loader import load_config

    cfg, lake, day = load_config(system), lake_from_url(), _as_of(as_of)
    found: dict[str, set[str]] = {}
    rules: list[dict] = []
    undated: dict[str, int] = {}
    with lifecycle_connect() as conn:
        from handover.lifecycle.intake import clear_stale_intakes

        with conn.transaction():  # data-subject requests' identifiers left by failed runs
            stale_intakes = clear_stale_intakes(conn)
        _expired_in_target(conn, cfg, day, found, rules)
        due_rows = conn.execute(
            "SELECT table_name, record_key FROM handover_meta.exclusion WHERE destroy_by <= %s "
            "AND record_key NOT LIKE 'destroyed:%%' AND record_key NOT LIKE 'row:%%'",
            (day,),
        ).fetchall()
    due: dict[str, int] = {}
    for table, key in due_rows:
        found.setdefault(table, set()).add(key)
        due[table] = due.get(table, 0) + 1
    in_lake = _expired_in_lake(lake, cfg, day, found, undated)
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
