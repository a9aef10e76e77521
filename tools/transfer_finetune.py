#!/usr/bin/env python
"""Fine-tuning of a pretrained backbone (DeiT recipe of the iBOT paper) on a transfer data set.

    python tools/transfer_finetune.py --dataset cifar10 --data-root /data/cifar --pretrained ckpt.pth
    torchrun --nproc_per_node 8 tools/transfer_finetune.py ...        # multi-GPU
    python -m transfer.cli finetune --dataset cifar10 ...              # the same, as a module (what the suite runs)
    python tools/transfer_finetune.py --dataset cifar10 --print-config  # every setting, for --set key=value
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from transfer.cli import main  # noqa: E402

if __name__ == "__main__":
    main("finetune")
