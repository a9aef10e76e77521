"""Classification robustness end to end on real images (CIFAR-10 test, GrabCut) and on generated folder layouts:
on-the-fly ImageNet-C in data-loader workers, occlusion curves, background variants, the report, resumability."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from robustness_helpers import REPO, check_html_report, load_tool, shared_data_path
from torch import nn

from ibot.checkpoint import describe_backbone, save_backbone, save_file
from ibot.compat.imagecorruptions import corrupt
from ibot.features import FeatureSpec
from ibot.vit import build_vit
from robustness import backgrounds, cli, imagenet_c, ood
from robustness.classifier import (
    BackboneWithLinearHead,
    ImageClassifier,
    build_ibot_linear_classifier,
    linear_head_state_dict,
    shape_overrides,
)
from robustness.corruptions import CorruptedImages, sample_seed
from robustness.data import imagenet_synsets, list_image_folder
from robustness.engine import run_cells
from robustness.store import ConfigMismatchError, ResultStore


def _cifar(per_class: int = 1, limit: int | None = None):
    return list_image_folder(shared_data_path("cifar10", "test"), "sorted").subset(per_class=per_class, limit=limit)


class _Rule(nn.Module):
    """A classifier with known outputs: class ``bright`` when the mean (normalised) input is > 0, else ``dark``."""

    def __init__(self, num_classes: int, bright: int, dark: int, extra: dict[int, float] | None = None) -> None:
        super().__init__()
        self.num_classes, self.bright, self.dark, self.extra = num_classes, bright, dark, extra or {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.num_classes)
        for k, v in self.extra.items():
            out[:, k] = v
        is_bright = x.mean(dim=(1, 2, 3)) > 0
        out[is_bright, self.bright] += 10.0
        out[~is_bright, self.dark] += 10.0
        return out


# ------------------------------------------------------------------------------------------------ corruptions
def test_on_the_fly_corruption_is_seeded_rgb_and_cached(tmp_path) -> None:
    images = _cifar(limit=2)
    ds = CorruptedImages(images, "frost", 3, resize=None, crop=None, seed=7)
    a = ds.corrupted_array(1)
    rgb = np.asarray(Image.open(images.samples[1].path).convert("RGB"))
    np.random.seed(sample_seed(7, "frost", 3, images.samples[1].key))
    assert np.array_equal(a, corrupt(rgb, "frost", 3))  # RGB input, per-image seed
    np.random.seed(sample_seed(7, "frost", 3, images.samples[1].key))
    assert not np.array_equal(a, corrupt(np.ascontiguousarray(rgb[..., ::-1]), "frost", 3)[..., ::-1])
    assert np.array_equal(a, CorruptedImages(images, "frost", 3, resize=None, crop=None, seed=7).corrupted_array(1))
    assert not np.array_equal(a, CorruptedImages(images, "frost", 3, resize=None, crop=None, seed=8).corrupted_array(1))
    clean = CorruptedImages(images, None, 0, resize=None, crop=None)
    assert np.array_equal(clean.corrupted_array(1), rgb)
    cached = CorruptedImages(images, "frost", 3, resize=None, crop=None, seed=7, cache_dir=tmp_path)
    assert np.array_equal(cached.corrupted_array(1), a)
    files = list(tmp_path.rglob("*.png"))
    assert len(files) == 1 and files[0].parts[-4:] == ("frost", "3", "automobile", "0000.png")
    Image.fromarray(np.zeros_like(a)).save(files[0])  # a cached file is read back, not recomputed
    assert cached.corrupted_array(1).max() == 0
    jpeg = CorruptedImages(images, "frost", 3, resize=None, crop=None, seed=7, jpeg_quality=85).corrupted_array(1)
    assert jpeg.shape == a.shape and not np.array_equal(jpeg, a)


def test_released_imagenet_c_layout(tmp_path) -> None:
    images = _cifar(per_class=2, limit=4)  # 2 airplanes, 2 automobiles
    wnids = imagenet_synsets()[5], imagenet_synsets()[9]
    root = tmp_path / "imagenet-c"
    for c in ("fog", "contrast"):
        for s in (1, 2):
            for i, smp in enumerate(images.samples):
                d = root / c / str(s) / wnids[smp.label]
                d.mkdir(parents=True, exist_ok=True)
                value = 255 if (c == "fog" and i == 0) else 0  # one bright image in fog
                Image.fromarray(np.full((40, 40, 3), value, np.uint8)).save(d / f"{i}.JPEG")
    cells = imagenet_c.released_cells(root, severities=(1, 2), crop=32)
    assert [c.key for c in cells] == ["fog/1", "fog/2", "contrast/1", "contrast/2"]  # package order, found on disk
    assert cells[0].dataset[0]["image"].shape == (3, 32, 32)  # CenterCrop only
    assert sorted({cells[0].dataset[i]["label"] for i in range(4)}) == [5, 9]  # ImageNet-1k indices of the wnids
    clf = ImageClassifier(_Rule(1000, bright=5, dark=9))
    store = ResultStore(tmp_path / "r.json")
    store.open_group("imagenet_c", {})
    out = run_cells(clf, cells, store, "imagenet_c", batch_size=3, num_workers=0, progress=False)
    # fog: image 0 (label 5) predicted 5 (bright), images 2, 3 (label 9) predicted 9 -> 1 wrong of 4
    assert out["fog/1"]["err"] == pytest.approx(0.25) and out["contrast/2"]["err"] == pytest.approx(0.5)


def test_released_in9_and_ood_layouts(tmp_path) -> None:
    root = tmp_path / "bg"
    for v in ("mixed_same", "mixed_rand"):
        for k, (name, _) in enumerate(backgrounds.IN9_CLASSES):
            d = root / v / "val" / f"{k:02d}_{name}"
            d.mkdir(parents=True)
            value = 255 if (v == "mixed_same" and k in (0, 8)) else 0
            Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(d / "a.JPEG")
    cells = backgrounds.released_cells(root, ["mixed_same", "mixed_rand"])
    # 1000-way model: bright -> ImageNet 160 (a dog), dark -> 500 (not an IN-9 class: always wrong)
    store = ResultStore(tmp_path / "r.json")
    store.open_group("backgrounds", {})
    out = run_cells(ImageClassifier(_Rule(1000, bright=160, dark=500)), cells, store, "backgrounds",
                    num_workers=0, progress=False)
    assert out["mixed_same"]["correct"] == 1 and out["mixed_rand"]["correct"] == 0  # dog right, fish mapped wrong
    assert backgrounds.summarize(out)["bg_gap"] == pytest.approx(1 / 9)
    store.open_group("backgrounds", {"in9": True}, restart=True)
    out = run_cells(ImageClassifier(_Rule(9, bright=8, dark=3)), cells, store, "backgrounds", num_workers=0,
                    progress=False)
    assert out["mixed_same"]["correct"] == 2 and out["mixed_rand"]["correct"] == 1  # fish (bright), reptile (dark)

    a_wnids = [imagenet_synsets()[i] for i in ood.subset_indices("imagenet_a")[:3]]
    for w in a_wnids:
        (tmp_path / "ina" / w).mkdir(parents=True)
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "ina" / w / "x.jpg")
    sketch = imagenet_synsets()[:2]
    for w in sketch:
        (tmp_path / "sk" / w).mkdir(parents=True)
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "sk" / w / "x.JPEG")
    cells = ood.cells({"imagenet_a": tmp_path / "ina", "imagenet_sketch": tmp_path / "sk"}, resize=36, crop=32)
    a_idx = ood.subset_indices("imagenet_a")
    # dark images -> IN-A class 1 among the 200; class 1 of IN-1k (not in IN-A) has a larger logit but is excluded
    clf = ImageClassifier(_Rule(1000, bright=0, dark=a_idx[1], extra={1: 50.0}))
    store.open_group("ood", {})
    out = run_cells(clf, cells, store, "ood", num_workers=0, progress=False)
    assert out["imagenet_a"]["correct"] == 1 and out["imagenet_a"]["total"] == 3
    assert out["imagenet_sketch"]["correct"] == 1  # argmax = IN-1k class 1 = the second sketch folder


# ------------------------------------------------------------------------------------------------ classifier
def test_backbone_with_linear_head_and_checkpoints(tmp_path) -> None:
    torch.manual_seed(0)
    student = build_vit("vit_tiny", depth=2, patch_size=4, img_size=32, masked_im_modeling=True)
    save_file({"student": {f"module.backbone.{k}": v for k, v in student.state_dict().items()}},
              tmp_path / "full.pth")
    linear = nn.Linear(3 * 192, 7)
    save_file({"state_dict": {"module.linear.weight": linear.weight.detach(),
                              "module.linear.bias": linear.bias.detach()}}, tmp_path / "head.pth")
    flags = shape_overrides("vit_tiny", patch_size=4, img_size=32, depth=2)
    model = build_ibot_linear_classifier(tmp_path / "full.pth", tmp_path / "head.pth", overrides=flags,
                                         n_last_blocks=2, avgpool=2)
    x = torch.randn(2, 3, 32, 32)
    tokens = student.get_intermediate_layers(x, 2)
    feats = torch.cat([tokens[0][:, 0], tokens[1][:, 0], tokens[1][:, 1:].mean(1)], dim=-1)
    assert torch.allclose(model(x), linear(feats), atol=1e-5)
    assert model.feature == FeatureSpec(2, "cls+avgpool") and not model.backbone_report.described
    # the shape inferred from the tensors (a foreign file) gives the same model without any shape flag
    inferred = build_ibot_linear_classifier(tmp_path / "full.pth", tmp_path / "head.pth", n_last_blocks=2, avgpool=2)
    assert torch.equal(inferred(x), model(x))
    assert BackboneWithLinearHead(student, 3, FeatureSpec.from_avgpool(4, 0)).head.in_features == 4 * 192
    assert BackboneWithLinearHead(student, 3, FeatureSpec.from_avgpool(4, 1)).head.in_features == 192
    assert linear_head_state_dict({"head.weight": linear.weight, "head.bias": linear.bias})["weight"] is linear.weight
    with pytest.raises(ValueError, match="n_last_blocks") as err:
        build_ibot_linear_classifier(tmp_path / "full.pth", tmp_path / "head.pth", overrides=flags, n_last_blocks=1)
    assert str(tmp_path / "head.pth") in str(err.value)  # the error names the head file


def test_head_file_feature_entry_and_flag_overrides(tmp_path) -> None:
    """A head file's 'feature' entry gives the feature spec; explicit flags replace parts of it; a spec that does
    not fit the head width fails naming the file and where the spec came from."""
    torch.manual_seed(0)
    vit = build_vit("vit_tiny", depth=2, patch_size=4, img_size=32)
    save_backbone(tmp_path / "backbone.pth", vit.state_dict(),
                  {"family": "vit", "arch": None, "patch_size": 4, "img_size": 32, "embed_dim": 192, "depth": 2,
                   "num_heads": 3})
    linear = nn.Linear(2 * 192, 5)
    save_file({"weight": linear.weight.detach(), "bias": linear.bias.detach(),
               "feature": FeatureSpec(1, "cls+avgpool").to_dict()}, tmp_path / "head.pth")
    model = build_ibot_linear_classifier(tmp_path / "backbone.pth", tmp_path / "head.pth")
    assert model.feature == FeatureSpec(1, "cls+avgpool") and model.backbone_report.described
    x = torch.randn(2, 3, 32, 32)
    (last,) = vit.get_intermediate_layers(x, 1)
    assert torch.allclose(model(x), linear(torch.cat([last[:, 0], last[:, 1:].mean(1)], dim=-1)), atol=1e-5)
    # --n-last-blocks 2 keeps the file's pooling: cls2+avgpool is 3 x 192 wide, the head 2 x 192
    with pytest.raises(ValueError, match=r"head\.pth.*cls2\+avgpool.*--n-last-blocks / --avgpool flags"):
        build_ibot_linear_classifier(tmp_path / "backbone.pth", tmp_path / "head.pth", n_last_blocks=2)
    assert build_ibot_linear_classifier(tmp_path / "backbone.pth", tmp_path / "head.pth",
                                        n_last_blocks=1, avgpool=2).feature == FeatureSpec(1, "cls+avgpool")
    save_file({"weight": linear.weight.detach(), "bias": linear.bias.detach(),
               "feature": FeatureSpec(1, "cls").to_dict()}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"wrong\.pth.*'feature' entry"):
        build_ibot_linear_classifier(tmp_path / "backbone.pth", tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="n_last_blocks=3"):  # deeper than the backbone: refused at build time
        build_ibot_linear_classifier(tmp_path / "backbone.pth", None, num_classes=2, n_last_blocks=3)


# ------------------------------------------------------------------------------------------------ backgrounds
def test_background_variants_by_hand() -> None:
    img = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    fg = np.zeros((8, 8), bool)
    fg[2:4, 3:6] = True  # bbox rows 2..3, cols 3..5; largest background strip: rows 4..7 (4 x 8)
    assert np.array_equal(backgrounds.make_variant("only_fg", img, fg)[~fg], np.zeros((64 - 6, 3), np.uint8))
    assert np.array_equal(backgrounds.make_variant("only_fg", img, fg)[fg], img[fg])
    assert (backgrounds.make_variant("no_fg", img, fg)[fg] == 0).all()
    assert np.array_equal(backgrounds.make_variant("no_fg", img, fg)[~fg], img[~fg])
    bgb = backgrounds.make_variant("only_bg_b", img, fg)
    assert (bgb[2:4, 3:6] == 0).all() and np.array_equal(bgb[4:], img[4:])
    bgt = backgrounds.make_variant("only_bg_t", img, fg)
    assert np.array_equal(bgt[2:4, 3:6], img[4:6, 0:3])  # tiled from the bottom strip, aligned at its corner
    assert np.array_equal(np.delete(bgt, np.s_[2:4], axis=0), np.delete(img, np.s_[2:4], axis=0))
    other = np.full((8, 8, 3), 200, np.uint8)
    other_fg = np.zeros((8, 8), bool)
    other_fg[0:2, 0:2] = True
    mixed = backgrounds.make_variant("mixed_rand", img, fg, (other, other_fg))
    assert np.array_equal(mixed[fg], img[fg]) and (mixed[~fg] == 200).all()


def test_background_variants_on_grabcut() -> None:
    root = shared_data_path("grabcut")
    samples = backgrounds.read_image_mask_folder(root / "images", root / "masks")[:6]
    samples = [backgrounds.ForegroundSample(s.image, s.mask, i % 3, s.key) for i, s in enumerate(samples)]
    base = backgrounds.ForegroundImages(samples, resize=64, crop=64)
    img, fg = base.arrays(0)
    assert img.shape == (64, 64, 3) and fg.dtype == bool and 0.02 < fg.mean() < 0.98
    for v in backgrounds.IN9_VARIANTS:
        ds = backgrounds.BackgroundVariant(base, v, seed=0)
        out = (ds[0]["image"].permute(1, 2, 0) * 255).round().byte().numpy()
        if v in ("original", "only_fg") or v.startswith("mixed_"):
            assert np.array_equal(out[fg], img[fg]), v  # the foreground is kept
        if v in ("only_fg",):
            assert (out[~fg] == 0).all()
        if v == "no_fg":
            assert (out[fg] == 0).all() and np.array_equal(out[~fg], img[~fg])
    same = backgrounds.BackgroundVariant(base, "mixed_same", seed=0)
    nxt = backgrounds.BackgroundVariant(base, "mixed_next", seed=0)
    rand = backgrounds.BackgroundVariant(base, "mixed_rand", seed=0)
    for i in range(6):
        assert same.partner(i) != i and samples[same.partner(i)].label == samples[i].label
        assert samples[nxt.partner(i)].label == (samples[i].label + 1) % 3
        assert rand.partner(i) != i and rand.partner(i) == backgrounds.BackgroundVariant(base, "mixed_rand",
                                                                                         seed=0).partner(i)


# ------------------------------------------------------------------------------------------------ end to end
def _model_args(tmp_path: Path) -> list[str]:
    torch.manual_seed(0)
    vit = build_vit("vit_tiny", depth=2, patch_size=4, img_size=32)
    save_file({"state_dict": vit.state_dict()}, tmp_path / "backbone.pth")
    head = nn.Linear(192, 10)
    save_file({"weight": head.weight.detach(), "bias": head.bias.detach()}, tmp_path / "head.pth")
    return ["--arch", "vit_tiny", "--depth", "2", "--patch-size", "4", "--img-size", "32",
            "--backbone", str(tmp_path / "backbone.pth"), "--head", str(tmp_path / "head.pth"),
            "--batch-size", "16", "--no-progress", "--log-level", "WARNING"]


def test_end_to_end_tiny_vit_report(tmp_path) -> None:
    """Acceptance: tiny ViT + linear head -> ImageNet-C on the fly (15 × 5, workers), occlusion curves, background
    variants from GrabCut masks, report (MD + HTML + JSON) via tools/robustness_report.py."""
    evaluate, report = load_tool("robustness_eval"), load_tool("robustness_report")
    model = _model_args(tmp_path)
    out = str(tmp_path / "tiny.json")
    cifar = str(shared_data_path("cifar10", "test"))
    run = model + ["--out", out, "--name", "tiny-vit"]
    cells = evaluate.main(["imagenet-c", *run, "--data", cifar, "--per-class", "1", "--limit", "4",
                           "--corruptions", "benchmark", "--resize", "0", "--crop", "32", "--workers", "2"])
    assert len(cells) == 1 + 15 * 5 and all(c["total"] == 4 for c in cells.values())
    cells = evaluate.main(["occlusion", *run, "--data", cifar, "--per-class", "1", "--limit", "4", "--resize", "0",
                           "--crop", "32", "--grid", "8", "8", "--workers", "1"])
    assert len(cells) == 30
    assert [cells[f"random/{lv / 10:.2f}"]["info_loss"] for lv in range(10)] == [(i * 64 // 10) / 64
                                                                                 for i in range(10)]
    grabcut = shared_data_path("grabcut")
    stems = sorted(p.stem for p in (grabcut / "masks").iterdir())[:6]
    (tmp_path / "labels.json").write_text(json.dumps({s: i % 3 for i, s in enumerate(stems)}))
    cells = evaluate.main(["backgrounds", *run, "--images", str(grabcut / "images"), "--masks",
                           str(grabcut / "masks"), "--labels", str(tmp_path / "labels.json"), "--resize", "32",
                           "--crop", "32", "--workers", "1"])
    assert sorted(cells) == sorted(backgrounds.IN9_VARIANTS) and all(c["total"] == 6 for c in cells.values())

    summary = report.main([out, "--out-dir", str(tmp_path / "report"), "--title", "tiny"])
    model_summary = summary["models"][0]
    stored = json.loads(Path(out).read_text())["groups"]["imagenet_c"]["cells"]
    by_hand = np.mean([stored[f"{c}/{s}"]["err"] for c in imagenet_c.ALEXNET_ERR for s in range(1, 6)])
    inc = model_summary["imagenet_c"]
    assert inc["complete"] and inc["mean_err_15"] == pytest.approx(by_hand)
    # CIFAR-10 is not ImageNet: no AlexNet-normalised CE / mCE (the old report printed one)
    assert inc["dataset"] == "other" and inc["mce"] is None and inc["ce"] == {}
    bg = model_summary["backgrounds"]
    assert bg["bg_gap"] == pytest.approx(bg["acc"]["mixed_same"] - bg["acc"]["mixed_rand"])
    assert set(model_summary["occlusion"]["curves"]) == {"random", "salient", "non_salient"}
    rdir = tmp_path / "report"
    assert json.loads((rdir / "summary.json").read_text())["models"][0]["model"] == "tiny-vit"
    md = (rdir / "report.md").read_text()
    assert "| Model | Clean err | mCE | rel. mCE |" in md and "BG-Gap" in md and "IL 0.5" in md
    for name in summary["plots"]:
        assert f"plots/{name}.png" in md and (rdir / "plots" / f"{name}.png").is_file()
    probe = check_html_report(rdir / "report.html", min_plots=3)
    assert probe.tables >= 4 and {"Clean err", "mCE", "rel. mCE", "BG-Gap", "Mixed-Rand"} <= set(probe.headers)


def test_cli_described_backbone_and_head_feature_need_no_shape_flags(tmp_path) -> None:
    """A self-describing backbone file + a head file with a 'feature' entry run ``python -m robustness.cli
    imagenet-c`` without any shape or feature flag, with the same logits and cells as the explicit-flag path on a
    foreign (shape-inferred) copy of the same weights."""
    torch.manual_seed(0)
    vit = build_vit("vit_tiny", depth=2, patch_size=4, img_size=32)
    save_file({"state_dict": vit.state_dict()}, tmp_path / "foreign.pth")
    save_backbone(tmp_path / "backbone.pth", vit.state_dict(), describe_backbone(vit))
    head = {"weight": torch.randn(10, 2 * 192), "bias": torch.randn(10)}
    save_file(head, tmp_path / "head_plain.pth")
    save_file({**head, "feature": FeatureSpec(2, "cls").to_dict()}, tmp_path / "head.pth")
    explicit = ["--arch", "vit_tiny", "--depth", "2", "--patch-size", "4", "--img-size", "32", "--backbone",
                str(tmp_path / "foreign.pth"), "--head", str(tmp_path / "head_plain.pth"), "--n-last-blocks", "2",
                "--avgpool", "0"]
    described = ["--backbone", str(tmp_path / "backbone.pth"), "--head", str(tmp_path / "head.pth")]
    run = ["--data", str(shared_data_path("cifar10", "test")), "--per-class", "1", "--limit", "4", "--corruptions",
           "gaussian_noise", "contrast", "--severities", "3", "--resize", "0", "--crop", "32", "--workers", "0",
           "--batch-size", "4", "--no-progress", "--log-level", "WARNING"]

    def classifier(model_flags: list[str]) -> ImageClassifier:
        return cli.build_classifier(cli.build_parser().parse_args(["imagenet-c", *model_flags, "--out", "x.json"]))

    x = torch.rand(3, 3, 32, 32)
    a, b = classifier(explicit), classifier(described)
    assert torch.equal(a(x), b(x)) and a.patch_size == b.patch_size == 4
    assert b.model.feature == FeatureSpec(2, "cls") and b.model.backbone_report.described

    cells_a = cli.main(["imagenet-c", *explicit, "--out", str(tmp_path / "a.json"), *run])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "robustness.cli", "imagenet-c", *described, "--out",
                           str(tmp_path / "b.json"), "--threads", "1", *run], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    file_a, file_b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    cells_b = file_b["groups"]["imagenet_c"]["cells"]
    assert list(cells_a) == list(cells_b) == ["clean", "gaussian_noise/3", "contrast/3"]
    assert cells_a == cells_b  # same correct / total / accuracy in every cell
    config_a, config_b = (f["groups"]["imagenet_c"]["config"] for f in (file_a, file_b))
    assert config_a["model"] == config_b["model"] == describe_backbone(vit)
    assert config_a["feature"] == config_b["feature"] == {"n_last_blocks": 2, "pooling": "cls"}
    assert file_b["schema"] == "ibot-suite/robustness/2"
    assert file_b["meta"]["backbone"]["described"] and not file_a["meta"]["backbone"]["described"]


def test_interrupt_and_resume_skips_finished_cells(tmp_path) -> None:
    evaluate = load_tool("robustness_eval")
    out = tmp_path / "r.json"
    args = ["imagenet-c", *_model_args(tmp_path), "--out", str(out), "--data", str(shared_data_path("cifar10", "test")),
            "--per-class", "1", "--limit", "3", "--corruptions", "gaussian_noise", "contrast", "--severities", "1",
            "2", "--resize", "0", "--crop", "32", "--workers", "1"]

    class Stop(Exception):
        pass

    first: list[str] = []

    def interrupt_after_three(key: str, record: dict) -> None:
        first.append(key)
        if len(first) == 3:
            raise Stop

    with pytest.raises(Stop):
        evaluate.main(args, on_cell_done=interrupt_after_three)
    stored = json.loads(out.read_text())["groups"]["imagenet_c"]["cells"]
    assert list(stored) == first == ["clean", "gaussian_noise/1", "gaussian_noise/2"]

    second: list[str] = []
    cells = evaluate.main(args, on_cell_done=lambda k, r: second.append(k))
    assert second == ["contrast/1", "contrast/2"]  # only the unfinished cells were computed
    assert {k: cells[k] for k in first} == stored  # finished cells untouched
    third: list[str] = []
    evaluate.main(args, on_cell_done=lambda k, r: third.append(k))
    assert third == []
    with pytest.raises(ConfigMismatchError):
        evaluate.main(args + ["--seed", "1"])
    fourth: list[str] = []
    evaluate.main(args + ["--seed", "1", "--restart"], on_cell_done=lambda k, r: fourth.append(k))
    assert len(fourth) == 5
    # adding corruptions to the same file is not a configuration change
    fifth: list[str] = []
    evaluate.main([a if a != "contrast" else "pixelate" for a in args] + ["--seed", "1"],
                  on_cell_done=lambda k, r: fifth.append(k))
    assert fifth == ["pixelate/1", "pixelate/2"]


def test_benchmark_script_runs(capsys) -> None:
    spec = importlib.util.spec_from_file_location("bench", REPO / "benchmarks" / "corruptions.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--sizes", "40x32", "--corruptions", "pixelate", "jpeg_compression", "--repeats", "1"])
    assert [r["corruption"] for r in rows] == ["pixelate", "jpeg_compression"]
    assert all(r["images_per_s"] > 0 for r in rows)
    assert "img/s" in capsys.readouterr().out


def test_shared_data_present() -> None:
    for parts in (("cifar10", "test"), ("grabcut", "images"), ("grabcut", "masks"), ("tiny_coco",),
                  ("ade20k_sample",), ("camvid", "val")):
        assert shared_data_path(*parts).is_dir()


def test_linear_classifier_builds_non_standard_vit_sizes() -> None:
    flags = shape_overrides("vit_tiny", patch_size=8, img_size=32, depth=2, embed_dim=32, num_heads=2)
    assert flags["arch"] is None  # no longer the preset
    model = build_ibot_linear_classifier(None, None, num_classes=3, overrides=flags)
    assert model.backbone.embed_dim == 32 and len(model.backbone.blocks) == 2
    assert model.backbone.blocks[0].attn.num_heads == 2
