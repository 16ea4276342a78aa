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

What becomes of a merged record's fields (conflicts, survivorship, review) is in
handover.stages.identity_survivorship.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, cast

import pandas as pd
import pyarrow as pa

from handover.config.identity import match_columns

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
    from handover.core.errors import ConfigError

    s = cast(dict[str, Any], settings(cfg))  # called only where identity applies (on_match)
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

    from handover.db.bulk_copy import copy_arrow

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
    # a field was found for each (nf, bf), so each column (name, birth) is named
    return (cast(str, name), nf, cast(str, birth), bf) if nf and bf else None


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
