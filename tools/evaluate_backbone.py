"""Take one backbone through the evaluation suite and write one report.

    # k-NN, linear probe, robustness on the embedded scene data (tiny CPU budgets)
    python tools/evaluate_backbone.py ibot_vits16.pth --trust-checkpoint --arch vit_small --patch-size 16 \\
        --suite knn linear robustness --data-config transfer/configs/suite_scenes.py --work-dir work_dirs/eval/ibot
    # the same architecture at random initialisation (baseline)
    python tools/evaluate_backbone.py random --arch vit_small --suite knn linear robustness \\
        --data-config transfer/configs/suite_scenes.py --work-dir work_dirs/eval/random
    # both side by side
    python tools/evaluate_backbone.py --report work_dirs/eval/ibot work_dirs/eval/random --out work_dirs/eval/report

Harnesses: knn, linear, finetune, robustness (uses the linear probe's best head), det, seg. Each runs as a
subprocess of its tool, output under <work-dir>/<harness>/ (log.txt there); finished harnesses are skipped on
re-run; a failing harness is reported and the others still run (exit status 1 at the end). Results:
<work-dir>/results.json, report: <work-dir>/report.md and report.html. Multi-GPU: --launcher pytorch --gpus N
(each distributed tool is started with torch.distributed.run).
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from transfer.suite import HARNESSES, SuiteArgs, failed, load_data_config, run_suite  # noqa: E402
from transfer.suite_report import write_report  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", help="backbone checkpoint (any format ibot.checkpoint reads) or 'random'")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow pickled objects (official full checkpoints); runs code from the file")
    p.add_argument("--checkpoint-key", default=None, help="teacher / student / state_dict ... (default: auto)")
    p.add_argument("--arch", default="vit_small")
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="model shape overrides: model.embed_dim=, model.depth=, model.num_heads=")
    p.add_argument("--suite", nargs="+", default=["knn", "linear", "robustness"], choices=HARNESSES)
    p.add_argument("--data-config", help="data roots and budgets (Python or JSON), e.g. "
                                         "transfer/configs/suite_scenes.py")
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
    for kv in args.set:
        if "=" not in kv:
            p.error(f"--set expects KEY=VALUE, got {kv!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        paths = write_report(args.report, args.out)
        print(f"report: {paths['md']}\n        {paths['html']}")
        return 0
    suite_args = SuiteArgs(
        checkpoint=args.checkpoint, work_dir=args.work_dir, data_config=load_data_config(args.data_config),
        suite=args.suite, arch=args.arch, patch_size=args.patch_size, img_size=args.img_size,
        overrides=dict(kv.split("=", 1) for kv in args.set), trust_checkpoint=args.trust_checkpoint,
        checkpoint_key=args.checkpoint_key, name=args.name, launcher=args.launcher, gpus=args.gpus, seed=args.seed)
    try:
        record = run_suite(suite_args)
    except Exception as exc:  # the checkpoint could not be turned into a backbone: nothing ran
        print(f"[suite] error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    paths = write_report([args.work_dir], args.work_dir)
    print(f"[suite] results: {os.path.join(args.work_dir, 'results.json')}\n[suite] report: {paths['html']}")
    bad = failed(record, args.suite)
    if bad:
        for h in bad:
            e = record["harnesses"].get(h, {})
            print(f"[suite] FAILED {h}: {e.get('error')} (log: {e.get('log')})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
