# Sourced by the launch scripts (dist_*.sh, slurm_*.sh): one place for the repository root, the
# python to use, PYTHONPATH, torchrun's multi-node variables, their validation (require_int) and the
# single-process CPU fallback.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The project venv when it exists (tools/setup.sh), else python on PATH; PYTHON overrides.
PYTHON=${PYTHON:-}
[ -n "$PYTHON" ] || { [ -x "$ROOT/.venv/bin/python" ] && PYTHON=$ROOT/.venv/bin/python || PYTHON=python; }
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

# require_int SCRIPT NAME VALUE MIN [MAX]: exit 2 with a message naming NAME unless VALUE is a decimal integer in
# [MIN, MAX]. Called before anything is started, so a bad GPUS / NNODES / PORT never reaches torchrun or srun.
require_int() {
  local script=$1 name=$2 value=$3 min=$4 max=${5:-}
  local range=">= $min"
  [ -z "$max" ] || range="in $min..$max"
  if ! [[ $value =~ ^[0-9]{1,6}$ ]] || [ $((10#$value)) -lt "$min" ] || { [ -n "$max" ] && [ $((10#$value)) -gt "$max" ]; }; then
    echo "[$script] $name must be an integer $range, got '$value'" >&2
    exit 2
  fi
}

# check_dist_args SCRIPT GPUS: the torchrun launch settings (GPUS per node, NNODES, NODE_RANK, PORT).
check_dist_args() {
  require_int "$1" GPUS "$2" 1
  require_int "$1" NNODES "$NNODES" 1
  require_int "$1" NODE_RANK "$NODE_RANK" 0 $((10#$NNODES - 1))
  require_int "$1" PORT "$PORT" 1 65535
}

# check_slurm_args SCRIPT: the Slurm settings (GPUS tasks in all, GPUS_PER_NODE, CPUS_PER_TASK).
check_slurm_args() {
  require_int "$1" GPUS "${GPUS-8}" 1
  require_int "$1" GPUS_PER_NODE "${GPUS_PER_NODE-8}" 1
  require_int "$1" CPUS_PER_TASK "${CPUS_PER_TASK-5}" 1
}

has_gpu() {  # an NVIDIA GPU is visible (checked without importing torch, which takes seconds)
  case "${CUDA_VISIBLE_DEVICES-unset}" in "" | "-1") return 1 ;; esac
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU"
}

# dist_run NAME GPUS SCRIPT NPOS ARGS...: torchrun SCRIPT on GPUS processes per node; --launcher goes
# after the first NPOS (positional) ARGS, before the user's options.
# mmengine's distributed init needs CUDA (torch.cuda.set_device, DDP device_ids): with one process on a
# machine without a GPU, SCRIPT runs without a launcher instead (same config, same outputs).
dist_run() {
  local name=$1 gpus=$2 script=$3 npos=$4
  shift 4
  check_dist_args "$name" "$gpus"
  gpus=$((10#$gpus))
  local pos=("${@:1:$npos}")
  shift "$npos"
  if ! has_gpu; then
    if [ "$gpus" -le 1 ] && [ "$NNODES" -le 1 ]; then
      echo "[$name] no CUDA device: running one process without a launcher" >&2
      exec "$PYTHON" "$ROOT/tools/$script" "${pos[@]}" --launcher none "$@"
    fi
    echo "[$name] $gpus processes x $NNODES nodes requested but no CUDA device is visible; mmengine's" \
         "distributed launch needs GPUs (use GPUS=1 for a single CPU process)" >&2
    exit 1
  fi
  exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" --master_port="$PORT" \
    --nproc_per_node="$gpus" "$ROOT/tools/$script" "${pos[@]}" --launcher pytorch "$@"
}

# slurm_run PARTITION JOB_NAME SCRIPT NPOS ARGS...: one task per GPU (GPUS, GPUS_PER_NODE,
# CPUS_PER_TASK, SRUN_ARGS); mmengine reads the rank layout from the SLURM_* variables.
slurm_run() {
  local partition=$1 job=$2 script=$3 npos=$4
  shift 4
  check_slurm_args "slurm_${script%.py}.sh"
  local pos=("${@:1:$npos}")
  shift "$npos"
  # shellcheck disable=SC2086  # SRUN_ARGS is a list of options
  srun -p "$partition" --job-name="$job" --gres=gpu:"${GPUS_PER_NODE:-8}" --ntasks="${GPUS:-8}" \
    --ntasks-per-node="${GPUS_PER_NODE:-8}" --cpus-per-task="${CPUS_PER_TASK:-5}" --kill-on-bad-exit=1 \
    ${SRUN_ARGS:-} "$PYTHON" -u "$ROOT/tools/$script" "${pos[@]}" --launcher=slurm "$@"
}
