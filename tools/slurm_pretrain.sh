#!/usr/bin/env bash
# Pretraining on slurm: bash tools/slurm_pretrain.sh PARTITION JOB_NAME CONFIG WORK_DIR [args]
# (args: those of tools/pretrain.py, e.g. --cfg-options k=v ..., --force-resume; a requeued job resumes
# from the newest usable checkpoint of WORK_DIR)
# Env: GPUS (total, default 16), GPUS_PER_NODE (8), CPUS_PER_TASK (10), SRUN_ARGS.
set -euo pipefail
PARTITION=${1:?usage: slurm_pretrain.sh PARTITION JOB_NAME CONFIG WORK_DIR [args]}
JOB_NAME=${2:?}; CONFIG=${3:?}; WORK_DIR=${4:?}
GPUS=${GPUS:-16}; GPUS_PER_NODE=${GPUS_PER_NODE:-8}; CPUS_PER_TASK=${CPUS_PER_TASK:-10}
SRUN_ARGS=${SRUN_ARGS:-}
# MASTER_ADDR/PORT for the process group: the first node of the allocation (set before the common
# defaults, which would otherwise make it 127.0.0.1).
export MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" 2>/dev/null | head -n 1 || echo 127.0.0.1)}
export MASTER_PORT=${PORT:-29500}
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
srun -p "$PARTITION" --job-name="$JOB_NAME" \
  --gres=gpu:"$GPUS_PER_NODE" --ntasks="$GPUS" --ntasks-per-node="$GPUS_PER_NODE" \
  --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 $SRUN_ARGS \
  "$PYTHON" -u "$ROOT/tools/pretrain.py" "$CONFIG" --work-dir="$WORK_DIR" "${@:5}"
