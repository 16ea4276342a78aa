"""Great Expectations gates: suites, the GX context, running, Data Docs and their pinned assets.

Where each part lives: ``suites`` (suite files, ``load_suite``, ``read_columns``), ``context``
(the process's GX context and the patches that make it fast), ``validate`` (``run_gate``),
``results`` (``GateResult`` and the scrubbing of data values), ``docs`` (the Data Docs site,
``build_docs_index``), ``docs_assets`` (the pinned third-party files the pages load).

The names below are re-exported for callers outside the library (tests, scripts); library
modules import each from the module that defines it. Nothing here imports Great Expectations.
"""

from handover.core.errors import SuiteError
from handover.gates.context import _get_context as _get_context
from handover.gates.context import store_dir_for
from handover.gates.docs import build_docs_index, validation_page_path
from handover.gates.results import FailedExpectation, GateResult
from handover.gates.results import _redact as _redact
from handover.gates.suites import load_suite, read_columns
from handover.gates.validate import RESULT_FORMAT, run_gate
from handover.gates.validate import _gx_frame as _gx_frame

# The three private names above (``_get_context``, ``_redact``, ``_gx_frame``) are internals
# the unit tests exercise; they are not part of the public API.
__all__ = [
    "RESULT_FORMAT",
    "FailedExpectation",
    "GateResult",
    "SuiteError",
    "build_docs_index",
    "load_suite",
    "read_columns",
    "run_gate",
    "store_dir_for",
    "validation_page_path",
]
