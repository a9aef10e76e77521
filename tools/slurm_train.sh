#!/usr/bin/env bash
# Slurm training: [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] \
#   tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args ...]
# One task per GPU; mmengine reads the rank layout from the SLURM_* variables (--launcher slurm).
# GPUS, GPUS_PER_NODE and CPUS_PER_TASK must be positive integers: checked before srun starts (exit 2).
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 PARTITION JOB_NAME CONFIG WORK_DIR [train.py args ...]" >&2
  exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
shift 4
slurm_run "$PARTITION" "$JOB_NAME" train.py 2 "$CONFIG" --work-dir="$WORK_DIR" "$@"
