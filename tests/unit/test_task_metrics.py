"""The per-task peak-RSS probe the benchmark reads (handover.ops.tasks)."""

from __future__ import annotations

from handover.ops.tasks import peak_rss_mb, reset_peak_rss


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


def _rss_mb() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) // 1024 for line in fh if line.startswith("VmRSS:"))


def test_release_memory_hands_freed_arrow_and_heap_memory_back() -> None:
    import numpy as np
    import pyarrow as pa

    from handover.ops.tasks import release_memory

    release_memory()
    base = _rss_mb()
    numbers = pa.array(np.arange(20_000_000))
    words = [str(i) * 3 for i in range(1_000_000)]
    grown = _rss_mb()
    del numbers, words
    release_memory()
    after = _rss_mb()
    assert grown - base >= 150, (base, grown)
    assert after - base < (grown - base) / 2, (base, grown, after)
