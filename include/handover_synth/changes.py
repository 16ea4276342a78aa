"""Synthetic days of the legacy operator after the cut-over export, for the nightly sync.

During the parallel run the legacy system keeps working: customers join, move, change
their number, are suspended, leave; calls and payments keep coming, some of them late.
This module plays those days on top of an export written by `handover_synth.legacy_bss`, so the
nightly sync can be proven against a known answer, night by night.

`generate_changes(export_dir, out_dir, days=3, seed=1)` writes one change set per day:

    <out_dir>/<YYYY-MM-DD>/change_manifest.json   interval [start, end), files, rows, sha256
    <out_dir>/<YYYY-MM-DD>/<table>.csv             rows inserted or changed that day (the
                                                   export's columns; subscribers by
                                                   updated_at, consents by granted_at,
                                                   event tables by arrival that day)
    <out_dir>/<YYYY-MM-DD>/<table>.deleted.csv     <key>,deleted_at of rows deleted that day
    <out_dir>/<YYYY-MM-DD>/truth.csv               the day's answer key (same columns as the
                                                   export's truth.csv)
    <out_dir>/<YYYY-MM-DD>/state/                  the whole legacy export as of the day's
                                                   end (what "old" means when old and new
                                                   are reconciled), with export_manifest.json

Each day brings inserts (new subscribers with consents and first records), updates
(address, status or MSISDN, with a newer updated_at; a marketing consent revoked),
deletions (a subscriber with everything that hangs on it, a few voided call records),
late-arriving records (timestamps up to three days before the day), browsing without
consent, and a few defective rows: a new subscriber with a bad ID check digit, an update
with a malformed MSISDN, a negative charge, a future call, an orphan call, a payment
without amount, and (day 2) a new customer number for a person already migrated. From day
2 on, one subscriber changed the day before changes again and another is deleted, and a
call record that arrived the day before is voided: what a replay of an older night must
not undo. Same export, days and seed give byte-identical files.

Run `python -m handover_synth.changes --export DIR --out DIR [--days 3] [--seed 1]`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

from handover_synth.changes_legacy import (
    KEYS,
    TIME_FMT,
    _Day,
    _Legacy,
)
from handover_synth.changes_player import (
    _Player,
)
from handover_synth.legacy_bss_spec import TABLE_COLUMNS, TRUTH_COLUMNS

__all__ = ["KEYS", "generate_changes", "main"]


# ---------------------------------------------------------------- writing
def _write_csv(path: Path, frame: pd.DataFrame) -> dict[str, Any]:
    frame.to_csv(path, index=False, lineterminator="\n", encoding="utf-8")
    data = path.read_bytes()
    return {"file": path.name, "rows": len(frame), "sha256": hashlib.sha256(data).hexdigest()}


def _write_state(legacy: _Legacy, folder: Path, as_of: pd.Timestamp) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tables = {
        t: _write_csv(folder / f"{t}.csv", df[list(TABLE_COLUMNS[t])])
        for t, df in legacy.tables.items()
    }
    manifest = {
        "system": legacy.system,
        "exported_at": as_of.strftime(TIME_FMT),
        "seed": legacy.seed,
        "tables": tables,
    }
    (folder / "export_manifest.json").write_text(
        json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )


def _write_day(legacy: _Legacy, day: _Day, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    tables = {}
    for table, cols in TABLE_COLUMNS.items():
        info = _write_csv(
            folder / f"{table}.csv", pd.DataFrame(day.changes[table], columns=list(cols))
        )
        dels = _write_csv(
            folder / f"{table}.deleted.csv",
            pd.DataFrame(day.deletions[table], columns=[KEYS[table], "deleted_at"]),
        )
        tables[table] = {
            **info,
            "deleted_file": dels["file"],
            "deleted_rows": dels["rows"],
            "deleted_sha256": dels["sha256"],
        }
    pd.DataFrame(day.truth, columns=list(TRUTH_COLUMNS)).to_csv(
        folder / "truth.csv", index=False, lineterminator="\n", encoding="utf-8"
    )
    _write_state(legacy, folder / "state", day.end)
    manifest = {
        "system": legacy.system,
        "day": f"{day.start:%Y-%m-%d}",
        "interval_start": day.start.strftime(TIME_FMT),
        "interval_end": day.end.strftime(TIME_FMT),
        "seed": legacy.seed,
        "tables": tables,
        "state": "state",
    }
    (folder / "change_manifest.json").write_text(
        json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    return manifest


def generate_changes(
    export_dir: Path | str, out_dir: Path | str, days: int = 3, seed: int = 1
) -> list[dict[str, Any]]:
    """Write `days` change sets after the export in `export_dir`; returns their manifests."""
    if days < 1:
        raise ValueError("days must be >= 1")
    legacy = _Legacy(Path(export_dir), seed)
    first = legacy.exported_at.ceil("D")
    out = Path(out_dir)
    manifests = []
    for index in range(1, days + 1):
        start = first + pd.Timedelta(days=index - 1)
        day = _Player(legacy, index, start).play()
        legacy.apply(day)
        manifests.append(_write_day(legacy, day, out / f"{start:%Y-%m-%d}"))
    return manifests


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m handover_synth.changes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--export", type=Path, required=True, help="export written by handover_synth.legacy_bss"
    )
    ap.add_argument("--out", type=Path, required=True, help="folder for the change sets")
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    for m in generate_changes(args.export, args.out, args.days, args.seed):
        counts = {t: (v["rows"], v["deleted_rows"]) for t, v in m["tables"].items()}
        print(f"{m['day']}: (changed, deleted) {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
