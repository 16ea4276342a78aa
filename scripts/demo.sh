#!/usr/bin/env bash
# make demo: a synthetic operator of SUBSCRIBERS (default 10,000) through the whole
# customer_migration DAG on embedded defaults, then the per-table summary.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
SUBSCRIBERS="${SUBSCRIBERS:-10000}"
echo "==> generating a synthetic legacy operator: $SUBSCRIBERS subscribers" >&2
"$PY" -m handover.synth --out "$STATE/source" --subscribers "$SUBSCRIBERS" --seed 42
echo "==> preparing Airflow's metadata database" >&2
airflow db migrate >"$STATE/airflow-migrate.log" 2>&1 || { tail -20 "$STATE/airflow-migrate.log"; exit 1; }
echo "==> running customer_migration (log: $STATE/demo-run.log)" >&2
if ! airflow dags test customer_migration -c "{\"source_dir\": \"$STATE/source\"}" \
        >"$STATE/demo-run.log" 2>&1; then
    grep -E "AirflowFailException|Error|failed" "$STATE/demo-run.log" | tail -5 >&2
    echo "the migration failed; full log: $STATE/demo-run.log" >&2
    exit 1
fi
"$PY" -m handover.cli summary
