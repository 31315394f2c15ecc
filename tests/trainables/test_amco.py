"""AMCo: the modal dependence, the dominance flags, the mask-ratio schedule, the class mask and the masked
fused logits by hand (2 and 3 modalities); the loss and the flags' use on the next step; traces, window,
save → restore → continue, bad params."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import check_restore_continues, tiny_config

from mmtune.engine.method import StepContext
from mmtune.engine.trial import Trial, parse_trial_config
from mmtune.errors import ConfigError
from mmtune.trainables.amco import (
    advance_progress,
    class_mask,
    dependent_modalities,
    mask_ratio,
    masked_logits,
    modal_dependence,
)

AV = ["audio", "video"]
AVT = ["audio", "video", "text"]
QUANTITIES = ("dependence", "dependent", "mask_ratio")


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


# ----------------------------------------------------------------------------- pure functions

def test_modal_dependence_two_modalities_by_hand():
    # One sample, C = 2: z^a = (log 3, 0), z^v = (0, 0) → softmax over (3, 1, 1, 1)/6: d_a = 4/6, d_v = 2/6.
    z = torch.tensor([[[math.log(3.0), 0.0]], [[0.0, 0.0]]], dtype=torch.float64)
    d = modal_dependence(z)
    assert d.tolist() == pytest.approx([2 / 3, 1 / 3])
    assert dependent_modalities(d, 0.5).tolist() == [True, False]
    assert dependent_modalities(d, 0.7).tolist() == [False, False]
    # Batch mean: a second sample with the roles swapped gives 1/2 each.
    z2 = torch.cat([z, z.flip(0)], dim=1)
    assert modal_dependence(z2).tolist() == pytest.approx([0.5, 0.5])


def test_modal_dependence_three_modalities_sums_to_one():
    z = torch.tensor([[[math.log(4.0), 0.0]], [[0.0, 0.0]], [[0.0, math.log(2.0)]]], dtype=torch.float64)
    d = modal_dependence(z)  # masses (4+1, 1+1, 1+2)/10
    assert d.tolist() == pytest.approx([0.5, 0.2, 0.3])
    assert dependent_modalities(d, 0.45).tolist() == [True, False, False]
    assert modal_dependence(torch.randn(3, 5, 4)).sum().item() == pytest.approx(1.0)


def test_mask_ratio_schedule_by_hand():
    assert mask_ratio(0.0, 0.3) == 0.0
    assert mask_ratio(0.15, 0.3) == pytest.approx(math.sin(math.pi / 4))
    assert mask_ratio(0.3, 0.3) == pytest.approx(1.0) and mask_ratio(5.0, 0.3) == pytest.approx(1.0)
    assert advance_progress(0.0, 1, 0.1) == 0.0  # epoch 1 (code's 0): no masking all epoch
    assert advance_progress(0.2, 3, 0.1) == pytest.approx(0.4)


def test_class_mask_counts_and_rows():
    g = torch.Generator().manual_seed(0)
    m = class_mask(0.5, 5, 1, g)  # ⌊2.5⌋ = 2 zeros
    assert m.shape == (1, 5) and m.sum().item() == 3.0
    m = class_mask(0.99, 4, 3, g)  # ⌊3.96⌋ = 3 zeros per row
    assert m.shape == (3, 4) and m.sum(1).tolist() == [1.0, 1.0, 1.0]
    assert class_mask(0.0, 4, 2).eq(1).all() and class_mask(1.0, 4, 1).eq(0).all()


def test_masked_logits_two_and_three_modalities():
    za, zv = t(1.0, 2.0, 3.0), t(10.0, 20.0, 30.0)
    uni = torch.stack([za, zv]).unsqueeze(1)  # (M=2, B=1, C=3)
    fused = (za + zv).unsqueeze(0)
    mask = t(1.0, 0.0, 1.0).unsqueeze(0)
    out = masked_logits(fused, uni, torch.tensor([False, True]), mask)
    assert out.tolist() == [[11.0, 2.0, 33.0]]  # z^a + mask ⊙ z^v
    assert masked_logits(fused, uni, torch.tensor([False, False]), mask).tolist() == fused.tolist()
    zt = t(100.0, 200.0, 300.0)
    uni3 = torch.stack([za, zv, zt]).unsqueeze(1)
    out3 = masked_logits((za + zv + zt).unsqueeze(0), uni3, torch.tensor([True, False, True]), t(0.0, 1.0, 1.0).unsqueeze(0))
    assert out3.tolist() == [[10.0, 222.0, 333.0]]


# ----------------------------------------------------------------------------- the method in a trial

def build(params=None, **sections):
    return Trial(parse_trial_config(tiny_config("amco", params=params or {}, **sections)))


def step_context(trial, epoch=2):
    return StepContext(epoch=epoch, step=0, global_step=0, modulating=True, generator=trial.method_generator,
                       device=trial.device, model=trial.model, optimizer=trial.optimizer, train=trial.data.train,
                       batch_size=trial.spec.train.batch_size)


def test_short_trial_reports_finite_traces_two_and_three_modalities():
    for modalities in (AV, AVT):
        trial = build(dataset={"modalities": modalities})
        for _ in range(2):  # epoch 2: the mask ratio grows
            metrics = trial.step()
        for quantity in QUANTITIES:
            for m in modalities:
                assert math.isfinite(metrics[f"trace/{quantity}/{m}"]), (quantity, m)
        assert sum(metrics[f"trace/dependence/{m}"] for m in modalities) == pytest.approx(1.0)
        assert math.isfinite(metrics["train_loss"])


@pytest.mark.parametrize(("unimodal_loss", "fused_loss"), [(True, "masked"), (False, "masked"), (True, "both")])
def test_loss_masks_the_previous_steps_dominant_modality(unimodal_loss, fused_loss):
    trial = build({"sigma": 0.0, "eps": 1e-9, "unimodal_loss": unimodal_loss, "fused_loss": fused_loss})  # σ = 0: every modality dominant
    method, model = trial.method, trial.model
    ctx = step_context(trial, epoch=2)
    method.begin_epoch(ctx)
    batch = next(trial.data.train.batches(16, generator=torch.Generator().manual_seed(0)))
    out = model(batch.inputs)
    uni = list(model.unimodal_logits(out.features).values())
    task = F.cross_entropy(out.logits, batch.labels)  # the loop's task loss, to which extra_loss is added
    keep = task.detach() if fused_loss == "both" else 0
    first = task + method.extra_loss(out, batch, ctx)  # ℓ = 0: no mask, and no flag yet
    expected = keep + F.cross_entropy(out.logits, batch.labels) + (sum(F.cross_entropy(z, batch.labels) for z in uni) if unimodal_loss else 0)
    assert first.detach().item() == pytest.approx(float(expected.detach()), rel=1e-5)
    assert method.dependent.all() and method.progress == pytest.approx(0.1)
    second = task + method.extra_loss(out, batch, ctx)  # p = 1: all classes of both (dominant) modalities masked
    ce_bias = F.cross_entropy(out.logits - sum(uni), batch.labels)
    expected = keep + ce_bias + (sum(F.cross_entropy(z, batch.labels) for z in uni) if unimodal_loss else 0)
    assert second.detach().item() == pytest.approx(float(expected.detach()), rel=1e-5)
    assert method.traces.compute()["mask_ratio/audio"] == pytest.approx(0.5)  # 0 then 1


def test_no_masking_in_the_first_epoch_and_flags_reset_each_epoch():
    trial = build({"sigma": 0.0})
    metrics = trial.step()
    assert metrics["trace/mask_ratio/audio"] == 0.0 and trial.method.progress == 0.0
    trial.method.begin_epoch(step_context(trial))
    assert not trial.method.dependent.any()


def test_window_is_respected():
    trial = build({"start_epoch": 2, "end_epoch": 2})
    first = trial.step()
    assert not any(k.startswith("trace/") for k in first)
    second = trial.step()
    assert math.isfinite(second["trace/dependence/audio"])
    third = trial.step()
    assert not any(k.startswith("trace/") for k in third)


def test_save_restore_continue_equals_uninterrupted():
    restored, uninterrupted = check_restore_continues(tiny_config("amco", params={"sigma": 0.3, "mask_scope": "sample"}))
    assert torch.equal(restored.method.dependent, uninterrupted.method.dependent)
    assert restored.method.progress == pytest.approx(uninterrupted.method.progress)


def test_one_modality_is_refused():
    with pytest.raises(ConfigError, match="dataset.modalities"):
        build(dataset={"modalities": ["audio"]})


@pytest.mark.parametrize(("key", "value"), [
    ("sigma", -0.1), ("sigma", 1.5), ("eps", 0.0), ("kappa", -1.0), ("mask_scope", "feature"), ("unimodal_loss", "maybe"),
    ("fused_loss", "plain"),
])
def test_bad_params_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"params.{key}"):
        parse_trial_config(tiny_config("amco", params={key: value}))
