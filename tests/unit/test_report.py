"""The run report as people read it: a failed run says so first, merges and persons are
counted, and each table's top quarantine reasons are drawn (counts only, no values)."""

from __future__ import annotations

from handover.stages.report import render_html


def _data(**over):
    data = {
        "run_id": "r1",
        "system": "legacy_bss",
        "policy_purpose": "migration",
        "audit_head": None,
        "status": "succeeded",
        "failure": None,
        "tables": ["subscribers", "payments"],
        "reconciliation": {
            "subscribers": {
                "source_rows": 10,
                "loaded": 6,
                "merged": 2,
                "quarantined": 1,
                "excluded": 1,
                "target_rows": 6,
                "missing_keys": 0,
                "field_mismatches": 0,
                "money_source": None,
                "money_target": None,
                "balanced": True,
            }
        },
        "quarantine": {"payments": {"INVALID_NUMBER": 7, "NEGATIVE_AMOUNT": 2}},
        "exclusions": {},
        "gates": [
            {
                "gate": "reconciliation",
                "table": "subscribers",
                "partition": "all",
                "success": True,
                "evaluated": 5,
                "rows": 1,
                "docs_path": None,
            }
        ],
        "merges": {"subscribers": {"SAME_PERSON": 2}},
        "persons": {"new": 6, "merged_same_person": 2},
        "protection": [],
        "orphans_waiting": {},
        "money_by_period": {},
    }
    data.update(over)
    return data


def test_a_report_draws_the_top_quarantine_reasons_and_counts_merges():
    page = render_html(_data())
    assert "payments: top quarantine reasons" in page and page.count("<svg") >= 2
    assert "<title>INVALID_NUMBER: 7</title>" in page
    assert "SAME_PERSON" in page and "merged_same_person" in page
    assert "the table's counts" in page  # a reconciliation gate is not "1 row"
    assert "FAILED" not in page


def test_a_failed_run_says_so_first_and_names_the_tables_it_never_reached():
    page = render_html(
        _data(
            status="failed",
            failure={
                "task_id": "validate_intake",
                "map_index": 2,
                "error": "GateFailed: intake gate failed for payments partition p00",
            },
        )
    )
    assert page.index("This run FAILED at validate_intake[2]") < page.index("Reconciliation")
    assert "not reached (no reconciliation): payments" in page
