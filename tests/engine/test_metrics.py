"""Metrics against independent computations (numpy / scikit-learn / by hand), and TraceMeter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score

from mmtune.engine.method import TraceMeter
from mmtune.engine.metrics import (
    accuracy,
    classification_metrics,
    discrepancy_ratio,
    macro_f1,
    mean_average_precision,
    unimodal_score,
    unimodal_score_sums,
)

ATOL = 1e-6


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sk_macro_f1(preds: torch.Tensor, labels: torch.Tensor) -> float:
    return float(f1_score(labels.numpy(), preds.numpy(), average="macro", zero_division=0))


def sk_map(scores: torch.Tensor, labels: torch.Tensor) -> float:
    s, y = scores.double().numpy(), labels.numpy()
    aps = [average_precision_score(y == c, s[:, c]) for c in range(s.shape[1]) if (y == c).any()]
    return float(np.mean(aps))


# ----------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("seed", range(4))
def test_accuracy_matches_manual_count(seed: int) -> None:
    n, c = 37, 5
    logits = torch.randn(n, c, generator=gen(seed))
    labels = torch.randint(c, (n,), generator=gen(seed + 100))
    pred = logits.numpy().argmax(axis=1)
    expected = sum(int(p == y) for p, y in zip(pred, labels.numpy())) / n
    got = accuracy(logits, labels)
    assert got.shape == ()
    assert float(got) == pytest.approx(expected, abs=ATOL)


def test_accuracy_hand_example() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])  # right, right, wrong, wrong
    assert float(accuracy(logits, labels)) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- macro F1


@pytest.mark.parametrize("seed", range(6))
def test_macro_f1_matches_sklearn_random(seed: int) -> None:
    n, c = 50, 6
    labels = torch.randint(c, (n,), generator=gen(seed))
    preds = torch.randint(c, (n,), generator=gen(seed + 1000))
    assert float(macro_f1(preds, labels, c)) == pytest.approx(sk_macro_f1(preds, labels), abs=ATOL)


def test_macro_f1_class_never_predicted() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    preds = torch.tensor([0, 1, 1, 1, 0, 0, 3, 0])  # class 2 never predicted
    assert 2 in labels.tolist() and 2 not in preds.tolist()
    got = float(macro_f1(preds, labels, 4))
    assert got == pytest.approx(sk_macro_f1(preds, labels), abs=ATOL)


def test_macro_f1_class_predicted_but_absent_from_labels() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1, 0])
    preds = torch.tensor([0, 3, 1, 1, 3, 0])  # class 3 absent from labels; class 2 nowhere
    got = float(macro_f1(preds, labels, 5))
    assert got == pytest.approx(sk_macro_f1(preds, labels), abs=ATOL)
    # Three classes count (0, 1, 3), not 5 and not 2: F1 = (0.8 + 0.8 + 0) / 3.
    assert got == pytest.approx((0.8 + 0.8 + 0.0) / 3, abs=ATOL)


def test_macro_f1_all_one_class_predictions() -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    preds = torch.zeros(7, dtype=torch.long)
    got = float(macro_f1(preds, labels, 3))
    assert got == pytest.approx(sk_macro_f1(preds, labels), abs=ATOL)
    # class 0: tp=3, fp=4, fn=0 -> 6/10; classes 1, 2: 0.
    assert got == pytest.approx(0.6 / 3, abs=ATOL)


def test_macro_f1_perfect_and_single_class() -> None:
    labels = torch.tensor([2, 2, 2])
    assert float(macro_f1(labels.clone(), labels, 4)) == pytest.approx(1.0)
    labels = torch.tensor([0, 1, 2, 3])
    assert float(macro_f1(labels.clone(), labels, 4)) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- mAP


@pytest.mark.parametrize("seed", range(5))
def test_map_matches_sklearn_random(seed: int) -> None:
    n, c = 40, 5
    scores = torch.softmax(torch.randn(n, c, generator=gen(seed)) * 2, dim=1)
    labels = torch.randint(c, (n,), generator=gen(seed + 50))
    assert float(mean_average_precision(scores, labels)) == pytest.approx(sk_map(scores, labels), abs=ATOL)


@pytest.mark.parametrize("seed", range(5))
def test_map_matches_sklearn_with_heavy_ties(seed: int) -> None:
    n, c = 60, 4
    scores = torch.softmax(torch.randn(n, c, generator=gen(seed)), dim=1)
    scores = torch.round(scores * 10) / 10  # one decimal: many tied scores per class
    labels = torch.randint(c, (n,), generator=gen(seed + 7))
    distinct = min(len(torch.unique(scores[:, k])) for k in range(c))
    assert distinct < n // 4, "the test must actually contain heavy ties"
    assert float(mean_average_precision(scores, labels)) == pytest.approx(sk_map(scores, labels), abs=ATOL)


def test_map_all_scores_tied() -> None:
    scores = torch.full((6, 3), 1 / 3)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    # every class: one threshold with precision = prevalence
    expected = (2 / 6 + 3 / 6 + 1 / 6) / 3
    assert float(mean_average_precision(scores, labels)) == pytest.approx(expected, abs=ATOL)
    assert expected == pytest.approx(sk_map(scores, labels), abs=ATOL)


def test_map_skips_class_without_positives() -> None:
    n, c = 30, 4
    scores = torch.softmax(torch.randn(n, c, generator=gen(3)), dim=1)
    labels = torch.randint(3, (n,), generator=gen(4))  # class 3 has no positives
    assert not (labels == 3).any()
    got = float(mean_average_precision(scores, labels))
    assert got == pytest.approx(sk_map(scores, labels), abs=ATOL)
    # averaging over 3 classes, not 4 (a zero AP for class 3 would lower the mean)
    per_class = [average_precision_score(labels.numpy() == k, scores[:, k].numpy()) for k in range(3)]
    assert got == pytest.approx(sum(per_class) / 3, abs=ATOL)


def test_map_hand_example() -> None:
    # class 0 ranking: s=.9 (pos), .8 (neg), .7 (pos) -> AP = 1/2*1 + 1/2*2/3 = 5/6
    # class 1 ranking: s=.3 (pos) first -> ... computed by hand below
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    labels = torch.tensor([0, 1, 0])
    # class 1: scores .3 (neg), .2 (pos), .1 (neg) -> AP = precision at rank 2 = 1/2
    expected = (5 / 6 + 1 / 2) / 2
    assert float(mean_average_precision(scores, labels)) == pytest.approx(expected, abs=ATOL)


# ----------------------------------------------------------------------------- uni-modal score


def test_unimodal_score_hand_computed() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(2.0), math.log(2.0)], [1.0, 2.0]])
    labels = torch.tensor([1, 0, 0])
    # softmax rows: [1/4, 3/4], [1/2, 1/2], [1/(1+e), e/(1+e)]
    expected = torch.tensor([0.75, 0.5, 1 / (1 + math.e)])
    got = unimodal_score(logits, labels)
    assert got.shape == (3,)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_unimodal_score_matches_softmax_gather() -> None:
    logits = torch.randn(10, 4, generator=gen(0), dtype=torch.float64)
    labels = torch.randint(4, (10,), generator=gen(1))
    p = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
    expected = torch.stack([p[i, labels[i]] for i in range(10)]).float()
    torch.testing.assert_close(unimodal_score(logits, labels), expected, atol=ATOL, rtol=0)


def test_unimodal_score_sums_stack_every_modality() -> None:
    stacked = torch.randn(3, 10, 4, generator=gen(2))
    labels = torch.randint(4, (10,), generator=gen(3))
    expected = torch.stack([unimodal_score(stacked[m], labels).sum() for m in range(3)])
    torch.testing.assert_close(unimodal_score_sums(stacked, labels), expected, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- discrepancy ratio


def test_discrepancy_ratio_two_modalities() -> None:
    got = discrepancy_ratio(torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(got, torch.tensor([3.0, 1.0 / 3.0]), atol=ATOL, rtol=0)


def test_discrepancy_ratio_three_modalities() -> None:
    got = discrepancy_ratio(torch.tensor([4.0, 2.0, 1.0]))
    rho0 = (4 / 2 + 4 / 1) / 2  # 3
    rho1 = (2 / 4 + 2 / 1) / 2  # 1.25
    rho2 = (1 / 4 + 1 / 2) / 2  # 0.375
    torch.testing.assert_close(got, torch.tensor([rho0, rho1, rho2]), atol=ATOL, rtol=0)


def test_discrepancy_difference_form_three_modalities() -> None:
    got = discrepancy_ratio(torch.tensor([4.0, 2.0, 1.0]), form="difference")
    d0 = ((4 - 2) + (4 - 1)) / 2  # 2.5
    d1 = ((2 - 4) + (2 - 1)) / 2  # -0.5
    d2 = ((1 - 4) + (1 - 2)) / 2  # -2
    torch.testing.assert_close(got, torch.tensor([d0, d1, d2]), atol=ATOL, rtol=0)


def test_discrepancy_ratio_balanced_is_one_and_zero_sum_is_finite() -> None:
    torch.testing.assert_close(discrepancy_ratio(torch.tensor([2.0, 2.0, 2.0])), torch.ones(3), atol=ATOL, rtol=0)
    assert torch.isfinite(discrepancy_ratio(torch.tensor([1.0, 0.0]))).all()  # ε keeps it finite


def test_discrepancy_ratio_rejects_one_modality_and_bad_form() -> None:
    with pytest.raises(ValueError, match="two or more"):
        discrepancy_ratio(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="form"):
        discrepancy_ratio(torch.tensor([1.0, 2.0]), form="ratios")


# ----------------------------------------------------------------------------- classification_metrics


def test_classification_metrics_keys_and_values() -> None:
    n, c = 25, 4
    logits = torch.randn(n, c, generator=gen(11))
    labels = torch.randint(c, (n,), generator=gen(12))
    out = classification_metrics(logits, labels, c)
    assert set(out) == {"acc", "macro_f1", "map"}
    for v in out.values():
        assert isinstance(v, torch.Tensor) and v.dim() == 0
    assert float(out["acc"]) == pytest.approx(float((logits.argmax(1) == labels).float().mean()), abs=ATOL)
    assert float(out["macro_f1"]) == pytest.approx(sk_macro_f1(logits.argmax(1), labels), abs=ATOL)
    assert float(out["map"]) == pytest.approx(sk_map(torch.softmax(logits, 1), labels), abs=ATOL)


# ----------------------------------------------------------------------------- TraceMeter


def test_trace_meter_running_means_and_reset() -> None:
    meter = TraceMeter()
    assert meter.compute() == {}
    for v in (1.0, 2.0, 6.0):
        meter.add("k", torch.tensor(v))
    meter.add("q", torch.tensor(5, dtype=torch.long))
    meter.add_many("rho", torch.tensor([1.0, 4.0]), ["audio", "video"])
    meter.add_many("rho", torch.tensor([3.0, 0.0]), ["audio", "video"])
    out = meter.compute()
    assert out == pytest.approx({"k": 3.0, "q": 5.0, "rho/audio": 2.0, "rho/video": 2.0})
    assert all(isinstance(v, float) for v in out.values())
    # compute does not consume the state
    assert meter.compute() == pytest.approx(out)
    meter.reset()
    assert meter.compute() == {}
    meter.add("k", torch.tensor(10.0))
    assert meter.compute() == pytest.approx({"k": 10.0})


def test_trace_meter_does_not_alias_or_track_grad() -> None:
    meter = TraceMeter()
    x = torch.tensor(2.0, requires_grad=True)
    v = torch.tensor(1.0)
    meter.add("a", v)
    meter.add("a", torch.tensor(3.0))
    assert float(v) == 1.0  # the caller's tensor is not accumulated into in place
    meter.add("g", x * 2)
    assert meter.compute() == pytest.approx({"a": 2.0, "g": 4.0})
