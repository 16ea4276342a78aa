"""`python -m handover.cli`: the commands people type around the DAGs.

    summary [--run-id ID]   per-table funnel of a run (latest by default) and report paths
    keys                    print a new keyring (JSON) for the `handover_keys` connection
    verify-audit            recompute the audit trail's hash chain
"""

from __future__ import annotations

import argparse
import json
import sys

from handover import ledger
from handover.lake import lake_from_url, safe_run_id


def summary(run_id: str | None) -> int:
    with ledger.connect() as conn:
        if run_id is None:
            row = conn.execute("SELECT run_id FROM handover_meta.run ORDER BY started_at DESC "
                               "LIMIT 1").fetchone()
            if row is None:
                print("no runs yet: run the customer_migration DAG first", file=sys.stderr)
                return 1
            run_id = row[0]
        status = conn.execute("SELECT status FROM handover_meta.run WHERE run_id=%s",
                              (run_id,)).fetchone()
        rows = conn.execute(
            "SELECT table_name, source_rows, loaded, quarantined, excluded, balanced "
            "FROM handover_meta.reconciliation WHERE run_id=%s ORDER BY table_name",
            (run_id,)).fetchall()
    lake = lake_from_url()
    print(f"run {run_id}: {status[0] if status else 'unknown'}")
    header = f"{'table':<18}{'in':>10}{'loaded':>10}{'quarant.':>10}{'excluded':>10}  balance"
    print(header)
    print("-" * len(header))
    ok = bool(rows)
    for t, n, loaded, q, x, balanced in rows:
        sums = loaded + q + x == n
        ok &= bool(balanced) and sums
        print(f"{t:<18}{n:>10,}{loaded:>10,}{q:>10,}{x:>10,}  "
              f"{'in = loaded + quarantined + excluded' if sums else 'DOES NOT BALANCE'}"
              f"{'' if balanced else ' (reconciliation failed)'}")
    base = f"runs/{safe_run_id(run_id)}"
    print(f"\nreport:          {lake.uri(base + '/reports/report.html')}")
    print(f"report (JSON):   {lake.uri(base + '/reports/report.json')}")
    print(f"validation docs: {lake.uri(base + '/docs/index.html')}")
    return 0 if ok else 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m handover.cli")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("summary")
    s.add_argument("--run-id")
    sub.add_parser("keys")
    sub.add_parser("verify-audit")
    args = ap.parse_args(argv)
    if args.cmd == "summary":
        return summary(args.run_id)
    if args.cmd == "keys":
        from handover.protect import Keyring

        print(json.dumps(Keyring.generate()))
        return 0
    with ledger.connect() as conn:
        intact, n = ledger.verify_audit_chain(conn)
    print(f"audit trail {'intact' if intact else 'BROKEN'}: {n} entries")
    return 0 if intact else 1


if __name__ == "__main__":
    raise SystemExit(main())
