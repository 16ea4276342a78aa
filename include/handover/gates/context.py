"""The process's Great Expectations context and the patches that make it fast.

One ephemeral context per Data Docs site (or none), its pandas data source and batch
definitions; the process-wide tuning of the pinned GX (no batch hashing, one jinja2 bytecode
cache, Data Docs builds that render only what is asked and copy static assets once). The lock
here guards every GX call of the gates.

Great Expectations takes seconds to import, so it is imported inside the functions that need
it: importing this module (e.g. from a DAG file the scheduler parses) stays cheap.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from great_expectations.data_context.data_context.abstract_data_context import (
        AbstractDataContext,
    )
    from great_expectations.datasource.fluent.pandas_datasource import PandasDatasource

_DATASOURCE = "handover"
_SITE_NAME = "handover_quality"

_lock = threading.RLock()
_contexts: dict[Path | None, AbstractDataContext] = {}


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

    def __init__(self, store: Any, keys: list[Any]) -> None:
        self._store, self._keys = store, keys

    def list_keys(self) -> list[Any]:
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


def _quiet_gx_logging() -> None:
    """Keep GX's INFO chatter (dozens of lines on import alone) out of task logs, unless
    someone configured its logger. Must run before GX is first imported."""
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:
        gx_logger.setLevel(logging.WARNING)


def _batch_definition(context: AbstractDataContext, table: str) -> Any:
    """The whole-dataframe batch definition of ``table``'s asset, added on first use."""
    # Added as a pandas data source by _get_context; GX types the lookup as any data source.
    datasource = cast("PandasDatasource", context.data_sources.get(_DATASOURCE))
    try:
        asset = datasource.get_asset(table)
    except LookupError:
        asset = datasource.add_dataframe_asset(name=table)
    try:
        return asset.get_batch_definition(table)
    except KeyError:
        return asset.add_batch_definition_whole_dataframe(table)
