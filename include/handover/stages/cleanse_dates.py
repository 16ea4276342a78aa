"""Dates as legacy exports write them: strptime formats, epoch specs, Excel serial days.

Cleanse types date columns with parse_dates; mapping's parse_date, comply's event times,
retention and `check` read dates the same way, so one format means one thing everywhere.
"""

from __future__ import annotations

import pandas as pd

EPOCH_UNITS = {"epoch": "s", "epoch_ms": "ms"}
#: The clock of a Chinese operator's export (one zone, no daylight saving): times written
#: with an offset are converted into it, so they compare with the export's naive times.
LOCAL_ZONE = "Asia/Shanghai"


def is_epoch_format(fmt: str) -> bool:
    """`epoch` / `epoch_ms`, optionally `:<IANA zone>` (seconds since 1970 UTC, shown as the
    zone's local time; without a zone, UTC)."""
    return fmt.split(":", 1)[0] in EPOCH_UNITS


def format_has_time(fmt: str | list[str]) -> bool:
    if isinstance(fmt, list):  # a list of formats: with a time if any of them has one
        return any(format_has_time(f) for f in fmt)
    return is_epoch_format(fmt) or any(d in fmt for d in ("%H", "%I", "%M", "%S", "%X", "%c"))


def parse_dates(text: pd.Series, fmt: str | list[str]) -> pd.Series:
    """Parse text with a strptime format or an epoch spec; unparseable -> NaT. A list of
    formats (a column legacy systems wrote several ways: `2006-4-24`, `2012/12/08 09:30`,
    `20240105`) is tried in order, each on what the ones before could not read; check
    refuses a list that could read one value two ways (day/month)."""
    if isinstance(fmt, list):
        out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns]")
        for f in fmt:
            todo = out.isna() & text.notna()
            if not todo.any():
                break
            out.loc[todo] = parse_dates(text[todo], f).astype("datetime64[ns]")
        return out
    if not is_epoch_format(fmt):
        if fmt == "excel":  # Excel serial days (1900 system, 1899-12-30 as day 0)
            num = pd.to_numeric(text, errors="coerce")
            num = num.where((num > 0) & (num < 2958466))
            return pd.to_datetime(num, unit="D", origin="1899-12-30", errors="coerce")
        if "%z" in fmt:
            # Times with their offset (`+08:00`, `Z`, mixed): the same instant in the
            # export's own clock (LOCAL_ZONE), as every naive time of the export is read.
            aware = pd.to_datetime(text, format=fmt, errors="coerce", utc=True)
            return aware.dt.tz_convert(LOCAL_ZONE).dt.tz_localize(None)
        return pd.to_datetime(text, format=fmt, errors="coerce")
    unit_name, _, zone = fmt.partition(":")
    num = pd.to_numeric(text, errors="coerce")
    whole = num.notna() & (num == num.round()) & (num.abs() < 2**53)
    num = num.where(whole)
    bound = 253402300799 * (1000 if unit_name == "epoch_ms" else 1)  # 9999-12-31
    num = num.where(num.abs() <= bound)
    parsed = pd.to_datetime(num, unit=EPOCH_UNITS[unit_name], utc=True, errors="coerce")
    if zone:
        parsed = parsed.dt.tz_convert(zone)
    return parsed.dt.tz_localize(None)
