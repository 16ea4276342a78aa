"""Running a gate: one Great Expectations suite on one partition's DataFrame at task time.

``run_gate`` validates a partition against its suite and returns a small :class:`GateResult`
that the task can log, put in the run manifest and use to fail the task. GX is asked for counts
only (``BASIC`` with ``partial_unexpected_count=0`` and ``exclude_unexpected_values``), so
unexpected values are never even collected; the result is then scrubbed
(``handover.gates.results``) before it is stored or rendered.

Great Expectations takes seconds to import, so it is imported inside the functions that need
it: importing this module (e.g. from a DAG file the scheduler parses) stays cheap.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
    )

from handover.gates.context import _batch_definition, _get_context, _lock
from handover.gates.docs import FAILED_MARKER, _site_lock, _slug, _write_docs
from handover.gates.results import GateResult, _gate_result, _scrub
from handover.gates.suites import _build_suite, load_suite

log = logging.getLogger(__name__)

#: Counts and percentages only. ``partial_unexpected_count=0`` makes the pandas engine slice
#: the unexpected values to an empty list, ``exclude_unexpected_values`` keeps even that list
#: out of the result, and BASIC never asks for unexpected index lists or rows.
RESULT_FORMAT: dict[str, Any] = {
    "result_format": "BASIC",
    "partial_unexpected_count": 0,
    "include_unexpected_rows": False,
    "exclude_unexpected_values": True,
    "return_unexpected_index_query": False,
}


def run_gate(
    df: pd.DataFrame,
    *,
    gate: str,
    table: str,
    partition: str,
    run_id: str,
    suites_dir: Path,
    docs_dir: Path | None,
) -> GateResult:
    """Validate one partition against the gate's suite for ``table``.

    Returns the outcome; it does not raise on failure (the caller decides whether a failed
    gate fails the task). With ``docs_dir`` the scrubbed result is also stored and rendered
    into the Data Docs site there, whose index is rebuilt on every call so the site is always
    browsable; a docs error is logged and leaves ``docs_path`` None rather than masking the
    gate's outcome.

    Raises:
        SuiteError: the suite file is missing or invalid.
    """
    suite_dict = load_suite(Path(suites_dir), gate, table)
    suite_name = f"{gate}.{table}"
    with _lock:
        context = _get_context(docs_dir)
        suite = _build_suite(suite_dict, suite_name)
        batch = _batch_definition(context, table).get_batch(
            batch_parameters={"dataframe": _gx_frame(df)}
        )
        try:
            result = batch.validate(suite, result_format=dict(RESULT_FORMAT))
        finally:
            _release_batch(batch)
        _scrub(result, allowed={str(c) for c in df.columns})
        run = _stamp(result, run_id=run_id, table=table, partition=partition, rows=len(df))
        docs_path = None
        if docs_dir is not None:
            docs = Path(docs_dir)
            with _site_lock(docs):
                # Once a gate of the run has failed, every gate after it rebuilds the index
                # too (publish, which builds it on a green run, never runs on a red one):
                # one at a time across processes, each after its own result is stored, so
                # the last to finish lists them all.
                failed_before = (docs / FAILED_MARKER).exists()
                if not result.success:
                    docs.mkdir(parents=True, exist_ok=True)
                    (docs / FAILED_MARKER).touch()
                docs_path = _write_docs(
                    context,
                    docs,
                    suite,
                    result,
                    run,
                    partition,
                    build_index=not result.success or failed_before,
                )
    return _gate_result(result, gate, table, partition, len(df), docs_path)


def _gx_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The frame GX validates: nullable integer columns as float64 when that is exact.

    GX 1.24 vectorises ``expect_column_values_to_be_between`` only for numpy int/float
    columns and calls a Python function per value for pandas' nullable ``Int64`` (1.7 M
    calls per 1 M rows). float64 holds every integer up to 2**53 exactly and NaN counts as
    null for GX as ``<NA>`` does, so the checks see the same values; a column with larger
    magnitudes keeps its type (slower, still exact). Not copied when nothing changes.
    """
    import numpy as np
    import pandas as pd

    changed = {}
    for name, dtype in df.dtypes.items():
        if isinstance(dtype, np.dtype):
            continue  # numpy types: GX's vectorised path already
        col = df[name]
        if pd.api.types.is_float_dtype(dtype):
            changed[name] = col.astype("float64")
        elif pd.api.types.is_integer_dtype(dtype) and col.notna().any():
            if not col.isna().any():
                changed[name] = col.astype(dtype.numpy_dtype)
            elif col.abs().max() <= 2**53:
                changed[name] = col.astype("float64")
    return df.assign(**changed) if changed else df


def _release_batch(batch: Any) -> None:
    """Drop the engine's reference to the frame, so a long-lived worker does not keep the
    last partition of every table alive between gates."""
    try:
        manager = batch.data.execution_engine.batch_manager
        manager.batch_data_cache.pop(batch.id, None)
        manager.reset_batch_cache()
    except AttributeError:  # pragma: no cover - only hygiene; never fail a gate for it
        log.debug("could not release batch %s", batch.id)


def _stamp(
    result: ExpectationSuiteValidationResult,
    *,
    run_id: str,
    table: str,
    partition: str,
    rows: int,
) -> Any:
    """Add what ValidationDefinition.run would (run id, time), the table as the asset name and
    the partition, which the validation page shows under "Batch Parameters"; return the
    RunIdentifier."""
    from great_expectations.core.run_identifier import RunIdentifier

    run = RunIdentifier(run_name=_slug(run_id), run_time=dt.datetime.now(dt.UTC))
    result.meta["run_id"] = run
    result.meta["validation_time"] = run.run_time
    # The page header and the index read the asset name from batch_spec only.
    result.meta["batch_spec"] = {  # type: ignore[arg-type]  # a plain dict, as before: the renderers read it as a mapping
        **(result.meta.get("batch_spec") or {}),
        "data_asset_name": table,
    }
    result.meta["batch_parameters"] = {
        "table": table,
        "partition": partition,
        "rows": rows,
        "run_id": run_id,
    }
    return run
