"""A synthetic acquirer: a target CRM that already holds customers of its own.

`seed(dsn, export_dir)` writes into the target's `crm.customer` the acquirer's customers,
ids of its own shape (`K88-00412`): a share of them are persons of the acquired export
(the same resident ID, in its 18-digit form, whatever form the export uses; a different
phone number, name written another way, another address: conflicting fields), the rest
are nobody in the export. Every seeded customer is in `handover_meta.person_map` under
source system `acquirer` (the target's own system of record). Protected fields are
encrypted and blind-indexed with the run's keyring exactly as a migration writes them.

Every fifth customer who is also in the export holds a withdrawn marketing consent in
the acquirer's system (`crm.consent`, ids `KC-…`): whatever the export says, the
withdrawal holds for the merged customer (`crm.consent_effective`).

Next to nothing else it writes `acquirer_truth.csv` into `out`: for every seeded customer
its key and, for those who are persons of the export, the export's customer key
(`acquired_key`), which fields conflict, and whether it holds the withdrawn consent.
Nothing personal is in the truth file (customer ids only).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import cast

import pandas as pd

SYSTEM = "acquirer"
TRUTH = "acquirer_truth.csv"


def seed(
    dsn: str,
    export_dir: Path,
    out: Path,
    *,
    share: float = 0.1,
    others: int = 40,
    seed_value: int = 7,
    ring=None,
) -> dict[str, int]:
    import numpy as np
    import psycopg
    import pyarrow as pa

    from handover.core.validators import resident_id_birth_gender, upgrade_resident_ids
    from handover.db import ledger
    from handover.protection.fields import (
        blind_index,
        encrypt_values,
        field_domain,
        load_keyring,
        mask_msisdn,
        mask_resident_id,
    )
    from handover.stages import identity

    ring = ring or load_keyring()
    rng = np.random.default_rng(seed_value)
    subs = pd.read_csv(export_dir / "subscribers.csv", dtype=str, keep_default_na=False)
    truth = pd.read_csv(export_dir / "truth.csv", dtype=str, keep_default_na=False)
    bad = set(truth.loc[truth["table"] == "subscribers", "key"])
    subs["cust_id"] = subs["cust_id"].str.strip().str.upper()
    ids = upgrade_resident_ids(pa.array(subs["id_number"].str.strip().str.upper().tolist()))[
        0
    ].to_pylist()
    subs["rid"] = ids
    unique = ~subs["rid"].duplicated(keep=False)
    pool = subs[unique & ~subs["cust_id"].isin(bad) & subs["rid"].str.len().eq(18)]
    n = max(1, int(len(pool) * share))
    chosen = pool.iloc[rng.choice(len(pool), size=n, replace=False)]
    rows, truth_rows = [], []
    for i, r in enumerate(chosen.itertuples()):
        conflict = []
        msisdn = r.msisdn.strip()
        if i % 3 == 0:  # the acquirer knows another number
            msisdn = "139" + f"{rng.integers(0, 10**8):08d}"
            conflict.append("msisdn")
        name = r.name.strip()
        if i % 4 == 0:
            name = name + "·" if "·" not in name else name.replace("·", ".")
            conflict.append("full_name")
        address = r.address
        if i % 2 == 1 and r.address.strip():  # the acquirer has an older address
            address = f"上海市浦东新区张杨路{100 + i}号"
            conflict.append("address")
        key = f"K88-{i:05d}"
        rows.append((key, name, r.rid, msisdn, address, r.city))
        truth_rows.append(
            {
                "acquirer_key": key,
                "acquired_key": r.cust_id,
                "conflicts": "|".join(conflict),
                "marketing_withdrawn": "1" if i % 5 == 0 else "",
            }
        )
    exported = set(subs["rid"])
    for j in range(others):  # persons the export does not hold
        while True:
            rid = _random_id(rng)
            if rid not in exported:
                break
        key = f"K88-{n + j:05d}"
        rows.append((key, f"客户{j}", rid, "138" + f"{rng.integers(0, 10**8):08d}", "", "北京市"))
        truth_rows.append(
            {"acquirer_key": key, "acquired_key": "", "conflicts": "", "marketing_withdrawn": ""}
        )
    rid_arr = pa.array([r[2] for r in rows])
    birth, gender = resident_id_birth_gender(rid_arr)
    id_dom, ms_dom = field_domain("customer", "id_number"), field_domain("customer", "msisdn")
    enc = encrypt_values([r[2] for r in rows], ring, id_dom.encode())
    bidx = blind_index([r[2] for r in rows], ring, id_dom)
    ms_bidx = blind_index([r[3] for r in rows], ring, ms_dom)
    with psycopg.connect(dsn) as conn:
        ledger.ensure_schema(conn)
        with conn.transaction():
            for k, row in enumerate(rows):
                conn.execute(
                    "INSERT INTO crm.customer (customer_id, full_name, id_number_enc, "
                    "id_number_key_id, id_number_bidx, id_number_masked, gender, birth_date, "
                    "msisdn, msisdn_bidx, msisdn_masked, address, city, opened_on, status, "
                    "source_updated_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,"
                    "'2015-03-01','active','2025-06-30 12:00:00') ON CONFLICT DO NOTHING",
                    (
                        row[0],
                        row[1],
                        enc[k],
                        ring.active_key_id,
                        bidx[k],
                        mask_resident_id(row[2]),
                        {"男": "M", "女": "F"}[gender[k].as_py()],
                        birth[k].as_py(),
                        row[3],
                        ms_bidx[k],
                        mask_msisdn(row[3]),
                        row[4] or None,
                        row[5] or None,
                    ),
                )
                if k < n and k % 5 == 0:  # the acquirer holds a withdrawn marketing consent
                    conn.execute(
                        "INSERT INTO crm.consent (consent_id, customer_id, purpose, granted, "
                        "granted_at) VALUES (%s, %s, 'marketing', false, '2024-05-01') "
                        "ON CONFLICT DO NOTHING",
                        (f"KC-{k:05d}", row[0]),
                    )
                conn.execute(
                    "INSERT INTO handover_meta.person_map (source_system, source_key, "
                    "person_id, target_customer_id, decision, rule) VALUES (%s,%s,%s,%s,"
                    "'target','seed') ON CONFLICT DO NOTHING",
                    # every seeded row has a resident ID, so its blind index is never None
                    (SYSTEM, row[0], identity.person_id(ring, cast(str, bidx[k])), row[0]),
                )
    out.mkdir(parents=True, exist_ok=True)
    with open(out / TRUTH, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(
            fh, fieldnames=["acquirer_key", "acquired_key", "conflicts", "marketing_withdrawn"]
        )
        w.writeheader()
        w.writerows(truth_rows)
    return {"seeded": len(rows), "also_in_export": n}


def _random_id(rng) -> str:
    from handover.core.validators import id_check_digit

    body = (
        f"110105{rng.integers(1950, 2000)}{rng.integers(1, 13):02d}"
        f"{rng.integers(1, 29):02d}{rng.integers(0, 1000):03d}"
    )
    return body + id_check_digit(body)


def main(argv: list[str] | None = None) -> int:
    """`python -m handover_synth.acquirer --export DIR`: seed the configured target (the
    demo's embedded PostgreSQL, or HANDOVER_TARGET_DSN) with an acquirer's own customers,
    some of them persons of that export; the truth file goes next to the export."""
    import argparse

    from handover.config.connections import target_dsn

    ap = argparse.ArgumentParser(prog="python -m handover_synth.acquirer", description=main.__doc__)
    ap.add_argument("--export", required=True, type=Path, help="the acquired export's folder")
    ap.add_argument(
        "--out",
        type=Path,
        help="where acquirer_truth.csv goes (default: the export's parent folder)",
    )
    ap.add_argument(
        "--share",
        type=float,
        default=0.1,
        help="share of the export's persons the acquirer already holds",
    )
    ap.add_argument("--others", type=int, default=40, help="acquirer customers not in it")
    args = ap.parse_args(argv)
    if not (args.export / "subscribers.csv").is_file():
        ap.error(
            f"{args.export}: no subscribers.csv; give the folder of a synthetic export "
            "(python -m handover_synth.legacy_bss --out DIR)"
        )
    out = seed(
        target_dsn(),
        args.export,
        args.out or args.export.parent,
        share=args.share,
        others=args.others,
    )
    print(
        f"seeded {out['seeded']} acquirer customers ({out['also_in_export']} of them persons "
        f"of the export); truth: {(args.out or args.export.parent) / TRUTH}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
