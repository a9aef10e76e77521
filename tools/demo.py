#!/usr/bin/env python
"""The main job (``bash tools/demo.sh``): scene data, iBOT pretraining, the whole suite on the pretrained and the
random-init backbone, one report. See :mod:`ibot.suite.demo`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ibot.suite.demo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
