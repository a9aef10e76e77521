"""Command line of the suite runner (``tools/evaluate_backbone.py``, ``python -m ibot.suite``).

    # any backbone file: its shape comes from the file (described files) or from its tensors (foreign files)
    python -m ibot.suite work_dirs/x/teacher_backbone.pth --suite knn linear robustness det seg \\
        --data-config ibot/suite/configs/scenes.py --work-dir work_dirs/eval/ibot
    # the same ViT at random initialisation (baseline): --like takes the description of a backbone file
    python -m ibot.suite random --like work_dirs/x/teacher_backbone.pth --suite knn linear robustness \\
        --data-config ibot/suite/configs/scenes.py --work-dir work_dirs/eval/random
    # both side by side
    python -m ibot.suite --report work_dirs/eval/ibot work_dirs/eval/random --out work_dirs/eval/report

Harnesses: knn, linear, finetune, robustness (uses the linear probe's best head), det, seg. Each runs as a
subprocess of its package CLI, output under <work-dir>/<harness>/ (log.txt there); finished harnesses are skipped
on re-run; a failing harness is reported and the others still run (exit status 1 at the end; 2 when the checkpoint
cannot be read and nothing ran). Results: <work-dir>/results.json, report: <work-dir>/report.md and report.html.
Shape options (--arch, --patch-size, ...) are needed only for `random` without --like, or to override a file.
Multi-GPU: --launcher pytorch --gpus N (each distributed harness is started with torch.distributed.run).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ibot.suite.harnesses import RUNNERS
from ibot.suite.report import write_report
from ibot.suite.runner import SuiteRequest, failed, load_data_config, run_suite

__all__ = ["main", "parse_args"]

#: option -> backbone description key (optional overrides; the whole description for `random` without --like)
SHAPE_OPTIONS = {"arch": str, "patch_size": int, "img_size": int, "embed_dim": int, "depth": int, "num_heads": int}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ibot.suite", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", help="backbone checkpoint (any format ibot.checkpoint reads) or 'random'")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow pickled objects (official full checkpoints); runs code from the file")
    p.add_argument("--checkpoint-key", default=None, help="teacher / student / state_dict ... (default: auto)")
    shape = p.add_argument_group("backbone description (overrides the file's; for `random` without --like)")
    for name, kind in SHAPE_OPTIONS.items():
        shape.add_argument("--" + name.replace("_", "-"), type=kind, default=None)
    p.add_argument("--like", metavar="BACKBONE", help="with `random`: the description of this backbone file")
    p.add_argument("--suite", nargs="+", default=["knn", "linear", "robustness"], choices=list(RUNNERS))
    p.add_argument("--data-config", help="data roots and budgets (Python or JSON), e.g. ibot/suite/configs/scenes.py")
    p.add_argument("--work-dir")
    p.add_argument("--name", help="backbone name in reports (default: the checkpoint's stem)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--launcher", choices=["none", "pytorch"], default="none")
    p.add_argument("--gpus", type=int, default=1, help="processes per harness with --launcher pytorch")
    p.add_argument("--report", nargs="+", metavar="WORKDIR", help="only write a side-by-side report of work dirs")
    p.add_argument("--out", help="report folder for --report")
    args = p.parse_args(argv)
    if args.report:
        if not args.out:
            p.error("--report needs --out")
    elif not (args.checkpoint and args.data_config and args.work_dir):
        p.error("CHECKPOINT, --data-config and --work-dir are required (or --report WORKDIR... --out DIR)")
    if args.like and args.checkpoint != "random":
        p.error("--like goes with the checkpoint `random`")
    return args


def request_from_args(args: argparse.Namespace) -> SuiteRequest:
    model: dict[str, Any] = {k: getattr(args, k) for k in SHAPE_OPTIONS if getattr(args, k) is not None}
    return SuiteRequest(
        backbone=args.checkpoint, work_dir=args.work_dir, data_config=load_data_config(args.data_config),
        harnesses=args.suite, name=args.name, trust_checkpoint=args.trust_checkpoint,
        checkpoint_key=args.checkpoint_key, model=model, like=args.like, launcher=args.launcher, gpus=args.gpus,
        seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        paths = write_report(args.report, args.out)
        print(f"report: {paths['md']}\n        {paths['html']}")
        return 0
    request = request_from_args(args)
    try:
        record = run_suite(request, log=lambda line: print(f"[suite] {line}", flush=True))
    except Exception as exc:  # noqa: BLE001 - the checkpoint could not be turned into a backbone: nothing ran
        print(f"[suite] error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    paths = write_report([args.work_dir], args.work_dir)
    print(f"[suite] results: {os.path.join(args.work_dir, 'results.json')}\n[suite] report: {paths['html']}")
    bad = failed(record, args.suite)
    for h in bad:
        e = record["harnesses"].get(h, {})
        print(f"[suite] FAILED {h}: {e.get('error')} (log: {e.get('log')})", file=sys.stderr)
    return 1 if bad else 0
