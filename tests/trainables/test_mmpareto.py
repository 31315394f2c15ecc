"""MMPareto: the two-objective MGDA closed form, the integration and the magnitude rule by hand (2 and 3
modalities, conflict and no conflict), the encoder gradients after ``modulate_gradients`` against a hand
integration on a tiny model, no extra forward pass, the window, save → restore → continue, bad params."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import check_restore_continues, tiny_config

from mmtune.engine.method import StepContext
from mmtune.engine.trial import Trial, parse_trial_config
from mmtune.errors import ConfigError
from mmtune.trainables.mmpareto import (
    encoder_coefficients,
    encoder_gram,
    gradient_cosine,
    gradient_gram,
    integrated_norm_sq,
    integration_weights,
    magnitude_scale,
    mmpareto_gradients,
    pareto_weight,
    sum_norm_sq,
)

THREE = {"modalities": ["audio", "video", "text"]}
QUANTITIES = ("cos", "conflict", "pareto_weight", "pareto_norm", "magnitude_ratio", "norm_mm", "norm_uni", "uni_loss")


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def inner(g1, g2):
    return g1 @ g1, g2 @ g2, g1 @ g2


# ----------------------------------------------------------------------------- pure functions

def test_pareto_weight_closed_form_by_hand():
    # g1 = (1, 0), g2 = (−1, 1): α = (‖g2‖² − ⟨g1,g2⟩) / ‖g1 − g2‖² = (2 + 1) / 5.
    g1, g2 = t(1, 0), t(-1, 1)
    alpha = pareto_weight(*inner(g1, g2))
    assert alpha.item() == pytest.approx(0.6)
    point = alpha * g1 + (1 - alpha) * g2  # (0.2, 0.4): orthogonal to g1 − g2, the min-norm point
    assert point.tolist() == pytest.approx([0.2, 0.4]) and (point @ (g1 - g2)).item() == pytest.approx(0.0, abs=1e-12)
    # Hull ends: g2 = 2·g1 puts everything on the shorter g1; g1 = 3·g2 everything on g2; equal → 1/2.
    assert pareto_weight(*inner(t(1, 0), t(2, 0))).item() == 1.0
    assert pareto_weight(*inner(t(3, 0), t(1, 0))).item() == 0.0
    assert pareto_weight(*inner(t(1, 2), t(1, 2))).item() == 0.5


def test_pareto_weight_is_the_min_norm_point_of_the_hull():
    g = torch.Generator().manual_seed(0)
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)
    for _ in range(10):
        g1, g2 = torch.randn(7, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64) * 3
        norms = (grid[:, None] * g1 + (1 - grid[:, None]) * g2).norm(dim=1)
        assert pareto_weight(*inner(g1, g2)).item() == pytest.approx(grid[norms.argmin()].item(), abs=1e-4)


def test_cosine_and_weights_two_modalities_conflict_and_not():
    # Audio: no conflict (cos > 0); video: conflict (cos < 0). Stacked as (M,) tensors.
    ga1, ga2 = t(1, 1), t(2, 0)
    gv1, gv2 = t(1, 0), t(-1, 1)
    aa, bb, ab = (torch.stack(x) for x in zip(inner(ga1, ga2), inner(gv1, gv2), strict=True))
    assert gradient_cosine(aa, bb, ab).tolist() == pytest.approx([2 / (math.sqrt(2) * 2), -1 / math.sqrt(2)])
    assert integration_weights(aa, bb, ab).flatten().tolist() == pytest.approx([0.5, 0.5, 0.6, 0.4])  # mmpareto
    assert integration_weights(aa, bb, ab, "uniform").tolist() == [[0.5, 0.5], [0.5, 0.5]]
    # Conventional Pareto also on the non-conflicting pair: ⟨g1,g2⟩ = 2 ≥ ‖g1‖² = 2 → all on g1.
    assert integration_weights(aa, bb, ab, "pareto").flatten().tolist() == pytest.approx([1.0, 0.0, 0.6, 0.4])
    # A zero gradient has cosine 0: no conflict, uniform weights (cos ≥ 0).
    zero = inner(t(0, 0), t(1, 2))
    assert gradient_cosine(*zero).item() == 0.0 and integration_weights(*zero).tolist() == [0.5, 0.5]


def test_magnitude_rule_by_hand():
    g1, g2 = t(1, 0), t(-1, 1)  # conflict; α = 0.6, h = 2·(0.2, 0.4) = (0.4, 0.8), g1 + g2 = (0, 1)
    aa, bb, ab = inner(g1, g2)
    w = integration_weights(aa, bb, ab)
    assert integrated_norm_sq(aa, bb, ab, w).item() == pytest.approx(0.8)
    assert sum_norm_sq(aa, bb, ab).item() == pytest.approx(1.0)
    assert magnitude_scale(t(1.0), t(0.8)).item() == pytest.approx(1 / math.sqrt(0.8))
    assert magnitude_scale(t(0.25), t(1.0), "code").item() == 1.0  # the code only scales up
    assert magnitude_scale(t(0.25), t(1.0), "paper").item() == pytest.approx(0.5)
    assert magnitude_scale(t(4.0), t(1.0), "none").item() == 1.0
    assert magnitude_scale(t(1.0), t(0.0)).item() == 1.0  # h = 0: nothing to rescale

    # Paper: the whole encoder's h rescaled to ‖g1 + g2‖ = 1: (0.4, 0.8)/√0.8.
    [final] = mmpareto_gradients([g1], [g2])
    assert final.tolist() == pytest.approx([0.4 / math.sqrt(0.8), 0.8 / math.sqrt(0.8)])
    assert final.norm().item() == pytest.approx((g1 + g2).norm().item())
    assert mmpareto_gradients([g1], [g2], magnitude="none")[0].tolist() == pytest.approx([0.4, 0.8])
    assert mmpareto_gradients([g1], [g2], grad_scale=1.5)[0].tolist() == pytest.approx((1.5 * final).tolist())
    # The code rescales per tensor, only up: split the encoder into two one-element tensors.
    # Tensor 0: h = 0.4, g1 + g2 = 0 → ratio 0 → max(1, 0) = 1 → 0.4. Tensor 1: h = 0.8, sum = 1 → 1.0.
    parts = mmpareto_gradients([g1[:1], g1[1:]], [g2[:1], g2[1:]], magnitude="code")
    assert [p.item() for p in parts] == pytest.approx([0.4, 1.0])
    parts = mmpareto_gradients([g1[:1], g1[1:]], [g2[:1], g2[1:]], magnitude="code", grad_scale=1.5)
    assert [p.item() for p in parts] == pytest.approx([0.6, 1.5])
    # Paper, split the same way: one encoder-wide factor, the same numbers as unsplit.
    parts = mmpareto_gradients([g1[:1], g1[1:]], [g2[:1], g2[1:]])
    assert torch.cat(parts).tolist() == pytest.approx(final.tolist())


def test_no_conflict_is_the_plain_sum():
    g1, g2 = [t(1, 2), t(0.5)], [t(3, -1), t(2.0)]  # ⟨g1,g2⟩ = 1 + 1 > 0
    for magnitude in ("paper", "code", "none"):
        out = mmpareto_gradients(g1, g2, magnitude=magnitude)
        assert torch.cat(out).tolist() == pytest.approx([4, 1, 2.5])


def test_three_modalities_by_hand():
    # Three encoders: audio no conflict, video conflict, text conflict with a zero multimodal gradient.
    pairs = {"audio": (t(1, 1), t(2, 0)), "video": (t(1, 0), t(-1, 1)), "text": (t(0, 0), t(0, 3))}
    grams = torch.stack([gradient_gram([a], [b]).sum(0) for a, b in pairs.values()])
    assert grams.tolist() == [[2, 4, 2], [1, 2, -1], [0, 9, 0]]
    w = integration_weights(*grams.unbind(-1))
    assert w.flatten().tolist() == pytest.approx([0.5, 0.5, 0.6, 0.4, 0.5, 0.5])  # text: cos 0 → uniform
    finals = [mmpareto_gradients([a], [b])[0] for a, b in pairs.values()]
    assert finals[0].tolist() == pytest.approx([3, 1])  # the sum
    assert finals[1].tolist() == pytest.approx([0.4 / math.sqrt(0.8), 0.8 / math.sqrt(0.8)])
    assert finals[2].tolist() == pytest.approx([0, 3])
    # The same through the batched scalar functions, all three rows at once.
    aa, bb, ab = grams.unbind(-1)
    scale = magnitude_scale(sum_norm_sq(aa, bb, ab), integrated_norm_sq(aa, bb, ab, w))
    assert scale.tolist() == pytest.approx([1.0, 1 / math.sqrt(0.8), 1.0])


def test_encoder_coefficients_shape_and_gram_of_missing_gradients():
    gram = gradient_gram([t(1, 0), None], [t(-1, 1), t(2.0)])
    assert gram.tolist() == [[1, 2, -1], [0, 4, 0]]
    assert encoder_gram([t(1, 0), t(0.0)], [t(-1, 1), t(2.0)]).tolist() == [1, 6, -1]  # the rows summed
    g = torch.Generator().manual_seed(1)
    a = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    b = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    assert torch.allclose(encoder_gram(a, b), gradient_gram(a, b).sum(0), atol=1e-5)
    c = encoder_coefficients(gram, integration_weights(*gram.sum(0)), magnitude="code", grad_scale=2.0)
    assert c.shape == (2, 2)
    with pytest.raises(ValueError, match="integration"):
        integration_weights(*gram.sum(0), "mgda")
    with pytest.raises(ValueError, match="magnitude"):
        encoder_coefficients(gram, torch.tensor([0.5, 0.5], dtype=torch.float64), magnitude="global")


# ----------------------------------------------------------------------------- the method in a trial

def build(params=None, **sections):
    return Trial(parse_trial_config(tiny_config("mmpareto", params=params or {}, **sections)))


def context(trial, epoch=1):
    return StepContext(epoch=epoch, step=0, global_step=0, modulating=True, generator=trial.method_generator,
                       device=trial.device, model=trial.model, optimizer=trial.optimizer, train=trial.data.train,
                       batch_size=trial.spec.train.batch_size)


def test_short_trial_reports_finite_traces_two_and_three_modalities():
    for dataset, modalities in (({}, ["audio", "video"]), (THREE, THREE["modalities"])):
        metrics = build(dataset=dataset).step()
        for quantity in QUANTITIES:
            for m in modalities:
                assert math.isfinite(metrics[f"trace/{quantity}/{m}"]), (quantity, m)
        for m in modalities:
            assert -1.0 <= metrics[f"trace/cos/{m}"] <= 1.0 and 0.0 <= metrics[f"trace/conflict/{m}"] <= 1.0
            assert 0.0 <= metrics[f"trace/pareto_weight/{m}"] <= 1.0
            assert 0.0 < metrics[f"trace/pareto_norm/{m}"] <= 1.0 + 1e-6
            assert metrics[f"trace/magnitude_ratio/{m}"] == pytest.approx(1.0, abs=1e-5)  # paper: ‖Σg‖ exactly
        assert math.isfinite(metrics["train_loss"])


def by_hand(g1, g2, integration):
    """The rule on flat vectors, written out: cos, α, h, rescale to ‖g1 + g2‖ (paper)."""
    cos = (g1 @ g2) / (g1.norm() * g2.norm())
    if integration == "uniform" or (integration == "mmpareto" and cos >= 0):
        alpha = 0.5
    else:
        alpha = ((g2 @ g2 - g1 @ g2) / (g1 - g2).square().sum()).clamp(0, 1)
    h = 2 * (alpha * g1 + (1 - alpha) * g2)
    return (g1 + g2).norm() / h.norm() * h


@pytest.mark.parametrize("params", [
    {}, {"integration": "pareto"}, {"heads": "separate"},
    {"magnitude": "code", "grad_scale": 1.5, "heads": "separate"}, {"integration": "uniform"},
])
def test_modulated_gradients_equal_the_hand_integration(params):
    trial = build(params, dataset=THREE)
    model, method = trial.model, trial.method
    batch = next(trial.data.train.batches(32, generator=torch.Generator().manual_seed(0)))
    y = batch.labels
    encoders = {m: [p for p in model.encoders[m].parameters()] for m in trial.modalities}
    others = [p for n, p in model.named_parameters() if not n.startswith("encoders.")] + method.extra_parameters()
    model.zero_grad(set_to_none=True)
    out = model(batch.inputs)
    l_mm = F.cross_entropy(out.logits, y)
    uni_logits = ({m: method._heads[m](out.features[m]) for m in trial.modalities} if params.get("heads") == "separate"
                  else model.modality_logits(out.features))
    l_uni = sum(F.cross_entropy(uni_logits[m], y) for m in trial.modalities)
    flat = [p for m in trial.modalities for p in encoders[m]]
    g_mm = torch.autograd.grad(l_mm, flat, retain_graph=True)
    g_u = torch.autograd.grad(l_uni, flat, retain_graph=True)
    plain = torch.autograd.grad(l_mm + l_uni, others, retain_graph=True, allow_unused=True)

    ctx = context(trial)  # the loop's order: loss + extra_loss, backward, modulate_gradients
    loss = F.cross_entropy(out.logits, y) + method.extra_loss(out, batch, ctx)
    assert loss.item() == pytest.approx((l_mm + l_uni).item(), rel=1e-6)
    loss.backward()
    method.modulate_gradients(model, out, batch, ctx)

    i = 0
    for m in trial.modalities:
        n = len(encoders[m])
        a, b = list(g_mm[i:i + n]), list(g_u[i:i + n])
        i += n
        got = torch.cat([p.grad.reshape(-1) for p in encoders[m]])
        if params.get("magnitude") == "code":
            want = torch.cat([g.reshape(-1) for g in mmpareto_gradients(
                a, b, integration="mmpareto", magnitude="code", grad_scale=1.5)])
        else:
            want = by_hand(torch.cat([g.reshape(-1) for g in a]), torch.cat([g.reshape(-1) for g in b]),
                           params.get("integration", "mmpareto"))
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7), m
    for p, g in zip(others, plain, strict=True):  # heads and fusion: the plain gradient of L_mm + Σ L_u
        if g is not None:
            assert torch.allclose(p.grad, g, rtol=1e-5, atol=1e-7)


def test_no_extra_forward_pass_and_one_training_step_per_batch():
    trial = build()
    calls = []
    hook = trial.model.encoders["audio"].register_forward_hook(lambda module, *_: calls.append(module.training))
    trial.step()
    hook.remove()
    steps = math.ceil(len(trial.data.train) / trial.spec.train.batch_size)
    assert sum(calls) == steps  # training-mode forwards: one per batch (the rest are evaluation)


def test_window_is_respected():
    trial = build({"start_epoch": 2})
    first = trial.step()
    assert not any(k.startswith("trace/") for k in first)
    assert "trace/cos/audio" in trial.step()


def test_save_restore_continue_equals_uninterrupted():
    # The default is covered by test_conformance; here the separate heads (method-owned weights) and the
    # non-default rules.
    params = {"heads": "separate", "magnitude": "code", "integration": "pareto", "grad_scale": 1.5}
    config = tiny_config("mmpareto", params=params)
    restored, uninterrupted = check_restore_continues(config)
    for a, b in zip(restored.method.extra_parameters(), uninterrupted.method.extra_parameters(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_refuses_a_heads_mismatch():
    saved = build({"heads": "separate"}).method.state_dict()
    with pytest.raises(ValueError, match="heads"):
        build().method.load_state_dict(saved)


@pytest.mark.parametrize(("key", "value"), [
    ("integration", "mgda"), ("magnitude", "global"), ("grad_scale", 0.0), ("grad_scale", -1.0), ("heads", "linear"),
])
def test_bad_params_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"params.{key}"):
        parse_trial_config(tiny_config("mmpareto", params={key: value}))
