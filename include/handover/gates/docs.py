"""The run's Data Docs site: scrubbed results stored and rendered, pages and the index.

Every process that writes into one site shares its filesystem store (``store_dir_for``) and
takes the site lock in turn; ``build_docs_index`` rebuilds the whole site once per run.

Great Expectations takes seconds to import, so it is imported inside the functions that need
it: importing this module (e.g. from a DAG file the scheduler parses) stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
    )
    from great_expectations.data_context.data_context.abstract_data_context import (
        AbstractDataContext,
    )
    from great_expectations.data_context.types.resource_identifiers import (
        ValidationResultIdentifier,
    )

from handover.gates.context import _SITE_NAME, _get_context, _lock

_stored_suites: set[tuple[Path, str, str]] = set()

log = logging.getLogger(__name__)

FAILED_MARKER = ".a-gate-failed"


@contextlib.contextmanager
def _site_lock(docs_dir: Path) -> Iterator[None]:
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
            site_names=[_SITE_NAME],
            resource_identifiers=resources,  # type: ignore[arg-type]  # GX renders a mixed list of validation and suite keys; its annotation names one kind
            build_index=build_index,
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
    body = store.serialize(suite)  # type: ignore[no-untyped-call]  # GX's ExpectationsStore.serialize is unannotated
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


def _slug(value: str) -> str:
    """A path- and URL-safe key component (run ids carry ':' and '+', partitions might '/')."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", str(value)).strip("-")
    return slug or "none"
