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
echo "==> lint-imports (the layers: a layer imports only from the layers below it)" >&2
.venv/bin/lint-imports --no-logo pyproject.toml >/dev/null || {
    .venv/bin/lint-imports --no-logo pyproject.toml >&2
    echo "an import goes up a layer (docs/architecture.md says what each layer may import)" >&2
    exit 1
}
echo "==> mypy (include/handover, include/handover_synth, dags, plugins)" >&2
.venv/bin/mypy
echo "==> pytest" >&2
exec .venv/bin/python -m pytest -q -p no:cacheprovider --timeout=900 --durations=20 "$@"
