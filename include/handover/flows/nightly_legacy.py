"""The legacy side of the night's reconciliation: the legacy state projected into the target's
shape, and what the target accounts for differently (corrections, erasures, survivors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from handover.config.model import SourceConfig
from handover.core.contracts import RunContext
from handover.core.errors import SourceError
from handover.flows.common import VERSION_COLUMNS
from handover.flows.nightly_plan import change_set_dir, state_file


# ---------------------------------------------------------------- reconcile
def compare_fields(cfg: SourceConfig, table: str) -> list[tuple[str, str, dict | None]]:
    """(target column, source column, lookup) of every field kept in clear in the target.

    Encrypted and redacted fields are left out (their target value is not the legacy value
    both sides could hash; the blind index pins the plaintext), as are fields built from
    several columns.
    """
    tmap = cfg.table_mapping(table)
    out = []
    for field, spec in tmap["fields"].items():
        protect = set(spec.get("protect", []))
        if field == tmap["key"] or "from" not in spec or protect & {"encrypt", "redact"}:
            continue  # derived from several columns, or not a function of the legacy value
        lookup = {str(k): v for k, v in spec["lookup"].items()} if "lookup" in spec else None
        out.append((field, spec["from"], lookup))
    return out


def legacy_projection(
    cfg: SourceConfig,
    table: str,
    state_dir: Path,
    as_of: pd.Timestamp,
    reparent: dict[str, str] | None = None,
) -> pd.DataFrame:
    """The legacy state of a table as the target would hold it: key, row hash, version, money.

    The rows go through the migration's own normalisation (`cleanse.validate`) and the
    mapping's lookups, so a clean legacy row and its target row hash alike. `reparent`:
    a child row of a customer merged into another record of its person (merge map) is
    held by the survivor in the target, and is hashed so.
    """
    import pyarrow.csv as pacsv

    from handover.stages.cleanse import validate
    from handover.stages.diff import row_hash
    from handover.stages.reconcile import MONEY_COLUMNS

    spec, rules = cfg.table(table), cfg.rules(table)
    path = state_file(state_dir, table)
    with open(path, encoding="utf-8-sig", newline="") as fh:
        header = fh.readline().rstrip("\r\n").split(",")
    raw = pacsv.read_csv(
        path,
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in header}, strings_can_be_null=False
        ),
    ).to_pandas()
    typed, _ = validate(raw, rules, key=spec["key"], exported_at=as_of)
    fields = compare_fields(cfg, table)
    columns = []
    child_of = spec.get("customer_column") if spec.get("customer_column") != spec["key"] else None
    for _field, src, lookup in fields:
        values = typed[src].astype(object).tolist()
        if reparent and src == child_of:
            values = [reparent.get(v, v) if isinstance(v, str) else v for v in values]
        if lookup is not None:
            values = [lookup.get(str(v)) if isinstance(v, str) else None for v in values]
        columns.append(values)
    keys = typed[spec["key"]].astype(object)
    src_version = VERSION_COLUMNS.get(table)
    money = next((s for f, s, _ in fields if f in MONEY_COLUMNS), None)
    cust_col = spec.get("customer_column")
    out = pd.DataFrame(
        {
            "key": keys.to_numpy(),
            "customer": typed[cust_col].astype(object).to_numpy() if cust_col else None,
            "hash": [row_hash(vals) for vals in zip(*columns, strict=True)]
            if columns
            else [row_hash([]) for _ in range(len(keys))],
            "version": typed[src_version].to_numpy() if src_version else pd.NaT,
            "money": pd.to_numeric(typed[money], errors="coerce").to_numpy() if money else np.nan,
        }
    )
    out = out[out["key"].notna()]
    return out.drop_duplicates("key", keep="first").reset_index(drop=True)


def _latest_applied(conn, ctx: RunContext) -> tuple[pd.Timestamp, Path]:
    """As of when old and new must agree: the newest night applied (this one or later)."""
    row = conn.execute(
        "SELECT exported_at FROM handover_meta.run WHERE dag_id=%s AND (status='succeeded' OR "
        "run_id=%s) ORDER BY exported_at DESC LIMIT 1",
        (ctx["dag_id"], ctx["run_id"]),
    ).fetchone()
    as_of = pd.Timestamp(row[0])
    folder = change_set_dir(ctx["changes_dir"], as_of - pd.Timedelta(days=1))
    manifest = folder / "change_manifest.json"
    if not manifest.is_file():
        raise SourceError(
            f"{manifest}: the newest night applied ends {as_of}; its change "
            "set (with the legacy state) is needed to reconcile"
        )
    state = folder / json.loads(manifest.read_text(encoding="utf-8")).get("state", "state")
    exported = json.loads((state / "export_manifest.json").read_text())["exported_at"]
    if pd.Timestamp(exported) != as_of:
        raise SourceError(f"{state}: legacy state as of {exported}, expected {as_of}")
    return as_of, state


def book_names(table: str, keys) -> dict[str, str]:
    """Each key under the names the books may give it: itself, and the keyed hash that
    replaces it once its row is destroyed (retention.key_digest); name -> key."""
    from handover.lifecycle.retention.plan import DESTROYED, key_digest
    from handover.protection.fields import load_keyring

    ring = load_keyring()
    out = {k: k for k in keys}
    out.update({DESTROYED + key_digest(ring, table, k): k for k in keys})
    return out


def _by_book_name(marks: dict[str, Any], table: str, keys: pd.Series) -> pd.Series:
    """`marks` (book name -> value) for each key, found by the key or by its keyed hash."""
    found = keys.map(marks)
    if any(str(k).startswith("destroyed:") for k in marks) and found.isna().any():
        missing = keys[found.isna()].dropna().astype(str)
        named = book_names(table, set(missing))
        by_key = {named[n]: v for n, v in marks.items() if n in named}
        found = found.where(found.notna(), keys.map(by_key))
    return found


def _corrected(conn, table: str, legacy: pd.DataFrame) -> np.ndarray:
    """Per legacy row: a subject request corrected it in the new system, and the legacy row
    has not changed since (its version is not newer than the correction)."""
    from handover.lifecycle.retention.plan import key_digest
    from handover.protection.fields import load_keyring

    rows = conn.execute(
        "SELECT key_hmac, max(corrected_at) FROM handover_meta.correction "
        "WHERE table_name = %s GROUP BY 1",
        (table,),
    ).fetchall()
    if not rows:
        return np.zeros(len(legacy), dtype=bool)
    ring = load_keyring()
    at = dict(rows)
    when = pd.to_datetime(
        legacy["key"].map(
            lambda k: at.get(key_digest(ring, table, str(k))) if isinstance(k, str) else None
        )
    )
    hit = when.notna()
    versions = pd.to_datetime(legacy["version"], errors="coerce")
    return (hit & (versions.isna() | (versions <= when))).to_numpy()


def _survivors(conn, table: str) -> dict[str, str]:
    """{merged key: the record that holds its person now} of a parent table (merge map,
    the latest decision per key, followed to its end)."""
    pairs = dict(
        conn.execute(
            "SELECT DISTINCT ON (merged_key) merged_key, survivor_key FROM handover_meta.merge_map "
            "WHERE table_name = %s AND merged_key <> survivor_key ORDER BY merged_key, "
            "recorded_at DESC",
            (table,),
        ).fetchall()
    )
    out = {}
    for k, v in pairs.items():
        seen = {k}
        while v in pairs and v not in seen:
            seen.add(v)
            v = pairs[v]
        out[k] = v
    return out


def _accounted(conn, table: str, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per key, the newest as-of of a quarantine and of an exclusion in a finished run. A
    record merged into another of its person (merge map) is absent from the target as a
    quarantined one is: counted with them."""
    out: dict[str, dict[str, Any]] = {"q": {}, "x": {}}
    for kind, key, as_of in conn.execute(
        "SELECT e.kind, e.record_key, max(r.exported_at) FROM (SELECT 'q' AS kind, run_id, "
        "record_key FROM handover_meta.quarantine WHERE table_name=%s UNION ALL SELECT 'x', "
        "run_id, record_key FROM handover_meta.exclusion WHERE table_name=%s UNION ALL "
        "SELECT 'q', run_id, merged_key FROM handover_meta.merge_map WHERE table_name=%s "
        "AND merged_key <> survivor_key) e "
        "JOIN handover_meta.run r USING (run_id) "
        "WHERE r.status='succeeded' OR r.run_id=%s GROUP BY 1, 2",
        (table, table, table, run_id),
    ):
        out[kind][key] = as_of
    return out["q"], out["x"]
