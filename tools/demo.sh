#!/usr/bin/env bash
# The main job: set up (idempotent), then run the suite end to end on its own default data and
# write work_dirs/demo/report.html. Extra arguments go to tools/demo.py (e.g. --epochs 10).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup.sh"
exec "$ROOT/.venv/bin/python" "$ROOT/tools/demo.py" "$@"
