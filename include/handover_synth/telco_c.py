"""A third synthetic operator ("telco_c"), as hostile as a real legacy export.

Why this exists
---------------
The second operator (synth_b) proved that another system migrates by configuration alone;
telco_c is the export nobody would design: what a 20-year-old provincial billing back
office hands over when asked for "everything, by Friday". It is derived, like synth_b's,
from a legacy_bss export (same customers, same injected defects, same keys), then
re-expressed with the quirks of the project's field guide to real legacy exports
(LEGACY-QUIRKS.md in the shared folder):

* **No header rows.** Columns are pinyin initials (``khbh`` for 客户编号, ``zjhm`` for
  证件号码 *and*, in the call table, for 主叫号码) defined only in ``数据字典.txt``, a
  non-data file (GB18030) in the export folder, with the code tables and the export time.
* **Files**: GB18030 with CRLF line ends, delimiters ``^``, ``\\x1f`` (unit separator) and
  ``~``; the consent table is UTF-16 with a byte order mark, tab-delimited (a Windows tool's
  "Unicode text"). Complaint texts hold quoted CRLF line breaks. No export manifest.
* **Keys** in mixed case and padded (`` c10012080 `` for ``C10012080``), in the customer
  table and in every child's customer column; some child keys lower-case.
* **Resident IDs**: first-generation 15-digit IDs (GB 11643-1989) for a share of the
  customers born 1900-1999, lower-case ``x``, IDs printed in groups with spaces; and
  **the same person twice across ID generations**: a customer exported a second time under
  a new customer key, once with the 15-digit and once with the 18-digit ID, some of the
  calls, data sessions, payments and complaints under each key. The survivor is the
  record updated last (cleansing ``dedupe``); the other is ``merged`` into it and its
  children are re-parented. legacy_bss's DUPLICATE_PERSON rows are merged the same way.
* **Gender** as GB/T 2261.1 codes (``1`` male, ``2`` female, ``0``/``9`` unknown) and a
  **birth date** column full of placeholders (``19000101``, ``00000000``, blank) that the
  back office never cleaned: neither is migrated, the target's birth date and gender come
  from the resident ID (mapping ``from_resident_id``). A legacy row whose birth date
  disagreed with its ID (ID_BIRTH_MISMATCH) is therefore loaded with the ID's date, and
  its children with it.
* **Codes** as pinyin initials defined only in the dictionary: status ``ZC/TJ/XH``
  (正常/停机/销户), purposes ``FW/YX/XW``, channels ``ZFB/WX/YH/XJ``, complaint categories
  ``JF/WL/FW/QT``; objection ``Y``/``N``.
* **Dates**: open dates written five ways in one column (``2006-4-24``,
  ``2012/12/08 09:30``, ``20240105``, ``2024年1月5日``, Excel serial days); updated time as
  epoch milliseconds; payments' times three ways; consents' ``2026-02-14T00:50:38``;
  complaints' ``2026年01月28日 04:32``. No list reads one value two ways.
* **Money**: call fees and payments as printed (``¥17,504.10``, ``￥0.30``,
  ``RMB 1,000``, ``12.50元``, negatives ``(12.50)``, ``负3.00``, ``-0.30``); data-session fees
  as whole fen.
* **Phones**: subscribers' mobiles as ``+86 138 0013 8000``, ``150-1234-5678``,
  ``0086 13800138000``; the other party of a call may be a landline (``010-12345678``,
  ``0755 1234567``), a service number (``10086``, ``95588``), an IoT number (13 digits) or
  abroad (``+44 20 7946 0958``, ``0044…``).

``truth.csv`` holds the fate of **every** row: columns ``table, key, defect,
expected_outcome, expected_reason, merged_into, reparented_to, amount_yuan``. Outcomes:
``loaded``, ``quarantined`` (reason code), ``excluded`` (policy rule id) and ``merged``
(reason ``SAME_PERSON``; ``merged_into`` the survivor's customer key). ``reparented_to``
names the survivor a loaded child row of a merged customer must end up under;
``amount_yuan`` is the row's amount (exact decimal yuan) where the table carries money.
Keys in the answer key are the canonical ones (upper case, trimmed).

Run ``python -m handover_synth.telco_c --out DIR --subscribers N [--seed S]``; then, as a
receiver would, ``handover manifest --system telco_c --source-dir DIR --exported-at
"<the export time the dictionary states>"``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from handover_synth.telco_c_spec import (
    ABROAD,
    BIRTH_PLACEHOLDER_SHARE,
    CATEGORY,
    CHANNEL,
    CHILD_KEY_LOWER_SHARE,
    CHILDREN,
    COLUMNS,
    DICTIONARY,
    EXCEL_EPOCH,
    FILES,
    FIRST_GEN_SHARE,
    GENDER,
    GENDER_UNKNOWN_SHARE,
    ID_CHECK,
    ID_WEIGHTS,
    IOT,
    KEY_VARIANT_SHARE,
    LANDLINES,
    MONEY,
    MOVABLE,
    MOVED_CHILD_SHARE,
    NOTES,
    OBJECTION,
    OTHER_PARTY_SHARE,
    PURPOSE,
    SAME_PERSON_SHARE,
    SERVICES,
    STATUS,
    SYSTEM,
    TABLES,
    TRAILERS,
    TRUTH_COLUMNS,
)
from handover_synth.telco_c_tables import (
    SHAPES,
    _calls,
    _dictionary,
)
from handover_synth.telco_c_text import (
    _read,
    _write,
    check_digit,
    epoch_ms,
    first_generation,
    id_valid,
    key_variant,
    mobile_style,
    money_text,
    open_date_text,
    payment_time_text,
    upgrade,
)
from handover_synth.telco_c_truth import (
    _same_person_twice,
    _truth_frames,
)

# The public face: the dialect's constants and value printers, re-exported from
# telco_c_spec and telco_c_text so callers keep one module.
__all__ = [
    "ABROAD",
    "BIRTH_PLACEHOLDER_SHARE",
    "CATEGORY",
    "CHANNEL",
    "CHILDREN",
    "CHILD_KEY_LOWER_SHARE",
    "COLUMNS",
    "DICTIONARY",
    "EXCEL_EPOCH",
    "FILES",
    "FIRST_GEN_SHARE",
    "GENDER",
    "GENDER_UNKNOWN_SHARE",
    "ID_CHECK",
    "ID_WEIGHTS",
    "IOT",
    "KEY_VARIANT_SHARE",
    "LANDLINES",
    "MONEY",
    "MOVABLE",
    "MOVED_CHILD_SHARE",
    "NOTES",
    "OBJECTION",
    "OTHER_PARTY_SHARE",
    "PURPOSE",
    "SAME_PERSON_SHARE",
    "SERVICES",
    "SHAPES",
    "STATUS",
    "SYSTEM",
    "TABLES",
    "TRAILERS",
    "TRUTH_COLUMNS",
    "check_digit",
    "derive",
    "epoch_ms",
    "first_generation",
    "generate",
    "id_valid",
    "key_variant",
    "main",
    "mobile_style",
    "money_text",
    "open_date_text",
    "payment_time_text",
    "upgrade",
]


# -------------------------------------------------------------------- derive
def derive(legacy_dir: Path, out_dir: Path, *, seed: int | None = None) -> dict[str, Any]:
    """Write the telco_c export (and truth.csv) into `out_dir` from a legacy_bss export."""
    legacy, out = Path(legacy_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # a fresh export comes without a manifest: one left by an earlier generation in this
    # folder would describe other files (and `handover manifest` refuses to replace it)
    stale = out / "export_manifest.json"
    if (
        stale.exists()
        and json.loads(stale.read_text(encoding="utf-8")).get("made_by") == "receiver"
    ):
        stale.unlink()
    manifest_in = json.loads((legacy / "export_manifest.json").read_text(encoding="utf-8"))
    rng = np.random.default_rng([7919, int(manifest_in.get("seed") or 0) if seed is None else seed])
    frames = {t: _read(legacy, t) for t in FILES}
    truth = _truth_frames(legacy, frames)
    subs, st = frames["subscribers"], truth["subscribers"]

    # legacy_bss's DUPLICATE_PERSON rows: merged into their person's record (updated later).
    by_id = subs.groupby("id_number").indices
    updated = subs["updated_at"]
    for dup in np.flatnonzero(st["defect"].to_numpy() == "DUPLICATE_PERSON"):
        mates = [j for j in by_id[subs.at[dup, "id_number"]] if j != dup]
        survivor = max(mates + [dup], key=lambda j: (updated.iat[j], -j))
        assert survivor != dup, "legacy duplicate is not the older record"
        st.loc[dup, ["expected_outcome", "expected_reason", "merged_into"]] = [
            "merged",
            "SAME_PERSON",
            subs.at[survivor, "cust_id"],
        ]

    # ID_BIRTH_MISMATCH: the birth-date column is not migrated (the ID's date is): loaded,
    # and the children that waited for it with it.
    repaired = set(subs.loc[st["defect"] == "ID_BIRTH_MISMATCH", "cust_id"])
    st.loc[st["defect"] == "ID_BIRTH_MISMATCH", ["expected_outcome", "expected_reason"]] = [
        "loaded",
        "",
    ]
    for table in CHILDREN:
        t, df = truth[table], frames[table]
        hit = df["cust_id"].isin(repaired) & (t["expected_reason"] == "PARENT_QUARANTINED")
        t.loc[hit, ["defect", "expected_outcome", "expected_reason"]] = [
            "PARENT_REPAIRED",
            "loaded",
            "",
        ]

    # The same person twice across ID generations: a second record under a new key.
    subs, st = _same_person_twice(rng, frames, truth, pd.Timestamp(manifest_in["exported_at"]))

    # First-generation IDs for a share of the rest (born 1900-1999, valid IDs only: a
    # 15-digit form has no check digit, so a bad one would come back repaired).
    ids = subs["id_number"].tolist()
    pair = set(st.loc[st["defect"].isin(["SAME_PERSON_15", "SAME_PERSON_18"]), "key"])
    for i, v in enumerate(ids):
        short = first_generation(v)
        if short and subs.at[i, "cust_id"] not in pair and rng.random() < FIRST_GEN_SHARE:
            ids[i] = short
            if st.at[i, "defect"] == "":
                st.at[i, "defect"] = "FIRST_GEN_ID"
        elif len(v) == 18 and v.endswith("X") and rng.random() < 0.5:
            ids[i] = v[:17] + "x"
        elif len(v) == 18 and rng.random() < 0.05:
            ids[i] = f"{v[:6]} {v[6:14]} {v[14:]}"
    subs = subs.assign(id_number=ids)
    frames["subscribers"] = subs

    own_numbers = dict(zip(subs["cust_id"], subs["msisdn"], strict=True))
    tables: dict[str, Any] = {}
    for legacy_table, (table, file, encoding, delimiter) in FILES.items():
        df = frames[legacy_table]
        shaped = (
            _calls(rng, df, own_numbers)
            if legacy_table == "call_records"
            else SHAPES[legacy_table](rng, df)
        )
        _write(
            out / file,
            shaped,
            encoding=encoding,
            delimiter=delimiter,
            trailer=legacy_table in TRAILERS,
        )
        tables[table] = {
            "file": file,
            "rows": len(shaped),
            "encoding": encoding,
            "delimiter": delimiter,
        }
    (out / DICTIONARY).write_text(
        _dictionary(manifest_in["exported_at"], tables).replace("\n", "\r\n"),
        encoding="gb18030",
        newline="",
    )

    rows = []
    for legacy_table, t in truth.items():
        rows.append(t.assign(table=TABLES[legacy_table]))
    full = pd.concat(rows, ignore_index=True)[list(TRUTH_COLUMNS)]
    full.to_csv(out / "truth.csv", index=False)
    return {
        "system": SYSTEM,
        "exported_at": manifest_in["exported_at"],
        "seed": manifest_in.get("seed"),
        "subscribers": manifest_in.get("subscribers"),
        "derived_from": "legacy_bss",
        "tables": tables,
        "dictionary": DICTIONARY,
    }


def generate(
    out_dir: Path, subscribers: int, seed: int = 42, **synth_kwargs: Any
) -> dict[str, Any]:
    """Generate a legacy_bss export with handover_synth.legacy_bss and derive telco_c's from it."""
    from handover_synth import legacy_bss as synth

    with tempfile.TemporaryDirectory(prefix="legacy-bss-") as tmp:
        synth.generate(Path(tmp), subscribers, seed=seed, **synth_kwargs)
        return derive(Path(tmp), Path(out_dir))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m handover_synth.telco_c",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--subscribers", type=int, help="generate a legacy export of this size")
    ap.add_argument("--from-legacy", type=Path, help="derive from an existing legacy_bss export")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)
    if bool(args.subscribers) == bool(args.from_legacy):
        ap.error("give exactly one of --subscribers or --from-legacy")
    if args.from_legacy:
        if args.from_legacy.resolve() == args.out.resolve():
            ap.error("--out must differ from --from-legacy")
        info = derive(args.from_legacy, args.out)
    else:
        info = generate(args.out, args.subscribers, seed=args.seed)
    for table, meta in info["tables"].items():
        print(f"{table}: {meta['rows']:,} rows ({meta['file']})", file=sys.stderr)
    print(
        f"no manifest (as received): write one with `handover manifest --system {SYSTEM} "
        f'--source-dir {args.out} --exported-at "{info["exported_at"]}"`',
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
