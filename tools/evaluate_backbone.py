#!/usr/bin/env python
"""Take one backbone through the evaluation suite and write one report (see ``python -m ibot.suite --help``).

    python tools/evaluate_backbone.py work_dirs/x/teacher_backbone.pth --suite knn linear robustness det seg \\
        --data-config ibot/suite/configs/scenes.py --work-dir work_dirs/eval/ibot
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ibot.suite.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
