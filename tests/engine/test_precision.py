"""train.precision (fp32 | bf16 | fp16 autocast) and train.channels_last, on the CPU.

What the CPU can check: the config keys, every registered method under bf16 autocast, fp32 vs bf16
agreement, fp16 with its GradScaler (CPU autocast supports float16 in torch ≥ 2.3) including an exact
checkpoint restore, and channels_last giving the same metrics. Speed-ups need a CUDA device and are
not measured here. fp32 itself is pinned bit-for-bit by tests/engine/test_golden.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import check_restore_continues, tiny_config

import mmtune.engine.trial as trial_module
from mmtune.engine.registry import list_methods
from mmtune.engine.trial import Trial, parse_trial_config
from mmtune.errors import ConfigError

# Hyperparameters a method needs to be exercised at all in a 1-epoch run (as in test_conformance).
ACTIVE_PARAMS: dict[str, dict] = {"valuation": {"start_epoch": 1}}
# Multi-stage methods need an epoch per stage; they run every stage once.
MIN_EPOCHS: dict[str, int] = {"ume": 2, "umt": 3}


def run(config: dict, epochs: int) -> list[dict[str, float]]:
    trial = Trial(parse_trial_config(config))
    return [trial.step() for _ in range(epochs)]


def test_precision_and_channels_last_default_to_auto_which_is_fp32_and_off_on_the_cpu():
    train = parse_trial_config(tiny_config("joint")).train
    assert train.precision == "auto" and train.channels_last == "auto"
    trial = Trial(parse_trial_config(tiny_config("joint", train={"device": "cpu"})))
    assert trial.resolved["precision"] == "fp32" and trial.resolved["channels_last"] is False


def test_an_unknown_precision_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"train\.precision"):
        parse_trial_config(tiny_config("joint", train={"precision": "fp8"}))


def test_fp16_where_autocast_lacks_it_is_refused_with_the_fix(monkeypatch):
    # torch 2.11's CPU autocast supports float16; a build without it must be refused, not run in fp32.
    monkeypatch.setattr(trial_module, "_autocast_supports", lambda device, dtype: dtype != torch.float16)
    with pytest.raises(ConfigError, match=r"train\.precision.*use bf16 on CPU, fp16 on CUDA"):
        Trial(parse_trial_config(tiny_config("joint", train={"precision": "fp16", "device": "cpu"})))


@pytest.mark.parametrize("method", list_methods())
def test_every_method_gives_finite_metrics_under_bf16(method):
    epochs = MIN_EPOCHS.get(method, 1)
    config = tiny_config(method, params=ACTIVE_PARAMS.get(method, {}),
                         train={"precision": "bf16", "device": "cpu", "epochs": epochs})
    for metrics in run(config, epochs):
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        assert not bad, f"non-finite metrics under bf16 at epoch {metrics['epoch']}: {bad}"


@pytest.mark.parametrize("method", ["joint", "ogm"])
def test_bf16_autocast_agrees_with_fp32(method):
    # Tolerance: bf16 keeps 8 mantissa bits (relative rounding ~4e-3 per op), so two epochs of SGD on
    # the tiny set drift the weights slightly; the loss is a mean over 256 samples and moves by well under
    # 5%, while val_acc over 96 samples may flip a few borderline predictions (0.05 ≈ 5 of 96). A real
    # precision bug (fp16/bf16 statistics overflowing, a dropped gradient scale) moves both far more.
    fp32 = run(tiny_config(method, train={"epochs": 2, "device": "cpu"}), 2)
    bf16 = run(tiny_config(method, train={"epochs": 2, "device": "cpu", "precision": "bf16"}), 2)
    assert bf16[0]["train_loss"] != fp32[0]["train_loss"], "bf16 ran in fp32: autocast was not entered"
    for a, b in zip(fp32, bf16, strict=True):
        assert abs(a["val_acc"] - b["val_acc"]) <= 0.05, (a["val_acc"], b["val_acc"])
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)


@pytest.mark.parametrize("method", ["joint", "ogm"])
def test_fp16_with_its_grad_scaler_trains_and_restores_exactly(method):
    config = tiny_config(method, train={"precision": "fp16", "device": "cpu"})
    restored, uninterrupted = check_restore_continues(config)
    assert restored.scaler.is_enabled()
    assert restored.scaler.state_dict() == uninterrupted.scaler.state_dict()
    assert restored.state_dict()["scaler"] is not None
    assert math.isfinite(uninterrupted.step()["train_loss"])


def test_an_fp16_step_whose_gradients_overflowed_never_reaches_the_methods_gradient_hook():
    trial = Trial(parse_trial_config(tiny_config("ogm", train={"precision": "fp16", "device": "cpu", "epochs": 1, "batch_size": 8})))
    trial.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)  # overflows until it has halved a few times
    seen, real = [], trial.method.modulate_gradients

    def spy(model, out, batch, ctx):
        seen.append(all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None))
        return real(model, out, batch, ctx)

    trial.method.modulate_gradients = spy
    metrics = trial.step()
    steps = math.ceil(trial.spec.dataset.n_train / trial.spec.train.batch_size)
    assert 0 < len(seen) < steps and all(seen), (len(seen), steps)  # some steps overflowed and were kept from it
    assert trial.scaler.get_scale() < 2.0**24 and math.isfinite(metrics["train_loss"])


def test_fp32_checkpoints_hold_no_scaler():
    trial = Trial(parse_trial_config(tiny_config("joint", train={"epochs": 1})))
    assert not trial.scaler.is_enabled() and trial.state_dict()["scaler"] is None


@pytest.mark.parametrize("backbone", ["resnet18", "cnn"])
def test_channels_last_gives_the_same_metrics(backbone):
    dataset = {"shape": "shaped", "image_size": 16, "n_train": 64, "n_val": 32, "n_test": 32}

    def config(channels_last: bool) -> dict:
        return tiny_config("joint", dataset=dataset, model={"backbone": backbone},
                           train={"batch_size": 32, "epochs": 1, "device": "cpu", "channels_last": channels_last})

    plain = Trial(parse_trial_config(config(False)))
    fast = Trial(parse_trial_config(config(True)))
    convs = [m.weight for m in fast.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    a, b = plain.step(), fast.step()
    for key in ("train_loss", "val_acc", "test_acc", "val_acc/audio", "val_acc/video"):
        assert b[key] == pytest.approx(a[key], abs=1e-5), key
