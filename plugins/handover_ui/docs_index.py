"""A plain list of a run's validations, added to the Data Docs index when it is served.

Great Expectations draws its index table with scripts (jQuery, bootstrap-table) that its
page asks public CDNs for; the plugin serves pinned copies from its own origin
(docs_assets.py), but where they are not installed the index shows no validation at all.
The rows are in the page as data, so the plugin lists them once more as plain HTML at the
end of the page, a list that needs no script. If GX changes its page and nothing is
found, the page is served as it is.
"""

from __future__ import annotations

import re
from html import escape

_ROW = re.compile(
    r"'_expectation_suite_name_sort': '(?P<suite>[^']*)', "
    r"'_table_row_link_path': '(?P<path>validations/[^']*)', "
    r"'_validation_success_text': '(?P<result>[^']*)'"
)
MARK = 'id="handover-plain-index"'


def validations(page: str) -> list[dict[str, str]]:
    """Suite, partition, result and page of every validation the index holds."""
    rows = {}
    for m in _ROW.finditer(page):
        path = m["path"]
        partition = path.rsplit("/", 1)[-1].removesuffix(".html")
        rows[path] = {
            "suite": m["suite"],
            "partition": partition,
            "result": m["result"],
            "path": path,
        }
    return sorted(rows.values(), key=lambda r: (r["suite"], r["partition"], r["path"]))


def add_plain_index(page: str) -> str:
    if MARK in page or "</body>" not in page:
        return page
    rows = validations(page)
    if not rows:
        return page
    body = "".join(
        f"<tr><td>{escape(r['suite'])}</td><td>{escape(r['partition'])}</td>"
        f'<td>{escape(r["result"])}</td><td><a href="{escape(r["path"])}">page</a></td></tr>'
        for r in rows
    )
    section = (
        f'<section {MARK} style="margin:2em;font:14px system-ui,sans-serif">'
        "<h2>Validations of this run</h2><p>Every gate's validation, as a plain list (the "
        "table above is drawn by scripts; this list needs none).</p>"
        '<table border="1" cellpadding="4" style="border-collapse:collapse">'
        "<tr><th>gate.table</th><th>partition</th><th>result</th><th></th></tr>"
        f"{body}</table></section>"
    )
    return page.replace("</body>", section + "</body>", 1)
