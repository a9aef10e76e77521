#!/usr/bin/env python
"""Turn robustness result files (one per model) into ``report.md``, a self-contained ``report.html`` (plots embedded
as base64 PNGs), ``summary.json`` and ``plots/*.png``.

    python tools/robustness_report.py results/ibot_vits16.json results/dino_vits16.json --out-dir report/
    # normalise on-the-fly ImageNet-C CE by an AlexNet evaluated the same way instead of the published table:
    python tools/robustness_report.py results/*.json --baseline results/alexnet.json --out-dir report/
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustness.report import build_report  # noqa: E402


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="result JSON files written by robustness_eval.py / robustness_dense.py")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--title", default="Robustness report")
    p.add_argument("--baseline", help="result file of a baseline model (e.g. AlexNet) to normalise ImageNet-C CE")
    args = p.parse_args(argv)
    summary = build_report(args.results, args.out_dir, title=args.title, baseline_file=args.baseline)
    out = Path(args.out_dir)
    print(f"wrote {out / 'report.md'}, {out / 'report.html'}, {out / 'summary.json'} "
          f"({len(summary['models'])} model(s), {len(summary['plots'])} plot(s))")
    return summary


if __name__ == "__main__":
    main()
