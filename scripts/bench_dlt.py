"""make bench, peer (d): the export loaded by dlt, the loader a data engineer would pick.

    python scripts/bench_dlt.py --source DIR --tables JSON --pipelines-dir DIR
                                [--format csv|parquet]

Run by scripts/bench_peers.py as a process of its own (its peak RSS is read by the parent
from the kernel), with the packages of bench/requirements.txt on its path and the target's
URL in DESTINATION__POSTGRES__CREDENTIALS (dlt's own configuration variable: no password on
the command line). It imports dlt and pyarrow only, nothing of handover, so its memory is
dlt's.

Every export file is read with pyarrow's streaming CSV reader and its record batches are
yielded to one dlt resource per table: merge write disposition on the table's natural key
(the source column of the key handover loads on, `--tables` {table: key}), dlt's default
merge strategy (delete-insert), the loader file format given (`csv`: pyarrow writes CSV that
dlt COPYs in; `parquet`: dlt writes Parquet that the ADBC driver COPYs in binary). Columns
are read as text: a raw export carries legacy spellings (dates, amounts, numbers with +86)
that pyarrow's type guess on the first block would reject further down the file; a loader
into a raw layer lands them as they are. That is also the least work dlt can be given.

Prints one JSON line: rows read, the seconds of `pipeline.run`, the format, the load info.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

BLOCK_BYTES = 8 << 20  # pyarrow's CSV block: one record batch each


def batches(path: Path, counter: dict[str, int]) -> Iterator[pa.RecordBatch]:
    """The file's rows as Arrow record batches of text columns, a block at a time."""
    with path.open(encoding="utf-8") as fh:
        names = fh.readline().rstrip("\r\n").split(",")
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, strings_can_be_null=True
        ),
    )
    for batch in reader:
        counter[path.stem] = counter.get(path.stem, 0) + batch.num_rows
        yield batch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, required=True, help="the export folder")
    ap.add_argument("--tables", required=True, help='JSON {"table": "key column", ...}')
    ap.add_argument("--pipelines-dir", required=True, help="dlt's working folder (fresh)")
    ap.add_argument("--format", choices=["csv", "parquet"], default="csv")
    ap.add_argument("--dataset", default="legacy_bss")
    args = ap.parse_args()
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    # dlt imports Airflow (it is in this venv) to look for secrets in Airflow Variables: a
    # user of dlt alone would pay for neither, so the peer does not either.
    os.environ.setdefault("PROVIDERS__ENABLE_AIRFLOW_SECRETS", "false")

    import dlt

    tables: dict[str, str] = json.loads(args.tables)
    counter: dict[str, int] = {}
    resources = [
        dlt.resource(
            batches(args.source / f"{table}.csv", counter),
            name=table,
            write_disposition="merge",
            primary_key=key,
        )
        for table, key in tables.items()
    ]
    pipeline = dlt.pipeline(
        pipeline_name="handover_bench_dlt",
        pipelines_dir=args.pipelines_dir,
        destination="postgres",
        dataset_name=args.dataset,
    )
    started = time.monotonic()
    info = pipeline.run(resources, loader_file_format=args.format)
    seconds = time.monotonic() - started
    info.raise_on_failed_jobs()
    print(
        json.dumps(
            {
                "rows_read": sum(counter.values()),
                "rows_read_per_table": counter,
                "run_seconds": round(seconds, 2),
                "format": args.format,
                "dlt_version": dlt.__version__,
                "dataset": args.dataset,
                "load_packages": len(info.loads_ids),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
