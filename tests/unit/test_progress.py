"""Progress lines: rows done, rate and time left, at most once per interval."""

from __future__ import annotations

import logging

from handover.core.progress import Progress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_format_duration():
    assert format_duration(0) == "0:00:00"
    assert format_duration(61.4) == "0:01:01"
    assert format_duration(3 * 3600 + 5) == "3:00:05"
    assert format_duration(-3) == "0:00:00"


def test_logs_rows_rate_and_eta_at_intervals(caplog):
    clock = FakeClock()
    progress = Progress(
        "extract payments",
        total=1_000,
        every=10,
        clock=clock,
        logger=logging.getLogger("test.progress"),
    )
    with caplog.at_level(logging.INFO, logger="test.progress"):
        clock.now += 5
        progress.add(100)  # 5 s in: before the interval, quiet
        clock.now += 5
        progress.add(100)  # 10 s in: 200 rows, 20 rows/s, 800 left = 40 s
        clock.now += 1
        progress.add(20)  # 11 s in: quiet again
    lines = [r.getMessage() for r in caplog.records]

    assert lines == ["extract payments: 200 of 1,000 rows (20.0%), 20 rows/s, about 0:00:40 left"]
    assert progress.rows == 220


def test_unknown_total_has_no_eta():
    clock = FakeClock()
    progress = Progress("load calls p01", every=1, clock=clock)
    clock.now += 2
    progress.add(4_000)

    assert progress.eta() is None
    assert progress.line() == "load calls p01: 4,000 rows, 2,000 rows/s"


def test_context_manager_logs_closing_line(caplog):
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="test.progress"):
        with Progress(
            "cleanse subscribers p00",
            total=50,
            clock=clock,
            logger=logging.getLogger("test.progress"),
        ) as progress:
            clock.now += 125
            progress.add(50)
    assert caplog.records[-1].getMessage() == (
        "cleanse subscribers p00: done, 50 rows in 0:02:05 (0 rows/s)"
    )


def test_eta_never_negative_when_total_exceeded():
    clock = FakeClock()
    progress = Progress("x", total=10, clock=clock)
    clock.now += 1
    progress.add(15)

    assert progress.eta() == 0
