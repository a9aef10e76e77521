"""Newcomer frictions of the transfer harness, each on a user's own train/val ImageFolder of real CIFAR-10 images
(../shared/data) and a tiny randomly initialised ViT:

1. a ``train/`` + ``val/`` ImageFolder runs (the test split falls back to ``val/``, said in the log and the result);
   a missing split is one line naming the folders found and the option (``--test-split`` / ``--train-split``);
2. the leaderboard column of an ImageFolder is its ``data.tag`` or its data root's folder name, not "imagefolder";
3. ``--paper`` adds no rows of "–" for data sets the paper never ran;
4. a "chance (majority class)" row from the results' test class counts, never marked best;
5. a note that linear / fine-tune cells are the best test score over epochs (and the lr sweep), with the counts;
6. fine-tuning with a schedule that never reaches its peak, or a tiny effective lr, warns (log + result.json).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, shared_data_path

from transfer.cli import build_parser, config_from_args
from transfer.datasets import SplitNotFoundError, resolve_imagefolder_splits
from transfer.finetune import TINY_LR, schedule_warnings
from transfer.leaderboard import CHANCE, build_table, to_csv, to_html, to_markdown
from transfer.leaderboard import main as leaderboard
from transfer.recipes import resolve
from transfer.results import SCHEMA

TINY = ["--arch", "vit_tiny", "--patch-size", "8", "--img-size", "32", "--num-workers", "0", "--no-progress",
        "--model-name", "tiny", "--set", "model.embed_dim=32", "model.depth=2", "model.num_heads=2"]
KNN = ["ks=[1,5]", "report_k=5"]
#: per class: 3 train images and 1 val image; 'cat' gets 3 more val images -> val majority 4 / 13
TRAIN_PER_CLASS, VAL_PER_CLASS, EXTRA_CATS = 3, 1, 3


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src.resolve())


@pytest.fixture(scope="module")
def pets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/my_pets/{train,val}/<class>/*.jpg``: a user's own ImageFolder with no ``test/`` folder (30 train and
    13 val images, the val set unbalanced)."""
    src = shared_data_path("cifar10", "test")
    root = tmp_path_factory.mktemp("user") / "my_pets"
    for c in sorted(d.name for d in src.iterdir() if d.is_dir()):
        files = sorted((src / c).iterdir())
        n_val = VAL_PER_CLASS + (EXTRA_CATS if c == "cat" else 0)
        for f in files[:TRAIN_PER_CLASS]:
            _link(f, root / "train" / c / f.name)
        for f in files[TRAIN_PER_CLASS:TRAIN_PER_CLASS + n_val]:
            _link(f, root / "val" / c / f.name)
    return root


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m transfer.cli ARGS`` in this process."""
    monkeypatch.setattr(sys, "argv", ["transfer.cli", *args])
    monkeypatch.delitem(sys.modules, "transfer.cli", raising=False)
    runpy.run_module("transfer.cli", run_name="__main__", alter_sys=False)


def read(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def runs(pets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """k-NN, linear and fine-tune runs on ``my_pets`` (the fine-tune with the paper recipe: 5 warm-up epochs of 2,
    lr 7.5e-6 per 512 images at a batch of 10). The split is named here (``--set data.test_split=val``, which the
    harness always took), so that these runs test the other items independently of the fallback."""
    base = tmp_path_factory.mktemp("runs")
    extra = {"knn": ["--set", *KNN],
             "linear": ["--epochs", "2", "--batch-size", "10", "--set", "lrs=[0.01,0.1,1.0]",
                        "features=[{'n_last_blocks':1,'pooling':'cls'}]"],
             "finetune": ["--epochs", "2", "--batch-size", "10"]}
    mp = pytest.MonkeyPatch()
    try:
        for protocol, args in extra.items():
            run_cli([protocol, "--dataset", "imagefolder", "--data-root", str(pets), "--output-dir",
                     str(base / protocol), *TINY, *args, "--set", "data.test_split=val"], mp)
    finally:
        mp.undo()
    return {p: base / p for p in extra}


# --------------------------------------------------------------------------------- 1. train / val ImageFolder
def test_train_val_imagefolder_tests_on_val_and_says_so(pets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Only --dataset imagefolder --data-root: no test/ folder, so val/ is the test split, said at info level and
    recorded in the result."""
    with caplog.at_level(logging.INFO, logger="transfer.session"):
        run_cli(["knn", "--dataset", "imagefolder", "--data-root", str(pets), "--output-dir", str(tmp_path),
                 *TINY, "--set", *KNN], monkeypatch)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("no 'test/' folder under" in m and "testing on 'val/' instead" in m for m in infos), infos
    r = read(tmp_path)
    assert r["dataset"]["test_split"] == "val" and r["config"]["data"]["test_split"] == "val"
    assert (r["dataset"]["num_train"], r["dataset"]["num_test"]) == (30, 13)
    assert len(r["notes"]) == 1 and "testing on 'val/' instead" in r["notes"][0] and "--test-split" in r["notes"][0]


def _splits(root: Path, *names: str) -> Path:
    for n in names:
        (root / n / "a").mkdir(parents=True)
    return root


def test_missing_split_is_one_line_naming_the_folders_and_the_option(tmp_path: Path, pets: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    both = _splits(tmp_path / "both", "train", "val", "validation")
    with pytest.raises(SplitNotFoundError) as err:
        resolve_imagefolder_splits(both)
    msg = str(err.value)
    assert "\n" not in msg and "'train/', 'val/', 'validation/'" in msg and "--set data.test_split=NAME" in msg
    assert "neither is picked" in msg
    other = _splits(tmp_path / "other", "train", "holdout")
    with pytest.raises(SplitNotFoundError, match=r"folders there: 'holdout/', 'train/'\).*--test-split NAME"):
        resolve_imagefolder_splits(other)
    with pytest.raises(SplitNotFoundError, match=r"no train split folder 'train/'.*--train-split NAME"):
        resolve_imagefolder_splits(_splits(tmp_path / "notrain", "training", "val"))
    # an explicitly named test folder is never swapped for another one
    with pytest.raises(SplitNotFoundError, match="no test split folder 'tst/'"):
        resolve_imagefolder_splits(pets, test_split="tst")
    # through the command line: a one-line exit, and nothing written
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as exit_:
        run_cli(["knn", "--dataset", "imagefolder", "--data-root", str(both), "--output-dir", str(out), *TINY],
                monkeypatch)
    assert "\n" not in str(exit_.value.code) and "--set data.test_split=NAME" in str(exit_.value.code)
    assert not out.exists()


def test_missing_split_prints_no_traceback(tmp_path: Path) -> None:
    root = _splits(tmp_path / "mine", "train", "val", "validation")
    proc = subprocess.run([sys.executable, "-m", "transfer.cli", "knn", "--dataset", "imagefolder", "--data-root",
                           str(root), "--output-dir", str(tmp_path / "o"), "--no-progress"],
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith("transfer.cli knn: error: imagefolder: no test split folder 'test/'")
    assert "'train/', 'val/', 'validation/'" in lines[0] and "--test-split NAME" in lines[0]


def test_split_options(pets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser("linear").parse_args(["--dataset", "imagefolder", "--train-split", "training",
                                              "--test-split", "holdout", "--tag", "pets"])
    data = config_from_args("linear", args)["data"]
    assert (data["train_split"], data["test_split"], data["tag"]) == ("training", "holdout", "pets")
    assert resolve_imagefolder_splits(pets, "train", "val") == ("train", "val", [])
    # --test-split names the folder: here the training images are evaluated (a deliberate choice, no note)
    run_cli(["knn", "--dataset", "imagefolder", "--data-root", str(pets), "--test-split", "train", "--output-dir",
             str(tmp_path), *TINY, "--set", *KNN], monkeypatch)
    r = read(tmp_path)
    assert r["dataset"]["test_split"] == "train" and r["dataset"]["num_test"] == 30 and r["notes"] == []


def test_other_train_split_keeps_its_class_list(tmp_path: Path, pets: Path) -> None:
    """With --train-split training, a test split missing a class still labels by the training folder's classes."""
    from transfer.datasets import build_dataset

    root = tmp_path / "d"
    for c in ("ant", "bee", "cat"):
        (root / "training" / c).mkdir(parents=True)
        (root / "training" / c / "0.jpg").symlink_to(next((pets / "train" / "cat").iterdir()))
    for c in ("ant", "cat"):
        (root / "val" / c).mkdir(parents=True)
        (root / "val" / c / "0.jpg").symlink_to(next((pets / "val" / "cat").iterdir()))
    val = build_dataset("imagefolder", root, "val", train_split="training")
    assert val.classes == ["ant", "bee", "cat"] and val.targets == [0, 2]


# ---------------------------------------------------------------------------------------- 2. column name
def test_imagefolder_column_is_the_root_folder_or_the_tag(runs: dict[str, Path], pets: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    r = read(runs["knn"])
    assert r["dataset"]["name"] == "my_pets" and r["dataset"]["reader"] == "imagefolder"
    md = to_markdown(build_table([r]))
    assert "| my_pets k-NN |" in md and "imagefolder" not in md.splitlines()[0]
    run_cli(["knn", "--dataset", "imagefolder", "--data-root", str(pets) + "/", "--tag", "pets-v2", "--output-dir",
             str(tmp_path), *TINY, "--set", *KNN], monkeypatch)
    assert read(tmp_path)["dataset"]["name"] == "pets-v2"
    # a result written before the rule (dataset.name 'imagefolder') gets the same column
    old = dict(r, dataset={**r["dataset"], "name": "imagefolder"})
    assert build_table([old]).columns == [("my_pets", "knn")]


# ------------------------------------------------------------------------------------------- 3. --paper rows
def rec(model: str, dataset: str, protocol: str, value: float, **extra: object) -> dict:
    return {"schema": SCHEMA, "protocol": protocol, "seed": 0, "model": {"name": model, "params": 5_000_000},
            "dataset": {"name": dataset}, "metric": {"name": "top1", "value": value}, **extra}


def test_paper_rows_only_where_the_paper_reports(tmp_path: Path) -> None:
    mine = [rec("mine", "my_pets", "knn", 50.0), rec("mine", "cifar10", "knn", 60.0)]
    t = build_table(mine, references=True)
    assert [r.name for r in t.rows] == ["mine"]  # the paper ran neither column: no rows of "–"
    assert "(paper)" not in to_markdown(t) and "Zhou et al." not in to_markdown(t)
    t = build_table(mine + [rec("mine", "cifar10", "finetune", 90.0)], references=True)
    paper = [r for r in t.rows if r.reference]
    assert [r.name for r in paper] == ["iBOT ViT-S/16 (paper)", "iBOT ViT-B/16 (paper)"]
    assert all(list(r.cells) == [("cifar10", "finetune")] for r in paper)
    assert "| iBOT ViT-S/16 (paper)† | 21.0M | IN-1k | – | 99.1 | – | – |" in to_markdown(t)


# ---------------------------------------------------------------------------------------- 4. chance row
def test_result_records_the_test_class_counts(runs: dict[str, Path]) -> None:
    for out in runs.values():
        chance = read(out)["chance"]
        assert sum(chance["test_class_counts"]) == 13 and len(chance["test_class_counts"]) == 10
        assert chance["majority_class"] == "cat" and chance["test_class_counts"][chance["majority_index"]] == 4
        assert chance["majority_top1"] == pytest.approx(100 * 4 / 13)


def test_chance_row_is_labelled_and_never_best() -> None:
    chance = {"test_class_counts": [6, 2, 2], "majority_index": 0, "majority_class": "a", "majority_top1": 60.0}
    records = [rec("weak", "pets", "knn", 40.0, chance=chance), rec("weak", "pets", "linear", 70.0, chance=chance),
               rec("weak", "other", "knn", 30.0)]  # a result without counts: no chance cell there
    t = build_table(records)
    row = t.rows[-1]
    assert row.name == CHANCE == "chance (majority class)" and row.baseline
    assert row.cells[("pets", "knn")].mean == 60.0 and ("other", "knn") not in row.cells
    assert t.best()[("pets", "knn")] == 40.0  # above the model, still not the best
    md = to_markdown(t)
    assert "| chance (majority class) | – | – | – | 60.0 | 60.0 | – |" in md
    assert "| weak | 5.0M | unknown | **30.0** | **40.0** | **70.0** | **46.7** |" in md
    assert "most frequent class" in md
    html = to_html(t)
    assert "<td>chance (majority class)</td>" in html and "<td>60.0</td>" in html and "<b>60.0</b>" not in html
    rows = {r["model"]: r for r in csv.DictReader(io.StringIO(to_csv(t)))}
    assert rows[CHANCE]["pets/knn"] == "60.0" and rows[CHANCE]["pets/knn_best"] == "0"
    assert build_table([rec("x", "pets", "knn", 40.0)]).rows[-1].name == "x"  # no counts anywhere: no row


# ---------------------------------------------------------------------------- 5. best-over-epochs footnote
def test_note_on_best_over_epochs_and_heads(runs: dict[str, Path], tmp_path: Path) -> None:
    out = leaderboard([str(p) for p in runs.values()] + ["--out", str(tmp_path / "lb"), "--formats", "md", "html"])
    for fmt in ("md", "html"):
        text = out[fmt]
        assert "best test top-1 over the evaluated epochs" in text and "learning-rate sweep" in text, fmt
        assert "my_pets linear: best of 3 heads x 2 evaluated epochs on 13 test images" in text, fmt
        assert "my_pets fine-tune: best of 2 evaluated epochs on 13 test images" in text, fmt
        assert "chance (majority class)" in text and "30.8" in text, fmt
    assert read(runs["linear"])["metric"]["selected_over"] == {"heads": 3, "epochs": 2}
    assert read(runs["finetune"])["metric"]["selected_over"] == {"epochs": 2}
    assert "selected_over" not in read(runs["knn"])["metric"]
    knn_only = to_markdown(build_table([read(runs["knn"])]))
    assert "best test top-1 over" not in knn_only  # no such columns: no note
    last = read(runs["finetune"])
    last["config"]["report"], last["metric"]["selection"] = "last", "test top-1 after the last epoch"
    del last["metric"]["selected_over"]
    assert "best test top-1 over" not in to_markdown(build_table([last]))


def test_note_counts_from_older_result_files() -> None:
    """Files without metric.selected_over: the heads and evaluated epochs are read from metrics and history."""
    old = rec("m", "cifar10", "linear", 80.0, metrics={"heads": ["a", "b"]},
              history=[{"epoch": 1, "top1": [1, 2]}, {"epoch": 2, "loss": 1.0}, {"epoch": 3, "top1": [3, 4]}])
    old["dataset"]["num_test"] = 500
    assert "CIFAR-10 linear: best of 2 heads x 2 evaluated epochs on 500 test images" in to_markdown(build_table([old]))


# --------------------------------------------------------------------------------- 6. fine-tune schedule
def test_finetune_paper_recipe_on_a_small_set_warns(runs: dict[str, Path]) -> None:
    r = read(runs["finetune"])
    assert r["config"]["sched"]["warmup_epochs"] == 5 and r["config"]["epochs"] == 2
    warnings = r["warnings"]
    assert len(warnings) == 2, warnings
    schedule, lr = warnings
    assert "sched.warmup_epochs = 5 >= epochs = 2" in schedule and "never reaches its peak" in schedule
    assert "--set sched.warmup_epochs=N" in schedule
    assert "effective peak lr is 1.46e-07" in lr and "optim.lr 7.5e-06 x total batch 10 / optim.lr_batch_ref 512" in lr
    assert "--lr" in lr and "optim.lr_batch_ref=10" in lr
    log_text = (runs["finetune"] / "log.txt").read_text()
    assert "WARNING" in log_text and "never reaches its peak" in log_text
    for protocol in ("knn", "linear"):
        assert read(runs[protocol])["warnings"] == []


def test_schedule_warnings_only_when_due() -> None:
    paper = resolve("finetune", "cifar10", {"batch_size": 96})
    assert schedule_warnings(paper, world=8) == []  # the iBOT run: 8 x 96 images, 1000 epochs
    short = resolve("finetune", "imagefolder", {"epochs": 5, "batch_size": 16})
    assert [w.split(":")[0] for w in schedule_warnings(short)] == ["fine-tune schedule", "fine-tune lr"]
    fixed = resolve("finetune", "imagefolder", {"epochs": 5, "batch_size": 16, "optim": {"lr": 5e-4},
                                                "sched": {"warmup_epochs": 1}})
    assert schedule_warnings(fixed) == [] and 5e-4 * 16 / 512 > TINY_LR
