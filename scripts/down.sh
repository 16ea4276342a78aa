#!/usr/bin/env bash
# make down: stop what `make up` started (api-server, scheduler, dag-processor,
# triggerer, each with the processes it spawned), then the embedded PostgreSQL.
# Safe to run when nothing is running.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${HANDOVER_STATE:-$ROOT/.state}"
PY="$ROOT/.venv/bin/python"
RUN="$STATE/airflow-run"

stop() {
    local name="$1" pidfile="$RUN/$1.pid" pid
    [ -f "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        echo "    stopping $name (pid $pid)" >&2
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}
echo "==> stopping Airflow" >&2
# The scheduler first, so it hands no new work to the executor while the rest stops.
for name in scheduler triggerer dag-processor api-server; do
    stop "$name"
done
if [ -z "${HANDOVER_EXTERNAL:-}" ] && [ -d "$STATE/pgdata" ] && [ -x "$PY" ]; then
    echo "==> stopping the embedded PostgreSQL" >&2
    PYTHONPATH="$ROOT/include" "$PY" -m handover.embedded stop --pgdata "$STATE/pgdata" >&2 || true
fi
