"""Comply: decide per row whether the law and the policy let it move.

Runs before cleansing, on raw rows, because what may not move must not be processed
further (PIPL Art. 5-6: minimum necessary). Rules run in the policy's order; the
first that matches excludes the row with its rule id, and rows past retention get a
destroy-by date so the retention DAG can destroy every copy. Every moved row carries
its lawful basis, so "every row has a decision" is checkable by the compliance gate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class PolicyFacts:
    """What the rules need to know about customers, read once per run."""

    exported_at: pd.Timestamp
    objected: frozenset[str]
    consented: dict[str, frozenset[str]]  # consent purpose -> customers who granted it


@dataclass
class ComplyResult:
    moved: pd.DataFrame     # raw rows + _basis
    excluded: pd.DataFrame  # raw rows + _rule + _destroy_by
    counts: dict[str, int]


def _norm(s: pd.Series) -> pd.Series:
    return s.astype(object).where(s.notna(), None).map(
        lambda v: v.strip() if isinstance(v, str) else v)


def decide(raw: pd.DataFrame, *, table_spec: dict, category_policy: dict, policy: dict,
           facts: PolicyFacts, event_time_format: str | None) -> ComplyResult:
    n = len(raw)
    rule = np.full(n, None, dtype=object)
    destroy_by = np.full(n, None, dtype=object)
    cust_col = table_spec.get("customer_column")
    cust = _norm(raw[cust_col]) if cust_col else pd.Series([None] * n, index=raw.index)

    for r in policy["rules"]:
        rid = r["id"]
        open_ = pd.isna(rule)  # no rule has excluded the row yet
        if rid == "OBJECTED_TRANSFER" and cust_col:
            hit = cust.isin(facts.objected).to_numpy()
        elif rid == "RETENTION_EXPIRED" and category_policy.get("retention_months") \
                and table_spec.get("event_time"):
            ts = pd.to_datetime(_norm(raw[table_spec["event_time"]]), format=event_time_format,
                                errors="coerce")
            cutoff = facts.exported_at - pd.DateOffset(months=category_policy["retention_months"])
            hit = (ts < cutoff).fillna(False).to_numpy()
            sel = open_ & hit  # only old rows: adding months to year 9999 would overflow
            due = (ts[sel] + pd.DateOffset(months=category_policy["retention_months"])).dt.date
            destroy_by[sel] = np.minimum(due.to_numpy(dtype=object), facts.exported_at.date())
        elif rid == "NO_CONSENT" and category_policy.get("lawful_basis") == "separate_consent":
            granted = facts.consented.get(category_policy["consent_purpose"], frozenset())
            hit = ~cust.isin(granted).to_numpy()
        else:
            continue
        rule[open_ & hit] = rid

    excluded_mask = pd.notna(rule)
    basis = category_policy["lawful_basis"]
    if basis == "separate_consent":
        basis = f"consent:{category_policy['consent_purpose']}"
    moved = raw.loc[~excluded_mask].copy()
    moved["_basis"] = basis
    excluded = raw.loc[excluded_mask].copy()
    excluded["_rule"] = rule[excluded_mask]
    excluded["_destroy_by"] = destroy_by[excluded_mask]
    counts = pd.Series(rule[excluded_mask]).value_counts().to_dict() if excluded_mask.any() else {}
    return ComplyResult(moved.reset_index(drop=True), excluded.reset_index(drop=True),
                        {str(k): int(v) for k, v in counts.items()})


def policy_facts(subscribers: pd.DataFrame | None, consents: pd.DataFrame | None, policy: dict,
                 exported_at: pd.Timestamp, customer_column: str = "cust_id") -> PolicyFacts:
    objected: frozenset[str] = frozenset()
    spec = policy.get("objection")
    if spec and subscribers is not None:
        cust = _norm(subscribers[customer_column])
        flag = _norm(subscribers[spec["column"]])
        objected = frozenset(cust[flag == spec["value"]].dropna())
    consented: dict[str, frozenset[str]] = {}
    spec = policy.get("consent")
    if spec and consents is not None:
        c = consents.assign(**{k: _norm(consents[k]) for k in consents.columns})
        granted = c[c[spec["granted_column"]] == spec["granted_value"]]
        for purpose, grp in granted.groupby(spec["purpose_column"]):
            consented[str(purpose)] = frozenset(grp[spec["customer_column"]].dropna())
    return PolicyFacts(exported_at, objected, consented)
