"""OGM / OGM-GE / OGM*: Eq. 11 by hand, exact gradient scaling, GE noise statistics, window."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from mmtune.engine.method import StepContext
from mmtune.engine.metrics import discrepancy_ratio
from mmtune.engine.trial import Trial, parse_trial_config
from mmtune.errors import ConfigError
from mmtune.trainables.ogm import boost_coefficient, generalisation_noise, gradient_coefficient

T1 = math.tanh(1.0)


def test_paper_coefficient_two_modalities():
    k = gradient_coefficient(torch.tensor([2.0, 0.5]), 0.8)
    assert k.tolist() == pytest.approx([1 - 0.8 * T1, 1.0])


def test_paper_coefficient_three_modalities_weakest_untouched():
    rho = discrepancy_ratio(torch.tensor([4.0, 2.0, 1.0]))  # (2+4)/2, (0.5+2)/2, (0.25+0.5)/2
    assert rho.tolist() == pytest.approx([3.0, 1.25, 0.375])
    k = gradient_coefficient(rho, 0.5)
    assert k.tolist() == pytest.approx([1 - 0.5 * math.tanh(2.0), 1 - 0.5 * math.tanh(0.25), 1.0])


def test_coefficient_clamped_at_zero_and_sigmoid_form():
    assert gradient_coefficient(torch.tensor([3.0, 0.3]), 2.0).tolist() == [0.0, 1.0]
    k = gradient_coefficient(torch.tensor([1.5, 0.6]), 0.5, z="sigmoid")
    assert k.tolist() == pytest.approx([1 - 0.5 / (1 + math.exp(-1.5)), 1.0])


def test_cvpr2022_forms():
    rho = torch.tensor([1.01, 0.99])
    assert gradient_coefficient(rho, 0.8, k_form="cvpr2022").tolist() == pytest.approx([1 - math.tanh(0.808), 1.0])
    assert gradient_coefficient(rho, 0.8, k_form="cvpr2022_relu").tolist() == pytest.approx([1 - math.tanh(0.008), 1.0])


def test_boost_enlarges_only_the_weak_modality():
    k = boost_coefficient(torch.tensor([2.0, 0.5]), 0.8)
    assert k.tolist() == pytest.approx([1.0, 1 + 0.8 * math.tanh(1.0)])
    k = boost_coefficient(torch.tensor([3.0, -1.0]), 0.5, discrepancy="difference")
    assert k.tolist() == pytest.approx([1.0, 1 + 0.5 * math.tanh(2.0)])


def test_ge_noise_has_the_per_tensor_std():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(200_000, generator=g) * 0.3 + 1.0, torch.randn(400, 500, generator=g) * 2.0]
    buffer = torch.empty(500_000)
    for seed in (1, 2):  # the buffer is reused: fresh noise each call, views of the same storage
        noise = generalisation_noise(grads, torch.Generator().manual_seed(seed), buffer)
        for n, grad in zip(noise, grads, strict=True):
            assert n.shape == grad.shape and n.data_ptr() >= buffer.data_ptr()
            assert n.std().item() == pytest.approx(grad.std().item(), rel=0.01)
            assert abs(n.mean().item()) < 0.01 * grad.std().item() * 3
    (alone,) = generalisation_noise(grads[:1], torch.Generator().manual_seed(1))  # no buffer: allocated
    assert alone.std().item() == pytest.approx(grads[0].std().item(), rel=0.01)


def forward_backward(trial: Trial):
    batch = next(trial.data.train.batches(64, generator=torch.Generator().manual_seed(0)))
    trial.model.train()
    out = trial.model(batch.inputs)
    F.cross_entropy(out.logits, batch.labels).backward()
    ctx = StepContext(epoch=1, step=0, global_step=0, modulating=True, generator=trial.method_generator, device=trial.device)
    return out, batch, ctx


def grads_of(params):
    return [p.grad.clone() for p in params]


def test_ogm_scales_exactly_the_modality_gradients(monkeypatch):
    trial = Trial(parse_trial_config(tiny_config("ogm", params={"alpha": 0.8})))
    out, batch, ctx = forward_backward(trial)
    model = trial.model
    before = {m: grads_of(model.encoders[m].parameters()) for m in model.modalities}
    fusion_before = grads_of(model.fusion.parameters())
    seen = {}
    real = gradient_coefficient

    def spy(rho, alpha, **kw):
        seen["k"] = real(rho, alpha, **kw)
        seen["k"][0] = 0.25  # force a distinct audio coefficient, video stays 1
        seen["k"][1] = 1.0
        return seen["k"]

    monkeypatch.setattr("mmtune.trainables.ogm.gradient_coefficient", spy)
    trial.method.modulate_gradients(model, out, batch, ctx)
    for p, g in zip(model.encoders["audio"].parameters(), before["audio"], strict=True):
        assert torch.equal(p.grad, g * seen["k"][0])
    for p, g in zip(model.encoders["video"].parameters(), before["video"], strict=True):
        assert torch.equal(p.grad, g)  # k = 1: bit-identical
    for p, g in zip(model.fusion.parameters(), fusion_before, strict=True):
        assert torch.equal(p.grad, g)  # the shared classifier is never modulated


def test_conv_scope_touches_only_conv_weights():
    dataset = {"shape": "shaped", "image_size": 16, "n_train": 64, "n_val": 32, "n_test": 32}
    trial = Trial(parse_trial_config(tiny_config("ogm", dataset=dataset, model={"backbone": "cnn"}, params={"scope": "conv", "alpha": 2.0})))
    out, batch, ctx = forward_backward(trial)
    named = list(trial.model.encoders["audio"].named_parameters())
    before = {n: p.grad.clone() for n, p in named}
    trial.method.modulate_gradients(trial.model, out, batch, ctx)
    k_audio = gradient_coefficient(trial.method.traces._sums["\0rho"], 2.0)[0]
    assert k_audio < 1
    for n, p in named:
        if p.dim() == 4:
            assert torch.equal(p.grad, before[n] * k_audio), n
        else:
            assert torch.equal(p.grad, before[n]), n  # BN parameters untouched


def test_conv_scope_without_convolutions_is_a_config_error():
    with pytest.raises(ConfigError, match="scope"):
        Trial(parse_trial_config(tiny_config("ogm", params={"scope": "conv"})))


def test_boost_variant_leaves_the_dominant_alone():
    # preset v1: audio scores above video from the first batch (the default's video starts near audio)
    trial = Trial(parse_trial_config(tiny_config("ogm", params={"variant": "boost"}, dataset={"preset": "v1"})))
    out, batch, ctx = forward_backward(trial)
    model = trial.model
    audio_before, video_before = grads_of(model.encoders["audio"].parameters()), grads_of(model.encoders["video"].parameters())
    trial.method.modulate_gradients(model, out, batch, ctx)
    k = trial.method.traces.compute()
    assert k["k/audio"] == 1.0 and k["k/video"] > 1.0
    assert all(torch.equal(p.grad, g) for p, g in zip(model.encoders["audio"].parameters(), audio_before, strict=True))
    assert all(torch.allclose(p.grad, g * k["k/video"]) for p, g in zip(model.encoders["video"].parameters(), video_before, strict=True))


def test_ge_adds_noise_to_every_modality():
    trial = Trial(parse_trial_config(tiny_config("ogm", params={"ge": True})))
    out, batch, ctx = forward_backward(trial)
    video_before = grads_of(trial.model.encoders["video"].parameters())
    trial.method.modulate_gradients(trial.model, out, batch, ctx)
    # k^video = 1, yet the weak modality's gradient changed: GE noise reaches every modality.
    assert not all(torch.equal(p.grad, g) for p, g in zip(trial.model.encoders["video"].parameters(), video_before, strict=True))


def test_window_is_respected():
    trial = Trial(parse_trial_config(tiny_config("ogm", params={"start_epoch": 2, "end_epoch": 2})))
    traced = ["trace/k/audio" in trial.step() for _ in range(3)]
    assert traced == [False, True, False]


def test_default_set_attenuates_audio_only():
    trial = Trial(parse_trial_config({"method": "ogm", "params": {"ge": True}, "train": {"epochs": 4}}))
    metrics = [trial.step() for _ in range(4)][-1]
    assert metrics["trace/k/audio"] < 1.0 == metrics["trace/k/video"]
