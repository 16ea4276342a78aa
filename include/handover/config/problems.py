"""How a configuration problem is written: `<file> line <n>: <dotted.field>: <message>`,
with the nearest valid name where there is one; and the shapes of the two reporters the
cross-checks hand to each check (`fail`: any problem; `need`: a column the catalog must
hold)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

# fail(file name, key path, message): report one problem at the line of the key path
Fail = Callable[[str, tuple[Any, ...], str], None]
# need(column, key path): report the column when the table's catalog entry lacks it
Need = Callable[[str, tuple[Any, ...]], None]


def nearest(word: Any, options: Iterable[Any]) -> str:
    """` (did you mean 'x'?)` for the closest valid name, or nothing."""
    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def where(path: Path, lines: dict[tuple[Any, ...], int], keys: tuple[Any, ...]) -> str:
    """`<file> line <n>` of a key path, or of its nearest ancestor the file has."""
    probe = tuple(keys)
    while probe and probe not in lines:
        probe = probe[:-1]
    return f"{path} line {lines.get(probe, 1)}"
