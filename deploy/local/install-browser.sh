#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests (tests/browser), idempotently.
#
# Playwright drives this system browser (executable_path=/usr/bin/chromium); nothing is
# downloaded by a test tool. Used by CI before `pytest -m browser`; safe to run again.
# Override the binary the tests use with QUIP_CHROMIUM (default /usr/bin/chromium).
set -euo pipefail

CHROMIUM="${QUIP_CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
    echo "chromium already installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "install-browser.sh: not root and no sudo; install the 'chromium' package by hand" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null

if [ ! -x "$CHROMIUM" ]; then
    echo "install-browser.sh: apt installed chromium but $CHROMIUM is missing" >&2
    exit 1
fi
echo "installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
