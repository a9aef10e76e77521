#!/usr/bin/env python
"""COCO-C / ADE20K-C robustness of an mmdet / mmseg config + checkpoint; ``python -m robustness.cli dense``::

    python tools/robustness_dense.py CONFIG CKPT --out results/x.json [--trust-checkpoint]
    torchrun --nproc_per_node=8 tools/robustness_dense.py CONFIG CKPT --out results/x.json --launcher pytorch
"""
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from robustness import cli  # noqa: E402


def main(argv: Sequence[str] | None = None, on_cell_done: Callable[..., None] | None = None) -> dict:
    return cli.main(["dense", *(sys.argv[1:] if argv is None else argv)], on_cell_done)


if __name__ == "__main__":
    sys.exit(cli.run_command_line(["dense", *sys.argv[1:]]))  # bad input: one error line, exit status 2
