"""handover.stages.mapping: cleansed legacy rows become target rows, with no L4 value in clear."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from handover.config.loader import load_config
from handover.config.target import target_columns
from handover.protection.fields import Keyring, blind_index, decrypt_value
from handover.stages.cleanse import ParentRegistry, cleanse
from handover.stages.mapping import MappingError, map_partition

E = pd.Timestamp("2026-11-01 00:00:00")
MALE_ID = "110105194912310011"  # 17th digit odd
FEMALE_ID = "11010519491231002X"  # 17th digit even


@pytest.fixture(scope="module")
def cfg():
    return load_config("legacy_bss")


@pytest.fixture(scope="module")
def ring() -> Keyring:
    return Keyring.from_dict(Keyring.generate("k7"))


def clean_frame(cfg, table: str, rows: list[dict[str, str]], key: str) -> pd.DataFrame:
    """Run rows through cleanse with the shipped rules, as the pipeline does before mapping."""
    raw = pd.DataFrame(rows, dtype=object)
    raw["_source_row"] = np.arange(len(raw))
    parents = ParentRegistry(valid={"C00000001", "C00000002"}, quarantined=set(), excluded=set())
    result = cleanse(raw, cfg.rules(table), key=key, exported_at=E, parent=parents)
    assert result.quarantine.empty, result.quarantine[["_reason", "_field"]]
    return result.clean


def subscribers(cfg) -> pd.DataFrame:
    base = {
        "address": "北京市朝阳区建国路1号",
        "city": "北京",
        "open_date": "2020-05-01",
        "transfer_objection": "0",
        "birth_date": "1949-12-31",
    }
    return clean_frame(
        cfg,
        "subscribers",
        [
            {
                **base,
                "cust_id": "C00000001",
                "name": "张三",
                "id_number": MALE_ID,
                "gender": "男",
                "msisdn": "13812345678",
                "status": "1",
                "updated_at": "2026-10-01 12:00:00",
            },
            {
                **base,
                "cust_id": "C00000002",
                "name": "李四",
                "id_number": FEMALE_ID,
                "gender": "女",
                "msisdn": "+86 139 8765 4321",
                "status": "3",
                "updated_at": "2026-09-01 08:00:00",
            },
        ],
        "cust_id",
    )


def complaints(cfg, category: str = "网络") -> pd.DataFrame:
    return clean_frame(
        cfg,
        "complaints",
        [
            {
                "complaint_id": "Q000000001",
                "cust_id": "C00000001",
                "created_at": "2026-10-03 09:30:00",
                "category": "计费",
                "text": f"我的身份证{FEMALE_ID} 手机13812345678 多扣了钱",
                "satisfaction": "2",
            },
            {
                "complaint_id": "Q000000002",
                "cust_id": "C00000002",
                "created_at": "2026-10-04 10:00:00",
                "category": category,
                "text": "信号差",
                "satisfaction": "",
            },
        ],
        "complaint_id",
    )


def map_table(cfg, ring, table: str, clean: pd.DataFrame) -> pa.Table:
    return map_partition(
        clean, table, cfg.table_mapping(table), cfg.table(table)["columns"], ring, partition="0"
    )


# -- subscribers --------------------------------------------------------------------------------


def test_subscriber_columns_match_target_columns(cfg, ring):
    out = map_table(cfg, ring, "subscribers", subscribers(cfg))

    assert out.column_names == target_columns(cfg.table_mapping("subscribers"))
    assert out.num_rows == 2


def test_subscriber_id_number_never_in_clear(cfg, ring):
    out = map_table(cfg, ring, "subscribers", subscribers(cfg))

    assert "id_number" not in out.column_names
    assert {"id_number_enc", "id_number_key_id", "id_number_bidx", "id_number_masked"} <= set(
        out.column_names
    )
    for column in out.columns:
        for value in column.to_pylist():
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            assert MALE_ID not in text and FEMALE_ID not in text


def test_subscriber_id_number_decrypts_with_its_key_id(cfg, ring):
    out = map_table(cfg, ring, "subscribers", subscribers(cfg)).to_pydict()

    assert out["id_number_key_id"] == ["k7", "k7"]
    assert out["id_number_masked"] == ["110***********0011", "110***********002X"]
    decrypted = [
        decrypt_value(blob, kid, ring, aad=b"customer.id_number")
        for blob, kid in zip(out["id_number_enc"], out["id_number_key_id"], strict=True)
    ]
    assert decrypted == [MALE_ID, FEMALE_ID]


def test_subscriber_blind_indexes_and_masks(cfg, ring):
    out = map_table(cfg, ring, "subscribers", subscribers(cfg)).to_pydict()

    expected = blind_index(
        np.array(["13812345678", "13987654321"], dtype=object), ring, "customer.msisdn"
    )
    assert out["msisdn_bidx"] == expected
    assert out["msisdn_masked"] == ["138****5678", "139****4321"]
    assert out["msisdn"] == ["13812345678", "13987654321"]  # L3: kept, normalised


def test_subscriber_lookups_and_types(cfg, ring):
    out = map_table(cfg, ring, "subscribers", subscribers(cfg))
    rows = out.to_pydict()

    assert rows["gender"] == ["M", "F"]
    assert rows["status"] == ["active", "closed"]
    assert rows["customer_id"] == ["C00000001", "C00000002"]
    assert out.schema.field("birth_date").type == pa.date32()
    assert out.schema.field("source_updated_at").type == pa.timestamp("s")


def test_protection_without_keys_is_refused(cfg):
    with pytest.raises(RuntimeError, match="needs keys"):
        map_partition(
            subscribers(cfg),
            "subscribers",
            cfg.table_mapping("subscribers"),
            cfg.table("subscribers")["columns"],
            None,
        )


# -- complaints ---------------------------------------------------------------------------------


def test_complaint_columns_lookups_and_redaction(cfg, ring):
    out = map_table(cfg, ring, "complaints", complaints(cfg))
    rows = out.to_pydict()

    assert out.column_names == target_columns(cfg.table_mapping("complaints"))
    assert rows["category"] == ["billing", "network"]
    assert rows["body"] == ["我的身份证[身份证号] 手机[手机号] 多扣了钱", "信号差"]
    assert rows["satisfaction"] == [2, None]
    assert out.schema.field("satisfaction").type == pa.int64()
    assert out.schema.field("created_at").type == pa.timestamp("s")


def test_consent_granted_becomes_boolean(cfg, ring):
    clean = clean_frame(
        cfg,
        "consents",
        [
            {
                "consent_id": "K000000001",
                "cust_id": "C00000001",
                "purpose": "service",
                "granted": "1",
                "granted_at": "2024-01-01 00:00:00",
            },
            {
                "consent_id": "K000000002",
                "cust_id": "C00000001",
                "purpose": "marketing",
                "granted": "0",
                "granted_at": "2024-01-01 00:00:00",
            },
        ],
        "consent_id",
    )

    out = map_table(cfg, ring, "consents", clean)

    assert out.schema.field("granted").type == pa.bool_()
    assert out.column("granted").to_pylist() == [True, False]


def test_code_without_lookup_names_table_field_and_fix(cfg, ring):
    clean = complaints(cfg)
    clean.loc[1, "category"] = "投诉"  # passed a looser cleansing, unknown to the mapping

    with pytest.raises(MappingError) as info:
        map_table(cfg, ring, "complaints", clean)
    message = str(info.value)

    assert "complaints" in message
    assert "field category (from category)" in message
    assert "'投诉'" in message
    assert "mapping.yaml" in message and "cleansing.yaml" in message
    assert "\n" not in message


# -- target_columns -----------------------------------------------------------------------------


def test_target_columns_expands_protections():
    tmap = {
        "fields": {
            "a": {"from": "a"},
            "b": {"from": "b", "protect": ["encrypt", "blind_index", "mask"]},
            "c": {"from": "c", "protect": ["blind_index"]},
            "d": {"from": "d", "protect": ["redact"]},
        }
    }

    assert target_columns(tmap) == [
        "a",
        "b_bidx",
        "b_masked",
        "b_enc",
        "b_key_id",
        "c_bidx",
        "c",
        "d",
    ]


@pytest.mark.parametrize(
    "table",
    [
        "subscribers",
        "consents",
        "call_records",
        "data_sessions",
        "payments",
        "complaints",
        "browsing_events",
    ],
)
def test_no_l4_column_is_mapped_in_clear(cfg, table: str):
    tmap = cfg.table_mapping(table)
    columns = cfg.table(table)["columns"]

    for target, spec in tmap["fields"].items():
        if columns[spec["from"]]["level"] == "L4":
            assert "encrypt" in spec.get("protect", [])
            assert target not in target_columns(tmap)


def test_two_source_systems_write_one_target_field_alike(ring):
    """Blind index and AES-GCM associated data are named by the target field
    (customer.id_number), not by the source table: one person's ID from two acquired
    systems gets one blind index, and either system's ciphertext opens the same way."""
    spec = {
        "target": "customer",
        "key": "customer_id",
        "fields": {
            "customer_id": {"from": "k"},
            "id_number": {"from": "idn", "protect": ["encrypt", "blind_index"]},
        },
    }
    clean = pd.DataFrame({"k": ["C1"], "idn": ["11010519491231002X"]})
    columns = {"k": {"pii": "customer_id"}, "idn": {"pii": "resident_id"}}

    legacy = map_partition(clean, "subscribers", spec, columns, ring).to_pydict()
    other = map_partition(clean, "cust_profile", spec, columns, ring).to_pydict()

    assert (
        legacy["id_number_bidx"]
        == other["id_number_bidx"]
        == blind_index(np.array(["11010519491231002X"], dtype=object), ring, "customer.id_number")
    )
    for out in (legacy, other):
        assert (
            decrypt_value(
                out["id_number_enc"][0], out["id_number_key_id"][0], ring, aad=b"customer.id_number"
            )
            == "11010519491231002X"
        )


def test_fields_the_export_lacks_are_derived_from_the_resident_id():
    """A NOT NULL birth date, gender or region the export does not have gets the value
    the ID number encodes, not a placeholder; an ID not in its 18-digit form gives none."""
    import pandas as pd

    from handover.core.validators import id_check_digit
    from handover.stages.mapping import map_partition

    first17 = "440304" + "19720206" + "601"
    good = first17 + id_check_digit(first17)
    clean = pd.DataFrame({"cid": ["C1", "C2"], "id_number": [good, "12345"], "_source_row": [1, 2]})
    mapping = {
        "target": "customer",
        "key": "customer_id",
        "fields": {
            "customer_id": {"from": "cid"},
            "birth_date": {"from": "id_number", "from_resident_id": "birth_date", "cast": "date"},
            "gender": {"from": "id_number", "from_resident_id": "gender"},
            "region_code": {"from": "id_number", "from_resident_id": "region"},
        },
    }
    columns = {
        "cid": {"level": "L2", "pii": "none"},
        "id_number": {"level": "L4", "pii": "resident_id"},
    }
    out = map_partition(clean, "subscribers", mapping, columns, None).to_pydict()
    import datetime as dt

    assert out["birth_date"] == [dt.date(1972, 2, 6), None]
    assert out["gender"] == ["男", None] and out["region_code"] == ["440304", None]
