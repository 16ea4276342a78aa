#!/usr/bin/env bash
# make bench: see scripts/bench.py. Runs on the embedded PostgreSQL (or your settings).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export AIRFLOW__LOGGING__LOGGING_LEVEL=WARNING
airflow db migrate >"$STATE/airflow-migrate.log" 2>&1 || { tail -20 "$STATE/airflow-migrate.log"; exit 1; }
exec "$PY" "$ROOT/scripts/bench.py" "$@"
