"""MBSD: the sample weight, the regression and distillation terms and the pair mean by hand (2 and 3
modalities); the gradient flows through the weight as in the code; traces, window, restore, bad params."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import check_restore_continues, tiny_config

from mmtune.engine.method import StepContext
from mmtune.engine.trial import Trial, parse_trial_config
from mmtune.errors import ConfigError
from mmtune.trainables.mbsd import (
    distillation_term,
    pair_loss,
    pair_weight,
    regression_term,
    self_distillation_loss,
    true_class_confidence,
)

AV = ["audio", "video"]
AVT = ["audio", "video", "text"]
PER_MODALITY = ("confidence", "strong", "unimodal_ce")
SHARED = ("weight", "rs", "kl", "sd_loss")


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


# ----------------------------------------------------------------------------- pure functions

def test_weight_regression_and_code_kl_by_hand():
    # p^i_y = (0.7, 0.2, 0.5), p^j_y = (0.4, 0.6, 0.1); the third sample: neither modality right.
    pi, pj = t(0.7, 0.2, 0.5), t(0.4, 0.6, 0.1)
    ci, cj = torch.tensor([True, False, False]), torch.tensor([False, True, False])
    assert pair_weight(pi, pj, ci, cj).tolist() == pytest.approx([0.3, 0.4, 0.0])
    assert regression_term(t(1.0, 2.0).reshape(1, 2), t(0.0, 0.0).reshape(1, 2)).tolist() == pytest.approx([2.5])
    # code: p_w (log p_w − p_s) with p_s = max, p_w = min (kl_div with a probability as "input").
    kl = distillation_term(pi, pj)
    expected = [0.4 * (math.log(0.4) - 0.7), 0.2 * (math.log(0.2) - 0.6), 0.1 * (math.log(0.1) - 0.5)]
    assert kl.tolist() == pytest.approx(expected)
    assert kl.tolist() == pytest.approx(F.kl_div(torch.maximum(pi, pj), torch.minimum(pi, pj), reduction="none").tolist())
    assert distillation_term(t(0.5), t(0.0)).tolist() == [0.0]  # p_w = 0: 0, as kl_div
    assert pair_loss(t(0.3, 0.4, 0.0), t(1.0, 2.0, 5.0), t(1.0, 0.5, 7.0)).item() == pytest.approx((0.6 + 1.0) / 3)


def test_full_kl_distils_from_the_side_with_the_larger_true_class_probability():
    probs_i = t(0.7, 0.3).reshape(1, 2)
    probs_j = t(0.4, 0.6).reshape(1, 2)
    kl = distillation_term(probs_i[:, 0], probs_j[:, 0], probs_i, probs_j, kind="full")  # label 0: i is strong
    assert kl.item() == pytest.approx(0.7 * math.log(0.7 / 0.4) + 0.3 * math.log(0.3 / 0.6))
    kl = distillation_term(probs_i[:, 1], probs_j[:, 1], probs_i, probs_j, kind="full")  # label 1: j is strong
    assert kl.item() == pytest.approx(0.4 * math.log(0.4 / 0.7) + 0.6 * math.log(0.6 / 0.3))


def by_hand(logits, labels, space, i, j):
    probs, p_y, correct = true_class_confidence(logits, labels)
    w = pair_weight(p_y[i], p_y[j], correct[i], correct[j])
    z = logits if space == "logits" else probs
    return pair_loss(w, regression_term(z[i], z[j]), distillation_term(p_y[i], p_y[j]))


def test_two_modalities_one_pair_on_logits():
    logits = t(2.0, 0.0, 1.0, -1.0, 0.5, 0.0, 0.0, 3.0).reshape(2, 2, 2)  # (M, B, C)
    labels = torch.tensor([0, 1])
    probs, p_y, correct = true_class_confidence(logits, labels)
    assert p_y[0].tolist() == pytest.approx([1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2))])
    assert correct.tolist() == [[True, False], [True, True]]
    loss, parts = self_distillation_loss(logits, labels)
    assert loss.item() == pytest.approx(by_hand(logits, labels, "logits", 0, 1).item())
    # RS on logits, 1/C: sample 0 ((2 − 0.5)² + 0²)/2 = 1.125; sample 1 ((1 − 0)² + (−1 − 3)²)/2 = 8.5.
    w = pair_weight(p_y[0], p_y[1], correct[0], correct[1])
    assert parts["rs"].item() == pytest.approx(((w[0] * 1.125 + w[1] * 8.5) / 2).item())
    assert parts["strong"].sum().item() == pytest.approx(1.0)


def test_three_modalities_average_three_pairs_on_probabilities():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0])
    loss, parts = self_distillation_loss(logits, labels)  # code: probs for M = 3
    expected = sum(by_hand(logits, labels, "probs", i, j) for i, j in [(0, 1), (0, 2), (1, 2)]) / 3
    assert loss.item() == pytest.approx(expected.item())
    on_logits, _ = self_distillation_loss(logits, labels, rs_space="logits")
    expected = sum(by_hand(logits, labels, "logits", i, j) for i, j in [(0, 1), (0, 2), (1, 2)]) / 3
    assert on_logits.item() == pytest.approx(expected.item())
    assert parts["strong"].sum().item() == pytest.approx(1.5)  # 3 pairs, shares per modality over its 2 pairs


def test_gradient_flows_through_the_weight_unless_detached():
    logits = t(2.0, 0.0, 0.5, 0.0).reshape(2, 1, 2).requires_grad_(True)
    labels = torch.tensor([0])
    g_code = torch.autograd.grad(self_distillation_loss(logits, labels)[0], logits)[0]
    g_det = torch.autograd.grad(self_distillation_loss(logits, labels, detach_weight=True)[0], logits)[0]
    assert not torch.allclose(g_code, g_det)


# ----------------------------------------------------------------------------- the method in a trial

def build(params=None, **sections):
    return Trial(parse_trial_config(tiny_config("mbsd", params=params or {}, **sections)))


def test_short_trial_reports_finite_traces_two_and_three_modalities():
    for modalities, params in ((AV, {}), (AVT, {"kl": "full", "logits": "own"})):
        metrics = build(params, dataset={"modalities": modalities}).step()
        for quantity in PER_MODALITY:
            for m in modalities:
                assert math.isfinite(metrics[f"trace/{quantity}/{m}"]), (quantity, m)
        for quantity in SHARED:
            assert math.isfinite(metrics[f"trace/{quantity}/all"]), quantity
        assert math.isfinite(metrics["train_loss"])


def test_extra_loss_adds_the_unimodal_ce_and_lambda_times_the_self_distillation():
    trial = build({"lam": 2.0})
    batch = next(trial.data.train.batches(16, generator=torch.Generator().manual_seed(0)))
    out = trial.model(batch.inputs)
    ctx = StepContext(epoch=1, step=0, global_step=0, modulating=True, generator=trial.method_generator,
                      device=trial.device)
    extra = trial.method.extra_loss(out, batch, ctx)
    u = trial.model.stacked_unimodal_logits(out.features)
    sd, _ = self_distillation_loss(u, batch.labels)
    ce = sum(F.cross_entropy(x, batch.labels) for x in u)
    assert extra.item() == pytest.approx((ce + 2.0 * sd).item(), rel=1e-5)
    trial = build({"unimodal_ce": False, "lam": 0.0})
    out = trial.model(batch.inputs)
    assert trial.method.extra_loss(out, batch, ctx).item() == 0.0


def test_window_is_respected():
    trial = build({"start_epoch": 2, "end_epoch": 2})
    assert not any(k.startswith("trace/") for k in trial.step())
    assert math.isfinite(trial.step()["trace/sd_loss/all"])
    assert not any(k.startswith("trace/") for k in trial.step())


def test_save_restore_continue_equals_uninterrupted():
    check_restore_continues(tiny_config("mbsd"))


def test_one_modality_is_refused():
    with pytest.raises(ConfigError, match="dataset.modalities"):
        build(dataset={"modalities": ["audio"]})


@pytest.mark.parametrize(("key", "value"), [
    ("lam", -1.0), ("rs_space", "features"), ("kl", "js"), ("logits", "fused"),
])
def test_bad_params_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"params.{key}"):
        parse_trial_config(tiny_config("mbsd", params={key: value}))
