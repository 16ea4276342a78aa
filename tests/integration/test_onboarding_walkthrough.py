"""docs/onboarding.md's walk-through, run as written.

The walk-through onboards telco_c, an export nobody has seen, with shell commands a
newcomer types. Every block of it marked `<!-- walkthrough -->` (a fenced bash block right
after the marker line) is run here, unchanged and in order, in ONE `bash -euo pipefail`
process from the repository root, so a command the page gives that no longer works fails
this test. scripts/env.sh is pointed at real test services instead of the embedded
PostgreSQL: HANDOVER_EXTERNAL=1, a fresh target database, a lake and a state folder in
tmp, and no keyring in the environment (env.sh makes its own under $HANDOVER_STATE).

The scaffolding step writes only suites that are missing; telco_c's ship, so the run
writes nothing into the repository.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess

import psycopg
import pytest

from handover.config.loader import load_config
from tests.conftest import ROOT, create_database, drop_database, pg_dsn

pytestmark = pytest.mark.integration

DOC = ROOT / "docs" / "onboarding.md"
SYSTEM = "telco_c"
MARKER = "<!-- walkthrough -->"
BALANCE = "in = loaded + merged + quarantined + excluded"
SEPARATOR = "::walkthrough block {}::"


def walkthrough_blocks(text: str) -> list[str]:
    """The bodies of the fenced bash blocks immediately preceded by the marker line."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        assert i + 1 < len(lines) and lines[i + 1].strip() == "```bash", (
            f"docs/onboarding.md line {i + 1}: {MARKER} must be followed by a ```bash line"
        )
        body = []
        for inner in lines[i + 2 :]:
            if inner.strip() == "```":
                break
            body.append(inner)
        else:
            raise AssertionError(f"docs/onboarding.md line {i + 2}: unclosed ```bash block")
        blocks.append("\n".join(body))
    return blocks


def section(text: str, heading: str) -> str:
    """The text of the `## heading...` section, up to the next `## ` heading."""
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def code_of(text: str) -> list[str]:
    """Fenced blocks and inline code spans: where commands are written."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    rest = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    return fenced + re.findall(r"`([^`\n]+)`", rest)


def split_output(out: str, n: int) -> list[str]:
    """A stream cut at the separators the test printed before each block."""
    parts = re.split(r"^::walkthrough block (\d+)::$", out, flags=re.M)
    by = {int(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    return [by.get(i, "") for i in range(n)]


@pytest.fixture(scope="module")
def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def walkthrough(doc_text, tmp_path_factory):
    blocks = walkthrough_blocks(doc_text)
    root = tmp_path_factory.mktemp("walkthrough")
    state = root / "state"
    script = (
        "\n".join(
            f"echo '{SEPARATOR.format(i)}'\necho '{SEPARATOR.format(i)}' >&2\n{body}"
            for i, body in enumerate(blocks)
        )
        + "\n"
    )
    (root / "walkthrough.sh").write_text(script, encoding="utf-8")
    target = create_database("handover_walkthrough")
    # Nothing of the caller's Airflow or handover settings (a shell that sourced env.sh, the
    # session keyring of tests/conftest.py): only what the walk-through's env.sh is given.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HANDOVER"))}
    env.update(
        {
            "HANDOVER_EXTERNAL": "1",
            "HANDOVER_STATE": str(state),
            "HANDOVER_TARGET_DSN": pg_dsn(target),
            "HANDOVER_LAKE_URL": f"file://{root / 'lake'}",
        }
    )
    try:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", str(root / "walkthrough.sh")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        yield {
            "blocks": blocks,
            "proc": proc,
            "state": state,
            "dsn": pg_dsn(target),
            "stdout": split_output(proc.stdout, len(blocks)),
            "stderr": split_output(proc.stderr, len(blocks)),
        }
    finally:
        drop_database(target)


def _block_with(run: dict, command: str) -> list[int]:
    found = [i for i, body in enumerate(run["blocks"]) if command in body]
    assert found, f"no walk-through block runs {command!r}"
    return found


def test_the_walkthrough_has_its_steps(doc_text):
    blocks = walkthrough_blocks(doc_text)
    joined = "\n".join(blocks)

    assert len(blocks) >= 6, blocks
    assert blocks[0].strip().startswith("source scripts/env.sh")
    for command in (
        "python -m handover_synth.telco_c",
        "handover manifest",
        "handover check",
        "scripts/scaffold_suites.py telco_c",
        "python -m handover.flows.runner",
        "handover summary",
    ):
        assert command in joined, command


def test_every_command_of_the_walkthrough_succeeds(walkthrough):
    proc = walkthrough["proc"]
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])


def test_env_sh_made_its_own_keyring(walkthrough):
    ring = json.loads((walkthrough["state"] / "keys.json").read_text())
    assert ring["keys"] and ring["active_key_id"] in ring["keys"]


def test_the_receiver_wrote_the_manifest(walkthrough):
    manifests = list((walkthrough["state"]).rglob("export_manifest.json"))
    assert len(manifests) == 1, manifests
    manifest = json.loads(manifests[0].read_text(encoding="utf-8"))

    assert manifest["made_by"] == "receiver"
    assert manifest["exported_at"] == "2026-11-01 00:00:00"  # what the dictionary states
    assert set(manifest["tables"]) == set(load_config(SYSTEM).tables)


def test_check_prints_no_problem(walkthrough):
    for i in _block_with(walkthrough, "handover check"):
        problems = [line for line in walkthrough["stdout"][i].splitlines() if line.strip()]
        assert problems == [], problems
        assert f"check passed for {SYSTEM}" in walkthrough["stderr"][i]


def test_summary_balances_every_table(walkthrough):
    (i,) = _block_with(walkthrough, "handover summary")
    out = walkthrough["stdout"][i]
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    tables = load_config(SYSTEM).tables

    assert len(tables) == 7
    assert re.search(r"^run \S+: succeeded$", out, flags=re.M), out
    for table in tables:
        assert table in lines, (table, out)
        assert lines[table].rstrip().endswith(BALANCE), lines[table]
    assert "report:" in out and "validation docs:" in out


def test_the_books_balance_with_merges(walkthrough):
    (i,) = _block_with(walkthrough, "handover summary")
    run_id = re.search(r"^run (\S+): ", walkthrough["stdout"][i], flags=re.M).group(1)
    with psycopg.connect(walkthrough["dsn"]) as conn:
        rows = conn.execute(
            "SELECT table_name, source_rows, loaded, merged, quarantined, excluded, balanced "
            "FROM handover_meta.reconciliation WHERE run_id = %s",
            (run_id,),
        ).fetchall()
    recon = {r[0]: r[1:] for r in rows}

    assert set(recon) == set(load_config(SYSTEM).tables)
    for table, (n, loaded, merged, quarantined, excluded, balanced) in recon.items():
        assert balanced and n == loaded + merged + quarantined + excluded, (table, recon[table])
    assert recon["khzl"][2] > 0  # the same person twice: merged into the survivor


def _cli_subcommand_exists(name: str) -> bool:
    from handover.ops import cli

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            cli.main([name, "--help"])
        except SystemExit as exc:
            return exc.code == 0
    return False


@pytest.mark.parametrize("part", ["Cookbook", "Walk-through", "whole page"])
def test_every_command_the_page_names_exists(doc_text, part):
    """Cheap: every `handover <sub>`, `python -m <module>` and `python scripts/<x>.py` the
    page writes in code is a real subcommand, module or script."""
    text = doc_text if part == "whole page" else section(doc_text, part)
    subs: set[str] = set()
    modules: set[str] = set()
    scripts: set[str] = set()
    for code in code_of(text):  # each block or span on its own: a command ends with it
        subs |= set(re.findall(r"(?:^|[\s/(])handover[ \t]+([a-z][a-z-]*)", code, flags=re.M))
        subs |= set(re.findall(r"-m[ \t]+handover\.cli[ \t]+([a-z][a-z-]*)", code))
        modules |= set(re.findall(r"python[ \t]+-m[ \t]+([A-Za-z_][\w.]*)", code))
        scripts |= set(re.findall(r"python[ \t]+(scripts/[\w.-]+\.py)", code))

    if part == "Cookbook":
        assert "manifest" in subs
    assert subs or modules or scripts, f"no command found in {part}"
    assert [s for s in sorted(subs) if not _cli_subcommand_exists(s)] == []
    assert [m for m in sorted(modules) if importlib.util.find_spec(m) is None] == []
    assert [s for s in sorted(scripts) if not (ROOT / s).is_file()] == []


def test_the_walkthrough_names_real_files(doc_text):
    """The excerpts of telco_c's config quote files that exist."""
    for name in ("catalog", "policy", "cleansing", "mapping"):
        assert (ROOT / "include" / "config" / SYSTEM / f"{name}.yaml").is_file()
    assert "include/config/telco_c/" in section(doc_text, "Walk-through")
