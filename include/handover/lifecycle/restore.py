"""Restore drills: a backup is only a backup once it has been restored.

The weekly `restore_drill` DAG restores the newest complete backup (handover.lifecycle.backup)
into a scratch database on the target's server, then verifies it: every table's row
count and content checksum must equal both the backup's manifest and the ledger rows
the backup wrote into the live database (stage `backup`), and the restored audit trail's
hash chain must be intact. The time to restore (download, decrypt, load) and to verify
is measured; the drill and its result go to `handover_meta.restore_drill` and the audit
trail, whether it passed or failed. A damaged file fails the drill with one line that
names the file and what to do.

The scratch database is created with the project's own DDL (ledger.ensure_schema and
lifecycle.sql), so a drill also proves that today's schema still takes the backup. The
login needs CREATEDB on the target's server.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from handover.core.errors import BackupCorrupt, LifecycleError, RestoreMismatch
from handover.db import ledger
from handover.lifecycle.backup.files import fetch_file, read_manifest
from handover.lifecycle.backup.tables import SESSION, content_checksum, table_columns
from handover.lifecycle.books import ensure_lifecycle_schema, lifecycle_connect
from handover.storage.lake import lake_from_url

log = logging.getLogger("handover")


def scratch_dsn(dbname: str) -> str:
    """The target's conninfo with another database name."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from handover.config.connections import target_dsn

    params = conninfo_to_dict(target_dsn())
    params["dbname"] = dbname
    return make_conninfo("", **params)


def latest_backup(conn) -> str:
    row = conn.execute(
        "SELECT backup_id FROM handover_meta.backup WHERE status = 'complete' "
        "ORDER BY started_at DESC LIMIT 1"
    ).fetchone()
    if row is None:
        raise LifecycleError(
            "no complete backup to restore: trigger the backup DAG first (a "
            "backup shredded by retention or erasure is not restorable)"
        )
    return row[0]


NOW = object()


def _record(drill_id: str, **fields) -> None:
    """Upsert the drill's row in the live database (its own transaction)."""
    from psycopg import sql

    detail = json.dumps(fields.pop("detail", {}), default=str)
    with ledger.connect() as conn, conn.transaction():
        conn.execute(
            "INSERT INTO handover_meta.restore_drill (drill_id, backup_id, scratch_db, detail) "
            "VALUES (%(drill_id)s, %(backup_id)s, %(scratch_db)s, %(detail)s) "
            "ON CONFLICT (drill_id) DO UPDATE SET detail = handover_meta.restore_drill.detail "
            "|| excluded.detail",
            {
                "drill_id": drill_id,
                "backup_id": fields.pop("backup_id", ""),
                "scratch_db": fields.pop("scratch_db", ""),
                "detail": detail,
            },
        )
        for col, value in fields.items():
            conn.execute(
                sql.SQL(
                    "UPDATE handover_meta.restore_drill SET {} = {} WHERE drill_id = %s"
                ).format(
                    sql.Identifier(col), sql.SQL("now()") if value is NOW else sql.Placeholder()
                ),
                (drill_id,) if value is NOW else (value, drill_id),
            )


def _fail(drill_id: str, backup_id: str, exc: Exception, stage: str) -> None:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    _record(drill_id, success=False, failure=message[:1000], finished_at=NOW)
    with ledger.connect() as conn, conn.transaction():
        ledger.audit(
            conn,
            "restore_drill_failed",
            detail={"drill_id": drill_id, "backup_id": backup_id, "stage": stage, "error": message},
        )


def create_scratch(name: str) -> None:
    import psycopg

    with psycopg.connect(_server_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_scratch(name: str) -> None:
    """Drop a drill's scratch database (idempotent)."""
    import psycopg

    if not name.startswith("handover_drill_"):
        raise ValueError(f"refusing to drop {name!r}: not a drill scratch database")
    with psycopg.connect(_server_dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    log.info("scratch database %s dropped", name)


def _server_dsn() -> str:
    from handover.config.connections import target_dsn

    return target_dsn()


def restore_backup(backup_id: str | None = None, *, drill_id: str | None = None) -> dict:
    """Restore a backup (default: the newest complete one) into a new scratch database.

    Returns a small manifest (drill id, backup id, scratch database, seconds)."""
    import psycopg
    import pyarrow as pa
    import pyarrow.parquet as pq
    from psycopg import sql

    from handover.db.bulk_copy import copy_arrow
    from handover.protection.fields import load_keyring

    started = time.monotonic()
    lake, ring = lake_from_url(), load_keyring()
    drill_id = drill_id or f"drill_{uuid.uuid4().hex[:10]}"
    try:  # a drill that finds nothing to restore fails, and that is on record too
        with lifecycle_connect() as conn:
            backup_id = backup_id or latest_backup(conn)
            row = conn.execute(
                "SELECT manifest_sha256 FROM handover_meta.backup WHERE backup_id = %s",
                (backup_id,),
            ).fetchone()
        if row is None:
            raise LifecycleError(f"backup {backup_id} is not in handover_meta.backup")
    except LifecycleError as exc:
        _record(drill_id, backup_id=backup_id or "(none)")
        _fail(drill_id, backup_id or "(none)", exc, "find backup")
        raise
    scratch = f"handover_drill_{uuid.uuid4().hex[:10]}"
    _record(drill_id, backup_id=backup_id, scratch_db=scratch)
    workdir = Path(tempfile.mkdtemp(prefix="handover-restore-"))
    created = False
    try:
        manifest = read_manifest(lake, backup_id, row[0])
        files = []
        for entry in manifest["files"]:  # check every file before creating anything
            path = fetch_file(lake, ring, backup_id, entry, workdir)
            if path is None:
                raise LifecycleError(
                    f"backup {backup_id}: the data key of {entry['file']} was destroyed "
                    "(crypto-shredded by retention or erasure); restore a newer backup"
                )
            files.append((entry, path))
        create_scratch(scratch)
        created = True
        rows = 0
        with psycopg.connect(scratch_dsn(scratch)) as dst:
            ensure_lifecycle_schema(dst)
            with dst.transaction():
                for stmt in SESSION:
                    dst.execute(stmt)
                for entry, path in files:
                    schema, table = entry["table"].split(".", 1)
                    have = (
                        {c for c, _ in table_columns(dst, schema, table)}
                        if dst.execute("SELECT to_regclass(%s)", (entry["table"],)).fetchone()[0]  # type: ignore[index]  # to_regclass always returns a row
                        else set()
                    )
                    want = [c for c, _ in entry["columns"]]
                    missing = [c for c in want if c not in have]
                    if missing:
                        raise LifecycleError(
                            f"backup {backup_id}: {entry['table']} has columns {missing} that "
                            "today's schema lacks; restore with the code version that took "
                            "the backup"
                        )
                    target = sql.Identifier(schema, table)
                    dst.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(target))
                    pf = pq.ParquetFile(path)
                    for batch in pf.iter_batches(batch_size=65536):
                        copy_arrow(dst, target, pa.Table.from_batches([batch]))
                    dst.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER USER").format(target))
                    _reset_sequences(dst, schema, table)
                    rows += entry["rows"]
                    path.unlink()
    except Exception as exc:
        _fail(drill_id, backup_id, exc, "restore")
        if isinstance(exc, BackupCorrupt):  # never again the "latest complete" backup
            with ledger.connect() as conn, conn.transaction():
                conn.execute(
                    "UPDATE handover_meta.backup SET status = 'corrupt' "
                    "WHERE backup_id = %s AND status = 'complete'",
                    (backup_id,),
                )
                ledger.audit(
                    conn,
                    "backup_corrupt",
                    detail={
                        "backup_id": backup_id,
                        "drill_id": drill_id,
                        "error": str(exc).splitlines()[0][:300] if str(exc) else "",
                    },
                )
        if created:
            drop_scratch(scratch)
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    secs = time.monotonic() - started
    _record(drill_id, restore_seconds=secs, tables=len(files), rows=rows)
    log.info(
        "restore %s of backup %s into %s: %d tables, %d rows in %.1fs",
        drill_id,
        backup_id,
        scratch,
        len(files),
        rows,
        secs,
    )
    return {
        "drill_id": drill_id,
        "backup_id": backup_id,
        "scratch_db": scratch,
        "tables": len(files),
        "rows": rows,
        "restore_seconds": round(secs, 3),
    }


def _reset_sequences(conn, schema: str, table: str) -> None:
    from psycopg import sql

    rel = f"{schema}.{table}"
    for col, seq in conn.execute(
        "SELECT a.attname, pg_get_serial_sequence(%s, a.attname) FROM pg_attribute a "
        "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
        (rel, rel),
    ).fetchall():
        if seq:
            conn.execute(
                sql.SQL("SELECT setval(%s, coalesce(max({c}), 0) + 1, false) FROM {t}").format(
                    c=sql.Identifier(col), t=sql.Identifier(schema, table)
                ),
                (seq,),
            )


def verify_restore(restored: dict) -> dict:
    """The drill's gate: counts and checksums equal the manifest and the live ledger."""
    import psycopg

    started = time.monotonic()
    drill_id, backup_id, scratch = (
        restored["drill_id"],
        restored["backup_id"],
        restored["scratch_db"],
    )
    lake = lake_from_url()
    try:
        with ledger.connect() as conn:
            sha = conn.execute(  # type: ignore[index]  # restore_backup found this backup's row
                "SELECT manifest_sha256 FROM handover_meta.backup WHERE backup_id = %s",
                (backup_id,),
            ).fetchone()[0]
            booked = {
                t: (int(n), c)
                for t, n, c in conn.execute(
                    "SELECT table_name, rows_out, checksum FROM handover_meta.ledger "
                    "WHERE run_id = %s AND stage = 'backup'",
                    (backup_id,),
                ).fetchall()
            }
        manifest = read_manifest(lake, backup_id, sha)
        problems = []
        with psycopg.connect(scratch_dsn(scratch)) as dst:
            for stmt in SESSION:
                dst.execute(stmt)
            for entry in manifest["files"]:
                schema, table = entry["table"].split(".", 1)
                n, checksum = content_checksum(dst, schema, table, [c for c, _ in entry["columns"]])
                if (n, checksum) != (entry["rows"], entry["content_checksum"]):
                    problems.append(
                        f"{entry['table']}: restored {n} rows (checksum "
                        f"{checksum[:12]}), manifest {entry['rows']} "
                        f"({entry['content_checksum'][:12]})"
                    )
                if booked.get(entry["table"]) != (n, checksum):
                    problems.append(
                        f"{entry['table']}: restored {n} rows, ledger "
                        f"{booked.get(entry['table'], ('no row',))[0]}"
                    )
            intact, entries = ledger.verify_audit_chain(dst)
            if not intact:
                problems.append("restored audit trail: hash chain broken")
        if problems:
            raise RestoreMismatch(
                f"restore drill {drill_id} of backup {backup_id}: "
                f"{len(problems)} difference(s), first: {problems[0]}; the "
                "backup is not trustworthy: take a new one and investigate"
            )
    except Exception as exc:
        _fail(drill_id, backup_id, exc, "verify")
        raise
    secs = time.monotonic() - started
    total = restored.get("restore_seconds", 0) + secs
    _record(
        drill_id,
        success=True,
        verify_seconds=secs,
        finished_at=NOW,
        detail={"audit_entries_restored": entries, "tables_verified": len(manifest["files"])},
    )
    with ledger.connect() as conn, conn.transaction():
        ledger.audit(
            conn,
            "restore_drill",
            detail={
                "drill_id": drill_id,
                "backup_id": backup_id,
                "result": "passed",
                "tables": len(manifest["files"]),
                "rows": restored.get("rows"),
                "restore_seconds": round(restored.get("restore_seconds", 0), 3),
                "verify_seconds": round(secs, 3),
                "time_to_restore_seconds": round(total, 3),
            },
        )
    log.info(
        "restore drill %s passed: backup %s, %d tables, restore %.1fs + verify %.1fs",
        drill_id,
        backup_id,
        len(manifest["files"]),
        restored.get("restore_seconds", 0),
        secs,
    )
    return {
        **restored,
        "verify_seconds": round(secs, 3),
        "time_to_restore_seconds": round(total, 3),
        "success": True,
    }


def run_drill(backup_id: str | None = None, *, keep: bool = False) -> dict:
    """The restore_drill DAG in one process: restore, verify, drop the scratch database."""
    restored = restore_backup(backup_id)
    try:
        return verify_restore(restored)
    finally:
        if not keep:
            drop_scratch(restored["scratch_db"])


def main(argv: list[str] | None = None) -> int:
    """`python -m handover.lifecycle.restore [--backup-id ID] [--keep]`: a drill by hand."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m handover.lifecycle.restore")
    ap.add_argument("--backup-id")
    ap.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(json.dumps(run_drill(args.backup_id, keep=args.keep), default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
