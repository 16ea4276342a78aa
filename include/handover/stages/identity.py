"""One person, one customer across systems.

An acquirer's CRM is not empty: many subscribers it takes over are already its own
customers, or customers of an operator it bought before. A customer of the export whose
normalised 18-digit resident ID is already held by a target customer under another id
(`C10000097` here, `K88-0412` there) is the same person. Matching runs on the blind index
(keyed HMAC) of the ID: the clear ID never leaves the task's memory, the database sees
only HMACs, and no log, XCom or report names a value.

Policy (policy.yaml `identity`, default `{match: [resident_id], on_match: merge}`): the
export's record is **merged** into the existing customer: it is not loaded (the ledger
counts it `merged`, rule EXISTING_CUSTOMER, in the merge map), its child rows (calls,
payments, consents ...) are re-parented to the existing customer, and the acquirer's
record keeps every field (the target's system of record wins). Every customer of every
system gets one row in `handover_meta.person_map`: (system, key) -> person id, the target
customer that holds the person, the decision and the rule. A person id is derived from
the ID's blind index once and never changed, so one person has one id in every system
and a rerun changes none.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pandas as pd
import pyarrow as pa

from handover.config.identity import match_columns, person_fields, version_fields

TARGET_SYSTEM = "acquirer"
EXISTING = "EXISTING_CUSTOMER"


def settings(cfg) -> dict[str, Any] | None:
    """The system's identity policy with defaults, or None where the customer table has no
    blind-indexed resident ID to match on."""
    from handover.protection.fields import field_domain

    spec = {
        "match": ["resident_id"],
        "on_match": "merge",
        "target_system": TARGET_SYSTEM,
        **(cfg.policy.get("identity") or {}),
    }
    found = match_columns(cfg)
    if found is None:
        return None
    table, rid, field = found
    domain = field_domain(cfg.table_mapping(table)["target"], field)
    return {
        **spec,
        "table": table,
        "id_column": rid,
        "bidx_column": f"{field}_bidx",
        "domain": domain,
    }


def person_id(ring, bidx: str) -> str:
    """A person's id: a keyed hash of their ID's blind index (no value can be read back)."""
    return (
        "P"
        + hmac.new(ring.hmac_key, b"handover-person|" + bidx.encode(), hashlib.sha256).hexdigest()[
            :24
        ]
    )


def blind_indexes(cfg, ring, ids: list[str | None]) -> list[str | None]:
    from handover.protection.fields import blind_index

    s = settings(cfg)
    return blind_index(ids, ring, s["domain"]) if s else [None] * len(ids)


def match_existing(
    conn, cfg, keys: list[str], bidx: list[str | None], ours: set[str]
) -> dict[str, str]:
    """{export key: target customer id} for the export's customers whose ID is already a
    target customer under an id that is not one of this export's own keys. Only blind
    indexes are sent to the database."""
    from psycopg import sql

    s = settings(cfg)
    by_bidx = {b: k for k, b in zip(keys, bidx, strict=True) if b}
    if s is None or not by_bidx:
        return {}
    tmap = cfg.table_mapping(s["table"])
    target = sql.Identifier(cfg.mapping["schema"], tmap["target"])
    if (
        conn.execute(
            "SELECT to_regclass(%s)", (f"{cfg.mapping['schema']}.{tmap['target']}",)
        ).fetchone()[0]
        is None
    ):
        return {}
    rows = conn.execute(
        sql.SQL("SELECT {b}, {k} FROM {t} WHERE {b} = ANY(%s)").format(
            b=sql.Identifier(s["bidx_column"]), k=sql.Identifier(tmap["key"]), t=target
        ),
        (list(by_bidx),),
    ).fetchall()
    return {by_bidx[b]: tk for b, tk in rows if tk != by_bidx[b] and tk not in ours}


def require_linkable(conn, cfg) -> None:
    """`on_match: link` keeps two customers of one person: a target whose ID blind index is
    UNIQUE cannot hold them. One line, before anything is written."""
    from handover.config.loader import ConfigError

    s = settings(cfg)
    tmap = cfg.table_mapping(s["table"])
    unique = conn.execute(
        "SELECT 1 FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n "
        "ON n.oid = t.relnamespace JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = "
        "ANY(i.indkey) WHERE i.indisunique AND i.indnatts = 1 AND n.nspname = %s AND "
        "t.relname = %s AND a.attname = %s",
        (cfg.mapping["schema"], tmap["target"], s["bidx_column"]),
    ).fetchone()
    if unique:
        raise ConfigError(
            f"{cfg.directory / 'policy.yaml'}: identity.on_match: link keeps two customers of "
            f"one person, but {cfg.mapping['schema']}.{tmap['target']} allows one customer a "
            f"resident ID (a UNIQUE index on {s['bidx_column']}); use on_match: merge, or make "
            "that index non-unique in the target"
        )


def taken_keys(conn, cfg, keys: list[str], bidx: list[str | None]) -> list[str]:
    """Keys of this export that the target already holds for *another person* of *another
    system* (the person map gives the key to another system only, and its blind index is
    not this record's): loading them would write over that person."""
    from psycopg import sql

    s = settings(cfg)
    if (
        s is None
        or not keys
        or conn.execute("SELECT to_regclass('handover_meta.person_map')").fetchone()[0] is None
    ):
        return []
    tmap = cfg.table_mapping(s["table"])
    theirs = dict(
        conn.execute(
            sql.SQL(
                "SELECT t.{k}, t.{b} FROM {t} t WHERE t.{k} = ANY(%s) AND EXISTS (SELECT 1 FROM "
                "handover_meta.person_map p WHERE p.source_key = t.{k} AND p.source_system <> %s) "
                "AND NOT EXISTS (SELECT 1 FROM handover_meta.person_map p WHERE p.source_key = t.{k} "
                "AND p.source_system = %s)"
            ).format(
                k=sql.Identifier(tmap["key"]),
                b=sql.Identifier(s["bidx_column"]),
                t=sql.Identifier(cfg.mapping["schema"], tmap["target"]),
            ),
            (keys, cfg.system, cfg.system),
        ).fetchall()
    )
    mine = dict(zip(keys, bidx, strict=True))
    return sorted(k for k, b in theirs.items() if b != mine.get(k))


def record_persons(
    conn, cfg, ring, run_id: str, entries: list[tuple], matched: dict[str, str] | None = None
) -> dict[str, int]:
    """Write the person map: entries (key, bidx, decision, target customer id) of this
    system's customers, and a `target` row for every existing customer `matched` (export
    key -> target customer, merged or linked). A
    (system, key) keeps its person id forever; its target customer and decision follow
    the latest run."""
    from psycopg import sql

    from handover.db.load import copy_arrow

    s = settings(cfg)
    system = cfg.system
    rows = [
        (system, e[0], person_id(ring, e[1]), e[3], e[2], e[4] if len(e) > 4 else "resident_id")
        for e in entries
        if e[1]
    ]
    bidx_of = {e[0]: e[1] for e in entries}
    targets = {
        (
            s["target_system"] if s else TARGET_SYSTEM,
            t,
            person_id(ring, bidx_of[k]),
            t,
            "target",
            "resident_id",
        )
        for k, t in (matched or {}).items()
        if bidx_of.get(k)
    }
    rows += sorted(targets)
    if not rows:
        return {}
    names = ["source_system", "source_key", "person_id", "target_customer_id", "decision", "rule"]
    table = pa.table({n: pa.array([r[i] for r in rows], pa.string()) for i, n in enumerate(names)})
    conn.execute(
        "CREATE TEMP TABLE person_stage (source_system text, source_key text, "
        "person_id text, target_customer_id text, decision text, rule text) "
        "ON COMMIT DROP"
    )
    copy_arrow(conn, sql.Identifier("person_stage"), table)
    conn.execute(
        "INSERT INTO handover_meta.person_map (source_system, source_key, person_id, "
        "target_customer_id, decision, rule, run_id) SELECT source_system, source_key, "
        "person_id, target_customer_id, decision, rule, %s FROM person_stage "
        "ON CONFLICT (source_system, source_key) DO UPDATE SET "
        "target_customer_id = excluded.target_customer_id, decision = excluded.decision, "
        "run_id = excluded.run_id, recorded_at = now() "
        "WHERE person_map.decision <> 'target'",
        (run_id,),
    )
    counts: dict[str, int] = {}
    for r in rows:
        counts[r[4]] = counts.get(r[4], 0) + 1
    return counts


def linked_customers(conn, customer_id: str) -> set[str]:
    """Every customer id of the person `customer_id` belongs to, in every system: the
    target's holder and every record merged into it (person map and merge map)."""
    if conn.execute("SELECT to_regclass('handover_meta.person_map')").fetchone()[0] is None:
        return {customer_id}
    rows = conn.execute(
        "SELECT p.source_key, p.target_customer_id FROM handover_meta.person_map p WHERE "
        "p.person_id IN (SELECT person_id FROM handover_meta.person_map WHERE source_key = %s "
        "OR target_customer_id = %s)",
        (customer_id, customer_id),
    ).fetchall()
    out = {customer_id}
    for a, b in rows:
        out |= {a, b}
    return out


def holder(conn, customer_id: str) -> str | None:
    """The target customer that holds the person of `customer_id` (itself, or the one it
    was merged into), None when the person map does not know it."""
    if conn.execute("SELECT to_regclass('handover_meta.person_map')").fetchone()[0] is None:
        return None
    row = conn.execute(
        "SELECT target_customer_id FROM handover_meta.person_map WHERE "
        "source_key = %s ORDER BY recorded_at DESC LIMIT 1",
        (customer_id,),
    ).fetchone()
    return row[0] if row else None


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
    s = settings(cfg)
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
            mine = blind_index([None if v is None else str(v) for v in mine], ring, domain)
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


# ---------------------------------------------------------------- second rule: name + birth
NAME_BIRTH = "EXISTING_NAME_BIRTH"
_DOTS = str.maketrans({".": "·", "•": "·", "・": "·", "‧": "·", "．": "·", "｡": "·"})


def name_birth_fields(cfg) -> tuple[str, str, str, str] | None:
    """(source name column, target name field, source birth-date column, target field) of
    the customer table, for the second match rule; None where either is not mapped."""
    s = settings(cfg)
    if s is None:
        return None
    table = s["table"]
    columns = cfg.table(table)["columns"]
    birth = (cfg.rules(table).get("resident_id") or {}).get("birth_date") or next(
        (c for c, spec in columns.items() if spec.get("pii") == "birth_date"), None
    )
    name = next((c for c, spec in columns.items() if spec.get("pii") == "name"), None)
    fields = cfg.table_mapping(table)["fields"]

    def plain(src):  # mapped as it is: the target holds the same value
        return next(
            (
                n
                for n, f in fields.items()
                if src and f.get("from") == src and not f.get("protect") and "lookup" not in f
            ),
            None,
        )

    nf, bf = plain(name), plain(birth)
    return (name, nf, birth, bf) if nf and bf else None


def name_key(name: Any) -> str | None:
    """A name as one person writes it in any system: NFKC, no spaces, one middle dot."""
    import unicodedata

    if name is None or (isinstance(name, float) and name != name):
        return None
    text = "".join(unicodedata.normalize("NFKC", str(name)).translate(_DOTS).split())
    return text.upper() or None


def name_birth_candidates(
    raw: pd.DataFrame,
    rules: dict,
    key: str,
    exported_at,
    id_column: str,
    fields: tuple[str, str, str, str],
) -> pd.DataFrame:
    """Records that failed only because their resident ID is missing: every other rule of
    the table still holds (validated again without the ID's). (key, _source_row, name key,
    birth date) of those, for `match_name_birth`."""
    from handover.stages.cleanse import validate

    relaxed = {k: v for k, v in rules.items() if k not in ("resident_id", "dedupe")}
    relaxed["mandatory"] = [c for c in rules.get("mandatory", []) if c != id_column]
    typed, verdict = validate(raw, relaxed, key=key, exported_at=exported_at)
    ok = ~verdict.failed
    name, birth = fields[0], fields[2]
    out = pd.DataFrame(
        {
            "key": typed.loc[ok, key].astype(object).to_numpy(),
            "_source_row": raw.loc[ok, "_source_row"].to_numpy()
            if "_source_row" in raw
            else raw.index[ok].to_numpy(),
            "name": [name_key(v) for v in typed.loc[ok, name].astype(object)],
            "birth": pd.to_datetime(typed.loc[ok, birth], errors="coerce").dt.date.to_numpy(),
        }
    )
    return out[out["name"].notna() & out["birth"].notna() & out["key"].notna()]


def match_name_birth(
    conn, cfg, cands: pd.DataFrame, ours: set[str]
) -> tuple[dict[str, tuple[str, str]], int]:
    """({export key: (target customer, its ID's blind index)}, ambiguous count) for
    records without an ID whose normalised name and birth date one target customer, and
    only one, has (not one of this export's own keys). The target's names are compared
    in the task's memory; nothing is logged or stored but ids."""
    from psycopg import sql

    s = settings(cfg)
    fields = name_birth_fields(cfg)
    if s is None or fields is None or cands.empty:
        return {}, 0
    tmap = cfg.table_mapping(s["table"])
    if (
        conn.execute(
            "SELECT to_regclass(%s)", (f"{cfg.mapping['schema']}.{tmap['target']}",)
        ).fetchone()[0]
        is None
    ):
        return {}, 0
    rows = conn.execute(
        sql.SQL("SELECT {k}, {n}, {b}, {x} FROM {t} WHERE {b} = ANY(%s)").format(
            k=sql.Identifier(tmap["key"]),
            n=sql.Identifier(fields[1]),
            b=sql.Identifier(fields[3]),
            x=sql.Identifier(s["bidx_column"]),
            t=sql.Identifier(cfg.mapping["schema"], tmap["target"]),
        ),
        (sorted(set(cands["birth"])),),
    ).fetchall()
    theirs: dict[tuple, list[tuple[str, str]]] = {}
    for k, name, birth, bidx in rows:
        theirs.setdefault((name_key(name), birth), []).append((k, bidx))
    out, ambiguous = {}, 0
    for k, name, birth in zip(cands["key"], cands["name"], cands["birth"], strict=True):
        hits = theirs.get((name, birth), [])
        if len(hits) == 1 and hits[0][0] not in ours and hits[0][1]:
            out[k] = hits[0]
        elif len(hits) > 1:
            ambiguous += 1
    return out, ambiguous


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
    cols = [sql.Identifier(tmap["key"])]
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
    from handover.config.loader import ConfigError

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

    from handover.db.load import copy_arrow

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


# ---------------------------------------------------------------- consents across systems
def others_held(conn, system: str) -> bool:
    """Whether the target holds customers of a system other than `system` (the person map
    says so): only then can a person of this export be someone else's customer."""
    if (
        None
        in conn.execute(
            "SELECT to_regclass('handover_meta.person_map'), to_regclass('crm.consent_effective')"
        ).fetchone()
    ):
        return False
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM handover_meta.person_map WHERE source_system <> %s)",
        (system,),
    ).fetchone()[0]


def normalised_ids(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Resident IDs as cleanse reads them (NFKC, then the one 18-digit form)."""
    import pyarrow.compute as pc

    from handover.core.validators import upgrade_resident_ids

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return upgrade_resident_ids(pc.utf8_normalize(values.cast(pa.string()), "NFKC"))[0]


def withdrawn_elsewhere(
    conn, cfg, ring, keys: list[str], bidx: list[str | None], purposes: list[str]
) -> dict[str, set[str]]:
    """{purpose: this export's customer keys} whose person is a target customer of another
    system (the acquirer's own, another export's) that withdrew the purpose there: a
    withdrawal in either system holds, so comply treats the consent as not given. Only
    blind indexes go to the database."""
    from psycopg import sql

    s = settings(cfg)
    if s is None or not purposes or not others_held(conn, cfg.system):
        return {}
    by_bidx: dict[str, list[str]] = {}
    for k, b in zip(keys, bidx, strict=True):
        if k is not None and b:
            by_bidx.setdefault(b, []).append(k)
    if not by_bidx:
        return {}
    tmap = cfg.table_mapping(s["table"])
    rows = conn.execute(
        sql.SQL(
            "SELECT c.{b}, c.{k}, e.purpose FROM {t} c JOIN crm.consent_effective e ON "
            "e.customer_id = c.{k} WHERE NOT e.granted AND e.purpose = ANY(%s) AND c.{b} = ANY(%s)"
        ).format(
            b=sql.Identifier(s["bidx_column"]),
            k=sql.Identifier(tmap["key"]),
            t=sql.Identifier(cfg.mapping["schema"], tmap["target"]),
        ),
        (purposes, list(by_bidx)),
    ).fetchall()
    out: dict[str, set[str]] = {}
    for b, holder_key, purpose in rows:
        mine = [k for k in by_bidx[b] if k != holder_key]  # not this export's own record
        if mine:
            out.setdefault(purpose, set()).update(mine)
    return out
