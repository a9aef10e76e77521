#!/usr/bin/env bash
# Multi-GPU / multi-node pretraining with torchrun:
#   bash tools/dist_pretrain.sh CONFIG GPUS [--work-dir DIR] [--cfg-options k=v ...] [--force-resume]
# (the arguments of tools/pretrain.py: resumes from the newest usable checkpoint of the work dir, refusing
# changed result-changing settings unless --force-resume)
# Multi-node: NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host0 PORT=29500 on each node.
set -euo pipefail
CONFIG=${1:?usage: dist_pretrain.sh CONFIG GPUS [args]}
GPUS=${2:?usage: dist_pretrain.sh CONFIG GPUS [args]}
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
check_dist_args dist_pretrain.sh "$GPUS"  # GPUS, NNODES, NODE_RANK, PORT: integers, before anything starts
# tools/pretrain.py reads torchrun's environment itself (NCCL on GPUs, gloo on CPU): no --launcher.
exec "$PYTHON" -m torch.distributed.run \
  --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" --master_port="$PORT" \
  --nproc_per_node="$GPUS" "$ROOT/tools/pretrain.py" "$CONFIG" "${@:3}"
