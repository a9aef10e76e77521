#!/usr/bin/env bash
# Distributed evaluation with torchrun: tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py args ...]
#   env: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500), PYTHON (python)
# As dist_train.sh, one process on a machine without a GPU runs tools/test.py without a launcher.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 CONFIG CHECKPOINT GPUS [test.py args ...]" >&2
  exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The project venv when it exists (tools/setup.sh), else python on PATH; PYTHON overrides.
[ -n "$PYTHON" ] || { [ -x "$ROOT/.venv/bin/python" ] && PYTHON=$ROOT/.venv/bin/python || PYTHON=python; }
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

has_gpu() {  # an NVIDIA GPU is visible (checked without importing torch, which takes seconds)
  case "${CUDA_VISIBLE_DEVICES-unset}" in "" | "-1") return 1 ;; esac
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU"
}

if ! has_gpu; then
  if [ "$GPUS" -le 1 ] && [ "$NNODES" -le 1 ]; then
    echo "[dist_test.sh] no CUDA device: running one process without a launcher" >&2
    exec "$PYTHON" "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher none "$@"
  fi
  echo "[dist_test.sh] $GPUS processes x $NNODES nodes requested but no CUDA device is visible; mmengine's" \
       "distributed launch needs GPUs (use GPUS=1 for a single CPU process)" >&2
  exit 1
fi
exec "$PYTHON" -m torch.distributed.run \
  --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" --master_port="$PORT" \
  --nproc_per_node="$GPUS" \
  "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
