#!/usr/bin/env bash
# make bench: see scripts/bench.py. Runs on the embedded PostgreSQL (or your settings).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export AIRFLOW__LOGGING__LOGGING_LEVEL=WARNING
# The dlt peer's packages (bench/requirements.txt, pinned), beside the venv, not in it:
# installed once per version of that file; scripts/bench_dlt.py alone puts them on its path.
SITE="$STATE/bench/site"
STAMP="$(sha256sum "$ROOT/bench/requirements.txt" | cut -c1-16)"
if [ "$(cat "$SITE/.stamp" 2>/dev/null)" != "$STAMP" ]; then
    echo "== installing the bench-only requirements (bench/requirements.txt) into $SITE" >&2
    rm -rf "$SITE"
    # (pip warns once per package about this machine's optional local indexes: not errors)
    "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --target "$SITE" \
        -r "$ROOT/bench/requirements.txt" 2>&1 |
        { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
    echo "$STAMP" >"$SITE/.stamp"
fi
export HANDOVER_BENCH_SITE="$SITE"
airflow db migrate >"$STATE/airflow-migrate.log" 2>&1 || { tail -20 "$STATE/airflow-migrate.log"; exit 1; }
exec "$PY" "$ROOT/scripts/bench.py" "$@"
