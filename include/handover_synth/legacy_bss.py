"""Synthetic legacy operator export ("legacy_bss") with a known answer key.

Why this exists
---------------
A migration pipeline can only be trusted if we can *prove* what it does with bad data. Real
operator exports cannot be shared and nobody knows which of their rows are broken, so this
module plays the part of the old Chinese telecom BSS: it writes a realistic export (Chinese
names, addresses, GB 11643 resident ID numbers, mobile numbers, CDRs, data sessions, payments,
complaints, browsing events and consents) and deliberately injects the defects listed in
``docs/source-contract.md`` at exact, seeded rates.  Next to the export it writes ``truth.csv``,
the answer key: every row whose expected outcome is not a plain "loaded", plus the rows the
pipeline must repair while loading.  Comparing the pipeline's verdicts with the answer key gives
its precision and recall per defect, and because every row that is *not* in the answer key is
genuinely clean, any quarantine or exclusion of such a row is a false positive.

Design rules
------------
* One ``numpy.random.default_rng(seed)`` drives everything, and the draws happen in a fixed
  order with fixed chunk sizes, so the same seed, subscriber count and proportions give
  byte-identical files.
* Defect rates are exact counts (``round(rate * rows)``) placed by the generator; a row carries
  at most one own defect, and own defects of child rows are injected only on children of
  subscribers without any defect.  Children of defective subscribers take the parent's fate.
* Normal timestamps lie inside the 330 days before the export instant E (at least one hour
  before E), far from every retention boundary; retention violations are 37-60 months
  (consumption) or 25-48 months (complaints) old, future dates at least a day after E.
* Large tables are produced in chunks of ``CHUNK_ROWS`` rows with vectorised numpy code and
  written with the Arrow CSV writer (values never need quoting, which the writer enforces), so
  memory stays bounded and millions of rows are written per second.

Run ``python -m handover_synth.legacy_bss --out DIR --subscribers N [--seed 42]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from handover_synth.legacy_bss_arrays import Progress, _CsvSink
from handover_synth.legacy_bss_events import _Events
from handover_synth.legacy_bss_people import _People
from handover_synth.legacy_bss_spec import (
    BEHAVIOURAL_GRANTED,
    BEHAVIOURAL_REFUSED,
    CHILD_DEFECT_RATES,
    CHUNK_ROWS,
    DAY,
    DEFAULT_EXPORTED_AT,
    HOUR,
    MARKETING_GRANTED,
    MARKETING_REFUSED,
    MEAN_ROWS_PER_SUBSCRIBER,
    NORMAL_WINDOW_DAYS,
    PAST_RETENTION_MONTHS,
    SUBSCRIBER_DEFECT_RATES,
    SYSTEM,
    TABLE_COLUMNS,
    TRUTH_COLUMNS,
    K,
    exact_count,
    id_check_digit,
)

# The public face: constants re-exported from legacy_bss_spec so callers keep one module.
__all__ = [
    "BEHAVIOURAL_GRANTED",
    "BEHAVIOURAL_REFUSED",
    "CHILD_DEFECT_RATES",
    "CHUNK_ROWS",
    "DAY",
    "DEFAULT_EXPORTED_AT",
    "HOUR",
    "K",
    "MARKETING_GRANTED",
    "MARKETING_REFUSED",
    "MEAN_ROWS_PER_SUBSCRIBER",
    "NORMAL_WINDOW_DAYS",
    "PAST_RETENTION_MONTHS",
    "Progress",
    "SUBSCRIBER_DEFECT_RATES",
    "SYSTEM",
    "TABLE_COLUMNS",
    "TRUTH_COLUMNS",
    "exact_count",
    "generate",
    "id_check_digit",
    "main",
]


class _Generator(_People, _Events):
    """Writes the whole export: the tables in a fixed order, then the manifest."""

    def _write_small(self, table: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        t0 = time.perf_counter()
        sink = _CsvSink(self.out_dir / f"{table}.csv", TABLE_COLUMNS[table])
        sink.write(make())
        meta = sink.close()
        self._report(table, meta["rows"], time.perf_counter() - t0)
        return meta

    def run(self) -> dict[str, Any]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.plan()
        self.truth = _CsvSink(self.out_dir / "truth.csv", TRUTH_COLUMNS)
        tables: dict[str, Any] = {}
        try:
            tables["subscribers"] = self._write_small("subscribers", self.subscribers)
            tables["consents"] = self._write_small("consents", self.consents)
            self._make_cell_pool()
            tables["call_records"] = self._write_child(
                "call_records", "R", 10**10, self._build_calls, self.since
            )
            tables["data_sessions"] = self._write_child(
                "data_sessions", "S", 10**10, self._build_sessions, self.since
            )
            tables["payments"] = self._write_child(
                "payments", "P", 10**9, self._build_payments, self.since
            )
            tables["complaints"] = self._write_child(
                "complaints", "Q", 10**8, self._build_complaints, self.since
            )
            tables["browsing_events"] = self._write_child(
                "browsing_events", "B", 10**10, self._build_browsing, self.since_browse
            )
        finally:
            truth = self.truth.close()
        self._report("truth", truth["rows"], 0.0)
        manifest = {
            "system": SYSTEM,
            "exported_at": self.exported_at,
            "seed": self.seed,
            "subscribers": self.n,
            "tables": tables,
        }
        (self.out_dir / "export_manifest.json").write_text(
            json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        return manifest


def generate(
    out_dir: Path,
    subscribers: int,
    seed: int = 42,
    exported_at: str = DEFAULT_EXPORTED_AT,
    progress: Progress | None = None,
    call_records_per_subscriber: float = MEAN_ROWS_PER_SUBSCRIBER["call_records"],
) -> dict[str, Any]:
    """Write the legacy export, ``truth.csv`` and ``export_manifest.json`` into ``out_dir``.

    ``progress(table, rows, seconds)`` is called once per table written.  Returns the manifest.
    """
    gen = _Generator(
        Path(out_dir), subscribers, seed, exported_at, call_records_per_subscriber, progress
    )
    return gen.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m handover_synth.legacy_bss",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--subscribers", type=int, required=True, help="number of subscribers")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--exported-at", default=DEFAULT_EXPORTED_AT, help="export instant E, 'YYYY-MM-DD HH:MM:SS'"
    )
    parser.add_argument(
        "--call-records-per-subscriber",
        type=float,
        default=MEAN_ROWS_PER_SUBSCRIBER["call_records"],
    )
    args = parser.parse_args(argv)

    def report(table: str, rows: int, seconds: float) -> None:
        rate = f", {rows / seconds:,.0f} rows/s" if seconds > 0 else ""
        print(f"{table}: {rows:,} rows in {seconds:.2f} s{rate}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    generate(
        args.out,
        args.subscribers,
        seed=args.seed,
        exported_at=args.exported_at,
        progress=report,
        call_records_per_subscriber=args.call_records_per_subscriber,
    )
    print(f"done in {time.perf_counter() - t0:.2f} s -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
