"""transfer.linear: the lr sweep trains every head at its own lr; the DINO/iBOT feature specs it trains on
(``ibot.features``)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ibot.features import FeatureSpec, spec_features
from ibot.vit import build_vit
from transfer.linear import LinearSweep, sweep_accuracy, sweep_loss, train_epoch

LRS = [0.5, 0.05, 0.005]


def _sweep_with_shared_init() -> LinearSweep:
    torch.manual_seed(0)
    sweep = LinearSweep([6, 4], num_classes=3, lrs=LRS, labels=["a", "b"])
    # identical initial weights within a spec, so after one step the only difference is the lr
    for h, s in enumerate(sweep.spec_of):
        first = sweep.spec_of.index(s)
        sweep.heads[h].load_state_dict(sweep.heads[first].state_dict())
    return sweep


def _batch(seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 6, generator=g), torch.randn(8, 4, generator=g)], torch.randint(0, 3, (8,), generator=g)


def test_heads_have_distinct_lrs_and_names() -> None:
    sweep = _sweep_with_shared_init()
    groups = sweep.param_groups()
    assert len(sweep.heads) == len(groups) == 6
    assert [g["lr"] for g in groups] == LRS * 2
    assert sweep.names == [f"{s} lr={lr:.4g}" for s in "ab" for lr in LRS]
    logits = sweep(_batch(0)[0])
    assert logits.shape == (6, 8, 3)


def test_one_step_moves_each_head_by_its_own_lr() -> None:
    sweep = _sweep_with_shared_init()
    before = copy.deepcopy(sweep.state_dict())
    opt = torch.optim.SGD(sweep.param_groups(), momentum=0.9, weight_decay=0.0)
    feats, y = _batch(1)
    loss = sweep_loss(sweep(feats), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    for h, (head, s) in enumerate(zip(sweep.heads, sweep.spec_of)):
        w0 = before[f"heads.{h}.weight"]
        # the head's gradient is exactly that of its own cross-entropy (the heads share nothing)
        own = F.linear(feats[s], w0, before[f"heads.{h}.bias"]).requires_grad_()
        (g_logits,) = torch.autograd.grad(F.cross_entropy(own, y), own)
        expected_grad = g_logits.T @ feats[s]
        torch.testing.assert_close((w0 - head.weight.detach()) / sweep.lrs[h], expected_grad, rtol=1e-4, atol=1e-6)
        assert not torch.equal(head.weight, w0) and not torch.equal(head.bias, before[f"heads.{h}.bias"])


def test_train_epoch_changes_every_head_and_lr_orders_the_change() -> None:
    sweep = _sweep_with_shared_init()
    before = copy.deepcopy(sweep.state_dict())
    opt = torch.optim.SGD(sweep.param_groups(), momentum=0.9)
    loss = train_epoch(sweep, iter([_batch(i) for i in range(5)]), opt)
    assert loss > 0
    moved = [(sweep.heads[h].weight.detach() - before[f"heads.{h}.weight"]).norm().item() for h in range(6)]
    assert all(m > 0 for m in moved)
    for s in range(2):  # within a spec, a larger lr moved its head further
        per_lr = moved[3 * s: 3 * s + 3]
        assert per_lr[0] > per_lr[1] > per_lr[2]


def test_sweep_accuracy_counts_per_head() -> None:
    sweep = LinearSweep([2], num_classes=2, lrs=[1.0, 2.0])
    with torch.no_grad():
        sweep.heads[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # predicts argmax of the features
        sweep.heads[1].weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # predicts the opposite
        for h in sweep.heads:
            h.bias.zero_()
    feats, labels = [torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.5]])], torch.tensor([0, 1, 1])
    assert sweep_accuracy(sweep, feats, labels, batch_size=2).tolist() == [2, 1]


def test_feature_specs_follow_dino_definitions() -> None:
    torch.manual_seed(0)
    model = build_vit("vit_tiny", embed_dim=16, depth=3, num_heads=2, patch_size=8, img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    specs = [FeatureSpec(1, "cls"), FeatureSpec(2, "cls"), FeatureSpec(1, "cls+avgpool")]
    with torch.no_grad():
        cls1, cls2, avg = spec_features(model, x, specs)
        blocks = model.get_intermediate_layers(x, 2, norm=True)
        torch.testing.assert_close(cls1, model(x))  # last block [CLS] after the final norm
        torch.testing.assert_close(cls2, torch.cat([blocks[0][:, 0], blocks[1][:, 0]], dim=-1))
        torch.testing.assert_close(avg, torch.cat([blocks[1][:, 0], blocks[1][:, 1:].mean(1)], dim=-1))
    assert [s.dim(16) for s in specs] == [16, 32, 32]
    with pytest.raises(ValueError, match=r"n_last_blocks=4 must be in \[1, 3\]"):
        spec_features(model, x, [FeatureSpec(4, "cls")])
