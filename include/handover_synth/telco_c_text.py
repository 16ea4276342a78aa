"""How telco_c prints one value: IDs, phones, money, dates and keys, and its file I/O.

Pure string helpers (each draw from the generator passed in, in a fixed order), plus
reading a legacy_bss table and writing a headerless CRLF file.
"""

from __future__ import annotations

import csv
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from handover_synth.telco_c_spec import (
    EXCEL_EPOCH,
    ID_CHECK,
    ID_WEIGHTS,
    KEY_VARIANT_SHARE,
)


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
    # k == 4 only when `real` is a date (an impossible date picks another shape above)
    return str((cast(date, real) - EXCEL_EPOCH).days)


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
