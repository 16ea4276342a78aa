"""The identity side of the migration's customer resolution (handover.stages.identity):
survivors matched to customers the target already has, records merged because they share a
key, identity's second rule (name + birth date), and the person map written to the books."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import pyarrow as pa

from handover.config.model import SourceConfig
from handover.core.errors import SourceError
from handover.db import ledger

log = logging.getLogger("handover")


def rescue_by_name_birth(
    cfg: SourceConfig,
    rescue_parts: list[pd.DataFrame],
    kept: Any,
    keys: pa.Array,
    failed: Any,
    losers: list,
    survivors: list,
    rules_of: dict[str, str],
    matched_of: dict[str, str],
    persons: list,
) -> tuple[Any, dict[str, tuple[str, str]], dict[str, int]]:
    """Identity's second rule: parents without a resident ID merged into the one target
    customer with their name and birth date. Extends losers, survivors, rules_of,
    matched_of and persons in place; returns (failed, rescued, source row per key)."""
    import numpy as np

    from handover.stages import identity

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
    return failed, rescued, rows_of


def record_persons(
    cfg: SourceConfig,
    run_id: str,
    persons: list,
    decisions: list | None,
    matched_of: dict[str, str],
    rules_of: dict[str, str],
    adopt: dict[str, list[str]],
    rescued: dict[str, tuple[str, str]],
) -> dict[str, Any]:
    """The person map and the field conflicts, in the books before anything is loaded."""
    from handover.protection.fields import load_keyring
    from handover.stages import identity, identity_survivorship

    out: dict[str, Any] = {}
    with ledger.connect() as conn, conn.transaction():
        out["persons"] = identity.record_persons(
            conn, cfg, load_keyring(), run_id, persons, matched_of
        )
        out["field_conflicts_recorded"] = identity_survivorship.record_conflicts(
            conn, cfg.system, run_id, decisions or []
        )
    out["fields_adopted"] = sum(len(v) for v in adopt.values())
    out["existing_customers"] = sum(1 for r in rules_of.values() if r == identity.EXISTING)
    out["matched_by_name_birth"] = len(rescued)
    return out


def match_existing(
    cfg, kept: pa.Table, failed, losers: list, survivors: list, key: str, ident: dict
) -> tuple[list, list, dict, list, list, dict]:
    """Survivors of this export whose person is already a target customer under another id
    (handover.stages.identity): merged into it (rule EXISTING_CUSTOMER), and their own losers
    with them; or, with `on_match: link`, linked to it (both records kept, one person).
    Returns (losers, their survivors, rule per loser, person-map entries, field conflicts,
    the matched target customer per export key)."""
    import numpy as np

    from handover.config.identity import version_fields
    from handover.protection.fields import load_keyring
    from handover.stages import identity, identity_survivorship

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
            for _, src, _, _ in identity_survivorship.compared_fields(cfg)
            if src in kept.column_names
        }
        conflicts = identity_survivorship.field_conflicts(conn, cfg, ring, matched, values)
        version = version_fields(cfg)
        versions = (
            {k: kept.column(version[0])[i].as_py() for k, i in where.items()}
            if version and version[0] in kept.column_names
            else {}
        )
        decisions = identity_survivorship.decide(conn, cfg, conflicts, versions)
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


def same_key_merges(kept: pa.Table, failed, dup_key, key: str, person: str) -> list[int]:
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
