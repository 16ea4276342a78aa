"""telco_c's answer key: every row's fate, and the same person exported twice.

`_truth_frames` takes legacy_bss's truth over; `_same_person_twice` adds a second record
under a new key for a share of clean customers (15- and 18-digit ID) and moves children.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd

from handover_synth.telco_c_spec import (
    CHILDREN,
    MONEY,
    MOVABLE,
    MOVED_CHILD_SHARE,
    SAME_PERSON_SHARE,
)
from handover_synth.telco_c_text import (
    first_generation,
)


# -------------------------------------------------------------------- the answer key
def _truth_frames(legacy: Path, frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Every row's fate as legacy_bss's answer key has it (rows it does not list: loaded)."""
    given = pd.read_csv(legacy / "truth.csv", dtype=str, keep_default_na=False)
    out = {}
    for table, df in frames.items():
        key_col = df.columns[0]
        t = pd.DataFrame(
            {
                "key": df[key_col],
                "defect": "",
                "expected_outcome": "loaded",
                "expected_reason": "",
                "merged_into": "",
                "reparented_to": "",
                "amount_yuan": "",
            }
        )
        mine = given[given["table"] == table].set_index("key")
        hit = t["key"].isin(mine.index)
        for col in ("defect", "expected_outcome", "expected_reason"):
            t.loc[hit, col] = t.loc[hit, "key"].map(mine[col])
        if table in MONEY:
            t["amount_yuan"] = df[MONEY[table]].map(
                lambda v: f"{Decimal(int(v)).scaleb(-2):.2f}" if v.strip() else ""
            )
        out[table] = t.reset_index(drop=True)
    return out


def _new_keys(rng: np.random.Generator, taken: set[str], k: int) -> list[str]:
    out: list[str] = []
    while len(out) < k:
        key = f"C{int(rng.integers(10_000_000, 90_000_000)):08d}"
        if key not in taken:
            taken.add(key)
            out.append(key)
    return out


def _same_person_twice(
    rng: np.random.Generator,
    frames: dict[str, pd.DataFrame],
    truth: dict[str, pd.DataFrame],
    exported_at: pd.Timestamp,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pick clean customers born 1900-1999 and export each a second time under a new key,
    one record with the 15-digit ID and one with the 18-digit; move some children."""
    subs, st = frames["subscribers"], truth["subscribers"]
    counts = subs["id_number"].map(subs["id_number"].value_counts())
    eligible = np.flatnonzero(
        (
            (st["defect"] == "")
            & (st["expected_outcome"] == "loaded")
            & (counts == 1)
            & subs["id_number"].map(lambda v: bool(first_generation(v)))
        ).to_numpy()
    )
    k = min(len(eligible), max(2, round(SAME_PERSON_SHARE * len(subs))))
    chosen: np.ndarray | list[int] = (
        np.sort(rng.choice(eligible, size=k, replace=False)) if k else []
    )
    taken = set(subs["cust_id"])
    for table in CHILDREN:
        taken |= set(frames[table]["cust_id"])
    new_keys = _new_keys(rng, taken, len(chosen))
    latest = exported_at - pd.Timedelta(hours=1)
    extra_rows, extra_truth = [], []
    moved_to: dict[str, str] = {}  # original key -> second key
    survivor_of: dict[str, str] = {}  # customer key (either record) -> survivor's key
    for i, new in zip(chosen, new_keys, strict=True):
        orig = subs.iloc[i].copy()
        upd = pd.Timestamp(orig["updated_at"])
        shifted = upd + pd.Timedelta(
            days=int(rng.integers(1, 120)), seconds=int(rng.integers(0, 86_400))
        )
        if rng.random() < 0.5 or shifted > latest:  # the second record is the older one
            shifted = upd - (shifted - upd)
        newer = shifted > upd
        extra = orig.copy()
        extra["cust_id"] = new
        extra["updated_at"] = shifted.strftime("%Y-%m-%d %H:%M:%S")
        extra["status"] = "1"
        extra["transfer_objection"] = "0"
        opened = datetime.strptime(orig["open_date"], "%Y-%m-%d")
        extra["open_date"] = (
            (opened - pd.Timedelta(days=int(rng.integers(0, 900)))).strftime("%Y-%m-%d")
            if opened.year > 1990
            else orig["open_date"]
        )
        short = first_generation(orig["id_number"])
        if rng.random() < 0.5:  # which of the two records carries the old ID
            subs.at[subs.index[i], "id_number"] = short
            orig_defect, extra_defect = "SAME_PERSON_15", "SAME_PERSON_18"
        else:
            extra["id_number"] = short
            orig_defect, extra_defect = "SAME_PERSON_18", "SAME_PERSON_15"
        survivor, loser = (new, orig["cust_id"]) if newer else (orig["cust_id"], new)
        st.loc[i, "defect"] = orig_defect
        if loser == orig["cust_id"]:
            st.loc[i, ["expected_outcome", "expected_reason", "merged_into"]] = [
                "merged",
                "SAME_PERSON",
                survivor,
            ]
        extra_rows.append(extra)
        extra_truth.append(
            {
                "key": new,
                "defect": extra_defect,
                "expected_outcome": "merged" if loser == new else "loaded",
                "expected_reason": "SAME_PERSON" if loser == new else "",
                "merged_into": survivor if loser == new else "",
                "reparented_to": "",
                "amount_yuan": "",
            }
        )
        moved_to[orig["cust_id"]] = new
        survivor_of[orig["cust_id"]] = survivor_of[new] = survivor
    # the second records at random places in the file
    if extra_rows:
        place = np.concatenate(
            [
                np.arange(len(subs), dtype=float),
                rng.integers(0, len(subs) + 1, len(extra_rows)) - 0.5,
            ]
        )
        order = np.argsort(place, kind="stable")
        subs = (
            pd.concat([subs, pd.DataFrame(extra_rows)], ignore_index=True)
            .iloc[order]
            .reset_index(drop=True)
        )
        st = (
            pd.concat([st, pd.DataFrame(extra_truth)], ignore_index=True)
            .iloc[order]
            .reset_index(drop=True)
        )
    frames["subscribers"], truth["subscribers"] = subs, st
    # some children under the second key; every loaded child ends under the survivor
    for table in CHILDREN:
        df, t = frames[table], truth[table]
        owner = df["cust_id"].copy()
        if table in MOVABLE:
            for orig_key, new in moved_to.items():
                rows = np.flatnonzero(owner.to_numpy() == orig_key)
                if not len(rows):
                    continue
                move = rows[rng.random(len(rows)) < MOVED_CHILD_SHARE]
                if not len(move):
                    move = rows[:1]
                owner.iloc[move] = new
        df["cust_id"] = owner
        goes = owner.map(survivor_of).fillna("")
        hit = (goes != "") & (goes != owner) & (t["expected_outcome"] == "loaded")
        t.loc[hit, "reparented_to"] = goes[hit]
        t.loc[hit & (t["defect"] == ""), "defect"] = "PARENT_MERGED"
    return subs, st
