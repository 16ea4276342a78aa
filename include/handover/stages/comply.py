"""Comply: decide per row whether the law and the policy let it move.

Runs before cleansing, on raw rows, because what may not move must not be processed
further (PIPL Art. 5-6: minimum necessary). Rules run in the policy's order; the
first that matches excludes the row with its rule id, and rows past retention get a
destroy-by date so the retention DAG can destroy every copy. Every moved row carries
its lawful basis, so "every row has a decision" is checkable by the compliance gate.

Text columns are compared as Arrow arrays (pyarrow.compute: trim, is_in, equal); a
column that does not hold only text falls back to the same comparison on Python objects.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TypeAlias, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# Every character str.strip() removes (str.isspace()); tests/unit/test_comply.py checks it.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004"
    "\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


class Members:
    """A set of customer ids held as one Arrow string array of distinct values.

    400,000 ids take about 10 MB this way; as a frozenset of Python strings they took about
    60 MB, and building it (to_pylist, then the set) left the process 350 MB larger, in
    every comply task. Compares equal to a set or frozenset with the same ids.
    """

    __slots__ = ("values",)
    # mutable-looking container semantics: equal to sets, so not hashable
    __hash__ = None  # type: ignore[assignment]  # None is how Python marks a type unhashable

    def __init__(self, values: pa.Array | pa.ChunkedArray) -> None:
        self.values: pa.Array = pc.unique(values.drop_null())  # an Array, also from chunks

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self):
        return iter(self.values.to_pylist())

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, str) or not len(self.values):
            return False
        return bool(pc.any(pc.equal(self.values, pa.scalar(value, self.values.type))).as_py())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Members):
            other = frozenset(other)
        if isinstance(other, (set, frozenset)):
            return frozenset(self) == other
        return NotImplemented

    def __repr__(self) -> str:
        return f"Members({len(self)} ids)"


ERASED = "ERASED_SUBJECT"  # a data-subject erasure: the person stays erased


@dataclass(frozen=True)
class PolicyFacts:
    """What the rules need to know about customers, read once per run."""

    exported_at: pd.Timestamp
    objected: frozenset[str] | Members
    consented: dict[str, frozenset[str] | Members]  # purpose -> customers who granted it


@dataclass
class ComplyResult:
    moved: pd.DataFrame  # raw rows + _basis
    excluded: pd.DataFrame  # raw rows + _rule + _destroy_by
    counts: dict[str, int]
    keep: np.ndarray | None = None  # per raw row: moved (True) or excluded
    basis: str | None = None  # the lawful basis every moved row carries


def _norm(s: pd.Series) -> pd.Series:
    """Object values, None for missing, strings stripped (the fallback for non-text)."""
    return (
        s.astype(object)
        .where(s.notna(), None)
        .map(lambda v: v.strip() if isinstance(v, str) else v)
    )


def _strings(values: pd.Series | pa.Array | pa.ChunkedArray) -> pa.Array | None:
    """Text values stripped as by str.strip(), as Arrow; None when not all values are text."""
    if isinstance(values, pd.Series):
        try:
            values = pa.array(values, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            return None
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_null(values.type):
        values = values.cast(pa.string())
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return None
    return pc.utf8_trim(values, WHITESPACE)


# The text members of a facts set as Arrow, by the set's identity: the facts live for the
# run, and rebuilding a 400,000-member array for every partition cost ~0.1 s each time.
_MEMBER_ARRAYS: dict[int, tuple[frozenset, pa.Array]] = {}


def _member_array(members: frozenset) -> pa.Array:
    hit = _MEMBER_ARRAYS.get(id(members))
    if hit is None or hit[0] is not members:
        if len(_MEMBER_ARRAYS) >= 32:
            _MEMBER_ARRAYS.clear()
        texts = [m for m in members if isinstance(m, str)]  # a str equals no other type
        hit = _MEMBER_ARRAYS[id(members)] = (members, pa.array(texts, pa.string()))
    return hit[1]


def _isin(values: pa.Array | pd.Series, members: frozenset | Members) -> np.ndarray:
    """Boolean mask: value is one of `members` (missing values never are)."""
    if isinstance(values, pd.Series):
        return values.isin(list(members) if isinstance(members, Members) else members).to_numpy()
    texts = members.values if isinstance(members, Members) else _member_array(members)
    if not len(texts):
        return np.zeros(len(values), dtype=bool)
    hit = pc.is_in(values, value_set=texts.cast(values.type))
    return pc.fill_null(hit, False).to_numpy(zero_copy_only=False)


def _customers(s: pd.Series) -> pa.Array | pd.Series:
    arr = _strings(s)
    return _norm(s) if arr is None else arr


def _objects(values: pa.Array | pd.Series, index: pd.Index) -> pd.Series:
    if isinstance(values, pd.Series):
        return values
    return pd.Series(values.to_numpy(zero_copy_only=False), index=index, dtype=object)


def decide(
    raw: pd.DataFrame,
    *,
    table_spec: dict,
    category_policy: dict,
    policy: dict,
    facts: PolicyFacts,
    event_time_format: str | list[str] | None,
    run_date: date | None = None,
    erased: frozenset[str] = frozenset(),
) -> ComplyResult:
    """Each row moves or is excluded by the first rule that catches it. `erased`: customers
    a data-subject erasure removed (handover_meta.erased_subject): their rows never come
    back, whichever export or night carries them (ERASED_SUBJECT, before every policy
    rule)."""
    n = len(raw)
    rule_ids: list[str] = []
    rule = np.zeros(n, dtype=np.int32)  # 0: no rule has excluded the row; k: rule_ids[k-1]
    destroy_by = np.full(n, None, dtype=object)
    cust_col = table_spec.get("customer_column")
    cust = _customers(raw[cust_col]) if cust_col else None
    if erased and cust is not None:
        hit = _isin(cust, erased)
        if hit.any():
            rule_ids.append(ERASED)
            rule[hit] = 1

    for r in policy["rules"]:
        rid = r["id"]
        open_ = rule == 0
        if rid == "OBJECTED_TRANSFER" and cust_col:
            hit = _isin(cust, facts.objected)
        elif (
            rid == "RETENTION_EXPIRED"
            and category_policy.get("retention_months")
            and table_spec.get("event_time")
        ):
            col = raw[table_spec["event_time"]]
            text = _strings(col)
            values = _norm(col) if text is None else _objects(text, raw.index)
            if isinstance(event_time_format, list):  # several formats: the cleanse parser
                from handover.stages.cleanse_dates import parse_dates

                ts = parse_dates(pd.Series(values, index=raw.index), event_time_format)
            else:
                ts = pd.to_datetime(values, format=event_time_format, errors="coerce")
            cutoff = facts.exported_at - pd.DateOffset(months=category_policy["retention_months"])
            hit = (ts < cutoff).fillna(False).to_numpy()
            sel = open_ & hit  # only old rows: adding months to year 9999 would overflow
            due = (ts[sel] + pd.DateOffset(months=category_policy["retention_months"])).dt.date
            destroy_by[sel] = np.minimum(due.to_numpy(dtype=object), facts.exported_at.date())
        elif rid == "NO_CONSENT" and category_policy.get("lawful_basis") == "separate_consent":
            granted = facts.consented.get(category_policy["consent_purpose"], frozenset())
            hit = ~_isin(cust, granted) if cust is not None else np.ones(n, dtype=bool)
        else:
            continue
        if rid not in rule_ids:
            rule_ids.append(rid)
        rule[open_ & hit] = rule_ids.index(rid) + 1

    excluded_mask = rule != 0
    # What may not move is not kept by the receiver either (PIPL Art. 22, 47): every
    # excluded row is due for destruction at the end of the run that excluded it (the
    # run's lake copies are purged by pipeline.destroy_excluded; retention catches a run
    # that failed first). Past-retention rows keep their earlier due date.
    today = run_date or datetime.now(UTC).date()
    undated = excluded_mask & np.array([d is None for d in destroy_by], dtype=bool)
    destroy_by[undated] = today
    basis = category_policy["lawful_basis"]
    if basis == "separate_consent":
        basis = f"consent:{category_policy['consent_purpose']}"
    moved = raw.loc[~excluded_mask].copy()
    moved["_basis"] = basis
    excluded = raw.loc[excluded_mask].copy()
    names = np.array([None, *rule_ids], dtype=object)
    excluded["_rule"] = names[rule[excluded_mask]]
    excluded["_destroy_by"] = destroy_by[excluded_mask]
    counts: dict[str, int] = {}
    if excluded_mask.any():
        per_rule = np.bincount(rule[excluded_mask], minlength=len(names))
        counts = {
            str(names[k]): int(per_rule[k])
            for k in sorted(range(1, len(names)), key=lambda k: -per_rule[k])
            if per_rule[k]
        }
    return ComplyResult(
        moved.reset_index(drop=True),
        excluded.reset_index(drop=True),
        counts,
        keep=~excluded_mask,
        basis=basis,
    )


Frame: TypeAlias = pd.DataFrame | pa.Table


def _column(frame: Frame, name: str) -> pa.Array | None:
    return _strings(frame[name])


def policy_facts(
    subscribers: Frame | None,
    consents: Frame | None,
    policy: dict,
    exported_at: pd.Timestamp,
    customer_column: str = "cust_id",
) -> PolicyFacts:
    """Objections and consents; frames are pandas DataFrames or Arrow tables."""
    return facts_from_tables(
        [] if subscribers is None else [subscribers],
        [] if consents is None else [consents],
        policy,
        exported_at,
        customer_column,
    )


def facts_from_tables(
    objections: Iterable[Frame | pa.RecordBatch],
    consents: Iterable[Frame | pa.RecordBatch],
    policy: dict,
    exported_at: pd.Timestamp,
    customer_column: str = "cust_id",
) -> PolicyFacts:
    """Facts from the objection and consent tables, given a slice at a time.

    Each slice is reduced at once to the distinct customers (and purposes) that make a
    fact, so memory holds the facts, never the tables (900,000 consents at 400,000
    subscribers). Text columns are compared in Arrow; a slice whose columns are not all
    text is decided per value, as before, and then the facts are plain sets.
    """
    objected: frozenset[str] | Members = frozenset()
    spec = policy.get("objection")
    if spec:
        ids: list[pa.Array] = []
        other: set = set()
        for t in map(_table, objections):
            cust, flag = _column(t, customer_column), _column(t, spec["column"])
            if cust is None or flag is None:
                other |= _objected_objects(_frame(t), spec, customer_column)
            else:
                ids.append(pc.unique(pc.filter(cust, _equals(flag, spec["value"])).drop_null()))
        objected = _members(ids, other)
    consented: dict[str, frozenset[str] | Members] = {}
    spec = policy.get("consent")
    if spec:
        ids_by_purpose: dict[str, list[pa.Array]] = {}
        others: dict[str, set] = {}
        for t in map(_table, consents):
            cols = [
                _column(t, spec[k]) for k in ("customer_column", "purpose_column", "granted_column")
            ]
            if any(c is None for c in cols):
                for purpose_, members in _consented_objects(_frame(t), spec).items():
                    others.setdefault(purpose_, set()).update(members)
                continue
            # none is None here (checked above)
            cust, purpose, granted = (cast(pa.Array, c).cast(pa.string()) for c in cols)
            hit = _equals(granted, spec["granted_value"])
            cust, purpose = pc.filter(cust, hit), pc.filter(purpose, hit)
            # A purpose granted only with no customer still names the purpose (no members).
            for purpose_ in pc.unique(purpose.drop_null()).to_pylist():
                ids_by_purpose.setdefault(purpose_, []).append(
                    pc.unique(pc.filter(cust, pc.equal(purpose, purpose_)).drop_null())
                )
        for purpose_ in sorted(set(others) | set(ids_by_purpose)):
            consented[str(purpose_)] = _members(
                ids_by_purpose.pop(purpose_, []), others.get(purpose_, set())
            )
    return PolicyFacts(exported_at, objected, consented)


def _table(t: Frame | pa.RecordBatch) -> Frame:
    return pa.Table.from_batches([t]) if isinstance(t, pa.RecordBatch) else t


def _members(arrays: list[pa.Array | pa.ChunkedArray], other: set) -> frozenset | Members:
    if other:  # some values were decided per value (not text): a plain set, as before
        return frozenset(other).union(*(a.to_pylist() for a in arrays))
    chunks = [
        c.cast(pa.string())
        for a in arrays
        for c in (a.chunks if isinstance(a, pa.ChunkedArray) else [a])
    ]
    return Members(pa.chunked_array(chunks, pa.string()))


def _equals(values: pa.Array, value: object) -> pa.Array:
    """values == value, missing -> False; text never equals a value of another type."""
    if not isinstance(value, str):
        return pa.array(np.zeros(len(values), dtype=bool))
    return pc.fill_null(pc.equal(values, pa.scalar(value, values.type)), False)


def _frame(frame: Frame) -> pd.DataFrame:
    return frame.to_pandas() if isinstance(frame, pa.Table) else frame


def _objected_objects(
    subscribers: pd.DataFrame, spec: dict, customer_column: str
) -> frozenset[str]:
    cust = _norm(subscribers[customer_column])
    flag = _norm(subscribers[spec["column"]])
    return frozenset(cust[flag == spec["value"]].dropna())


def _consented_objects(consents: pd.DataFrame, spec: dict) -> dict[str, frozenset[str]]:
    consented: dict[str, frozenset[str]] = {}
    c = consents.assign(**{k: _norm(consents[k]) for k in consents.columns})
    granted = c[c[spec["granted_column"]] == spec["granted_value"]]
    for purpose, grp in granted.groupby(spec["purpose_column"]):
        consented[str(purpose)] = frozenset(grp[spec["customer_column"]].dropna())
    return consented
