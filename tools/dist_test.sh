#!/usr/bin/env bash
# Distributed evaluation with torchrun: tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py args ...]
#   env: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500), PYTHON (the project venv)
# As dist_train.sh, one process on a machine without a GPU runs tools/test.py without a launcher.
# GPUS (a positive integer), NNODES, NODE_RANK and PORT are checked before anything starts (exit 2 naming them).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 CONFIG CHECKPOINT GPUS [test.py args ...]" >&2
  exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
dist_run dist_test.sh "$GPUS" test.py 2 "$CONFIG" "$CHECKPOINT" "$@"
