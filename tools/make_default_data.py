#!/usr/bin/env python
"""Generate the embedded default data set (shape scenes on scikit-image's photos; nothing is downloaded).

    python tools/make_default_data.py                      # into the cache (~/.cache/ibot-suite/scenes/<hash>)
    python tools/make_default_data.py --out data/scenes    # into a folder of your choice
    python tools/make_default_data.py --train-per-class 200 --scenes-train 1000 --seed 1

Prints the data set folder on the last line.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ibot.scenes import SHAPES, SceneSpec, ensure_scenes, generate_scenes  # noqa: E402


def _parse(argv: list[str] | None) -> argparse.Namespace:
    d = SceneSpec()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="output folder (default: the cache, reused when it already holds these settings)")
    p.add_argument("--cache-dir", help="cache root (default: $IBOT_CACHE_DIR/scenes or ~/.cache/ibot-suite/scenes)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--image-size", type=int, default=d.image_size, help="classification image side (px)")
    p.add_argument("--scene-size", type=int, default=d.scene_size, help="COCO / ADE scene side (px)")
    p.add_argument("--train-per-class", type=int, default=d.n_train_per_class)
    p.add_argument("--val-per-class", type=int, default=d.n_val_per_class)
    p.add_argument("--scenes-train", type=int, default=d.n_scenes_train)
    p.add_argument("--scenes-val", type=int, default=d.n_scenes_val)
    p.add_argument("--objects-per-scene", type=int, nargs=2, default=d.objects_per_scene, metavar=("MIN", "MAX"))
    p.add_argument("--classes", default=",".join(d.classes), help=f"comma-separated, from {','.join(SHAPES)}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = _parse(argv)
    params = dict(seed=a.seed, image_size=a.image_size, scene_size=a.scene_size,
                  n_train_per_class=a.train_per_class, n_val_per_class=a.val_per_class,
                  n_scenes_train=a.scenes_train, n_scenes_val=a.scenes_val,
                  objects_per_scene=tuple(a.objects_per_scene), classes=tuple(a.classes.split(",")))
    start = time.perf_counter()
    if a.out:
        generate_scenes(a.out, overwrite=a.overwrite, **params)
        root = Path(a.out).resolve()
    else:
        root = ensure_scenes(a.cache_dir, **params)
    print(f"default data ready in {time.perf_counter() - start:.1f}s (see {root / 'README.md'}):", file=sys.stderr)
    print(root)


if __name__ == "__main__":
    main()
