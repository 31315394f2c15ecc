"""UME: stage schedule (equal split, explicit budgets, bad budgets), only the stage's member trains,
the ensemble is the sum of the members' logits, a fresh optimizer per stage, checkpoints across the
stage boundary, non-additive fusions and composition refused."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import restore_into, tiny_config

import mmtune.trainables  # noqa: F401  the other methods (composition test)
import mmtune.trainables.ume  # noqa: F401  registers ume
from mmtune.engine.registry import get_method
from mmtune.engine.trial import TIMING_KEYS, Trial, parse_trial_config
from mmtune.errors import ConfigError
from mmtune.trainables.ume import ensemble_logits, stage_budgets

AV = ["audio", "video"]
AVT = ["audio", "video", "text"]


def ume_trial(epochs: int, *, modalities=AV, fusion="concat", train=None, **params) -> Trial:
    return Trial(parse_trial_config(tiny_config(
        "ume", params=params, model={"fusion": fusion}, dataset={"modalities": list(modalities)},
        train={"epochs": epochs, **(train or {})})))


def without_timing(metrics):
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


# -- the schedule ----------------------------------------------------------------------------------
def test_stage_budgets_equal_split_with_remainder_first():
    assert stage_budgets(20, AV) == [10, 10]
    assert stage_budgets(5, AV) == [3, 2]
    assert stage_budgets(7, AVT) == [3, 2, 2]
    assert stage_budgets(8, AVT) == [3, 3, 2]
    assert stage_budgets(3, AVT) == [1, 1, 1]
    assert stage_budgets(7, AVT, (1, 2, 4)) == [1, 2, 4]


def test_bad_budgets_name_the_key_and_the_fix():
    with pytest.raises(ConfigError, match=r"params.stage_epochs: needs one entry per modality \['audio', 'video'\]"):
        stage_budgets(4, AV, (2, 1, 1))
    with pytest.raises(ConfigError, match=r"params.stage_epochs: schedules audio 2 \+ video 1 = 3 epochs, but train.epochs is 4.*"
                                          r"Set train.epochs=3"):
        stage_budgets(4, AV, (2, 1))
    with pytest.raises(ConfigError, match=r"train.epochs: is 2, but UME trains each of the 3 modalities.*train.epochs >= 3"):
        stage_budgets(2, AVT)
    # Through the trial: the modality count is the dataset's.
    with pytest.raises(ConfigError, match=r"params.stage_epochs: schedules audio 1 \+ video 1 = 2 epochs, but train.epochs is 3"):
        ume_trial(3, stage_epochs=[1, 1])
    with pytest.raises(ConfigError, match=r"params.stage_epochs: needs one entry per modality \['audio', 'video', 'text'\]"):
        ume_trial(3, modalities=AVT, stage_epochs=[2, 1])
    with pytest.raises(ConfigError, match=r"params.stage_epochs: every stage needs >= 1 epoch"):
        parse_trial_config(tiny_config("ume", params={"stage_epochs": [3, 0]}))
    with pytest.raises(ConfigError, match=r"params.start_epoch: UME has no modulation window"):
        parse_trial_config(tiny_config("ume", params={"start_epoch": 2}))


@pytest.mark.parametrize(("modalities", "epochs", "params", "expected"), [
    (AV, 5, {}, [3, 2]),
    (AV, 5, {"stage_epochs": [1, 4]}, [1, 4]),
    (AVT, 7, {}, [3, 2, 2]),
    (AVT, 7, {"stage_epochs": [1, 2, 4]}, [1, 2, 4]),
])
def test_trial_stages_one_per_modality_in_model_order(modalities, epochs, params, expected):
    trial = ume_trial(epochs, modalities=modalities, **params)
    assert [(s.name, s.epochs, s.fresh_optimizer) for s in trial.stages] == [
        (m, e, True) for m, e in zip(modalities, expected, strict=True)]


def test_traces_follow_the_stages_three_modalities():
    trial = ume_trial(3, modalities=AVT)
    for m in AVT:
        metrics = trial.step()
        assert {k: metrics[f"trace/stage/{k}"] for k in AVT} == {k: float(k == m) for k in AVT}
        assert all(math.isfinite(metrics[k]) for k in ("train_loss", "val_acc", *(f"val_acc/{k}" for k in AVT)))


# -- only the stage's member trains ------------------------------------------------------------------
def owner(name: str, modalities) -> str | None:
    """The modality a state-dict entry belongs to under sum fusion (encoders.<m>., fusion.fc.<m>.)."""
    for m in modalities:
        if name.startswith((f"encoders.{m}.", f"fusion.fc.{m}.")):
            return m
    return None


@pytest.mark.parametrize("modalities", [AV, AVT])
def test_only_the_stage_modality_changes_sum_fusion(modalities):
    trial = ume_trial(len(modalities), modalities=modalities, fusion="sum")
    for m in modalities:
        before = {k: v.clone() for k, v in trial.model.state_dict().items()}
        trial.step()
        after = trial.model.state_dict()
        assert all(owner(k, modalities) is not None for k in after)
        for k, v in after.items():
            if owner(k, modalities) == m:
                assert not torch.equal(v, before[k]), k  # the member trains
            else:
                assert torch.equal(v, before[k]), k  # bit-identical: no gradient, no weight decay, no momentum


def test_concat_leaves_other_encoders_bit_identical():
    trial = ume_trial(2, fusion="concat")
    before = {k: v.clone() for k, v in trial.model.state_dict().items()}
    trial.step()  # stage audio
    after = trial.model.state_dict()
    for k in after:
        if k.startswith("encoders.video."):
            assert torch.equal(after[k], before[k]), k
        elif k.startswith("encoders.audio."):
            assert not torch.equal(after[k], before[k]), k
    # The shared head: video's column block only decays (zero gradient block), the shared bias trains.
    d = trial.model.fusion.feature_dims["audio"]
    w0, w1 = before["fusion.fc.weight"][:, d:], after["fusion.fc.weight"][:, d:]
    assert torch.allclose(w1, w0, rtol=1e-4, atol=0) and not torch.equal(after["fusion.fc.bias"], before["fusion.fc.bias"])


def test_skipping_the_untrained_encoders_changes_no_result():
    skipped = ume_trial(2)
    encoded = ume_trial(2)
    encoded.method.before_forward = lambda batch, ctx: batch  # the loop's forward encodes every modality
    for _ in range(2):
        assert without_timing(skipped.step()) == without_timing(encoded.step())


# -- the ensemble ---------------------------------------------------------------------------------------
def test_ensemble_is_the_sum_of_the_members_logits():
    trial = ume_trial(2, fusion="sum")
    metrics = [trial.step() for _ in range(2)][-1]
    model, val = trial.model.eval(), trial.data.val
    with torch.no_grad():
        out = model(val.inputs)
        members = model.modality_logits(out.features)
        z = ensemble_logits(torch.stack([members[m] for m in AV]))
    assert torch.allclose(out.logits, z, atol=1e-6)
    y = val.labels
    assert metrics["val_acc"] == pytest.approx((z.argmax(1) == y).float().mean().item())
    for m in AV:
        assert metrics[f"val_acc/{m}"] == pytest.approx((members[m].argmax(1) == y).float().mean().item())


def test_late_fusion_is_the_mean_of_the_members():
    trial = ume_trial(2, fusion="late")
    trial.step()
    with torch.no_grad():
        out = trial.model(trial.data.val.inputs)
        members = trial.model.modality_logits(out.features)
    assert torch.allclose(out.logits, ensemble_logits(torch.stack([members[m] for m in AV])) / 2, atol=1e-6)


# -- optimizer and checkpoints ----------------------------------------------------------------------
def test_each_stage_starts_a_fresh_optimizer_and_schedule():
    trial = ume_trial(4, train={"lr_step": 1, "lr_gamma": 0.5})
    trial.step()
    first = trial.optimizer
    trial.step()
    assert trial.optimizer is first and first.param_groups[0]["lr"] == pytest.approx(0.01 * 0.25)
    trial.step()  # first epoch of the video stage
    assert trial.optimizer is not first and trial.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5)
    audio = {id(p) for p in trial.model.encoders["audio"].parameters()}
    stepped = {id(p) for p in trial.optimizer.state}
    assert stepped and not stepped & audio  # no momentum carried over from, or kept for, the audio member


@pytest.mark.parametrize("save_after", [2, 3])  # the last epoch of stage 1; the middle of stage 2
def test_save_restore_continue_equals_uninterrupted(save_after):
    train = {"lr_step": 2, "lr_gamma": 0.5}
    reference = ume_trial(5, train=train, stage_epochs=[2, 3])
    uninterrupted = [without_timing(reference.step()) for _ in range(5)]
    trial = ume_trial(5, train=train, stage_epochs=[2, 3])
    for _ in range(save_after):
        trial.step()
    restored = restore_into(trial, ume_trial(5, train=train, stage_epochs=[2, 3]))
    continued = [without_timing(restored.step()) for _ in range(5 - save_after)]
    assert continued == uninterrupted[save_after:]


# -- refusals ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", ["film", "gated"])
def test_non_additive_fusion_is_refused(fusion):
    with pytest.raises(ConfigError, match=rf"model.fusion: is '{fusion}'.*Use model.fusion=sum"):
        ume_trial(2, fusion=fusion)


def test_ume_does_not_compose():
    with pytest.raises(ConfigError, match="'ume' does not compose with other methods: UME is a multi-stage scheme"):
        get_method("ume+ogm")
