#!/usr/bin/env python
"""Generate the embedded default data set (shape scenes on scikit-image's photos; nothing is downloaded).

    python tools/make_default_data.py                      # into the cache (~/.cache/ibot-suite/scenes/<hash>)
    python tools/make_default_data.py --out data/scenes    # into a folder of your choice
    python tools/make_default_data.py --train-per-class 200 --scenes-train 1000 --seed 1

Prints the data set folder on the last line. See ``python -m ibot.scenes --help``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ibot.scenes import main  # noqa: E402

if __name__ == "__main__":
    main()
