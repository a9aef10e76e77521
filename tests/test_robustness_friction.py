"""Newcomer frictions of the classification robustness harness, each pinned by a test:

1. occlusion levels are shown as typed (0.25 was "IL 0.2", 0.75 "IL 0.8");
2. "mean err (15)" / "(19)" need every corruption x severity, the mean over a subset has its own labelled column;
3. masks with too little foreground are skipped with a warning (--min-fg), the crop can centre on the object
   (--fg-crop), and how many images matched a mask is logged — for background variants and mask occlusion;
4. --images needs labels (a JSON file, class folders or file-name prefixes), --per-class works with it;
5. --seed seeds a random head, so two runs give the same cells;
6. AlexNet-normalised CE / mCE only for ImageNet data (or with --baseline); expected user errors are one line.

Runs use a tiny self-describing ViT (32 px, patch 4) on generated folders, a second or two each.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from robustness_helpers import check_html_report, foreground_folder, png_folder, shared_data_path, tiny_model_files

from robustness import backgrounds, cli, imagenet_c, occlusion, report
from robustness.backgrounds import ForegroundImages, read_image_mask_folder
from robustness.data import DataLayoutError, imagenet_synsets
from robustness.metrics import BENCHMARK_CORRUPTIONS
from robustness.report import build_report
from robustness.store import ConfigMismatchError, ResultStore

RUN = ["--resize", "0", "--crop", "32", "--workers", "0", "--batch-size", "8", "--no-progress", "--log-level",
       "WARNING"]
#: A random ViT-Tiny (depth 2, patch 4, 32 px) with a random 10-class head: no model file at all.
RANDOM_MODEL = ["--arch", "vit_tiny", "--depth", "2", "--patch-size", "4", "--img-size", "32", "--num-classes", "10"]


@pytest.fixture()
def model(tmp_path: Path) -> list[str]:
    backbone, head = tiny_model_files(tmp_path / "model")
    return ["--backbone", str(backbone), "--head", str(head)]


def _md_row(md: str, first: str, section: str = "## ImageNet-C") -> list[str]:
    """The cells of the first table row starting with ``first`` after the heading ``section``."""
    lines = md.splitlines()
    lines = lines[lines.index(section):]
    line = next(line for line in lines if line.startswith(f"| {first} |"))
    return [c.strip() for c in line.split("|")[1:-1]]


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("robustness.cli: error: ") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err


# ------------------------------------------------------------------------------------------------ 1. levels
def test_occlusion_levels_are_shown_exactly(tmp_path: Path, model: list[str]) -> None:
    """--levels 0.25 0.75 are 'IL 0.25' / 'IL 0.75' in the table and the plot (``:.1f`` printed 0.2 / 0.8)."""
    out = tmp_path / "r.json"
    cli.main(["occlusion", *model, "--data", str(png_folder(tmp_path / "data")), "--modes", "random", "--levels",
              "0", "0.25", "0.5", "0.75", "--grid", "8", "8", "--out", str(out), *RUN])
    summary = build_report([out], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| Model | mode | IL 0.0 | IL 0.25 | IL 0.5 | IL 0.75 |" in md
    assert "IL 0.2 " not in md and "IL 0.8" not in md
    assert {"IL 0.25", "IL 0.75"} <= set(check_html_report(tmp_path / "report" / "report.html", 1).headers)
    assert [occlusion.format_level(lv) for lv in (0, 0.1, 0.25, 0.5, 0.75, 0.125, 1)] == [
        "0.0", "0.1", "0.25", "0.5", "0.75", "0.125", "1.0"]
    fig = report._occlusion_figure(summary["models"], [0.0, 0.25, 0.5, 0.75])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0.0", "0.25", "0.5", "0.75"]
    # a level finer than the key's two decimals keeps its own key and its exact value
    assert [c.key for c in occlusion.cells([0], ["random"], [0.12, 0.125])] == ["random/0.12", "random/0.125"]
    curve = occlusion.summarize({"random/0.125": {"acc": 0.5, "level": 0.125}, "random/0.12": {"acc": 0.6}})
    assert curve["curves"]["random"]["level"] == [0.12, 0.125]


# ------------------------------------------------------------------------------------------------ 2. mean err
def test_mean_err_15_and_19_need_every_cell_and_the_subset_mean_is_labelled(tmp_path: Path) -> None:
    cells: dict[str, dict] = {"clean": {"err": 0.2, "acc": 0.8}}
    errs = []
    for k, c in enumerate(("gaussian_noise", "fog", "contrast", "speckle_noise")):  # 4 corruptions x 3 severities
        for s in (1, 3, 5):
            cells[f"{c}/{s}"] = {"err": 0.3 + 0.1 * k + 0.01 * s, "acc": 0.7 - 0.1 * k - 0.01 * s}
            errs.append(0.3 + 0.1 * k + 0.01 * s)
    inc = imagenet_c.summarize(cells)
    assert inc["mce"] is None and inc["mean_err_15"] is None and inc["mean_err_19"] is None
    assert inc["n_cells"] == 12 and inc["mean_err_cells"] == pytest.approx(np.mean(errs))

    store = ResultStore(tmp_path / "subset.json", model="subset")
    store.open_group("imagenet_c", {"dataset": "imagenet"})
    store.put_many("imagenet_c", cells)
    build_report([tmp_path / "subset.json"], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert ("| Model | Clean err | mCE | rel. mCE | mean err (15) | mean err (19) | mean err (12 cells) | "
            "CE normalised by |") in md
    assert _md_row(md, "subset")[1:7] == ["20.0", "–", "–", "–", "–", f"{100 * np.mean(errs):.1f}"]

    full = {f"{c}/{s}": {"err": 0.1 * s} for c in BENCHMARK_CORRUPTIONS for s in range(1, 6)}
    inc = imagenet_c.summarize({**full, "fog/5": {"err": 0.9}, "speckle_noise/1": {"err": 0.2}})
    assert inc["mean_err_15"] == pytest.approx((0.3 * 14 + (0.1 + 0.2 + 0.3 + 0.4 + 0.9) / 5) / 15)
    assert inc["mean_err_19"] is None and inc["n_cells"] == 76  # 3 extra corruptions missing


# ------------------------------------------------------------------------------------------------ 3. foreground
def test_min_fg_skips_small_masks_and_fg_crop_centres_the_object(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    # bee_1: one foreground pixel; bee_2: an 8 x 8 object in the corner of a 48 px image, outside the centre crop
    boxes = {"bee_1": (0, 1, 0, 1), "bee_2": (0, 8, 0, 8)}
    images, masks = foreground_folder(tmp_path / "fg", "prefix", size=48, boxes=boxes)
    samples = read_image_mask_folder(images, masks, labels_from="prefix")
    base = ForegroundImages(samples, None, 32)  # centre crop: rows / columns 8..40
    with caplog.at_level(logging.WARNING, "robustness.backgrounds"):
        kept, scan = backgrounds.select_foregrounds(base, 0.01)
    assert [s.key for s in kept.samples] == ["ant_0.png", "ant_1.png", "ant_2.png", "bee_0.png"]
    assert [k for k, _ in scan.skipped] == ["bee_1.png", "bee_2.png"] and scan.shapes == {(32, 32)}
    warning = caplog.records[-1].getMessage()
    assert "2 of 6 images have less than 1 % foreground" in warning and "bee_1.png" in warning, warning
    assert "bee_2.png" in warning and "--min-fg" in warning

    centred = ForegroundImages(samples, None, 32, fg_crop=True)
    kept, scan = backgrounds.select_foregrounds(centred, 0.01)
    assert [k for k, _ in scan.skipped] == ["bee_1.png"]  # 1 of 1024 pixels
    img, fg = centred.arrays([s.key for s in samples].index("bee_2.png"))
    full = np.asarray(Image.open(images / "bee_2.png").convert("RGB"))
    assert np.array_equal(img, full[:32, :32]) and fg[:8, :8].all() and fg.sum() == 64  # window clamped to the corner
    i = [s.key for s in samples].index("ant_0.png")  # a centred object: the same crop as CenterCrop
    assert all(np.array_equal(a, b) for a, b in zip(centred.arrays(i), base.arrays(i)))
    with pytest.raises(DataLayoutError, match="all 6 have less than 60 %"):
        backgrounds.select_foregrounds(base, 0.6)  # the centred objects cover 24 x 24 of 32 x 32
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks / "ant_0.png")
    with pytest.raises(DataLayoutError, match=r"ant_0\.png is 10 x 10.*ant_0\.png 48 x 48"):
        backgrounds.select_foregrounds(base, 0.01)


def test_cli_images_masks_min_fg_fg_crop_labels_from_folders(tmp_path: Path, model: list[str],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    images, masks = foreground_folder(tmp_path / "fg", "folders", size=48,
                                      boxes={"bee_1": (0, 1, 0, 1), "bee_2": (0, 8, 0, 8)})
    flags = ["--images", str(images), "--masks", str(masks), "--labels-from", "folders", *RUN]
    variants = ["--variants", "original", "only_fg", "mixed_same", "mixed_rand"]
    caplog.set_level(logging.INFO)
    cells = cli.main(["backgrounds", *model, *flags, *variants, "--out", str(tmp_path / "a.json")])
    assert all(c["total"] == 4 for c in cells.values())  # bee/1 (1 px) and bee/2 (cut by the crop) skipped
    text = caplog.text
    assert "6 of 6 images in" in text and "matched a mask" in text
    assert "labels from class folders: 2 classes (ant=0, bee=1)" in text
    assert "6 of 6 images with a mask got a label" in text
    assert "2 of 6 images have less than 1 % foreground" in text and "bee/1.png" in text and "bee/2.png" in text

    cells = cli.main(["backgrounds", *model, *flags, *variants, "--fg-crop", "--out", str(tmp_path / "b.json")])
    assert all(c["total"] == 5 for c in cells.values())  # the corner object is kept with an object-centred crop
    config = json.loads((tmp_path / "b.json").read_text())["groups"]["backgrounds"]["config"]
    assert config["min_fg"] == 0.01 and config["fg_crop"] is True and config["labels_from"] == "folders"
    cells = cli.main(["backgrounds", *model, *flags, *variants, "--min-fg", "0", "--out", str(tmp_path / "c.json")])
    assert all(c["total"] == 6 for c in cells.values())
    cells = cli.main(["backgrounds", *model, *flags, *variants, "--per-class", "1", "--out", str(tmp_path / "d.json")])
    assert all(c["total"] == 2 for c in cells.values())  # --per-class works with --images

    caplog.clear()
    cells = cli.main(["occlusion", *model, *flags, "--modes", "salient_mask", "--levels", "0", "0.5", "--grid", "8",
                      "8", "--out", str(tmp_path / "o.json")])
    assert list(cells) == ["salient_mask/0.00", "salient_mask/0.50"] and all(c["total"] == 4 for c in cells.values())
    assert "2 of 6 images have less than 1 % foreground" in caplog.text


# ------------------------------------------------------------------------------------------------ 4. labels
def test_images_need_labels_from_a_file_folders_or_prefixes(tmp_path: Path, model: list[str],
                                                           capsys: pytest.CaptureFixture[str],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    images, masks = foreground_folder(tmp_path / "fg", "prefix")
    out = tmp_path / "r.json"
    flags = ["--images", str(images), "--masks", str(masks), "--out", str(out), *RUN]
    for command, extra in (("backgrounds", "Mixed-Same = Mixed-Rand"), ("occlusion", "label 0")):
        assert cli.run_command_line([command, *model, *flags]) == 2
        err = _one_error_line(capsys)
        assert f"{command} --images needs labels" in err and extra in err, err
        assert "--labels FILE" in err and "--labels-from folders" in err and "--labels-from prefix" in err
    assert not out.exists()

    caplog.set_level(logging.INFO)
    assert [s.label for s in read_image_mask_folder(images, masks, labels_from="prefix")] == [0, 0, 0, 1, 1, 1]
    assert "labels from file-name prefixes <class>_: 2 classes (ant=0, bee=1)" in caplog.text
    cells = cli.main(["backgrounds", *model, *flags, "--labels-from", "prefix", "--variants", "mixed_same"])
    assert cells["mixed_same"]["total"] == 6

    (tmp_path / "labels.json").write_text(json.dumps({"ant_0": 0, "bee_2": 1}))
    caplog.clear()
    samples = read_image_mask_folder(images, masks, cli._labels(str(tmp_path / "labels.json")))
    assert [(s.key, s.label) for s in samples] == [("ant_0.png", 0), ("bee_2.png", 1)]
    assert "4 of 6 images with a mask have no entry in the labels and are skipped" in caplog.text
    assert "2 of 6 images with a mask got a label" in caplog.text
    assert cli.run_command_line(["backgrounds", *model, *flags, "--labels", str(tmp_path / "labels.json"),
                                 "--labels-from", "prefix"]) == 2
    assert "exclude each other" in _one_error_line(capsys)

    with pytest.raises(SystemExit):
        cli.main(["backgrounds", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    assert '{"<image stem>": <integer label>, ...}' in text and "--labels-from {folders,prefix}" in text
    assert "images/<class>/<stem>.jpg" in text and "images/<class>_<rest>.jpg" in text


# ------------------------------------------------------------------------------------------------ 5. seed
def test_seed_makes_a_random_head_and_its_cells_reproducible(tmp_path: Path) -> None:
    def classifier(seed: int):
        return cli.build_classifier(cli.build_parser().parse_args(
            ["imagenet-c", *RANDOM_MODEL, "--out", "x.json", "--seed", str(seed)]))

    a, b, c = classifier(0), classifier(0), classifier(1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.model.head.weight, c.model.head.weight)

    data = png_folder(tmp_path / "data", per_class=3)
    groups = []
    for name, caller_seed in (("a", 1), ("b", 2)):
        torch.manual_seed(caller_seed)  # whatever random state the caller is in
        out = ["--out", str(tmp_path / f"{name}.json")]
        cli.main(["imagenet-c", *RANDOM_MODEL, "--data", str(data), "--corruptions", "gaussian_noise",
                  "--severities", "3", *out, *RUN])
        cli.main(["occlusion", *RANDOM_MODEL, "--data", str(data), "--modes", "random", "salient", "--levels", "0",
                  "0.5", "--grid", "8", "8", *out, *RUN])
        groups.append(json.loads((tmp_path / f"{name}.json").read_text())["groups"])
    assert groups[0] == groups[1]  # identical cells (and configurations) from two runs
    clean, unoccluded = groups[0]["imagenet_c"]["cells"]["clean"], groups[0]["occlusion"]["cells"]["random/0.00"]
    assert clean["correct"] == unoccluded["correct"]  # the same images, the same head: the same accuracy


# ------------------------------------------------------------------------------------------------ 6. CE, errors
def _complete_cells(base_err: float) -> dict[str, dict]:
    cells = {"clean": {"err": base_err, "acc": 1 - base_err}}
    cells.update({f"{c}/{s}": {"err": base_err + 0.05 * s, "acc": 1 - base_err - 0.05 * s}
                  for c in BENCHMARK_CORRUPTIONS for s in range(1, 6)})
    return cells


def test_ce_is_shown_for_imagenet_data_only(tmp_path: Path, model: list[str]) -> None:
    files = []
    for name, config in (("imagenet", {"dataset": "imagenet"}), ("cifar", {"dataset": "other"}),
                         ("old-released", {"released": "/data/ImageNet-C"}), ("old-folder", {"label_space": "auto"})):
        store = ResultStore(tmp_path / f"{name}.json", model=name)
        store.open_group("imagenet_c", config)
        store.put_many("imagenet_c", _complete_cells(0.2))
        files.append(tmp_path / f"{name}.json")
    summary = build_report(files, tmp_path / "report")
    mce = {m["model"]: m["imagenet_c"]["mce"] for m in summary["models"]}
    assert mce["imagenet"] is not None and mce["old-released"] == pytest.approx(mce["imagenet"])
    assert mce["cifar"] is None and mce["old-folder"] is None
    md = (tmp_path / "report" / "report.md").read_text()
    assert _md_row(md, "cifar")[2:4] == ["–", "–"] and _md_row(md, "cifar")[-1] == "– (not ImageNet data)"
    assert _md_row(md, "old-folder")[-1] == "– (data set not recorded)"
    assert "not shown ('–') for cifar, old-folder" in md and "--baseline" in md
    assert "Model (CE)" in md  # the CE table remains for the ImageNet rows
    with_baseline = build_report([files[1]], tmp_path / "r2", baseline_file=files[0])
    assert with_baseline["models"][0]["imagenet_c"]["mce"] == pytest.approx(100.0)  # a baseline normalises any data

    # the CLI records the data set: WordNet-id class folders are ImageNet, others not unless --dataset says so
    wnids = png_folder(tmp_path / "in", classes=imagenet_synsets()[:2])
    other = png_folder(tmp_path / "other")
    run = ["imagenet-c", *model, "--corruptions", "contrast", "--severities", "1", *RUN]
    for data, extra, want in ((wnids, [], "imagenet"), (other, [], "other"),
                              (other, ["--dataset", "imagenet"], "imagenet")):
        out = tmp_path / f"{want}-{len(extra)}.json"
        cli.main([*run, "--data", str(data), "--out", str(out), *extra])
        assert json.loads(out.read_text())["groups"]["imagenet_c"]["config"]["dataset"] == want

    # a file written before 'dataset' was recorded resumes (no --restart, nothing recomputed) and records it
    out = tmp_path / "other-0.json"
    data = json.loads(out.read_text())
    del data["groups"]["imagenet_c"]["config"]["dataset"]
    out.write_text(json.dumps(data))
    computed: list[str] = []
    cli.main([*run, "--data", str(other), "--out", str(out)], on_cell_done=lambda k, r: computed.append(k))
    assert computed == [] and json.loads(out.read_text())["groups"]["imagenet_c"]["config"]["dataset"] == "other"


@pytest.mark.parametrize("argv,match", [
    (["imagenet-c"], "imagenet-c needs --released ROOT"),
    (["imagenet-c", "--released", "{tmp}", "--per-class", "1"], "--per-class / --limit select images"),
    (["imagenet-c", "--data", "{data}", "--n-last-blocks", "2", "--avgpool", "2"], "head.pth"),
    (["ood"], "ood needs at least one of"),
    (["backgrounds"], "backgrounds needs --released"),
    (["occlusion", "--data", "{data}", "--min-fg", "0.1"], "--min-fg / --fg-crop apply to foreground masks"),
    (["occlusion", "--data", "{data}", "--labels-from", "folders"], "--labels / --labels-from label the images"),
], ids=["no-data", "released-per-class", "head-mismatch", "ood-no-set", "backgrounds-no-data", "min-fg-no-masks",
        "labels-no-images"])
def test_expected_user_errors_are_one_line(tmp_path: Path, model: list[str], capsys: pytest.CaptureFixture[str],
                                           argv: list[str], match: str) -> None:
    data = png_folder(tmp_path / "data")
    argv = [a.format(tmp=tmp_path, data=data) for a in argv]
    out = tmp_path / "r.json"
    assert cli.run_command_line([*argv, *model, "--out", str(out), *RUN]) == 2
    assert match in _one_error_line(capsys)
    assert not out.exists()


def test_unknown_reference_model_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run_command_line(["imagenet-c", "--torchvision", "notamodel", "--data",
                                 str(png_folder(tmp_path / "data")), "--out", str(tmp_path / "r.json"), *RUN]) == 2
    assert "--torchvision notamodel: Unknown model" in _one_error_line(capsys)


def test_in9_labels_need_a_9_or_1000_way_model(tmp_path: Path, model: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A 10-class head with IN-9 label mapping failed at the first batch with a traceback; now one line up front."""
    images, masks = foreground_folder(tmp_path / "fg", "prefix")
    out, labels = tmp_path / "r.json", tmp_path / "labels.json"
    labels.write_text(json.dumps({f"{c}_{i}": k for k, c in enumerate(("ant", "bee")) for i in range(3)}))
    assert cli.run_command_line(["backgrounds", *model, "--images", str(images), "--masks", str(masks),
                                 "--labels", str(labels), "--in9-labels", "--out", str(out), *RUN]) == 2
    assert "the model has 10 outputs; IN-9 labels" in _one_error_line(capsys)
    assert not out.exists()


def test_files_written_before_the_new_keys_resume(tmp_path: Path, model: list[str]) -> None:
    """The keys added to the configuration (min_fg, fg_crop, labels_from; dataset) do not refuse older files whose
    results they do not change; where they do (the --min-fg filter on --images), the refusal names the key."""
    out = tmp_path / "r.json"
    run = ["occlusion", *model, "--data", str(png_folder(tmp_path / "data")), "--modes", "random", "--levels", "0",
           "0.5", "--grid", "8", "8", "--out", str(out), *RUN]
    cli.main(run)
    data = json.loads(out.read_text())
    config = data["groups"]["occlusion"]["config"]
    assert (config["min_fg"], config["fg_crop"], config["labels_from"]) == (None, False, None)
    for key in ("min_fg", "fg_crop", "labels_from"):
        del config[key]
    out.write_text(json.dumps(data))  # as an older version wrote it
    computed: list[str] = []
    cli.main(run, on_cell_done=lambda k, r: computed.append(k))
    assert computed == [] and json.loads(out.read_text())["groups"]["occlusion"]["config"]["min_fg"] is None

    images, masks = foreground_folder(tmp_path / "fg", "prefix")
    fg_run = ["backgrounds", *model, "--images", str(images), "--masks", str(masks), "--labels-from", "prefix",
              "--variants", "original", "--out", str(out), *RUN]
    cli.main(fg_run)
    data = json.loads(out.read_text())
    for key in ("min_fg", "fg_crop", "labels_from"):
        del data["groups"]["backgrounds"]["config"][key]
    out.write_text(json.dumps(data))
    with pytest.raises(ConfigMismatchError, match=r"key 'labels_from': stored None, now 'prefix'.*key 'min_fg'"):
        cli.main(fg_run)


def test_min_fg_default_keeps_real_grabcut_objects_and_fg_crop_keeps_more_of_them() -> None:
    """On GrabCut (50 real photos and masks) the default --min-fg 0.01 drops nothing; an object-centred crop keeps
    more foreground than the centre crop overall, and never less than ~all of a box that fits the crop."""
    root = shared_data_path("grabcut")
    samples = read_image_mask_folder(root / "images", root / "masks")
    assert len(samples) == 50
    centre = ForegroundImages(samples, 64, 48)
    kept, scan = backgrounds.select_foregrounds(centre, cli.DEFAULT_MIN_FG)
    assert len(kept) == 50 and scan.skipped == []
    centred = ForegroundImages(samples, 64, 48, fg_crop=True)
    a = [centre.foreground(i).sum() for i in range(50)]
    b = [centred.foreground(i).sum() for i in range(50)]
    assert sum(b) > sum(a)
    full = ForegroundImages(samples, 64, None)
    for i in range(50):
        box = backgrounds._bbox(full.foreground(i))
        if box is not None and box[1] - box[0] <= 48 and box[3] - box[2] <= 48:
            assert b[i] == full.foreground(i).sum()  # the whole object is inside the object-centred crop
