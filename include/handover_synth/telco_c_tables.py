"""One shaper a telco_c table (legacy_bss frame -> telco_c columns) and the data dictionary."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from handover_synth.telco_c_spec import (
    ABROAD,
    BIRTH_PLACEHOLDER_SHARE,
    CATEGORY,
    CHANNEL,
    CHILD_KEY_LOWER_SHARE,
    COLUMNS,
    GENDER,
    GENDER_UNKNOWN_SHARE,
    IOT,
    LANDLINES,
    NOTES,
    OBJECTION,
    OTHER_PARTY_SHARE,
    PURPOSE,
    SERVICES,
    STATUS,
)
from handover_synth.telco_c_text import (
    _fill,
    _fmt,
    epoch_ms,
    key_variant,
    mobile_style,
    money_text,
    open_date_text,
    payment_time_text,
)


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
