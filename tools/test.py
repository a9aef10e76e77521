#!/usr/bin/env python
"""Evaluate an MMDetection 3 or MMSegmentation 1 checkpoint: a shim over ``python -m det.cli test``.

    python tools/test.py CONFIG CHECKPOINT [--backbone FILE] [--work-dir DIR] [--data-root DIR]
        [--trust-checkpoint] [--metrics-json FILE] [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

Multi-GPU: tools/dist_test.sh; Slurm: tools/slurm_test.sh.
"""
from __future__ import annotations

import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:  # configs import the repository's packages (custom_imports=['det'] / ['seg'])
    sys.path.insert(0, ROOT)

from det.cli import cli_test as main  # noqa: E402

if __name__ == "__main__":
    main()
