"""Broken configuration, one kind per row: one line naming file, line and field; target untouched.

Each case edits a private copy of a shipped source system (legacy_bss, or telco_b where
the case is about what only telco_b uses: source blocks, new transforms), then checks
that load_config's ConfigError names that file, that line and the dotted field, with the
fragment that says what is wrong (and the nearest valid name where there is one), and
that plan_run raises the same error before it touches the target database. (A YAML syntax
error names file and line but no field; tests/unit/test_config.py covers it.)
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from handover.config.loader import CONFIG_ROOT, ConfigError, load_config
from handover.flows import migration as pipeline
from tests.conftest import create_database, drop_database, pg_dsn


@dataclass(frozen=True)
class Case:
    id: str
    file: str
    old: str
    new: str
    field: str  # the dotted field the message must name
    says: tuple[str, ...]  # fragments the message must contain
    system: str = "legacy_bss"
    line_of: str | None = None  # the message's line is where this text is (default: the edit)


CASES = [
    # -- mapping.yaml ----------------------------------------------------------------------
    Case(
        "unknown-transform",
        "mapping.yaml",
        "granted_at: {from: 授权时间, parse_date:",
        "granted_at: {from: 授权时间, parse_dat:",
        "tables.cust_consent.fields.granted_at.parse_dat",
        ("unknown field 'parse_dat'", "did you mean 'parse_date'", "transforms are from"),
        system="telco_b",
    ),
    Case(
        "unknown-cast-type",
        "mapping.yaml",
        "{from: up_bytes, cast: int}",
        "{from: up_bytes, cast: integer}",
        "tables.data_cdr.fields.bytes_up.cast",
        ("'integer' is not one of",),
        system="telco_b",
    ),
    Case(
        "concat-column-not-catalogued",
        "mapping.yaml",
        "columns: [姓, 名]",
        "columns: [姓氏, 名]",
        "tables.cust_profile.fields.full_name.concat.columns.0",
        ("column '姓氏' is not in catalog table cust_profile", "did you mean '姓'"),
        system="telco_b",
    ),
    Case(
        "from-and-concat-together",
        "mapping.yaml",
        "full_name: {concat:",
        "full_name: {from: 姓, concat:",
        "tables.cust_profile.fields.full_name.concat",
        ("use either 'from'",),
        system="telco_b",
    ),
    Case(
        "split-part-out-of-range",
        "mapping.yaml",
        'split: {separator: "/", part: 1, parts: 2}',
        'split: {separator: "/", part: 2, parts: 2}',
        "tables.cust_profile.fields.address.split.part",
        ("part 2 does not exist",),
        system="telco_b",
    ),
    Case(
        "parse-date-unknown-zone",
        "mapping.yaml",
        '"epoch:Asia/Shanghai"}}',
        '"epoch:Asia/Shanghia"}}',
        "tables.cust_consent.fields.granted_at.parse_date.format",
        ("unknown time zone 'Asia/Shanghia'",),
        system="telco_b",
    ),
    Case(
        "unknown-target-table",
        "mapping.yaml",
        "    target: customer\n",
        "    target: custmer\n",
        "tables.subscribers.target",
        ("target table 'crm.custmer' is not in target.sql", "did you mean 'customer'"),
    ),
    Case(
        "unknown-target-field",
        "mapping.yaml",
        "      full_name: {from: name}",
        "      ful_name: {from: name}",
        "tables.subscribers.fields.ful_name",
        ("'ful_name' is not a column of crm.customer", "did you mean 'full_name'"),
    ),
    Case(
        "not-null-target-unmapped",
        "mapping.yaml",
        "      opened_on: {from: open_date}\n",
        "",
        "tables.subscribers.fields",
        ("crm.customer.opened_on is NOT NULL but no field produces it",),
        line_of="    fields:\n      customer_id: {from: cust_id}\n      full_name",
    ),
    Case(
        "key-not-a-mapped-field",
        "mapping.yaml",
        "    key: customer_id\n",
        "    key: customer_idd\n",
        "tables.subscribers.key",
        ("'customer_idd' is not a mapped field", "did you mean 'customer_id'"),
    ),
    Case(
        "mask-on-non-identifier",
        "mapping.yaml",
        "      address: {from: address}",
        "      address: {from: address, protect: [mask]}",
        "tables.subscribers.fields.address.protect",
        ("mask needs a catalogued pii type", "'address'"),
    ),
    Case(
        "code-without-lookup",
        "mapping.yaml",
        '"2": suspended, "3": closed}',
        '"2": suspended}',
        "tables.subscribers.fields.status.lookup",
        ("code '3' allowed by cleansing.yaml codes.status has no lookup entry",),
    ),
    Case(
        "duplicate-field",
        "mapping.yaml",
        "      city: {from: city}\n",
        "      city: {from: city}\n      city: {from: address}\n",
        "tables.subscribers.fields.city",
        ("duplicate key 'city'",),
        line_of="      city: {from: address}",
    ),
    # -- catalog.yaml ----------------------------------------------------------------------
    Case(
        "unknown-encoding",
        "catalog.yaml",
        "file: cust_profile.txt, encoding: gbk,",
        "file: cust_profile.txt, encoding: gb2312,",
        "tables.cust_profile.source.encoding",
        ("'gb2312' is not one of",),
        system="telco_b",
    ),
    Case(
        "csv-option-on-parquet",
        "catalog.yaml",
        "{format: parquet, file: voice_cdr.parquet}",
        '{format: parquet, file: voice_cdr.parquet, delimiter: ","}',
        "tables.voice_cdr.source.delimiter",
        ("applies to csv, not to parquet",),
        system="telco_b",
    ),
    Case(
        "sql-without-connection",
        "catalog.yaml",
        "source: {format: sql, conn_id: telco_b_billing, table: payment_log,",
        "source: {format: sql, table: payment_log,",
        "tables.payment_log.source",
        ("format sql needs conn_id",),
        system="telco_b",
    ),
    Case(
        "unknown-source-option",
        "catalog.yaml",
        "{format: parquet, file: voice_cdr.parquet}",
        "{formt: parquet, file: voice_cdr.parquet}",
        "tables.voice_cdr.source.formt",
        ("unknown field 'formt'", "did you mean 'format'"),
        system="telco_b",
    ),
    Case(
        "event-time-not-a-column",
        "catalog.yaml",
        "    event_time: paid_at\n",
        "    event_time: paid_on\n",
        "tables.payments.event_time",
        ("'paid_on' is not a column of payments", "did you mean 'paid_at'"),
    ),
    Case(
        "file-and-files-together",
        "catalog.yaml",
        "{format: parquet, file: voice_cdr.parquet}",
        '{format: parquet, file: voice_cdr.parquet, files: "voice_cdr_*.parquet"}',
        "tables.voice_cdr.source.files",
        ("use either file (one file) or files",),
        system="telco_b",
    ),
    Case(
        "files-outside-the-export",
        "catalog.yaml",
        "{format: parquet, file: voice_cdr.parquet}",
        '{format: parquet, files: "../old/voice_cdr_*.parquet"}',
        "tables.voice_cdr.source.files",
        ("must be a glob relative to the export folder",),
        system="telco_b",
    ),
    Case(
        "files-on-sql",
        "catalog.yaml",
        "source: {format: sql, conn_id: telco_b_billing, table: payment_log,",
        'source: {format: sql, files: "pay*.csv", conn_id: telco_b_billing, table: payment_log,',
        "tables.payment_log.source.files",
        ("'files' applies to file sources, not to format sql",),
        system="telco_b",
    ),
    Case(
        "unknown-sensitivity-level",
        "catalog.yaml",
        "name: {level: L3, pii: name}",
        "name: {level: L9, pii: name}",
        "tables.subscribers.columns.name.level",
        ("'L9' is not one of",),
    ),
    # -- policy.yaml -----------------------------------------------------------------------
    Case(
        "objection-column-not-catalogued",
        "policy.yaml",
        "  column: transfer_objection\n",
        "  column: transfer_objecton\n",
        "objection.column",
        (
            "column 'transfer_objecton' is not in catalog table subscribers",
            "did you mean 'transfer_objection'",
        ),
    ),
    Case(
        "unknown-lawful-basis",
        "policy.yaml",
        "    lawful_basis: contract\n    retention_months: 36",
        "    lawful_basis: contrakt\n    retention_months: 36",
        "categories.consumption.lawful_basis",
        ("'contrakt' is not one of", "did you mean 'contract'"),
    ),
    Case(
        "separate-consent-without-purpose",
        "policy.yaml",
        "    consent_purpose: behavioural\n",
        "",
        "categories.behavioural.lawful_basis",
        ("separate_consent needs consent_purpose",),
        line_of="lawful_basis: separate_consent",
    ),
    Case(
        "duplicate-rule",
        "policy.yaml",
        "  - id: NO_CONSENT\n",
        "  - id: RETENTION_EXPIRED\n",
        "rules.2.id",
        ("rule 'RETENTION_EXPIRED' is listed twice",),
        line_of='  - id: RETENTION_EXPIRED\n    description: "category needs',
    ),
    Case(
        "consent-table-unknown",
        "policy.yaml",
        "  table: consents\n",
        "  table: consent\n",
        "consent.table",
        ("table 'consent' is not in catalog.yaml", "did you mean 'consents'"),
    ),
    # -- cleansing.yaml --------------------------------------------------------------------
    Case(
        "unknown-date-directive",
        "cleansing.yaml",
        'dates: {paid_at: "%Y-%m-%d %H:%M:%S"}',
        'dates: {paid_at: "%Y-%m-%d %H:%M:%Q"}',
        "tables.payments.dates.paid_at",
        ("unknown date directive '%Q'",),
    ),
    Case(
        "non-negative-not-numeric",
        "cleansing.yaml",
        "    integers: [amount_fen]\n",
        "",
        "tables.payments.non_negative.0",
        ("must also be listed under integers, decimals or money",),
        line_of="    non_negative: [amount_fen]",
    ),
    Case(
        "epoch-event-time",
        "cleansing.yaml",
        'dates: {begin_time: "%Y-%m-%d %H:%M:%S.%f"}',
        'dates: {begin_time: "epoch"}',
        "tables.voice_cdr.dates.begin_time",
        ("cannot use 'epoch'",),
        system="telco_b",
    ),
    Case(
        "unknown-rule",
        "cleansing.yaml",
        "    mandatory: [payment_id,",
        "    mandatroy: [payment_id,",
        "tables.payments.mandatroy",
        ("unknown field 'mandatroy'", "did you mean 'mandatory'"),
    ),
    Case(
        "dedupe-order-without-format",
        "cleansing.yaml",
        "dedupe: {key: id_number, order_by: updated_at, keep: newest, action: merge}",
        "dedupe: {key: id_number, order_by: city, keep: newest, action: merge}",
        "tables.subscribers.dedupe.order_by",
        ("'city' must have a format under dates",),
    ),
    Case(
        "not-before-not-a-date",
        "cleansing.yaml",
        'not_before: {open_date: "1980-01-01"}',
        'not_before: {open_date: "1980-02-30"}',
        "tables.subscribers.not_before.open_date",
        ("'1980-02-30' is not a date", "'YYYY-MM-DD'"),
    ),
    Case(
        "not-before-a-time",
        "cleansing.yaml",
        'not_before: {open_date: "1980-01-01"}',
        "not_before: {open_date: 1980-01-01 08:00:00}",
        "tables.subscribers.not_before.open_date",
        ("is not a date",),
    ),
    Case(
        "not-before-column-not-catalogued",
        "cleansing.yaml",
        'not_before: {open_date: "1980-01-01"}',
        'not_before: {open_dat: "1980-01-01"}',
        "tables.subscribers.not_before.open_dat",
        ("column 'open_dat' is not in catalog table subscribers", "did you mean 'open_date'"),
    ),
    Case(
        "not-before-without-format",
        "cleansing.yaml",
        'not_before: {开户日期: "1980-01-01"}',
        'not_before: {状态: "1980-01-01"}',
        "tables.cust_profile.not_before.状态",
        ("'状态' needs a format under dates",),
        system="telco_b",
    ),
    Case(
        "too-many-decimals",
        "cleansing.yaml",
        "decimals: {amount: 2}",
        "decimals: {amount: 9}",
        "tables.payment_log.decimals.amount",
        ("is greater than the maximum of 6",),
        system="telco_b",
    ),
]


def apply(case: Case, root: Path) -> tuple[Path, Path, int]:
    """Copy the system, edit one file; return the folder, the file and the expected line."""
    folder = root / f"{case.system}_{case.id}"
    shutil.copytree(CONFIG_ROOT / case.system, folder)
    path = folder / case.file
    text = path.read_text(encoding="utf-8")
    assert text.count(case.old) == 1, f"{case.old!r} must occur once in {case.file}"
    edited = text.replace(case.old, case.new)
    path.write_text(edited, encoding="utf-8")
    anchor = case.line_of if case.line_of is not None else (case.new or case.old)
    source = edited if case.line_of is not None or case.new else text
    assert source.count(anchor) == 1, f"{anchor!r} must occur once in the edited {case.file}"
    return folder, path, source[: source.index(anchor)].count("\n") + 1


@pytest.fixture(scope="module")
def untouched_target():
    """An empty database as the target: no case may create anything in it."""
    name = create_database("handover_cfgerr")
    mp = pytest.MonkeyPatch()
    mp.setenv("HANDOVER_TARGET_DSN", pg_dsn(name))
    mp.delenv("AIRFLOW_CONN_HANDOVER_TARGET", raising=False)
    yield name
    mp.undo()
    drop_database(name)


def test_there_are_enough_kinds_of_broken_file():
    kinds = {c.id for c in CASES}
    assert len(kinds) == len(CASES) >= 15
    assert all(c.field for c in CASES)
    assert {c.file for c in CASES} == {
        "mapping.yaml",
        "catalog.yaml",
        "policy.yaml",
        "cleansing.yaml",
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_broken_file_names_file_line_field_and_stops_before_the_target(
    case, tmp_path, untouched_target
):
    folder, path, line = apply(case, tmp_path)

    with pytest.raises(ConfigError) as info:
        load_config(folder)
    message = str(info.value)

    assert "\n" not in message, "a config error is one line"
    assert message.startswith(f"{path} line {line}: "), message
    assert f": {case.field}: " in message, message
    for fragment in case.says:
        assert fragment in message, message

    with pytest.raises(ConfigError) as planned:
        pipeline.plan_run(
            run_id=f"bad_{case.id}", dag_id="t", system=str(folder), source_dir=str(tmp_path)
        )
    assert str(planned.value) == message
    with psycopg.connect(pg_dsn(untouched_target)) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE "
            "table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchone()[0]
    assert tables == 0, "plan_run touched the target"


def test_check_names_every_config_problem_in_one_run(tmp_path):
    """Five different mistakes in three files: one `handover check` names them all (a
    newcomer fixes them in one round, not five), each with file, line and field; a run
    fails on the first with a count of the rest."""
    import shutil

    from handover.config.loader import CONFIG_ROOT, ConfigError, load_config
    from handover.ops.check import run_check

    folder = tmp_path / "legacy_bss"
    shutil.copytree(CONFIG_ROOT / "legacy_bss", folder)
    edits = {
        "catalog.yaml": [("partitions: ", "partitionz: ")],
        "cleansing.yaml": [
            ("    integers: [amount_fen]\n", "    integers: [amount_fenn]\n"),
            ("codes: {channel:", "codez: {channel:"),
        ],
        "policy.yaml": [
            ("retention_months: 36", "retention_months: -3"),
            ("lawful_basis: contract", "lawful_basis: contrakt"),
        ],
    }
    for name, subs in edits.items():
        text = (folder / name).read_text()
        for old, new in subs:
            assert old in text, (name, old)
            text = text.replace(old, new, 1)
        (folder / name).write_text(text)

    res = run_check(str(folder), tmp_path / "no-export")
    joined = "\n".join(res.problems)
    assert len(res.problems) >= 5, joined
    for needle in ("partitionz", "codez", "retention_months", "contrakt", "amount_fenn"):
        assert needle in joined, needle
    assert all(re.search(r"\.yaml( line \d+)?: ", p) for p in res.problems), joined
    with pytest.raises(ConfigError, match=r"and \d+ more problems"):
        load_config(folder)


def test_check_names_the_export_folders_problems_and_what_each_rule_would_quarantine(tmp_path):
    """Before any run: an export without a manifest, a non-data file nobody declared,
    and a rule that would quarantine most of a table are each a problem line; a
    declared file (catalog `ignore:`) is not, and the rule shares are printed as notes."""
    import shutil

    import pandas as pd

    from handover.config.loader import CONFIG_ROOT
    from handover.ops.check import run_check
    from handover_synth import legacy_bss as synth

    src = tmp_path / "export"
    synth.generate(src, 60, seed=3)
    (src / "export_manifest.json").unlink()
    (src / "数据字典.md").write_text("khbh 客户编号\n", encoding="utf-8")
    pays = pd.read_csv(src / "payments.csv", dtype=str, keep_default_na=False)
    pays["amount_fen"] = "¥" + pays["amount_fen"]  # a form no `integers` rule reads
    pays.to_csv(src / "payments.csv", index=False)
    folder = tmp_path / "legacy_bss"
    shutil.copytree(CONFIG_ROOT / "legacy_bss", folder)

    res = run_check(str(folder), src, rows=300)
    joined = "\n".join(res.problems)
    assert "no export manifest" in joined and "handover manifest" in joined, joined
    assert "数据字典.md" in joined and "ignore:" in joined, joined
    share = [p for p in res.problems if "would quarantine" in p]
    assert len(share) == 1 and "table payments" in share[0], joined
    assert "INVALID_NUMBER amount_fen" in share[0] and "max_quarantine_share" in share[0]

    catalog = folder / "catalog.yaml"
    catalog.write_text(
        catalog.read_text(encoding="utf-8").replace(
            "system: legacy_bss\n", "system: legacy_bss\nignore: ['*.md']\n", 1
        ),
        encoding="utf-8",
    )
    again = run_check(str(folder), src, rows=300)
    assert not any("数据字典.md" in p for p in again.problems), again.problems
