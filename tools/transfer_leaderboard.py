#!/usr/bin/env python
"""Collect transfer result JSONs into a leaderboard (Markdown, CSV, HTML, LaTeX).

    python tools/transfer_leaderboard.py work_dirs/transfer --out work_dirs/leaderboard --paper

An unreadable (e.g. truncated) result file stops it with an error naming the file; --skip-invalid leaves such files
out with a warning. A run whose metric is not an accuracy in [0, 100] shows as an "invalid" cell, never the best.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from transfer.leaderboard import main  # noqa: E402

if __name__ == "__main__":
    main()
