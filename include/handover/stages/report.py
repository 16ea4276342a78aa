"""Reports for people: reconciliation and compliance, as JSON and as HTML.

Built only from handover_meta (ledger, reconciliation, quarantine and exclusion
counts, gate results), so no report can contain a customer's value: they hold
table names, counts, reason codes, money totals and links.
"""

from __future__ import annotations

import html
from typing import Any

import psycopg

from handover.config.model import SourceConfig
from handover.storage.layout import safe_run_id
from handover.storage.objects import Lake

# identity_review statuses, in the report's column order (handover.stages.identity)
REVIEW_STATUSES = ("open", "kept", "applied", "keep-target", "correct")


def _first(cur: psycopg.Cursor[Any]) -> Any:
    """The first value of the one row a to_regclass, count or max query returns."""
    return cur.fetchone()[0]  # type: ignore[index]  # such a query always returns a row


def gather(conn: psycopg.Connection, cfg: SourceConfig, run_id: str) -> dict[str, Any]:
    def rows(q: str) -> list[tuple]:
        return conn.execute(q, (run_id,)).fetchall()

    recon = {
        r[0]: dict(
            zip(
                (
                    "source_rows",
                    "loaded",
                    "quarantined",
                    "excluded",
                    "target_rows",
                    "missing_keys",
                    "field_mismatches",
                    "money_source",
                    "money_target",
                    "balanced",
                    "merged",
                ),
                r[1:],
                strict=True,
            )
        )
        for r in rows(
            "SELECT table_name, source_rows, loaded, quarantined, excluded, "
            "target_rows, missing_keys, field_mismatches, money_source, "
            "money_target, balanced, merged FROM handover_meta.reconciliation "
            "WHERE run_id=%s ORDER BY table_name"
        )
    }
    quarantine: dict[str, dict[str, int]] = {}
    for t, reason, n in rows(
        "SELECT table_name, reason, count(*) FROM handover_meta.quarantine "
        "WHERE run_id=%s GROUP BY 1, 2 ORDER BY 1, 2"
    ):
        quarantine.setdefault(t, {})[reason] = int(n)
    # Records of one person merged into its survivor: by count and rule, never by value.
    merges: dict[str, dict[str, int]] = {}
    for t, rule, n in rows(
        "SELECT table_name, rule, count(*) FROM handover_meta.merge_map "
        "WHERE run_id=%s GROUP BY 1, 2 ORDER BY 1, 2"
    ):
        merges.setdefault(t, {})[rule] = int(n)
    # One person, one customer across systems (handover.stages.identity): counts, never a value.
    persons: dict[str, int] = {}
    if _first(conn.execute("SELECT to_regclass('handover_meta.person_map')")):
        persons = {
            d: int(n)
            for d, n in conn.execute(
                "SELECT decision, count(*) FROM handover_meta.person_map WHERE run_id = %s AND "
                "source_system = %s GROUP BY 1 ORDER BY 1",
                (run_id, cfg.system),
            ).fetchall()
        }
    # field conflicts of merged records: by field, the survivorship rule that decided, and
    # status (open: a person decides; kept / applied: decided by rule; keep-target /
    # correct: decided by a person)
    review: dict[str, dict[str, dict[str, int]]] = {}
    if _first(conn.execute("SELECT to_regclass('handover_meta.identity_review')")):
        for f, rule, st, n in conn.execute(
            "SELECT field, rule, status, count(*) FROM handover_meta.identity_review WHERE "
            "source_system = %s GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            (cfg.system,),
        ).fetchall():
            review.setdefault(f, {}).setdefault(rule, {})[st] = int(n)
    consent_conflicts = None  # persons x purposes whose systems disagree (withdrawal holds)
    if _first(conn.execute("SELECT to_regclass('crm.consent_effective')")):
        consent_conflicts = int(
            _first(conn.execute("SELECT count(*) FROM crm.consent_effective WHERE conflicting"))
        )
    exclusions: dict[str, dict[str, int]] = {}
    for t, rule, n in rows(
        "SELECT table_name, rule_id, count(*) FROM handover_meta.exclusion "
        "WHERE run_id=%s GROUP BY 1, 2 ORDER BY 1, 2"
    ):
        exclusions.setdefault(t, {})[rule] = int(n)
    gates = [
        dict(
            zip(
                ("gate", "table", "partition", "success", "evaluated", "rows", "docs_path"),
                r,
                strict=True,
            )
        )
        for r in rows(
            "SELECT gate, table_name, partition, success, evaluated, rows, "
            "docs_path FROM handover_meta.gate_result WHERE run_id=%s "
            "ORDER BY gate, table_name, partition"
        )
    ]
    protection = []
    for table in cfg.tables:
        tmap = cfg.table_mapping(table)
        for field, spec in tmap["fields"].items():
            col = cfg.table(table)["columns"][spec["from"]]
            protection.append(
                {
                    "table": table,
                    "target": f"{tmap['target']}.{field}",
                    "level": col["level"],
                    "pii": col["pii"],
                    "protect": spec.get("protect", []),
                }
            )
    # Children quarantined because their parent was unknown, not taken in by a later night
    # yet (every run: they wait for the night that brings the parent).
    orphans = {
        t: int(n)
        for t, n in conn.execute(
            "SELECT table_name, count(*) FROM handover_meta.quarantine WHERE reason = "
            "'ORPHAN_RECORD' AND released_by IS NULL GROUP BY 1 ORDER BY 1"
        ).fetchall()
    }
    head = conn.execute(
        "SELECT id, hash FROM handover_meta.audit_log ORDER BY id DESC LIMIT 1"
    ).fetchone()
    status = conn.execute(
        "SELECT status FROM handover_meta.run WHERE run_id=%s", (run_id,)
    ).fetchone()
    failure = None
    if status and status[0] == "failed":  # the task that stopped it, in its own one line
        row = conn.execute(
            "SELECT detail FROM handover_meta.audit_log WHERE run_id=%s AND "
            "action='run_failed' ORDER BY id DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        failure = row[0] if row else {}
    return {
        "run_id": run_id,
        "system": cfg.system,
        "reconciliation": recon,
        "status": status[0] if status else None,
        "failure": failure,
        "tables": list(cfg.tables),
        "audit_head": {"id": head[0], "hash": head[1]} if head else None,
        "money_by_period": {},
        "quarantine": quarantine,
        "exclusions": exclusions,
        "gates": gates,
        "merges": merges,
        "persons": persons,
        "consent_conflicts": consent_conflicts,
        "field_conflicts": review,
        "orphans_waiting": orphans,
        "protection": protection,
        "policy_purpose": cfg.policy["purpose"],
        "rules": cfg.policy["rules"],
    }


def _bar(parts: list[tuple[str, int, str]], total: int, width: int = 420) -> str:
    x, out = 0.0, []
    for label, n, color in parts:
        w = width * n / total if total else 0
        out.append(
            f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="18" fill="{color}">'
            f"<title>{html.escape(label)}: {n:,}</title></rect>"
        )
        x += w
    return f'<svg width="{width}" height="18" role="img">{"".join(out)}</svg>'


def _reasons_chart(reasons: dict[str, int], top: int = 5, width: int = 360) -> str:
    """Horizontal bars of a table's top quarantine reasons (counts only)."""
    items = sorted(reasons.items(), key=lambda kv: -kv[1])[:top]
    if not items:
        return ""
    most = max(n for _, n in items)
    bars = []
    for i, (reason, n) in enumerate(items):
        w = max(1.0, (width - 170) * n / most)
        y = i * 20
        bars.append(
            f'<text x="0" y="{y + 13}" font-size="11">{html.escape(reason)}</text>'
            f'<rect x="165" y="{y + 3}" width="{w:.1f}" height="13" fill="#f9a825">'
            f"<title>{html.escape(reason)}: {n:,}</title></rect>"
            f'<text x="{170 + w:.1f}" y="{y + 13}" font-size="11">{n:,}</text>'
        )
    return (
        f'<svg width="{width + 60}" height="{len(items) * 20 + 4}" role="img">'
        + "".join(bars)
        + "</svg>"
    )


def _failed_banner(data: dict[str, Any]) -> str:
    """A failed run says so first, with the task and the reason its log gives, and which
    tables it never reached."""
    if data.get("status") != "failed":
        return ""
    esc = html.escape
    f = data.get("failure") or {}
    task = f.get("task_id") or "a task"
    if f.get("map_index") not in (None, -1):
        task += f"[{f['map_index']}]"
    missing = [t for t in data.get("tables", []) if t not in data["reconciliation"]]
    return (
        f'<p id="failed" style="color:#c62828;font-weight:600">This run FAILED at '
        f"{esc(str(task))}: {esc(f.get('error') or 'see the task log')}</p>"
        "<p>The counts below are what the run wrote before it stopped"
        + (f"; not reached (no reconciliation): {esc(', '.join(missing))}" if missing else "")
        + ". Fix the cause (docs/runbook.md, the task's section), then clear the failed "
        "task in the Airflow grid; this report is rewritten when the run succeeds.</p>"
    )


def _gate_rows(g: dict[str, Any]) -> str:
    """Rows a gate validated; the reconciliation gate validates the table's counts (one
    record), which "1" would misstate."""
    return "the table's counts" if g["gate"] == "reconciliation" else f"{g['rows']:,}"


def render_html(data: dict[str, Any]) -> str:
    esc = html.escape
    head = data.get("audit_head") or {}
    recon_rows = []
    for t, r in data["reconciliation"].items():
        bar = _bar(
            [
                ("loaded", r["loaded"], "#2e7d32"),
                ("merged", r.get("merged", 0), "#6a1b9a"),
                ("quarantined", r["quarantined"], "#f9a825"),
                ("excluded", r["excluded"], "#1565c0"),
            ],
            r["source_rows"],
        )
        money = (
            ""
            if r["money_source"] is None
            else (f"{r['money_source'] / 100:,.2f} / {r['money_target'] / 100:,.2f}")
        )
        recon_rows.append(
            f"<tr><td>{esc(t)}</td><td>{r['source_rows']:,}</td><td>{r['loaded']:,}</td>"
            f"<td>{r.get('merged', 0):,}</td><td>{r['quarantined']:,}</td><td>{r['excluded']:,}</td>"
            f"<td>{r['missing_keys']}</td><td>{r['field_mismatches']}</td><td>{money}</td>"
            f"<td>{'✔ balanced' if r['balanced'] else '✘ NOT balanced'}</td><td>{bar}</td></tr>"
        )
    m_rows = "".join(
        f"<tr><td>{esc(t)}</td><td>{esc(str(m['period']))}</td>"
        f"<td>{m['source_fen'] / 100:,.2f}</td><td>{m['target_fen'] / 100:,.2f}</td>"
        f"<td>{'✔' if m['source_fen'] == m['target_fen'] else '✘ differs'}</td></tr>"
        for t, ms in data.get("money_by_period", {}).items()
        for m in ms
    )
    review_rows = "".join(
        f"<tr><td>{esc(f)}</td><td>{esc(rule)}</td>"
        + "".join(f"<td>{d.get(st, 0):,}</td>" for st in REVIEW_STATUSES)
        + "</tr>"
        for f, rules in (data.get("field_conflicts") or {}).items()
        for rule, d in rules.items()
    )
    pm = data.get("persons") or {}
    person_rows = "".join(f"<tr><td>{esc(d)}</td><td>{n:,}</td></tr>" for d, n in pm.items())
    mg_rows = "".join(
        f"<tr><td>{esc(t)}</td><td>{esc(rule)}</td><td>{n:,}</td></tr>"
        for t, d in data.get("merges", {}).items()
        for rule, n in d.items()
    )
    q_rows = "".join(
        f"<tr><td>{esc(t)}</td><td>{esc(reason)}</td><td>{n:,}</td></tr>"
        for t, d in data["quarantine"].items()
        for reason, n in d.items()
    )
    q_charts = "".join(
        f"<figure><figcaption>{esc(t)}: top quarantine reasons</figcaption>"
        f"{_reasons_chart(d)}</figure>"
        for t, d in data["quarantine"].items()
    )
    o_rows = "".join(
        f"<tr><td>{esc(t)}</td><td>{n:,}</td></tr>"
        for t, n in data.get("orphans_waiting", {}).items()
    )
    x_rows = "".join(
        f"<tr><td>{esc(t)}</td><td>{esc(rule)}</td><td>{n:,}</td></tr>"
        for t, d in data["exclusions"].items()
        for rule, n in d.items()
    )
    g_rows = "".join(
        f"<tr><td>{esc(g['gate'])}</td><td>{esc(g['table'])}</td><td>{esc(g['partition'])}</td>"
        f"<td>{'passed' if g['success'] else 'FAILED'}</td><td>{g['evaluated']}</td>"
        f"<td>{_gate_rows(g)}</td><td>"
        + (f'<a href="../docs/{esc(g["docs_path"])}">validation page</a>' if g["docs_path"] else "")
        + "</td></tr>"
        for g in data["gates"]
    )
    p_rows = "".join(
        f"<tr><td>{esc(p['target'])}</td><td>{esc(p['level'])}</td><td>{esc(p['pii'])}</td>"
        f"<td>{esc(', '.join(p['protect']) or '—')}</td></tr>"
        for p in data["protection"]
        if p["pii"] != "none"
    )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>handover run {esc(data["run_id"])}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;
margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}th{{background:#f3f3f3}}
.charts{{display:flex;flex-wrap:wrap;gap:1.5em}}figure{{margin:0}}figcaption{{font-size:12px}}
</style></head><body>
<h1>Migration run {esc(data["run_id"])}</h1>{_failed_banner(data)}
<p>Source system <b>{esc(data["system"])}</b>. Purpose: {esc(data["policy_purpose"])}.</p>
<p>Audit trail head at publication: entry {head.get("id", "—")},
<code>{esc(str(head.get("hash", "—")))}</code> (anchor for <code>verify-audit</code>).</p>
<h2>Reconciliation</h2>
<p>Per table: every source row is loaded (green), merged into the record of the same person
(purple), quarantined (amber) or excluded (blue).</p>
<table><tr><th>table</th><th>source rows</th><th>loaded</th><th>merged</th><th>quarantined</th>
<th>excluded</th><th>missing keys</th><th>field mismatches</th><th>money source / target (yuan)</th>
<th>status</th><th>funnel</th></tr>{"".join(recon_rows)}</table>
<h2>Money per period, source vs target (yuan)</h2>
<table><tr><th>table</th><th>period</th><th>source</th><th>target</th><th></th></tr>{m_rows}</table>
<h2>Merged records by rule</h2><p>One person exported as two customers
(<code>SAME_PERSON</code>: the same resident ID once normalised, e.g. a 15-digit and an 18-digit
form; <code>SAME_KEY</code>: one customer id written two ways): the surviving record is
loaded, the other's child rows follow it. Which id went into which is in
<code>handover_meta.merge_map</code> (auditors may read it).</p>
<table><tr><th>table</th><th>rule</th><th>rows</th></tr>{mg_rows}</table>
<h2>Persons across systems</h2><p>Customers of this export by what the person map decided:
<code>new</code> (loaded as their own record), <code>merged_existing</code> (already a customer of
the target under another id, matched by the blind index of the resident ID, never in clear;
<code>EXISTING_CUSTOMER</code> above), <code>merged_same_person</code> (a second record of one
person in this export). The acquirer's record keeps its fields; the export's child rows
follow it. Auditors read <code>handover_meta.person_map</code>.</p>
<table><tr><th>decision</th><th>customers</th></tr>{person_rows}</table>
<p>Fields where a merged record disagreed with the target's customer, by the survivorship
rule of policy.yaml <code>identity</code> that decided: <code>target</code> / <code>source</code>
/ <code>newest</code> (decided: the target's value kept, or the export's applied through the
gates), <code>verified_kept</code> (the target's value is verified: never overwritten),
<code>review</code> (the target's value stays until a person decides with
<code>handover review</code>):</p>
<table><tr><th>field</th><th>rule</th><th>open</th><th>kept (rule)</th><th>applied (rule)</th>
<th>kept (person)</th><th>corrected (person)</th></tr>{review_rows}
</table>
<p>Consents where one person's systems disagree (one granted, another withdrew the same
purpose): <b>{data.get("consent_conflicts") or 0:,}</b>; the withdrawal holds
(<code>crm.consent_effective</code>).</p>
<h2>Quarantine by reason</h2><table><tr><th>table</th><th>reason</th><th>rows</th></tr>{q_rows}
</table>
<div class="charts">{q_charts}</div>
<p>Where they are: each quarantined row is kept whole, encrypted, in the lake's working set
(<code>runs/&lt;run&gt;/cleanse/_quarantine/</code>) for the policy's
<code>quarantine_days</code>, then destroyed by <code>retention_and_destruction</code>; only
the pipeline's service (the lake and the keyring) can read it. The books
(<code>handover_meta.quarantine</code>, readable by auditors) keep the record key, the
reason and the field, never a value. What to do: a wrong rule is fixed in
<code>cleansing.yaml</code> and the table's <code>cleanse</code> task cleared (the rows then
load, and rows the new rule refuses leave the target); a wrong export is exported again and
<code>extract_table</code> cleared (docs/runbook.md). Orphans wait for their parent and load
in the night that brings it.</p>
<h2>Orphans waiting for their parent (all runs)</h2><p>Children quarantined
<code>ORPHAN_RECORD</code>: each night takes them in again and loads those whose parent has
arrived.</p><table><tr><th>table</th><th>rows waiting</th></tr>{o_rows}</table>
<h2>Exclusions by policy rule</h2><table><tr><th>table</th><th>rule</th><th>rows</th></tr>
{x_rows}</table>
<h2>Protection of personal information</h2><table><tr><th>target field</th><th>level</th>
<th>PII type</th><th>protection</th></tr>{p_rows}</table>
<h2>Gates</h2><table><tr><th>gate</th><th>table</th><th>partition</th><th>result</th>
<th>expectations</th><th>rows</th><th>docs</th></tr>{g_rows}</table>
</body></html>"""


def write_reports(
    conn: psycopg.Connection, lake: Lake, cfg: SourceConfig, run_id: str
) -> dict[str, str]:
    data = gather(conn, cfg, run_id)
    for table in cfg.tables:
        key = f"runs/{safe_run_id(run_id)}/reconcile/{table}.json"
        if lake.exists(key) and lake.read_json(key).get("money"):
            data["money_by_period"][table] = lake.read_json(key)["money"]
    base = f"runs/{safe_run_id(run_id)}/reports"
    lake.write_json(f"{base}/report.json", data)
    lake.put_bytes(f"{base}/report.html", render_html(data).encode("utf-8"))
    return {
        "report_json": lake.uri(f"{base}/report.json"),
        "report_html": lake.uri(f"{base}/report.html"),
        "data_docs": lake.uri(f"runs/{safe_run_id(run_id)}/docs/index.html"),
    }
