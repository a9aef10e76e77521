#!/usr/bin/env bash
# Set the environment up (idempotent; seconds when in place) and run the test suite.
#   bash tools/test.sh                 # fast suite (slow and GPU tests deselected, as the summary says)
#   bash tools/test.sh -m slow         # the slow tests
#   bash tools/test.sh -m gpu          # the GPU tests (fail, never skip, without CUDA)
# Extra arguments go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
