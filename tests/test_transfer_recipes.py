"""transfer.recipes (the per-data-set recipe tables) and the fine-tuning building blocks taken from timm."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from ibot.checkpoint import describe_backbone, save_backbone
from ibot.vit import build_vit
from transfer.backbone import build_backbone
from transfer.cli import build_parser, config_from_args
from transfer.finetune import ViTClassifier, build_mixup_and_loss, build_optimizer, build_scheduler
from transfer.recipes import ConfigKeyError, parse_overrides, resolve
from transfer.transforms import finetune_train_transform, posterize_keep_zero_bits


@pytest.mark.parametrize("dataset, arch, lr, epochs, reprob", [
    ("cifar10", "vit_small", 7.5e-6, 1000, 0.25), ("cifar100", "vit_base", 7.5e-6, 1000, 0.25),
    ("flowers102", "vit_small", 7.5e-6, 1000, 0.25), ("cars", "vit_base", 7.5e-5, 1000, 0.25),
    ("inat2018", "vit_base", 7.5e-6, 360, 0.1), ("inat2018", "vit_small", 5e-5, 360, 0.1),
    ("inat2019", "vit_base", 7.5e-6, 360, 0.1), ("inat2019", "vit_small", 2.5e-5, 360, 0.1),
])
def test_finetune_recipe_table(dataset: str, arch: str, lr: float, epochs: int, reprob: float) -> None:
    cfg = resolve("finetune", dataset, {"model": {"arch": arch}})
    assert (cfg["optim"]["lr"], cfg["epochs"], cfg["aug"]["reprob"]) == (lr, epochs, reprob)
    # the DeiT settings every data set shares
    assert cfg["optim"]["lr_batch_ref"] == 512 and cfg["optim"]["weight_decay"] == 0.05
    assert cfg["sched"] == {"warmup_epochs": 5, "warmup_lr": 1e-6, "min_lr": 1e-5}
    assert cfg["aug"]["auto_augment"] == "rand-m9-mstd0.5-inc1" and cfg["aug"]["smoothing"] == 0.1
    assert (cfg["aug"]["mixup"], cfg["aug"]["cutmix"], cfg["drop_path_rate"]) == (0.8, 1.0, 0.1)
    assert cfg["model"]["img_size"] == 224 and cfg["optim"]["layer_decay"] is None


def test_frozen_protocol_defaults() -> None:
    knn = resolve("knn", "cifar10")
    assert knn["ks"] == [10, 20, 100, 200] and knn["temperature"] == 0.07 and knn["report_k"] == 20
    lin_s, lin_b = resolve("linear", "cars"), resolve("linear", "cars", {"model": {"arch": "vit_base"}})
    assert lin_s["features"] == [{"n_last_blocks": 4, "pooling": "cls"}]
    assert lin_b["features"] == [{"n_last_blocks": 1, "pooling": "cls+avgpool"}]
    assert len(lin_s["lrs"]) == 45 and lin_s["lrs"][0] == 1e-4 and lin_s["lrs"][-1] == 9.0
    assert lin_s["momentum"] == 0.9 and lin_s["weight_decay"] == 0.0 and lin_s["epochs"] == 100


def test_feature_specs_are_stored_as_dicts() -> None:
    """``ibot.features.FeatureSpec.to_dict()`` form in the resolved config; the older ``avgpool`` form is read."""
    assert resolve("knn", "cifar10")["feature"] == {"n_last_blocks": 1, "pooling": "cls"}
    lin = resolve("linear", "cifar10", {"features": [{"n_last_blocks": 2, "avgpool": True},
                                                     {"n_last_blocks": 1, "pooling": "avgpool"}]})
    assert lin["features"] == [{"n_last_blocks": 2, "pooling": "cls+avgpool"},
                               {"n_last_blocks": 1, "pooling": "avgpool"}]
    with pytest.raises(ValueError, match="feature pooling must be one of"):
        resolve("knn", "cifar10", {"feature": {"n_last_blocks": 1, "pooling": "max"}})


def test_recipe_follows_the_checkpoint_description(tmp_path: Path) -> None:
    """No --arch: the per-arch recipe is the described backbone's, not the random-init default's (vit_small)."""
    torch.manual_seed(0)
    tiny = build_vit("vit_tiny", patch_size=16, img_size=32)  # the real ViT-Ti/16 shape: preset vit_tiny
    save_backbone(tmp_path / "vit_tiny.pth", tiny.state_dict(), describe_backbone(tiny))
    assert resolve("finetune", "inat2018")["optim"]["lr"] == 5e-5  # random init: the vit_small recipe
    cfg = resolve("finetune", "inat2018", {"model": {"pretrained": str(tmp_path / "vit_tiny.pth")}})
    assert cfg["optim"]["lr"] == 7.5e-6 and cfg["model"]["arch"] is None  # vit_tiny has no iNat18 override
    custom = build_vit("vit_tiny", embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32)
    save_backbone(tmp_path / "custom.pth", custom.state_dict(), describe_backbone(custom))
    nearest = resolve("linear", "cifar10", {"model": {"pretrained": str(tmp_path / "custom.pth")}})
    assert nearest["features"] == [{"n_last_blocks": 4, "pooling": "cls"}]  # a 32-d ViT: the nearest preset, ViT-Ti
    flagged = resolve("linear", "cifar10", {"model": {"pretrained": str(tmp_path / "custom.pth"), "arch": "vit_base"}})
    assert flagged["features"] == [{"n_last_blocks": 1, "pooling": "cls+avgpool"}]  # the flag wins


def test_random_init_defaults_to_vit_small_16() -> None:
    model, info = build_backbone({**resolve("knn", "cifar10")["model"], "img_size": 32})
    assert (info.arch, info.patch_size, info.embed_dim, info.depth) == ("vit_small", 16, 384, 12)
    assert info.description == {"family": "vit", "arch": "vit_small", "patch_size": 16, "img_size": 32,
                                "embed_dim": 384, "depth": 12, "num_heads": 6}
    assert info.checkpoint_sha256 is None and info.load_report == "random initialisation"
    assert info.name == "vit_small/16 (random init)" and model.patch_embed.grid_size == (2, 2)


def test_overrides_and_typos() -> None:
    assert parse_overrides(["optim.lr=1e-5", "model.name=my model", "amp=true", "ks=[1,2]", "data.root=None"]) == {
        "optim": {"lr": 1e-5}, "model": {"name": "my model"}, "amp": True, "ks": [1, 2], "data": {"root": None}}
    with pytest.raises(ConfigKeyError, match=r"unknown config key 'optim.lrr'; valid keys here: \['betas'"):
        resolve("finetune", "cifar10", parse_overrides(["optim.lrr=1"]))
    with pytest.raises(ValueError, match="not of the form key=value"):
        parse_overrides(["epochs"])
    args = build_parser("finetune").parse_args(
        ["--dataset", "cars", "--lr", "1e-4", "--epochs", "3", "--layer-decay", "0.65", "--set", "seed=3",
         "--set", "optim.lr=2e-4", "--data-root", "/d", "--no-amp"])
    cfg = config_from_args("finetune", args)
    assert (cfg["optim"]["lr"], cfg["epochs"], cfg["optim"]["layer_decay"], cfg["seed"]) == (2e-4, 3, 0.65, 3)
    assert (cfg["data"]["root"], cfg["amp"], cfg["data"]["num_classes"]) == ("/d", False, 196)


def _tiny_classifier() -> ViTClassifier:
    torch.manual_seed(0)
    return ViTClassifier(build_vit("vit_tiny", embed_dim=16, depth=2, num_heads=2, patch_size=8, img_size=32), 5)


def test_layer_decay_groups() -> None:
    model = _tiny_classifier()
    opt = build_optimizer(model, {"weight_decay": 0.05, "layer_decay": 0.5, "betas": [0.9, 0.999], "eps": 1e-8}, 1.0)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())

    def group(name: str) -> dict:
        return by_param[id(named[name])]

    # BEiT layer ids: 0 = embeddings, i + 1 = block i, depth + 1 = final norm and head; scale = ld^(depth + 1 - id)
    assert group("backbone.patch_embed.proj.weight")["lr_scale"] == 0.5 ** 3
    assert group("backbone.cls_token")["lr_scale"] == 0.5 ** 3 and group("backbone.cls_token")["weight_decay"] == 0
    assert group("backbone.pos_embed")["weight_decay"] == 0
    assert group("backbone.blocks.0.attn.qkv.weight")["lr_scale"] == 0.5 ** 2
    assert group("backbone.blocks.1.mlp.fc1.weight")["lr_scale"] == 0.5
    assert group("backbone.blocks.1.mlp.fc1.weight")["weight_decay"] == 0.05
    assert group("backbone.blocks.1.mlp.fc1.bias")["weight_decay"] == 0
    assert group("backbone.norm.weight")["lr_scale"] == 1.0 and group("head.weight")["lr_scale"] == 1.0
    sched = build_scheduler(opt, 10, {"warmup_epochs": 2, "warmup_lr": 1e-6, "min_lr": 1e-5})
    sched.step(5)  # timm applies each group's lr_scale
    lrs = {g["lr_scale"]: g["lr"] for g in opt.param_groups}
    assert lrs[0.5] == pytest.approx(lrs[1.0] * 0.5) and lrs[0.125] == pytest.approx(lrs[1.0] * 0.125)


def test_scheduler_and_plain_groups() -> None:
    model = _tiny_classifier()
    opt = build_optimizer(model, {"weight_decay": 0.05, "layer_decay": None, "betas": [0.9, 0.999], "eps": 1e-8}, 1e-3)
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.05]
    assert all("lr_scale" not in g for g in opt.param_groups)
    sched = build_scheduler(opt, 10, {"warmup_epochs": 2, "warmup_lr": 1e-6, "min_lr": 1e-5})
    lrs = []
    for epoch in range(10):
        sched.step(epoch)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-6) and lrs[1] == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    # cosine after warm-up (timm counts t from 0 inside the cosine, without a warm-up prefix)
    assert lrs[2] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + np.cos(np.pi * 2 / 10)))
    assert lrs[9] < lrs[5] < lrs[2]


def test_mixup_and_losses() -> None:
    aug = resolve("finetune", "cifar10")["aug"]
    mixup, loss = build_mixup_and_loss(aug, 10)
    assert mixup is not None and isinstance(loss, SoftTargetCrossEntropy)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    _, soft = mixup(x, y)
    assert soft.shape == (4, 10) and torch.allclose(soft.sum(1), torch.ones(4))
    assert soft.min() >= 0.1 / 10 - 1e-6  # label smoothing 0.1 spreads mass to every class
    mixup, loss = build_mixup_and_loss({**aug, "mixup": 0.0, "cutmix": 0.0}, 10)
    assert mixup is None and isinstance(loss, LabelSmoothingCrossEntropy) and loss.smoothing == 0.1


def test_randaugment_posterize_at_full_magnitude() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert np.asarray(posterize_keep_zero_bits(img, 0)).max() == 0  # every bit cleared
    assert np.array_equal(np.asarray(posterize_keep_zero_bits(img, 8)), np.asarray(img))
    tf = finetune_train_transform(32, resolve("finetune", "cifar10")["aug"])
    ra = next(t for t in tf.transforms if hasattr(t, "ops"))
    op = next(o for o in ra.ops if o.name == "PosterizeIncreasing")
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0  # magnitude 10 -> keep 0 bits
    assert np.asarray(op(img)).max() == 0  # Pillow 13 alone raises here
