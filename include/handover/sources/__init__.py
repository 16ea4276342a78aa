"""Source readers: every shape a legacy export comes in, as Arrow record batches of text.

Extract is the only stage that knows how a legacy system stored its data. A catalog
table's optional ``source:`` block says how (delimited text in any of the encodings
Chinese BSS exports use, Parquet, JSON lines, fixed width, Excel, or a SQL database
reached through an Airflow connection); this package turns each into the same stream:
record batches whose data columns are all ``pa.string()`` plus the 1-based
``_source_row`` (int64) that every later stage uses to point at a row without showing its
values. Typing is cleansing's job, so nothing here guesses types, and memory stays bounded
whatever the size of the source.

One reader per module: ``delimited`` (with ``delimited_streams`` and
``delimited_diagnosis``), ``fixed_width``, ``jsonl`` (both on ``lines``), ``parquet``,
``excel``, ``sql``, ``multi_file`` (a table exported as several files); ``base`` holds
the interface, ``open`` picks the reader for a catalog table, ``folder`` checks the export
folder before a run.

Errors are one line naming the file (or connection) and, where there is one, the row.
This package's names are re-exported here for callers outside the library (tests,
scripts); modules of the library import from the defining module.
"""

from handover.core.errors import SourceReadError
from handover.sources.base import DEFAULT_CHUNK_ROWS, ENCODINGS, ROW_COLUMN, TableSource
from handover.sources.delimited import DelimitedSource
from handover.sources.excel import XlsxSource
from handover.sources.fixed_width import FixedWidthSource
from handover.sources.folder import check_export_files, source_location, source_paths
from handover.sources.jsonl import JsonLinesSource
from handover.sources.multi_file import MultiFileSource
from handover.sources.open import FORMATS, head, open_source
from handover.sources.parquet import ParquetSource
from handover.sources.sql import SqlSource

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "ENCODINGS",
    "FORMATS",
    "ROW_COLUMN",
    "DelimitedSource",
    "FixedWidthSource",
    "JsonLinesSource",
    "MultiFileSource",
    "ParquetSource",
    "SourceReadError",
    "SqlSource",
    "TableSource",
    "XlsxSource",
    "check_export_files",
    "head",
    "open_source",
    "source_location",
    "source_paths",
]
