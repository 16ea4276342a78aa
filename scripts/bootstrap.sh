#!/usr/bin/env bash
# Create .venv and install the pinned requirements (idempotent: skips when up to date).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
STAMP=.venv/.requirements.sha256
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ -x .venv/bin/python ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0
fi
echo "==> creating .venv and installing pinned requirements (a few minutes the first time)" >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# pip warns once per package about this machine's optional local indexes; keep real errors.
quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
quiet .venv/bin/python -m pip install --quiet --upgrade pip
quiet .venv/bin/python -m pip install --quiet -r requirements.txt
echo "$want" > "$STAMP"
