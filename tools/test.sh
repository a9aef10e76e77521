#!/usr/bin/env bash
# Set the environment up (idempotent; seconds when in place), lint, and run the test suite.
#   bash tools/test.sh                 # ruff (lint + import order) + fast suite (slow and GPU tests deselected)
#   bash tools/test.sh -m slow         # the slow tests
#   bash tools/test.sh -m gpu          # the GPU tests (fail, never skip, without CUDA)
# Extra arguments go to pytest. Exits non-zero when ruff or pytest fails (both always run).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup.sh"
cd "$ROOT"
lint=0
echo "[test] ruff check (settings in pyproject.toml)"
"$ROOT/.venv/bin/python" -m ruff check "$ROOT" || lint=$?
status=0
"$ROOT/.venv/bin/python" -m pytest "$@" || status=$?
if [ "$lint" -ne 0 ]; then
  echo "[test] ruff found problems (above): run '.venv/bin/python -m ruff check --fix .'" >&2
  [ "$status" -ne 0 ] || status=$lint
fi
exit "$status"
