"""The lake's objects: the `Lake` interface (Parquet, JSON, bytes, atomic writes) and `LocalLake`.

Each stage writes `runs/<run_id>/<stage>/<table>/part-<partition>.parquet` plus its
quarantine and exclusions (keys from `handover.storage.layout`). Writes are atomic (a
temporary object then a rename or a single PUT), so a task killed mid-write never leaves a
partial partition that a rerun or the next stage could mistake for a complete one. The S3
lake is `handover.storage.s3`; `handover.storage.lake.lake_from_url` picks one.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# Stage outputs are written once and read back once or twice within a run, whole: LZ4
# without dictionaries or column statistics (nothing filters on them) writes a call-record
# partition in ~0.08-0.12 s against ~0.13-0.28 s for zstd with both, reads it as fast, for
# files ~1.5x larger (docs/performance.md). Backups, kept for years, stay zstd.
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "lz4",
    "use_dictionary": False,
    "write_statistics": False,
}


class Lake(ABC):
    """A key/value view of the lake with Parquet helpers; subclasses hold the storage.

    Every Parquet object it writes is encrypted (handover.storage.lake_crypto: Parquet modular
    encryption under a key per run and stage, wrapped by the keyring); readers open it
    through the lake and nothing else can."""

    url: str
    encrypt: bool = True  # False only in the bench's plain-Parquet comparison

    @property
    def keys(self):
        """The lake's scope keys (handover.storage.lake_crypto.StageKeys), made on first use."""
        from handover.storage.lake_crypto import StageKeys

        if getattr(self, "_stage_keys", None) is None:
            self._stage_keys = StageKeys(self)
        return self._stage_keys

    def parquet_options(self, key: str) -> dict[str, Any]:
        """Writer options for the Parquet object `key`: PARQUET_OPTIONS, and the encryption
        properties of its scope (a fresh set of file keys each call)."""
        from handover.storage.lake_crypto import scope_of

        scope = scope_of(key) if self.encrypt else None
        if scope is None:
            return dict(PARQUET_OPTIONS)
        return {**PARQUET_OPTIONS, "encryption_properties": self.keys.encryption(scope)}

    def _open_parquet(self, source: Any, encrypted: bool) -> pq.ParquetFile:
        if not encrypted:
            return pq.ParquetFile(source)
        return pq.ParquetFile(source, decryption_properties=self.keys.decryption())

    def _check_sealed(self, key: str, tail: bytes) -> None:
        """A Parquet object of a scope that arrives as a ready file (put_file) must already
        be encrypted: nothing reaches the lake in clear by the back door."""
        from handover.storage.lake_crypto import is_encrypted_tail, scope_of

        if self.encrypt and scope_of(key) is not None and not is_encrypted_tail(tail):
            raise ValueError(
                f"lake object {key}: a stage Parquet file must be written with "
                "lake.parquet_options(key) (encrypted); it was plain Parquet"
            )

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write `data` at `key` only if no object is there; True if this call wrote it."""

    # -- storage primitives -------------------------------------------------
    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file (a partition written to disk first); big files stream."""
        data = Path(path).read_bytes()
        self._check_sealed(key, data[-4:])
        self.put_bytes(key, data)

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int: ...

    def uri(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

    # -- helpers -------------------------------------------------------------
    def write_table(self, key: str, table: pa.Table) -> dict[str, Any]:
        # Through a local file, not a buffer: the Parquet bytes of a partition never sit in
        # memory beside the table (put_file streams them up).
        with tempfile.TemporaryDirectory(prefix="handover-part-") as tmp:
            path = Path(tmp) / "part.parquet"
            pq.write_table(table, path, **self.parquet_options(key))
            size = path.stat().st_size
            self.put_file(key, path)
        return {"key": key, "rows": table.num_rows, "bytes": size}

    @contextmanager
    def table_writer(self, key: str, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
        """A Parquet object written a slice at a time (`write_table` on what this yields).
        It appears whole when the block ends, and not at all if the block raises: readers
        never see a partial object. Through a local file, like `write_table`."""
        with tempfile.TemporaryDirectory(prefix="handover-part-") as tmp:
            path = Path(tmp) / "part.parquet"
            with pq.ParquetWriter(path, schema, **self.parquet_options(key)) as writer:
                yield writer
            self.put_file(key, path)

    def schema(self, key: str) -> pa.Schema:
        """The Arrow schema of one Parquet object (its footer only)."""
        if not self.exists(key):
            raise self._missing(key)
        return self._parquet_file(key).schema_arrow

    def _missing(self, key: str) -> FileNotFoundError:
        from handover.storage.lake_crypto import MARKER, WorkingSetGone

        parts = key.split("/")
        if parts[0] == "runs" and len(parts) > 2 and self.exists(f"runs/{parts[1]}/{MARKER}"):
            info = self.read_json(f"runs/{parts[1]}/{MARKER}")
            return WorkingSetGone(
                f"lake object {self.uri(key)} is gone: the working set of run {parts[1]} was "
                f"destroyed on {info.get('destroyed_at', '?')} ({info.get('reason', 'retention')}"
                "); a destroyed run cannot be rerun: trigger a new run of the DAG on the export"
            )
        return FileNotFoundError(
            f"lake object {self.uri(key)} is missing: the stage that writes it has not "
            "run (or failed) for this run; clear that upstream task and run it again"
        )

    def read_table(self, key: str, columns: builtins.list[str] | None = None) -> pa.Table:
        if not self.exists(key):
            raise self._missing(key)
        return self._parquet_file(key).read(columns=columns)

    def iter_batches(self, key: str, columns: builtins.list[str] | None, batch_rows: int = 65536):
        """Record batches of `columns` (None: all) of one Parquet object, a slice at a time:
        for reading a big object without holding all of it."""
        if not self.exists(key):
            self.read_table(key)  # raises the one-line error above
        yield from self._parquet_file(key).iter_batches(batch_size=batch_rows, columns=columns)

    def _parquet_file(self, key: str) -> pq.ParquetFile:
        data = self.get_bytes(key)
        return self._open_parquet(io.BytesIO(data), data[-4:] == b"PARE")

    def read_projected(self, key: str, columns: builtins.list[str]) -> tuple[pa.Table, pa.Schema]:
        """Only `columns` (those the file has) of one Parquet object, and the file's whole
        schema, from one read of the object."""
        if not self.exists(key):
            return self.read_table(key), pa.schema([])  # raises the one-line error above
        pf = self._parquet_file(key)
        schema = pf.schema_arrow
        return pf.read(columns=[c for c in columns if c in schema.names]), schema

    def sync_dir(self, local_dir: Path, prefix: str) -> int:
        """Upload the files under `local_dir` whose content differs from `prefix/...`.

        For sites rebuilt locally and published again and again (Data Docs after every
        gate): only new or changed files travel, not the whole site each time.
        Returns the number of files uploaded.
        """
        import hashlib

        base = prefix.rstrip("/")
        known = self._digests(base + "/")
        sent = 0
        for f in sorted(Path(local_dir).rglob("*")):
            if not f.is_file():
                continue
            key = f"{base}/{f.relative_to(local_dir).as_posix()}"
            data = f.read_bytes()
            if known.get(key) == hashlib.md5(data, usedforsecurity=False).hexdigest():
                continue
            self.put_bytes(key, data)
            sent += 1
        return sent

    def _digests(self, prefix: str) -> dict[str, str]:
        """MD5 hex digest of each object under `prefix` that can tell it cheaply."""
        return {}

    def write_json(self, key: str, obj: Any) -> None:
        self.put_bytes(key, json.dumps(obj, indent=2, ensure_ascii=False, default=str).encode())

    def read_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))


class LocalLake(Lake):
    def __init__(self, root: Path):
        self.root = Path(root)
        self.url = f"file://{self.root}"

    def path(self, key: str) -> Path:
        return self.root / key

    @contextmanager
    def _replacing(self, key: str) -> Iterator[Path]:
        """A temporary path beside the object; when the block ends it is flushed to disk
        and renamed over the object: readers never see a partial object, and a block that
        raises leaves none (nor touches the object there was)."""
        target = self.path(key)
        self._mkdirs(target.parent)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            yield tmp
            try:
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o600)
                os.replace(tmp, target)
            except OSError as exc:
                raise self._fail(key, exc) from exc
        finally:
            if tmp.exists():
                tmp.unlink()

    def _replace(self, key: str, write: Callable[[Path], object]) -> None:
        """`write` the object's temporary file (see _replacing); its OSError is told as a
        lake write failure."""
        with self._replacing(key) as tmp:
            try:
                write(tmp)
            except OSError as exc:
                raise self._fail(key, exc) from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        self._replace(key, lambda tmp: tmp.write_bytes(data))

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - 4))
            self._check_sealed(key, fh.read())
        self._replace(key, lambda tmp: shutil.copyfile(path, tmp))

    def _mkdirs(self, folder: Path) -> None:
        """Folders of the lake are 0700 (only the pipeline's user reads the working set),
        the root included; every level created here gets that mode."""
        if folder.is_dir():
            return
        missing = []
        p = folder
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir(mode=0o700)
            except FileExistsError:
                pass
            else:
                os.chmod(d, 0o700)  # mkdir's mode is masked by the umask
        if self.root in missing or self.root == folder:
            os.chmod(self.root, 0o700)

    def make_private(self, prefix: str) -> None:
        """Files other writers (GX's site builder) made under `prefix`: 0600 in 0700 folders,
        like everything the lake writes itself."""
        base = self.path(prefix)
        if not base.exists():
            return
        self._mkdirs(base)
        for p in [base, *base.rglob("*")]:
            want = 0o700 if p.is_dir() else 0o600
            if p.stat().st_mode & 0o777 != want:
                os.chmod(p, want)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """A temporary file hard-linked to the object's name: the link fails if another
        writer got there first, and the object never appears half-written."""
        target = self.path(key)
        self._mkdirs(target.parent)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            return True
        finally:
            if tmp.exists():
                tmp.unlink()

    def _fail(self, key: str, exc: OSError) -> OSError:
        """One line naming the lake object and the fix (an OSError still: callers and
        Airflow's retries treat it as before)."""
        return OSError(
            exc.errno,
            f"lake write {self.uri(key)} failed: "
            f"{exc.strerror or exc}; free space on the lake's disk (or fix its "
            "permissions) or move HANDOVER_LAKE_URL, then clear the task",
        )

    def get_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def _parquet_file(self, key: str) -> pq.ParquetFile:
        path = self.path(key)  # read a column chunk at a time, not the file
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - 4))
            tail = fh.read()
        return self._open_parquet(path, tail == b"PARE")

    def write_table(self, key: str, table: pa.Table) -> dict[str, Any]:
        """Straight to the object's temporary file: no Parquet bytes held in memory."""
        opts = self.parquet_options(key)
        self._replace(key, lambda tmp: pq.write_table(table, tmp, **opts))
        return {"key": key, "rows": table.num_rows, "bytes": self.path(key).stat().st_size}

    @contextmanager
    def table_writer(self, key: str, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
        """Straight into the object's temporary file, renamed over the object when the
        block ends (see Lake.table_writer); removed if the block raises."""
        opts = self.parquet_options(key)
        with self._replacing(key) as tmp, pq.ParquetWriter(tmp, schema, **opts) as writer:
            yield writer

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root))
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            self.path(key).unlink()
        return len(keys)

    def _digests(self, prefix: str) -> dict[str, str]:
        import hashlib

        return {
            k: hashlib.md5(self.path(k).read_bytes(), usedforsecurity=False).hexdigest()
            for k in self.list(prefix)
        }
