#!/usr/bin/env bash
# make demo: a synthetic operator of SUBSCRIBERS (default 10,000) through the whole
# customer_migration DAG on embedded defaults, then the per-table summary.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
SUBSCRIBERS="${SUBSCRIBERS:-10000}"
# A migration's target must end up equal to its export: reconciliation flags rows the run
# did not send. So a demo of another size starts from an empty embedded target (the same
# size again reruns into the target as it is: nothing changes, which is the point).
if [ -z "${HANDOVER_EXTERNAL:-}" ] && [ -f "$STATE/demo-subscribers" ] \
        && [ "$(cat "$STATE/demo-subscribers")" != "$SUBSCRIBERS" ]; then
    echo "==> another size than the last demo ($(cat "$STATE/demo-subscribers")): emptying the embedded target database" >&2
    "$PY" - <<'PYEOF'
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from handover.config.connections import target_dsn

target = conninfo_to_dict(target_dsn())
with psycopg.connect(make_conninfo(**{**target, "dbname": "postgres"}), autocommit=True) as c:
    c.execute(f'DROP DATABASE IF EXISTS "{target["dbname"]}" WITH (FORCE)')
    c.execute(f'CREATE DATABASE "{target["dbname"]}"')
PYEOF
fi
echo "==> generating a synthetic legacy operator: $SUBSCRIBERS subscribers" >&2
"$PY" -m handover_synth.legacy_bss --out "$STATE/source" --subscribers "$SUBSCRIBERS" --seed 42
if [ -n "${ACQUIRER:-}" ]; then
    # An acquirer that already holds customers (docs/identity.md): some of them persons of
    # this export, matched by blind index and merged into the acquirer's records.
    echo "==> seeding the target with the acquirer's own customers (ACQUIRER=1)" >&2
    "$PY" -m handover_synth.acquirer --export "$STATE/source"
fi
echo "==> preparing Airflow's metadata database" >&2
airflow db migrate >"$STATE/airflow-migrate.log" 2>&1 || { tail -20 "$STATE/airflow-migrate.log"; exit 1; }
echo "==> running customer_migration (log: $STATE/demo-run.log)" >&2
# `dags test` runs every task in this one process and writes no task log files, so the UI
# of `make up` would show empty logs. It logs JSON lines instead (json_logs: the shape of a
# task's log file) into demo-run.jsonl, shown as text in demo-run.log while it runs; then
# each task instance's lines go, as they are, to the file the UI reads for that try
# ($AIRFLOW_HOME/logs/dag_id=…/run_id=…/task_id=…/attempt=N.log): handover/ops/demo_logs.py.
status=0
AIRFLOW__LOGGING__JSON_LOGS=True \
    airflow dags test customer_migration -c "{\"source_dir\": \"$STATE/source\"}" 2>&1 \
    | tee "$STATE/demo-run.jsonl" | "$PY" -m handover.ops.demo_logs render >"$STATE/demo-run.log" \
    || status=$?
"$PY" -m handover.ops.demo_logs split "$STATE/demo-run.jsonl" \
    || echo "    (task logs not copied for the UI; they are in $STATE/demo-run.log)" >&2
if [ "$status" -ne 0 ]; then
    grep -E "AirflowFailException|Error|failed" "$STATE/demo-run.log" | tail -5 >&2
    echo "the migration failed; full log: $STATE/demo-run.log" >&2
    exit 1
fi
echo "$SUBSCRIBERS" >"$STATE/demo-subscribers"
"$PY" -m handover.ops.cli summary
