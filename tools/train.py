#!/usr/bin/env python
"""Train an MMDetection 3 or MMSegmentation 1 model from a config: a shim over ``python -m det.cli train``.

    python tools/train.py CONFIG [--backbone FILE] [--work-dir DIR] [--resume [CKPT]] [--amp [fp16|bf16]]
        [--data-root DIR] [--trust-checkpoint] [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

Multi-GPU / multi-node: tools/dist_train.sh; Slurm: tools/slurm_train.sh.
"""
from __future__ import annotations

import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:  # configs import the repository's packages (custom_imports=['det'] / ['seg'])
    sys.path.insert(0, ROOT)

from det.cli import cli_train as main  # noqa: E402

if __name__ == "__main__":
    main()
