"""MLA: the equations against hand-computed values (projector update, gradient rules, entropies, fusion
weights, 2 and 3 modalities), the alternation (one optimizer step per modality, only its encoder and the
shared head learn), the model's fusion head unused, the inference rule behind val_acc, the window,
checkpoints (mid-training, across the window's start, with projections), refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import check_restore_continues, tiny_config

import mmtune.trainables  # noqa: F401  the other methods (composition test)
from mmtune.engine.registry import get_method
from mmtune.engine.trial import Trial, parse_trial_config
from mmtune.errors import ConfigError
from mmtune.trainables.mla import (
    batch_entropy,
    entropy_weights,
    fuse_logits,
    modify_gradient,
    owm_alpha,
    prediction_entropy,
    update_projector,
)

AV = ["audio", "video"]
AVT = ["audio", "video", "text"]


def mla_config(epochs: int = 2, *, modalities=AV, **params) -> dict:
    return tiny_config("mla", params=params, dataset={"modalities": list(modalities)}, train={"epochs": epochs})


def mla_trial(epochs: int = 2, *, modalities=AV, **params) -> Trial:
    return Trial(parse_trial_config(mla_config(epochs, modalities=modalities, **params)))


# -- the equations -------------------------------------------------------------------------------------
def test_alpha_schedule():
    assert owm_alpha(0, 10) == pytest.approx(0.1)
    assert owm_alpha(5, 10) == pytest.approx(0.1 ** 1.5)
    assert owm_alpha(9, 10) == pytest.approx(0.1 ** 1.9)


def test_projector_update_by_hand():
    # d = 2, P = I, r = (1, 0), α = 0.1: k = (1, 0), r k = 1 → P − diag(1, 0) / 1.1 = diag(1/11, 1).
    p = update_projector(torch.eye(2, dtype=torch.float64), torch.tensor([1.0, 0.0]), 0.1, normalize=False)
    assert torch.allclose(p, torch.tensor([[1 / 11, 0.0], [0.0, 1.0]], dtype=torch.float64))
    # ‖diag(1/11, 1)‖_F = √122 / 11.
    p = update_projector(torch.eye(2, dtype=torch.float64), torch.tensor([1.0, 0.0]), 0.1)
    assert torch.allclose(p, torch.tensor([[1 / math.sqrt(122), 0.0], [0.0, 11 / math.sqrt(122)]], dtype=torch.float64))
    # d = 3, r = (1, 1, 0), α = 0: the orthogonal projector onto r's complement, I − r rᵀ / 2; ‖·‖_F = √2.
    r = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    expected = torch.tensor([[0.5, -0.5, 0.0], [-0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(update_projector(torch.eye(3, dtype=torch.float64), r, 0.0, normalize=False), expected)
    assert torch.allclose(update_projector(torch.eye(3, dtype=torch.float64), r, 0.0), expected / math.sqrt(2))


def test_projected_step_keeps_the_response_to_absorbed_inputs():
    # With α → 0, after absorbing r_1 and r_2 the projected gradient ∇W Pᵀ leaves W r_1, W r_2 unchanged.
    g = torch.Generator().manual_seed(0)
    r1, r2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    p = update_projector(update_projector(torch.eye(6, dtype=torch.float64), r1, 1e-12), r2, 1e-12)
    grad = modify_gradient(torch.randn(4, 6, generator=g, dtype=torch.float64), p, "project")
    assert torch.allclose(grad @ r1, torch.zeros(4, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(grad @ r2, torch.zeros(4, dtype=torch.float64), atol=1e-8)


def test_gradient_rules_by_hand():
    grad = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    p = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    assert torch.equal(modify_gradient(grad, p, "project"), torch.tensor([[0.5, 0.0], [1.5, 0.0]]))
    assert torch.equal(modify_gradient(grad, p, "add"), torch.tensor([[1.5, 2.0], [4.5, 4.0]]))
    assert torch.equal(modify_gradient(grad, p, "none"), grad)


def test_entropies_by_hand():
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    z = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e4, -1e4]])
    assert torch.allclose(prediction_entropy(z), torch.tensor([math.log(4.0), h]), atol=1e-6)
    # The code's batch form: softmax over the batch (dim 0), summed over all B·C entries.
    assert batch_entropy(torch.zeros(2, 3)).item() == pytest.approx(3 * math.log(2.0))
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    probs = F.softmax(logits, dim=0)
    assert batch_entropy(logits).item() == pytest.approx(-torch.sum(probs * torch.log(probs)).item(), rel=1e-5)


def test_entropy_weights_two_and_three_modalities_by_hand():
    e_a, e_v = math.log(2.0), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    z_a = torch.tensor([[0.0, 0.0]])  # entropy ln 2
    z_v = torch.tensor([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    z_t = torch.tensor([[0.0, 100.0]])  # entropy ≈ 0
    top = max(e_a, e_v)
    w = [math.exp(top - e_a), math.exp(top - e_v)]
    lam = entropy_weights(torch.stack([z_a, z_v]))
    assert lam[:, 0].tolist() == pytest.approx([w[0] / sum(w), w[1] / sum(w)], rel=1e-5)
    w3 = [math.exp(e_a - e_a), math.exp(e_a - e_v), math.exp(e_a - 0.0)]
    lam3 = entropy_weights(torch.stack([z_a, z_v, z_t]))
    assert lam3[:, 0].tolist() == pytest.approx([x / sum(w3) for x in w3], rel=1e-5)
    # The fused logits Σ λ_m z_m.
    fused = fuse_logits(torch.stack([z_a, z_v]), lam)
    assert fused[0].tolist() == pytest.approx([0.0, lam[1, 0].item() * math.log(3.0)], abs=1e-6)
    assert fuse_logits(torch.stack([z_a, z_v]), torch.tensor([0.55, 0.45]))[0].tolist() == pytest.approx(
        [0.0, 0.45 * math.log(3.0)])
    # Batch scope: one weight per modality, the same for every sample.
    z = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(2))
    lam_b = entropy_weights(z, "batch")
    assert torch.allclose(lam_b, lam_b[:, :1].expand(3, 4)) and torch.allclose(lam_b.sum(0), torch.ones(4))


# -- the alternation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("modalities", [AV, AVT])
def test_one_step_per_modality_only_its_encoder_and_the_shared_head(modalities):
    trial = mla_trial(1, modalities=modalities)
    seen = []
    original = trial.method.modulate_gradients

    def record(model, out, batch, ctx):
        seen.append((ctx.step, ctx.substep, {m: all(p.grad is not None for p in model.encoders[m].parameters())
                                            and not any(p.grad is not None for j in modalities if j != m
                                                        for p in model.encoders[j].parameters())
                                            for m in [ctx.substep]},
                     trial.method._net["head"].weight.grad is not None,
                     any(p.grad is not None for p in model.fusion.parameters())))
        original(model, out, batch, ctx)

    trial.method.modulate_gradients = record
    fusion_before = {k: v.clone() for k, v in trial.model.fusion.state_dict().items()}
    metrics = trial.step()
    batches = math.ceil(256 / 32)
    assert [(s, m) for s, m, *_ in seen] == [(b, m) for b in range(batches) for m in modalities]
    assert all(only[m] and head and not fusion for _, m, only, head, fusion in seen)
    # The model's own fusion head is never used: bit-identical.
    assert all(torch.equal(v, fusion_before[k]) for k, v in trial.model.fusion.state_dict().items())
    for m in modalities:
        for q in ("loss", "entropy", "proj"):
            assert math.isfinite(metrics[f"trace/{q}/{m}"])
        assert 0.0 < metrics[f"trace/proj/{m}"] < 1.0  # the projection removes part of the head gradient


def test_the_usual_metrics_report_the_entropy_rule():
    trial = mla_trial(1)
    metrics = trial.step()
    method, model, val = trial.method, trial.model.eval(), trial.data.val
    with torch.no_grad():
        features = model(val.inputs).features
        z = torch.stack([method._net["head"](features[m]) for m in AV])  # equal sizes: no projection
        e = prediction_entropy(z)
        lam = torch.exp(e.max(0).values - e) / torch.exp(e.max(0).values - e).sum(0)
        fused = (lam.unsqueeze(-1) * z).sum(0)
    y = val.labels
    assert metrics["val_acc"] == pytest.approx((fused.argmax(1) == y).float().mean().item())
    for i, m in enumerate(AV):
        assert metrics[f"val_acc/{m}"] == pytest.approx((z[i].argmax(1) == y).float().mean().item())


def test_fixed_weights_on_one_modality_report_that_modality():
    metrics = mla_trial(1, fusion_rule="fixed", fusion_weights=[1.0, 0.0]).step()
    assert metrics["val_acc"] == pytest.approx(metrics["val_acc/audio"])


def test_no_gradient_modification_keeps_the_projector():
    trial = mla_trial(1, gradient="none")
    metrics = trial.step()
    assert torch.equal(trial.method.projector, torch.eye(trial.method.projector.shape[0]))
    assert metrics["trace/proj/audio"] == 0.0 and metrics["trace/proj/video"] == 0.0
    added = mla_trial(1, gradient="add").step()
    assert added["trace/proj/audio"] < 0.0  # ∇W (I + Pᵀ) is larger than ∇W


def test_window_joint_step_through_the_shared_head_before_start():
    trial = mla_trial(2, start_epoch=2)
    calls = []
    original = trial.method.modulate_gradients
    trial.method.modulate_gradients = lambda model, out, batch, ctx: (calls.append(ctx.substep), original(model, out, batch, ctx))
    first = trial.step()
    assert set(calls) == {None} and not any(k.startswith("trace/") for k in first)
    second = trial.step()
    assert set(calls[len(calls) // 2:]) == set(AV) and "trace/proj/video" in second


# -- checkpoints ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params", [{}, {"start_epoch": 2}, {"shared_dim": 16, "update_order": "project_first"}])
def test_save_restore_continue_equals_uninterrupted(params):
    restored, uninterrupted = check_restore_continues(mla_config(3, **params))
    assert torch.equal(restored.method.projector, uninterrupted.method.projector)
    for a, b in zip(restored.method.extra_parameters(), uninterrupted.method.extra_parameters(), strict=True):
        assert torch.equal(a, b)


def test_shared_dim_projects_every_modality_three_modalities():
    trial = mla_trial(1, modalities=AVT, shared_dim=16, head_init="xavier")
    assert set(trial.method._net["proj"]) == set(AVT) and trial.method._net["head"].in_features == 16
    assert not trial.method._net["head"].bias.any() and not trial.method._net["proj"]["text"].bias.any()  # the code's init
    assert all(math.isfinite(v) for k, v in trial.step().items() if k.startswith(("trace/", "val_acc")))


# -- refusals --------------------------------------------------------------------------------------------------
def test_bad_params_name_the_key():
    with pytest.raises(ConfigError, match=r"params.fusion_weights: is null, but fusion_rule=fixed"):
        parse_trial_config(tiny_config("mla", params={"fusion_rule": "fixed"}))
    with pytest.raises(ConfigError, match=r"params.fusion_weights: is only read with fusion_rule=fixed"):
        parse_trial_config(tiny_config("mla", params={"fusion_weights": [0.5, 0.5]}))
    with pytest.raises(ConfigError, match=r"params.fusion_weights: must be finite, non-negative"):
        parse_trial_config(tiny_config("mla", params={"fusion_rule": "fixed", "fusion_weights": [-1.0, 2.0]}))
    with pytest.raises(ConfigError, match=r"params.gradient"):
        parse_trial_config(tiny_config("mla", params={"gradient": "orthogonal"}))
    with pytest.raises(ConfigError, match=r"params.fusion_weights: needs one weight per modality \['audio', 'video', 'text'\]"):
        mla_trial(1, modalities=AVT, fusion_rule="fixed", fusion_weights=[0.55, 0.45])


def test_mla_does_not_compose():
    with pytest.raises(ConfigError, match="'mla' does not compose with other methods: MLA replaces the joint step"):
        get_method("mla+ogm")
