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
echo "==> ruff" >&2
.venv/bin/ruff check .
echo "==> pytest" >&2
exec .venv/bin/python -m pytest -q -p no:cacheprovider --timeout=900 --durations=20 "$@"
