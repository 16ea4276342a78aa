"""The plugin's ledger page on a failed run says so first, with the task and its line."""

from __future__ import annotations

from handover_ui.ledger_view import build, render_ledger


def test_a_failed_run_is_shown_failed_at_the_top_with_its_task_and_reason():
    data = build(
        run={
            "run_id": "r1",
            "dag_id": "customer_migration",
            "system": "legacy_bss",
            "status": "failed",
            "started_at": None,
            "finished_at": None,
        },
        stages=[("payments", "extract", 1, 10, 10, 0, 0)],
        recon=[],
        gates=[],
    )
    data["run"]["failure"] = {
        "task_id": "validate_intake",
        "map_index": 4,
        "error": "GateFailed: intake gate failed for payments <p00>",
    }
    html = render_ledger(data, "r1")
    top = html.index('id="failed"')
    assert top < html.index('id="summary"')
    assert "Run FAILED at validate_intake[4]" in html
    assert "intake gate failed for payments &lt;p00&gt;" in html  # escaped
    assert 'class="bad">failed<' in html and "running" not in html


def test_a_failed_run_links_its_log_and_page_names_the_next_step_and_unreached_tables():
    data = build(
        run={
            "run_id": "manual__1",
            "dag_id": "customer_migration",
            "system": "legacy_bss",
            "status": "failed",
            "started_at": None,
            "finished_at": None,
        },
        stages=[
            ("payments", "extract", 1, 10, 10, 0, 0, 0),
            ("subscribers", "extract", 1, 5, 5, 0, 0, 0),
            ("subscribers", "comply", 1, 5, 5, 0, 0, 0),
            ("subscribers", "cleanse", 1, 5, 3, 0, 0, 2),
        ],
        recon=[],
        gates=[("intake", "payments", "p00", False, 10, "validations/intake/payments/x.html")],
    )
    data["run"]["failure"] = {
        "task_id": "validate_intake",
        "map_index": 3,
        "error": "GateFailed: intake gate failed for payments p00",
    }
    html = render_ledger(data, "manual__1")
    assert 'href="/dags/customer_migration/runs/manual__1/tasks/validate_intake/mapped/3"' in html
    assert 'href="runs/manual__1/docs/validations/intake/payments/x.html"' in html
    assert "The export&#x27;s shape differs from the catalog" in html
    assert "not reached: stopped after extract" in html
    assert "not reached: stopped after cleanse" in html
    assert "not reconciled yet" not in html
    # merged rows balance a stage: 5 in = 3 out + 2 merged
    cleanse = next(
        s
        for t in data["tables"]
        if t["table"] == "subscribers"
        for s in t["stages"]
        if s["stage"] == "cleanse"
    )
    assert cleanse["status"] == "balanced" and cleanse["merged"] == 2
