"""The lake's working set: the stage objects of finished or superseded runs are destroyed
by crypto-shredding their key scopes (the wrapped key first, then the objects), leaving a
marker that makes a later read or rerun say so in one line.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from handover.lifecycle.books import lifecycle_connect
from handover.lifecycle.lake_purge import purge
from handover.lifecycle.retention.certify import certify_simple
from handover.lifecycle.retention.plan import _as_of
from handover.storage.lake import lake_from_url
from handover.storage.layout import safe_run_id
from handover.storage.objects import Lake

log = logging.getLogger("handover")


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


SUPERSEDED = "a later run of the same export succeeded"


def _run_scopes(lake: Lake, day: date) -> tuple[dict[str, set[str]], dict[str, date]]:
    """The key scopes of every run the lake holds, and the day each run's first key was
    made (`day` when a key does not say)."""
    from handover.storage.lake_crypto import KEYS_PREFIX

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
    return scopes, created


def _run_ended(row: Any, created: date, day: date) -> tuple[date, date, str]:
    """(when the working set's clock starts, when the quarantine's starts, why) of a run,
    from its row in `handover_meta.run` (None: a run unknown to the books)."""
    if row is None:
        return created, created, "run unknown to the books"
    _, dag_id, status, started, finished, superseded = row
    if status == "succeeded" and finished is not None:
        return finished.date(), finished.date(), f"{dag_id} run ended"
    if superseded:
        return day, day, SUPERSEDED
    return started.date(), started.date(), f"{dag_id} run {status}"


def _scope_due(
    scope: str, ends: date, q_ends: date, why: str, day: date, ws_days: int, q_days: int
) -> bool:
    """Whether a run's key scope is due: a superseded run's at once; quarantine
    `q_days` after the run, the rest `ws_days`."""
    limit = q_days if scope.endswith("/_quarantine") and why != SUPERSEDED else ws_days
    start = q_ends if scope.endswith("/_quarantine") else ends
    return why == SUPERSEDED or (start.toordinal() + limit) <= day.toordinal()


def _destroy_run(
    lake: Lake,
    run: str,
    run_scopes: set[str],
    due: list[str],
    why: str,
    day: date,
    ws_days: int,
    q_days: int,
) -> dict:
    """Shred a run's due scopes (keys, then objects) and write its marker."""
    from handover.storage.lake_crypto import MARKER

    objects = 0
    gone = []
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
    return {"run": run, "why": why, "scopes": gone, "objects": objects, "scopes_kept": left}


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

    cfg, lake, day = load_config(system), lake_from_url(), _as_of(as_of)
    ws_days = int(cfg.policy.get("working_set_days", 7))
    q_days = max(ws_days, int(cfg.policy.get("quarantine_days", 30)))
    scopes, created = _run_scopes(lake, day)
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
        ends, q_ends, why = _run_ended(known.get(run), created[run], day)
        due: list[str] = []
        for scope in sorted(run_scopes):
            if _scope_due(scope, ends, q_ends, why, day, ws_days, q_days):
                due.append(scope)
            elif scope.endswith("/_quarantine"):
                kept_quarantine += 1
        if not due:
            continue
        destroyed.append(_destroy_run(lake, run, run_scopes, due, why, day, ws_days, q_days))
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
