#!/usr/bin/env bash
# Install the real browser SDKs for tests/browser/test_browser_sdks.py, idempotently:
# posthog-js, @segment/analytics-next and esbuild at the versions pinned in
# tests/browser/sdk/package-lock.json (`npm ci`, from the npm registry), then
# analytics-next bundled into one page script, tests/browser/sdk/dist/analytics-next.js.
# posthog-js needs no build: its dist/array.full.no-external.js is a plain script.
#
# `npm ci` runs again only when the lock file changed since the last install; the bundle
# is rebuilt every time (milliseconds). Node.js and npm come from Debian when missing.
set -euo pipefail

SDK_DIR="$(cd "$(dirname "$0")/../../tests/browser/sdk" && pwd)"
STAMP="$SDK_DIR/node_modules/.installed-lock.sha256"

if ! command -v npm >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

cd "$SDK_DIR"
lock_sum="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$lock_sum" ]; then
    # No install scripts: esbuild's binary comes in its platform package, and nothing
    # else here needs one.
    npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
    echo "$lock_sum" >"$STAMP"
fi

node_modules/.bin/esbuild segment-entry.js --bundle --format=iife --platform=browser \
    --target=es2020 --log-level=warning --outfile=dist/analytics-next.js
echo "browser SDKs ready: posthog-js $(node -p "require('posthog-js/package.json').version")," \
    "@segment/analytics-next $(node -p "require('@segment/analytics-next/package.json').version")"
