#!/usr/bin/env python
"""Classification robustness of a backbone + linear head (or a timm / torchvision classifier): ImageNet-C,
occlusion, backgrounds, OOD. The same as ``python -m robustness.cli <command>`` (see robustness/cli.py)::

    python tools/robustness_eval.py imagenet-c --backbone backbone.pth --head head.pth --data /data/imagenet/val \
        --out results/model.json
    # your own images + foreground masks, labelled by class folder (images/<class>/x.jpg, masks/<class>/x.png)
    python tools/robustness_eval.py backgrounds --backbone backbone.pth --head head.pth --images my/images \
        --masks my/masks --labels-from folders --fg-crop --out results/model.json
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from robustness.cli import main, run_command_line  # noqa: E402, F401  (main: the API tests call)

if __name__ == "__main__":
    sys.exit(run_command_line())
