#!/usr/bin/env bash
# Runs the service map's browser test: installs Debian's chromium if it is
# missing (idempotent), then runs the test as CI does, so that it cannot skip.
# The screenshot is left at target/test-artifacts/servicemap.png.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "chromium is missing and installing it needs root: apt-get install -y chromium" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi

CI=true AYA_BUILD_SKIP="${AYA_BUILD_SKIP:-1}" \
    cargo test -p myelin-observe --test servicemap_browser -- --nocapture
echo "screenshot: ${CARGO_TARGET_DIR:-target}/test-artifacts/servicemap.png"
