"""Scaffold the Great Expectations suites of a source system from its config files.

Onboarding a new legacy system: run this once, then edit the JSON under
expectations/<system>/<gate>/<table>.json (thresholds, extra expectations); the gates look
there first, then in the shared expectations/<gate>/<table>.json. Existing files are left
alone unless --force.

    python scripts/scaffold_suites.py telco_b [--force]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

# The handover imports come after the sys.path line above, which makes them importable.
from handover.config.loader import load_config  # noqa: E402 - importable only after the sys.path line above
from handover.config.target import target_columns  # noqa: E402 - importable only after the sys.path line above
from handover.core.validators import ID_PATTERN, MSISDN_PATTERN  # noqa: E402 - importable only after sys.path line


def e(kind: str, **kwargs) -> dict:
    return {"type": kind, "kwargs": kwargs, "meta": {}}


def lookup_values(fspec: dict) -> list | None:
    """The values a looked-up field holds in the mapped frame, typed as the field's `cast`
    makes them (a lookup to "1"/"2" cast to int holds 1 and 2, which a set of strings
    would fail); None where a set says nothing (booleans, dates)."""
    raw = [v for v in fspec["lookup"].values() if v is not None]
    cast = fspec.get("cast")
    if not raw or cast in ("bool", "date", "timestamp") or all(isinstance(v, bool) for v in raw):
        return None
    if cast == "int":
        return sorted({int(v) for v in raw})
    if cast == "float":
        return sorted({float(v) for v in raw})
    return sorted({str(v) for v in raw})


def suites(system: str) -> dict[tuple[str, str], list[dict]]:
    cfg = load_config(system)
    out: dict[tuple[str, str], list[dict]] = {}
    for table in cfg.tables:
        spec, rules, tmap = cfg.table(table), cfg.rules(table), cfg.table_mapping(table)
        cols, key = list(spec["columns"]), spec["key"]
        out[("intake", table)] = [
            e("expect_table_columns_to_match_set", column_set=cols, exact_match=True),
            e("expect_column_values_to_not_be_null", column=key),
            e(
                "expect_column_value_lengths_to_be_between",
                column=key,
                min_value=1,
                max_value=64,
                mostly=0.999,
            ),
        ]
        basis = (
            "consent:" + cfg.category_policy(table)["consent_purpose"]
            if cfg.category_policy(table)["lawful_basis"] == "separate_consent"
            else cfg.category_policy(table)["lawful_basis"]
        )
        out[("compliance", table)] = [
            e("expect_table_columns_to_match_set", column_set=cols + ["_basis"], exact_match=True),
            e("expect_column_values_to_not_be_null", column="_basis"),
            e("expect_column_values_to_be_in_set", column="_basis", value_set=[basis]),
        ]
        q = [
            e("expect_column_values_to_not_be_null", column=key),
            e("expect_column_values_to_be_unique", column=key),
        ]
        q += [
            e("expect_column_values_to_not_be_null", column=c)
            for c in rules.get("mandatory", [])
            if c != key
        ]
        q += [
            e("expect_column_values_to_match_regex", column=c, regex=MSISDN_PATTERN)
            for c in rules.get("msisdn", [])
        ]
        if rules.get("resident_id"):
            q.append(
                e(
                    "expect_column_values_to_match_regex",
                    column=rules["resident_id"]["column"],
                    regex=ID_PATTERN,
                )
            )
        q += [
            e("expect_column_values_to_be_between", column=c, min_value=0)
            for c in rules.get("non_negative", [])
        ]
        q += [
            e("expect_column_values_to_be_in_set", column=c, value_set=[str(v) for v in vs])
            for c, vs in rules.get("codes", {}).items()
        ]
        out[("quality", table)] = q
        tcols = target_columns(tmap)
        c = [
            e("expect_table_columns_to_match_set", column_set=tcols, exact_match=True),
            e("expect_column_values_to_not_be_null", column=tmap["key"]),
            e("expect_column_values_to_be_unique", column=tmap["key"]),
        ]
        for field, fspec in tmap["fields"].items():
            prot = fspec.get("protect", [])
            pii = spec["columns"][fspec["from"]]["pii"]
            if "blind_index" in prot:
                c.append(
                    e(
                        "expect_column_values_to_match_regex",
                        column=f"{field}_bidx",
                        regex="^[0-9a-f]{64}$",
                    )
                )
            if "mask" in prot and pii == "resident_id":
                c.append(
                    e(
                        "expect_column_values_to_match_regex",
                        column=f"{field}_masked",
                        regex=r"^\d{3}\*{11}[\dX]{4}$",
                    )
                )
            if "mask" in prot and pii == "msisdn":
                c.append(
                    e(
                        "expect_column_values_to_match_regex",
                        column=f"{field}_masked",
                        regex=r"^1\d{2}\*{4}\d{4}$",
                    )
                )
            if "encrypt" in prot:
                c.append(e("expect_column_values_to_not_be_null", column=f"{field}_enc"))
            if "redact" in prot:
                c.append(
                    e(
                        "expect_column_values_to_not_match_regex",
                        column=field,
                        regex=r"(?<!\d)\d{17}[\dXxＸｘ](?!\d)",
                    )
                )
                c.append(
                    e(
                        "expect_column_values_to_not_match_regex",
                        column=field,
                        regex=r"(?<!\d)[1１][3-9３-９]\d{9}(?!\d)",
                    )
                )
            if "lookup" in fspec:
                values = lookup_values(fspec)
                if values:
                    c.append(e("expect_column_values_to_be_in_set", column=field, value_set=values))
        out[("contract", table)] = c
        out[("reconciliation", table)] = [
            e("expect_table_row_count_to_equal", value=1),
            e("expect_column_values_to_be_in_set", column="balanced", value_set=[True]),
            e("expect_column_values_to_be_between", column="unaccounted", min_value=0, max_value=0),
            e(
                "expect_column_values_to_be_between",
                column="missing_keys",
                min_value=0,
                max_value=0,
            ),
            e(
                "expect_column_values_to_be_between",
                column="field_mismatches",
                min_value=0,
                max_value=0,
            ),
            e("expect_column_values_to_be_between", column="money_diff", min_value=0, max_value=0),
        ]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("system", nargs="?", default="legacy_bss")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    system = load_config(args.system).system
    for (gate, table), expectations in suites(args.system).items():
        path = ROOT / "expectations" / system / gate / f"{table}.json"
        if path.exists() and not args.force:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        suite = {
            "name": f"{gate}.{table}",
            "expectations": expectations,
            "meta": {"gate": gate, "table": table, "system": system},
        }
        path.write_text(json.dumps(suite, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
