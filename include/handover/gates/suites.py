"""Quality gates: run one Great Expectations suite on one partition's DataFrame at task time.

A gate is a named checkpoint in the pipeline (e.g. ``quality`` after cleansing); a suite is the
set of expectations for one table at one gate, kept as GX 1.x JSON in
``<suites_dir>/<gate>/<table>.json``. ``run_gate`` validates a partition against it and
returns a small :class:`GateResult` that the task can log, put in the run manifest and use to
fail the task.

The data holds PII (names, ID numbers, MSISDNs), so nothing that leaves this module may carry a
cell value:

* GX is asked for counts only (``BASIC`` with ``partial_unexpected_count=0`` and
  ``exclude_unexpected_values``), so unexpected values are never even collected;
* every result is then scrubbed before it is stored or rendered (observed values are kept only
  for expectations whose observation is a count, a proportion or a column name; exception
  messages are redacted and tracebacks withheld), because some expectations report
  observations such as a column's max or its distinct values, and errors quote the value
  they failed on.

Great Expectations takes seconds to import, so it is imported inside the functions that need
it: importing this module (e.g. from a DAG file the scheduler parses) stays cheap.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import json
import logging
import math
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handover.core.errors import SuiteError

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
    )
    from great_expectations.data_context import AbstractDataContext
    from great_expectations.data_context.types.resource_identifiers import (
        ValidationResultIdentifier,
    )

__all__ = [
    "FailedExpectation",
    "GateResult",
    "SuiteError",
    "build_docs_index",
    "load_suite",
    "run_gate",
    "store_dir_for",
    "validation_page_path",
]

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

#: Keys of an expectation's ``result`` that are counts or percentages, never values.
_COUNT_KEYS = frozenset(
    {
        "element_count",
        "unexpected_count",
        "unexpected_percent",
        "unexpected_percent_total",
        "unexpected_percent_nonmissing",
        "missing_count",
        "missing_percent",
    }
)

#: Expectations whose ``observed_value`` (and ``details``) is a count, a proportion or a list of
#: column names. Any other observation (min, max, median, distinct values, ...) may be a cell
#: value and is withheld.
_SAFE_OBSERVATIONS = frozenset(
    {
        "expect_table_row_count_to_be_between",
        "expect_table_row_count_to_equal",
        "expect_table_column_count_to_be_between",
        "expect_table_column_count_to_equal",
        "expect_table_columns_to_match_set",
        "expect_table_columns_to_match_ordered_list",
        "expect_column_to_exist",
        "expect_column_unique_value_count_to_be_between",
        "expect_column_proportion_of_unique_values_to_be_between",
        "expect_column_proportion_of_non_null_values_to_be_between",
    }
)

#: Expectation kwargs that say nothing about the rule itself.
_NOISE_KWARGS = frozenset(
    {"batch_id", "column", "result_format", "catch_exceptions", "include_config"}
)

_SUITE_KEYS = frozenset({"name", "expectations", "meta", "notes", "id", "suite_parameters"})
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_DATASOURCE = "handover"
_SITE_NAME = "handover_quality"
_DETAIL_MAX = 160
_MESSAGE_MAX = 200
_SUMMARY_MAX_FAILURES = 3


@dataclass(frozen=True)
class FailedExpectation:
    """One failed expectation, described without any data values."""

    expectation: str
    column: str | None
    unexpected_count: int | None
    unexpected_percent: float | None
    detail: str

    def describe(self) -> str:
        """Say what failed in a few words, for log lines and task failure messages."""
        on = f" on {self.column}" if self.column else ""
        if self.unexpected_count is not None:
            n = self.unexpected_count
            rows = "1 row fails" if n == 1 else f"{n} rows fail"
            pct = ""
            if self.unexpected_percent is not None:
                pct = f" ({_fmt_percent(self.unexpected_percent)})"
            return f"{rows} {self.expectation}{on}{pct}"
        return f"{self.expectation}{on} failed ({self.detail})"


@dataclass(frozen=True)
class GateResult:
    """The outcome of one gate on one partition: small, JSON-safe and free of data values.

    ``docs_path`` is the validation's page in the Data Docs site, relative to the docs root, so
    a UI can link to it; it is None when no docs were asked for or they could not be written.
    """

    gate: str
    table: str
    partition: str
    success: bool
    evaluated: int
    failed: list[FailedExpectation] = field(default_factory=list)
    rows: int = 0
    docs_path: str | None = None

    def summary(self) -> str:
        """One line for the task log and the failure message."""
        head = f"{self.gate} gate"
        where = f"for {self.table} partition {self.partition}"
        if self.success:
            return f"{head} passed {where} ({self.evaluated} expectations, {self.rows} rows)"
        parts = [f.describe() for f in self.failed[:_SUMMARY_MAX_FAILURES]]
        if len(self.failed) > _SUMMARY_MAX_FAILURES:
            parts.append(f"and {len(self.failed) - _SUMMARY_MAX_FAILURES} more")
        if self.docs_path:
            parts.append(f"see {self.docs_path}")
        return f"{head} failed {where}: " + "; ".join(parts)

    def to_manifest(self) -> dict[str, Any]:
        """The result as a plain dict for the run manifest (JSON-safe, no data values)."""
        return {
            "gate": self.gate,
            "table": self.table,
            "partition": self.partition,
            "success": self.success,
            "evaluated": self.evaluated,
            "rows": self.rows,
            "failed": [asdict(f) for f in self.failed],
            "docs_path": self.docs_path,
        }


# --------------------------------------------------------------------------- suites


def load_suite(suites_dir: Path, gate: str, table: str) -> dict[str, Any]:
    """Read and check ``suites_dir/<gate>/<table>.json``; return it as a dict.

    The file is GX 1.x's own serialisation of an ExpectationSuite. Every expectation is built
    here, because ``gx.ExpectationSuite`` merely logs and *drops* an expectation it cannot
    build: a typo in a suite would otherwise silently weaken the gate.

    Raises:
        SuiteError: one line naming the file, when it is missing, is not JSON, is not a suite,
            or holds an unknown expectation type or invalid kwargs.
    """
    _check_name("gate", gate)
    _check_name("table", table)
    path = Path(suites_dir) / gate / f"{table}.json"
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise SuiteError(f"no suite for gate {gate!r} table {table!r}: {path} not found") from None
    except OSError as exc:
        raise SuiteError(f"cannot read suite {path}: {exc.strerror or exc}") from None
    # Checking every expectation costs ~65 ms (pydantic per expectation), once per partition
    # per gate; the checked file is kept per process until it changes on disk.
    stamp = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _lock:
        cached = _checked_suites.get(stamp)
    if cached is None:
        cached = _check_suite(path)
        with _lock:
            _checked_suites[stamp] = cached
    return copy.deepcopy(cached)


# Expectations that read the frame's column names or row count, never a value.
_SHAPE_ONLY = frozenset(
    {
        "expect_table_columns_to_match_set",
        "expect_table_columns_to_match_ordered_list",
        "expect_table_column_count_to_equal",
        "expect_table_column_count_to_be_between",
        "expect_table_row_count_to_equal",
        "expect_table_row_count_to_be_between",
        "expect_column_to_exist",
    }
)
_COLUMN_KWARGS = ("column", "column_A", "column_B", "column_list")


def read_columns(suite: dict[str, Any]) -> set[str] | None:
    """The columns whose values some expectation of `suite` reads; None when one might read
    any column (a table-level expectation this function does not know). A gate needs only
    these columns' data: the others matter to it by name alone."""
    needed: set[str] = set()
    for item in suite["expectations"]:
        kwargs = item.get("kwargs") or {}
        if item["type"] in _SHAPE_ONLY:
            continue
        named = [kwargs[k] for k in _COLUMN_KWARGS if k in kwargs]
        if not named:
            return None
        for value in named:
            if isinstance(value, str):
                needed.add(value)
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                needed.update(value)
            else:
                return None
    return needed


def _check_suite(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SuiteError(f"suite {path} vanished while being read") from None
    except OSError as exc:
        raise SuiteError(f"cannot read suite {path}: {exc.strerror or exc}") from None
    try:
        suite = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SuiteError(
            f"suite {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise SuiteError(f"suite {path} must be an object with an 'expectations' list")
    unknown = sorted(set(suite) - _SUITE_KEYS)
    if unknown:
        raise SuiteError(f"suite {path} has unknown keys: {', '.join(unknown)}")

    _quiet_gx_logging()
    from great_expectations.exceptions import GreatExpectationsError
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    for number, item in enumerate(suite["expectations"], start=1):
        where = f"suite {path} expectation #{number}"
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise SuiteError(f"{where} must be an object with a 'type' string")
        where += f" ({item['type']})"
        if not isinstance(item.get("kwargs", {}), dict):
            raise SuiteError(f"{where}: 'kwargs' must be an object")
        try:
            ExpectationConfiguration(**item).to_domain_obj()
        except TypeError as exc:  # unexpected top-level key in the expectation object
            raise SuiteError(f"{where}: {_one_line(str(exc))}") from None
        except GreatExpectationsError as exc:  # unknown type: "expect_foo not found"
            raise SuiteError(f"{where}: unknown expectation type ({_one_line(str(exc))})") from None
        except ValueError as exc:  # pydantic: missing or invalid kwargs
            raise SuiteError(f"{where}: {_pydantic_summary(exc)}") from None
    return suite


def _build_suite(suite_dict: dict[str, Any], name: str) -> ExpectationSuite:
    """Turn a checked suite dict into a gx.ExpectationSuite named ``<gate>.<table>``.

    The name in the file is ignored: the Data Docs layout (``validations/<gate>/<table>/...``)
    depends on the suite name, so it is derived from where the file lives. Ids are dropped so
    the same file always serialises the same way, whichever process stores it.
    """
    from great_expectations.core.expectation_suite import ExpectationSuite

    expectations = [
        {k: v for k, v in item.items() if k != "id"} for item in suite_dict["expectations"]
    ]
    return ExpectationSuite(
        name=name,
        expectations=expectations,
        suite_parameters=suite_dict.get("suite_parameters") or {},
        meta=dict(suite_dict.get("meta") or {}),
        notes=suite_dict.get("notes"),
    )


# --------------------------------------------------------------------------- context

_lock = threading.RLock()
_contexts: dict[Path | None, AbstractDataContext] = {}
_stored_suites: set[tuple[Path, str, str]] = set()
# Checked suite files, keyed by (resolved path, mtime_ns, size).
_checked_suites: dict[tuple[str, int, int], dict[str, Any]] = {}


def store_dir_for(docs_dir: Path) -> Path:
    """Where the scrubbed validation results behind a docs site are kept.

    A sibling of ``docs_dir`` (``<docs_dir>.gx``) rather than inside it: the site builder
    rebuilds its index from this store, and every process that writes into the same site
    must see the same store, so it cannot be in memory.
    """
    docs_dir = Path(docs_dir).resolve()
    return docs_dir.with_name(f"{docs_dir.name}.gx")


def _get_context(docs_dir: Path | None) -> AbstractDataContext:
    """Return this process's GX context for ``docs_dir``, creating it on first use.

    Ephemeral contexts only: a file context would write great_expectations.yml, and every
    data source added to it, which parallel task processes would race on. With docs, the
    expectations and validation-results stores are filesystem-backed (shared by every process
    writing into the site) and one local site is rooted at ``docs_dir``; without, everything
    stays in memory. Progress bars are off (they would flood task logs).
    """
    key = Path(docs_dir).resolve() if docs_dir is not None else None
    with _lock:
        context = _contexts.get(key)
        if context is not None:
            return context
        _quiet_gx_logging()

        import great_expectations as gx

        _tune_gx()
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        progress = ProgressBarsConfig(globally=False, metric_calculations=False)
        if key is None:
            config = DataContextConfig(
                store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
                analytics_enabled=False,
                progress_bars=progress,
            )
        else:
            store = store_dir_for(key)

            def files(subdir: str) -> dict[str, Any]:
                return {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(store / subdir),
                    "suppress_store_backend_id": True,
                }

            memory = {"class_name": "InMemoryStoreBackend"}
            config = DataContextConfig(
                stores={
                    "expectations_store": {
                        "class_name": "ExpectationsStore",
                        "store_backend": files("expectations"),
                    },
                    "validation_results_store": {
                        "class_name": "ValidationResultsStore",
                        "store_backend": files("validations"),
                    },
                    "checkpoint_store": {"class_name": "CheckpointStore", "store_backend": memory},
                    "validation_definition_store": {
                        "class_name": "ValidationDefinitionStore",
                        "store_backend": dict(memory),
                    },
                },
                expectations_store_name="expectations_store",
                validation_results_store_name="validation_results_store",
                checkpoint_store_name="checkpoint_store",
                data_docs_sites={
                    _SITE_NAME: {
                        "class_name": "SiteBuilder",
                        "show_how_to_buttons": False,
                        "store_backend": {
                            "class_name": "TupleFilesystemStoreBackend",
                            "base_directory": str(key),
                        },
                        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                    }
                },
                analytics_enabled=False,
                progress_bars=progress,
            )
        context = gx.get_context(project_config=config, mode="ephemeral")
        context.data_sources.add_pandas(_DATASOURCE)
        _contexts[key] = context
        return context


class _TemplateCodeCache:
    """A process-wide jinja2 bytecode cache for GX's Data Docs views.

    GX builds a new jinja2 ``Environment`` for every view it renders, so every page compiled
    the same ten templates again: at 1 M rows that was 11 of the gates' 28 seconds. The
    compiled code objects are kept here (keyed by template name and source checksum, as
    jinja2 does for its file cache) and reused by every environment in the process.
    """

    def __init__(self) -> None:
        import jinja2

        class Cache(jinja2.BytecodeCache):
            def __init__(self) -> None:
                self.code: dict[tuple[str, str], Any] = {}

            def load_bytecode(self, bucket: Any) -> None:
                bucket.code = self.code.get((bucket.key, bucket.checksum))

            def dump_bytecode(self, bucket: Any) -> None:
                self.code[(bucket.key, bucket.checksum)] = bucket.code

        self.cache = Cache()


def _tune_gx() -> None:
    """Take two fixed costs out of every gate, once per process (idempotent).

    - GX fingerprints every pandas batch with ``pd.util.hash_pandas_object`` (md5 of every
      row), used only as a batch marker we never read: ~5 s per 1 M rows. The module's
      ``HASH_THRESHOLD`` (frames smaller than it are hashed) is set to 0.
    - Data Docs pages recompile their jinja2 templates for every view: a shared bytecode
      cache (:class:`_TemplateCodeCache`) compiles each template once per process.
    Both are module-level settings of the pinned GX version (see requirements.txt); if a
    GX upgrade moves them, gates still work, only slower (checked in tests/unit/test_gates.py).
    """
    global _tuned
    if _tuned:
        return
    from great_expectations.execution_engine import pandas_execution_engine
    from great_expectations.render.view.view import DefaultJinjaView

    pandas_execution_engine.HASH_THRESHOLD = 0
    cache = _TemplateCodeCache().cache
    original_init = DefaultJinjaView.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.env.bytecode_cache = cache

    # Patching the class is the only hook: GX builds its views internally, with no option
    # to pass an environment; test_gx_tuning_takes_hold_and_pages_still_render checks it.
    DefaultJinjaView.__init__ = init  # type: ignore[method-assign]  # deliberate patch: GX offers no hook to pass a Jinja env
    _render_only_what_is_asked()
    _tuned = True


class _ListedStore:
    """A store whose key listing is the given keys: everything else is the real store's."""

    def __init__(self, store: Any, keys: list) -> None:
        self._store, self._keys = store, keys

    def list_keys(self) -> list:
        return list(self._keys)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _render_only_what_is_asked() -> None:
    """Two costs of a Data Docs build for one page that grow with the whole site.

    - A site section asked for given resources still lists every key of its store (every
      validation of the run, read from disk) only to skip the others: a gate's page cost
      grew with the number of partitions validated before it. Asked for resources, the
      section now lists just those that exist (same pages, same order of work).
    - The static assets (styles, fonts, images) are copied on every build; they are copied
      once per site and process now, and again if the site's folder lost them.
    Same rules as the view patch above: class-level hooks of the pinned GX, checked by
    test_gx_tuning_takes_hold_and_pages_still_render.
    """
    from great_expectations.data_context.store.html_site_store import HtmlSiteStore
    from great_expectations.render.renderer.site_builder import DefaultSiteSectionBuilder

    original_build = DefaultSiteSectionBuilder.build

    def build(self: Any, resource_identifiers: Any = None) -> None:
        limited = self.name == "validations" and self.validation_results_limit
        if not resource_identifiers or limited:
            return original_build(self, resource_identifiers)
        store = self.source_store
        key_class = getattr(store, "key_class", None)
        wanted = [
            k
            for k in resource_identifiers
            if (key_class is None or isinstance(k, key_class)) and store.has_key(k)
        ]
        self.source_store = _ListedStore(store, wanted)
        try:
            return original_build(self, resource_identifiers)
        finally:
            self.source_store = store

    original_copy = HtmlSiteStore.copy_static_assets
    copied: set[str] = set()

    def copy_static_assets(self: Any, static_assets_source_dir: str | None = None) -> Any:
        backend = self.store_backends.get("static_assets")
        root = getattr(backend, "full_base_directory", None)
        if root is None or static_assets_source_dir is not None:
            return original_copy(self, static_assets_source_dir)
        marker = Path(root) / "static" / "styles"
        if root in copied and marker.is_dir():
            return None
        out = original_copy(self, static_assets_source_dir)
        copied.add(root)
        return out

    # GX builds its site builders and stores internally, with no option to pass our own:
    # patching the pinned classes is the only hook (the docstring says what each does);
    # test_gx_tuning_takes_hold_and_pages_still_render fails if an upgrade moves them.
    DefaultSiteSectionBuilder.build = build  # type: ignore[method-assign]  # deliberate patch: GX has no option to render only the asked resources
    HtmlSiteStore.copy_static_assets = copy_static_assets  # type: ignore[method-assign]  # deliberate patch: GX has no option to copy static assets once


_tuned = False


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


def _quiet_gx_logging() -> None:
    """Keep GX's INFO chatter (dozens of lines on import alone) out of task logs, unless
    someone configured its logger. Must run before GX is first imported."""
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:
        gx_logger.setLevel(logging.WARNING)


def _batch_definition(context: AbstractDataContext, table: str) -> Any:
    """The whole-dataframe batch definition of ``table``'s asset, added on first use."""
    datasource = context.data_sources.get(_DATASOURCE)
    try:
        asset = datasource.get_asset(table)
    except LookupError:
        asset = datasource.add_dataframe_asset(name=table)
    try:
        return asset.get_batch_definition(table)
    except KeyError:
        return asset.add_batch_definition_whole_dataframe(table)


# --------------------------------------------------------------------------- running


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


FAILED_MARKER = ".a-gate-failed"


@contextlib.contextmanager
def _site_lock(docs_dir: Path):
    """An exclusive lock on a run's Data Docs site across processes (mapped gate tasks
    write one site in parallel): store and index in turn, never interleaved."""
    import fcntl
    import os

    docs_dir.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(docs_dir.parent / f".{docs_dir.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


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
    result.meta["batch_spec"] = {**(result.meta.get("batch_spec") or {}), "data_asset_name": table}
    result.meta["batch_parameters"] = {
        "table": table,
        "partition": partition,
        "rows": rows,
        "run_id": run_id,
    }
    return run


def _scrub(result: ExpectationSuiteValidationResult, allowed: set[str]) -> None:
    """Remove anything that may be a cell value from ``result``, in place.

    ``allowed`` are strings known not to be data (the column names), kept when an error
    message quotes them.
    """
    for evr in result.results:
        config = evr.expectation_config
        kind = config.type if config is not None else ""
        raw = dict(evr.result or {})
        clean = {k: v for k, v in raw.items() if k in _COUNT_KEYS}
        if kind in _SAFE_OBSERVATIONS:
            for key in ("observed_value", "details"):
                if key in raw:
                    clean[key] = raw[key]
        evr.result = clean
        error = _first_error(evr.exception_info)
        if error is not None:
            evr.exception_info = {
                "raised_exception": True,
                "exception_message": _redact(error, allowed),
                "exception_traceback": _TRACEBACK_WITHHELD,
            }


def _first_error(info: dict[str, Any] | None) -> str | None:
    """The message of the first exception in ``exception_info``, or None if none was raised.

    GX uses two shapes: a flat ``{"raised_exception", "exception_message", ...}`` when the
    expectation itself failed, and ``{"<metric id>": {...flat...}}`` when a metric it needed
    could not be computed. Either way the result is flattened to the first shape (the one the
    Data Docs renderer reads first) with the message redacted and the traceback withheld.
    """
    if not info:
        return None
    candidates = [info] if "raised_exception" in info else list(info.values())
    for item in candidates:
        if isinstance(item, dict) and item.get("raised_exception"):
            return str(item.get("exception_message") or "error")
    return None


def _gate_result(
    result: ExpectationSuiteValidationResult,
    gate: str,
    table: str,
    partition: str,
    rows: int,
    docs_path: str | None,
) -> GateResult:
    failed = [_failed(evr) for evr in result.results if not evr.success]
    return GateResult(
        gate=gate,
        table=table,
        partition=partition,
        success=bool(result.success),
        evaluated=int(result.statistics.get("evaluated_expectations") or len(result.results)),
        failed=failed,
        rows=int(rows),
        docs_path=docs_path,
    )


def _failed(evr: Any) -> FailedExpectation:
    """Describe one failed (already scrubbed) expectation result."""
    config = evr.expectation_config
    kwargs = dict(config.kwargs) if config is not None else {}
    res = evr.result or {}
    column = kwargs.get("column")
    count = _as_int(res.get("unexpected_count"))
    mismatched = (res.get("details") or {}).get("mismatched")
    if isinstance(mismatched, dict):  # column set/list: name the columns, not the whole list
        parts = [f"{k}: {', '.join(map(str, v))}" for k, v in mismatched.items() if v]
        if not parts:
            parts = [f"order differs: {_short(mismatched)}"]
    else:
        parts = [f"{k}={_short(v)}" for k, v in kwargs.items() if k not in _NOISE_KWARGS]
        if count is not None and "mostly" not in kwargs:
            parts.append("mostly=1.0")
        if "observed_value" in res:
            parts.append(f"observed={_short(res['observed_value'])}")
    error = _first_error(evr.exception_info)
    if error is not None:
        parts.append(f"raised: {error}")
    detail = ", ".join(parts)
    if len(detail) > _DETAIL_MAX:
        detail = detail[: _DETAIL_MAX - 3] + "..."
    return FailedExpectation(
        expectation=config.type if config is not None else "unknown",
        column=str(column) if column is not None else None,
        unexpected_count=count,
        unexpected_percent=_as_percent(res.get("unexpected_percent")),
        detail=detail,
    )


# --------------------------------------------------------------------------- data docs


def _write_docs(
    context: AbstractDataContext,
    docs_dir: Path,
    suite: ExpectationSuite,
    result: ExpectationSuiteValidationResult,
    run: Any,
    partition: str,
    build_index: bool = True,
) -> str | None:
    """Store the scrubbed result and render its page, its suite's page and, if asked, the index.

    Only this validation and its suite are rendered (``resource_identifiers``). Rebuilding the
    index costs time in proportion to the whole site, so run_gate rebuilds it only when a gate
    fails (on-call sees the failure listed at once); the publish task builds it once per run.
    """
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    suite_key = ExpectationSuiteIdentifier(name=suite.name)
    key = ValidationResultIdentifier(
        expectation_suite_identifier=suite_key,
        run_id=run,
        batch_identifier=_slug(partition),
    )
    try:
        wrote = _store_suite(context, docs_dir, suite, suite_key)
        context.validation_results_store.set(key, result)
        # The suite's page changes only with the suite: render it when the suite was
        # (re)written or its page is missing, not once per partition.
        suite_page = docs_dir / "expectations" / (suite.name.replace(".", "/") + ".html")
        resources = [key, suite_key] if wrote or not suite_page.is_file() else [key]
        context.build_data_docs(
            site_names=[_SITE_NAME], resource_identifiers=resources, build_index=build_index
        )
    except Exception:  # docs are a convenience; the gate's verdict must still come back
        log.warning(
            "could not write Data Docs for %s under %s", suite.name, docs_dir, exc_info=True
        )
        return None
    path = validation_page_path(key)
    return path if (docs_dir / path).is_file() else None


def _store_suite(
    context: AbstractDataContext, docs_dir: Path, suite: ExpectationSuite, suite_key: Any
) -> bool:
    """Write the suite into the shared expectations store once per process and content;
    return whether it was written.

    Written straight through the store (not ``context.suites.add_or_update``, which reads the
    stored copy first and fails on a file another process is writing at that moment).
    """
    store = context.expectations_store
    body = store.serialize(suite)
    marker = (docs_dir.resolve(), suite.name, hashlib.sha256(body.encode()).hexdigest())
    if marker in _stored_suites and store.has_key(suite_key):
        return False
    store.set(suite_key, suite)
    _stored_suites.add(marker)
    return True


def validation_page_path(key: ValidationResultIdentifier) -> str:
    """Path of a validation's page relative to the docs root, as GX's HtmlSiteStore lays it
    out: ``validations/<gate>/<table>/<run name>/<run time>/<partition>.html``."""
    parts = [
        "validations",
        *key.expectation_suite_identifier.name.split("."),
        *key.run_id.to_tuple(),
        key.batch_identifier,
    ]
    return "/".join(parts) + ".html"


def build_docs_index(docs_dir: Path) -> Path:
    """Rebuild the site under ``docs_dir`` from its store and return its index.html.

    ``run_gate`` already keeps the index current, but parallel tasks can race on it (the
    last writer wins with what it saw); call this once after all gates of a run, e.g. in a
    final task, to get an index listing everything. It re-renders every page as well, which
    also repairs a page a crashed task left half-written.
    """
    docs_dir = Path(docs_dir)
    with _lock:
        context = _get_context(docs_dir)
        context.build_data_docs(site_names=[_SITE_NAME])
    return docs_dir.resolve() / "index.html"


# --------------------------------------------------------------------------- helpers


def _check_name(what: str, value: str) -> None:
    """Gate and table names become file and docs path components: keep them plain."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise SuiteError(f"invalid {what} name {value!r}: use letters, digits, '_' or '-'")


def _slug(value: str) -> str:
    """A path- and URL-safe key component (run ids carry ':' and '+', partitions might '/')."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", str(value)).strip("-")
    return slug or "none"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:_MESSAGE_MAX]


def _pydantic_summary(exc: Exception) -> str:
    """``column: field required; regex: field required`` from a pydantic error, else its text."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        seen: dict[str, str] = {}
        for err in errors():
            loc = ".".join(str(part) for part in err.get("loc", ())) or "kwargs"
            seen.setdefault(loc, str(err.get("msg", "invalid")))
        if seen:
            return _one_line("; ".join(f"{loc}: {msg}" for loc, msg in seen.items()))
    return _one_line(str(exc))


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
#: Quoted words an error may contain that are never data: operators and Python type names.
_SAFE_QUOTED = re.compile(
    r"^(?:[<>=!+*/%&|^~-]{1,3}|str|int|float|bool|bytes|NoneType|NAType|NaTType|list|dict|tuple"
    r"|set|Timestamp|Timedelta|datetime(?:\.date(?:time)?)?|date|Decimal|decimal\.Decimal)$"
)
_TRACEBACK_WITHHELD = "(traceback withheld: it may quote data values)"


def _redact(message: str, allowed: set[str]) -> str:
    """First line of an error message with anything that may be data blanked out.

    Errors quote the offending value ("could not convert string to float: '1381234567x'"),
    so quoted text that is not a column name, long digit runs and non-ASCII text (names and
    addresses here are Chinese) are replaced.
    """
    lines = message.strip().splitlines()
    line = lines[0] if lines else ""

    def keep(match: re.Match[str]) -> str:
        inner = match.group(0)[1:-1]
        return match.group(0) if inner in allowed or _SAFE_QUOTED.match(inner) else "<redacted>"

    line = _QUOTED.sub(keep, line)
    line = re.sub(r"[^\x00-\x7f]+", "<redacted>", line)
    line = re.sub(r"\d{3,}", "<redacted>", line)
    return line[:_MESSAGE_MAX]


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _as_percent(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return round(number, 4) if math.isfinite(number) else None


def _fmt_percent(value: float | None) -> str:
    if value is None:
        return "n/a"
    if 0 < value < 0.1:
        return "<0.1%"
    return f"{value:.1f}%"
