#!/usr/bin/env python
"""Gates at scale: the quality suite of call_records run three ways on the same rows.

    .venv/bin/python scripts/bench_gates.py [--rows 1000000] [--partition-rows 400000]
                                            [--out bench/gates.json]

The data: a synthetic legacy export (handover_synth.legacy_bss, seed 42), its call records run through
the real cleanse (typed columns, dirty rows quarantined), hash-partitioned on cdr_id the way
extract does, each partition written to and read back from zstd Parquet as the lake does, with
a few bad rows planted so every method has something to find (malformed MSISDNs, negative
charges, duplicate ids, nulls). Then, for expectations/legacy_bss/quality/call_records.json:

  (a) the project's way: handover.gates.validate.run_gate on each partition's pandas frame (no docs);
  (b) pushdown: GX's SQL data source on PostgreSQL (scratch database bench_gates on
      127.0.0.1:5432, dropped at the end): COPY every partition into one staging table
      (the gates run before load, so this COPY is extra work), then a table asset with a
      whole-table batch definition validated with the same suite and result format;
  (c) the same checks as pyarrow.compute code, no GX, for reference.

GX is imported once before anything is timed (its import time is reported apart), and each
GX method first validates a tiny warm-up batch, also reported apart. Prints seconds, rows/s,
the ratios and which is faster, and checks that all three find the same failures with the same
unexpected counts (exit status 1 if not). Writes the figures to --out, keyed by row count.
Not a test: numbers, not assertions. The machine is shared, so the load average is printed too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "include") not in sys.path:
    sys.path.insert(0, str(ROOT / "include"))
os.environ.setdefault("PYTHONWARNINGS", "ignore")

from handover.gates import context as gx_context  # noqa: E402 - importable only after the sys.path line above
from handover.gates import results as gate_results  # noqa: E402
from handover.gates import suites as gate_suites  # noqa: E402
from handover.gates import validate as gates  # noqa: E402

GATE, TABLE, SYSTEM = "quality", "call_records", "legacy_bss"
SUITES_DIR = ROOT / "expectations" / SYSTEM
DB = "bench_gates"
ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
BENCH_DSN = "host=127.0.0.1 port=5432 user=postgres dbname={db}"
GX_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/{db}"

#: Staging table for the pushdown: the cleansed columns, typed as the target would type them.
#: UNLOGGED: a staging copy needs no WAL (and GX's own connection must see it, so not TEMP).
DDL = """CREATE UNLOGGED TABLE {name} (
    cdr_id text, cust_id text, caller text, callee text, start_time timestamp,
    duration_s bigint, cell_id text, charge_fen bigint)"""

#: Planted faults: (column, what, how many). Each lands on a distinct clean row.
BAD_MSISDNS = [
    "12012345678",
    "1381234567",
    "1381234567x",
    "+8613812345678",
    "138 1234 5678",
    "23812345678",
    "10012345678",
    "1441234567",
    "13812345678 ",
    "0",
]


# --------------------------------------------------------------------------- data


def make_rows(rows: int, workdir: Path) -> tuple[pd.DataFrame, dict[str, float]]:
    """``rows`` cleansed call records from a synthetic export; returns (frame, timings)."""
    from handover.config.loader import load_config
    from handover.stages.cleanse import cleanse
    from handover_synth import legacy_bss as synth

    timings: dict[str, float] = {}
    per_sub = synth.MEAN_ROWS_PER_SUBSCRIBER["call_records"]
    subscribers = max(50, math.ceil(rows / per_sub * 1.06))
    while True:
        out = workdir / f"export_{subscribers}"
        t = time.perf_counter()
        manifest = synth.generate(out, subscribers, seed=42)
        timings["synth_s"] = time.perf_counter() - t
        t = time.perf_counter()
        raw = pd.read_csv(out / "call_records.csv", dtype=str, keep_default_na=False)
        cfg = load_config(SYSTEM)
        res = cleanse(
            raw,
            cfg.rules(TABLE),
            key=cfg.table(TABLE)["key"],
            exported_at=pd.Timestamp(manifest["exported_at"]),
        )
        timings["cleanse_s"] = time.perf_counter() - t
        if len(res.clean) >= rows:
            return res.clean.iloc[:rows].reset_index(drop=True), timings
        subscribers = math.ceil(subscribers * rows / max(len(res.clean), 1) * 1.05)


def plant(df: pd.DataFrame, seed: int = 7) -> dict[tuple[str, str], int]:
    """Break a few rows in place; return the unexpected count each expectation should report.

    10 malformed MSISDNs (6 caller, 4 callee), 5 negative charges, 3 duplicate ids (a row's
    cdr_id copied onto another: 6 rows share a value, and GX counts every one of them),
    2 null cust_ids and 1 null duration (null is not < 0: only the not-null check sees it).
    """
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(df), size=10 + 5 + 6 + 2 + 1, replace=False)
    take = iter(picked.tolist())
    for i, bad in enumerate(BAD_MSISDNS):
        df.loc[next(take), "caller" if i < 6 else "callee"] = bad
    for _ in range(5):
        df.loc[next(take), "charge_fen"] = -int(rng.integers(1, 2000))
    for _ in range(3):
        src, dst = next(take), next(take)
        df.loc[dst, "cdr_id"] = df.loc[src, "cdr_id"]
    for _ in range(2):
        df.loc[next(take), "cust_id"] = None
    df.loc[next(take), "duration_s"] = pd.NA
    return {
        ("expect_column_values_to_match_regex", "caller"): 6,
        ("expect_column_values_to_match_regex", "callee"): 4,
        ("expect_column_values_to_be_between", "charge_fen"): 5,
        ("expect_column_values_to_be_unique", "cdr_id"): 6,
        ("expect_column_values_to_not_be_null", "cust_id"): 2,
        ("expect_column_values_to_not_be_null", "duration_s"): 1,
    }


def write_partitions(df: pd.DataFrame, partition_rows: int, workdir: Path) -> list[Path]:
    """Hash-partition on cdr_id as extract does (a key's copies share a partition) into
    ceil(rows / partition_rows) zstd Parquet files, as the cleanse stage writes them."""
    n_parts = max(1, -(-len(df) // partition_rows))
    hashed = pd.util.hash_array(df["cdr_id"].to_numpy(dtype=object), categorize=False)
    pid = (hashed % np.uint64(n_parts)).astype(np.int64)
    paths = []
    for i in range(n_parts):
        path = workdir / f"part-{i:03d}.parquet"
        part = df.loc[pid == i].reset_index(drop=True)
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), path, compression="zstd")
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- (a) run_gate


def counts_from_gate(
    results: list[gate_results.GateResult],
) -> tuple[bool, dict[tuple[str, str], int]]:
    counts: Counter = Counter()
    for res in results:
        for f in res.failed:
            counts[(f.expectation, f.column or "")] += (
                f.unexpected_count if f.unexpected_count is not None else -(10**9)
            )
    return all(r.success for r in results), dict(counts)


def bench_run_gate(frames: list[pd.DataFrame]) -> dict[str, Any]:
    warm = frames[0].head(1000).copy()
    t = time.perf_counter()
    gates.run_gate(
        warm,
        gate=GATE,
        table=TABLE,
        partition="warmup",
        run_id="bench",
        suites_dir=SUITES_DIR,
        docs_dir=None,
    )
    warmup = time.perf_counter() - t
    results, per_part = [], []
    t = time.perf_counter()
    for i, frame in enumerate(frames):
        tp = time.perf_counter()
        results.append(
            gates.run_gate(
                frame,
                gate=GATE,
                table=TABLE,
                partition=f"p{i}",
                run_id="bench",
                suites_dir=SUITES_DIR,
                docs_dir=None,
            )
        )
        per_part.append(round(time.perf_counter() - tp, 3))
    seconds = time.perf_counter() - t
    success, counts = counts_from_gate(results)
    return {
        "warmup_s": warmup,
        "seconds": seconds,
        "per_partition_s": per_part,
        "success": success,
        "counts": counts,
    }


# --------------------------------------------------------------------------- (b) GX on SQL


def gx_sql_context() -> Any:
    """An ephemeral in-memory context configured as gx_context._get_context's (no docs), with
    progress bars off."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def counts_from_gx(result: Any) -> tuple[bool, dict[tuple[str, str], int]]:
    counts: dict[tuple[str, str], int] = {}
    for evr in result.results:
        if evr.success:
            continue
        cfg = evr.expectation_config
        key = (cfg.type, str(cfg.kwargs.get("column") or ""))
        n = (evr.result or {}).get("unexpected_count")
        counts[key] = int(n) if n is not None else -(10**9)  # failed without a count: an error
    return bool(result.success), counts


def bench_pushdown(
    tables: list[pa.Table], frames: list[pd.DataFrame], db: str = DB
) -> dict[str, Any]:
    import psycopg
    from psycopg import sql

    from handover.db.bulk_copy import copy_arrow

    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    context = None
    try:
        out: dict[str, Any] = {}
        with psycopg.connect(BENCH_DSN.format(db=db)) as conn:
            # Warm-up table: a slice of the first partition.
            conn.execute(DDL.format(name="warmup"))
            copy_arrow(conn, sql.Identifier("warmup"), tables[0].slice(0, 1000))
            conn.execute(DDL.format(name=TABLE))
            conn.commit()
            t = time.perf_counter()
            for table in tables:
                copy_arrow(conn, sql.Identifier(TABLE), table)
            conn.commit()
            out["copy_s"] = time.perf_counter() - t
            size = conn.execute("SELECT pg_total_relation_size(%s)", (TABLE,)).fetchone()[0]
            out["table_mb"] = round(size / 2**20, 1)

        suite = gate_suites._build_suite(
            gate_suites.load_suite(SUITES_DIR, GATE, TABLE), f"{GATE}.{TABLE}"
        )
        t = time.perf_counter()
        context = gx_sql_context()
        source = context.data_sources.add_postgres(
            "bench_pg", connection_string=GX_URL.format(db=db)
        )
        batches = {}
        for name in ("warmup", TABLE):
            asset = source.add_table_asset(name, table_name=name)
            batches[name] = asset.add_batch_definition_whole_table(f"{name}_all")
        warm = batches["warmup"].get_batch()
        warm.validate(suite, result_format=dict(gates.RESULT_FORMAT))
        out["warmup_s"] = time.perf_counter() - t

        t = time.perf_counter()
        batch = batches[TABLE].get_batch()
        result = batch.validate(suite, result_format=dict(gates.RESULT_FORMAT))
        out["validate_s"] = time.perf_counter() - t
        out["total_s"] = out["copy_s"] + out["validate_s"]
        gate_results._scrub(result, allowed=set(frames[0].columns))
        out["success"], out["counts"] = counts_from_gx(result)
        errors = [
            evr.expectation_config.type
            for evr in result.results
            if (evr.exception_info or {}).get("raised_exception")
        ]
        out["errors"] = errors
        return out
    finally:
        if context is not None:
            try:  # close GX's pooled connections before the drop
                context.data_sources.get("bench_pg").get_engine().dispose()
            except Exception:  # noqa: BLE001 - best effort; the drop below forces it anyway
                pass
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
            )


# --------------------------------------------------------------------------- (c) pyarrow


def arrow_checks(table: pa.Table, suite: dict[str, Any]) -> dict[tuple[str, str], int]:
    """Unexpected counts of the suite's expectations on one Arrow table, with GX's meaning:
    nulls are outside every check but not-null; a duplicated value counts once per row."""
    counts: dict[tuple[str, str], int] = {}
    for item in suite["expectations"]:
        kind, kw = item["type"], item["kwargs"]
        col = table[kw["column"]]
        if kind == "expect_column_values_to_not_be_null":
            n = col.null_count
        elif kind == "expect_column_values_to_be_unique":
            vc = pc.value_counts(col.drop_null())
            freq = vc.field("counts")
            n = pc.sum(pc.filter(freq, pc.greater(freq, 1))).as_py() or 0
        elif kind == "expect_column_values_to_match_regex":
            matched = pc.match_substring_regex(col, kw["regex"])
            n = (len(col) - col.null_count) - (pc.sum(matched).as_py() or 0)
        elif kind == "expect_column_values_to_be_between":
            n = 0
            if kw.get("min_value") is not None:
                n += pc.sum(pc.less(col, kw["min_value"])).as_py() or 0
            if kw.get("max_value") is not None:
                n += pc.sum(pc.greater(col, kw["max_value"])).as_py() or 0
        else:
            raise NotImplementedError(kind)
        key = (kind, kw["column"])
        counts[key] = counts.get(key, 0) + int(n)
    return counts


def bench_arrow(tables: list[pa.Table]) -> dict[str, Any]:
    suite = gate_suites.load_suite(SUITES_DIR, GATE, TABLE)
    total: Counter = Counter()
    t = time.perf_counter()
    for table in tables:
        total.update(arrow_checks(table, suite))
    seconds = time.perf_counter() - t
    counts = {k: v for k, v in total.items() if v}
    return {"seconds": seconds, "success": not counts, "counts": counts}


# --------------------------------------------------------------------------- main


def _rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:>12,.0f} rows/s" if seconds > 0 else "           - rows/s"


def _fmt_counts(counts: dict[tuple[str, str], int]) -> str:
    short = {"expect_column_values_to_": ""}
    parts = []
    for (kind, col), n in sorted(counts.items()):
        for long, s in short.items():
            kind = kind.replace(long, s)
        parts.append(f"{kind}({col})={n}")
    return ", ".join(parts) or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--partition-rows", type=int, default=400_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "gates.json")
    parser.add_argument(
        "--db", default=DB, help="scratch database, created and dropped (default %(default)s)"
    )
    args = parser.parse_args(argv)
    load_start = os.getloadavg()

    t = time.perf_counter()
    gx_context._quiet_gx_logging()
    import great_expectations  # noqa: F401  (timed here, once, before anything else)

    gx_import = time.perf_counter() - t

    with tempfile.TemporaryDirectory(prefix="bench-gates-") as tmp:
        workdir = Path(tmp)
        df, prep = make_rows(args.rows, workdir)
        expected = plant(df)
        paths = write_partitions(df, args.partition_rows, workdir)
        del df
        t = time.perf_counter()
        frames = [pq.read_table(p).to_pandas() for p in paths]
        read_pandas = time.perf_counter() - t
        t = time.perf_counter()
        tables = [pq.read_table(p) for p in paths]
        read_arrow = time.perf_counter() - t
    rows = sum(len(f) for f in frames)

    a = bench_run_gate(frames)
    b = bench_pushdown(tables, frames, args.db)
    c = bench_arrow(tables)
    load_end = os.getloadavg()

    fails = {k for k, v in expected.items() if v}
    agree = {
        name: (r["success"] is False and r["counts"] == expected)
        for name, r in (("run_gate", a), ("gx_sql", b), ("pyarrow", c))
    }
    ok = all(agree.values())

    dtypes = ", ".join(f"{k}:{v}" for k, v in frames[0].dtypes.items())
    print(
        f"gates benchmark: {rows:,} call records in {len(frames)} partitions of "
        f"<= {args.partition_rows:,} (sizes {', '.join(f'{len(f):,}' for f in frames)})"
    )
    print(
        f"  suite {GATE}/{TABLE}: "
        f"{len(gate_suites.load_suite(SUITES_DIR, GATE, TABLE)['expectations'])} expectations; "
        f"load average {load_start[0]:.2f} -> {load_end[0]:.2f} on {os.cpu_count()} CPUs"
    )
    print(f"  frame dtypes: {dtypes}")
    print(
        f"  setup (untimed below): GX import {gx_import:.2f}s, synth {prep['synth_s']:.2f}s, "
        f"cleanse {prep['cleanse_s']:.2f}s, read partitions: pandas {read_pandas:.2f}s, "
        f"arrow {read_arrow:.2f}s"
    )
    print(
        f"  warm-up (1,000 rows, first call): run_gate {a['warmup_s']:.2f}s, "
        f"GX SQL context+source+validate {b['warmup_s']:.2f}s"
    )
    print(
        f"(a) run_gate per partition      {a['seconds']:8.2f}s {_rate(rows, a['seconds'])}"
        f"   per partition {a['per_partition_s']}"
    )
    print(
        f"(b) GX SQL pushdown: COPY       {b['copy_s']:8.2f}s {_rate(rows, b['copy_s'])}"
        f"   staging table {b['table_mb']} MB"
    )
    print(f"                     validate   {b['validate_s']:8.2f}s {_rate(rows, b['validate_s'])}")
    print(f"                     total      {b['total_s']:8.2f}s {_rate(rows, b['total_s'])}")
    print(f"(c) pyarrow.compute             {c['seconds']:8.2f}s {_rate(rows, c['seconds'])}")
    ratio_total = b["total_s"] / a["seconds"]
    ratio_validate = b["validate_s"] / a["seconds"]
    ratio_arrow = a["seconds"] / c["seconds"] if c["seconds"] else float("inf")
    print(
        f"ratios: pushdown total / run_gate = {ratio_total:.2f}, "
        f"pushdown validate only / run_gate = {ratio_validate:.2f}, "
        f"run_gate / pyarrow = {ratio_arrow:.1f}"
    )
    faster = "run_gate per partition" if a["seconds"] <= b["total_s"] else "GX SQL pushdown"
    print(
        f"faster for the same checks before load: {faster} "
        f"({min(a['seconds'], b['total_s']):.2f}s vs {max(a['seconds'], b['total_s']):.2f}s)"
    )
    print(f"planted: {_fmt_counts(expected)}")
    for name, r in (("run_gate", a), ("gx_sql", b), ("pyarrow", c)):
        verdict = "agrees" if agree[name] else "DIFFERS"
        print(f"  {name:9} success={r['success']!s:5} {verdict}: {_fmt_counts(r['counts'])}")
    if b.get("errors"):
        print(f"  gx_sql expectations that raised: {b['errors']}")
    print(
        "all three agree on pass/fail and unexpected counts"
        if ok
        else "MISMATCH between methods (see above)"
    )

    def js(counts: dict[tuple[str, str], int]) -> dict[str, int]:
        return {f"{k}:{c}": n for (k, c), n in sorted(counts.items())}

    record = {
        "rows": rows,
        "partitions": [len(f) for f in frames],
        "partition_rows": args.partition_rows,
        "cpus": os.cpu_count(),
        "load_average": [round(load_start[0], 2), round(load_end[0], 2)],
        "gx_import_s": round(gx_import, 3),
        "read_partitions_s": {"pandas": round(read_pandas, 3), "arrow": round(read_arrow, 3)},
        "run_gate": {
            "seconds": round(a["seconds"], 3),
            "rows_per_s": round(rows / a["seconds"]),
            "warmup_s": round(a["warmup_s"], 3),
            "per_partition_s": a["per_partition_s"],
        },
        "gx_sql": {
            "copy_s": round(b["copy_s"], 3),
            "validate_s": round(b["validate_s"], 3),
            "total_s": round(b["total_s"], 3),
            "rows_per_s": round(rows / b["total_s"]),
            "validate_rows_per_s": round(rows / b["validate_s"]),
            "warmup_s": round(b["warmup_s"], 3),
            "table_mb": b["table_mb"],
        },
        "pyarrow": {"seconds": round(c["seconds"], 3), "rows_per_s": round(rows / c["seconds"])},
        "ratios": {
            "pushdown_total_over_run_gate": round(ratio_total, 3),
            "pushdown_validate_over_run_gate": round(ratio_validate, 3),
            "run_gate_over_pyarrow": round(ratio_arrow, 2),
        },
        "faster": faster,
        "planted": js(expected),
        "found": {
            "run_gate": js(a["counts"]),
            "gx_sql": js(b["counts"]),
            "pyarrow": js(c["counts"]),
        },
        "failing_expectations": len(fails),
        "agree": ok,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        existing = json.loads(args.out.read_text(encoding="utf-8"))
        if not isinstance(existing, dict):
            existing = {}
    except (OSError, ValueError):
        existing = {}
    existing[str(rows)] = record
    args.out.write_text(json.dumps(existing, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
