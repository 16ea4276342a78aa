"""The plugin's ledger page on a failed run says so first, with the task and its line."""

from __future__ import annotations

from handover_ui.ledger_view import build, render_ledger


def test_a_failed_run_is_shown_failed_at_the_top_with_its_task_and_reason():
    data = build(run={"run_id": "r1", "dag_id": "customer_migration", "system": "legacy_bss",
                      "status": "failed", "started_at": None, "finished_at": None},
                 stages=[("payments", "extract", 1, 10, 10, 0, 0)], recon=[], gates=[])
    data["run"]["failure"] = {"task_id": "validate_intake", "map_index": 4,
                              "error": "GateFailed: intake gate failed for payments <p00>"}
    html = render_ledger(data, "r1")
    top = html.index('id="failed"')
    assert top < html.index('id="summary"')
    assert "Run FAILED at validate_intake[4]" in html
    assert "intake gate failed for payments &lt;p00&gt;" in html  # escaped
    assert 'class="bad">failed<' in html and "running" not in html
