#!/usr/bin/env bash
# Create .venv and install the pinned requirements (idempotent: skips when up to date).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

# The scripts, styles and fonts of the Data Docs pages (docs-assets/package-lock.json), which
# the plugin serves from the Airflow UI's own origin instead of public CDNs. Without npm
# the pages are served without them (readable; the Data Docs index gets a plain list).
assets() {
    local lock=docs-assets/package-lock.json stamp=docs-assets/node_modules/.lock.sha256 want
    want="$(sha256sum "$lock" | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    if ! command -v npm >/dev/null; then
        echo "==> npm not found: Data Docs pages will be served without their scripts and styles" >&2
        return 0
    fi
    echo "==> installing the Data Docs assets (docs-assets/: npm ci)" >&2
    npm ci --prefix docs-assets --ignore-scripts --no-audit --no-fund --loglevel=error >&2
    echo "$want" > "$stamp"
}
assets

# The library on the venv's path (a .pth file) and a `handover` command in .venv/bin, so
# `.venv/bin/handover check …` and `.venv/bin/python -m handover.ops.check …` work from any
# folder without PYTHONPATH (docs/onboarding.md). Cheap and idempotent: done every time.
link_library() {
    local site
    site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$ROOT/include" > "$site/handover-include.pth"
    cat > .venv/bin/handover <<WRAP
#!/usr/bin/env bash
# handover's command line (python -m handover.ops.cli): check, keys, rotate-keys, verify-audit, …
exec "$ROOT/.venv/bin/python" -m handover.ops.cli "\$@"
WRAP
    chmod +x .venv/bin/handover
}

STAMP=.venv/.requirements.sha256
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ -x .venv/bin/python ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    link_library
    exit 0
fi
echo "==> creating .venv and installing pinned requirements (a few minutes the first time)" >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# pip warns once per package about this machine's optional local indexes; keep real errors.
quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
quiet .venv/bin/python -m pip install --quiet --upgrade pip
quiet .venv/bin/python -m pip install --quiet -r requirements.txt
echo "$want" > "$STAMP"
link_library
