"""One table of the snapshot to a local Parquet file, in bounded memory: COPY to CSV,
then CSV -> Arrow record batches -> Parquet, with PostgreSQL types kept in the schema
metadata so a restore loads the same types back.
"""

from __future__ import annotations

import json
from pathlib import Path


def _arrow_types():
    import pyarrow as pa

    return {
        "int2": pa.int16(),
        "int4": pa.int32(),
        "int8": pa.int64(),
        "float4": pa.float32(),
        "float8": pa.float64(),
        "bool": pa.bool_(),
        "date": pa.date32(),
        "timestamp": pa.timestamp("us"),
        "timestamptz": pa.timestamp("us"),
    }


def dump_table(
    conn, schema: str, table: str, columns: list[tuple[str, str]], workdir: Path
) -> tuple[Path, int]:
    """COPY one table to a local CSV, then CSV -> Arrow batches -> Parquet; bounded memory."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    from psycopg import sql

    types = _arrow_types()
    exprs: list[sql.Composable] = []
    for name, typ in columns:
        ident = sql.Identifier(name)
        if typ == "bytea":
            exprs.append(sql.SQL("encode({0}, 'hex') AS {0}").format(ident))
        elif typ == "timestamptz":
            exprs.append(sql.SQL("({0} AT TIME ZONE 'UTC') AS {0}").format(ident))
        else:
            exprs.append(ident)
    csv_path = workdir / f"{schema}.{table}.csv"
    with (
        open(csv_path, "wb") as fh,
        conn.cursor().copy(
            sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT csv)").format(
                sql.SQL(", ").join(exprs), sql.Identifier(schema, table)
            )
        ) as cp,
    ):
        for chunk in cp:
            fh.write(chunk)
    names = [n for n, _ in columns]
    final = pa.schema(
        [
            (
                n,
                pa.binary()
                if t == "bytea"
                else pa.timestamp("us", tz="UTC")
                if t == "timestamptz"
                else types.get(t, pa.string()),
            )
            for n, t in columns
        ],
        metadata={
            "handover.table": f"{schema}.{table}",
            "handover.pg_types": json.dumps(dict(columns)),
        },
    )
    out = workdir / f"{schema}.{table}.parquet"
    rows = 0
    with pq.ParquetWriter(out, final, compression="zstd") as writer:
        if csv_path.stat().st_size:
            reader = pacsv.open_csv(
                csv_path,
                read_options=pacsv.ReadOptions(
                    column_names=names, block_size=4 << 20, use_threads=False
                ),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types={n: types.get(t, pa.string()) for n, t in columns},
                    null_values=[""],
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                    true_values=["t"],
                    false_values=["f"],
                ),
            )
            for batch in reader:
                arrays = []
                for (_, typ), col in zip(columns, batch.columns, strict=True):
                    if typ == "bytea":
                        col = pa.array(
                            [None if v is None else bytes.fromhex(v) for v in col.to_pylist()],
                            pa.binary(),
                        )
                    elif typ == "timestamptz":
                        col = col.cast(pa.timestamp("us", tz="UTC"))
                    arrays.append(col)
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=final))
                rows += batch.num_rows
    csv_path.unlink()
    return out, rows
