#!/usr/bin/env python
"""Throughput of the batched corruption engine against imagecorruptions 1.1.2, side by side in one run.

For each image size and each corruption x severity cell it times

* the reference: ``ibot.compat.imagecorruptions.corrupt`` in a process pool with ``--workers`` processes (default:
  as many as cores; what the suite's data-loader workers do), images sent to and returned from the workers;
* the engine: :func:`robustness.corruption_engine.corrupt_batch` on a uint8 batch (``--device``; on the CPU split
  over ``--workers`` threads with one intra-op thread each),

and prints images/s per corruption (all severities timed) and the time of the full sweep (every corruption at every
severity) per image, with the speed-ups. Each cell is warmed up once (frost textures cached) before timing::

    python benchmarks/corruption_speed.py                        # 15 corruptions x 5 severities, 224x224 and 640x480
    python benchmarks/corruption_speed.py --quick                # severity 3 only, fewer images
    python benchmarks/corruption_speed.py --sizes 224x224 --corruptions glass_blur zoom_blur --device cuda

Input: real photos from ``../shared/data`` (tiny COCO, GrabCut, CamVid), resized to each size. Glass blur's reference
takes seconds per image (a Python loop over pixels), so it is timed on ``--workers`` images only.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from robustness.corruption_engine import COMMON, CORRUPTIONS, corrupt_batch  # noqa: E402
from robustness.corruption_engine.weather import _frost_size, frost_texture  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PHOTO_GLOBS = ("tiny_coco/train_2017_small/*.jpg", "grabcut/images/*.jpg", "camvid/val/*.jpg")


def load_photos(n: int, width: int, height: int) -> list[np.ndarray]:
    """``n`` real photos as uint8 ``(height, width, 3)`` (bilinear resize), cycling if there are fewer files."""
    files = [f for pattern in PHOTO_GLOBS for f in sorted(SHARED.glob(pattern))]
    if not files:
        raise SystemExit(f"no photos under {SHARED} (see its README)")
    out = []
    for i in range(n):
        with Image.open(files[i % len(files)]) as im:
            out.append(np.asarray(im.convert("RGB").resize((width, height), Image.BILINEAR)))
    return out


# --------------------------------------------------------------------------- #
# reference side (runs in worker processes)
# --------------------------------------------------------------------------- #
def _init_worker() -> None:
    import cv2

    from ibot.compat.imagecorruptions import install

    cv2.setNumThreads(1)  # one process per core already
    install()


def _reference_task(args: tuple[np.ndarray, str, int, int]) -> np.ndarray:
    from ibot.compat.imagecorruptions import corrupt

    image, name, severity, seed = args
    np.random.seed(seed)
    return corrupt(image, name, severity)


def time_reference(pool: ProcessPoolExecutor, photos: Sequence[np.ndarray], name: str, severity: int,
                   repeats: int) -> float:
    """Seconds per image for the reference on ``photos`` in the pool (median of ``repeats``, after one warm-up image
    per worker)."""
    warm = [(photos[i % len(photos)], name, severity, i) for i in range(pool._max_workers)]  # noqa: SLF001
    list(pool.map(_reference_task, warm))
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        list(pool.map(_reference_task, [(p, name, severity, r * len(photos) + i) for i, p in enumerate(photos)]))
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / len(photos)


# --------------------------------------------------------------------------- #
# engine side
# --------------------------------------------------------------------------- #
def time_engine(batch: torch.Tensor, name: str, severity: int, workers: int, repeats: int) -> float:
    """Seconds per image for the engine on ``batch`` (median of ``repeats`` after a warm-up)."""
    keys = [f"img{i}" for i in range(batch.shape[0])]
    if name == "frost":  # steady state: the resized textures are cached after the first images of a size
        h, w = batch.shape[-2:]
        for index in range(5):
            frost_texture(index, *_frost_size(index, h, w), str(batch.device))
    corrupt_batch(batch[:2], name, severity, keys[:2], workers=workers)
    times = []
    for r in range(repeats):
        if batch.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        corrupt_batch(batch, name, severity, keys, seed=r, workers=workers)
        if batch.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / batch.shape[0]


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["224x224", "640x480"], help="WxH")
    p.add_argument("--corruptions", nargs="+", default=list(COMMON), choices=CORRUPTIONS, metavar="NAME",
                   help="default: the 15 benchmark corruptions")
    p.add_argument("--severities", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="reference processes and engine CPU threads (default: cores)")
    p.add_argument("--ref-images", type=int, default=None, help="images per reference cell (default 4 x workers, "
                   "2 x workers above 300k pixels; glass blur: workers)")
    p.add_argument("--engine-images", type=int, default=None, help="engine batch (default 32, 8 above 300k pixels)")
    p.add_argument("--repeats", type=int, default=3, help="timings per cell (median; glass blur's reference: 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="severity 3 only, half the images, one timing per cell")
    args = p.parse_args(argv)
    if args.quick:
        args.severities, args.repeats = [3], 1
    torch.set_num_threads(1)
    device = torch.device(args.device)
    engine_workers = args.workers if device.type == "cpu" else 1
    results: dict = {}
    with ProcessPoolExecutor(args.workers, initializer=_init_worker) as pool:
        for size in args.sizes:
            width, height = (int(v) for v in size.lower().split("x"))
            big = width * height > 300_000
            n_ref = args.ref_images or (2 if big else 4) * args.workers
            n_eng = args.engine_images or (8 if big else 32)
            if args.quick:
                n_ref, n_eng = max(args.workers, n_ref // 2), max(2, n_eng // 2)
            photos = load_photos(max(n_ref, n_eng), width, height)
            batch = torch.stack([torch.from_numpy(p.copy()).permute(2, 0, 1) for p in photos[:n_eng]]).to(device)
            rows = {}
            for name in args.corruptions:
                ref_t, eng_t = [], []
                for severity in args.severities:
                    ref_photos = photos[:args.workers] if name == "glass_blur" else photos[:n_ref]
                    ref_t.append(time_reference(pool, ref_photos, name, severity,
                                                1 if name == "glass_blur" else args.repeats))
                    eng_t.append(time_engine(batch, name, severity, engine_workers, args.repeats))
                rows[name] = (sum(ref_t), sum(eng_t))
                print(f"  {size} {name:18s} reference {len(ref_t) / sum(ref_t):8.2f} img/s   engine "
                      f"{len(eng_t) / sum(eng_t):8.2f} img/s   x{sum(ref_t) / sum(eng_t):.1f}", flush=True)
            results[size] = rows
    print_table(results, args)
    return results


def print_table(results: dict, args: argparse.Namespace) -> None:
    n_sev = len(args.severities)
    print(f"\nimages/s per corruption (mean over severities {args.severities}); reference: {args.workers} processes; "
          f"engine: {args.device}, {args.workers if args.device == 'cpu' else 1} thread(s), batched\n")
    sizes = list(results)
    header = "| corruption | " + " | ".join(f"{s} reference | {s} engine | {s} speed-up" for s in sizes) + " |"
    print(header)
    print("|" + "---|" * (1 + 3 * len(sizes)))
    for name in args.corruptions:
        cells = []
        for s in sizes:
            ref, eng = results[s][name]
            cells += [f"{n_sev / ref:.2f}", f"{n_sev / eng:.2f}", f"{ref / eng:.1f}x"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    cells = []
    for s in sizes:
        ref = sum(r for r, _ in results[s].values())
        eng = sum(e for _, e in results[s].values())
        cells += [f"{ref:.2f} s", f"{eng:.3f} s", f"{ref / eng:.1f}x"]
    print(f"| **sweep** ({len(args.corruptions)} x {n_sev}, s/image) | " + " | ".join(cells) + " |")
    slowest = min((results[s][n][0] / results[s][n][1], s, n) for s in sizes for n in args.corruptions)
    print(f"\nslowest engine/reference ratio: {slowest[0]:.2f}x ({slowest[2]} at {slowest[1]})")


if __name__ == "__main__":
    main()
