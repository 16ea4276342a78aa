"""Cleanse: normalise, validate and de-duplicate one partition; quarantine what fails.

Rules come from the source system's cleansing.yaml; the validators are built in. Every
row leaves either clean (typed: dates parsed, integers cast, MSISDNs normalised) or in
quarantine with one reason code and the field it concerns. The first failing rule in
REASON_ORDER wins, so a row's reason does not depend on the order of the YAML.

The stage reads in four modules: this one (validate, survivorship, cleanse itself), the
rules and their order (cleanse_rules), the Arrow column forms they run on
(cleanse_columns) and the date parser other stages share (cleanse_dates).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from handover.core.validators import normalise_text, trim_text
from handover.stages.cleanse_columns import ARROW_REFUSED, _arr, _duplicated, _in, _np, _to_arrow
from handover.stages.cleanse_dates import LOCAL_ZONE
from handover.stages.cleanse_rules import COLUMN_RULES, RulePass, _Verdict

META_COLUMNS = ["_source_row"]


@dataclass
class ParentRegistry:
    """Fate of every parent key, decided once for the whole parent table."""

    # Python sets, or Arrow string arrays (the run's registry: no Python object per key).
    valid: set[str] | pa.Array
    quarantined: set[str] | pa.Array
    excluded: set[str] | pa.Array
    # parents merged into another record of their person: key -> survivor's key. They count
    # as valid (in `valid` too); their children are re-parented to the survivor.
    merged: dict[str, str] = field(default_factory=dict)

    def classify(self, keys: pd.Series | pa.Array) -> np.ndarray:
        """Per child row: None (parent fine) or the quarantine reason."""
        try:
            arr = keys if isinstance(keys, pa.Array) else _to_arrow(keys)
            in_valid, in_q, in_x = (
                _in(arr, s) for s in (self.valid, self.quarantined, self.excluded)
            )
            present = pc.is_valid(arr).to_numpy(zero_copy_only=False)
        except ARROW_REFUSED:  # not all text (ints, bytes, mixed objects): per-value path
            # keys or registry not all text: pandas' isin over objects
            keys = pd.Series(keys.to_pylist() if isinstance(keys, pa.Array) else keys, dtype=object)
            in_valid, in_q, in_x = (
                keys.isin(_members(s)).to_numpy()
                for s in (self.valid, self.quarantined, self.excluded)
            )
            present = pd.notna(keys.to_numpy(dtype=object))
        out = np.full(len(keys), None, dtype=object)
        out[~in_valid & in_q] = "PARENT_QUARANTINED"
        out[~in_valid & ~in_q & in_x] = "PARENT_EXCLUDED"
        out[~in_valid & ~in_q & ~in_x & present] = "ORPHAN_RECORD"
        return out


def _members(values: set[str] | pa.Array | pa.ChunkedArray) -> set:
    return set(values.to_pylist()) if isinstance(values, (pa.Array, pa.ChunkedArray)) else values


@dataclass
class CleanseResult:
    clean: pd.DataFrame
    quarantine: pd.DataFrame  # original (raw) row + _reason + _field
    counts: dict[str, int]
    normalised: dict[str, int] = field(default_factory=dict)  # e.g. 15-digit IDs upgraded
    # rows of a person merged into a surviving record: _key, _survivor, _rule
    merged: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(
            {"_key": [], "_survivor": [], "_rule": []}, dtype=object
        )
    )
    # merged records that win some fields of the target's customer (identity
    # survivorship), typed like `clean`: mapped, protected and gated like it
    adopted: pd.DataFrame | None = None


def duplicate_keys(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """DUPLICATE_KEY of a whole partition from its raw key column alone: per row, an earlier
    row has the same key once normalised as validate normalises it."""
    return _duplicated(normalise_text(keys))


def parent_fates(
    parent: ParentRegistry | None, rules: dict, values: pa.Array | pa.ChunkedArray
) -> np.ndarray | None:
    """The parent rules' verdict per row (ParentRegistry.classify) of a whole partition from
    its raw parent-key column, normalised as validate normalises it; None where validate
    would first turn the column into something else (typed, MSISDN, resident ID), so
    validate classifies it itself."""
    if parent is None or not rules.get("parent"):
        return None
    col = rules["parent"]["column"]
    transformed = {
        *rules.get("dates", {}),
        *rules.get("integers", []),
        *rules.get("money", {}),
        *rules.get("decimals", {}),
        *rules.get("msisdn", []),
        *rules.get("phones", {}),
        (rules.get("resident_id") or {}).get("column"),
    }
    if col in transformed:
        return None
    return parent.classify(normalise_text(values))


def validate(
    raw: pd.DataFrame,
    rules: dict,
    *,
    key: str,
    exported_at: pd.Timestamp,
    parent: ParentRegistry | None = None,
    duplicate_key: np.ndarray | None = None,
    parent_fate: np.ndarray | None = None,
) -> tuple[pd.DataFrame, _Verdict]:
    """Normalise and type the partition; return the typed frame and the verdict per row.

    Every rule reads one row, except DUPLICATE_KEY (an earlier row of the partition has the
    key): a caller validating a partition slice by slice passes that mask, computed once
    over the partition's keys (`duplicate_keys`), as `duplicate_key`. Such a caller may
    also pass the parent rules' verdicts, computed once (`parent_fates`): looking keys up
    in the registry builds its hash table each time, ~20 ms a call at 400,000 parents.
    """
    data_cols = [c for c in raw.columns if c not in META_COLUMNS]
    # Free text keeps its characters (trimmed only): NFKC would turn a complaint's "，" into
    # "," and "①" into "1". Redaction folds it for matching (protect.redact_text).
    verbatim = set(rules.get("verbatim", ()))
    norm: dict[str, pa.Array] = {
        c: (trim_text if c in verbatim else normalise_text)(_arr(raw, c)) for c in data_cols
    }
    p = RulePass(
        raw,
        rules,
        key,
        exported_at,
        data_cols,
        duplicate_key,
        _Verdict(len(raw)),
        norm,
        pd.DataFrame(index=raw.index),
    )
    for rule in COLUMN_RULES:
        rule(p)
    if parent is not None and rules.get("parent"):
        _parent_rules(p, parent, parent_fate)
    for col in META_COLUMNS:
        if col in raw.columns:
            p.out[col] = raw[col].to_numpy()
    return p.out, p.verdict


def _parent_rules(p: RulePass, parent: ParentRegistry, parent_fate: np.ndarray | None) -> None:
    """ORPHAN_RECORD, PARENT_QUARANTINED, PARENT_EXCLUDED; children of a merged parent
    follow its survivor."""
    n = len(p.raw)
    out, typed_cols = p.out, p.typed_cols
    col = p.rules["parent"]["column"]
    if parent_fate is None:
        fate = parent.classify(out[col] if col in typed_cols else p.norm[col])
    elif len(parent_fate) != n:
        raise ValueError(f"validate: {len(parent_fate)} parent verdicts for {n} rows")
    else:
        fate = parent_fate
    for reason in ("ORPHAN_RECORD", "PARENT_QUARANTINED", "PARENT_EXCLUDED"):
        p.verdict.fail(fate == reason, reason, col)
    if parent.merged and col not in typed_cols:
        # A child of a record merged into its person's survivor follows the survivor.
        moved = out[col].isin(parent.merged).to_numpy()
        if moved.any():
            out.loc[moved, col] = out.loc[moved, col].map(parent.merged)
            p.verdict.normalised["REPARENTED_TO_SURVIVOR"] = int(moved.sum())


# What str.strip() removes, as a regex class (the running Python's Unicode tables).
_PY_SPACE = "".join(f"\\x{{{c:x}}}" for c in range(0x110000) if chr(c).isspace())
_BLANK = f"^[{_PY_SPACE}]*$"


def record_keys(keys: pd.Series, rows: pd.Series | None = None) -> list[str]:
    """Ledger key per row, as a list: see record_key_array."""
    return record_key_array(keys, rows).to_pylist()


def record_key_array(keys: pd.Series, rows: pd.Series | None = None) -> pa.Array:
    """Ledger key per row: the key if it is text with a non-blank character, else
    "row:<source row>". _record_keys_loop without a Python step per row (its
    str.strip() is matched with the exact character class); a key column that is not
    text, or source rows that are not integers, go through that loop instead.
    """
    rows = pd.Series(range(len(keys))) if rows is None else rows
    if not pd.api.types.is_integer_dtype(rows.dtype) or not (
        keys.dtype == object or isinstance(keys.dtype, (pd.StringDtype, pd.ArrowDtype))
    ):
        return pa.array(_record_keys_loop(keys, rows), pa.string())
    try:
        arr = _to_arrow(keys)
    except ARROW_REFUSED:  # not all text (ints, bytes, mixed objects): per-value path
        return pa.array(_record_keys_loop(keys, rows), pa.string())
    blank = pc.fill_null(pc.match_substring_regex(arr, _BLANK), True)
    fallback = pc.binary_join_element_wise(
        "row:", pc.cast(pa.array(rows.to_numpy(dtype=np.int64)), pa.string()), ""
    )
    return pc.if_else(blank, fallback, arr).cast(pa.string())


def _record_keys_loop(keys: pd.Series, rows: pd.Series) -> list[str]:
    keys = keys.astype(object).where(keys.notna(), None)
    return [
        k if isinstance(k, str) and k.strip() else f"row:{r}"
        for k, r in zip(keys, rows, strict=True)
    ]


def dedupe_losers(
    typed: pd.DataFrame | pa.Table, verdict_failed: np.ndarray, rules: dict, key: str
) -> list:
    """The losers' keys of survivorship (see dedupe_pairs)."""
    return dedupe_pairs(typed, verdict_failed, rules, key)[0]


def dedupe_pairs(
    typed: pd.DataFrame | pa.Table, verdict_failed: np.ndarray, rules: dict, key: str
) -> tuple[list, list]:
    """Survivorship: among valid rows of one person (same dedupe key, e.g. the normalised
    resident ID), one survives; returns (losers' keys, each one's survivor's key).

    The survivor by `keep`: newest / oldest by `order_by`, `first_key` (the smallest key),
    or `most_complete` (most filled fields, `_filled` in `typed`; then newest). Sorted in
    Arrow, nulls last; every row after the first of its group loses. Rows without a dedupe
    key are not one person: they never lose. Arrow, not pandas: a whole parent table's
    three columns as Python objects cost more than the rest of resolve_customers together.
    """
    spec = rules["dedupe"]
    keep = spec["keep"]
    extra = ["_filled"] if keep == "most_complete" else []
    cols = list(dict.fromkeys([key, spec["key"], spec["order_by"], *extra]))
    table = (
        typed.select(cols)
        if isinstance(typed, pa.Table)
        else pa.Table.from_pandas(typed[cols], preserve_index=False)
    )
    cand = table.filter(pa.array(~np.asarray(verdict_failed, dtype=bool)))
    cand = cand.filter(pc.is_valid(cand.column(spec["key"])))
    if cand.num_rows < 2:
        return [], []
    order_by = {
        "newest": [(spec["order_by"], "descending")],
        "oldest": [(spec["order_by"], "ascending")],
        "first_key": [],
        "most_complete": [("_filled", "descending"), (spec["order_by"], "descending")],
    }[keep]
    order = pc.sort_indices(
        cand,
        sort_keys=[(spec["key"], "ascending"), *order_by, (key, "ascending")],
        null_placement="at_end",
    )
    ordered = cand.take(order)
    group = ordered.column(spec["key"]).combine_chunks()
    cur, prev = group.slice(1), group.slice(0, len(group) - 1)
    same = np.concatenate([[False], _np(pc.fill_null(pc.equal(cur, prev), False))])
    first = np.flatnonzero(~same)  # each group's survivor, in order
    survivor_of = first[np.cumsum(~same) - 1]
    keys = ordered.column(key).combine_chunks()
    losers = pa.array(same)
    return (
        keys.filter(losers).to_pylist(),
        keys.take(pa.array(survivor_of)).filter(losers).to_pylist(),
    )


def cleanse(
    raw: pd.DataFrame,
    rules: dict,
    *,
    key: str,
    exported_at: pd.Timestamp,
    parent: ParentRegistry | None = None,
    duplicate_losers: set[str] | dict[str, str] | None = None,
    duplicate_key: np.ndarray | None = None,
    parent_fate: np.ndarray | None = None,
    same_key_rows: set[int] | None = None,
    merge_rules: dict[str, str] | None = None,
    adopt: set[str] | None = None,
    no_id_rows: set[int] | None = None,
) -> CleanseResult:
    """`duplicate_losers`: keys that lost survivorship, each with its survivor's key (a
    dict) where the rule merges (`dedupe.action: merge`, the default): those rows leave as
    merged; a set, or `action: quarantine`, quarantines them as DUPLICATE_PERSON.
    `same_key_rows`: source rows (`_source_row`) that repeat a key already held by a record
    of the same person (resolve decided): merged into it, not DUPLICATE_KEY.
    `merge_rules`: the rule per merged key where it is not SAME_PERSON (EXISTING_CUSTOMER:
    the person is already a target customer, handover.stages.identity). `adopt`: merged keys
    whose record wins fields of the target's customer (returned typed, as `adopted`).
    `no_id_rows`: source rows whose only fault is a missing resident ID that resolve merged
    into the one target customer with their name and birth date (identity's second rule):
    not quarantined for it, merged like `duplicate_losers` says."""
    typed, verdict = validate(
        raw,
        rules,
        key=key,
        exported_at=exported_at,
        parent=parent,
        duplicate_key=duplicate_key,
        parent_fate=parent_fate,
    )
    merge = (rules.get("dedupe") or {}).get("action", "merge") == "merge"
    if no_id_rows and "_source_row" in raw.columns:
        verdict.clear(
            raw["_source_row"].isin(no_id_rows).to_numpy() & (verdict.reason == "MISSING_FIELD")
        )
    merged_mask = np.zeros(len(raw), dtype=bool)
    survivors = np.full(len(raw), None, dtype=object)
    rule = np.full(len(raw), None, dtype=object)
    if duplicate_losers:
        hit = typed[key].isin(duplicate_losers).to_numpy() & ~verdict.failed
        if merge and isinstance(duplicate_losers, dict):
            merged_mask |= hit
            survivors[hit] = typed.loc[hit, key].map(duplicate_losers).to_numpy(dtype=object)
            rule[hit] = (
                typed.loc[hit, key].map(merge_rules).fillna("SAME_PERSON").to_numpy(dtype=object)
                if merge_rules
                else "SAME_PERSON"
            )
        else:
            verdict.fail(hit, "DUPLICATE_PERSON", rules.get("dedupe", {}).get("key", key))
    if same_key_rows and "_source_row" in raw.columns:
        hit = raw["_source_row"].isin(same_key_rows).to_numpy() & (
            verdict.reason == "DUPLICATE_KEY"
        )
        merged_mask |= hit
        survivors[hit] = typed.loc[hit, key].to_numpy(dtype=object)
        rule[hit] = "SAME_KEY"
        verdict.clear(hit)
    failed = verdict.failed
    merged = pd.DataFrame(
        {
            "_key": typed.loc[merged_mask, key].to_numpy(dtype=object),
            "_survivor": survivors[merged_mask],
            "_rule": rule[merged_mask],
        }
    )
    quarantine = raw.loc[failed].copy()
    quarantine["_reason"] = verdict.reason[failed]
    quarantine["_field"] = verdict.field[failed]
    quarantine["_key"] = typed.loc[failed, key].to_numpy()
    clean = typed.loc[~failed & ~merged_mask].reset_index(drop=True)
    adopted = (
        typed.loc[merged_mask & typed[key].isin(adopt).to_numpy()].reset_index(drop=True)
        if adopt is not None
        else None
    )
    counts = pd.Series(verdict.reason[failed]).value_counts().to_dict() if failed.any() else {}
    return CleanseResult(
        clean,
        quarantine.reset_index(drop=True),
        {str(k): int(v) for k, v in counts.items()},
        dict(verdict.normalised),
        merged,
        adopted,
    )


def export_time(value: str):
    """An export time as the books keep it: the export's own (Beijing) clock, no zone. A
    time given with an offset (`2026-11-01T00:00:00+08:00`, `...Z`) is converted."""
    import pandas as pd

    when = pd.Timestamp(value)
    if when.tzinfo is not None:
        when = when.tz_convert(LOCAL_ZONE).tz_localize(None)
    return when
