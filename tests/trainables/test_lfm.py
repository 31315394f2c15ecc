"""LFM: the divergence, InfoNCE, the alignment loss, the integrated loss, the α_1 update and the heuristic
by hand (2 and 3 modalities); traces, window, learned α is an extra parameter, restore, bad params."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import check_restore_continues, tiny_config

from mmtune.engine.trial import Trial, parse_trial_config
from mmtune.errors import ConfigError
from mmtune.trainables.lfm import (
    alignment_loss,
    cross_modal_infonce,
    heuristic_alpha,
    integrated_loss,
    learned_alpha_step,
    pair_divergence,
)

AV = ["audio", "video"]
AVT = ["audio", "video", "text"]


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b))


def test_pair_divergence_by_hand():
    zi, zj = t([0.0, 0.0]), t([math.log(3.0), 0.0])  # p = (.5, .5), q = (.75, .25), m = (.625, .375)
    p, q, m = (0.5, 0.5), (0.75, 0.25), (0.625, 0.375)
    assert pair_divergence(zi, zj, "code").item() == pytest.approx(0.5 * (kl(m, p) + kl(m, q)))
    assert pair_divergence(zi, zj, "js").item() == pytest.approx(0.5 * (kl(p, m) + kl(q, m)))
    assert pair_divergence(zi, zi, "code").item() == pytest.approx(0.0, abs=1e-12)


def test_infonce_by_hand():
    z = t([1.0, 0.0], [0.0, 1.0])  # identical views, τ = 1: each row CE = log(1 + e^{-1}) − ... by hand
    expected = -math.log(math.e / (math.e + 1.0))
    assert cross_modal_infonce(z, z, 1.0).item() == pytest.approx(expected)


def test_alignment_loss_two_and_three_modalities():
    a, b, c = t([0.0, 0.0]), t([math.log(3.0), 0.0]), t([0.0, 0.0])
    d_ab = pair_divergence(a, b).item()
    total, per = alignment_loss([a, b])
    assert total.item() == pytest.approx(d_ab) and per.tolist() == pytest.approx([d_ab, d_ab])
    total, per = alignment_loss([a, b, c])  # pairs (a,b), (a,c) = 0, (b,c) = d_ab
    assert total.item() == pytest.approx(2 * d_ab / 3)
    assert per.tolist() == pytest.approx([d_ab / 2, d_ab, d_ab / 2])


def test_integrated_loss_update_and_heuristic():
    assert integrated_loss(t(2.0), t(1.0), 0.25, 2.0).item() == pytest.approx(2 * (0.75 * 2 + 0.25 * 1))
    assert learned_alpha_step(0.05, -100.0, 1e-4) == pytest.approx(0.06)
    assert learned_alpha_step(0.05, 5.0, 1.0) == 0.05 and learned_alpha_step(0.9, -5.0, 1.0) == 0.95
    assert heuristic_alpha(1, 1, 0.5, 0.1, 4) == 0.5
    assert heuristic_alpha(3, 1, 0.5, 0.1, 4) == pytest.approx(0.3)
    assert heuristic_alpha(9, 1, 0.5, 0.1, 4) == pytest.approx(0.1)


def build(params=None, **sections):
    return Trial(parse_trial_config(tiny_config("lfm", params=params or {}, **sections)))


@pytest.mark.parametrize("params", [{}, {"strategy": "heuristic", "align": "infonce"}])
def test_short_trial_reports_finite_traces_two_and_three_modalities(params):
    for modalities in (AV, AVT):
        trial = build({**params, "lr_alpha": 1.0}, dataset={"modalities": modalities})
        metrics = trial.step()
        for quantity in ("align", "unimodal_ce"):
            for m in modalities:
                assert math.isfinite(metrics[f"trace/{quantity}/{m}"]), (quantity, m)
        assert 0.05 <= metrics["trace/alpha"] <= 0.95 and math.isfinite(metrics["train_loss"])
        assert any(p is trial.method._alpha for g in trial.optimizer.param_groups for p in g["params"])


def test_window_and_heuristic_schedule():
    trial = build({"strategy": "heuristic", "start_epoch": 2, "end_epoch": 2, "decay_epochs": 1})
    first = trial.step()
    assert not any(k.startswith("trace/") for k in first)
    second = trial.step()
    assert second["trace/alpha"] == pytest.approx(0.5)
    third = trial.step()
    assert not any(k.startswith("trace/") for k in third)


def test_save_restore_continue_equals_uninterrupted():
    restored, uninterrupted = check_restore_continues(tiny_config("lfm", params={"lr_alpha": 10.0}))
    assert torch.equal(restored.method.alpha, uninterrupted.method.alpha)
    assert restored.method.lr_now == uninterrupted.method.lr_now


def test_one_modality_is_refused():
    with pytest.raises(ConfigError, match="dataset.modalities"):
        build(dataset={"modalities": ["audio"]})


@pytest.mark.parametrize(("key", "value"), [
    ("strategy", "meta"), ("align", "cos"), ("divergence", "kl"), ("temperature", 0.0), ("alpha_init", 0.99),
    ("lr_alpha", -1.0), ("hvp", "diag"), ("decay_epochs", 0),
])
def test_bad_params_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"params.{key}"):
        parse_trial_config(tiny_config("lfm", params={key: value}))


def test_loop_ce_plus_extra_loss_is_the_integrated_loss_and_learned_alpha_moves():
    import torch.nn.functional as F

    from mmtune.engine.method import StepContext

    trial = build({"lr_alpha": 10.0})
    trial.step()
    method = trial.method
    assert method.alpha.item() != pytest.approx(0.05)  # the hypergradient rule moved α_1
    batch = next(trial.data.train.batches(32))
    out = trial.model(batch.inputs)
    ctx = StepContext(epoch=1, step=0, global_step=0, modulating=True, generator=trial.method_generator, device=trial.device)
    ce = F.cross_entropy(out.logits, batch.labels)
    uni = trial.model.modality_logits(out.features)
    align, _ = alignment_loss([uni[m] for m in AV])
    total = ce + method.extra_loss(out, batch, ctx)
    assert total.item() == pytest.approx(integrated_loss(ce, align, method.alpha, 2.0).item(), rel=1e-5)
    assert method._alpha.grad is None
