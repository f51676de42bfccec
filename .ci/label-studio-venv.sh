#!/usr/bin/env bash
# Label Studio in a virtual environment of its own (default .venv-ls at the repository root, or $1), so its
# pins never touch ovdiff's .venv. tests/test_label_studio.py runs the real server from it; without it the
# test skips. Idempotent: an existing, working venv is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-ls}"
VERSION="${LABEL_STUDIO_VERSION:-1.23.*}"
PY="${PY:-python3}"
if ! { [ -x "$VENV/bin/label-studio" ] && "$VENV/bin/python" -c "import label_studio" 2>/dev/null; }; then
    test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q "label-studio==$VERSION"
fi
# A migrated, empty database: the test copies it instead of running Label Studio's migrations (minutes) itself.
MIGRATED="$VENV/ovdiff-migrated"
if [ ! -s "$MIGRATED/label_studio.sqlite3" ]; then
    rm -rf "$MIGRATED.tmp"
    LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false "$VENV/bin/label-studio" version --data-dir "$MIGRATED.tmp" >/dev/null
    rm -rf "$MIGRATED" && mv "$MIGRATED.tmp" "$MIGRATED"
fi
