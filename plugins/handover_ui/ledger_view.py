"""The migration ledger of one run, as on-call staff and auditors read it in the Airflow UI.

Per table and stage (extract → comply → cleanse → map → load): partitions done, rows in,
out, quarantined and excluded, and whether the stage balances (in = out + quarantined +
excluded, and its input is exactly the previous stage's output); then, per table, the
reconciliation verdict and the gates. Counts only: the ledger holds no row values.

``gather`` reads handover_meta in the target database; ``render_*`` turn the result into
plain HTML with no script (the UI shows it in a sandboxed iframe). Links are relative to
the plugin's mount point, like every page of the app.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote, urlencode

STAGES = ("extract", "comply", "cleanse", "map", "load")

_CSS = """body{font:14px system-ui,sans-serif;margin:1.2em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.4em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}.ok{color:#2e7d32;font-weight:600}
.bad{color:#c62828;font-weight:600}.wait{color:#8a6d00}h1{font-size:1.3em}h2{font-size:1.1em}
.muted{color:#666}a{color:#1565c0}"""


def gather(conn: Any, run_id: str) -> dict[str, Any] | None:
    """Everything the ledger page shows for ``run_id``; None when the run is unknown."""
    run = conn.execute(
        "SELECT run_id, dag_id, source_system, status, started_at, finished_at "
        "FROM handover_meta.run WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    if run is None:
        return None
    stages = conn.execute(
        "SELECT table_name, stage, count(*), sum(rows_in), sum(rows_out), "
        "sum(rows_quarantined), sum(rows_excluded), sum(rows_merged) FROM "
        "handover_meta.ledger WHERE run_id = %s GROUP BY 1, 2",
        (run_id,),
    ).fetchall()
    recon = conn.execute(
        "SELECT table_name, source_rows, loaded, quarantined, excluded, target_rows, "
        "missing_keys, field_mismatches, balanced, merged FROM handover_meta.reconciliation "
        "WHERE run_id = %s",
        (run_id,),
    ).fetchall()
    gates = conn.execute(
        "SELECT gate, table_name, partition, success, rows, docs_path "
        "FROM handover_meta.gate_result WHERE run_id = %s",
        (run_id,),
    ).fetchall()
    data = build(
        run=dict(
            zip(
                ("run_id", "dag_id", "system", "status", "started_at", "finished_at"),
                run,
                strict=True,
            )
        ),
        stages=stages,
        recon=recon,
        gates=gates,
    )
    if data["run"]["status"] == "failed":  # what failed, in the task's own one line
        failed = conn.execute(
            "SELECT detail FROM handover_meta.audit_log WHERE run_id = %s AND action = "
            "'run_failed' ORDER BY id DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        data["run"]["failure"] = failed[0] if failed else None
    return data


def build(
    *, run: dict[str, Any], stages: list[tuple], recon: list[tuple], gates: list[tuple]
) -> dict[str, Any]:
    """Turn the raw rows into per-table stage checks (pure: unit-testable without a database)."""
    by_table: dict[str, dict[str, dict[str, int]]] = {}
    for table, stage, parts, rows_in, rows_out, quarantined, excluded, *merged in stages:
        by_table.setdefault(table, {})[stage] = {
            "partitions": int(parts),
            "in": int(rows_in),
            "out": int(rows_out),
            "quarantined": int(quarantined),
            "excluded": int(excluded),
            "merged": int(merged[0] or 0) if merged else 0,
        }
    names = (
        "source_rows",
        "loaded",
        "quarantined",
        "excluded",
        "target_rows",
        "missing_keys",
        "field_mismatches",
        "balanced",
        "merged",
    )
    recon_by_table = {r[0]: {"merged": 0, **dict(zip(names, r[1:], strict=False))} for r in recon}
    gate_rows = [
        dict(zip(("gate", "table", "partition", "success", "rows", "docs_path"), g, strict=True))
        for g in gates
    ]
    tables = []
    for table in sorted(set(by_table) | set(recon_by_table)):
        counts = by_table.get(table, {})
        expected_parts = counts.get("extract", {}).get("partitions")
        rows: list[dict[str, Any]] = []
        prev_out = None
        for stage in STAGES:
            c = counts.get(stage)
            if c is None:
                rows.append({"stage": stage, "status": "pending"})
                prev_out = None
                continue
            sums = c["in"] == c["out"] + c["quarantined"] + c["excluded"] + c["merged"]
            flows = prev_out is None or stage == "extract" or c["in"] == prev_out
            complete = expected_parts is None or c["partitions"] == expected_parts
            status = (
                "balanced"
                if sums and flows and complete
                else "incomplete"
                if sums and not complete
                else "NOT balanced"
            )
            rows.append({"stage": stage, **c, "status": status, "input_matches_previous": flows})
            prev_out = c["out"]
        r = recon_by_table.get(table)
        extracted = counts.get("extract", {}).get("out")
        reached = [s["stage"] for s in rows if s["status"] != "pending"]
        stopped = run.get("status") == "failed" and r is None
        tables.append(
            {
                "table": table,
                "stages": rows,
                "reconciliation": r,
                "source_rows": r["source_rows"] if r else extracted,
                "status": (
                    (f"not reached: stopped after {reached[-1]}" if reached else "not reached")
                    if stopped
                    else "not reconciled yet"
                    if r is None
                    else "balanced"
                    if r["balanced"]
                    else "NOT balanced"
                ),
                "gates_failed": sum(
                    1 for g in gate_rows if g["table"] == table and not g["success"]
                ),
            }
        )
    return {
        "run": {k: (str(v) if v is not None else None) for k, v in run.items()},
        "tables": tables,
        "balanced_tables": sum(1 for t in tables if t["status"] == "balanced"),
        "gates": sorted(gate_rows, key=lambda g: (g["table"], g["gate"], g["partition"])),
    }


def _status(text: str) -> str:
    cls = {
        "balanced": "ok",
        "pending": "wait",
        "incomplete": "wait",
        "not reconciled yet": "wait",
        "passed": "ok",
    }.get(text, "bad")
    mark = {"ok": "✔ ", "bad": "✘ "}.get(cls, "")
    return f'<span class="{cls}">{mark}{escape(text)}</span>'


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        f"</title><style>{_CSS}</style></head><body>{body}</body></html>"
    )


def run_paths(safe_run: str) -> dict[str, str]:
    base = f"runs/{quote(safe_run)}"
    return {"report": f"{base}/reports/report.html", "docs": f"{base}/docs/index.html"}


def render_ledger(data: dict[str, Any], safe_run: str) -> str:
    run = data["run"]
    paths = run_paths(safe_run)
    n_tables = len(data["tables"])
    head = (
        f"<h1>Migration ledger — run {escape(run['run_id'])}</h1>"
        f"<p>DAG <b>{escape(run['dag_id'] or '')}</b>, source system "
        f"<b>{escape(run['system'] or '')}</b>, status {_status_run(run['status'])}, "
        f"started {escape(run['started_at'] or '')}"
        + (f", finished {escape(run['finished_at'])}" if run["finished_at"] else "")
        + ".</p>"
        f'<p id="summary"><b>{data["balanced_tables"]} of {n_tables} tables balanced</b> '
        f"(every source row loaded, merged into its person's record, quarantined or "
        f"excluded). "
        f'<a href="{paths["report"]}">Reconciliation report</a> · '
        f'<a href="{paths["docs"]}">Validation docs</a> · <a href="ledger">all runs</a></p>'
    )
    failure = run.get("failure")
    if run["status"] == "failed":
        task = (failure or {}).get("task_id") or "a task"
        index = (failure or {}).get("map_index")
        error = (failure or {}).get("error") or ""
        log_href = (
            f"/dags/{quote(run['dag_id'] or '')}/runs/{quote(run['run_id'])}/tasks/"
            f"{quote(str(task))}" + (f"/mapped/{index}" if index not in (None, -1) else "")
        )
        pages = [g for g in data["gates"] if not g["success"] and g["docs_path"]]
        links = [f'<a id="failed-log" href="{log_href}">the task\'s log</a>']
        links += [
            f'<a href="runs/{quote(safe_run)}/docs/{quote(g["docs_path"])}">validation '
            f"page of {escape(g['gate'])} {escape(g['table'])}/{escape(g['partition'])}</a>"
            for g in pages[:3]
        ]
        head = (
            f'<p id="failed" class="bad">Run FAILED at {escape(str(task))}'
            + (f"[{escape(str(index))}]" if index not in (None, -1) else "")
            + (f": {escape(error)}" if error else "")
            + f"</p><p>Open {' · '.join(links)}. <b>Next:</b> {escape(next_step(error))} "
            "Then clear the failed task in the grid (docs/runbook.md). The counts below "
            "are what the run wrote before it stopped.</p>"
        ) + head
    summary_rows = []
    for t in data["tables"]:
        r = t["reconciliation"] or {}
        summary_rows.append(
            f'<tr><td class="l">{escape(t["table"])}</td><td>{_n(t["source_rows"])}</td>'
            + "".join(
                f"<td>{_n(r.get(k))}</td>"
                for k in (
                    "loaded",
                    "merged",
                    "quarantined",
                    "excluded",
                    "target_rows",
                    "missing_keys",
                    "field_mismatches",
                )
            )
            + f'<td>{t["gates_failed"]}</td><td class="l">{_status(t["status"])}</td></tr>'
        )
    summary = (
        "<h2>Per table</h2><table><tr><th class=l>table</th><th>source rows</th><th>loaded</th>"
        "<th>merged</th><th>quarantined</th><th>excluded</th><th>target rows</th><th>missing keys</th>"
        "<th>field mismatches</th><th>failed gates</th><th class=l>status</th></tr>"
        + "".join(summary_rows)
        + "</table>"
    )
    stage_rows = []
    for t in data["tables"]:
        for i, s in enumerate(t["stages"]):
            name = (
                f'<td class="l" rowspan="{len(t["stages"])}">{escape(t["table"])}</td>'
                if i == 0
                else ""
            )
            if s["status"] == "pending":
                stage_rows.append(
                    f'<tr>{name}<td class="l">{s["stage"]}</td>'
                    f'<td colspan="6"></td><td class="l">{_status("pending")}</td>'
                    "</tr>"
                )
                continue
            stage_rows.append(
                f'<tr>{name}<td class="l">{s["stage"]}</td><td>{s["partitions"]}</td>'
                f"<td>{_n(s['in'])}</td><td>{_n(s['out'])}</td><td>{_n(s['merged'])}</td>"
                f'<td>{_n(s["quarantined"])}</td><td>{_n(s["excluded"])}</td><td class="l">{_status(s["status"])}</td></tr>'
            )
    stages = (
        "<h2>Per table and stage</h2><p class=muted>A stage balances when rows in = out + "
        "merged + quarantined + excluded in every partition and its input is exactly the previous "
        "stage's output.</p><table><tr><th class=l>table</th><th class=l>stage</th>"
        "<th>partitions</th><th>rows in</th><th>out</th><th>merged</th><th>quarantined</th>"
        "<th>excluded</th>"
        "<th class=l>status</th></tr>" + "".join(stage_rows) + "</table>"
    )
    gate_rows = "".join(
        f'<tr><td class="l">{escape(g["gate"])}</td><td class="l">{escape(g["table"])}</td>'
        f'<td class="l">{escape(g["partition"])}</td><td>{_gate_rows(g)}</td>'
        f'<td class="l">{_status("passed" if g["success"] else "FAILED")}</td><td class="l">'
        + (
            f'<a href="runs/{quote(safe_run)}/docs/{quote(g["docs_path"])}">validation page</a>'
            if g["docs_path"]
            else ""
        )
        + "</td></tr>"
        for g in data["gates"]
    )
    gates = (
        "<h2>Gates</h2><table><tr><th class=l>gate</th><th class=l>table</th>"
        "<th class=l>partition</th><th>rows</th><th class=l>result</th><th class=l>docs</th>"
        "</tr>" + gate_rows + "</table>"
    )
    return _page(f"ledger {run['run_id']}", head + summary + stages + gates)


def next_step(error: str) -> str:
    """The runbook's next step for a failure kind, from the task's one line."""
    steps = [
        (
            "intake gate failed",
            "The export's shape differs from the catalog (a column "
            "added, missing or renamed, a type): get the export fixed, or update catalog.yaml "
            "and run `handover check`.",
        ),
        (
            "compliance gate failed",
            "Check policy.yaml and the consent and objection "
            "exports; a bound that is right for this export goes in catalog.yaml "
            "(max_excluded_share).",
        ),
        (
            "quality gate failed",
            "Fix the cleansing rule that reads the column (or the "
            "export), then clear cleanse for the table; the quarantined rows are in the run's "
            "working set.",
        ),
        (
            "contract gate failed",
            "The mapping produced values the target contract refuses: "
            "fix mapping.yaml, then clear map_protect.",
        ),
        (
            "reconciliation gate failed",
            "Source and target disagree: compare the table's "
            "reconciliation JSON and report; another writer or a stale run is the usual cause.",
        ),
        (
            "ConfigError",
            "Fix the config line the message names, run `handover check`, then clear the task.",
        ),
        (
            "SourceError",
            "The export itself is wrong (missing, truncated, changed after the "
            "manifest): get it again from the operator; never edit it.",
        ),
        ("WorkingSetGone", "The run's working set was destroyed by retention: trigger a new run."),
        (
            "DatabaseFault",
            "Fix the data, mapping or schema the statement names, then clear the task.",
        ),
    ]
    return next(
        (step for needle, step in steps if needle in error),
        "Read the task's log; the runbook has a section per task.",
    )


def _status_run(status: str | None) -> str:
    text = status or "unknown"
    cls = {"succeeded": "ok", "running": "wait"}.get(text, "bad")
    return f'<span class="{cls}">{escape(text)}</span>'


def render_runs(runs: list[tuple], dag_id: str | None = None) -> str:
    def extra(r: tuple, i: int) -> str:
        return escape(str(r[i])) if len(r) > i and r[i] is not None else ""

    rows = "".join(
        f'<tr><td class="l"><a href="ledger?{urlencode({"run_id": r[0], "dag_id": r[1]})}">'
        f'{escape(r[0])}</a></td><td class="l">{escape(r[1])}</td>'
        f'<td class="l">{extra(r, 4)}</td><td class="l">{extra(r, 5)}</td>'
        f'<td class="l">{_status_run(r[2])}</td><td class="l">{escape(str(r[3]))}</td></tr>'
        for r in runs
    )
    body = (
        "<h1>Migration runs</h1><p class=muted>Newest first. Open a run for its ledger, "
        "reconciliation report and validation docs.</p><table><tr><th class=l>run</th>"
        "<th class=l>DAG</th><th class=l>kind</th><th class=l>source system</th>"
        "<th class=l>status</th><th class=l>started</th></tr>"
        + (rows or '<tr><td colspan="6" class="l">no runs recorded yet</td></tr>')
        + "</table>"
    )
    return _page("migration runs", body)


def render_message(title: str, message: str, status: str = "") -> str:
    return _page(title, f"<h1>{escape(title)}</h1><p>{escape(message)}</p>{status}")


def _gate_rows(g: dict[str, Any]) -> str:
    """What a gate validated: rows of the partition, or for the reconciliation gate the
    table's one reconciliation record (its counts), not "1 row"."""
    if g["gate"] == "reconciliation":
        return '<span class="muted">the table\'s counts</span>'
    return _n(g["rows"])


def _n(value: Any) -> str:
    if value is None:
        return ""
    return f"{int(value):,}"
