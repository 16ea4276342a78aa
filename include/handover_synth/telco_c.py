"""A third synthetic operator ("telco_c"), as hostile as a real legacy export.

Why this exists
---------------
The second operator (synth_b) proved that another system migrates by configuration alone;
telco_c is the export nobody would design: what a 20-year-old provincial billing back
office hands over when asked for "everything, by Friday". It is derived, like synth_b's,
from a legacy_bss export (same customers, same injected defects, same keys), then
re-expressed with the quirks of the project's field guide to real legacy exports
(LEGACY-QUIRKS.md in the shared folder):

* **No header rows.** Columns are pinyin initials (``khbh`` for 客户编号, ``zjhm`` for
  证件号码 *and*, in the call table, for 主叫号码) defined only in ``数据字典.txt``, a
  non-data file (GB18030) in the export folder, with the code tables and the export time.
* **Files**: GB18030 with CRLF line ends, delimiters ``^``, ``\\x1f`` (unit separator) and
  ``~``; the consent table is UTF-16 with a byte order mark, tab-delimited (a Windows tool's
  "Unicode text"). Complaint texts hold quoted CRLF line breaks. No export manifest.
* **Keys** in mixed case and padded (`` c10012080 `` for ``C10012080``), in the customer
  table and in every child's customer column; some child keys lower-case.
* **Resident IDs**: first-generation 15-digit IDs (GB 11643-1989) for a share of the
  customers born 1900-1999, lower-case ``x``, IDs printed in groups with spaces; and
  **the same person twice across ID generations**: a customer exported a second time under
  a new customer key, once with the 15-digit and once with the 18-digit ID, some of the
  calls, data sessions, payments and complaints under each key. The survivor is the
  record updated last (cleansing ``dedupe``); the other is ``merged`` into it and its
  children are re-parented. legacy_bss's DUPLICATE_PERSON rows are merged the same way.
* **Gender** as GB/T 2261.1 codes (``1`` male, ``2`` female, ``0``/``9`` unknown) and a
  **birth date** column full of placeholders (``19000101``, ``00000000``, blank) that the
  back office never cleaned: neither is migrated, the target's birth date and gender come
  from the resident ID (mapping ``from_resident_id``). A legacy row whose birth date
  disagreed with its ID (ID_BIRTH_MISMATCH) is therefore loaded with the ID's date, and
  its children with it.
* **Codes** as pinyin initials defined only in the dictionary: status ``ZC/TJ/XH``
  (正常/停机/销户), purposes ``FW/YX/XW``, channels ``ZFB/WX/YH/XJ``, complaint categories
  ``JF/WL/FW/QT``; objection ``Y``/``N``.
* **Dates**: open dates written five ways in one column (``2006-4-24``,
  ``2012/12/08 09:30``, ``20240105``, ``2024年1月5日``, Excel serial days); updated time as
  epoch milliseconds; payments' times three ways; consents' ``2026-02-14T00:50:38``;
  complaints' ``2026年01月28日 04:32``. No list reads one value two ways.
* **Money**: call fees and payments as printed (``¥17,504.10``, ``￥0.30``,
  ``RMB 1,000``, ``12.50元``, negatives ``(12.50)``, ``负3.00``, ``-0.30``); data-session fees
  as whole fen.
* **Phones**: subscribers' mobiles as ``+86 138 0013 8000``, ``150-1234-5678``,
  ``0086 13800138000``; the other party of a call may be a landline (``010-12345678``,
  ``0755 1234567``), a service number (``10086``, ``95588``), an IoT number (13 digits) or
  abroad (``+44 20 7946 0958``, ``0044…``).

``truth.csv`` holds the fate of **every** row: columns ``table, key, defect,
expected_outcome, expected_reason, merged_into, reparented_to, amount_yuan``. Outcomes:
``loaded``, ``quarantined`` (reason code), ``excluded`` (policy rule id) and ``merged``
(reason ``SAME_PERSON``; ``merged_into`` the survivor's customer key). ``reparented_to``
names the survivor a loaded child row of a merged customer must end up under;
``amount_yuan`` is the row's amount (exact decimal yuan) where the table carries money.
Keys in the answer key are the canonical ones (upper case, trimmed).

Run ``python -m handover_synth.telco_c --out DIR --subscribers N [--seed S]``; then, as a
receiver would, ``handover manifest --system telco_c --source-dir DIR --exported-at
"<the export time the dictionary states>"``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SYSTEM = "telco_c"
DICTIONARY = "数据字典.txt"
TRUTH_COLUMNS = (
    "table",
    "key",
    "defect",
    "expected_outcome",
    "expected_reason",
    "merged_into",
    "reparented_to",
    "amount_yuan",
)

# Shares of the quirks this dialect adds (of the rows they can apply to).
FIRST_GEN_SHARE = 0.2  # customers born 1900-1999 exported with a 15-digit ID
SAME_PERSON_SHARE = 0.02  # clean customers exported twice across ID generations
MOVED_CHILD_SHARE = 0.4  # of such a customer's children, under the second key
KEY_VARIANT_SHARE = 0.12  # customer keys in mixed case / padded
CHILD_KEY_LOWER_SHARE = 0.05
BIRTH_PLACEHOLDER_SHARE = 0.08
GENDER_UNKNOWN_SHARE = 0.05
OTHER_PARTY_SHARE = 0.15  # calls whose other party is not a mobile

# legacy_bss table -> (telco_c table, file, encoding, delimiter)
FILES: dict[str, tuple[str, str, str, str]] = {
    "subscribers": ("khzl", "KHZL_20261101.dat", "gb18030", "^"),
    "consents": ("sqjl", "SQJL_20261101.txt", "utf-16", "\t"),
    "call_records": ("thxd", "THXD_20261101.dat", "gb18030", "\x1f"),
    "data_sessions": ("swjl", "SWJL_20261101.dat", "gb18030", "^"),
    "payments": ("jfjl", "JFJL_20261101.dat", "gb18030", "~"),
    "complaints": ("tsgd", "TSGD_20261101.dat", "gb18030", "^"),
    "browsing_events": ("lljl", "LLJL_20261101.dat", "gb18030", "\x1f"),
}
TABLES = {legacy: spec[0] for legacy, spec in FILES.items()}
# Files the billing system ends with a count line, `共<n>条`.
TRAILERS = {"payments"}

# telco_c columns (file order) with their Chinese names, per telco_c table.
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "khzl": [
        ("khbh", "客户编号"),
        ("khxm", "客户姓名"),
        ("zjhm", "证件号码"),
        ("xb", "性别"),
        ("csrq", "出生日期"),
        ("sjhm", "手机号码"),
        ("lxdz", "联系地址"),
        ("ssds", "所属地市"),
        ("khrq", "开户日期"),
        ("zt", "状态"),
        ("jjzy", "拒绝转移"),
        ("gxsj", "更新时间"),
    ],
    "sqjl": [
        ("sqbh", "授权编号"),
        ("khbh", "客户编号"),
        ("sqyt", "授权用途"),
        ("sfty", "是否同意"),
        ("sqsj", "授权时间"),
    ],
    "thxd": [
        ("lsh", "流水号"),
        ("khbh", "客户编号"),
        ("zjhm", "主叫号码"),
        ("bjhm", "被叫号码"),
        ("kssj", "开始时间"),
        ("thsc", "通话时长"),
        ("xqbs", "小区标识"),
        ("fy", "费用"),
    ],
    "swjl": [
        ("hhbh", "会话编号"),
        ("khbh", "客户编号"),
        ("kssj", "开始时间"),
        ("sxll", "上行流量"),
        ("xxll", "下行流量"),
        ("xqbs", "小区标识"),
        ("fy", "费用"),
    ],
    "jfjl": [
        ("jflsh", "缴费流水号"),
        ("khbh", "客户编号"),
        ("jfsj", "缴费时间"),
        ("jfje", "缴费金额"),
        ("jfqd", "缴费渠道"),
    ],
    "tsgd": [
        ("gdbh", "工单编号"),
        ("khbh", "客户编号"),
        ("slsj", "受理时间"),
        ("tslb", "投诉类别"),
        ("tsnr", "投诉内容"),
        ("myd", "满意度"),
    ],
    "lljl": [
        ("rzbh", "日志编号"),
        ("khbh", "客户编号"),
        ("fwsj", "访问时间"),
        ("fwym", "访问域名"),
        ("ssc", "搜索词"),
    ],
}
NOTES = {  # what the dictionary says beside a column
    ("khzl", "xb"): "GB/T 2261.1：1 男，2 女，0 未知，9 未说明",
    ("khzl", "csrq"): "yyyymmdd；历史数据未清洗",
    ("khzl", "khrq"): "多种格式，含 Excel 序列日",
    ("khzl", "zt"): "ZC 正常，TJ 停机，XH 销户",
    ("khzl", "jjzy"): "Y 是，N 否",
    ("khzl", "gxsj"): "毫秒时间戳，北京时间",
    ("sqjl", "sqyt"): "FW 服务，YX 营销，XW 行为分析",
    ("sqjl", "sfty"): "1 同意，0 不同意",
    ("thxd", "thsc"): "秒",
    ("thxd", "fy"): "元",
    ("swjl", "sxll"): "字节",
    ("swjl", "xxll"): "字节",
    ("swjl", "fy"): "分",
    ("jfjl", "jfje"): "元",
    ("jfjl", "jfqd"): "ZFB 支付宝，WX 微信，YH 银行，XJ 现金",
    ("tsgd", "tslb"): "JF 计费，WL 网络，FW 服务，QT 其他",
    ("tsgd", "myd"): "1-5，可空",
}
STATUS = {"1": "ZC", "2": "TJ", "3": "XH"}
OBJECTION = {"0": "N", "1": "Y"}
PURPOSE = {"service": "FW", "marketing": "YX", "behavioural": "XW"}
CHANNEL = {"alipay": "ZFB", "wechat": "WX", "bank": "YH", "cash": "XJ"}
CATEGORY = {"计费": "JF", "网络": "WL", "服务": "FW", "其他": "QT"}
GENDER = {"男": "1", "女": "2"}
CHILDREN = (
    "consents",
    "call_records",
    "data_sessions",
    "payments",
    "complaints",
    "browsing_events",
)
MOVABLE = ("call_records", "data_sessions", "payments", "complaints")  # not consent-bound
MONEY = {"call_records": "charge_fen", "data_sessions": "charge_fen", "payments": "amount_fen"}
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK = "10X98765432"
EXCEL_EPOCH = date(1899, 12, 30)
LANDLINES = ("010-{8}", "021-{8}", "0755 {7}", "(020){8}", "+86 10 {8}", "0571-{8}")
SERVICES = ("10086", "10010", "10000", "95588", "95533", "12345", "114")
IOT = ("1440{9}", "1064{9}")
ABROAD = ("+44 20 {8}", "0044 20 {8}", "+1 415 {7}", "+81 3 {8}")


# -------------------------------------------------------------------- small helpers
def check_digit(first17: str) -> str:
    return ID_CHECK[sum(int(c) * w for c, w in zip(first17, ID_WEIGHTS, strict=True)) % 11]


def id_valid(v: str) -> bool:
    return (
        len(v) == 18 and v[:17].isdigit() and v.isascii() and check_digit(v[:17]) == v[17].upper()
    )


def first_generation(v: str) -> str | None:
    """The 15-digit form of a valid 18-digit ID of someone born 1900-1999 (drop the
    century digits 7-8 and the check digit), else None."""
    if not id_valid(v) or v[6:8] != "19":
        return None
    return v[:6] + v[8:17]


def upgrade(v: str) -> str:
    """A 15-digit ID in its 18-digit form (what the pipeline must load)."""
    first17 = v[:6] + "19" + v[6:]
    return first17 + check_digit(first17)


def _digits(rng: np.random.Generator, k: int) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, k))


def _fill(rng: np.random.Generator, pattern: str) -> str:
    """'010-{8}' -> '010-' and 8 random digits (the first not 0)."""
    head, _, rest = pattern.partition("{")
    if not rest:
        return pattern
    k, _, tail = rest.partition("}")
    body = str(rng.integers(2, 10)) + _digits(rng, int(k) - 1)
    return head + body + tail


def mobile_style(rng: np.random.Generator, m: str) -> str:
    """An 11-digit mobile as back offices print it; other values unchanged."""
    if len(m) != 11 or not m.isdigit():
        return m
    u = rng.random()
    if u < 0.15:
        return f"+86 {m[:3]} {m[3:7]} {m[7:]}"
    if u < 0.25:
        return f"{m[:3]}-{m[3:7]}-{m[7:]}"
    if u < 0.30:
        return f"0086 {m}"
    return m


def money_text(rng: np.random.Generator, fen_text: str) -> str:
    """Integer fen ('-350') as a billing system prints yuan: '¥1,234.50', '(3.50)', ..."""
    if not fen_text.strip().lstrip("-").isdigit():
        return fen_text
    fen = int(fen_text)
    yuan = Decimal(abs(fen)).scaleb(-2)
    plain = f"{yuan:.2f}"
    grouped = f"{yuan:,.2f}"
    if fen < 0:
        return (f"({plain})", f"负{plain}", f"-{plain}")[int(rng.integers(0, 3))]
    u = rng.random()
    if u < 0.25:
        return f"¥{grouped}"
    if u < 0.35:
        return f"￥{grouped}"
    if u < 0.45 and fen % 100 == 0:
        return f"RMB {fen // 100:,}"
    if u < 0.55:
        return f"{plain}元"
    if u < 0.62 and fen % 10 == 0:
        return f"{yuan:.1f}"
    return plain


def key_variant(rng: np.random.Generator, key: str, share: float = KEY_VARIANT_SHARE) -> str:
    """A key as hand-keyed systems hold it: lower case, padded, or both."""
    if not key or rng.random() >= share:
        return key
    return (key.lower(), f" {key.lower()} ", f"{key} ", f"  {key}", key[0] + key[1:].lower())[
        int(rng.integers(0, 5))
    ]


def _ymd(v: str) -> tuple[int, int, int] | None:
    try:
        d = datetime.strptime(v, "%Y-%m-%d")
    except ValueError:
        parts = v.split("-")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            return int(parts[0]), int(parts[1]), int(parts[2])  # impossible: 2023-02-30
        return None
    return d.year, d.month, d.day


def open_date_text(rng: np.random.Generator, v: str) -> str:
    """One of five shapes for one date column; an impossible date stays impossible."""
    ymd = _ymd(v)
    if ymd is None:
        return v
    y, m, d = ymd
    try:
        real = date(y, m, d)
    except ValueError:
        real = None
    k = int(rng.integers(0, 5))
    if k == 4 and real is None:
        k = int(rng.integers(0, 4))
    if k == 0:
        return f"{y}-{m}-{d}"
    if k == 1:
        return f"{y}/{m:02d}/{d:02d} {int(rng.integers(8, 19)):02d}:{int(rng.integers(0, 60)):02d}"
    if k == 2:
        return f"{y}{m:02d}{d:02d}"
    if k == 3:
        return f"{y}年{m}月{d}日"
    return str((real - EXCEL_EPOCH).days)


def _dt(v: str) -> datetime | None:
    try:
        return datetime.strptime(v, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None


def payment_time_text(rng: np.random.Generator, v: str) -> str:
    t = _dt(v)
    if t is None:
        return v
    k = int(rng.integers(0, 3))
    if k == 0:
        return v
    if k == 1:
        return t.strftime("%Y/%m/%d %H:%M")
    return t.strftime("%Y年%m月%d日 %H:%M:%S")


def epoch_ms(v: str) -> str:
    """Asia/Shanghai local time -> milliseconds since 1970 UTC."""
    t = _dt(v)
    if t is None:
        return v
    return str((int((t - datetime(1970, 1, 1)).total_seconds()) - 8 * 3600) * 1000)


def _fmt(v: str, out: str) -> str:
    t = _dt(v)
    return v if t is None else t.strftime(out)


def _read(legacy: Path, table: str) -> pd.DataFrame:
    return pd.read_csv(legacy / f"{table}.csv", dtype=str, keep_default_na=False, na_filter=False)


def _write(
    path: Path, frame: pd.DataFrame, *, encoding: str, delimiter: str, trailer: bool = False
) -> None:
    with open(path, "w", encoding=encoding, newline="") as fh:
        w = csv.writer(fh, delimiter=delimiter, lineterminator="\r\n")
        w.writerows(frame.itertuples(index=False, name=None))
        if trailer:  # the billing system's count line: not a row (catalog source.trailer)
            fh.write(f"共{len(frame)}条\r\n")


# -------------------------------------------------------------------- the answer key
def _truth_frames(legacy: Path, frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Every row's fate as legacy_bss's answer key has it (rows it does not list: loaded)."""
    given = pd.read_csv(legacy / "truth.csv", dtype=str, keep_default_na=False)
    out = {}
    for table, df in frames.items():
        key_col = df.columns[0]
        t = pd.DataFrame(
            {
                "key": df[key_col],
                "defect": "",
                "expected_outcome": "loaded",
                "expected_reason": "",
                "merged_into": "",
                "reparented_to": "",
                "amount_yuan": "",
            }
        )
        mine = given[given["table"] == table].set_index("key")
        hit = t["key"].isin(mine.index)
        for col in ("defect", "expected_outcome", "expected_reason"):
            t.loc[hit, col] = t.loc[hit, "key"].map(mine[col])
        if table in MONEY:
            t["amount_yuan"] = df[MONEY[table]].map(
                lambda v: f"{Decimal(int(v)).scaleb(-2):.2f}" if v.strip() else ""
            )
        out[table] = t.reset_index(drop=True)
    return out


# -------------------------------------------------------------------- derive
def derive(legacy_dir: Path, out_dir: Path, *, seed: int | None = None) -> dict[str, Any]:
    """Write the telco_c export (and truth.csv) into `out_dir` from a legacy_bss export."""
    legacy, out = Path(legacy_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # a fresh export comes without a manifest: one left by an earlier generation in this
    # folder would describe other files (and `handover manifest` refuses to replace it)
    stale = out / "export_manifest.json"
    if (
        stale.exists()
        and json.loads(stale.read_text(encoding="utf-8")).get("made_by") == "receiver"
    ):
        stale.unlink()
    manifest_in = json.loads((legacy / "export_manifest.json").read_text(encoding="utf-8"))
    rng = np.random.default_rng([7919, int(manifest_in.get("seed") or 0) if seed is None else seed])
    frames = {t: _read(legacy, t) for t in FILES}
    truth = _truth_frames(legacy, frames)
    subs, st = frames["subscribers"], truth["subscribers"]

    # legacy_bss's DUPLICATE_PERSON rows: merged into their person's record (updated later).
    by_id = subs.groupby("id_number").indices
    updated = subs["updated_at"]
    for i in np.flatnonzero(st["defect"].to_numpy() == "DUPLICATE_PERSON"):
        mates = [j for j in by_id[subs.at[i, "id_number"]] if j != i]
        survivor = max(mates + [i], key=lambda j: (updated.iat[j], -j))
        assert survivor != i, "legacy duplicate is not the older record"
        st.loc[i, ["expected_outcome", "expected_reason", "merged_into"]] = [
            "merged",
            "SAME_PERSON",
            subs.at[survivor, "cust_id"],
        ]

    # ID_BIRTH_MISMATCH: the birth-date column is not migrated (the ID's date is): loaded,
    # and the children that waited for it with it.
    repaired = set(subs.loc[st["defect"] == "ID_BIRTH_MISMATCH", "cust_id"])
    st.loc[st["defect"] == "ID_BIRTH_MISMATCH", ["expected_outcome", "expected_reason"]] = [
        "loaded",
        "",
    ]
    for table in CHILDREN:
        t, df = truth[table], frames[table]
        hit = df["cust_id"].isin(repaired) & (t["expected_reason"] == "PARENT_QUARANTINED")
        t.loc[hit, ["defect", "expected_outcome", "expected_reason"]] = [
            "PARENT_REPAIRED",
            "loaded",
            "",
        ]

    # The same person twice across ID generations: a second record under a new key.
    subs, st = _same_person_twice(rng, frames, truth, pd.Timestamp(manifest_in["exported_at"]))

    # First-generation IDs for a share of the rest (born 1900-1999, valid IDs only: a
    # 15-digit form has no check digit, so a bad one would come back repaired).
    ids = subs["id_number"].tolist()
    pair = set(st.loc[st["defect"].isin(["SAME_PERSON_15", "SAME_PERSON_18"]), "key"])
    for i, v in enumerate(ids):
        short = first_generation(v)
        if short and subs.at[i, "cust_id"] not in pair and rng.random() < FIRST_GEN_SHARE:
            ids[i] = short
            if st.at[i, "defect"] == "":
                st.at[i, "defect"] = "FIRST_GEN_ID"
        elif len(v) == 18 and v.endswith("X") and rng.random() < 0.5:
            ids[i] = v[:17] + "x"
        elif len(v) == 18 and rng.random() < 0.05:
            ids[i] = f"{v[:6]} {v[6:14]} {v[14:]}"
    subs = subs.assign(id_number=ids)
    frames["subscribers"] = subs

    own_numbers = dict(zip(subs["cust_id"], subs["msisdn"], strict=True))
    tables: dict[str, Any] = {}
    for legacy_table, (table, file, encoding, delimiter) in FILES.items():
        df = frames[legacy_table]
        shaped = (
            _calls(rng, df, own_numbers)
            if legacy_table == "call_records"
            else SHAPES[legacy_table](rng, df)
        )
        _write(
            out / file,
            shaped,
            encoding=encoding,
            delimiter=delimiter,
            trailer=legacy_table in TRAILERS,
        )
        tables[table] = {
            "file": file,
            "rows": len(shaped),
            "encoding": encoding,
            "delimiter": delimiter,
        }
    (out / DICTIONARY).write_text(
        _dictionary(manifest_in["exported_at"], tables).replace("\n", "\r\n"),
        encoding="gb18030",
        newline="",
    )

    rows = []
    for legacy_table, t in truth.items():
        rows.append(t.assign(table=TABLES[legacy_table]))
    full = pd.concat(rows, ignore_index=True)[list(TRUTH_COLUMNS)]
    full.to_csv(out / "truth.csv", index=False)
    return {
        "system": SYSTEM,
        "exported_at": manifest_in["exported_at"],
        "seed": manifest_in.get("seed"),
        "subscribers": manifest_in.get("subscribers"),
        "derived_from": "legacy_bss",
        "tables": tables,
        "dictionary": DICTIONARY,
    }


def _new_keys(rng: np.random.Generator, taken: set[str], k: int) -> list[str]:
    out: list[str] = []
    while len(out) < k:
        key = f"C{int(rng.integers(10_000_000, 90_000_000)):08d}"
        if key not in taken:
            taken.add(key)
            out.append(key)
    return out


def _same_person_twice(
    rng: np.random.Generator,
    frames: dict[str, pd.DataFrame],
    truth: dict[str, pd.DataFrame],
    exported_at: pd.Timestamp,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pick clean customers born 1900-1999 and export each a second time under a new key,
    one record with the 15-digit ID and one with the 18-digit; move some children."""
    subs, st = frames["subscribers"], truth["subscribers"]
    counts = subs["id_number"].map(subs["id_number"].value_counts())
    eligible = np.flatnonzero(
        (
            (st["defect"] == "")
            & (st["expected_outcome"] == "loaded")
            & (counts == 1)
            & subs["id_number"].map(lambda v: bool(first_generation(v)))
        ).to_numpy()
    )
    k = min(len(eligible), max(2, round(SAME_PERSON_SHARE * len(subs))))
    chosen = np.sort(rng.choice(eligible, size=k, replace=False)) if k else []
    taken = set(subs["cust_id"])
    for table in CHILDREN:
        taken |= set(frames[table]["cust_id"])
    new_keys = _new_keys(rng, taken, len(chosen))
    latest = exported_at - pd.Timedelta(hours=1)
    extra_rows, extra_truth = [], []
    moved_to: dict[str, str] = {}  # original key -> second key
    survivor_of: dict[str, str] = {}  # customer key (either record) -> survivor's key
    for i, new in zip(chosen, new_keys, strict=True):
        orig = subs.iloc[i].copy()
        upd = pd.Timestamp(orig["updated_at"])
        shifted = upd + pd.Timedelta(
            days=int(rng.integers(1, 120)), seconds=int(rng.integers(0, 86_400))
        )
        if rng.random() < 0.5 or shifted > latest:  # the second record is the older one
            shifted = upd - (shifted - upd)
        newer = shifted > upd
        extra = orig.copy()
        extra["cust_id"] = new
        extra["updated_at"] = shifted.strftime("%Y-%m-%d %H:%M:%S")
        extra["status"] = "1"
        extra["transfer_objection"] = "0"
        opened = datetime.strptime(orig["open_date"], "%Y-%m-%d")
        extra["open_date"] = (
            (opened - pd.Timedelta(days=int(rng.integers(0, 900)))).strftime("%Y-%m-%d")
            if opened.year > 1990
            else orig["open_date"]
        )
        short = first_generation(orig["id_number"])
        if rng.random() < 0.5:  # which of the two records carries the old ID
            subs.at[subs.index[i], "id_number"] = short
            orig_defect, extra_defect = "SAME_PERSON_15", "SAME_PERSON_18"
        else:
            extra["id_number"] = short
            orig_defect, extra_defect = "SAME_PERSON_18", "SAME_PERSON_15"
        survivor, loser = (new, orig["cust_id"]) if newer else (orig["cust_id"], new)
        st.loc[i, "defect"] = orig_defect
        if loser == orig["cust_id"]:
            st.loc[i, ["expected_outcome", "expected_reason", "merged_into"]] = [
                "merged",
                "SAME_PERSON",
                survivor,
            ]
        extra_rows.append(extra)
        extra_truth.append(
            {
                "key": new,
                "defect": extra_defect,
                "expected_outcome": "merged" if loser == new else "loaded",
                "expected_reason": "SAME_PERSON" if loser == new else "",
                "merged_into": survivor if loser == new else "",
                "reparented_to": "",
                "amount_yuan": "",
            }
        )
        moved_to[orig["cust_id"]] = new
        survivor_of[orig["cust_id"]] = survivor_of[new] = survivor
    # the second records at random places in the file
    if extra_rows:
        place = np.concatenate(
            [
                np.arange(len(subs), dtype=float),
                rng.integers(0, len(subs) + 1, len(extra_rows)) - 0.5,
            ]
        )
        order = np.argsort(place, kind="stable")
        subs = (
            pd.concat([subs, pd.DataFrame(extra_rows)], ignore_index=True)
            .iloc[order]
            .reset_index(drop=True)
        )
        st = (
            pd.concat([st, pd.DataFrame(extra_truth)], ignore_index=True)
            .iloc[order]
            .reset_index(drop=True)
        )
    frames["subscribers"], truth["subscribers"] = subs, st
    # some children under the second key; every loaded child ends under the survivor
    for table in CHILDREN:
        df, t = frames[table], truth[table]
        owner = df["cust_id"].copy()
        if table in MOVABLE:
            for orig_key, new in moved_to.items():
                rows = np.flatnonzero(owner.to_numpy() == orig_key)
                if not len(rows):
                    continue
                move = rows[rng.random(len(rows)) < MOVED_CHILD_SHARE]
                if not len(move):
                    move = rows[:1]
                owner.iloc[move] = new
        df["cust_id"] = owner
        goes = owner.map(survivor_of).fillna("")
        hit = (goes != "") & (goes != owner) & (t["expected_outcome"] == "loaded")
        t.loc[hit, "reparented_to"] = goes[hit]
        t.loc[hit & (t["defect"] == ""), "defect"] = "PARENT_MERGED"
    return subs, st


# -------------------------------------------------------------------- per table
def _profiles(rng: np.random.Generator, df: pd.DataFrame) -> pd.DataFrame:
    n = len(df)
    gender = df["gender"].map(lambda v: GENDER.get(v, v)).to_numpy(dtype=object)
    unknown = rng.random(n) < GENDER_UNKNOWN_SHARE
    gender[unknown] = np.where(rng.random(int(unknown.sum())) < 0.5, "0", "9")
    birth = df["birth_date"].str.replace("-", "", regex=False).to_numpy(dtype=object)
    hole = rng.random(n) < BIRTH_PLACEHOLDER_SHARE
    birth[hole] = np.array(["19000101", "00000000", ""], dtype=object)[
        rng.integers(0, 3, int(hole.sum()))
    ]
    return pd.DataFrame(
        {
            "khbh": [key_variant(rng, k) for k in df["cust_id"]],
            "khxm": df["name"],
            "zjhm": df["id_number"],
            "xb": gender,
            "csrq": birth,
            "sjhm": [mobile_style(rng, m) for m in df["msisdn"]],
            "lxdz": df["address"],
            "ssds": df["city"],
            "khrq": [open_date_text(rng, v) for v in df["open_date"]],
            "zt": df["status"].map(lambda v: STATUS.get(v, v)),
            "jjzy": df["transfer_objection"].map(lambda v: OBJECTION.get(v, v)),
            "gxsj": df["updated_at"].map(epoch_ms),
        }
    )


def _consents(rng: np.random.Generator, df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sqbh": [key_variant(rng, k, CHILD_KEY_LOWER_SHARE) for k in df["consent_id"]],
            "khbh": [key_variant(rng, k) for k in df["cust_id"]],
            "sqyt": df["purpose"].map(lambda v: PURPOSE.get(v, v)),
            "sfty": df["granted"],
            "sqsj": df["granted_at"].map(lambda v: _fmt(v, "%Y-%m-%dT%H:%M:%S")),
        }
    )


def _other_party(rng: np.random.Generator) -> str:
    u = rng.random()
    if u < 0.4:
        return _fill(rng, LANDLINES[int(rng.integers(0, len(LANDLINES)))])
    if u < 0.65:
        return SERVICES[int(rng.integers(0, len(SERVICES)))]
    if u < 0.85:
        return _fill(rng, IOT[int(rng.integers(0, len(IOT)))])
    return _fill(rng, ABROAD[int(rng.integers(0, len(ABROAD)))])


def _calls(rng: np.random.Generator, df: pd.DataFrame, own: dict[str, str]) -> pd.DataFrame:
    caller, callee = df["caller"].tolist(), df["callee"].tolist()
    for i, cust in enumerate(df["cust_id"]):
        mine = own.get(cust)
        other_is_caller = mine is not None and caller[i] != mine and callee[i] == mine
        if rng.random() < OTHER_PARTY_SHARE:
            if other_is_caller:
                caller[i] = _other_party(rng)
            else:
                callee[i] = _other_party(rng)
        caller[i], callee[i] = mobile_style(rng, caller[i]), mobile_style(rng, callee[i])
    return pd.DataFrame(
        {
            "lsh": [key_variant(rng, k, CHILD_KEY_LOWER_SHARE) for k in df["cdr_id"]],
            "khbh": [key_variant(rng, k) for k in df["cust_id"]],
            "zjhm": caller,
            "bjhm": callee,
            "kssj": df["start_time"].map(lambda v: _fmt(v, "%Y%m%d%H%M%S")),
            "thsc": df["duration_s"],
            "xqbs": df["cell_id"],
            "fy": [money_text(rng, v) for v in df["charge_fen"]],
        }
    )


def _sessions(rng: np.random.Generator, df: pd.DataFrame) -> pd.DataFrame:
    slash = rng.random(len(df)) < 0.3
    return pd.DataFrame(
        {
            "hhbh": [key_variant(rng, k, CHILD_KEY_LOWER_SHARE) for k in df["session_id"]],
            "khbh": [key_variant(rng, k) for k in df["cust_id"]],
            "kssj": [
                _fmt(v, "%Y/%m/%d %H:%M:%S") if s else v
                for v, s in zip(df["start_time"], slash, strict=True)
            ],
            "sxll": df["bytes_up"],
            "xxll": df["bytes_down"],
            "xqbs": df["cell_id"],
            "fy": df["charge_fen"],  # whole fen, as the data platform counts
        }
    )


def _payments(rng: np.random.Generator, df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "jflsh": [key_variant(rng, k, CHILD_KEY_LOWER_SHARE) for k in df["payment_id"]],
            "khbh": [key_variant(rng, k) for k in df["cust_id"]],
            "jfsj": [payment_time_text(rng, v) for v in df["paid_at"]],
            "jfje": [money_text(rng, v) for v in df["amount_fen"]],
            "jfqd": df["channel"].map(lambda v: CHANNEL.get(v, v)),
        }
    )


def _line_break(text: str) -> str:
    head, sep, tail = text.partition("。")
    return f"{head}。\r\n{tail}" if sep and tail else text


def _complaints(rng: np.random.Generator, df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "gdbh": [key_variant(rng, k, CHILD_KEY_LOWER_SHARE) for k in df["complaint_id"]],
            "khbh": [key_variant(rng, k) for k in df["cust_id"]],
            "slsj": df["created_at"].map(lambda v: _fmt(v, "%Y年%m月%d日 %H:%M")),
            "tslb": df["category"].map(lambda v: CATEGORY.get(v, v)),
            "tsnr": df["text"].map(_line_break),
            "myd": df["satisfaction"],
        }
    )


def _browsing(rng: np.random.Generator, df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rzbh": [key_variant(rng, k, CHILD_KEY_LOWER_SHARE) for k in df["event_id"]],
            "khbh": [key_variant(rng, k) for k in df["cust_id"]],
            "fwsj": df["ts"],
            "fwym": df["domain"],
            "ssc": df["search_text"],
        }
    )


SHAPES = {
    "subscribers": _profiles,
    "consents": _consents,
    "data_sessions": _sessions,
    "payments": _payments,
    "complaints": _complaints,
    "browsing_events": _browsing,
}


def _dictionary(exported_at: str, tables: dict[str, Any]) -> str:
    """数据字典.txt: the only place the columns, codes and export time are written down."""
    names = {
        "khzl": "客户资料",
        "sqjl": "授权记录",
        "thxd": "通话详单",
        "swjl": "上网记录",
        "jfjl": "缴费记录",
        "tsgd": "投诉工单",
        "lljl": "浏览记录",
    }
    shown = {"^": "^", "\t": "TAB", "\x1f": "0x1F", "~": "~"}
    lines = [
        "数据字典（客户数据移交）",
        f"导出时间：{exported_at}（北京时间）",
        "说明：数据文件无表头，字段顺序如下；行结束符 CRLF。",
        "",
    ]
    for table, info in tables.items():
        enc = "UTF-16（带 BOM）" if info["encoding"] == "utf-16" else "GB18030"
        lines.append(
            f"【{names[table]}】文件 {info['file']}，编码 {enc}，分隔符 "
            f"{shown[info['delimiter']]}，记录数 {info['rows']}"
        )
        for i, (col, cn) in enumerate(COLUMNS[table], 1):
            note = NOTES.get((table, col))
            lines.append(f"  {i:>2}. {col:<6} {cn}" + (f"（{note}）" if note else ""))
        lines.append("")
    return "\n".join(lines) + "\n"


def generate(
    out_dir: Path, subscribers: int, seed: int = 42, **synth_kwargs: Any
) -> dict[str, Any]:
    """Generate a legacy_bss export with handover_synth.legacy_bss and derive telco_c's from it."""
    from handover_synth import legacy_bss as synth

    with tempfile.TemporaryDirectory(prefix="legacy-bss-") as tmp:
        synth.generate(Path(tmp), subscribers, seed=seed, **synth_kwargs)
        return derive(Path(tmp), Path(out_dir))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m handover_synth.telco_c",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--subscribers", type=int, help="generate a legacy export of this size")
    ap.add_argument("--from-legacy", type=Path, help="derive from an existing legacy_bss export")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)
    if bool(args.subscribers) == bool(args.from_legacy):
        ap.error("give exactly one of --subscribers or --from-legacy")
    if args.from_legacy:
        if args.from_legacy.resolve() == args.out.resolve():
            ap.error("--out must differ from --from-legacy")
        info = derive(args.from_legacy, args.out)
    else:
        info = generate(args.out, args.subscribers, seed=args.seed)
    for table, meta in info["tables"].items():
        print(f"{table}: {meta['rows']:,} rows ({meta['file']})", file=sys.stderr)
    print(
        f"no manifest (as received): write one with `handover manifest --system {SYSTEM} "
        f'--source-dir {args.out} --exported-at "{info["exported_at"]}"`',
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
