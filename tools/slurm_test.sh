#!/usr/bin/env bash
# Slurm evaluation: [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] \
#   tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args ...]
# GPUS, GPUS_PER_NODE and CPUS_PER_TASK must be positive integers: checked before srun starts (exit 2).
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args ...]" >&2
  exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
CHECKPOINT=$4
shift 4
slurm_run "$PARTITION" "$JOB_NAME" test.py 2 "$CONFIG" "$CHECKPOINT" "$@"
