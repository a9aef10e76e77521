#!/usr/bin/env bash
# Idempotent environment setup for the iBOT suite.
#
#   bash tools/setup.sh            # create/refresh .venv (seconds when already in place)
#
# Environment knobs:
#   IBOT_PYTHON=python3.12        interpreter used to create .venv (default: python3, must be >= 3.11)
#   IBOT_SYSTEM_TORCH=1           reuse the torch/torchvision already installed for IBOT_PYTHON
#                                 (GPU images, clusters): .venv gets --system-site-packages
#   IBOT_CACHE_DIR=DIR            where built mmcv wheels are cached (default ~/.cache/ibot-suite)
#   IBOT_MMCV_CUDA=0|1            force CPU-only / CUDA mmcv ops (default: CUDA when nvcc, a CUDA torch
#                                 and a visible GPU or an explicit TORCH_CUDA_ARCH_LIST are present)
#   TORCH_CUDA_ARCH_LIST, MAX_JOBS are passed to the mmcv build.
#   IBOT_NO_CHROMIUM=1            do not install headless Chromium (the HTML report rendering tests need it;
#                                 as root on Debian/Ubuntu it is installed with apt-get when missing)
#
# Each step logs to .venv/setup-logs/<step>.log; on failure the step name and the log tail are printed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PY_BOOT=${IBOT_PYTHON:-python3}
CACHE_DIR=${IBOT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ibot-suite}
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
MMCV_VERSION=2.1.0
LOG_DIR="$VENV/setup-logs"
STAMP="$VENV/.ibot-setup-stamp"
T0=$(date +%s)

step_no=0
STEPS_TOTAL=6
run_step() {  # run_step NAME CMD... : run a step with progress line, log file and clear failure
  local name=$1; shift
  step_no=$((step_no + 1))
  mkdir -p "$LOG_DIR"
  local log="$LOG_DIR/$name.log" t=$(date +%s)
  printf '[setup %d/%d] %-14s ... ' "$step_no" "$STEPS_TOTAL" "$name"
  # A subshell outside any `if`, so `set -e` stays in force inside the step's function.
  local rc=0
  set +e
  ( set -e; "$@" ) >"$log" 2>&1
  rc=$?
  set -e
  if [ "$rc" = 0 ]; then
    printf 'ok (%ss)\n' "$(( $(date +%s) - t ))"
  else
    printf 'FAILED\n'
    echo "setup step '$name' failed; last lines of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}

# What the stamp covers: any change to these files or to the interpreter reruns the full setup.
stamp_value() {
  cat "$ROOT/pyproject.toml" "$ROOT/tools/setup.sh" | sha256sum | cut -d' ' -f1
  echo "${IBOT_SYSTEM_TORCH:-0}"
}

# Headless Chromium renders the HTML reports in the tests. A system package, so installed only where this can
# (root + apt-get); otherwise say so: the rendering tests then fail naming what to install.
have_chromium() {
  for c in "${CHROMIUM:-}" chromium chromium-browser google-chrome chrome headless_shell; do
    [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && return 0
  done
  return 1
}
ensure_chromium() {
  have_chromium && return 0
  [ "${IBOT_NO_CHROMIUM:-0}" = 1 ] && { echo "[setup] chromium: not installed (IBOT_NO_CHROMIUM=1)"; return 0; }
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    mkdir -p "$LOG_DIR"
    printf '[setup] chromium (for the report tests) ... '
    local t=$(date +%s)
    if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           chromium fonts-dejavu-core; } >"$LOG_DIR/chromium.log" 2>&1 && have_chromium; then
      printf 'ok (%ss)\n' "$(( $(date +%s) - t ))"
      return 0
    fi
    printf 'FAILED (log: %s)\n' "$LOG_DIR/chromium.log"
  fi
  echo "[setup] WARNING: no headless Chromium; the HTML report rendering tests will fail." \
       "Install it (e.g. apt-get install -y chromium) or set \$CHROMIUM to a chrome / headless_shell binary." >&2
}

# ---------------------------------------------------------------- fast path
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_value)" ]; then
  if "$VENV/bin/python" -c "import torch, mmcv.ops, mmdet, mmseg, timm, ibot.compat.imagecorruptions" >/dev/null 2>&1; then
    ensure_chromium
    echo "[setup] environment in place ($VENV); nothing to do ($(( $(date +%s) - T0 ))s)"
    exit 0
  fi
fi

# ---------------------------------------------------------------- 1. venv
make_venv() {
  "$PY_BOOT" - <<'PY'
import sys
if sys.version_info < (3, 11):
    raise SystemExit(f"Python >= 3.11 is required, found {sys.version.split()[0]} ({sys.executable})")
PY
  if [ ! -x "$VENV/bin/python" ]; then
    local extra=()
    [ "${IBOT_SYSTEM_TORCH:-0}" = 1 ] && extra=(--system-site-packages)
    "$PY_BOOT" -m venv "${extra[@]}" "$VENV"
  fi
  # setuptools < 82: mmcv's setup.py, mmengine's `mmdet::` config bases and imagecorruptions need
  # pkg_resources; torch 2.14 needs >= 77.0.3.
  "$VENV/bin/python" -m pip install --upgrade pip 'setuptools>=77.0.3,<82' wheel
}
mkdir -p "$VENV"  # so the log dir exists before the venv
run_step venv make_venv
PY="$VENV/bin/python"

# ---------------------------------------------------------------- 2. torch
install_torch() {
  if [ "${IBOT_SYSTEM_TORCH:-0}" = 1 ]; then
    "$PY" -c "import torch, torchvision; print('reusing torch', torch.__version__, 'cuda', torch.version.cuda)"
  elif "$PY" -c "import torch, torchvision, sys; sys.exit(0 if (torch.__version__.split('+')[0], torchvision.__version__.split('+')[0]) == ('2.14.1', '0.29.1') else 1)" 2>/dev/null; then
    echo "torch already installed"
  else
    "$PY" -m pip install "${TORCH_PINS[@]}"
  fi
}
run_step torch install_torch

# ---------------------------------------------------------------- 3. mmcv (cached wheel)
mmcv_key() {  # py / torch / cuda / ops flavour -> cache folder name
  "$PY" - "$1" <<'PY'
import sys, sysconfig, torch
cuda = sys.argv[1] == "1"
tag = f"cp{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__.replace('+', '_')}"
import os
arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "auto").replace(" ", "_").replace(";", "_").replace("+", "p")
print(f"{tag}-cuda{torch.version.cuda}-arch{arch}" if cuda else f"{tag}-cpuops")
PY
}
want_cuda_ops() {
  if [ -n "${IBOT_MMCV_CUDA:-}" ]; then echo "$IBOT_MMCV_CUDA"; return; fi
  if command -v nvcc >/dev/null && "$PY" -c "import torch, os, sys; sys.exit(0 if torch.version.cuda and (torch.cuda.is_available() or os.environ.get('TORCH_CUDA_ARCH_LIST')) else 1)" 2>/dev/null; then
    echo 1
  else
    echo 0
  fi
}
CUDA_OPS=$(want_cuda_ops)
MMCV_CACHE="$CACHE_DIR/wheels/mmcv-$MMCV_VERSION-$(mmcv_key "$CUDA_OPS")"

build_mmcv() {
  if ls "$MMCV_CACHE"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
    echo "cached wheel: $(ls "$MMCV_CACHE"/mmcv-*.whl)"; return 0
  fi
  local work; work=$(mktemp -d)
  # --no-build-isolation: mmcv's setup.py imports torch (and pkg_resources) just to read its metadata.
  "$PY" -m pip download --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$work"
  tar xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
  # torch >= 2.13 headers need C++20; mmcv 2.1.0 hard-codes c++14/c++17.
  local std; std=$("$PY" -c "import torch; v=tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); print('c++20' if v >= (2, 13) else 'c++17')")
  sed -i "s/-std=c++14/-std=$std/g; s/-std=c++17/-std=$std/g" "$work/mmcv-$MMCV_VERSION/setup.py"
  echo "building mmcv $MMCV_VERSION with ops (cuda=$CUDA_OPS, std=$std, jobs=${MAX_JOBS:-$(nproc)})"
  (cd "$work/mmcv-$MMCV_VERSION" && MMCV_WITH_OPS=1 FORCE_CUDA="$CUDA_OPS" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
     "$PY" -m pip wheel -v --no-deps --no-build-isolation -w "$work/dist" .)
  # Publish atomically: a half-built wheel must never be found by a later setup.
  mkdir -p "$(dirname "$MMCV_CACHE")"
  local tmp="$MMCV_CACHE.tmp.$$"
  mkdir -p "$tmp" && cp "$work"/dist/mmcv-*.whl "$tmp"/ && rm -rf "$MMCV_CACHE" && mv "$tmp" "$MMCV_CACHE"
  rm -rf "$work"
  echo "cached wheel: $(ls "$MMCV_CACHE"/mmcv-*.whl)"
}
if ! ls "$MMCV_CACHE"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
  echo "[setup] mmcv $MMCV_VERSION wheel not cached: building it from the sdist (about 30 min on 2 cores; cached in $MMCV_CACHE)"
fi
run_step mmcv build_mmcv
MMCV_WHEEL=$(ls "$MMCV_CACHE"/mmcv-"$MMCV_VERSION"-*.whl | head -n 1)

# ---------------------------------------------------------------- 4. packages
install_packages() {
  # The mmcv wheel on the same command line satisfies the `mmcv==2.1.0` pin without a source build.
  "$PY" -m pip install "$MMCV_WHEEL" -e "$ROOT[test]"
}
run_step packages install_packages

# ---------------------------------------------------------------- 5. check
check_stack() {
  "$PY" - <<'PY'
import importlib.metadata as md
import torch, torchvision, timm, mmengine, mmcv, mmdet, mmseg, numpy, setuptools
from ibot.compat.imagecorruptions import install as install_corruptions
install_corruptions()  # imagecorruptions 1.1.2 needs the compat shim on this stack
from mmcv.ops import nms, RoIAlign
boxes = torch.tensor([[0., 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
scores = torch.tensor([0.9, 0.8, 0.7])
_, keep = nms(boxes, scores, 0.5)
assert keep.tolist() == [0, 2], keep
feat = torch.arange(16.0).view(1, 1, 4, 4)
rois = torch.tensor([[0.0, 0, 0, 4, 4]])
out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)(feat, rois)
assert out.shape == (1, 1, 2, 2) and torch.isfinite(out).all()
import ibot, pretrain, det, seg, robustness, transfer  # noqa: F401  (project packages)
for m in (torch, torchvision, timm, mmengine, mmcv, mmdet, mmseg, numpy, setuptools):
    print(f"{m.__name__:>12} {m.__version__}")
print(f"{'imagecorruptions':>12} {md.version('imagecorruptions')}")
print("mmcv.ops nms + RoIAlign: ok; CUDA available:", torch.cuda.is_available())
PY
}
run_step check check_stack
cat "$LOG_DIR/check.log"
ensure_chromium

stamp_value >"$STAMP"
step_no=$((step_no + 1))
echo "[setup $step_no/$STEPS_TOTAL] done in $(( $(date +%s) - T0 ))s; activate with: source .venv/bin/activate"
