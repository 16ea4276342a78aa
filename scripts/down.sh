#!/usr/bin/env bash
# make down: stop what `make up` started (api-server, scheduler, dag-processor,
# triggerer, each with the processes it spawned), then the embedded PostgreSQL.
# Safe to run when nothing is running.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${HANDOVER_STATE:-$ROOT/.state}"
PY="$ROOT/.venv/bin/python"
RUN="$STATE/airflow-run"

# Each component runs in its own session (setsid in up.sh); its pid is the session id.
# The whole session is signalled, whether or not the main process is still alive: a
# scheduler killed alone (OOM killer, kill -9) leaves forked executor workers and task
# processes that share its metadata-database connection, keep its transaction and row
# locks open, and make a restarted scheduler skip the run silently.
alive() { pgrep -s "$1" >/dev/null 2>&1; }
stop() {
    local name="$1" pidfile="$RUN/$1.pid" pid
    [ -f "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    if alive "$pid"; then
        echo "    stopping $name (session $pid)" >&2
        pkill -TERM -s "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do
            alive "$pid" || break
            sleep 1
        done
        pkill -KILL -s "$pid" 2>/dev/null || true
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
    PYTHONPATH="$ROOT/include" "$PY" -m handover.storage.embedded stop --pgdata "$STATE/pgdata" >&2 || true
fi
