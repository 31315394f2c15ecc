"""ReconBoost: the boosting loss (against the official code's expression and by hand), the ensemble with
a modality left out (2 and 3 modalities), the consolidation term, the stage plan; in a trial: only the
boosted learner trains, rectification trains every learner and β, the prediction is β Σ_m z_m, the
code's detached consolidation term is inert, traces, restore mid-stage and across a stage boundary,
bad params, refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import check_restore_continues, restore_into, tiny_config

import mmtune.trainables  # noqa: F401  every method (composition refusal)
from mmtune.engine.registry import get_method
from mmtune.engine.trial import TIMING_KEYS, Trial, parse_trial_config
from mmtune.errors import ConfigError
from mmtune.trainables.reconboost import (
    boost_weights,
    boosting_loss,
    consolidation_loss,
    ensemble_logits,
    reconcilement_term,
    schedule,
)

AV = ["audio", "video"]
AVT = ["audio", "video", "text"]
LN3 = math.log(3.0)


def trial_of(epochs: int, *, modalities=AV, fusion="sum", **params) -> Trial:
    return Trial(parse_trial_config(tiny_config(
        "reconboost", params=params, model={"fusion": fusion}, dataset={"modalities": list(modalities)},
        train={"epochs": epochs})))


def strip(metrics):
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


# ----------------------------------------------------------------------------- pure functions

def test_boosting_loss_by_hand():
    # C = 2; z_m = (0, 0): CE = ln 2; F = (ln 3, 0): σ(F) = (0.75, 0.25).
    z = torch.zeros(2, 2)
    ens = torch.tensor([[LN3, 0.0], [LN3, 0.0]])
    y = torch.tensor([0, 1])
    # weights (w1 − λ σ(F)_y) / C: (5 − 0.75)/2, (5 − 0.25)/2
    assert boost_weights(ens, y, 5.0, 1.0).tolist() == pytest.approx([2.125, 2.375])
    assert boosting_loss(z, ens, y, 5.0, 1.0).tolist() == pytest.approx([2.125 * math.log(2), 2.375 * math.log(2)])
    assert reconcilement_term(z, ens, y, 1.0).tolist() == pytest.approx([-0.375 * math.log(2), -0.125 * math.log(2)])
    assert boosting_loss(z, ens, y, 5.0, 0.0).tolist() == pytest.approx([2.5 * math.log(2)] * 2)  # λ = 0: CE · w1/C


def test_boosting_loss_equals_the_official_expression():
    g = torch.Generator().manual_seed(0)
    out_obj, out_join = torch.randn(8, 6, generator=g, requires_grad=True), torch.randn(8, 6, generator=g)
    lbl = torch.randint(0, 6, (8,), generator=g)
    target = torch.zeros(8, 6).scatter_(1, lbl.view(-1, 1), 1)
    code = (-5.0 * (target * out_obj.log_softmax(1)).mean(-1)
            + 1.0 * (target * out_join.detach().softmax(1) * out_obj.log_softmax(1)).mean(-1))
    ours = boosting_loss(out_obj, out_join, lbl, 5.0, 1.0)
    assert torch.allclose(ours, code, atol=1e-6)
    (g_code,) = torch.autograd.grad(code.mean(), out_obj)
    (g_ours,) = torch.autograd.grad(ours.mean(), out_obj)
    assert torch.allclose(g_ours, g_code, atol=1e-6)
    ens = out_join.clone().requires_grad_(True)
    boosting_loss(out_obj, ens, lbl, 5.0, 1.0).sum().backward()
    assert ens.grad is None  # the others' ensemble is a fixed target


def test_ensemble_leaves_one_member_out_two_and_three_modalities():
    two = torch.tensor([[[1.0, 2.0]], [[3.0, -1.0]]])  # (M=2, B=1, C=2)
    assert ensemble_logits(two, 2.0).tolist() == [[[8.0, 2.0]]][0]
    assert ensemble_logits(two, 2.0, exclude=0).tolist() == [[6.0, -2.0]]
    assert ensemble_logits(two, 0.5, exclude=1).tolist() == [[0.5, 1.0]]
    three = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]], [[4.0, 4.0]]])
    assert ensemble_logits(three, 1.0).tolist() == [[5.0, 6.0]]
    assert ensemble_logits(three, 1.0, exclude=1).tolist() == [[5.0, 4.0]]
    assert ensemble_logits(three, 0.5, exclude=2).tolist() == [[0.5, 1.0]]


def test_consolidation_mse_by_hand_and_its_gradient_switch():
    z = torch.zeros(1, 2, requires_grad=True)  # σ = (0.5, 0.5)
    prev = torch.tensor([[LN3, 0.0]], requires_grad=True)  # σ = (0.75, 0.25)
    code = consolidation_loss(z, prev)
    assert code.item() == pytest.approx(0.0625) and not code.requires_grad  # the code detaches both: no gradient
    ours = consolidation_loss(z, prev, grad=True)
    assert ours.item() == pytest.approx(0.0625)
    ours.backward()
    assert z.grad is not None and prev.grad is None


def test_schedule_cycles_boost_then_rectify_and_cuts_the_last_stage():
    assert schedule(5, AV, 1, 1) == [("boost", "audio", 1), ("rectify", "audio", 1), ("boost", "video", 1),
                                     ("rectify", "video", 1), ("boost", "audio", 1)]
    assert schedule(10, AV, 4, 4) == [("boost", "audio", 4), ("rectify", "audio", 4), ("boost", "video", 2)]
    assert schedule(4, AVT, 1, 0) == [("boost", "audio", 1), ("boost", "video", 1), ("boost", "text", 1), ("boost", "audio", 1)]
    assert schedule(7, AVT, 2, 1) == [("boost", "audio", 2), ("rectify", "audio", 1), ("boost", "video", 2),
                                      ("rectify", "video", 1), ("boost", "text", 1)]


# ----------------------------------------------------------------------------- in a trial

@pytest.mark.parametrize("modalities", [AV, AVT])
def test_stages_and_finite_traces(modalities):
    n = 2 * len(modalities)
    trial = trial_of(n, modalities=modalities)
    assert [(s.name, s.epochs, s.fresh_optimizer) for s in trial.stages] == [
        (f"{p}/{m}", 1, True) for m in modalities for p in ("boost", "rectify")]
    for k, m in enumerate(modalities):
        boost, rectify = trial.step(), trial.step()
        assert {j: boost[f"trace/round/{j}"] for j in modalities} == {j: float(j == m) for j in modalities}
        assert boost["trace/rectify"] == 0.0 and rectify["trace/rectify"] == 1.0
        assert all(rectify[f"trace/round/{j}"] == 0.0 for j in modalities)
        assert boost[f"trace/recon/{m}"] < 0.0 and 0.0 < boost[f"trace/ensemble_conf/{m}"] < 1.0
        assert (f"trace/consolidation/{m}" in boost) == (k > 0)  # from the second boosting stage on
        for metrics in (boost, rectify):
            assert all(math.isfinite(v) for v in metrics.values())


def owner(name: str, modalities) -> str | None:
    for m in modalities:
        if name.startswith((f"encoders.{m}.", f"fusion.fc.{m}.")):
            return m
    return None


@pytest.mark.parametrize("modalities", [AV, AVT])
def test_boosting_trains_only_its_learner_rectification_trains_all_and_beta(modalities):
    trial = trial_of(2 * len(modalities), modalities=modalities)
    for m in modalities:
        before = {k: v.clone() for k, v in trial.model.named_parameters()}
        beta = trial.method.boost_rate.clone()
        trial.step()  # boost/m
        after = dict(trial.model.named_parameters())
        for k, v in after.items():
            assert torch.equal(v, before[k]) != (owner(k, modalities) == m), k
        assert torch.equal(trial.method.boost_rate, beta)  # β has no gradient while boosting
        before = {k: v.clone() for k, v in trial.model.named_parameters()}
        trial.step()  # rectify/m
        assert all(not torch.equal(v, before[k]) for k, v in trial.model.named_parameters())
        assert not torch.equal(trial.method.boost_rate, beta)


def test_prediction_is_beta_times_the_sum_of_the_learners():
    trial = trial_of(2, boost_rate=0.5)
    metrics = [trial.step() for _ in range(2)][-1]
    beta = trial.method.boost_rate
    assert beta.item() != 0.5  # learned in the rectification epoch
    model, val = trial.model.eval(), trial.data.val
    with torch.no_grad():
        out = model(val.inputs)
        members = model.modality_logits(out.features)
    fused, per = trial.method.predict(model, out)
    assert torch.allclose(fused, beta * (members["audio"] + members["video"]), atol=1e-6)
    assert torch.allclose(fused, beta * out.logits, atol=1e-5)  # sum fusion: the model's logits, scaled
    y = val.labels
    assert metrics["val_acc"] == pytest.approx((fused.argmax(1) == y).float().mean().item())
    for m in AV:
        assert torch.equal(per[m], members[m])
        assert metrics[f"val_acc/{m}"] == pytest.approx((members[m].argmax(1) == y).float().mean().item())


def test_code_consolidation_is_inert_and_the_gradient_variant_is_not():
    def params_after(**p):
        trial = trial_of(3, **p)
        losses = [trial.step()["train_loss"] for _ in range(3)]
        return torch.cat([v.flatten() for v in trial.model.parameters()]), losses

    base, base_loss = params_after(alpha=0.0)
    code, code_loss = params_after(alpha=0.5)
    grad, _ = params_after(alpha=5.0, consolidation_grad=True)
    assert torch.equal(base, code)  # detached on both sides (the code): no effect on training ...
    assert code_loss[2] > base_loss[2]  # ... only on the reported loss of the second boosting stage
    assert not torch.equal(base, grad)


@pytest.mark.parametrize("fresh", [True, False])
def test_fresh_optimizer_per_stage_or_one_throughout(fresh):
    trial = trial_of(2, fresh_optimizer=fresh)
    trial.step()
    first = trial.optimizer
    trial.step()
    assert (trial.optimizer is first) != fresh


def test_restore_mid_stage_and_across_a_stage_boundary():
    config = tiny_config("reconboost", params={"boost_epochs": 2, "rectify_epochs": 2, "boost_rate": 0.7},
                         model={"fusion": "concat"}, train={"epochs": 5})
    restored, uninterrupted = check_restore_continues(config)  # saved mid boost/audio, continues into rectify/audio
    assert torch.equal(restored.method.boost_rate, uninterrupted.method.boost_rate)
    reference = Trial(parse_trial_config(config))
    expected = [strip(reference.step()) for _ in range(5)]
    trial = Trial(parse_trial_config(config))
    for _ in range(4):  # the end of rectify/audio: β has moved
        trial.step()
    assert trial.method.boost_rate.item() != pytest.approx(0.7)
    resumed = restore_into(trial, Trial(parse_trial_config(config)))
    assert strip(resumed.step()) == expected[4]  # boost/video with its consolidation term


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize(("key", "value"), [
    ("ce_weight", 0.0), ("lam", -1.0), ("alpha", -0.5), ("boost_epochs", 0), ("rectify_epochs", -1),
    ("consolidation_grad", "yes"), ("start_epoch", 2), ("end_epoch", 3),
])
def test_bad_params_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"params.{key}"):
        parse_trial_config(tiny_config("reconboost", params={key: value}))


@pytest.mark.parametrize("fusion", ["film", "gated"])
def test_non_additive_fusion_is_refused(fusion):
    with pytest.raises(ConfigError, match=rf"model.fusion: is '{fusion}'.*Use model.fusion=sum"):
        trial_of(2, fusion=fusion)


def test_reconboost_does_not_compose():
    with pytest.raises(ConfigError, match="'reconboost' does not compose with other methods: ReconBoost is a staged"):
        get_method("reconboost+ogm")
