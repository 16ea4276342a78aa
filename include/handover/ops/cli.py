"""`python -m handover.ops.cli`: the commands people type around the DAGs.

summary [--run-id ID]   per-table funnel of a run (latest by default) and report paths
keys                    print a new keyring (JSON) for the `handover_keys` connection
    --key-id ID             id of the (first or added) key, default k1
    --kms-key-id KEY        keys made and stored wrapped by this AWS KMS key (envelope)
    --from FILE             start from this keyring: with --add ID, a new active key;
                            with --retire ID, drop an old key; with --kms-key-id alone,
                            the same keys moved under KMS
rotate-keys [--system S] [--batch-size N]
                        re-encrypt the target's encrypted columns under the active key
verify-audit            recompute the audit trail's hash chain; names the first broken entry
check --system S --source-dir D [--rows N] [--tolerance F]
                        validate a source system's config files, then dry-run them on the
                        first N rows of its export; exits 1 naming every problem
"""

from __future__ import annotations

import argparse
import json
import sys

import psycopg

from handover.db import ledger
from handover.storage.lake import lake_from_url, safe_run_id


def summary(run_id: str | None) -> int:
    with ledger.connect() as conn:
        if run_id is None:
            row = conn.execute(
                "SELECT run_id FROM handover_meta.run ORDER BY started_at DESC LIMIT 1"
            ).fetchone()
            if row is None:
                print("no runs yet: run the customer_migration DAG first", file=sys.stderr)
                return 1
            run_id = row[0]
        status = conn.execute(
            "SELECT status FROM handover_meta.run WHERE run_id=%s", (run_id,)
        ).fetchone()
        rows = conn.execute(
            "SELECT table_name, source_rows, loaded, quarantined, excluded, balanced, merged "
            "FROM handover_meta.reconciliation WHERE run_id=%s ORDER BY table_name",
            (run_id,),
        ).fetchall()
    lake = lake_from_url()
    print(f"run {run_id}: {status[0] if status else 'unknown'}")
    header = (
        f"{'table':<18}{'in':>10}{'loaded':>10}{'merged':>8}{'quarant.':>10}"
        f"{'excluded':>10}  balance"
    )
    print(header)
    print("-" * len(header))
    ok = bool(rows)
    for t, n, loaded, q, x, balanced, m in rows:
        sums = loaded + m + q + x == n
        ok &= bool(balanced) and sums
        print(
            f"{t:<18}{n:>10,}{loaded:>10,}{m:>8,}{q:>10,}{x:>10,}  "
            f"{'in = loaded + merged + quarantined + excluded' if sums else 'DOES NOT BALANCE'}"
            f"{'' if balanced else ' (reconciliation failed)'}"
        )
    base = f"runs/{safe_run_id(run_id)}"
    print(f"\nreport:          {lake.uri(base + '/reports/report.html')}")
    print(f"report (JSON):   {lake.uri(base + '/reports/report.json')}")
    print(f"validation docs: {lake.uri(base + '/docs/index.html')}")
    return 0 if ok else 2


def keys_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from handover.lifecycle import rotation as keys
    from handover.protection.fields import Keyring

    if args.from_file is None:
        if args.add or args.retire:
            print(
                "keys: --add and --retire need --from FILE (the current keyring)", file=sys.stderr
            )
            return 2
        ring = (
            keys.generate_envelope(args.kms_key_id, args.key_id)
            if args.kms_key_id
            else Keyring.generate(args.key_id)
        )
    else:
        ring = json.loads(Path(args.from_file).read_text())
        if args.add:
            ring = keys.add_key(ring, args.add)
        elif args.retire:
            if not args.unchecked:
                try:
                    needed = keys.key_still_needed(args.retire, args.system)
                except (OSError, RuntimeError, ValueError, psycopg.Error) as exc:
                    # target or lake unreachable, no keyring or connection defined
                    print(
                        f"keys --retire {args.retire}: cannot check where the key is still "
                        f"used ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); run "
                        "with the target and lake settings of the running system, or "
                        "--unchecked if you know nothing needs it",
                        file=sys.stderr,
                    )
                    return 2
                if any(needed.values()):
                    print(
                        f"keys --retire {args.retire}: refused, the key still protects "
                        f"{ {k: v for k, v in needed.items() if v} }: trigger rotate_keys "
                        "(it re-encrypts values and rewraps backup and lake keys) first; "
                        "retiring it now would lose that data",
                        file=sys.stderr,
                    )
                    return 2
            ring = keys.retire_key(ring, args.retire)
        elif args.kms_key_id:
            ring = keys.wrap_keyring(ring, args.kms_key_id)
        else:
            print(
                "keys --from FILE needs --add ID, --retire ID or --kms-key-id KEY", file=sys.stderr
            )
            return 2
    print(json.dumps(ring))
    return 0


def rotate_keys_command(system: str, batch_size: int) -> int:
    from handover.lifecycle import rotation as keys

    out = keys.rotate_target_keys(system, batch_size=batch_size)
    check = keys.validate_rotation(system)
    print(
        f"rotated {out['rows']:,} values in {out['batches']} batches to key "
        f"{out['active_key_id']}; every value of {', '.join(check['rows'])} decrypts under it"
    )
    return 0


def manifest_command(system: str, source_dir: str, exported_at: str, force: bool) -> int:
    """Write export_manifest.json for an export that came without one: per catalog table its
    file(s), rows as extract will count them and sha256, the export time the engineer gives,
    marked as made by the receiver (it proves only what was received, not what the
    operator sent: docs/source-contract.md)."""
    import hashlib
    from datetime import UTC, datetime
    from pathlib import Path

    from handover.config.loader import load_config
    from handover.config.model import resolve_source
    from handover.sources.open import open_source

    src = Path(source_dir)
    out = src / "export_manifest.json"
    if out.exists() and not force:
        print(
            f"{out} exists: it is the operator's; nothing written (--force replaces it)",
            file=sys.stderr,
        )
        return 2
    from handover.core.errors import ConfigError, SourceReadError

    try:
        from handover.stages.cleanse import export_time

        when = export_time(exported_at)
    except ValueError:
        print(
            f"--exported-at {exported_at!r}: write the export time as 'YYYY-MM-DD HH:MM:SS'",
            file=sys.stderr,
        )
        return 2
    try:
        cfg = load_config(system)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    tables = {}
    for table in cfg.tables:
        spec = cfg.table(table)
        if resolve_source(table, spec)["format"] == "sql":
            continue
        try:
            with open_source(table, spec, src) as source:
                rows = sum(b.num_rows for b in source.batches())
        except SourceReadError as exc:  # one line naming the file, the row and the fix
            print(f"{exc} (table {table}); nothing written", file=sys.stderr)
            return 2
        parts = getattr(source, "parts", None)
        paths = [Path(p.path) for p in parts] if parts else [Path(source.location)]
        entry = {"file": paths[0].name, "rows": rows}
        if len(paths) == 1:
            entry["sha256"] = hashlib.sha256(paths[0].read_bytes()).hexdigest()
        else:
            entry["files"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
        tables[table] = entry
        print(f"{table}: {rows:,} rows", file=sys.stderr)
    out.write_text(
        json.dumps(
            {
                "system": cfg.system,
                "exported_at": str(when),
                "tables": tables,
                "made_by": "receiver",
                "made_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "note": "written by `handover manifest` from the files as received: it proves what "
                "was received, not what the operator exported",
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    print(f"wrote {out} ({len(tables)} tables, made by the receiver)")
    return 0


def review_command(args: argparse.Namespace) -> int:
    """The identity review queue (handover.stages.identity): entries by id, never a value."""
    from handover.stages.identity_survivorship import resolve_review

    if args.resolve is not None:
        if not args.decision:
            print("--resolve needs --decision keep-target|correct and --by", file=sys.stderr)
            return 2
        try:
            out = resolve_review(args.resolve, args.decision, args.by, args.note)
        except ValueError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        print(f"entry {out['entry']} ({out['field']}): {out['decision']}")
        if out.get("next"):
            print(f"next: {out['next']}")
        return 0
    with ledger.connect() as conn:
        queue = conn.execute("SELECT to_regclass('handover_meta.identity_review')").fetchone()
        if queue[0] is None:  # type: ignore[index]  # a SELECT without FROM returns one row
            print("no review queue yet: no run has merged a record into a target customer")
            return 0
        rows = conn.execute(
            "SELECT id, source_system, source_key, target_customer_id, field, rule, status "
            "FROM handover_meta.identity_review "
            + ("" if args.all else "WHERE status = 'open' ")
            + "ORDER BY id"
        ).fetchall()
    print(
        f"{'id':>6}  {'system':<12}{'record':<16}{'merged into':<16}{'field':<14}{'rule':<15}status"
    )
    for i, system, key, target, field, rule, status in rows:
        print(f"{i:>6}  {system:<12}{key:<16}{target:<16}{field:<14}{rule:<15}{status}")
    print(
        f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}; resolve one with "
        "`handover review --resolve ID --decision keep-target|correct --by NAME`",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m handover.ops.cli")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("summary")
    s.add_argument("--run-id")
    k = sub.add_parser("keys")
    k.add_argument("--key-id", default="k1")
    k.add_argument("--kms-key-id")
    k.add_argument("--from", dest="from_file")
    k.add_argument("--add")
    k.add_argument("--retire")
    k.add_argument(
        "--system",
        default="legacy_bss",
        help="with --retire: the system whose target is checked for the key",
    )
    k.add_argument(
        "--unchecked",
        action="store_true",
        help="with --retire: do not check that nothing still needs the key",
    )
    r = sub.add_parser("rotate-keys")
    r.add_argument("--system", default="legacy_bss")
    r.add_argument("--batch-size", type=int, default=5000)
    sub.add_parser("verify-audit")
    m = sub.add_parser("manifest", help="write export_manifest.json for an export without one")
    m.add_argument("--system", required=True)
    m.add_argument("--source-dir", required=True)
    m.add_argument(
        "--exported-at",
        required=True,
        help="when the operator exported it, 'YYYY-MM-DD HH:MM:SS' (its clock)",
    )
    m.add_argument("--force", action="store_true", help="replace an existing manifest")
    rv = sub.add_parser(
        "review",
        help="fields where a merged record disagreed with the "
        "target's customer: list, or resolve one entry",
    )
    rv.add_argument("--all", action="store_true", help="resolved entries too")
    rv.add_argument("--resolve", type=int, metavar="ID", help="the entry to resolve")
    rv.add_argument("--decision", choices=["keep-target", "correct"])
    rv.add_argument("--by", default="", help="who decides (for the audit trail)")
    rv.add_argument("--note", default="")
    from handover.ops import check

    check.add_arguments(sub.add_parser("check", help=check.__doc__.splitlines()[0]))
    args = ap.parse_args(argv)
    if args.cmd == "check":
        return check.run(args)
    if args.cmd == "summary":
        return summary(args.run_id)
    if args.cmd == "keys":
        return keys_command(args)
    if args.cmd == "rotate-keys":
        return rotate_keys_command(args.system, args.batch_size)
    if args.cmd == "manifest":
        return manifest_command(args.system, args.source_dir, args.exported_at, args.force)
    if args.cmd == "review":
        return review_command(args)
    with ledger.connect() as conn:
        chain = ledger.verify_audit_chain(conn)
    if chain.intact:
        print(f"audit trail intact: {chain.entries} entries")
        return 0
    print(
        f"audit trail BROKEN at entry id {chain.first_bad_id} ({chain.reason}); "
        f"{chain.entries} entries checked"
    )
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
