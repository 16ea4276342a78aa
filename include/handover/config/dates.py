"""Date formats as the configuration writes them (strptime formats, `epoch[_ms][:<zone>]`,
`excel`): whether one is usable, whether two read one value two ways, and a `not_before`
bound as an ISO day."""

from __future__ import annotations

import re
from typing import Any

from handover.config.schemas import DATE_DIRECTIVES


def ambiguous_formats(formats: list[str]) -> tuple[str, str] | None:
    """Two formats of a list that read the same text two ways: equal once day and month
    directives are swapped (`%d/%m/%Y` and `%m/%d/%Y`)."""
    swap = {"%d": "%m", "%m": "%d"}
    for i, a in enumerate(formats):
        flipped = re.sub(r"%[dm]", lambda m: swap[m.group(0)], a)
        for b in formats[i + 1 :]:
            if flipped == b and flipped != a:
                return a, b
    return None


def check_date_format(fmt: str) -> str | None:
    """Why a date format is unusable, or None. strptime formats or epoch[_ms][:<IANA zone>]."""
    if fmt == "excel":
        return None
    head, _, zone = fmt.partition(":")
    if head in ("epoch", "epoch_ms"):
        if zone:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                return (
                    f"unknown time zone '{zone}' in '{fmt}' (use an IANA name, e.g. Asia/Shanghai)"
                )
        return None
    directives = re.findall(r"%(.)", fmt)
    if not directives:
        return (
            f"'{fmt}' has no %-directives; use a strptime format such as '%Y%m%d' "
            "or 'epoch' / 'epoch_ms' (optionally ':Asia/Shanghai')"
        )
    unknown = [d for d in directives if d not in DATE_DIRECTIVES]
    if unknown:
        return f"unknown date directive '%{unknown[0]}' in '{fmt}'"
    return None


def iso_day(value: Any) -> str | None:
    """A `not_before` value as 'YYYY-MM-DD', or None when it is not a real date."""
    import datetime as dt

    if isinstance(value, dt.datetime):
        return None  # a date, not a time
    if isinstance(value, dt.date):
        return value.isoformat()
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return None
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        return None
