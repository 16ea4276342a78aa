"""A second synthetic operator ("telco_b"), derived from handover_synth.legacy_bss's legacy_bss export.

Why this exists
---------------
Onboarding a legacy system "by configuration alone" is only proven by a second system that
looks nothing like the first and still migrates with the same DAG and library. This module
re-shapes a legacy_bss export (same customers, same injected defects, same keys) into what
another Chinese operator might hand over:

==================  =====================================================================
table               shape
==================  =====================================================================
cust_profile        ``cust_profile.txt``: GBK, ``|``-delimited, Chinese headers; name split
                    into 姓/名; dates ``2024年01月05日`` and ``20240105``; updated time as
                    epoch seconds; status and objection as Chinese words; city and address
                    in one ``city/address`` column
cust_consent        ``cust_consent.dat``: GB18030, tab-delimited, no header row; purposes in
                    Chinese, granted as Y/N, granted time as epoch seconds
voice_cdr           ``voice_cdr.parquet``: typed Parquet (timestamp, int64, decimal yuan)
data_cdr            ``data_cdr.csv``: UTF-8 with BOM, English renamed headers, times as
                    ``20240105103000``, charges in yuan with two decimals
payment_log         a table in a SQL database (``source_db/`` holds its DDL and rows;
                    :func:`load_database` loads them); amounts numeric yuan, cash payments
                    have no channel
complaint_ticket    ``complaint_ticket.txt``: GBK, ``|``, Chinese headers, times as
                    ``2024年01月05日 10:30:00``, texts with quoted line breaks
web_log             ``web_log.csv``: GB18030, ``;``-delimited, times as ``2024/01/05 10:30:00``
==================  =====================================================================

``truth.csv`` carries the legacy answer key with telco_b's table names, so the migration's
precision and recall can be measured on this profile too. Conversions work on text and
leave a value they cannot convert as it is, so a defect (an impossible date, say) stays a
defect in the new shape.

Run ``python -m handover_synth.telco_b --out DIR --subscribers N [--seed S] [--dsn DSN]``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import sys
import tempfile
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SYSTEM = "telco_b"
ZONE = ZoneInfo("Asia/Shanghai")
SQL_TABLE = "payment_log"
# legacy_bss table -> telco_b table
TABLES = {
    "subscribers": "cust_profile",
    "consents": "cust_consent",
    "call_records": "voice_cdr",
    "data_sessions": "data_cdr",
    "payments": SQL_TABLE,
    "complaints": "complaint_ticket",
    "browsing_events": "web_log",
}
STATUS = {"1": "正常", "2": "停机", "3": "销户"}
OBJECTION = {"0": "否", "1": "是"}
PURPOSE = {"service": "服务", "marketing": "营销", "behavioural": "行为分析"}
GRANTED = {"1": "Y", "0": "N"}
CHANNEL = {"alipay": "支付宝", "wechat": "微信", "bank": "银行", "cash": None}

_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_DATETIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})$")


# -------------------------------------------------------------------- value conversions
def compact_date(v: str) -> str:
    """2024-01-05 -> 20240105 (text-level, so 2023-02-30 stays impossible)."""
    m = _DATE.match(v)
    return "".join(m.groups()) if m else v


def chinese_date(v: str) -> str:
    m = _DATE.match(v)
    return f"{m[1]}年{m[2]}月{m[3]}日" if m else v


def chinese_datetime(v: str) -> str:
    m = _DATETIME.match(v)
    return f"{m[1]}年{m[2]}月{m[3]}日 {m[4]}:{m[5]}:{m[6]}" if m else v


def compact_datetime(v: str) -> str:
    m = _DATETIME.match(v)
    return "".join(m.groups()) if m else v


def slash_datetime(v: str) -> str:
    m = _DATETIME.match(v)
    return f"{m[1]}/{m[2]}/{m[3]} {m[4]}:{m[5]}:{m[6]}" if m else v


def epoch_seconds(v: str) -> str:
    """Local Asia/Shanghai time -> seconds since 1970 UTC."""
    try:
        local = datetime.strptime(v, "%Y-%m-%d %H:%M:%S").replace(tzinfo=ZONE)
    except ValueError:
        return v
    return str(int(local.timestamp()))


def yuan(v: str) -> str:
    """Integer fen -> yuan with two decimals ('-350' -> '-3.50'); other text unchanged."""
    if not re.fullmatch(r"-?\d+", v.strip()):
        return v
    return f"{Decimal(int(v)).scaleb(-2):.2f}"


def split_name(v: str) -> tuple[str, str]:
    """Family name (first character) and given name; a blank name stays blank."""
    if not v.strip():
        return v, ""
    return v[0], v[1:]


def _map(series: pd.Series, table: dict) -> pd.Series:
    return series.map(lambda v: table.get(v, v))


# -------------------------------------------------------------------- writers
def _write_text(
    path: Path, frame: pd.DataFrame, *, encoding: str, delimiter: str, header: bool
) -> None:
    with open(path, "w", encoding=encoding, newline="") as fh:
        w = csv.writer(fh, delimiter=delimiter, lineterminator="\n")
        if header:
            w.writerow(frame.columns)
        w.writerows(frame.itertuples(index=False, name=None))


def _typed(values: pd.Series, kind: str) -> pa.Array:
    """A typed Arrow column if every non-empty value converts, else the text as it is."""
    text = values.where(values != "", None)
    try:
        if kind == "timestamp":
            parsed = pd.to_datetime(text, format="%Y-%m-%d %H:%M:%S", errors="raise")
            return pa.array(parsed.astype("datetime64[s]"), pa.timestamp("s"))
        if kind == "int":
            return pa.array([None if v is None else int(v) for v in text], pa.int64())
        if kind == "yuan":
            return pa.array(
                [None if v is None else Decimal(int(v)).scaleb(-2) for v in text],
                pa.decimal128(14, 2),
            )
    except (ValueError, TypeError):
        pass
    return pa.array(values.tolist(), pa.string())


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _read(legacy: Path, table: str) -> pd.DataFrame:
    return pd.read_csv(legacy / f"{table}.csv", dtype=str, keep_default_na=False, na_filter=False)


# -------------------------------------------------------------------- the tables
def _profiles(df: pd.DataFrame) -> pd.DataFrame:
    names = df["name"].map(split_name)
    return pd.DataFrame(
        {
            "客户编号": df["cust_id"],
            "姓": names.str[0],
            "名": names.str[1],
            "证件号码": df["id_number"],
            "性别": df["gender"],
            "出生日期": df["birth_date"].map(chinese_date),
            "手机号码": df["msisdn"],
            "所在地": df["city"] + "/" + df["address"],
            "开户日期": df["open_date"].map(compact_date),
            "状态": _map(df["status"], STATUS),
            "拒绝转移": _map(df["transfer_objection"], OBJECTION),
            "更新时间": df["updated_at"].map(epoch_seconds),
        }
    )


def _consents(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "授权编号": df["consent_id"],
            "客户编号": df["cust_id"],
            "授权用途": _map(df["purpose"], PURPOSE),
            "是否同意": _map(df["granted"], GRANTED),
            "授权时间": df["granted_at"].map(epoch_seconds),
        }
    )


def _voice(df: pd.DataFrame) -> pa.Table:
    return pa.table(
        {
            "rec_id": pa.array(df["cdr_id"].tolist(), pa.string()),
            "subscriber_id": pa.array(df["cust_id"].tolist(), pa.string()),
            "calling_no": pa.array(df["caller"].tolist(), pa.string()),
            "called_no": pa.array(df["callee"].tolist(), pa.string()),
            "begin_time": _typed(df["start_time"], "timestamp"),
            "duration_sec": _typed(df["duration_s"], "int"),
            "cell": pa.array(df["cell_id"].tolist(), pa.string()),
            "fee_yuan": _typed(df["charge_fen"], "yuan"),
        }
    )


def _data(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sess_no": df["session_id"],
            "cust_no": df["cust_id"],
            "start_ts": df["start_time"].map(compact_datetime),
            "up_bytes": df["bytes_up"],
            "down_bytes": df["bytes_down"],
            "cell": df["cell_id"],
            "fee": df["charge_fen"].map(yuan),
        }
    )


def _payments(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pay_no": df["payment_id"],
            "cust_no": df["cust_id"],
            "pay_time": df["paid_at"],
            "amount": df["amount_fen"].map(lambda v: yuan(v) if v.strip() else None),
            "pay_channel": df["channel"].map(lambda v: CHANNEL.get(v, v)),
        }
    )


def _line_break(text: str) -> str:
    """Break a complaint after its first sentence, as agents' free text often is."""
    head, sep, tail = text.partition("。")
    return f"{head}。\n{tail}" if sep and tail else text


def _complaints(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "工单编号": df["complaint_id"],
            "客户编号": df["cust_id"],
            "受理时间": df["created_at"].map(chinese_datetime),
            "投诉类别": df["category"],
            "投诉内容": df["text"].map(_line_break),
            "满意度": df["satisfaction"],
        }
    )


def _browsing(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "日志编号": df["event_id"],
            "客户编号": df["cust_id"],
            "访问时间": df["ts"].map(slash_datetime),
            "访问域名": df["domain"],
            "搜索词": df["search_text"],
        }
    )


PAYMENT_DDL = (
    f"CREATE TABLE {SQL_TABLE} (pay_no text PRIMARY KEY, cust_no text, "
    "pay_time timestamp, amount numeric(14,2), pay_channel text)"
)


def derive(legacy_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Write the telco_b export into `out_dir` from a legacy_bss export in `legacy_dir`."""
    legacy, out = Path(legacy_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_in = json.loads((legacy / "export_manifest.json").read_text(encoding="utf-8"))
    tables: dict[str, Any] = {}

    def done(table: str, file: str, rows: int) -> None:
        tables[table] = {"file": file, "rows": rows, "sha256": _sha256(out / file)}

    df = _read(legacy, "subscribers")
    _write_text(out / "cust_profile.txt", _profiles(df), encoding="gbk", delimiter="|", header=True)
    done("cust_profile", "cust_profile.txt", len(df))
    df = _read(legacy, "consents")
    _write_text(
        out / "cust_consent.dat", _consents(df), encoding="gb18030", delimiter="\t", header=False
    )
    done("cust_consent", "cust_consent.dat", len(df))
    df = _read(legacy, "call_records")
    pq.write_table(_voice(df), out / "voice_cdr.parquet", compression="zstd")
    done("voice_cdr", "voice_cdr.parquet", len(df))
    df = _read(legacy, "data_sessions")
    _write_text(out / "data_cdr.csv", _data(df), encoding="utf-8-sig", delimiter=",", header=True)
    done("data_cdr", "data_cdr.csv", len(df))
    df = _read(legacy, "payments")
    db = out / "source_db"
    db.mkdir(exist_ok=True)
    (db / f"{SQL_TABLE}.sql").write_text(PAYMENT_DDL + ";\n", encoding="utf-8")
    pay = _payments(df)
    pq.write_table(pa.Table.from_pandas(pay, preserve_index=False), db / f"{SQL_TABLE}.parquet")
    tables[SQL_TABLE] = {"source": "sql", "table": SQL_TABLE, "rows": len(pay)}
    df = _read(legacy, "complaints")
    _write_text(
        out / "complaint_ticket.txt", _complaints(df), encoding="gbk", delimiter="|", header=True
    )
    done("complaint_ticket", "complaint_ticket.txt", len(df))
    df = _read(legacy, "browsing_events")
    _write_text(out / "web_log.csv", _browsing(df), encoding="gb18030", delimiter=";", header=True)
    done("web_log", "web_log.csv", len(df))

    truth = pd.read_csv(legacy / "truth.csv", dtype=str, keep_default_na=False)
    truth["table"] = truth["table"].map(TABLES)
    truth.to_csv(out / "truth.csv", index=False)
    manifest = {
        "system": SYSTEM,
        "exported_at": manifest_in["exported_at"],
        "seed": manifest_in.get("seed"),
        "subscribers": manifest_in.get("subscribers"),
        "derived_from": "legacy_bss",
        "tables": tables,
    }
    (out / "export_manifest.json").write_text(
        json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    return manifest


def load_database(out_dir: Path, dsn: str) -> int:
    """Create and fill telco_b's SQL table in the PostgreSQL database `dsn` (replacing it)."""
    import psycopg

    db = Path(out_dir) / "source_db"
    rows = pq.read_table(db / f"{SQL_TABLE}.parquet").to_pylist()
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute(f"DROP TABLE IF EXISTS {SQL_TABLE}")
        conn.execute((db / f"{SQL_TABLE}.sql").read_text(encoding="utf-8"))
        with conn.cursor().copy(
            f"COPY {SQL_TABLE} (pay_no, cust_no, pay_time, amount, pay_channel) FROM STDIN"
        ) as cp:
            for r in rows:
                cp.write_row(
                    (r["pay_no"], r["cust_no"], r["pay_time"], r["amount"], r["pay_channel"])
                )
    return len(rows)


def generate(
    out_dir: Path, subscribers: int, seed: int = 42, **synth_kwargs: Any
) -> dict[str, Any]:
    """Generate a legacy_bss export with handover_synth.legacy_bss and derive telco_b's from it."""
    from handover_synth import legacy_bss as synth

    with tempfile.TemporaryDirectory(prefix="legacy-bss-") as tmp:
        synth.generate(Path(tmp), subscribers, seed=seed, **synth_kwargs)
        return derive(Path(tmp), Path(out_dir))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m handover_synth.telco_b",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--subscribers", type=int, help="generate a legacy export of this size")
    ap.add_argument("--from-legacy", type=Path, help="derive from an existing legacy_bss export")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--dsn", help="PostgreSQL conninfo to load the payment_log table into")
    args = ap.parse_args(argv)
    if bool(args.subscribers) == bool(args.from_legacy):
        ap.error("give exactly one of --subscribers or --from-legacy")
    if args.from_legacy:
        if args.from_legacy.resolve() == args.out.resolve():
            ap.error("--out must differ from --from-legacy")
        manifest = derive(args.from_legacy, args.out)
    else:
        manifest = generate(args.out, args.subscribers, seed=args.seed)
    for table, info in manifest["tables"].items():
        print(f"{table}: {info['rows']:,} rows", file=sys.stderr)
    if args.dsn:
        n = load_database(args.out, args.dsn)
        print(f"loaded {n:,} rows into {SQL_TABLE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
