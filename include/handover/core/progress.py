"""Progress lines for long tasks: rows done, rows per second and the time left.

An on-call engineer looking at a running extract or load wants to know whether it moves
and when it will end, without a dashboard. A task wraps its loop in ``Progress`` and
calls ``add(n)`` per batch; at most one line per interval reaches the task log::

    with Progress("extract payments", total=5_000_000, logger=log) as progress:
        for batch in reader:
            ...
            progress.add(batch.num_rows)

    extract payments: 1,200,000 of 5,000,000 rows (24.0%), 350,000 rows/s, about 0:00:11 left
    extract payments: done, 5,000,000 rows in 0:00:14 (351,200 rows/s)

Counts only: a progress line never carries a value from the data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

DEFAULT_EVERY = 30.0  # seconds between two lines


def format_duration(seconds: float) -> str:
    """H:MM:SS, rounded to the second (days are shown as hours)."""
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
    """Counts rows and logs progress at most every ``every`` seconds (and at the end)."""

    def __init__(
        self,
        what: str,
        total: int | None = None,
        *,
        every: float = DEFAULT_EVERY,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.what = what
        self.total = total
        self.every = every
        self.log = logger or logging.getLogger("handover")
        self.clock = clock
        self.rows = 0
        self.started = clock()
        self._last = self.started
        self.lines = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.finish()

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    @property
    def rate(self) -> float:
        """Rows per second since the start."""
        return self.rows / self.elapsed if self.elapsed > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds left at the average rate so far; None when unknown."""
        if self.total is None or self.rows <= 0 or self.elapsed <= 0:
            return None
        return max(self.total - self.rows, 0) / self.rate

    def add(self, rows: int) -> None:
        """Count ``rows`` more; log a line when the interval has passed."""
        self.rows += int(rows)
        now = self.clock()
        if now - self._last >= self.every:
            self._last = now
            self.lines += 1
            self.log.info(self.line())

    def line(self) -> str:
        done = f"{self.rows:,}"
        if self.total:
            done += f" of {self.total:,} rows ({100.0 * self.rows / self.total:.1f}%)"
        else:
            done += " rows"
        text = f"{self.what}: {done}, {self.rate:,.0f} rows/s"
        eta = self.eta()
        if eta is not None:
            text += f", about {format_duration(eta)} left"
        return text

    def finish(self) -> str:
        """Log (and return) the closing line: rows, time taken, average rate."""
        text = (
            f"{self.what}: done, {self.rows:,} rows in {format_duration(self.elapsed)} "
            f"({self.rate:,.0f} rows/s)"
        )
        self.lines += 1
        self.log.info(text)
        return text
