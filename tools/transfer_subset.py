#!/usr/bin/env python
"""Link a class-balanced, disjoint train/test subset of an ImageFolder (for smoke runs).

    python tools/transfer_subset.py ../shared/data/cifar10/test work_dirs/cifar10_subset --train 50 --test 20
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from transfer.subset import make_imagefolder_subset  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="ImageFolder: <src>/<class>/<image>")
    p.add_argument("dst", help="output: <dst>/{train,test}/<class>/<image> (symbolic links)")
    p.add_argument("--train", type=int, required=True, help="images per class in train/")
    p.add_argument("--test", type=int, required=True, help="images per class in test/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--copy", action="store_true", help="copy files instead of linking")
    a = p.parse_args()
    print(make_imagefolder_subset(a.src, a.dst, a.train, a.test, a.seed, a.copy))
