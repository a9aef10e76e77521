#!/usr/bin/env python
"""Robustness result files -> report.md, report.html, summary.json; ``python -m robustness.cli report``::

    python tools/robustness_report.py results/a.json results/b.json --out-dir report/ [--baseline alexnet.json]
"""
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from robustness import cli  # noqa: E402


def main(argv: Sequence[str] | None = None) -> dict:
    return cli.main(["report", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(cli.run_command_line(["report", *sys.argv[1:]]))  # bad input: one error line, exit status 2
