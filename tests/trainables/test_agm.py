"""AGM: Shapley responses by hand (M = 2, 3), score, ratio, running mean, κ; exact gradient scaling
against the official backward rule; checkpoint continuity; the window."""

from __future__ import annotations

import math
from itertools import combinations

import pytest
import torch
import torch.nn.functional as F
from conftest import restore_into, tiny_config
from torch import Tensor

from mmtune.engine.method import StepContext
from mmtune.engine.trial import TIMING_KEYS, Trial, parse_trial_config
from mmtune.errors import ConfigError
from mmtune.trainables.agm import (
    MAX_SAMPLE_SCORE, modality_ratio, modulation_coefficient, response_score, running_mean, shapley_responses,
    shapley_weights,
)

AV = ["audio", "video"]
AVT = ["audio", "video", "text"]


def values_of(table: dict[tuple[str, ...], float], order: list[tuple[str, ...]]) -> Tensor:
    """Scalar subset values as (S, 1, 1) tensors."""
    return torch.tensor([table[s] for s in order], dtype=torch.float64).view(-1, 1, 1)


# -- Eq. 1 / Eq. 3 ------------------------------------------------------------------------------
def test_shapley_two_modalities_is_the_code_formula():
    subsets = [("audio",), ("video",), ("audio", "video")]
    v = {("audio",): 3.0, ("video",): 1.0, ("audio", "video"): 5.0}
    psi = shapley_responses(values_of(v, subsets), shapley_weights(subsets, AV)).flatten().tolist()
    # CREMAD_net.py: ψ_a = ½(total − pad_audio + pad_visual) = ½(5 − 1 + 3), ψ_v = ½(5 − 3 + 1)
    assert psi == pytest.approx([3.5, 1.5])
    assert sum(psi) == pytest.approx(5.0)  # V(∅) = 0: the responses sum to f(all)


def test_shapley_two_modalities_fusion_baseline():
    subsets = [(), ("audio",), ("video",), ("audio", "video")]
    v = {(): 0.6, ("audio",): 3.0, ("video",): 1.0, ("audio", "video"): 5.0}
    psi = shapley_responses(values_of(v, subsets), shapley_weights(subsets, AV, empty="fusion")).flatten().tolist()
    assert psi == pytest.approx([3.5 - 0.3, 1.5 - 0.3])  # ψ_m − f(∅)/M
    zero = shapley_responses(values_of(v, subsets), shapley_weights(subsets, AV)).flatten().tolist()
    assert zero == pytest.approx([3.5, 1.5])  # the empty column has weight 0 under the code's rule
    with pytest.raises(ValueError, match="∅"):
        shapley_weights(subsets[1:], AV, empty="fusion")


def test_shapley_three_modalities_hand_values():
    subsets = [s for k in range(1, 4) for s in combinations(AVT, k)]
    v = {("audio",): 1.0, ("video",): 2.0, ("text",): 3.0, ("audio", "video"): 4.0, ("audio", "text"): 6.0,
         ("video", "text"): 7.0, ("audio", "video", "text"): 12.0}
    weights = shapley_weights(subsets, AVT)
    psi = shapley_responses(values_of(v, subsets), weights).flatten().tolist()
    # URFunny_net.py: ψ_a = ⅓[V(avt) − V(vt) + V(a)] + ⅙[V(av) − V(v) + V(at) − V(t)] = 2 + 5/6, …
    assert psi == pytest.approx([17 / 6, 23 / 6, 32 / 6])
    assert sum(psi) == pytest.approx(12.0)
    assert weights[0].tolist() == pytest.approx([1 / 3, -1 / 6, -1 / 6, 1 / 6, 1 / 6, -1 / 3, 1 / 3])


def test_shapley_three_modalities_random_logits_match_the_code():
    g = torch.Generator().manual_seed(0)
    subsets = [s for k in range(1, 4) for s in combinations(AVT, k)]
    values = torch.randn(len(subsets), 5, 4, generator=g, dtype=torch.float64)
    V = dict(zip(subsets, values, strict=True))
    psi = shapley_responses(values, shapley_weights(subsets, AVT))
    a, v, t = ("audio",), ("video",), ("text",)
    av, at, vt, avt = ("audio", "video"), ("audio", "text"), ("video", "text"), tuple(AVT)
    # URFunny_net.py:13-31 with pad_x_out = V(others), pad_xy_out = V(the third)
    code_a = (V[avt] - V[vt] + V[a]) / 3 + (V[av] - V[v] + V[at] - V[t]) / 6
    code_v = (V[avt] - V[at] + V[v]) / 3 + (V[av] - V[a] + V[vt] - V[t]) / 6
    code_t = (V[avt] - V[av] + V[t]) / 3 + (V[at] - V[a] + V[vt] - V[v]) / 6
    assert torch.allclose(psi, torch.stack([code_a, code_v, code_t]))
    assert torch.allclose(psi.sum(0), V[avt])


@pytest.mark.parametrize("modalities", [AV, AVT])
def test_feature_padding_on_concat_gives_the_exact_split(modalities):
    trial = Trial(parse_trial_config(tiny_config("agm", dataset={"modalities": modalities})))
    model = trial.model
    batch = next(trial.data.train.batches(16, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        features = model.encode(batch.inputs)
        psi = shapley_responses(model.subset_logits(features, trial.method.subsets), trial.method.weights)
        # concat: ψ_m = W^m·φ^m + b/M, OPM/OGM's Eq. 6 split; Σ ψ = f(x)
        assert torch.allclose(psi, model.stacked_unimodal_logits(features), atol=1e-5)
        assert torch.allclose(psi.sum(0), model(batch.inputs).logits, atol=1e-5)


# -- score, ratio, running mean, κ ----------------------------------------------------------------
def test_score_is_the_batch_cross_entropy_of_each_response():
    psi = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [3.0, 0.0]]])  # (M=2, B=2, C=2)
    labels = torch.tensor([0, 1])
    nll = lambda z, y: -math.log(math.exp(z[y]) / sum(math.exp(u) for u in z))  # noqa: E731
    expected = [(nll([2, 0], 0) + nll([0, 1], 1)) / 2, (nll([0, 0], 0) + nll([3, 0], 1)) / 2]
    assert response_score(psi, labels).tolist() == pytest.approx(expected)
    floored = response_score(torch.tensor([[[0.0, 50.0]], [[0.0, 0.0]]]), torch.tensor([0]))
    assert floored.tolist() == pytest.approx([MAX_SAMPLE_SCORE, math.log(2)])  # p floored at 1e-8


def test_ratio_two_and_three_modalities():
    assert modality_ratio(torch.tensor([0.5, 1.25])).tolist() == pytest.approx([math.exp(0.75), math.exp(-0.75)])
    s = torch.tensor([1.0, 2.0, 3.0])  # mean 2: exp(1.5·(2 − s))
    assert modality_ratio(s).tolist() == pytest.approx([math.exp(1.5), 1.0, math.exp(-1.5)])
    assert modality_ratio(torch.zeros(3)).tolist() == [1.0, 1.0, 1.0]  # S(0) = 0: r̄ = 1 at the first step


def test_running_mean_is_the_cumulative_arithmetic_mean():
    scores = [torch.tensor([1.0, 4.0]), torch.tensor([3.0, 0.0]), torch.tensor([2.0, 5.0])]
    mean = torch.zeros(2)
    for t, s in enumerate(scores, start=1):
        mean = running_mean(mean, s, t)
    assert mean.tolist() == pytest.approx([2.0, 3.0])  # no momentum: every iteration weighs the same


def test_coefficient_sign_and_cap():
    kappa = modulation_coefficient(torch.tensor([1.0, 1.0]), torch.tensor([1.5, 0.6]), 1.5)
    assert kappa.tolist() == pytest.approx([math.exp(-0.75), math.exp(0.6)])  # ahead of its average → slowed
    capped = modulation_coefficient(torch.tensor([20.0, 1.0]), torch.tensor([1.0, 1.0]), 1.0, cap=10.0)
    assert capped.tolist() == pytest.approx([math.exp(10.0), 1.0])
    assert modulation_coefficient(torch.tensor([3.0]), torch.tensor([1.0]), 0.0).tolist() == [1.0]


# -- the method on real steps -------------------------------------------------------------------
def step_once(trial: Trial, epoch: int = 1, modulating: bool = True):
    batch = next(trial.data.train.batches(32, generator=torch.Generator().manual_seed(0)))
    trial.model.train()
    trial.model.zero_grad(set_to_none=True)
    out = trial.model(batch.inputs)
    F.cross_entropy(out.logits, batch.labels).backward()
    ctx = StepContext(epoch=epoch, step=0, global_step=0, modulating=modulating,
                      generator=trial.method_generator, device=trial.device)
    return out, batch, ctx


def grads(module):
    return [p.grad.clone() for p in module.parameters()]


def test_first_step_values_by_hand():
    trial = Trial(parse_trial_config(tiny_config("agm", params={"alpha": 1.5, "cap": 10.0})))
    out, batch, ctx = step_once(trial)
    model, method = trial.model, trial.method
    with torch.no_grad():
        psi = model.stacked_unimodal_logits(out.features)  # concat: the exact split (test above)
        s = F.cross_entropy(psi[0], batch.labels), F.cross_entropy(psi[1], batch.labels)
    before = {m: grads(model.encoders[m]) for m in AV}
    method.modulate_gradients(model, out, batch, ctx)
    traces = method.traces.compute()
    assert [traces["score/audio"], traces["score/video"]] == pytest.approx([s[0].item(), s[1].item()], rel=1e-5)
    r_a = math.exp(s[1].item() - s[0].item())
    assert traces["ratio/audio"] == pytest.approx(r_a, rel=1e-5)
    kappa = [math.exp(1.5 * (1.0 - r_a)), math.exp(1.5 * (1.0 - 1 / r_a))]  # r̄ = 1 from S(0) = 0
    assert [traces["kappa/audio"], traces["kappa/video"]] == pytest.approx(kappa, rel=1e-5)
    assert method.count == 1 and method.score_mean.tolist() == pytest.approx([s[0].item(), s[1].item()], rel=1e-5)
    for m, k in zip(AV, kappa, strict=True):
        for p, g in zip(model.encoders[m].parameters(), before[m], strict=True):
            assert torch.allclose(p.grad, g * k, rtol=1e-5, atol=0)


class ScaleGrad(torch.autograd.Function):
    """The official identity module with a backward hook: value unchanged, gradient × κ."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.scale, None


@pytest.mark.parametrize("fusion", ["concat", "sum", "late"])
def test_encoder_gradients_equal_the_official_backward_rule(fusion, monkeypatch):
    kappa = torch.tensor([0.3, 1.7])
    monkeypatch.setattr("mmtune.trainables.agm.modulation_coefficient", lambda *a, **k: kappa)
    trial = Trial(parse_trial_config(tiny_config("agm", model={"fusion": fusion})))
    model, method = trial.model, trial.method
    # The official mechanism on our (feature-padded) responses: Σ_m ScaleGrad(ψ_m, κ_m), CE, backward.
    out, batch, ctx = step_once(trial)
    model.zero_grad(set_to_none=True)
    psi = shapley_responses(model.subset_logits(model.encode(batch.inputs), method.subsets), method.weights)
    fused = sum(ScaleGrad.apply(psi[i], kappa[i].item()) for i in range(2))
    assert torch.allclose(fused, out.logits, atol=1e-5)  # value unchanged: Σψ = f(x)
    F.cross_entropy(fused, batch.labels).backward()
    official = {m: grads(model.encoders[m]) for m in AV}
    # mmtune: plain backward, then encoder gradients × κ_m.
    out, batch, ctx = step_once(trial)
    fusion_before = grads(model.fusion)
    method.modulate_gradients(model, out, batch, ctx)
    for m in AV:
        for p, g in zip(model.encoders[m].parameters(), official[m], strict=True):
            assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-7)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.fusion.parameters(), fusion_before, strict=True))


def test_input_padding_reruns_the_model_on_zeroed_inputs():
    dataset = {"shape": "shaped", "image_size": 8, "n_train": 64, "n_val": 16, "n_test": 16}
    trial = Trial(parse_trial_config(tiny_config("agm", dataset=dataset, model={"backbone": "cnn"},
                                                 params={"padding": "inputs", "empty": "fusion"})))
    model, method = trial.model, trial.method
    out, batch, _ = step_once(trial)
    values = method.subset_values(model, out, batch)
    assert model.training  # restored after the eval-mode padded passes
    model.eval()
    with torch.no_grad():
        for subset, v in zip(method.subsets, values, strict=True):
            if len(subset) == 2:  # V(𝓜): this step's train-mode features, as the code's full pass
                expected = model.fusion(out.features)
            else:
                expected = model({m: x if m in subset else torch.zeros_like(x) for m, x in batch.inputs.items()}).logits
            assert torch.allclose(v, expected, atol=1e-5), subset
    model.train()


def run(config: dict, steps: int) -> list[dict[str, float]]:
    trial = Trial(parse_trial_config(config))
    return [trial.step() for _ in range(steps)]


def without_timing(metrics):
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


@pytest.mark.parametrize("params", [{}, {"padding": "inputs", "empty": "fusion", "cap": 1.0}])
def test_short_trial_three_modalities(params):
    metrics = run(tiny_config("agm", dataset={"modalities": AVT}, params=params, train={"epochs": 2}), 2)[-1]
    for kind in ("kappa", "ratio", "score"):
        for m in AVT:
            assert math.isfinite(metrics[f"trace/{kind}/{m}"])
    assert all(math.isfinite(v) for v in metrics.values())


def test_save_restore_continue_equals_uninterrupted():
    config = tiny_config("agm", params={"alpha": 4.0})
    uninterrupted = run(config, 3)
    trial = Trial(parse_trial_config(config))
    trial.step()
    restored = restore_into(trial, Trial(parse_trial_config(config)))
    assert restored.method.count == trial.method.count == 8  # 256 / 32 iterations averaged
    assert torch.equal(restored.method.score_mean, trial.method.score_mean)
    continued = [restored.step(), restored.step()]
    assert [without_timing(m) for m in continued] == [without_timing(m) for m in uninterrupted[1:]]


@pytest.mark.parametrize(("history", "averaged"), [("all", [8, 16, 16]), ("window", [0, 8, 8])])
def test_window_is_respected(history, averaged):
    trial = Trial(parse_trial_config(tiny_config("agm", params={"start_epoch": 2, "end_epoch": 2, "history": history})))
    traced, counts = [], []
    for _ in range(3):
        traced.append("trace/kappa/audio" in trial.step())
        counts.append(trial.method.count)
    assert traced == [False, True, False] and counts == averaged
    # After the window κ = 1: the gradients and the running average are left alone (no stale κ).
    out, batch, ctx = step_once(trial, epoch=3, modulating=False)
    before = grads(trial.model)
    mean = trial.method.score_mean.clone()
    trial.method.modulate_gradients(trial.model, out, batch, ctx)
    assert all(torch.equal(p.grad, g) for p, g in zip(trial.model.parameters(), before, strict=True))
    assert torch.equal(trial.method.score_mean, mean)


@pytest.mark.parametrize(("key", "value"), [("alpha", -1.0), ("padding", "raw"), ("empty", "mean"), ("history", "ema")])
def test_bad_params_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        Trial(parse_trial_config(tiny_config("agm", params={key: value})))
