"""Backups: a consistent, encrypted snapshot of the target in the lake, with a catalogue.

The `backup` DAG runs this before a load and on a schedule; the `restore_drill` DAG proves
each week that the newest backup restores (handover.lifecycle.restore). Every table of the
`crm` and `handover_meta` schemas is read in one snapshot, streamed into Parquet, one file
per table, and each file is encrypted with its own data key; destroying that key
crypto-shreds the file in every copy of the backup, which is how retention and erasure
reach into backups that cannot be edited (handover.lifecycle.retention).

- tables: which tables are backed up, their columns, the content checksum;
- dump: one table to Parquet in bounded memory;
- files: the encrypted file format, data keys, fetching a file back and checking it;
- catalogue: take, verify, expire, re-wrap (the DAG's steps);
- shred: which backup files hold given values, and crypto-shredding them;
- cli: `python -m handover.lifecycle.backup`.

This package re-exports the public names for DAGs, scripts and tests; modules of the
library import from the module that defines a name.
"""

from handover.core.errors import BackupCorrupt, LifecycleError
from handover.lifecycle.backup.catalogue import (
    BackupFile,
    expire_backups,
    new_backup_id,
    rewrap_keys,
    run_backup,
    take_backup,
    verify_backup,
)
from handover.lifecycle.backup.cli import main
from handover.lifecycle.backup.files import (
    BACKUPS,
    KEYS,
    data_key,
    decrypt_file,
    encrypt_file,
    fetch_file,
    key_object,
    read_backup_table,
    read_manifest,
    unwrap_data_key,
    wrap_data_key,
)
from handover.lifecycle.backup.shred import files_containing, readable_backups, shred_files
from handover.lifecycle.backup.tables import SCHEMAS, SESSION, content_checksum, snapshot_tables
from handover.lifecycle.books import ensure_lifecycle_schema, lifecycle_connect
from handover.lifecycle.lake_purge import purge, purge_noncurrent
from handover.storage.lake import lake_from_url
from handover.storage.objects import LocalLake

__all__ = [
    "BACKUPS",
    "KEYS",
    "SCHEMAS",
    "SESSION",
    "BackupCorrupt",
    "BackupFile",
    "LifecycleError",
    "LocalLake",
    "content_checksum",
    "data_key",
    "decrypt_file",
    "encrypt_file",
    "ensure_lifecycle_schema",
    "expire_backups",
    "fetch_file",
    "files_containing",
    "key_object",
    "lake_from_url",
    "lifecycle_connect",
    "main",
    "new_backup_id",
    "purge",
    "purge_noncurrent",
    "read_backup_table",
    "read_manifest",
    "readable_backups",
    "rewrap_keys",
    "run_backup",
    "shred_files",
    "snapshot_tables",
    "take_backup",
    "unwrap_data_key",
    "verify_backup",
    "wrap_data_key",
]
