"""The three protocol tools end to end on CPU: a tiny ViT on a real CIFAR-10 subset (../shared/data), result
JSONs, feature caching, exact resumption, refusal of a changed config, the leaderboard tool on the results,
a self-describing backbone file run with no shape flags through ``python -m transfer.cli``, and torchrun with two
gloo processes."""
from __future__ import annotations

import hashlib
import json
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, shared_data_path

from ibot.checkpoint import StateDictMismatchError, describe_backbone, load_file, save_backbone, save_file
from ibot.features import FeatureSpec
from ibot.vit import build_vit
from transfer import state as state_module
from transfer.knn import knn_accuracy, knn_scores
from transfer.results import SCHEMA
from transfer.state import ResumeMismatchError
from transfer.subset import make_imagefolder_subset

TINY = ["--arch", "vit_tiny", "--patch-size", "8", "--img-size", "32", "--num-workers", "0", "--no-progress",
        "--set", "model.embed_dim=32", "model.depth=2", "model.num_heads=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Disjoint train (8 per class + 1 = 81) / test (4 per class = 40) subsets of the real CIFAR-10 images; the odd
    train size gives uneven shards under torchrun."""
    cifar10_test = shared_data_path("cifar10", "test")
    root = tmp_path_factory.mktemp("cifar10_subset")
    make_imagefolder_subset(cifar10_test, root, train_per_class=8, test_per_class=4, seed=0)
    used = {p.name for p in (root / "train" / "cat").iterdir()} | {p.name for p in (root / "test" / "cat").iterdir()}
    extra = next(p for p in sorted((cifar10_test / "cat").iterdir()) if p.name not in used)
    (root / "train" / "cat" / extra.name).symlink_to(extra)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An official-style full checkpoint (teacher + DDP student with the mask token) of a tiny ViT."""
    torch.manual_seed(0)
    student = build_vit("vit_tiny", embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32,
                        masked_im_modeling=True)
    teacher = {f"backbone.{k}": v.clone() for k, v in student.state_dict().items() if k != "masked_embed"}
    path = tmp_path_factory.mktemp("ckpt") / "tiny_ibot.pth"
    save_file({"student": {f"module.backbone.{k}": v for k, v in student.state_dict().items()},
               "teacher": teacher, "epoch": 1}, path)
    return path


def run_tool(tool: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``tools/<tool>`` in this process (same code path as the command line, without interpreter start-up)."""
    monkeypatch.setattr(sys, "argv", [tool, *args])
    runpy.run_path(str(REPO / "tools" / tool), run_name="__main__")


def read(out: Path) -> dict:
    with open(out / "result.json") as fh:
        return json.load(fh)


def common(data: Path, checkpoint: Path, out: Path) -> list[str]:
    return ["--dataset", "cifar10", "--data-root", str(data), "--pretrained", str(checkpoint),
            "--output-dir", str(out), "--model-name", "tiny-ibot", "--pretrain-data", "none", *TINY]


KNN_ARGS = ["ks=[1,5,20]"]
LINEAR_ARGS = ["--epochs", "2", "--batch-size", "16", "--set", "lrs=[0.001,0.1,1.0]",
               "features=[{'n_last_blocks':2,'avgpool':False},{'n_last_blocks':1,'avgpool':True}]"]
FINETUNE_ARGS = ["--epochs", "2", "--batch-size", "16", "--layer-decay", "0.75", "--set", "sched.warmup_epochs=1"]
TOOLS = {"knn": ("transfer_knn.py", KNN_ARGS), "linear": ("transfer_linear.py", LINEAR_ARGS),
         "finetune": ("transfer_finetune.py", FINETUNE_ARGS)}


@pytest.fixture(scope="module")
def runs(data: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One uninterrupted run of each tool (module scope: the tests below inspect them).

    One intra-op thread, as conftest's ``single_thread`` gives every test: that fixture is function-scoped, so it
    is not yet active while this module-scoped fixture runs, and the resumed runs must replay the same float
    reductions bit for bit."""
    base = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for protocol, (tool, args) in TOOLS.items():
            run_tool(tool, common(data, checkpoint, base / protocol) + args, mp)
    finally:
        torch.set_num_threads(threads)
        mp.undo()
    return {p: base / p for p in TOOLS}


def test_result_files_describe_the_run(runs: dict[str, Path], checkpoint: Path, data: Path) -> None:
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    for protocol, out in runs.items():
        r = read(out)
        assert r["schema"] == SCHEMA and r["protocol"] == protocol and r["seed"] == 0
        assert r["model"]["checkpoint_sha256"] == sha and r["model"]["name"] == "tiny-ibot"
        assert r["model"]["params"] == sum(p.numel() for p in build_vit(
            "vit_tiny", embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32).parameters())
        assert "30 tensors loaded, 0 missing, 0 unexpected" in r["model"]["load_report"]
        # a foreign checkpoint: its description inferred from the tensors, the flags filling in the head count
        assert r["model"]["described"] is False and r["model"]["description"] == {
            "family": "vit", "arch": "vit_tiny", "patch_size": 8, "img_size": 32, "embed_dim": 32, "depth": 2,
            "num_heads": 2}
        assert r["dataset"] == {"name": "cifar10", "reader": "cifar10", "root": str(data), "num_classes": 10,
                                "num_train": 81, "num_test": 40, "train_split": "train", "test_split": "test"}
        assert r["config"]["protocol"] == protocol and r["config"]["model"]["embed_dim"] == 32
        assert 0.0 <= r["metric"]["value"] <= 100.0 and r["env"]["world_size"] == 1 and r["env"]["amp"] is None


def test_knn_run_matches_its_cached_features_and_reuses_them(runs: dict[str, Path], data: Path, checkpoint: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    r = read(runs["knn"])
    assert r["metric"]["name"] == "top1@k=20" and r["metric"]["value"] == r["metrics"]["top1@k=20"]
    assert r["metrics"]["features_from_cache"] == {"train": False, "test": False}
    assert r["metrics"]["feature"] == {"n_last_blocks": 1, "pooling": "cls"}
    caches = [load_file(p) for p in sorted((runs["knn"] / "features").glob("*.pth"))]
    train = next(c for c in caches if c["labels"].numel() == 81)
    test = next(c for c in caches if c["labels"].numel() == 40)
    assert train["features"][0].shape == (81, 32)
    scores = knn_scores(train["features"][0], train["labels"], test["features"][0], [1, 5, 20], 0.07, 10)
    for k in (1, 5, 20):
        assert r["metrics"][f"top1@k={k}"] == pytest.approx(knn_accuracy(scores[k], test["labels"])["top1"])
    run_tool("transfer_knn.py", common(data, checkpoint, runs["knn"]) + KNN_ARGS, monkeypatch)
    again = read(runs["knn"])
    assert again["metrics"]["features_from_cache"] == {"train": True, "test": True}
    assert {k: v for k, v in again["metrics"].items() if k.startswith("top")} == \
           {k: v for k, v in r["metrics"].items() if k.startswith("top")}


def test_linear_run_trains_the_sweep(runs: dict[str, Path]) -> None:
    r = read(runs["linear"])
    m = r["metrics"]
    assert m["heads"] == ["cls2 lr=0.001", "cls2 lr=0.1", "cls2 lr=1", "cls1+avgpool lr=0.001",
                          "cls1+avgpool lr=0.1", "cls1+avgpool lr=1"]
    assert m["lrs_effective"] == pytest.approx([lr * 16 / 256 for lr in (0.001, 0.1, 1.0)] * 2)
    # feature specs as dicts: one per head, and the best head's (what the suite hands to robustness)
    assert m["head_features"] == [{"n_last_blocks": 2, "pooling": "cls"}] * 3 + \
        [{"n_last_blocks": 1, "pooling": "cls+avgpool"}] * 3
    assert m["heads"][m["best_head_index"]] == m["best_head"]
    assert m["best_feature"] == m["head_features"][m["best_head_index"]]
    assert FeatureSpec.from_dict(m["best_feature"]).label == m["best_head"].split()[0]
    assert r["config"]["features"] == [{"n_last_blocks": 2, "pooling": "cls"},
                                       {"n_last_blocks": 1, "pooling": "cls+avgpool"}]
    assert [h["epoch"] for h in r["history"]] == [1, 2]
    assert m["best_top1"] == max(max(h["top1"]) for h in r["history"]) == r["metric"]["value"]
    ckpt = load_file(runs["linear"] / "checkpoint.pth")
    assert ckpt["epoch"] == 2 and len([k for k in ckpt["sweep"] if k.endswith("weight")]) == 6
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == pytest.approx([0.0] * 6, abs=1e-12)  # cosine end


def test_finetune_run(runs: dict[str, Path]) -> None:
    r = read(runs["finetune"])
    m = r["metrics"]
    assert m["lr_effective"] == pytest.approx(7.5e-6 * 16 / 512)
    assert [h["epoch"] for h in r["history"]] == [1, 2] and all("top1" in h and "top5" in h for h in r["history"])
    assert r["metric"]["value"] == m["top1_best"] == max(h["top1"] for h in r["history"])
    assert r["history"][0]["lr"] == pytest.approx(1e-6)  # warm-up start
    ckpt = load_file(runs["finetune"] / "checkpoint.pth")
    assert ckpt["model"]["head.weight"].shape == (10, 32) and len(ckpt["rng"]) == 1
    # --layer-decay 0.75 over a depth-2 backbone: embeddings 0.75^3, blocks 0.75^2 and 0.75, norm + head 1
    scales = sorted({g["lr_scale"] for g in ckpt["optimizer"]["param_groups"]})
    assert scales == pytest.approx([0.75 ** 3, 0.75 ** 2, 0.75, 1.0])
    assert r["config"]["optim"]["layer_decay"] == 0.75


def test_linear_on_cached_features(data: Path, checkpoint: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    run_tool("transfer_linear.py", common(data, checkpoint, tmp_path) + [
        "--epochs", "1", "--batch-size", "16", "--set", "train_aug=false", "lrs=[0.01,0.1]",
        "features=[{'n_last_blocks':1,'avgpool':False}]"], monkeypatch)
    r = read(tmp_path)
    assert len(r["metrics"]["heads"]) == 2 and len(list((tmp_path / "features").glob("*.pth"))) == 2


def _interrupt_after_first_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    real = state_module.save_state

    def save_then_crash(output_dir, state):
        real(output_dir, state)
        raise KeyboardInterrupt("simulated interruption after epoch 1")

    monkeypatch.setattr(state_module, "save_state", save_then_crash)


@pytest.mark.parametrize("protocol", ["finetune", "linear"])
def test_resume_reproduces_the_uninterrupted_run(protocol: str, runs: dict[str, Path], data: Path, checkpoint: Path,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool, args = TOOLS[protocol]
    straight, resumed = runs[protocol], tmp_path / "resumed"
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m)
        with pytest.raises(KeyboardInterrupt):
            run_tool(tool, common(data, checkpoint, resumed) + args, m)
    assert load_file(resumed / "checkpoint.pth")["epoch"] == 1 and not (resumed / "result.json").exists()
    run_tool(tool, common(data, checkpoint, resumed) + args, monkeypatch)
    a, b = load_file(straight / "checkpoint.pth"), load_file(resumed / "checkpoint.pth")
    key = "model" if protocol == "finetune" else "sweep"
    assert a[key].keys() == b[key].keys()
    for k in a[key]:
        assert torch.equal(a[key][k], b[key][k]), k
    ra, rb = read(straight), read(resumed)
    assert [h["loss"] for h in ra["history"]] == [h["loss"] for h in rb["history"]]
    assert ra["metric"] == rb["metric"]


def test_resume_refuses_a_changed_config(runs: dict[str, Path], data: Path, checkpoint: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ResumeMismatchError, match=r"optim.lr: checkpoint 7.5e-06 vs now 0.001"):
        run_tool("transfer_finetune.py", common(data, checkpoint, runs["finetune"]) + FINETUNE_ARGS + ["--lr", "1e-3"],
                 monkeypatch)


def test_leaderboard_tool_on_the_runs(runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_tool("transfer_leaderboard.py", [str(p) for p in runs.values()] + ["--out", str(tmp_path / "lb"), "--paper"],
             monkeypatch)
    md = (tmp_path / "lb.md").read_text()
    assert "| Model | Params | Pretrain data | CIFAR-10 k-NN | CIFAR-10 linear | CIFAR-10 fine-tune | Mean |" in md
    row = next(line for line in md.splitlines() if line.startswith("| tiny-ibot |"))
    assert row.count("–") == 0  # all three protocols present, so a mean
    for fmt, marker in (("csv", "cifar10/linear_best"), ("html", "<td>tiny-ibot</td>"),
                        ("tex", r"\multicolumn{3}{c}{CIFAR-10}")):
        assert marker in (tmp_path / f"lb.{fmt}").read_text()


def test_missing_data_fails_with_the_layout(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transfer.datasets import DatasetLayoutError

    with pytest.raises(DatasetLayoutError, match=r"flowers102(.|\n)*imagelabels\.mat(.|\n)*robots\.ox\.ac\.uk"):
        run_tool("transfer_knn.py", ["--dataset", "flowers102", "--data-root", str(tmp_path), "--pretrained",
                                     str(checkpoint), "--output-dir", str(tmp_path / "o"), *TINY], monkeypatch)


@pytest.fixture(scope="module")
def described(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The checkpoint's teacher weights as a self-describing backbone file (``ibot.checkpoint.save_backbone``)."""
    model = build_vit("vit_tiny", embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32)
    teacher = load_file(checkpoint)["teacher"]
    model.load_state_dict({k[len("backbone."):]: v for k, v in teacher.items()})
    desc = describe_backbone(model)
    path = tmp_path_factory.mktemp("described") / "tiny_backbone.pth"
    save_backbone(path, model.state_dict(), desc, {"from": "test"})
    return path, desc


def run_module(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m transfer.cli ARGS`` in this process (the entry point the suite launches)."""
    monkeypatch.setattr(sys, "argv", ["transfer.cli", *args])
    monkeypatch.delitem(sys.modules, "transfer.cli", raising=False)  # as in a fresh interpreter: run, not imported
    runpy.run_module("transfer.cli", run_name="__main__", alter_sys=False)


def test_described_backbone_needs_no_shape_flags(described: tuple[Path, dict], runs: dict[str, Path], data: Path,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No --arch / --patch-size / model.* flags: the file's description builds the model; same weights as the
    foreign checkpoint, so the same k-NN numbers."""
    path, desc = described
    assert desc["arch"] is None and desc["embed_dim"] == 32  # no preset of this size: only the file can say
    run_module(["knn", "--dataset", "cifar10", "--data-root", str(data), "--pretrained", str(path), "--output-dir",
                str(tmp_path), "--img-size", "32", "--num-workers", "0", "--no-progress", "--set", *KNN_ARGS],
               monkeypatch)
    r, foreign = read(tmp_path), read(runs["knn"])
    m = r["model"]
    assert m["described"] is True and m["description"] == desc and m["source"] == {"from": "test"}
    assert m["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert m["name"] == "vit-32x2/8 (tiny_backbone)" and (m["arch"], m["patch_size"]) == (None, 8)
    assert "30 tensors loaded, 0 missing, 0 unexpected" in m["load_report"]
    assert r["config"]["model"]["arch"] is None and r["config"]["model"]["patch_size"] is None
    for k in ("top1@k=1", "top5@k=1", "top1@k=5", "top1@k=20", "top5@k=20"):
        assert r["metrics"][k] == pytest.approx(foreign["metrics"][k], abs=1e-9), k


def test_described_backbone_flags_override_strictly(described: tuple[Path, dict], data: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A flag that contradicts the file builds the model it asks for, which then refuses the weights."""
    with pytest.raises(StateDictMismatchError, match=r"tiny_backbone\.pth' \(described as .*does not fit"):
        run_module(["knn", "--dataset", "cifar10", "--data-root", str(data), "--pretrained", str(described[0]),
                    "--output-dir", str(tmp_path), "--img-size", "32", "--num-workers", "0", "--no-progress",
                    "--set", "model.depth=3"], monkeypatch)


def test_module_entry_point_names_the_protocols(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit, match=r"python -m transfer.cli \{finetune,knn,linear\} ARGS"):
        run_module(["kmeans", "--dataset", "cifar10"], monkeypatch)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tool: str, args: list[str]) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2`` of ``tools/<tool>``, or of a module for ``tool = '-m <module> <protocol>'``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    target = tool.split() if tool.startswith("-m ") else [str(REPO / "tools" / tool)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), *target, *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_torchrun_knn_equals_single_process(runs: dict[str, Path], data: Path, checkpoint: Path,
                                            tmp_path: Path) -> None:
    """Two gloo processes shard the 81 / 40 images unevenly; gathered features must give the same answer (launched
    as the suite does, through the module entry point)."""
    _torchrun("-m transfer.cli knn", common(data, checkpoint, tmp_path) + KNN_ARGS)
    ddp, single = read(tmp_path), read(runs["knn"])
    assert ddp["env"]["world_size"] == 2
    for k in ("top1@k=1", "top1@k=5", "top1@k=20", "top5@k=20"):
        assert ddp["metrics"][k] == pytest.approx(single["metrics"][k], abs=1e-9), k


@pytest.mark.slow
@pytest.mark.parametrize("tool, extra", [
    ("transfer_finetune.py", ["--epochs", "2", "--batch-size", "8"]),
    ("transfer_linear.py", ["--epochs", "2", "--batch-size", "8", "--set", "lrs=[0.01,0.1]",
                            "features=[{'n_last_blocks':1,'avgpool':True}]"]),
])
def test_torchrun_training(tool: str, extra: list[str], data: Path, checkpoint: Path, tmp_path: Path) -> None:
    _torchrun(tool, common(data, checkpoint, tmp_path) + extra)
    r = read(tmp_path)
    assert r["env"]["world_size"] == 2 and len(r["history"]) == 2
    assert len(load_file(tmp_path / "checkpoint.pth")["rng"]) == 2  # one RNG snapshot per process
