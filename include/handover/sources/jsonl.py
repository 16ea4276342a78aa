"""JSON lines: one JSON object a line, as newer subsystems export."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pyarrow as pa

from handover.core.errors import SourceReadError
from handover.sources.base import _shown
from handover.sources.lines import _LineSource


class JsonLinesSource(_LineSource):
    """One JSON object a line (newer subsystems' exports). Values become text as the other
    readers give them (numbers as written, true/false, nested values as JSON); a key the
    catalog does not list stops the read, naming it (nothing is dropped silently)."""

    def batches(self) -> Iterator[pa.RecordBatch]:
        import json

        known = set(self.columns)
        rows: list[list[str | None]] = []
        first = row = 0
        for n, line in self._lines():
            row += 1
            try:
                obj = json.loads(line)
            except ValueError as exc:
                err = cast("json.JSONDecodeError", exc)  # what json.loads raises for bad text
                raise SourceReadError(
                    f"{self.path} row {row} (line {n}): not a JSON object "
                    f"({err.msg} at column {err.colno}); fix the export"
                ) from None
            if not isinstance(obj, dict):
                raise SourceReadError(
                    f"{self.path} row {row} (line {n}): a JSON "
                    f"{type(obj).__name__}, not an object; fix the export"
                )
            extra = [k for k in obj if k not in known]
            if extra:
                raise SourceReadError(
                    f"{self.path} row {row} (line {n}): key '{_shown(extra[0])}' is not a "
                    f"column of catalog table {self.table}; add it to catalog.yaml (or mark it "
                    "migrate: false)"
                )
            if not rows:
                first = row
            rows.append([_json_text(obj.get(c)) for c in self.columns])
            if len(rows) >= self.batch_rows:
                yield self._batch(rows, first)
                rows = []
        if rows:
            yield self._batch(rows, first)


def _json_text(value: Any) -> str | None:
    import json

    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
