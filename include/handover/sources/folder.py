"""The export folder: which files a catalog table reads, and the check before a run that
every file a table reads exists and no export file is left unread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from handover.config.model import resolve_source
from handover.core.errors import SourceReadError
from handover.sources.sql import _sql_location


def source_location(table: str, table_spec: dict[str, Any], source_dir: str | Path) -> str:
    """Where a table comes from, for messages: the file path (or glob) or the connection."""
    spec = resolve_source(table, table_spec)
    if spec["format"] == "sql":
        return _sql_location(spec)
    return str(Path(source_dir) / (spec.get("files") or spec["file"]))


def source_paths(table: str, table_spec: dict[str, Any], source_dir: str | Path) -> list[Path]:
    """The files a table reads: its `file` (whether or not it exists), or every file its
    `files` glob matches, in sorted name order; none for a sql source."""
    spec = resolve_source(table, table_spec)
    if spec["format"] == "sql":
        return []
    folder = Path(source_dir)
    if spec.get("files"):
        return sorted(
            (p for p in folder.glob(spec["files"]) if p.is_file()),
            key=lambda p: p.relative_to(folder).as_posix(),
        )
    return [folder / spec["file"]]


# Files an export folder may hold besides its tables: synth's answer key (written next to
# the export, not part of it; docs/source-contract.md). Manifests are not export files.
NOT_TABLE_FILES = {"truth.csv", "export_manifest.json"}
# What an export file looks like, for a file no table reads and the manifest does not list.
EXPORT_SUFFIXES = {
    ".csv",
    ".tsv",
    ".txt",
    ".dat",
    ".psv",
    ".del",
    ".unl",
    ".parquet",
    ".pq",
    ".gz",
    ".zip",
    ".bz2",
    ".xz",
    ".zst",
    ".7z",
}


def check_export_files(
    tables: dict[str, dict[str, Any]],
    source_dir: str | Path,
    manifest: dict[str, Any] | None,
    *,
    catalog: str | Path = "catalog.yaml",
    ignore: list[str] | tuple[str, ...] = (),
) -> None:
    """Before a run: every file a catalog table reads exists, and no export file is left
    unread (a table exported as two files must not lose the second: declare the table with
    a `files:` glob). A file counts as an export file when the manifest lists it under a
    catalogued table, or when it looks like one (EXPORT_SUFFIXES) and the manifest does not
    list it at all; files the manifest lists under a table this system does not migrate are
    left alone; so are files matching a catalog `ignore:` glob (a data dictionary); any
    other file, data-like or not, stops the run. Raises SourceReadError, one line naming
    the file and the fix."""
    src = Path(source_dir)
    read = _files_read(tables, src, catalog)
    listed = _manifest_files(manifest, src)
    unread = _unread_files(src, read, listed, ignore)
    unread += [(f, t) for f, t in listed.items() if t in tables and f not in read and f.is_file()]
    if unread:
        _raise_unread(unread, catalog)


def _files_read(tables: dict[str, dict[str, Any]], src: Path, catalog: str | Path) -> set[Path]:
    """Every file the catalog's tables read (resolved); raises when one is missing."""
    read: set[Path] = set()
    for table, spec in tables.items():
        source = resolve_source(table, spec)
        if source["format"] == "sql":  # read through its connection at extract
            continue
        paths = source_paths(table, spec, src)
        if source.get("files") and not paths:
            raise SourceReadError(
                f"{src / source['files']}: no file matches source.files of "
                f"table {table}; export it or fix {catalog}"
            )
        for f in paths:
            if not f.is_file():
                raise SourceReadError(
                    f"{f}: source file for table {table} not found; export "
                    f"it or remove {table} from {catalog}"
                )
            read.add(f.resolve())
    return read


def _manifest_files(manifest: dict[str, Any] | None, src: Path) -> dict[Path, str]:
    """file (resolved) -> the table the export manifest lists it under."""
    listed: dict[Path, str] = {}
    entries = manifest.get("tables") if isinstance(manifest, dict) else None
    for table, entry in (entries if isinstance(entries, dict) else {}).items():
        if not isinstance(entry, dict):
            continue
        files = entry.get("files")
        names: list[Any] = files if isinstance(files, list) else []
        for name in [entry.get("file"), *names]:
            if isinstance(name, str) and name:
                listed[(src / name).resolve()] = table
    return listed


def _unread_files(
    src: Path, read: set[Path], listed: dict[Path, str], ignore: list[str] | tuple[str, ...]
) -> list[tuple[Path, str | None]]:
    """Files of the folder no table reads, the manifest does not list and no `ignore:`
    glob declares (dot files and NOT_TABLE_FILES aside)."""
    import fnmatch

    unread: list[tuple[Path, str | None]] = []
    for f in sorted(src.iterdir()) if src.is_dir() else []:
        path = f.resolve()
        if f.name.startswith(".") or path in read or path in listed or not f.is_file():
            continue
        if any(fnmatch.fnmatch(f.name, pattern) for pattern in ignore):
            continue
        if f.name not in NOT_TABLE_FILES:
            unread.append((f, None))
    return unread


def _raise_unread(unread: list[tuple[Path, str | None]], catalog: str | Path) -> None:
    """One line for the first unread file (by path), counting the others."""
    f, table = min(unread, key=lambda u: str(u[0]))
    more = f" (and {len(unread) - 1} more)" if len(unread) > 1 else ""
    if table is None:
        raise SourceReadError(
            f"{f}: export file read by no table of {catalog}{more}; name it "
            "in a table's source (file, or a files: glob), or, if it is not "
            f"data (a data dictionary, a README), declare it under ignore: "
            f"['{f.name}'] in {catalog}"
        )
    raise SourceReadError(
        f"{f}: the export manifest lists it under table {table}, which does "
        f"not read it{more}; read all of the table's files with a glob such "
        f"as tables.{table}.source.files: '{table}*{f.suffix}' in {catalog}"
    )
