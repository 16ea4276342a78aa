"""The plugin's web app, mounted by the Airflow API server under ``/handover``.

Pages for people, next to the Airflow UI and behind its login:

* ``ledger`` — the migration ledger of a run (or the list of runs), also as a tab on
  every DAG run page (external view) and in the navigation;
* ``validation`` — where a gate task's "Validation page" link lands: finds that gate's
  page in the run's Data Docs and redirects to it;
* ``runs/<run>/docs/...`` and ``runs/<run>/reports/...`` — the run's Data Docs site and
  reconciliation report, served from the lake (local folder or S3) so a browser can open
  them over HTTP; old runs stay readable as long as the lake keeps them;
* ``vendor/...`` — the scripts, styles and fonts the Data Docs pages would otherwise
  fetch from public CDNs (docs_assets.py).

Airflow does not authenticate plugin apps; every route here asks Airflow's auth manager
(the UI's session cookie or a bearer token), like the core API does.

Every page tells the browser to load nothing from another origin (``PAGE_HEADERS``).
Great Expectations' pages ask for jQuery, bootstrap, vega and fonts from public CDNs;
served here they would run under the Airflow UI's origin, beside its session, and a CDN
that served a bad file would run it with the auditor's rights. The pages get the same
files, pinned, from ``vendor/`` instead; they stay readable without them (the Data Docs
index also gets a plain list of its validations, docs_index.py).
"""

from __future__ import annotations

import logging
import mimetypes
import posixpath
import re
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

log = logging.getLogger("handover.ui")

_SAFE_RUN = re.compile(r"^[A-Za-z0-9_.-]+$")
_KINDS = ("docs", "reports")
#: Same origin only: scripts and styles of the page itself (GX inlines both), nothing from
#: elsewhere; no plugins, no forms posting out, no framing except by the Airflow UI.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)
_FONT_TYPES = {".woff2": "font/woff2", ".woff": "font/woff", ".ttf": "font/ttf"}
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
}


def _target():
    import psycopg

    from handover.config.connections import target_dsn

    return psycopg.connect(target_dsn(), connect_timeout=5)


def _safe(run_id: str) -> str:
    from handover.storage.layout import safe_run_id

    return safe_run_id(run_id)


def _rendered_map_index(dag_id: str, run_id: str, task_id: str, map_index: int) -> str | None:
    """The task instance's label ("table/partition"), from Airflow's metadata database."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(
            # rendered_map_index is a hybrid property, which SQLAlchemy's overloads cannot type
            select(TaskInstance.rendered_map_index).where(  # type: ignore[call-overload]
                TaskInstance.dag_id == dag_id,
                TaskInstance.run_id == run_id,
                TaskInstance.task_id == task_id,
                TaskInstance.map_index == map_index,
            )
        )


def _html(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code, headers=PAGE_HEADERS)


def create_app() -> FastAPI:  # noqa: C901 - the routes are closures on the app (FastAPI's pattern), each short; McCabe sums their branches into this one
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    from handover_ui import ledger_view

    can_read_runs = [Depends(requires_access_dag("GET", DagAccessEntity.RUN))]
    can_read_tis = [Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))]

    app = FastAPI(
        title="handover", description=__doc__, docs_url=None, redoc_url=None, openapi_url=None
    )

    @app.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("ledger", status_code=307)

    @app.get("/ledger", response_class=HTMLResponse, dependencies=can_read_runs)
    def ledger(run_id: str | None = None, dag_id: str | None = None) -> HTMLResponse:
        """The ledger of one run; without run_id, the list of runs."""
        import psycopg

        try:
            with _target() as conn:
                if not run_id:
                    sql = (
                        "SELECT run_id, dag_id, status, started_at, kind, source_system "
                        "FROM handover_meta.run "
                        + ("WHERE dag_id = %s " if dag_id else "")
                        + "ORDER BY started_at DESC LIMIT 100"
                    )
                    runs = conn.execute(sql, (dag_id,) if dag_id else ()).fetchall()
                    return _html(ledger_view.render_runs(runs, dag_id))
                data = ledger_view.gather(conn, run_id)
        except psycopg.errors.UndefinedTable:  # a brand-new target: no run has started yet
            if not run_id:
                return _html(ledger_view.render_runs([], dag_id))
            data = None
        except Exception as exc:  # noqa: BLE001 - show the on-call engineer why, in one line
            return _html(_unavailable(exc), 503)
        if data is None:
            return _html(
                ledger_view.render_message(
                    "No ledger for this run yet",
                    f"Run {run_id} has not been planned in the target database (plan_run did not "
                    "succeed yet). Its plan_run task log says why.",
                ),
                404,
            )
        return _html(ledger_view.render_ledger(data, _safe(run_id)))

    @app.get("/ledger.json", dependencies=can_read_runs)
    def ledger_json(run_id: str) -> JSONResponse:
        with _target() as conn:
            data = ledger_view.gather(conn, run_id)
        if data is None:
            raise HTTPException(404, f"no ledger for run {run_id}")
        return JSONResponse(data)

    @app.get("/validation", dependencies=can_read_tis)
    def validation(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Response:
        """Redirect a gate task instance to its validation page in the run's Data Docs."""
        gate = task_id.removeprefix("validate_")
        label = _rendered_map_index(dag_id, run_id, task_id, map_index) or ""
        table, _, partition = label.partition("/")
        safe = _safe(run_id)
        try:
            with _target() as conn:
                row = conn.execute(
                    "SELECT docs_path FROM handover_meta.gate_result WHERE run_id = %s AND "
                    "gate = %s AND table_name = %s AND partition = %s",
                    (run_id, gate, table, partition or "all"),
                ).fetchone()
        except Exception as exc:  # noqa: BLE001 - any database failure becomes a one-line 503 page, never a stack trace
            return _html(_unavailable(exc), 503)
        if row and row[0]:
            return RedirectResponse(f"runs/{safe}/docs/{row[0]}", status_code=307)
        if _lake_exists(f"runs/{safe}/docs/index.html"):
            return RedirectResponse(f"runs/{safe}/docs/index.html", status_code=307)
        return _html(
            ledger_view.render_message(
                "No validation page yet",
                f"The {gate} gate has not validated {label or task_id} in run {run_id}: it did not "
                "run, or failed before validating (a missing or invalid suite). The task log "
                "says why.",
            ),
            404,
        )

    @app.get("/vendor/{path:path}", dependencies=can_read_runs)
    def vendor(path: str) -> Response:
        """A script, stylesheet or font of the Data Docs pages (docs_assets.py)."""
        from fastapi.responses import FileResponse

        from handover.gates.docs_assets import vendor_file

        found = vendor_file(path)
        if found is None:
            raise HTTPException(404, "not found")
        media = _FONT_TYPES.get(found.suffix) or mimetypes.guess_type(found.name)[0]
        return FileResponse(
            found,
            media_type=media or "application/octet-stream",
            headers={**PAGE_HEADERS, "Cache-Control": "private, max-age=86400"},
        )

    @app.get("/runs/{run}/{kind}/{path:path}", dependencies=can_read_runs)
    def run_file(run: str, kind: str, path: str) -> Response:
        """A file of the run's Data Docs or reports, straight from the lake."""
        parts = path.split("/")
        if (
            kind not in _KINDS
            or not _SAFE_RUN.match(run)
            or not path
            or any(p in ("", ".", "..") for p in parts)
        ):
            raise HTTPException(404, "not found")
        key = f"runs/{run}/{kind}/{path}"
        try:
            data = _lake_get(key)
        except FileNotFoundError:
            return _html(
                ledger_view.render_message(
                    "Not found",
                    f"{kind}/{path} of run {run} is not in the lake (the run has not "
                    "published it yet, or the lake was cleaned).",
                ),
                404,
            )
        if kind == "docs" and path.endswith(".html"):
            from handover.gates.docs_assets import rewrite

            # relative to the page, so that any prefix the UI is served under still holds:
            # the page is `path` under runs/<run>/docs/, three levels below vendor/'s parent
            up = "../" * path.count("/")
            page = rewrite(data.decode("utf-8"), f"{up}../../../vendor/", up)
            if path == "index.html":
                from handover_ui.docs_index import add_plain_index

                page = add_plain_index(page)
            data = page.encode("utf-8")
        # a bundled site's own vendor/ fonts (docs_assets.bundle) need their types too
        media = (
            _FONT_TYPES.get(posixpath.splitext(path)[1])
            or mimetypes.guess_type(path)[0]
            or "application/octet-stream"
        )
        return Response(data, media_type=media, headers=PAGE_HEADERS)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code in (401, 403):
            # The browser's session expired or the user may not read this DAG: say so plainly.
            return _html(
                ledger_view.render_message(
                    "Not signed in" if exc.status_code == 401 else "Not allowed",
                    "Sign in to Airflow (or ask for read access to this DAG), then reload.",
                ),
                exc.status_code,
            )
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    return app


def _lake():
    from handover.storage.lake import lake_from_url

    return lake_from_url()


def _lake_exists(key: str) -> bool:
    try:
        return _lake().exists(key)
    except Exception:  # noqa: BLE001 - an unreachable lake means "no such page"; the page says so
        return False


def _lake_get(key: str) -> bytes:
    lake = _lake()
    if not lake.exists(key):
        raise FileNotFoundError(key)
    return lake.get_bytes(key)


def _unavailable(exc: Exception) -> str:
    from handover_ui.ledger_view import render_message

    first = (str(exc).splitlines() or [""])[0]
    log.warning("handover ledger unavailable: %s: %s", type(exc).__name__, first)
    return render_message(
        "Migration ledger unavailable",
        f"Cannot read handover_meta in the target database ({type(exc).__name__}: {first}). "
        "Check the connection handover_target and that the database is up.",
    )


def app_spec() -> dict[str, Any]:
    return {"app": create_app(), "url_prefix": "/handover", "name": "handover"}
