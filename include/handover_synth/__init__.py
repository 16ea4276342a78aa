"""Synthetic legacy exports with answer keys, for the demo, the tests and the bench.

Never imported by a run: the runtime package is `handover`. One module a dialect or use:
`legacy_bss` (the demo operator), `telco_b`, `telco_c` (two other dialects), `changes`
(nightly change sets), `acquirer` (a target that already holds customers of its own).
Each is the entry point (`python -m handover_synth.<name>`) and the public API; the larger
ones keep their parts in sibling modules named after them (`legacy_bss_spec`,
`legacy_bss_people`, `telco_c_text`, `changes_player`, ...), each saying what it holds.
"""
