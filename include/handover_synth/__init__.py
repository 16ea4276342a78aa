"""Synthetic legacy exports with answer keys, for the demo, the tests and the bench.

Never imported by a run: the runtime package is `handover`. One module a dialect or use:
`legacy_bss` (the demo operator), `telco_b`, `telco_c` (two other dialects), `changes`
(nightly change sets), `acquirer` (a target that already holds customers of its own).
"""
