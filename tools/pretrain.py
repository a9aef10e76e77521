#!/usr/bin/env python
"""iBOT pretraining: ``python tools/pretrain.py CONFIG [--work-dir DIR] [--cfg-options k=v ...]``.

    python tools/pretrain.py pretrain/configs/ibot_vit-s16_800e_in1k.py --cfg-options data.root=/data/in1k/train
    bash tools/dist_pretrain.sh CONFIG 8 [args]             # multi-GPU (torchrun)
    python -m pretrain.cli CONFIG [args]                    # the same, as a module

Resumes from the newest usable checkpoint in the work dir (``--no-resume`` to refuse, ``--resume PATH`` for a given
checkpoint, ``--force-resume`` to continue with changed settings); see ``pretrain/cli.py``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pretrain.cli import main  # noqa: E402

if __name__ == "__main__":
    main(prog="tools/pretrain.py")
