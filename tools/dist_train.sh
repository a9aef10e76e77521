#!/usr/bin/env bash
# Distributed training with torchrun: tools/dist_train.sh CONFIG GPUS [train.py args ...]
#   env: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500), PYTHON (the project venv)
#   e.g. two nodes of 8 GPUs: NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash tools/dist_train.sh CONFIG 8
# With one process on a machine without a GPU, tools/train.py runs without a launcher instead.
# GPUS (a positive integer), NNODES, NODE_RANK and PORT are checked before anything starts (exit 2 naming them).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG GPUS [train.py args ...]" >&2
  exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
CONFIG=$1
GPUS=$2
shift 2
dist_run dist_train.sh "$GPUS" train.py 1 "$CONFIG" "$@"
