"""Every named failure an on-call engineer can see, in one place.

The task glue (`handover.ops.tasks.call`) decides from these classes what a failure
means for a task:

- a **data fault** (:data:`DATA_FAULTS`) fails the task at once, without retries, with
  its one line as the whole story: retrying cannot fix a failed gate, a wrong config
  file, a broken export, a mapping the data does not fit or a corrupt backup;
- a **transient fault** (a service unreachable) keeps Airflow's retries with backoff and
  is re-raised as :class:`TransientFault`;
- a **database error** is told without row values (:class:`DatabaseFault`); one that a
  retry cannot change fails at once.

Every message names the file, row, field, key or table, and the fix.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration file is wrong; the message names file, line and field.

    `problems` holds every problem found in one pass (schemas of all four files, then the
    cross-checks); the message is the first, with how many more there are: `handover
    check` prints them all, a run fails on one line."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems) if problems else [message]
        more = len(self.problems) - 1
        super().__init__(
            message
            if not more
            else f"{message} (and {more} more problem{'s' if more > 1 else ''}: "
            "`.venv/bin/handover check --system …` lists them all)"
        )


class KeyringError(ConfigError):
    """The keyring cannot do what is asked (an old key is missing, the active key retired)."""


class SourceReadError(RuntimeError):
    """The source cannot be read as configured; one line naming the file/connection and row."""


class SourceError(RuntimeError):
    """The legacy export is missing or unreadable; the message names the file."""


class NightOrderError(SourceError):
    """A night cannot run yet (or at all): the message says which night to run first."""


class MappingError(ValueError):
    """The data does not fit the mapping (e.g. a code without a lookup entry)."""


class SuiteError(ValueError):
    """A suite file is missing or invalid; the message is one line and names the file."""


class GateFailed(RuntimeError):
    """A Great Expectations gate failed: a data fault, not worth retrying."""


class LakeError(RuntimeError):
    """An object-store fault, in one line that names the bucket, the key and the fix."""


class WorkingSetGone(FileNotFoundError):
    """A run's working set (its stage objects and keys) was destroyed by retention."""


class EmbeddedPostgresError(RuntimeError):
    """A one-line, human-readable failure to init/start/stop the embedded server."""


class LifecycleError(RuntimeError):
    """A lifecycle data fault (corrupt backup, rejected request): a retry cannot fix it."""


class BackupCorrupt(LifecycleError):
    """A backup file does not match its catalogue (checksum, rows, decryption)."""


class RestoreMismatch(LifecycleError):
    """The restored database differs from what the backup recorded."""


class DestructionIncomplete(LifecycleError):
    """After destruction, something destroyed is still readable; names where."""


class RequestRejected(LifecycleError):
    """The request cannot be fulfilled as asked (bad form, unknown customer, bad value)."""


class RotationIncomplete(RuntimeError):
    """A key rotation left data under the old key; the message says what and how to resume."""


class TransientFault(RuntimeError):
    """A service was unreachable; the task is retried (one line for the log and the alert)."""


class DatabaseFault(RuntimeError):
    """A database error, told without the row values PostgreSQL puts in its message."""


#: failures a retry cannot fix: the task fails at once with the error's one line
DATA_FAULTS: tuple[type[BaseException], ...] = (
    ConfigError,
    GateFailed,
    SourceError,
    MappingError,
    SuiteError,
    LifecycleError,
    FileNotFoundError,
)
