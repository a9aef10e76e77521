#!/usr/bin/env python
"""Throughput of the ImageNet-C corruptions (imagecorruptions 1.1.2 via ibot.compat) on the CPU.

Prints images/s per corruption at 224² and at COCO size (640×427) for one process, and the speed-up of running them
in ``--workers`` processes (what the data-loader workers of ``python -m robustness.cli imagenet-c`` / ``dense`` do)::

    python benchmarks/corruptions.py                         # all 19 corruptions, severity 3, 224² and 640×427
    python benchmarks/corruptions.py --sizes 224x224 --corruptions glass_blur zoom_blur --repeats 5 --workers 4

Input: a real photo (``--image``; default: the first tiny-COCO image under ../shared/data if present, else a smooth
synthetic image). Times are medians of ``--repeats`` calls after one warm-up; glass blur dominates (~5 s per 224²
image, pure-Python pixel shuffles), so a full 224² sweep takes about a minute.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ibot.compat.imagecorruptions import corrupt, get_corruption_names  # noqa: E402

_DEFAULT_IMAGE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny_coco" / "train_2017_small"


def _image(path: str | None, w: int, h: int) -> np.ndarray:
    src = Path(path) if path else None
    if src is None and _DEFAULT_IMAGE.is_dir():
        src = next(iter(sorted(_DEFAULT_IMAGE.glob("*.jpg"))), None)
    if src is not None:
        with Image.open(src) as im:
            return np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR))
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([128 + 100 * np.sin(xx / 17.0), 128 + 100 * np.cos(yy / 23.0), 128 + 60 * np.sin((xx + yy) / 31.0)],
                   axis=-1)
    return rgb.clip(0, 255).astype(np.uint8)


def _time_one(args: tuple[np.ndarray, str, int, int]) -> float:
    img, name, severity, repeats = args
    np.random.seed(0)
    corrupt(img, name, severity)  # warm-up (imports, frost files)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        corrupt(img, name, severity)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _parallel_rate(img: np.ndarray, name: str, severity: int, workers: int, n_images: int) -> float:
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_corrupt_once, [(img, name, severity)] * workers))  # start + warm the workers
        t = time.perf_counter()
        list(pool.map(_corrupt_once, [(img, name, severity)] * n_images))
        return n_images / (time.perf_counter() - t)


def _corrupt_once(args: tuple[np.ndarray, str, int]) -> None:
    corrupt(*args)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["224x224", "640x427"], help="WxH")
    p.add_argument("--corruptions", nargs="+", default=None, help="default: all 19")
    p.add_argument("--severity", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=0, help="also measure images/s with this many processes")
    p.add_argument("--image", help="RGB photo to corrupt (resized to each size)")
    args = p.parse_args(argv)
    names = args.corruptions or get_corruption_names("all")
    rows = []
    for size in args.sizes:
        w, h = (int(v) for v in size.lower().split("x"))
        img = _image(args.image, w, h)
        print(f"\n{w}x{h}, severity {args.severity}, median of {args.repeats} (1 process"
              + (f"; and {args.workers} processes" if args.workers else "") + ")")
        header = f"{'corruption':<20}{'ms/img':>10}{'img/s':>10}"
        if args.workers:
            header += f"{'img/s ×' + str(args.workers):>14}"
        print(header, flush=True)
        total = 0.0
        for name in names:
            sec = _time_one((img, name, args.severity, args.repeats))
            total += sec
            row = {"size": size, "corruption": name, "severity": args.severity, "ms_per_image": 1e3 * sec,
                   "images_per_s": 1.0 / sec}
            line = f"{name:<20}{1e3 * sec:>10.1f}{1.0 / sec:>10.2f}"
            if args.workers:
                rate = _parallel_rate(img, name, args.severity, args.workers, max(2 * args.workers, 4))
                row["images_per_s_parallel"] = rate
                line += f"{rate:>14.2f}"
            rows.append(row)
            print(line, flush=True)
        print(f"{'all ' + str(len(names)):<20}{1e3 * total:>10.1f}{1.0 / total:>10.3f}"
              "   (one image through every corruption)")
    return rows


if __name__ == "__main__":
    main()
