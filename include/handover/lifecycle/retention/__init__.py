"""Retention and destruction: find every copy of data past its retention, destroy it, prove it.

The daily `retention_and_destruction` DAG (and erasure requests, handover.lifecycle.subject)
use this package. Data lives in three places, the target, the lake and backups, and each
is reached its own way (destroy). Each destruction ends with a check that nothing
destroyed is still readable anywhere (verify), then a destruction certificate (certify).

- plan: lake partitions and their columns, key normalisation, keyed hashes, the plan;
- find: what is past retention (find_expired);
- destroy: in the target, the lake and backups;
- verify: the destruction gate;
- certify: destruction certificates;
- working_sets: expired working sets of runs, crypto-shredded by key scope;
- run_end: rows a run excluded, destroyed at the run's end;
- steps: the DAG's task bodies and run_retention.

This package re-exports the public names for DAGs, scripts and tests; modules of the
library import from the module that defines a name.
"""

from handover.lifecycle.retention.certify import CERTIFICATES, certify, certify_simple
from handover.lifecycle.retention.destroy import (
    books_with_keys,
    destroy_in_lake,
    destroy_in_target,
    shred_backups,
)
from handover.lifecycle.retention.find import find_expired
from handover.lifecycle.retention.plan import (
    DESTROYED,
    PLAN_PREFIX,
    columns_for,
    key_digest,
    lake_partitions,
    normalise,
    plan_prefix,
    read_plan,
    write_plan,
)
from handover.lifecycle.retention.run_end import (
    PURGED,
    count_purged,
    destroy_run_exclusions,
    forget_purged,
    purged_marker,
    purged_rows,
)
from handover.lifecycle.retention.steps import (
    certify_task,
    destroy_lake_task,
    destroy_target_task,
    run_retention,
    shred_backups_task,
    validate_destruction_task,
)
from handover.lifecycle.retention.verify import remaining, verify_destroyed
from handover.lifecycle.retention.working_sets import destroy_working_sets, shred_scope

__all__ = [
    "CERTIFICATES",
    "DESTROYED",
    "PLAN_PREFIX",
    "PURGED",
    "books_with_keys",
    "certify",
    "certify_simple",
    "certify_task",
    "columns_for",
    "count_purged",
    "destroy_in_lake",
    "destroy_in_target",
    "destroy_lake_task",
    "destroy_run_exclusions",
    "destroy_target_task",
    "destroy_working_sets",
    "find_expired",
    "forget_purged",
    "key_digest",
    "lake_partitions",
    "normalise",
    "plan_prefix",
    "purged_marker",
    "purged_rows",
    "read_plan",
    "remaining",
    "run_retention",
    "shred_backups",
    "shred_backups_task",
    "shred_scope",
    "validate_destruction_task",
    "verify_destroyed",
    "write_plan",
]
