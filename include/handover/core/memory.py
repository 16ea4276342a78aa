"""How Arrow's memory pool gives memory back: tuned once, when the flows are imported."""

from __future__ import annotations

import os

import pyarrow as pa


def tune_arrow_pool() -> None:
    """Make jemalloc return freed pages at once (or after HANDOVER_ARROW_DECAY_MS).

    jemalloc (Arrow's pool, see handover/__init__.py) keeps pages a task freed for a while
    before it gives them back; a stage frees and allocates a partition's worth of buffers
    several times within a second, so the pages kept piled up on the task's peak. Returned at
    once, the peaks of the partition-bound tasks at 10 M call records fell by 16-93 MB
    (docs/performance.md). HANDOVER_ARROW_DECAY_MS sets another delay.
    """
    decay_ms = int(os.environ.get("HANDOVER_ARROW_DECAY_MS", "0"))
    if pa.default_memory_pool().backend_name == "jemalloc":
        pa.jemalloc_set_decay_ms(decay_ms)
