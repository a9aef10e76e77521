"""transfer.knn against a hand-computed example: cosine top-k, exp(sim / T)-weighted class votes."""
from __future__ import annotations

import math

import pytest
import torch

from transfer.knn import knn_accuracy, knn_scores

# Train set on the unit circle (x, y) with class labels; the query is (1, 0).
#   t0 = (1, 0)     class 0   cos = 1.0
#   t1 = (0.6, 0.8) class 1   cos = 0.6
#   t2 = (0.8, 0.6) class 1   cos = 0.8
#   t3 = (0, 1)     class 2   cos = 0.0
# Scaled copies check that the features are L2-normalised (cosine, not dot product).
TRAIN = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0]]) * torch.tensor([[3.0], [0.5], [2.0], [1.0]])
LABELS = torch.tensor([0, 1, 1, 2])
QUERY = torch.tensor([[5.0, 0.0]])


def test_hand_computed_votes_at_low_temperature() -> None:
    t = 0.07
    scores = knn_scores(TRAIN, LABELS, QUERY, ks=[1, 3, 4], temperature=t, num_classes=3)
    # k = 3: neighbours t0 (1.0), t2 (0.8), t1 (0.6)
    expected3 = [math.exp(1.0 / t), math.exp(0.8 / t) + math.exp(0.6 / t), 0.0]
    torch.testing.assert_close(scores[3][0], torch.tensor(expected3), rtol=1e-5, atol=0)
    torch.testing.assert_close(scores[1][0], torch.tensor([math.exp(1.0 / t), 0.0, 0.0]), rtol=1e-5, atol=0)
    torch.testing.assert_close(scores[4][0], torch.tensor([*expected3[:2], math.exp(0.0)]), rtol=1e-5, atol=0)
    # two class-1 votes lose to one much closer class-0 vote at T = 0.07 (a plain majority would say class 1)
    assert int(scores[3].argmax()) == 0


def test_temperature_changes_the_winner() -> None:
    scores = knn_scores(TRAIN, LABELS, QUERY, ks=[3], temperature=1.0, num_classes=3)[3][0]
    expected = torch.tensor([math.e, math.exp(0.8) + math.exp(0.6), 0.0])  # 2.718 < 4.048
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=0)
    assert int(scores.argmax()) == 1


def test_chunking_and_accuracy() -> None:
    g = torch.Generator().manual_seed(0)
    train, labels = torch.randn(50, 8, generator=g), torch.randint(0, 6, (50,), generator=g)
    test, test_labels = torch.randn(13, 8, generator=g), torch.randint(0, 6, (13,), generator=g)
    full = knn_scores(train, labels, test, [5, 20], 0.07, 6)
    chunked = knn_scores(train, labels, test, [5, 20], 0.07, 6, chunk=4)
    for k in (5, 20):
        torch.testing.assert_close(full[k], chunked[k])
    acc = knn_accuracy(full[20], test_labels)
    assert acc["top1"] == pytest.approx(100 * (full[20].argmax(1) == test_labels).double().mean().item())
    assert acc["top1"] <= acc["top5"] <= 100
    # a query equal to a training sample with k = 1 recovers that sample's label
    self_scores = knn_scores(train, labels, train, [1], 0.07, 6)[1]
    assert knn_accuracy(self_scores, labels)["top1"] == 100.0


def test_k_larger_than_train_set() -> None:
    with pytest.raises(ValueError, match="k=5 exceeds the 4 training samples"):
        knn_scores(TRAIN, LABELS, QUERY, [5], 0.07, 3)
