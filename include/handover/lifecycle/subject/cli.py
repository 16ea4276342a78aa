"""`python -m handover.lifecycle.subject submit|passphrase|decrypt REQUEST_ID`: for
privacy officers. Identifiers are read from a hidden prompt or stdin, never arguments.
"""

from __future__ import annotations

import json

from handover.core.errors import RequestRejected
from handover.lifecycle.subject.export import read_export, reveal_passphrase
from handover.lifecycle.subject.request import IDENTIFIER_TYPES, REQUEST_TYPES, submit_request


def _read_secret(prompt: str) -> str:
    """A value typed at a hidden prompt, or the next line of piped input: never an
    argument (other users of the machine see a process's arguments)."""
    import getpass
    import sys

    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return sys.stdin.readline().rstrip("\r\n")


def main(argv: list[str] | None = None) -> int:
    """`python -m handover.lifecycle.subject submit|passphrase|decrypt REQUEST_ID`: for privacy
    officers."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m handover.lifecycle.subject")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser(
        "submit",
        help="submit a request: its identifier (and a correction's "
        "new value) are read from stdin and stored sealed",
    )
    s.add_argument("request_id")
    s.add_argument("--type", required=True, choices=REQUEST_TYPES, dest="request_type")
    s.add_argument("--identifier-type", default="customer_id", choices=IDENTIFIER_TYPES)
    s.add_argument("--field", default="", help="the field a correction sets")
    s.add_argument("--system", default="legacy_bss", help="source system config folder")
    p = sub.add_parser("passphrase", help="print an access export's passphrase (audited)")
    p.add_argument("request_id")
    d = sub.add_parser("decrypt", help="decrypt an access export to a file (audited)")
    d.add_argument("request_id")
    d.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "submit":
        identifier = _read_secret(f"{args.identifier_type}: ")
        new_value = (
            _read_secret(f"new {args.field or 'value'}: ")
            if args.request_type == "correction"
            else ""
        )
        try:
            out = submit_request(
                args.request_id,
                args.request_type,
                args.identifier_type,
                identifier,
                args.field,
                new_value,
                args.system,
            )
        except RequestRejected as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(
            f"request {out['request_id']} ({out['request_type']}) submitted, identifier "
            f"sealed; trigger the subject_request DAG with {json.dumps(out['conf'])}"
        )
        # DAGs start paused here (nothing destroys data by surprise): a trigger of a paused
        # DAG waits, queued, for ever.
        print("  airflow dags unpause subject_request   # once; a paused DAG's runs stay queued")
        print(f"  airflow dags trigger subject_request -c '{json.dumps(out['conf'])}'")
        return 0
    if args.cmd == "passphrase":
        print(reveal_passphrase(args.request_id))
        return 0
    from pathlib import Path

    Path(args.out).write_text(
        json.dumps(read_export(args.request_id), ensure_ascii=False, indent=1)
    )
    return 0
