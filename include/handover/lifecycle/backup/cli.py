"""`python -m handover.lifecycle.backup`: the backup DAG's steps by hand (operators,
before a load, or to re-wrap data keys before a keyring key is retired)."""

from __future__ import annotations

import json
import logging

from handover.lifecycle.backup.catalogue import (
    expire_backups,
    rewrap_keys,
    run_backup,
    verify_backup,
)


def main(argv: list[str] | None = None) -> int:
    """`python -m handover.lifecycle.backup take|verify|expire|rewrap` (operators, before a load)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m handover.lifecycle.backup")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("take", help="snapshot, verify and expire (the backup DAG)")
    t.add_argument("--reason", default="manual")
    t.add_argument("--retention-days", type=int, default=35)
    v = sub.add_parser("verify")
    v.add_argument("backup_id")
    sub.add_parser("expire")
    sub.add_parser("rewrap", help="re-wrap data keys under the active keyring key")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.cmd == "take":
        out = run_backup(reason=args.reason, retention_days=args.retention_days)
    elif args.cmd == "verify":
        out = verify_backup(args.backup_id)
    elif args.cmd == "expire":
        out = expire_backups()
    else:
        out = rewrap_keys()
    print(json.dumps(out, default=str))
    return 0
