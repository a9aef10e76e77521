#!/usr/bin/env bash
# Multi-GPU / multi-node pretraining with torchrun:
#   bash tools/dist_pretrain.sh CONFIG GPUS [--work-dir DIR] [--cfg-options k=v ...]
# Multi-node: NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host0 PORT=29500 on each node.
set -euo pipefail
CONFIG=${1:?usage: dist_pretrain.sh CONFIG GPUS [args]}
GPUS=${2:?usage: dist_pretrain.sh CONFIG GPUS [args]}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m torch.distributed.run \
  --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" --master_port="$PORT" \
  --nproc_per_node="$GPUS" "$ROOT/tools/pretrain.py" "$CONFIG" "${@:3}"
