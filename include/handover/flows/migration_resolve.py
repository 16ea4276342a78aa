"""The migration's customer resolution: the parent registry every child partition checks
against, built from the whole export's parent tables (validated, de-duplicated, matched to
who the target already knows) before any partition is cleansed."""

from __future__ import annotations

import logging

import pandas as pd
import pyarrow as pa

from handover.core.errors import SourceError
from handover.db import ledger
from handover.flows.common import _config, _lake, parent_tables
from handover.flows.partitioner import _arrow_frame, _concat, _slices
from handover.storage.lake import safe_run_id

log = logging.getLogger("handover")


def resolve_customers(ctx: dict) -> dict:
    """Decide the fate of every parent row (validation + de-duplication) across all partitions.

    Survivorship needs the whole table at once, so it runs once per run, before the
    mapped cleanse; children then learn from this registry whether their parent lives.
    """
    import numpy as np
    import pyarrow.compute as pc

    from handover.stages.cleanse import dedupe_pairs, validate

    cfg = _config(ctx["system"])
    run_id, lake = ctx["run_id"], _lake()
    exported_at = pd.Timestamp(ctx["exported_at"])
    summary = {}
    for table in parent_tables(cfg):
        spec, rules = cfg.table(table), cfg.rules(table)
        key = spec["key"]
        # Only the columns survivorship reads are kept across partitions (the key, the
        # dedupe key and its order), as Arrow: memory grows by three columns of the table,
        # not all; each partition is validated a slice at a time, as cleanse does.
        dedupe = rules.get("dedupe") or {}
        from handover.stages import identity

        ident = identity.settings(cfg)
        ident = ident if ident and ident["table"] == table else None
        compared = [src for _, src, _, _ in identity.compared_fields(cfg)] if ident else []
        version = identity.version_fields(cfg) if ident else None
        compared += [version[0]] if version else []
        keep = list(
            dict.fromkeys(
                [
                    key,
                    *(dedupe[c] for c in ("key", "order_by") if c in dedupe),
                    *([ident["id_column"]] if ident else []),
                    *compared,
                ]
            )
        )
        typed_parts, failed_parts, dupkey_parts, rescue_parts = [], [], [], []
        name_birth = (
            identity.name_birth_fields(cfg) if ident and "name_birth" in ident["match"] else None
        )
        for k in lake.list(f"runs/{safe_run_id(run_id)}/comply/{table}/"):
            _, dup, frames = _slices(lake, k, key)
            for start, raw in frames:
                typed, verdict = validate(
                    raw,
                    rules,
                    key=key,
                    exported_at=exported_at,
                    duplicate_key=None if dup is None else dup[start : start + len(raw)],
                )
                frame = typed[keep].copy()
                frame["_source_row"] = (
                    raw["_source_row"].to_numpy()
                    if "_source_row" in raw.columns
                    else np.arange(start, start + len(raw))
                )
                # fields a row fills: survivorship `most_complete`
                frame["_filled"] = (
                    raw.drop(columns=["_source_row"], errors="ignore")
                    .notna()
                    .sum(axis=1)
                    .to_numpy(dtype=np.int32)
                )
                typed_parts.append(_arrow_frame(frame))
                failed_parts.append(verdict.failed)
                dupkey_parts.append(verdict.reason == "DUPLICATE_KEY")
                no_id = (
                    (verdict.reason == "MISSING_FIELD") & (verdict.field == ident["id_column"])
                    if name_birth
                    else None
                )
                if no_id is not None and no_id.any():  # the second rule's candidates
                    rescue_parts.append(
                        identity.name_birth_candidates(
                            raw[no_id], rules, key, exported_at, ident["id_column"], name_birth
                        )
                    )
                del raw, typed, frame
        if typed_parts:
            kept = _concat(typed_parts)
            keys = kept.column(key).combine_chunks().cast(pa.string())
        else:
            kept, keys = None, pa.array([], pa.string())
        del typed_parts
        failed = np.concatenate(failed_parts) if failed_parts else np.zeros(0, dtype=bool)
        dup_key = np.concatenate(dupkey_parts) if dupkey_parts else np.zeros(0, dtype=bool)
        losers, survivors = (
            dedupe_pairs(kept, failed, rules, key) if dedupe and kept is not None else ([], [])
        )
        merges = dedupe.get("action", "merge") == "merge"
        same_key = (
            _same_key_merges(kept, failed, dup_key, key, dedupe["key"])
            if dedupe and merges and kept is not None
            else []
        )
        rules_of: dict[str, str] = dict.fromkeys(losers, "SAME_PERSON")
        persons = decisions = None
        matched_of: dict[str, str] = {}
        if ident and kept is not None and merges:
            losers, survivors, rules_of, persons, decisions, matched_of = _match_existing(
                cfg, kept, failed, losers, survivors, key, ident
            )
        rescued: dict[str, tuple[str, str]] = {}
        rows_of: dict[str, int] = {}
        if rescue_parts and merges and persons is not None and ident["on_match"] == "merge":
            cands = pd.concat(rescue_parts, ignore_index=True)
            with ledger.connect() as conn:
                rescued, ambiguous = identity.match_name_birth(
                    conn, cfg, cands, ours=set(keys.to_pylist()) - {None}
                )
            # merged into the one target customer with their name and birth date: not
            # quarantined for the missing ID; their children follow that customer
            rows_of = dict(zip(cands["key"], cands["_source_row"], strict=True))
            back = set(
                np.flatnonzero(
                    np.isin(
                        kept.column("_source_row").to_numpy(zero_copy_only=False),
                        [rows_of[k] for k in rescued],
                    )
                )
            )
            failed = failed.copy()
            failed[sorted(back)] = False
            for k, (target, bidx) in rescued.items():
                losers.append(k)
                survivors.append(target)
                rules_of[k] = identity.NAME_BIRTH
                matched_of[k] = target
                persons.append((k, bidx, "merged_existing", target, "name_birth"))
            if rescued or ambiguous:
                log.info(
                    "identity: %d customers without a resident ID merged into the one "
                    "target customer with their name and birth date; %d left "
                    "quarantined (more than one target customer has them)",
                    len(rescued),
                    ambiguous,
                )
        del kept
        is_loser = (
            pc.fill_null(
                pc.is_in(
                    keys,
                    value_set=pa.array(sorted(x for x in losers if x is not None), pa.string()),
                ),
                False,
            ).to_numpy(zero_copy_only=False)
            if losers
            else np.zeros(len(keys), dtype=bool)
        )
        if merges:  # a merged record's children follow its survivor: its key stays valid
            fate = np.where(failed, "quarantined", np.where(is_loser, "merged", "valid"))
            into = dict(zip(losers, survivors, strict=True))
            key_list = keys.to_pylist()
            merged_into = (
                pa.array(
                    [into.get(k) if m else None for k, m in zip(key_list, is_loser, strict=True)],
                    pa.string(),
                )
                if losers
                else pa.nulls(len(keys), pa.string())
            )
            merge_rule = (
                pa.array(
                    [
                        rules_of.get(k) if m else None
                        for k, m in zip(key_list, is_loser, strict=True)
                    ],
                    pa.string(),
                )
                if losers
                else pa.nulls(len(keys), pa.string())
            )
        else:
            fate = np.where(~failed & ~is_loser, "valid", "quarantined")
            merged_into = merge_rule = pa.nulls(len(keys), pa.string())
        excluded = set()
        for k in lake.list(f"runs/{safe_run_id(run_id)}/comply/_excluded/{table}/"):
            ex = lake.read_table(k, columns=[key]).to_pandas()[key]
            excluded |= {v.strip() for v in ex.dropna()}
        registry = pa.concat_tables(
            [
                pa.table(
                    {
                        "key": keys,
                        "fate": pa.array(fate, pa.string()),
                        "duplicate_loser": pa.array(is_loser, pa.bool_()),
                        "merged_into": merged_into,
                        "merge_rule": merge_rule,
                    }
                ),
                pa.table(
                    {
                        "key": pa.array(sorted(excluded), pa.string()),
                        "fate": pa.array(["excluded"] * len(excluded), pa.string()),
                        "duplicate_loser": pa.array([False] * len(excluded), pa.bool_()),
                        "merged_into": pa.nulls(len(excluded), pa.string()),
                        "merge_rule": pa.nulls(len(excluded), pa.string()),
                    }
                ),
            ]
        )
        registry = registry.filter(pc.is_valid(registry.column("key")))
        lake.write_table(f"runs/{safe_run_id(run_id)}/resolve/{table}.parquet", registry)
        lake.write_table(
            f"runs/{safe_run_id(run_id)}/resolve/{table}.same_key.parquet",
            pa.table({"_source_row": pa.array(same_key, pa.int64())}),
        )
        # source rows without a resident ID merged by the second rule (name + birth date)
        lake.write_table(
            f"runs/{safe_run_id(run_id)}/resolve/{table}.name_birth.parquet",
            pa.table(
                {"_source_row": pa.array(sorted(int(rows_of[k]) for k in rescued), pa.int64())}
            ),
        )
        # the fields each merged record wins of the target's customer (survivorship): key
        # and field names only; cleanse sends those records on through map, protect, gates
        adopt: dict[str, list[str]] = {}
        for k, _, field, _, outcome in decisions or []:
            if outcome == "source":
                adopt.setdefault(k, []).append(field)
        lake.write_table(
            f"runs/{safe_run_id(run_id)}/resolve/{table}.adopt.parquet",
            pa.table(
                {
                    "key": pa.array(sorted(adopt), pa.string()),
                    "into": pa.array([matched_of[k] for k in sorted(adopt)], pa.string()),
                    "fields": pa.array(
                        [",".join(sorted(adopt[k])) for k in sorted(adopt)], pa.string()
                    ),
                }
            ),
        )
        valid_mask = fate == "valid"
        summary[table] = {
            "valid": int(valid_mask.sum()),
            "quarantined": int(failed.sum()),
            "duplicates": len(losers),
            "same_key": len(same_key),
            "merged": merges,
            "excluded": len(excluded),
        }
        if persons is not None:  # the person map, in the books before anything is loaded
            from handover.protection.fields import load_keyring

            with ledger.connect() as conn, conn.transaction():
                summary[table]["persons"] = identity.record_persons(
                    conn, cfg, load_keyring(), run_id, persons, matched_of
                )
                summary[table]["field_conflicts_recorded"] = identity.record_conflicts(
                    conn, cfg.system, run_id, decisions or []
                )
            summary[table]["fields_adopted"] = sum(len(v) for v in adopt.values())
            summary[table]["existing_customers"] = sum(
                1 for r in rules_of.values() if r == identity.EXISTING
            )
            summary[table]["matched_by_name_birth"] = len(rescued)
    log.info("resolved parents: %s", summary)
    return summary


def _match_existing(
    cfg, kept: pa.Table, failed, losers: list, survivors: list, key: str, ident: dict
) -> tuple[list, list, dict, list, list, dict]:
    """Survivors of this export whose person is already a target customer under another id
    (handover.stages.identity): merged into it (rule EXISTING_CUSTOMER), and their own losers
    with them; or, with `on_match: link`, linked to it (both records kept, one person).
    Returns (losers, their survivors, rule per loser, person-map entries, field conflicts,
    the matched target customer per export key)."""
    import numpy as np

    from handover.protection.fields import load_keyring
    from handover.stages import identity

    ring = load_keyring()
    keys = kept.column(key).combine_chunks().cast(pa.string()).to_pylist()
    ids = kept.column(ident["id_column"]).combine_chunks().cast(pa.string()).to_pylist()
    lost = set(losers)
    valid = ~np.asarray(failed, dtype=bool)
    cand = [i for i in range(len(keys)) if valid[i] and keys[i] is not None and keys[i] not in lost]
    cand_keys = [keys[i] for i in cand]
    bidx = identity.blind_indexes(cfg, ring, [ids[i] for i in cand])
    with ledger.connect() as conn:
        taken = identity.taken_keys(conn, cfg, cand_keys, bidx)
        if taken:  # never write one person over another
            raise SourceError(
                f"{len(taken)} customer id(s) of this export are already customers of another "
                f"system in the target, other persons (handover_meta.person_map); loading "
                f"them would overwrite those customers. Give this system's ids a prefix in "
                f"mapping.yaml (e.g. a concat transform) before migrating"
            )
        matched = identity.match_existing(
            conn, cfg, cand_keys, bidx, ours={k for k in keys if k is not None}
        )
        if matched and ident["on_match"] == "link":
            identity.require_linkable(conn, cfg)
            linked = matched
            bidx_of = dict(zip(cand_keys, bidx, strict=True))
            entries = [(k, bidx_of[k], "linked" if k in linked else "new", k) for k in cand_keys]
            entries += [
                (loser, bidx_of.get(s), "merged_same_person", s)
                for loser, s in zip(losers, survivors, strict=True)
            ]
            log.info(
                "identity: %d customers of this export are also target customers "
                "(linked to them by blind index: both records kept, one person)",
                len(linked),
            )
            return (
                list(losers),
                list(survivors),
                dict.fromkeys(losers, "SAME_PERSON"),
                entries,
                [],
                linked,
            )
        # fields where the export's record says another thing than the target's (kept)
        where = {k: i for i, k in enumerate(keys) if k in matched}
        values = {
            src: {k: kept.column(src)[i].as_py() for k, i in where.items()}
            for _, src, _, _ in identity.compared_fields(cfg)
            if src in kept.column_names
        }
        conflicts = identity.field_conflicts(conn, cfg, ring, matched, values)
        version = identity.version_fields(cfg)
        versions = (
            {k: kept.column(version[0])[i].as_py() for k, i in where.items()}
            if version and version[0] in kept.column_names
            else {}
        )
        decisions = identity.decide(conn, cfg, conflicts, versions)
    into = dict(zip(losers, survivors, strict=True))
    rules_of = dict.fromkeys(losers, "SAME_PERSON")
    for loser, survivor in into.items():  # a survivor merged away takes its losers along
        if survivor in matched:
            into[loser] = matched[survivor]
    for k, t in matched.items():
        into[k] = t
        rules_of[k] = identity.EXISTING
    bidx_of = dict(zip(cand_keys, bidx, strict=True))
    entries = [
        (k, bidx_of[k], "merged_existing" if k in matched else "new", matched.get(k, k))
        for k in cand_keys
    ]
    for loser, survivor in zip(losers, survivors, strict=True):
        entries.append((loser, bidx_of.get(survivor), "merged_same_person", into[loser]))
    if matched:
        log.info(
            "identity: %d customers of this export are already target customers "
            "(merged into them by blind index)",
            len(matched),
        )
    return list(into), list(into.values()), rules_of, entries, decisions, matched


def _same_key_merges(kept: pa.Table, failed, dup_key, key: str, person: str) -> list[int]:
    """Source rows flagged DUPLICATE_KEY (and nothing else) whose key's first record is the
    same person (same dedupe key): one customer written twice (` c10012080 ` beside
    `C10012080` once keys are normalised), merged into it rather than quarantined."""
    import numpy as np

    only_dup = np.asarray(dup_key, dtype=bool)
    if not only_dup.any():
        return []
    frame = kept.select([key, person, "_source_row"]).to_pandas()
    firsts = frame[~np.asarray(failed, dtype=bool)].drop_duplicates(key).set_index(key)[person]
    dups = frame[only_dup]
    same = dups[person].notna() & (dups[key].map(firsts) == dups[person])
    return [int(r) for r in dups.loc[same, "_source_row"]]
