#!/usr/bin/env bash
# Distributed training with torchrun: tools/dist_train.sh CONFIG GPUS [train.py args ...]
#   env: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500), PYTHON (python)
#   e.g. two nodes of 8 GPUs: NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash tools/dist_train.sh CONFIG 8
# mmengine's distributed init needs CUDA (torch.cuda.set_device, DDP device_ids): with one process on a machine
# without a GPU the script runs tools/train.py without a launcher instead (same config, same outputs).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG GPUS [train.py args ...]" >&2
  exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
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
    echo "[dist_train.sh] no CUDA device: running one process without a launcher" >&2
    exec "$PYTHON" "$ROOT/tools/train.py" "$CONFIG" --launcher none "$@"
  fi
  echo "[dist_train.sh] $GPUS processes x $NNODES nodes requested but no CUDA device is visible; mmengine's" \
       "distributed launch needs GPUs (use GPUS=1 for a single CPU process)" >&2
  exit 1
fi
exec "$PYTHON" -m torch.distributed.run \
  --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" --master_port="$PORT" \
  --nproc_per_node="$GPUS" \
  "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "$@"
