"""Crypto-shredding inside backups, which cannot be edited: which readable backup files
hold given values, and destroying their data keys. Retention and erasure
(handover.lifecycle.retention) decide what to shred; this module does it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from handover.core.errors import BackupCorrupt
from handover.lifecycle.backup.files import fetch_file, key_object
from handover.lifecycle.lake_purge import purge
from handover.storage.objects import Lake

log = logging.getLogger("handover")


def shred_files(conn, lake: Lake, backup_id: str, files: Iterable[str], reason: str) -> list[dict]:
    """Crypto-shred files of a backup: destroy their data keys (every version). The caller
    owns the transaction that records it; returns what was destroyed (ids, no values)."""
    destroyed = []
    for file in files:
        row = conn.execute(
            "SELECT data_key_id, wrapping_key_id FROM handover_meta.backup_file "
            "WHERE backup_id = %s AND file = %s",
            (backup_id, file),
        ).fetchone()
        versions = purge(lake, key_object(backup_id, file), exact=True)
        conn.execute(
            "UPDATE handover_meta.backup_file SET shredded_at = now(), shred_reason = %s "
            "WHERE backup_id = %s AND file = %s AND shredded_at IS NULL",
            (reason, backup_id, file),
        )
        destroyed.append(
            {
                "backup_id": backup_id,
                "file": file,
                "data_key_id": row[0] if row else None,
                "wrapping_key_id": row[1] if row else None,
                "key_versions_deleted": versions,
            }
        )
    if destroyed:
        conn.execute(
            "UPDATE handover_meta.backup SET status = 'shredded' WHERE backup_id = %s "
            "AND status <> 'expired'",
            (backup_id,),
        )
    return destroyed


def readable_backups(conn) -> list[tuple[str, list[dict]]]:
    """(backup id, catalogue entries of the files whose data key was not destroyed) of
    every backup not expired; entries carry what fetch_file checks."""
    rows = conn.execute(
        "SELECT f.backup_id, f.file, f.sha256, f.plain_sha256, f.rows "
        "FROM handover_meta.backup_file f JOIN handover_meta.backup b USING (backup_id) "
        "WHERE b.status IN ('written', 'complete', 'shredded') AND f.shredded_at IS NULL "
        "ORDER BY 1, 2"
    ).fetchall()
    out: dict[str, list[dict]] = {}
    for backup_id, file, sha, plain, n in rows:
        out.setdefault(backup_id, []).append(
            {"file": file, "sha256": sha, "plain_sha256": plain, "rows": n}
        )
    return list(out.items())


def files_containing(
    conn, lake: Lake, ring, values: set[str], normalise: Callable | None = None
) -> dict[str, list[str]]:
    """Which readable backup files hold any of `values` in any text column: {backup: files}.

    Decrypts each file in turn (one at a time on local disk, deleted straight after). A
    file that cannot be checked (missing, corrupt) counts as holding them: what cannot be
    proven clean is shredded."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    hits: dict[str, list[str]] = {}
    if not values:
        return hits
    needles = pa.array(sorted(values), pa.string())
    for backup_id, entries in readable_backups(conn):
        workdir = Path(tempfile.mkdtemp(prefix="handover-scan-"))
        try:
            for entry in entries:
                try:
                    path = fetch_file(lake, ring, backup_id, entry, workdir)
                except BackupCorrupt as exc:
                    log.warning(
                        "cannot check %s/%s (%s): counted as holding the values",
                        backup_id,
                        entry["file"],
                        str(exc).split(";")[0],
                    )
                    hits.setdefault(backup_id, []).append(entry["file"])
                    continue
                if path is None:
                    continue
                pf = pq.ParquetFile(path)
                text_cols = [
                    f.name
                    for f in pf.schema_arrow
                    if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
                ]
                found = False
                if text_cols:
                    for batch in pf.iter_batches(batch_size=65536, columns=text_cols):
                        for col in batch.columns:
                            arr = normalise(col) if normalise else col
                            if pc.any(pc.is_in(arr, value_set=needles)).as_py():
                                found = True
                                break
                        if found:
                            break
                path.unlink()
                if found:
                    hits.setdefault(backup_id, []).append(entry["file"])
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return hits
