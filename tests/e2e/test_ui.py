"""The on-call path in a real browser: red task, one-line reason, fix, clear, green.

Starts Airflow as in production (api-server, scheduler, dag-processor, LocalExecutor) on
fresh databases on the machine's PostgreSQL, with the project's dags and plugins, a
temporary lake and a small synthetic export (300 subscribers) whose payments.csv carries
a column the catalog does not know. Headless Chromium (Debian's ``chromium`` and
``chromium-driver``; ``scripts/install-browser.sh``) then does what on-call staff do:
signs in, triggers ``customer_migration``, finds the red intake gate in the grid, reads
the one-line reason in its log, fixes the export, clears the extract of that table (with
its downstream) from the UI, and watches the run go green. The ledger must balance, the
failure must have been notified once per failed task, and the plugin's pages (ledger view,
validation page link, Data Docs, report) must open. Screenshots go to docs/screenshots/.

Every wait is bounded; all processes are stopped at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import pytest

from handover_synth import legacy_bss as synth
from tests.conftest import (
    ROOT,
    create_airflow_database,
    create_database,
    drop_database,
    pg_dsn,
    pg_url,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(720)]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1600,1000",
)
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
SHOTS = ROOT / "docs" / "screenshots"
FAILURES = ROOT / ".state" / "test-failures"  # screenshots of failed waits (git-ignored)
DAG_ID = "customer_migration"
USER, PASSWORD = "oncall", "oncall-" + secrets.token_hex(4)
DRIFT_COLUMN = "coupon_code"


# ----------------------------------------------------------------------------- helpers
def wait_for(what: str, probe, timeout: float, every: float = 2.0):
    """Poll ``probe`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last error
            last_exc = exc
        time.sleep(every)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what}"
        + (f" (last error: {last_exc!r})" if last_exc else "")
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """The on-call webhook: records every notification POSTed to it."""

    def __init__(self) -> None:
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def _record(self):
                n = int(self.headers.get("Content-Length") or 0)
                bodies.append(self.rfile.read(n).decode("utf-8"))
                self.send_response(204)
                self.end_headers()

            do_POST = _record  # http.server dispatches a POST to do_POST

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/oncall"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def trimmed_config(dst: Path, tables: dict[str, int]) -> Path:
    """A copy of the legacy_bss config that moves only ``tables`` (name: partitions).

    The on-call path needs a parent table, the consent table the policy reads and one
    multi-partition child; the full catalog would only add minutes of gate tasks on a small
    machine. The copy goes through the same config checks as the original.
    """
    import yaml

    from handover.config.loader import CONFIG_ROOT, load_config

    shutil.copytree(CONFIG_ROOT / "legacy_bss", dst)
    for name in ("catalog.yaml", "cleansing.yaml", "mapping.yaml"):
        doc = yaml.safe_load((dst / name).read_text(encoding="utf-8"))
        doc["tables"] = {t: spec for t, spec in doc["tables"].items() if t in tables}
        if name == "catalog.yaml":
            for t, n in tables.items():
                doc["tables"][t]["partitions"] = n
        (dst / name).write_text(
            yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8"
        )
    assert load_config(dst).tables == list(tables)
    return dst


def plant_drift(src: Path) -> str:
    """Add a column the catalog does not know to payments.csv; return the original text."""
    path = src / "payments.csv"
    original = path.read_text()
    lines = original.splitlines()
    drifted = [lines[0] + f",{DRIFT_COLUMN}"] + [line + ",X1" for line in lines[1:]]
    path.write_text("\n".join(drifted) + "\n")
    reseal(src)  # the operator's export, as sealed by its manifest, has the column
    return original


def reseal(src: Path) -> None:
    """The manifest of an export as the operator gives it: each file's sha256."""
    import hashlib

    manifest = json.loads((src / "export_manifest.json").read_text())
    for entry in manifest["tables"].values():
        entry["sha256"] = hashlib.sha256((src / entry["file"]).read_bytes()).hexdigest()
    (src / "export_manifest.json").write_text(json.dumps(manifest))


class AirflowStack:
    """api-server, scheduler and dag-processor on fresh databases; logs under ``root``."""

    def __init__(self, root: Path, keyring: Path, notify_url: str) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # a copy of the session's migrated metadata database: no `airflow db migrate` here
        self.af_db = create_airflow_database("handover_ui_af")
        self.target_db = create_database("handover_ui")
        self.source = root / "source"
        self.lake = root / "lake"
        self.procs: dict[str, subprocess.Popen] = {}
        passwords = root / "passwords.json"
        passwords.write_text(json.dumps({USER: PASSWORD}))
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HANDOVER"))},
            "AIRFLOW_HOME": str(root / "airflow"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg_url(self.af_db, "postgresql+psycopg2"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # Other DAGs of the project stay paused: only customer_migration runs here.
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:op",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            # The scheduler's nap between idle loops (default 1 s).
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            # A task's supervisor notices its task process has exited only when it next
            # wakes up to heartbeat, up to this many seconds later (default 5); until then
            # the executor's slot stays taken.
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW_CONN_HANDOVER_TARGET": pg_url(self.target_db, "postgres"),
            "AIRFLOW_CONN_HANDOVER_KEYS": json.dumps(
                {"conn_type": "generic", "extra": json.loads(keyring.read_text())}
            ),
            "AIRFLOW_CONN_HANDOVER_NOTIFY": notify_url,
            "HANDOVER_LAKE_URL": f"file://{self.lake}",
            "HANDOVER_SOURCE_DIR": str(self.source),
            "PYTHONPATH": str(ROOT / "include"),
            "PYTHONWARNINGS": "ignore",
        }

    # -- processes -------------------------------------------------------------------
    def start(self) -> None:
        self._spawn("api-server", "api-server", "--port", str(self.port), "--host", "127.0.0.1")
        self._spawn("dag-processor", "dag-processor")
        self._spawn("scheduler", "scheduler")
        wait_for("the api-server to answer", self._healthy, timeout=120, every=0.5)
        wait_for(f"the dag-processor to parse {DAG_ID}", self._dag_parsed, timeout=120, every=0.5)
        self.api("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        """Airflow's REST API as the on-call user (setup only: the test clicks in the UI)."""

        def call(method: str, path: str, body: dict | None, headers: dict) -> dict:
            req = urllib.request.Request(
                self.url + path,
                method=method,
                data=json.dumps(body).encode() if body else None,
                headers={"Content-Type": "application/json", **headers},
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"{}")

        token = call("POST", "/auth/token", {"username": USER, "password": PASSWORD}, {})[
            "access_token"
        ]
        return call(method, path, body, {"Authorization": f"Bearer {token}"})

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            [AIRFLOW, *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _healthy(self) -> bool:
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"{name} exited:\n{self.log_tail(name)}"
        with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as resp:
            return resp.status == 200

    def _dag_parsed(self) -> bool:
        with psycopg.connect(pg_dsn(self.af_db)) as conn:
            row = conn.execute("SELECT is_paused FROM dag WHERE dag_id = %s", (DAG_ID,)).fetchone()
        return row is not None

    def log_tail(self, name: str, n: int = 4000) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def drop_databases(self) -> None:
        drop_database(self.af_db)
        drop_database(self.target_db)

    # -- metadata --------------------------------------------------------------------
    def task_states(self, run_id: str) -> dict[tuple[str, int], str | None]:
        with psycopg.connect(pg_dsn(self.af_db)) as conn:
            rows = conn.execute(
                "SELECT task_id, map_index, state FROM task_instance "
                "WHERE dag_id = %s AND run_id = %s",
                (DAG_ID, run_id),
            ).fetchall()
        return {(t, m): s for t, m, s in rows}

    def run_state(self, run_id: str) -> str | None:
        with psycopg.connect(pg_dsn(self.af_db)) as conn:
            row = conn.execute(
                "SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", (DAG_ID, run_id)
            ).fetchone()
        return row[0] if row else None

    def latest_run_id(self) -> str | None:
        with psycopg.connect(pg_dsn(self.af_db)) as conn:
            row = conn.execute(
                "SELECT run_id FROM dag_run WHERE dag_id = %s ORDER BY id DESC LIMIT 1", (DAG_ID,)
            ).fetchone()
        return row[0] if row else None


# ----------------------------------------------------------------------------- browser
class Browser:
    """Selenium on Debian's headless Chromium, with bounded waits and named screenshots."""

    def __init__(self, base_url: str, profile: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        options = Options()
        options.binary_location = CHROMIUM
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(60)
        self.base = base_url

    def quit(self) -> None:
        self.driver.quit()

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.TAG_NAME, "body").text

    def wait_text(self, *needles: str, timeout: float = 30) -> str:
        def probe() -> str | None:
            text = self.text()
            return text if all(n in text for n in needles) else None

        try:
            return wait_for(f"page text {needles!r}", probe, timeout=timeout, every=1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.where()}") from None

    _FIND_JS = """
        const [css, text, href] = arguments;
        for (const el of document.querySelectorAll(css)) {
            if (text !== null && el.innerText.trim() !== text) continue;
            if (href !== null && !(el.getAttribute("href") || "").includes(href)) continue;
            const box = el.getBoundingClientRect();
            if (box.width > 0 && box.height > 0) return el;
        }
        return null;
    """

    def find(
        self, css: str, timeout: float = 30, text: str | None = None, href_part: str | None = None
    ):
        """The first visible element matching ``css`` (and text / href), looked up in one
        round trip so that a UI re-rendering every few seconds cannot make it stale."""
        what = (
            f"{css}"
            + (f" with text {text!r}" if text else "")
            + (f" linking to {href_part!r}" if href_part else "")
        )
        try:
            return wait_for(
                what,
                lambda: self.driver.execute_script(self._FIND_JS, css, text, href_part),
                timeout=timeout,
                every=0.5,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.where()}") from None

    def where(self) -> str:
        """Where the browser is and what it shows, for a failed wait (screenshot saved)."""
        FAILURES.mkdir(parents=True, exist_ok=True)
        shot = FAILURES / f"failure-{int(time.time() * 1000)}.png"
        try:
            self.driver.save_screenshot(str(shot))
            text = " | ".join(self.text().split("\n"))[:1500]
        except Exception as exc:  # noqa: BLE001 - a dead browser must not hide the timeout being reported; its error is shown instead
            text = f"(page unreadable: {exc!r})"
        return f"browser at {self.driver.current_url}; screenshot {shot}; page text: {text}"

    def follow(self, css: str, url_part: str, timeout: float = 60, **kwargs) -> None:
        """Click a link and wait until the browser is at a URL containing ``url_part``.

        The grid repaints every few seconds; a click that lands during a repaint can hit a
        node React is about to replace and go nowhere. Such a click is repeated (a fresh
        lookup each time) until the page changes or ``timeout`` passes.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.click(css, **kwargs)
            try:
                wait_for(
                    f"the browser to reach a URL with {url_part!r}",
                    lambda: url_part in self.driver.current_url,
                    timeout=10,
                    every=0.5,
                )
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"clicking {css} {kwargs} did not lead to {url_part!r}\n{self.where()}"
                    ) from None

    def click(self, css: str, **kwargs) -> None:
        from selenium.common.exceptions import (
            ElementClickInterceptedException,
            StaleElementReferenceException,
        )

        el = self.find(css, **kwargs)
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
        try:
            el.click()
        except (ElementClickInterceptedException, StaleElementReferenceException):
            # A tooltip left over from the grid's hover, or a re-render: click it directly.
            self.driver.execute_script("arguments[0].click();", self.find(css, **kwargs))

    def press(self, keys: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.driver).send_keys(keys).perform()

    def shot(self, name: str) -> Path:
        from selenium.webdriver.common.actions.action_builder import ActionBuilder

        # Park the pointer in a corner so that no tooltip covers the picture.
        actions = ActionBuilder(self.driver)
        actions.pointer_action.move_to_location(1, 1)
        actions.perform()
        time.sleep(0.5)
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def login(self, user: str, password: str) -> None:
        self.open("/")
        self.find("input[name=username]").send_keys(user)
        self.find("input[name=password]").send_keys(password)
        self.click("button[type=submit]")
        wait_for(
            "the Airflow home page after signing in",
            lambda: "/auth/login" not in self.driver.current_url and "Dags" in self.text(),
            timeout=60,
            every=1,
        )


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def stack(tmp_path_factory, keyring_file):
    for binary in (CHROMIUM, CHROMEDRIVER):
        assert Path(binary).exists(), f"{binary} missing: run scripts/install-browser.sh"
    root = tmp_path_factory.mktemp("ui")
    receiver = Receiver()
    st = AirflowStack(root, keyring_file, receiver.url)
    try:
        synth.generate(st.source, 300, seed=3)
        st.original_payments = plant_drift(st.source)
        st.config = trimmed_config(
            root / "config", {"subscribers": 1, "consents": 1, "payments": 2}
        )
        st.receiver = receiver
        st.start()
        yield st
    finally:
        st.stop()
        receiver.close()
        st.drop_databases()


@pytest.fixture(scope="module")
def browser(stack):
    b = Browser(stack.url, stack.root / "chromium-profile")
    try:
        b.login(USER, PASSWORD)
        yield b
    finally:
        b.quit()


RESULT: dict[str, str] = {}


# ----------------------------------------------------------------------------- tests
def test_plugin_module_is_cheap_to_import():
    """Airflow imports the plugin in every task process: no web app, data or DB libraries."""
    probe = (
        "import sys, json; import airflow.sdk; sys.path.insert(0, sys.argv[1]);"
        "import handover_plugin; handover_plugin.HandoverPlugin();"
        "print(json.dumps(sorted(m for m in ('fastapi', 'pandas', 'pyarrow', 'psycopg',"
        " 'great_expectations', 'handover_ui.app') if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(ROOT / "plugins")],
        env={**os.environ, "PYTHONPATH": str(ROOT / "include")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_audit_listener_never_fails_a_task_when_the_target_is_down(monkeypatch):
    from handover_ui import listener

    monkeypatch.setenv("HANDOVER_TARGET_DSN", "host=127.0.0.1 port=1 user=nobody dbname=none")
    ti = type(
        "TI",
        (),
        {
            "dag_id": DAG_ID,
            "task_id": "load",
            "map_index": 3,
            "run_id": "manual__x",
            "try_number": 2,
            "state": "up_for_retry",
        },
    )()
    started = time.monotonic()
    listener.audit_listener.on_task_instance_running(previous_state=None, task_instance=ti)
    listener.audit_listener.on_task_instance_failed(
        previous_state=None, task_instance=ti, error=ConnectionError("x")
    )
    assert time.monotonic() - started < 20
    assert listener.event_detail(ti, "up_for_retry", ConnectionError("secret row value")) == {
        "dag_id": DAG_ID,
        "task_id": "load",
        "map_index": 3,
        "run_id": "manual__x",
        "try_number": 2,
        "state": "up_for_retry",
        "error_type": "ConnectionError",
    }


def test_ledger_view_flags_a_stage_that_lost_rows():
    from handover_ui.ledger_view import build, render_ledger

    stages = [
        ("payments", "extract", 2, 100, 100, 0, 0),
        ("payments", "comply", 2, 100, 95, 0, 5),
        ("payments", "cleanse", 2, 95, 90, 5, 0),
        ("payments", "map", 2, 90, 90, 0, 0),
        ("payments", "load", 2, 60, 60, 0, 0),
    ]
    data = build(
        run={
            "run_id": "r1",
            "dag_id": DAG_ID,
            "system": "legacy_bss",
            "status": "running",
            "started_at": None,
            "finished_at": None,
        },
        stages=stages,
        recon=[],
        gates=[],
    )
    status = {s["stage"]: s["status"] for s in data["tables"][0]["stages"]}

    assert status == {
        "extract": "balanced",
        "comply": "balanced",
        "cleanse": "balanced",
        "map": "balanced",
        "load": "NOT balanced",
    }
    html = render_ledger(data, "r1")
    assert "0 of 1 tables balanced" in html and "<script" not in html
    # While a stage's partitions are still running it is incomplete, not unbalanced.
    stages[-1] = ("payments", "load", 1, 45, 45, 0, 0)
    data = build(run=data["run"], stages=stages, recon=[], gates=[])
    assert data["tables"][0]["stages"][-1]["status"] == "incomplete"


def test_oncall_sees_the_red_gate_fixes_the_export_and_clears_it_in_the_ui(stack, browser):
    b = browser
    # Trigger the migration from the UI on the drifted export.
    b.open(f"/dags/{DAG_ID}")
    b.click("button", text="Trigger")
    system = b.find("input#element_system")
    system.clear()
    system.send_keys(str(stack.config))
    b.find("input#element_source_dir").send_keys(str(stack.source))
    b.click("[role=dialog] button", text="Trigger")
    run_id = wait_for("the new DAG run", stack.latest_run_id, timeout=30, every=1)
    RESULT["run_id"] = run_id
    run_path = f"/dags/{DAG_ID}/runs/{run_id}"

    # The intake gate fails for both payments partitions, and the run fails.
    b.open("/handover/")
    wait_for(
        "the run to fail at the intake gate",
        lambda: stack.run_state(run_id) == "failed",
        timeout=300,
        every=1,
    )
    states = stack.task_states(run_id)
    failed = sorted(k for k, s in states.items() if s == "failed")
    assert [t for t, _ in failed] == ["validate_intake", "validate_intake"], (
        states,
        stack.log_tail("scheduler"),
    )

    # In the grid: the red task.
    b.open(f"/dags/{DAG_ID}")
    mapped = f"/runs/{run_id}/tasks/validate_intake/mapped"
    b.find("a", href_part=mapped)
    b.wait_text("validate_intake", "Failed Task")
    b.shot("grid-failed")

    # Its log says what failed, where, and points at the validation page, in one line.
    b.follow("a", mapped, href_part=mapped)
    b.follow("a", "/tasks/validate_intake/mapped/", text="payments/p00", timeout=90)
    log_text = b.wait_text("intake gate failed for payments partition p00", timeout=60)
    line = next(
        ln for ln in log_text.splitlines() if "intake gate failed for payments partition p00" in ln
    )
    assert "expect_table_columns_to_match_set" in line and DRIFT_COLUMN in line
    assert "/docs/validations/intake/payments/" in line
    # the viewer draws the UI address as a link of its own (text of its own)
    assert re.search(r"\(UI:\s*" + re.escape(b.base) + "/handover/runs/", log_text), line
    # a known failure: its one line, no library stack under it
    assert not re.search(r"handover/(gates|pipeline)\.py\W+line", log_text), log_text[-3000:]
    # ... and the page it names is a link the log viewer made clickable
    b.find("a", href_part="/handover/runs/")
    b.press("w")  # the log viewer's "wrap lines" key: the whole line in the picture
    b.shot("task-log")

    # The gate's "Validation page" link opens its page in the run's Data Docs.
    b.click("button, [role=tab], a", text="Details")
    b.click("a", text="Validation page")
    page = b.wait_text("intake.payments", "Failed", timeout=30)
    assert "/handover/runs/" in b.driver.current_url and "Expectation Validation Result" in page
    b.shot("validation-page")

    # The plugin's ledger tells the grid's truth: FAILED first, the task, its one line, a
    # link to its log, the runbook's next step, and the tables the run never reached.
    from handover.storage.lake import safe_run_id

    b.open(f"/handover/ledger?run_id={urllib.parse.quote(run_id)}")
    ledger_page = b.wait_text("Run FAILED at validate_intake", "Next:", timeout=30)
    head = ledger_page.split("Per table")[0]
    assert "intake gate failed for payments" in head and "running" not in head, head
    assert "not reached" in ledger_page
    b.find("a#failed-log", href_part=f"/runs/{urllib.parse.quote(run_id)}/tasks/validate_intake")
    b.shot("ledger-failed")
    # ... and so does the failed run's report, and its Data Docs index lists the failure
    b.open(f"/handover/runs/{safe_run_id(run_id)}/reports/report.html")
    b.wait_text("This run FAILED at validate_intake", "intake gate failed for payments", timeout=30)
    b.shot("report-failed")
    b.open(f"/handover/runs/{safe_run_id(run_id)}/docs/index.html")
    b.wait_text("payments", timeout=30)

    # Exactly one notification per failed task instance, one JSON line each.
    wait_for(
        "two notifications", lambda: len(stack.receiver.bodies) >= len(failed), timeout=30, every=1
    )
    notes = [n for n in map(json.loads, stack.receiver.bodies) if n["dag"] == DAG_ID]
    assert sorted((n["task"], n["map_index"]) for n in notes) == failed
    assert all(n["run"] == run_id for n in notes)
    assert all(
        n["message"].startswith("GateFailed: intake gate failed for payments partition")
        for n in notes
    )

    # On-call fixes the export, then clears the table's extract with its downstream.
    (stack.source / "payments.csv").write_text(stack.original_payments)
    reseal(stack.source)  # re-exported: new file, new manifest
    b.open(f"{run_path}/tasks/extract_table/mapped")
    b.follow("a", "/tasks/extract_table/mapped/", text="payments", timeout=30)
    b.click("button[aria-label='Press shift+c to clear']")
    b.wait_text("Clear Task Instance", "Affected Tasks")
    b.click("[role=dialog] button", text="Confirm")
    wait_for(
        "the clear to reach the database",
        lambda: all(stack.task_states(run_id).get(k) != "failed" for k in failed),
        timeout=30,
        every=1,
    )
    b.open("/handover/")  # a static page: the grid would poll and repaint while we wait
    wait_for(
        "the cleared run to succeed",
        lambda: stack.run_state(run_id) == "success",
        timeout=420,
        every=1,
    )
    states = stack.task_states(run_id)
    assert all(s == "success" for s in states.values()), states

    b.open(f"/dags/{DAG_ID}")
    b.find("a", href_part=f"/runs/{run_id}/tasks/publish")
    b.wait_text("publish")
    time.sleep(2)  # let the grid's last poll paint the new states
    b.shot("grid-cleared")

    # No new notification: nothing failed after the clear.
    assert len(stack.receiver.bodies) == len(failed)

    # The ledger balances, in the database ...
    with psycopg.connect(pg_dsn(stack.target_db)) as conn:
        recon = conn.execute(
            "SELECT table_name, source_rows, loaded + merged + quarantined + excluded, balanced "
            "FROM handover_meta.reconciliation WHERE run_id = %s",
            (run_id,),
        ).fetchall()
        status = conn.execute(
            "SELECT status FROM handover_meta.run WHERE run_id = %s", (run_id,)
        ).fetchone()[0]
        audit = conn.execute(
            "SELECT action, detail FROM handover_meta.audit_log WHERE run_id = %s "
            "AND actor = 'airflow'",
            (run_id,),
        ).fetchall()
        from handover.db.ledger import verify_audit_chain

        intact, _ = verify_audit_chain(conn)
    assert status == "succeeded"
    assert sorted(t for t, *_ in recon) == ["consents", "payments", "subscribers"]
    assert all(n == accounted and ok for _, n, accounted, ok in recon), recon

    # ... and the audit trail holds every start and end, failures included, chain intact.
    assert intact
    events = {(a, d["task_id"], d["map_index"], d["try_number"]) for a, d in audit}
    for _, map_index in failed:
        assert ("task_failed", "validate_intake", map_index, 1) in events
        assert ("task_success", "validate_intake", map_index, 2) in events
    assert {"task_running", "task_success", "task_failed"} <= {a for a, *_ in events}
    assert not any(
        set(d) - {"dag_id", "task_id", "map_index", "run_id", "try_number", "state", "error_type"}
        for _, d in audit
    )

    # ... and in the plugin's ledger view, a tab of the DAG run.
    b.open(f"{run_path}/plugin/handover-run-ledger")
    frame = b.find("iframe")
    b.driver.switch_to.frame(frame)
    try:
        ledger = b.wait_text("Migration ledger", "3 of 3 tables balanced", timeout=30)
        assert "NOT balanced" not in ledger
    finally:
        b.driver.switch_to.default_content()
    b.shot("ledger-view")


def test_run_report_and_data_docs_open_from_the_ledger_view(stack, browser):
    run_id = RESULT.get("run_id")
    if not run_id:
        pytest.skip("needs the run of the previous test")
    b = browser
    query = urllib.parse.urlencode({"dag_id": DAG_ID, "run_id": run_id})
    b.open(f"/handover/ledger?{query}")
    b.wait_text("3 of 3 tables balanced")

    # The reconciliation report: every table balanced, funnel and gates listed.
    b.click("a", text="Reconciliation report")
    report = b.wait_text("Migration run", "Reconciliation", timeout=30)
    assert report.count("✔ balanced") == 3, report
    assert "NOT balanced" not in report
    for heading in ("Quarantine by reason", "Exclusions by policy rule", "Gates"):
        assert heading in report
    assert not re.search(r"\b\d{17}[\dX]\b", report), "a resident ID number leaked"
    b.shot("report-page")

    # The run's Data Docs index lists every gate's validations, the failed tries included.
    # (GX draws its own table with scripts; the plugin adds a plain list that needs none.)
    b.open(f"/handover/ledger?{query}")
    b.click("a", text="Validation docs")
    docs = b.wait_text("Validations of this run", timeout=30)
    for row in (
        "intake.payments p00 Failed",
        "intake.payments p00 Success",
        "intake.payments p01 Failed",
        "compliance.payments p01 Success",
        "quality.subscribers p00 Success",
        "contract.consents p00 Success",
        "reconciliation.payments all Success",
    ):
        assert row in docs, row
    b.driver.execute_script("arguments[0].scrollIntoView();", b.find("#handover-plain-index"))
    b.shot("data-docs-index")
    b.open(f"/handover/ledger?{query}")
    b.click("a", href_part="/docs/validations/quality/payments/")
    page = b.wait_text("Expectation Validation Result", "quality.payments", timeout=30)
    assert "Succeeded" in page
    assert not re.search(r"\b\d{17}[\dX]\b", page), "a resident ID number leaked"

    # It has its scripts and styles: GX's CDN addresses point at pinned copies served from
    # this origin (include/handover/gates/docs_assets.py, docs-assets/): the site's own vendor/
    # once the run has published it, else the plugin's.
    loaded = b.driver.execute_script(
        "return {jquery: typeof window.jQuery, vega: typeof window.vega,"
        " table: typeof (window.jQuery && window.jQuery.fn.bootstrapTable),"
        " css: [...document.styleSheets].filter(s => s.href && s.href.includes("
        "'/vendor/bootstrap/dist/css/') && s.href.startsWith(location.origin)"
        " && s.cssRules.length > 0).length};"
    )
    assert loaded == {"jquery": "function", "vega": "object", "table": "function", "css": 1}, loaded
    # The page is served under the Airflow UI's origin: it may load nothing from elsewhere.
    # GX's CDN scripts are refused by the browser (Content-Security-Policy), not merely
    # unreachable from this machine, and the page stays readable without them.
    csp = b.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(location.href).then(r => done(r.headers.get('content-security-policy')));"
    )
    assert csp and "default-src 'self'" in csp and "https:" not in csp, csp
    blocked = b.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "document.addEventListener('securitypolicyviolation', e => done(e.blockedURI));"
        "setTimeout(() => done(null), 5000);"
        "const s = document.createElement('script');"
        "s.src = 'https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js';"
        "document.head.appendChild(s);"
    )
    assert blocked and blocked.startswith("https://unpkg.com/"), blocked

    # Pages are behind Airflow's login: without the session cookie, no ledger.
    req = urllib.request.Request(f"{stack.url}/handover/ledger?{query}")
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(req, timeout=10)
    assert denied.value.code in (401, 403)
