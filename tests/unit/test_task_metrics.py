"""The per-task peak-RSS probe the benchmark reads (handover.tasks)."""

from __future__ import annotations

from handover.tasks import peak_rss_mb, reset_peak_rss


def test_peak_rss_is_per_task_after_a_reset() -> None:
    assert reset_peak_rss(), "Linux offers /proc/self/clear_refs"
    base = peak_rss_mb()
    block = bytearray(200 << 20)  # touched: zero-filled by the allocator
    block[::4096] = b"\x01" * len(block[::4096])
    high = peak_rss_mb()
    del block
    assert high is not None and base is not None
    assert high >= base + 150, (base, high)
    assert reset_peak_rss()
    after = peak_rss_mb()
    assert after is not None and after < high - 150, "the reset forgets the earlier task's peak"
