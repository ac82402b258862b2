#!/usr/bin/env bash
# Put Debian's promtool next to the venv's python (.venv/bin/promtool), idempotently, for
# tests/unit/test_observability_files.py (`promtool check rules|config`, `test rules`).
#
# `apt-get download` + `dpkg-deb -x` instead of `apt-get install prometheus`: the package
# would also install and start a Prometheus daemon on :9090. Needs only the apt index.
set -euo pipefail
cd "$(dirname "$0")/../.."

target=.venv/bin/promtool
if [ -x "$target" ]; then
    echo "promtool already installed: $("$target" --version 2>&1 | head -n 1)"
    exit 0
fi

cache="${QUIP_CACHE_DIR:-$HOME/.cache/quip}/prometheus-deb"
mkdir -p "$cache"
if ! ls "$cache"/prometheus_*.deb >/dev/null 2>&1; then
    (cd "$cache" && apt-get download prometheus >/dev/null 2>&1) || {
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq
        (cd "$cache" && apt-get download prometheus >/dev/null)
    }
fi
rm -rf "$cache/root"
dpkg-deb -x "$(ls "$cache"/prometheus_*.deb | head -n 1)" "$cache/root"
install -m 0755 "$cache/root/usr/bin/promtool" "$target"
echo "promtool installed: $("$target" --version 2>&1 | head -n 1)"
