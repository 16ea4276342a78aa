"""What `handover check` found: problems (the check fails), notes (worth reading, not
failing) and the rows read per table."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CheckResult:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rows_read: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems
