#!/usr/bin/env bash
# Every GPU measurement the open issues ask for, in one call on a lent H100 (device tool, 30 min of device time):
#
#   cp -r ../shared/gpu-wheels gpu-wheels        # git-ignored; name it in the device tool's `carry`
#   bash benchmarks/gpu_session.sh [STEP ...]    # on the GPU machine; results under $OUT (or ./work_dirs/gpu)
#
# Steps (default: all, in this order; each has its own time limit, logs to $OUT/<step>.log, and a failing step does
# not stop the others; the exit status is the number of failed steps):
#   tests      pytest -m gpu (CUDA vs CPU step, bf16, device augmentation, mmcv CUDA ops)
#   pretrain   model-compute img/s + peak memory, ViT-S/16 and ViT-B/16, batch 64, 2x224 + 10x96 (eager, compile)
#   e2e        the same end to end through the real loader from JPEG files (16 workers)
#   dense      UperNet ViT-B/16 vs mmseg's stock ViT-B UperNet (8 x 512), Cascade Mask R-CNN ViT-B/16, bf16
#   transfer   fine-tuning and feature-extraction img/s, ViT-S/16 and ViT-B/16
#   learning   benchmarks/learning_check.py: <= 10 min of pretraining on CIFAR-10, k-NN vs random init
#   demo       tools/demo.py with the GPU defaults
# Record the tables in benchmarks/RESULTS.md with the machine and this command.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/work_dirs/gpu}
mkdir -p "$OUT"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(tests pretrain e2e dense transfer learning demo)

if [ -d gpu-wheels ] && ! python -c "import mmcv.ops" >/dev/null 2>&1; then
  S=$(mktemp -d)
  bash gpu-wheels/install.sh "$S" >"$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
  export PYTHONPATH=$S:$ROOT${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
python -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" >>"$OUT/gpu.txt" 2>&1

jpeg_folder() {  # a 224-px-class JPEG ImageFolder for the end-to-end loader measurement (the scene generator)
  python - "$OUT/e2e_data" <<'PY'
import sys
from ibot.scenes import ensure_scenes
from PIL import Image
from pathlib import Path
src = ensure_scenes(cache_dir=sys.argv[1] + "/cache", image_size=64, n_train_per_class=400, n_val_per_class=1)
dst = Path(sys.argv[1]) / "train"
for p in sorted((src / "classification" / "train").rglob("*.png")):
    q = dst / p.parent.name / (p.stem + ".jpg")
    if not q.exists():
        q.parent.mkdir(parents=True, exist_ok=True)
        Image.open(p).convert("RGB").resize((500, 375), Image.BICUBIC).save(q, quality=90)  # ImageNet-like size
print(dst)
PY
}

failed=0
run() {  # run NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  local t=$(date +%s)
  echo "[gpu_session] $name ..."
  if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
    echo "[gpu_session] $name ok ($(( $(date +%s) - t )) s)"
  else
    echo "[gpu_session] $name FAILED ($(( $(date +%s) - t )) s); tail of $OUT/$name.log:"
    tail -15 "$OUT/$name.log"
    failed=$((failed + 1))
  fi
  tail -25 "$OUT/$name.log"
}

for step in "${STEPS[@]}"; do
  case $step in
    tests)    run tests 300 python -m pytest -q -p no:cacheprovider -m "gpu and not slow" tests/test_gpu.py ;;
    pretrain) run pretrain 420 python benchmarks/pretrain_throughput.py --archs vit_small vit_base --batch 64 \
                --local-crops 10 --steps 20 --warmup 5
              run pretrain_compile 500 python benchmarks/pretrain_throughput.py --archs vit_small vit_base \
                --batch 64 --local-crops 10 --steps 20 --warmup 8 --compile ;;
    e2e)      data=$(jpeg_folder 2>"$OUT/e2e_data.log" | tail -1)
              run e2e 500 python benchmarks/pretrain_throughput.py --archs vit_small vit_base --batch 64 \
                --local-crops 10 --steps 20 --warmup 5 --data "$data" --workers 16 ;;
    dense)    run dense 500 python benchmarks/dense_throughput.py --dtype bf16 fp16 --json "$OUT/dense.json" ;;
    transfer) run transfer 400 python tools/transfer_bench.py --archs vit_small vit_base --out "$OUT/transfer.json" ;;
    learning) run learning 780 python benchmarks/learning_check.py --work-dir "$OUT/learning_check" ;;
    demo)     run demo 900 python tools/demo.py --work-dir "$OUT/demo" ;;
    *)        echo "unknown step $step"; failed=$((failed + 1)) ;;
  esac
done
echo "[gpu_session] done; $failed failed step(s); results in $OUT"
exit "$failed"
