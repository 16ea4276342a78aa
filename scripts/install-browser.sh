#!/usr/bin/env bash
# Headless Chromium and its WebDriver for the browser tests (tests/e2e/test_ui.py).
# Debian's packages, so the browser and driver versions always match. Idempotent:
# does nothing when /usr/bin/chromium and /usr/bin/chromedriver are already there.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install chromium chromium-driver as root" >&2; exit 1; }
    SUDO=sudo
fi
echo "==> installing chromium and chromium-driver (Debian packages)" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
