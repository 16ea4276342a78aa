"""What becomes of a merged record's fields: conflicts, survivorship and review.

handover.stages.identity merges an export's record into the target customer that already
holds the person. Where the two records say different things about the person (a phone
number, an address), the policy's `identity.survivorship` decides per field: the
export's value (`source`), the target's (`target`), the newer record's (`newest`), or a
person (`review`); a value the target marks verified always stays. Conflicts and their
outcome are recorded by field name only, never by value.
"""

from __future__ import annotations

from typing import Any, cast

import pandas as pd
import pyarrow as pa

from handover.config.identity import person_fields, version_fields
from handover.stages.identity import settings


# ---------------------------------------------------------------- field conflicts
def compared_fields(cfg) -> list[tuple[str, str, str, str | None]]:
    """(target field, source column, how: bidx | text, blind-index domain) of the customer
    mapping's fields that a merged record can be compared on without a transform."""
    from handover.protection.fields import field_domain

    s = settings(cfg)
    if s is None:
        return []
    target = cfg.table_mapping(s["table"])["target"]
    return [
        (name, src, how, field_domain(target, name) if how == "bidx" else None)
        for name, src, how in person_fields(cfg, s["table"])
    ]


def field_conflicts(
    conn, cfg, ring, matched: dict[str, str], values: dict[str, dict[str, Any]]
) -> list[tuple[str, str, str]]:
    """(export key, target customer, field) where the export's record of a matched person
    says another thing than the target's. Values are compared in memory (phone numbers by
    blind index); none is returned, logged or stored."""
    from psycopg import sql

    from handover.protection.fields import blind_index

    fields = compared_fields(cfg)
    if not matched or not fields:
        return []
    s = cast(dict[str, Any], settings(cfg))  # fields were found, so identity applies
    tmap = cfg.table_mapping(s["table"])
    cols = [f"{n}_bidx" if how == "bidx" else n for n, _, how, _ in fields]
    rows = conn.execute(
        sql.SQL("SELECT {k}, {c} FROM {t} WHERE {k} = ANY(%s)").format(
            k=sql.Identifier(tmap["key"]),
            c=sql.SQL(", ").join(map(sql.Identifier, cols)),
            t=sql.Identifier(cfg.mapping["schema"], tmap["target"]),
        ),
        (sorted(set(matched.values())),),
    ).fetchall()
    theirs = {r[0]: r[1:] for r in rows}
    out = []
    keys = sorted(matched)
    for i, (name, src, how, domain) in enumerate(fields):
        mine = [values.get(src, {}).get(k) for k in keys]
        if how == "bidx":
            # a bidx field always has its domain (compared_fields)
            mine = blind_index(
                [None if v is None else str(v) for v in mine], ring, cast(str, domain)
            )
        for k, v in zip(keys, mine, strict=True):
            t = theirs.get(matched[k])
            if t is None:
                continue
            other = t[i]
            a = None if v is None else str(v).strip()
            b = None if other is None else str(other).strip()
            if not a:  # the export knows nothing here: no conflict, the target's stays
                continue
            if a != (b or None):
                out.append((k, matched[k], name))
    return out


# ---------------------------------------------------------------- survivorship
def survivorship_rule(s: dict, field: str) -> str:
    rules = s.get("survivorship") or {}
    return rules.get(field, rules.get("default", "review"))


def decide(
    conn, cfg, conflicts: list[tuple[str, str, str]], versions: dict[str, Any]
) -> list[tuple[str, str, str, str, str]]:
    """Field-level survivorship for each conflict (export key, target customer, field):
    (key, target, field, rule, outcome), outcome `source` (the export's value is written to
    the target customer, through the gates), `target` (the target's value stays, decided by
    the rule) or `review` (it stays until a person decides). A value the target marks
    verified (policy `identity.verified`) is never overwritten by the export's: rule
    `verified_kept`. `versions`: the export record's version (newest wins) per key."""
    from psycopg import sql

    s = settings(cfg)
    if not conflicts or s is None:
        return []
    tmap = cfg.table_mapping(s["table"])
    verified = s.get("verified") or {}
    _require_columns(conn, cfg, tmap["target"], verified)
    vf = version_fields(cfg)
    cols: list[sql.Composable] = [sql.Identifier(tmap["key"])]
    cols.append(sql.Identifier(vf[1]) if vf else sql.SQL("NULL"))
    flags = sorted(verified)
    cols += [sql.SQL("coalesce({}, false)").format(sql.Identifier(verified[f])) for f in flags]
    rows = conn.execute(
        sql.SQL("SELECT {c} FROM {t} WHERE {k} = ANY(%s)").format(
            c=sql.SQL(", ").join(cols),
            k=sql.Identifier(tmap["key"]),
            t=sql.Identifier(cfg.mapping["schema"], tmap["target"]),
        ),
        (sorted({t for _, t, _ in conflicts}),),
    ).fetchall()
    theirs = {r[0]: (r[1], dict(zip(flags, r[2:], strict=True))) for r in rows}
    out = []
    for key, target, field in conflicts:
        rule = survivorship_rule(s, field)
        their_version, their_flags = theirs.get(target, (None, {}))
        if rule == "newest":
            mine = versions.get(key)
            newer = (
                mine is not None
                and their_version is not None
                and pd.Timestamp(mine) > pd.Timestamp(their_version)
            )
            outcome = "source" if newer else "target"
        else:
            outcome = {"source": "source", "target": "target"}.get(rule, "review")
        if outcome == "source" and their_flags.get(field):
            rule, outcome = "verified_kept", "target"
        out.append((key, target, field, rule, outcome))
    return out


def _require_columns(conn, cfg, target: str, verified: dict[str, str]) -> None:
    """Every verified flag the policy names is a column of the target: one line if not."""
    from handover.core.errors import ConfigError

    if not verified:
        return
    have = {
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND "
            "table_name = %s",
            (cfg.mapping["schema"], target),
        ).fetchall()
    }
    for field, column in sorted(verified.items()):
        if column not in have:
            raise ConfigError(
                f"{cfg.directory / 'policy.yaml'}: identity.verified.{field}: column "
                f"'{column}' is not in {cfg.mapping['schema']}.{target}; name the target's "
                "boolean column that marks the value verified, or remove the entry"
            )


STATUS = {"review": "open", "target": "kept", "source": "applied"}


def record_conflicts(
    conn, system: str, run_id: str, decisions: list[tuple[str, str, str, str, str]]
) -> int:
    """Every field conflict of a merge, one entry per (system, record, field): the rule
    that decided it and its status: `open` (the target's value stays until a person
    decides), `kept` (the target's value stays by rule), `applied` (the export's value was
    written). Field names only, never a value. A rerun adds nothing new and never reopens
    a resolved entry."""
    n = 0
    for key, target, field, rule, outcome in decisions:
        n += conn.execute(
            "INSERT INTO handover_meta.identity_review (source_system, source_key, "
            "target_customer_id, field, rule, status, run_id) VALUES (%s, %s, %s, %s, %s, "
            "%s, %s) ON CONFLICT (source_system, source_key, field) DO NOTHING",
            (system, key, target, field, rule, STATUS[outcome], run_id),
        ).rowcount
    return n


def adopted_columns(field: str, columns: list[str]) -> list[str]:
    """The target columns one field's value lives in (the field, its ciphertext, key id,
    blind index and mask)."""
    return [
        c
        for c in columns
        if c == field or c in {f"{field}_{x}" for x in ("enc", "key_id", "bidx", "masked")}
    ]


def apply_adopted(conn, cfg, mapped: pa.Table) -> int:
    """Write the fields an export's merged record wins (survivorship) onto the target
    customer that holds the person. `mapped`: the export's records as mapped and protected
    by the migration (through the same gates as the rows it loads), with `_into` (the
    target customer) and `_fields` (the fields the export wins, comma-separated). Only a
    value that differs is written (so a rerun changes nothing), never over a value the
    target marks verified. Returns the field values written."""
    from psycopg import sql

    from handover.db.bulk_copy import copy_arrow

    s = settings(cfg)
    if s is None or mapped.num_rows == 0:
        return 0
    tmap = cfg.table_mapping(s["table"])
    target = sql.Identifier(cfg.mapping["schema"], tmap["target"])
    columns = [c for c in mapped.column_names if c not in ("_into", "_fields")]
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE _adopt ON COMMIT DROP AS SELECT {c}, "
            "''::text AS _into, ''::text AS _fields FROM {t} WITH NO DATA"
        ).format(c=sql.SQL(", ").join(map(sql.Identifier, columns)), t=target)
    )
    copy_arrow(conn, sql.Identifier("_adopt"), mapped.select([*columns, "_into", "_fields"]))
    fields = sorted({f for v in mapped.column("_fields").to_pylist() for f in v.split(",") if f})
    verified = s.get("verified") or {}
    n = 0
    for field in fields:
        cols = adopted_columns(field, columns)
        if not cols:
            continue
        cmp = f"{field}_bidx" if f"{field}_bidx" in cols else field
        guard = (
            sql.SQL(" AND NOT coalesce(t.{}, false)").format(sql.Identifier(verified[field]))
            if field in verified
            else sql.SQL("")
        )
        n += conn.execute(
            sql.SQL(
                "UPDATE {t} t SET {sets} FROM _adopt a WHERE t.{k} = a._into AND "
                "%s = ANY(string_to_array(a._fields, ',')) AND t.{c} IS DISTINCT FROM a.{c}{g}"
            ).format(
                t=target,
                k=sql.Identifier(tmap["key"]),
                c=sql.Identifier(cmp),
                g=guard,
                sets=sql.SQL(", ").join(
                    sql.SQL("{0} = a.{0}").format(sql.Identifier(c)) for c in cols
                ),
            ),
            (field,),
        ).rowcount
    conn.execute("DROP TABLE _adopt")
    return n


def resolve_review(entry_id: int, decision: str, by: str, note: str = "") -> dict:
    """Close a review entry: `keep-target` (the acquirer's value stands) or `correct` (the
    export's value is right: file a correction request for the customer, which goes
    through the gates). Audited; a resolved entry is not resolved twice."""
    from handover.db import ledger

    if decision not in ("keep-target", "correct"):
        raise ValueError(f"decision {decision!r}: use keep-target or correct")
    if not by.strip():
        raise ValueError("--by: who decides (a name or a role), for the audit trail")
    with ledger.connect() as conn, conn.transaction():
        row = conn.execute(
            "UPDATE handover_meta.identity_review SET status = %s, resolved_by = %s, "
            "resolved_at = now(), note = %s WHERE id = %s AND status = 'open' RETURNING "
            "source_system, field, target_customer_id",
            (decision, by, note, entry_id),
        ).fetchone()
        if row is None:
            raise ValueError(f"review entry {entry_id}: no open entry with this id")
        ledger.audit(
            conn,
            "identity_review_resolved",
            actor=by,
            detail={"entry": entry_id, "system": row[0], "field": row[1], "decision": decision},
        )
    out = {"entry": entry_id, "decision": decision, "field": row[1]}
    if decision == "correct":
        out["next"] = (
            f"file a correction: python -m handover.lifecycle.subject submit --type correction "
            f"--identifier-type customer_id --field {row[1]} (the customer: "
            f"{row[2]}; the new value from stdin)"
        )
    return out
