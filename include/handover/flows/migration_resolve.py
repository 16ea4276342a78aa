"""The migration's customer resolution: the parent registry every child partition checks
against, built from the whole export's parent tables (validated, de-duplicated, matched to
who the target already knows) before any partition is cleansed."""

from __future__ import annotations

import logging
from typing import Any, cast

import pandas as pd
import pyarrow as pa

from handover.config.model import SourceConfig
from handover.core.contracts import RunContext
from handover.flows.common import _config, _lake, parent_tables
from handover.flows.migration_identity import (
    match_existing,
    record_persons,
    rescue_by_name_birth,
    same_key_merges,
)
from handover.flows.partitioner import _arrow_frame, _concat, _slices
from handover.storage.lake import Lake, safe_run_id

log = logging.getLogger("handover")


def resolve_customers(ctx: RunContext) -> dict[str, dict[str, Any]]:
    """Decide the fate of every parent row (validation + de-duplication) across all partitions.

    Survivorship needs the whole table at once, so it runs once per run, before the
    mapped cleanse; children then learn from this registry whether their parent lives.
    """
    cfg = _config(ctx["system"])
    run_id, lake = ctx["run_id"], _lake()
    exported_at = pd.Timestamp(ctx["exported_at"])
    summary = {}
    for table in parent_tables(cfg):
        summary[table] = _resolve_table(cfg, lake, run_id, exported_at, table)
    log.info("resolved parents: %s", summary)
    return summary


def _resolve_table(
    cfg: SourceConfig, lake: Lake, run_id: str, exported_at: pd.Timestamp, table: str
) -> dict[str, Any]:
    """One parent table's registry, side files and person map; returns its summary."""
    import numpy as np

    from handover.stages.cleanse import dedupe_pairs

    spec, rules = cfg.table(table), cfg.rules(table)
    key = spec["key"]
    dedupe = rules.get("dedupe") or {}
    ident, keep, name_birth = _survivorship_columns(cfg, table, key, dedupe)
    typed_parts, failed_parts, dupkey_parts, rescue_parts = _validate_parents(
        lake,
        run_id,
        table,
        rules,
        key,
        exported_at,
        keep,
        ident["id_column"] if ident else None,
        name_birth,
    )
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
        same_key_merges(kept, failed, dup_key, key, dedupe["key"])
        if dedupe and merges and kept is not None
        else []
    )
    rules_of: dict[str, str] = dict.fromkeys(losers, "SAME_PERSON")
    persons = decisions = None
    matched_of: dict[str, str] = {}
    if ident and kept is not None and merges:
        losers, survivors, rules_of, persons, decisions, matched_of = match_existing(
            cfg, kept, failed, losers, survivors, key, ident
        )
    rescued: dict[str, tuple[str, str]] = {}
    rows_of: dict[str, int] = {}
    if (
        rescue_parts
        and merges
        and persons is not None
        and ident is not None  # persons come with identity settings
        and ident["on_match"] == "merge"
    ):
        failed, rescued, rows_of = rescue_by_name_birth(
            cfg, rescue_parts, kept, keys, failed, losers, survivors, rules_of, matched_of, persons
        )
    del kept
    is_loser, fate, merged_into, merge_rule = _fates(
        keys, failed, losers, survivors, rules_of, merges
    )
    excluded = _excluded_keys(lake, run_id, table, key)
    adopt = _write_resolution(
        lake,
        run_id,
        table,
        pa.table(
            {
                "key": keys,
                "fate": pa.array(fate, pa.string()),
                "duplicate_loser": pa.array(is_loser, pa.bool_()),
                "merged_into": merged_into,
                "merge_rule": merge_rule,
            }
        ),
        excluded,
        same_key,
        sorted(int(rows_of[k]) for k in rescued),
        decisions,
        matched_of,
    )
    valid_mask = fate == "valid"
    summary: dict[str, Any] = {
        "valid": int(valid_mask.sum()),
        "quarantined": int(failed.sum()),
        "duplicates": len(losers),
        "same_key": len(same_key),
        "merged": merges,
        "excluded": len(excluded),
    }
    if persons is not None:  # the person map, in the books before anything is loaded
        summary.update(
            record_persons(cfg, run_id, persons, decisions, matched_of, rules_of, adopt, rescued)
        )
    return summary


def _survivorship_columns(
    cfg: SourceConfig, table: str, key: str, dedupe: dict
) -> tuple[dict | None, list[str], Any]:
    """The identity settings if they apply to this table, the columns survivorship reads,
    and the name + birth date fields of identity's second rule (None without it)."""
    from handover.config.identity import version_fields
    from handover.stages import identity, identity_survivorship

    # Only the columns survivorship reads are kept across partitions (the key, the
    # dedupe key and its order), as Arrow: memory grows by three columns of the table,
    # not all; each partition is validated a slice at a time, as cleanse does.
    ident = identity.settings(cfg)
    ident = ident if ident and ident["table"] == table else None
    compared = [src for _, src, _, _ in identity_survivorship.compared_fields(cfg)] if ident else []
    version = version_fields(cfg) if ident else None
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
    name_birth = (
        identity.name_birth_fields(cfg) if ident and "name_birth" in ident["match"] else None
    )
    return ident, keep, name_birth


def _validate_parents(
    lake: Lake,
    run_id: str,
    table: str,
    rules: dict,
    key: str,
    exported_at: pd.Timestamp,
    keep: list[str],
    id_column: str | None,
    name_birth: Any,
) -> tuple[list[pa.Table], list[Any], list[Any], list[pd.DataFrame]]:
    """Validate the table's complied partitions a slice at a time; keep, per slice, the
    columns survivorship reads (Arrow), which rows failed, which were duplicate keys, and
    the candidates of identity's second rule (no resident ID, a name and birth date)."""
    import numpy as np

    from handover.stages import identity
    from handover.stages.cleanse import validate

    typed_parts: list[pa.Table] = []
    failed_parts: list[Any] = []
    dupkey_parts: list[Any] = []
    rescue_parts: list[pd.DataFrame] = []
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
                (verdict.reason == "MISSING_FIELD") & (verdict.field == id_column)
                if name_birth
                else None
            )
            if no_id is not None and no_id.any():  # the second rule's candidates
                rescue_parts.append(
                    identity.name_birth_candidates(
                        raw[no_id], rules, key, exported_at, cast(str, id_column), name_birth
                    )
                )
            del raw, typed, frame
    return typed_parts, failed_parts, dupkey_parts, rescue_parts


def _fates(
    keys: pa.Array,
    failed: Any,
    losers: list,
    survivors: list,
    rules_of: dict[str, str],
    merges: bool,
) -> tuple[Any, Any, pa.Array, pa.Array]:
    """Each parent row's fate (valid, merged, quarantined), whether it lost de-duplication,
    and (merging) the record it was merged into and by which rule."""
    import numpy as np
    import pyarrow.compute as pc

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
                [rules_of.get(k) if m else None for k, m in zip(key_list, is_loser, strict=True)],
                pa.string(),
            )
            if losers
            else pa.nulls(len(keys), pa.string())
        )
    else:
        fate = np.where(~failed & ~is_loser, "valid", "quarantined")
        merged_into = merge_rule = pa.nulls(len(keys), pa.string())
    return is_loser, fate, merged_into, merge_rule


def _excluded_keys(lake: Lake, run_id: str, table: str, key: str) -> set[str]:
    """The keys comply excluded from this table (they enter the registry as `excluded`)."""
    excluded = set()
    for k in lake.list(f"runs/{safe_run_id(run_id)}/comply/_excluded/{table}/"):
        ex = lake.read_table(k, columns=[key]).to_pandas()[key]
        excluded |= {v.strip() for v in ex.dropna()}
    return excluded


def _write_resolution(
    lake: Lake,
    run_id: str,
    table: str,
    decided: pa.Table,
    excluded: set[str],
    same_key: list[int],
    name_birth_rows: list[int],
    decisions: list | None,
    matched_of: dict[str, str],
) -> dict[str, list[str]]:
    """Write the table's registry and its side files (same-key merges, name + birth date
    merges, fields adopted); returns the fields each merged record wins."""
    import pyarrow.compute as pc

    registry = pa.concat_tables(
        [
            decided,
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
        pa.table({"_source_row": pa.array(name_birth_rows, pa.int64())}),
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
    return adopt
