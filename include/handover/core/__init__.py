"""The lowest layer: named failures (errors), the typed run and partition records (contracts), value rules (validators), paths and progress lines. Imports nothing from handover."""
