#!/usr/bin/env bash
# Label Studio in a virtual environment of its own (default .venv-ls at the repository root, or $1), so its
# pins never touch ovdiff's .venv. tests/test_label_studio.py runs the real server from it; without it the
# test skips. Idempotent: an existing, working venv is kept.
# sentry-sdk 3 (2026-12) refuses the `send_default_pii` option that Label Studio 1.23 passes, and Label Studio asks
# only for sentry-sdk>=2.16, so a fresh install crashes at start: we hold it below 3.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-ls}"
VERSION="${LABEL_STUDIO_VERSION:-1.23.*}"
PY="${PY:-python3}"
WORKS='import label_studio, sentry_sdk; assert int(sentry_sdk.VERSION.split(".")[0]) < 3'
if ! { [ -x "$VENV/bin/label-studio" ] && "$VENV/bin/python" -c "$WORKS" 2>/dev/null; }; then
    test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q "label-studio==$VERSION" "sentry-sdk>=2.16,<3"
fi
# A migrated, empty database: the test copies it instead of running Label Studio's migrations (minutes) itself.
MIGRATED="$VENV/ovdiff-migrated"
if [ ! -s "$MIGRATED/label_studio.sqlite3" ]; then
    rm -rf "$MIGRATED.tmp"
    SENTRY_DSN= LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false "$VENV/bin/label-studio" version --data-dir "$MIGRATED.tmp" >/dev/null
    rm -rf "$MIGRATED" && mv "$MIGRATED.tmp" "$MIGRATED"
fi
