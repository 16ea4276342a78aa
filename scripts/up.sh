#!/usr/bin/env bash
# make up: Airflow with the project's DAGs and plugin, on the embedded defaults of env.sh.
# Starts api-server, scheduler, dag-processor and triggerer in the background (logs and
# pid files under $STATE/airflow-run), then prints the URL and the logins. Idempotent: a
# component already running is left alone. Stop everything with `make down`.
#
# Settings (all optional):
#   HANDOVER_PORT       port of the UI/API (default 8080)
#   HANDOVER_USERS      simple auth manager users, "name:role,..." with roles viewer, user,
#                       op, admin (default "admin:admin,oncall:op,analyst:viewer")
#   HANDOVER_ALL_ADMINS=1   no login at all, everyone is admin (a laptop only)
#   SUBSCRIBERS         size of the demo export generated when $STATE/source is missing
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
PORT="${HANDOVER_PORT:-8080}"
RUN="$STATE/airflow-run"
mkdir -p "$RUN"

# One secret for every component: the scheduler signs task tokens the API server checks.
if [ ! -f "$RUN/secrets.env" ]; then
    (umask 077; "$PY" -c 'import secrets; print(f"JWT_SECRET={secrets.token_hex(32)}\nSECRET_KEY={secrets.token_hex(16)}")' > "$RUN/secrets.env")
fi
# shellcheck disable=SC1091
source "$RUN/secrets.env"
export AIRFLOW__API_AUTH__JWT_SECRET="${AIRFLOW__API_AUTH__JWT_SECRET:-$JWT_SECRET}"
export AIRFLOW__API__SECRET_KEY="${AIRFLOW__API__SECRET_KEY:-$SECRET_KEY}"
export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}"
export AIRFLOW__API__BASE_URL="${AIRFLOW__API__BASE_URL:-http://localhost:$PORT}"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-http://localhost:$PORT/execution/}"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${HANDOVER_USERS:-admin:admin,oncall:op,analyst:viewer}"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$RUN/passwords.json"
if [ -n "${HANDOVER_ALL_ADMINS:-}" ]; then
    export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True
fi
if [ -n "${HANDOVER_SOURCE_DIR:-}" ] && [ ! -f "$HANDOVER_SOURCE_DIR/export_manifest.json" ]; then
    # Never write into someone's export folder: say what is missing instead.
    echo "error: $HANDOVER_SOURCE_DIR has no export_manifest.json: ask the operator for the" \
         "export's manifest, or write one from the files at hand:" \
         ".venv/bin/handover manifest --system <system> --source-dir $HANDOVER_SOURCE_DIR" \
         "--exported-at 'YYYY-MM-DD HH:MM:SS' (docs/source-contract.md)" >&2
    exit 2
fi
export HANDOVER_SOURCE_DIR="${HANDOVER_SOURCE_DIR:-$STATE/source}"

if [ ! -f "$HANDOVER_SOURCE_DIR/export_manifest.json" ]; then
    echo "==> generating a demo export in $HANDOVER_SOURCE_DIR (${SUBSCRIBERS:-10000} subscribers)" >&2
    "$PY" -m handover_synth.legacy_bss --out "$HANDOVER_SOURCE_DIR" --subscribers "${SUBSCRIBERS:-10000}" --seed 42
fi

echo "==> preparing Airflow's metadata database" >&2
airflow db migrate >"$RUN/migrate.log" 2>&1 || { tail -20 "$RUN/migrate.log" >&2; exit 1; }

running() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }
start() {
    local name="$1"; shift
    if running "$name"; then
        echo "    $name already running (pid $(cat "$RUN/$name.pid"))" >&2
        return
    fi
    # Its main process died: stop what it left behind (see down.sh) before a new one starts.
    [ -f "$RUN/$name.pid" ] && pkill -KILL -s "$(cat "$RUN/$name.pid")" 2>/dev/null || true
    # Its own session, so `make down` can stop it with every process it started.
    setsid airflow "$@" >>"$RUN/$name.log" 2>&1 < /dev/null &
    echo $! > "$RUN/$name.pid"
    echo "    $name started (pid $!, log $RUN/$name.log)" >&2
}
echo "==> starting Airflow" >&2
start api-server api-server --host 127.0.0.1 --port "$PORT"
start scheduler scheduler
start dag-processor dag-processor
start triggerer triggerer

healthy() {
    "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' \
        "http://127.0.0.1:$PORT/api/v2/monitor/health" >/dev/null 2>&1
}
for _ in $(seq 1 90); do
    healthy && break
    running api-server || { tail -30 "$RUN/api-server.log" >&2; echo "api-server exited" >&2; exit 1; }
    sleep 2
done
healthy || { tail -30 "$RUN/api-server.log" >&2; echo "api-server did not answer in 180s" >&2; exit 1; }

echo
echo "Airflow:          http://localhost:$PORT"
echo "Migration ledger: http://localhost:$PORT/handover/ledger"
if [ -n "${HANDOVER_ALL_ADMINS:-}" ]; then
    echo "Login:            none (HANDOVER_ALL_ADMINS=1: everyone is admin)"
else
    for _ in $(seq 1 15); do [ -s "$RUN/passwords.json" ] && break; sleep 1; done
    echo "Logins (users $AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS; passwords in $RUN/passwords.json):"
    "$PY" -c 'import json,sys; [print(f"    {u} / {p}") for u, p in json.load(open(sys.argv[1])).items()]' "$RUN/passwords.json"
fi
echo "Trigger customer_migration with source_dir = $HANDOVER_SOURCE_DIR"
echo "Logs: $RUN/*.log    Stop: make down"
