"""The gated chain's steps as data, and the chain run in one process.

``ChainSteps`` names what a flow runs at each step. The DAGs hand theirs
(``flows.steps.MIGRATION``, ``flows.steps.NIGHT``) to ``ops.chain.gated_chain``, which
wires them as tasks; the in-process runners (``flows.runner.run_migration``,
``flows.nightly.run_night``) hand theirs to :func:`run_chain`. Both follow the one order:

    intake gate → comply → compliance gate → resolve customers → cleanse →
    quality gate → map + protect → contract gate → load
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from handover.core.contracts import Partition, RunContext

PartStep = Callable[[RunContext, Partition], Partition]
GateStep = Callable[[RunContext, Partition, str], Partition]


@dataclass(frozen=True)
class ChainSteps:
    """What a flow runs at each step of the gated chain (functions, by reference)."""

    gate: GateStep
    comply: PartStep
    resolve_customers: Callable[[RunContext], Any]
    cleanse: PartStep
    map_protect: PartStep
    load: PartStep


class Timer:
    """Calls a step, adding its seconds to ``timings[name]`` (the in-process runners)."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    def __call__(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        out = fn(*args, **kwargs)
        self.timings[name] = self.timings.get(name, 0.0) + time.monotonic() - started
        return out


def run_chain(
    ctx: RunContext, parts: list[Partition], chain: ChainSteps, timed: Timer
) -> list[Partition]:
    """The gated chain in one process, in the order ``ops.chain.gated_chain`` wires it as
    tasks: intake gate, comply, compliance gate, resolve customers, cleanse, quality gate,
    map + protect, contract gate, load. Returns the load's manifests."""
    parts = [timed("gate_intake", chain.gate, ctx, p, "intake") for p in parts]
    parts = [timed("comply", chain.comply, ctx, p) for p in parts]
    parts = [timed("gate_compliance", chain.gate, ctx, p, "compliance") for p in parts]
    timed("resolve", chain.resolve_customers, ctx)
    parts = [timed("cleanse", chain.cleanse, ctx, p) for p in parts]
    parts = [timed("gate_quality", chain.gate, ctx, p, "quality") for p in parts]
    parts = [timed("map_protect", chain.map_protect, ctx, p) for p in parts]
    parts = [timed("gate_contract", chain.gate, ctx, p, "contract") for p in parts]
    return [timed("load", chain.load, ctx, p) for p in parts]
