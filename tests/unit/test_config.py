"""handover.config.loader: the shipped source system loads; broken copies fail in one clear line.

Each broken case edits one line of a tmp_path copy of include/config/legacy_bss and
checks that the ConfigError names that file, that line, the dotted field and, where
there is one, the nearest valid name.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from handover.config.loader import CONFIG_ROOT, ConfigError, SourceConfig, load_config

SHIPPED = CONFIG_ROOT / "legacy_bss"


@pytest.fixture
def system(tmp_path: Path) -> Path:
    """A private copy of the shipped legacy_bss configuration."""
    target = tmp_path / "legacy_bss"
    shutil.copytree(SHIPPED, target)
    return target


def edit(path: Path, old: str, new: str) -> int:
    """Replace the one occurrence of `old`; return the 1-based line where `new` starts."""
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} must occur exactly once in {path.name}"
    line = text[: text.index(old)].count("\n") + 1
    path.write_text(text.replace(old, new), encoding="utf-8")
    return line


def load_error(directory: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(directory)
    message = str(info.value)
    assert "\n" not in message, "a config error is one line"
    return message


# -- the shipped configuration ------------------------------------------------------------


def test_shipped_config_loads_by_name():
    cfg = load_config("legacy_bss")

    assert isinstance(cfg, SourceConfig)
    assert cfg.system == "legacy_bss"
    assert cfg.tables == [
        "subscribers",
        "consents",
        "call_records",
        "data_sessions",
        "payments",
        "complaints",
        "browsing_events",
    ]


def test_shipped_config_accessors():
    cfg = load_config("legacy_bss")

    assert cfg.partitions("call_records") == 1
    assert cfg.rules("subscribers")["dedupe"] == {
        "key": "id_number",
        "order_by": "updated_at",
        "keep": "newest",
        "action": "merge",
    }
    assert cfg.table_mapping("subscribers")["target"] == "customer"
    assert cfg.category_policy("browsing_events")["lawful_basis"] == "separate_consent"
    assert cfg.category_policy("complaints")["retention_months"] == 24


def test_copy_loads_by_path(system: Path):
    cfg = load_config(system)

    assert cfg.directory == system
    assert cfg.system == "legacy_bss"


# -- schema errors ------------------------------------------------------------------------


def test_unknown_key_names_file_line_field_and_nearest(system: Path):
    mapping = system / "mapping.yaml"
    line = edit(
        mapping,
        'gender: {from: gender, lookup: {"男": M',
        'gender: {from: gender, lookpu: {"男": M',
    )

    message = load_error(system)

    assert message.startswith(f"{mapping} line {line}: ")
    assert "tables.subscribers.fields.gender.lookpu" in message
    assert "unknown field 'lookpu'" in message
    assert "did you mean 'lookup'" in message


def test_unknown_key_in_block_style_points_at_its_own_line(system: Path):
    catalog = system / "catalog.yaml"
    edit(
        catalog,
        "  consents:\n    category: personal\n",
        "  consents:\n    category: personal\n    partitons: 2\n",
    )
    text = catalog.read_text(encoding="utf-8").splitlines()
    line = text.index("    partitons: 2") + 1

    message = load_error(system)

    assert message.startswith(f"{catalog} line {line}: ")
    assert "tables.consents.partitons" in message
    assert "did you mean 'partitions'" in message


def test_unknown_protection_names_the_list_item(system: Path):
    mapping = system / "mapping.yaml"
    line = edit(
        mapping, "protect: [encrypt, blind_index, mask]", "protect: [encrypt, blind_indx, mask]"
    )

    message = load_error(system)

    assert message.startswith(f"{mapping} line {line}: ")
    assert "tables.subscribers.fields.id_number.protect.1" in message
    assert "'blind_indx' is not one of" in message
    assert "did you mean 'blind_index'" in message


def test_unknown_level_in_catalog(system: Path):
    catalog = system / "catalog.yaml"
    line = edit(catalog, "id_number: {level: L4,", "id_number: {level: L5,")

    message = load_error(system)

    assert message.startswith(f"{catalog} line {line}: ")
    assert "tables.subscribers.columns.id_number.level" in message
    assert "'L5' is not one of" in message


# -- cross-file errors --------------------------------------------------------------------


def test_mapped_column_not_in_catalog(system: Path):
    mapping = system / "mapping.yaml"
    line = edit(mapping, "msisdn: {from: msisdn,", "msisdn: {from: msidsn,")

    message = load_error(system)

    assert message.startswith(f"{mapping} line {line}: ")
    assert "tables.subscribers.fields.msisdn.from" in message
    assert "column 'msidsn' is not in catalog table subscribers" in message
    assert "did you mean 'msisdn'" in message


def test_cleansing_column_not_in_catalog(system: Path):
    cleansing = system / "cleansing.yaml"
    line = edit(
        cleansing,
        "mandatory: [cust_id, name, id_number, msisdn,",
        "mandatory: [cust_id, nmae, id_number, msisdn,",
    )

    message = load_error(system)

    assert message.startswith(f"{cleansing} line {line}: ")
    assert "tables.subscribers.mandatory.1" in message
    assert "column 'nmae' is not in catalog table subscribers" in message
    assert "did you mean 'name'" in message


def test_cleansing_date_column_not_in_catalog(system: Path):
    cleansing = system / "cleansing.yaml"
    line = edit(
        cleansing,
        '    dates: {paid_at: "%Y-%m-%d %H:%M:%S"}',
        '    dates: {paid_on: "%Y-%m-%d %H:%M:%S"}',
    )

    message = load_error(system)

    assert message.startswith(f"{cleansing} line {line}: ")
    assert "tables.payments.dates.paid_on" in message
    assert "did you mean 'paid_at'" in message


def test_catalog_table_without_mapping(system: Path):
    mapping = system / "mapping.yaml"
    text = mapping.read_text(encoding="utf-8")
    head, sep, _ = text.partition("  browsing_events:\n")
    assert sep, "the shipped mapping ends with browsing_events"
    mapping.write_text(head, encoding="utf-8")
    tables_line = head.splitlines().index("tables:") + 1

    message = load_error(system)

    assert message.startswith(f"{mapping} line {tables_line}: ")
    assert "tables.browsing_events" in message
    assert "catalog table 'browsing_events' has no mapping" in message


def test_catalog_category_without_policy(system: Path):
    policy = system / "policy.yaml"
    text = policy.read_text(encoding="utf-8")
    old = (
        "  behavioural:\n    lawful_basis: separate_consent\n"
        "    consent_purpose: behavioural\n    retention_months: 12\n"
    )
    assert text.count(old) == 1
    policy.write_text(text.replace(old, ""), encoding="utf-8")
    line = text.splitlines().index("categories:") + 1

    message = load_error(system)

    assert message.startswith(f"{policy} line {line}: ")
    assert "categories.behavioural" in message
    assert "no policy for category 'behavioural'" in message


def test_mapping_table_not_in_catalog_suggests_nearest(system: Path):
    mapping = system / "mapping.yaml"
    line = edit(mapping, "  payments:\n    target: payment\n", "  payment:\n    target: payment\n")

    message = load_error(system)

    assert message.startswith(f"{mapping} line {line}: ")
    assert "tables.payment: table not in catalog.yaml" in message
    assert "did you mean 'payments'" in message


# -- files and folders --------------------------------------------------------------------


def test_invalid_yaml_names_the_line(system: Path):
    catalog = system / "catalog.yaml"
    line = edit(catalog, "    key: consent_id\n", "    key: consent_id: oops\n")

    message = load_error(system)

    assert message.startswith(f"{catalog} line {line}: not valid YAML")


def test_missing_file(system: Path):
    (system / "policy.yaml").unlink()

    message = load_error(system)

    assert message.startswith(f"{system / 'policy.yaml'}: file not found")


def test_empty_file(system: Path):
    (system / "cleansing.yaml").write_text("# nothing yet\n", encoding="utf-8")

    message = load_error(system)

    assert message.startswith(f"{system / 'cleansing.yaml'}: file is empty")


def test_unknown_system_name_suggests_nearest():
    with pytest.raises(ConfigError) as info:
        load_config("legacy_bs")
    message = str(info.value)

    assert "source system 'legacy_bs'" in message
    assert "did you mean 'legacy_bss'" in message
    assert "\n" not in message


# -- not_before and files -----------------------------------------------------------------


def test_not_before_is_a_date_string_however_yaml_reads_it(system: Path):
    edit(
        system / "cleansing.yaml",
        'not_before: {open_date: "1980-01-01"}',
        "not_before: {open_date: 1990-06-01}",
    )  # unquoted: YAML reads a date

    cfg = load_config(system)

    assert cfg.rules("subscribers")["not_before"] == {"open_date": "1990-06-01"}
    assert load_config("telco_b").rules("cust_profile")["not_before"] == {"开户日期": "1980-01-01"}


def test_files_glob_replaces_the_file(system: Path):
    edit(
        system / "catalog.yaml",
        "  payments:\n    category: consumption\n",
        '  payments:\n    source: {files: "payments*.csv"}\n    category: consumption\n',
    )

    cfg = load_config(system)

    assert cfg.source("payments")["files"] == "payments*.csv"
    assert "file" not in cfg.source("payments")
    assert cfg.source("subscribers")["file"] == "subscribers.csv"
