#!/usr/bin/env bash
# make test: lint, then every test layer. Tests talk to the machine's PostgreSQL
# (127.0.0.1:5432) and Redis, to an embedded PostgreSQL, and to a local S3 endpoint
# (moto in server mode) that the tests start themselves.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT/include"
export PYTHONWARNINGS=ignore
"$ROOT/scripts/install-browser.sh"
echo "==> ruff (lint, and the formatting ruff format gives)" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check . >/dev/null || {
    .venv/bin/ruff format --check . >&2
    echo "run: .venv/bin/ruff format ." >&2
    exit 1
}
echo "==> pytest" >&2
exec .venv/bin/python -m pytest -q -p no:cacheprovider --timeout=900 --durations=20 "$@"
