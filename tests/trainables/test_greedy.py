"""Greedy: the conditional utilisation rate, its difference, the effective learning rate, the conditional
learning speed and the trigger by hand (2 and 3 modalities); the re-balancing rule freezes the right
branches for Q steps; traces, window, save → restore → continue, bad params."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import check_restore_continues, tiny_config

from mmtune.engine.method import StepContext
from mmtune.engine.trial import Trial, parse_trial_config
from mmtune.errors import ConfigError
from mmtune.trainables.greedy import (
    conditional_learning_speed,
    conditional_utilization,
    effective_learning_rate,
    group_norms,
    rebalance_target,
    utilization_difference,
)

AV = ["audio", "video"]
AVT = ["audio", "video", "text"]
QUANTITIES = ("learning_speed", "effective_lr", "rebalance", "utilization", "d_util")


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


# ----------------------------------------------------------------------------- pure functions

def test_conditional_utilization_two_and_three_modalities():
    # A(a, v) = 0.8, A(v) = 0.6 (audio removed), A(a) = 0.4: u(a|v) = 0.25, u(v|a) = 0.5.
    u = conditional_utilization(t(0.8), t(0.6, 0.4))
    assert u.tolist() == pytest.approx([0.25, 0.5])
    assert utilization_difference(u).tolist() == pytest.approx([-0.25, 0.25])  # d_util = u(v|a) − u(a|v)
    u3 = conditional_utilization(t(0.9), t(0.45, 0.9, 0.81))
    assert u3.tolist() == pytest.approx([0.5, 0.0, 0.1])
    assert utilization_difference(u3).tolist() == pytest.approx([0.45, -0.3, -0.15])
    assert conditional_utilization(t(0.0), t(0.0, 0.0)).tolist() == [0.0, 0.0]


def test_group_norms_and_effective_learning_rate_by_hand():
    w = torch.nn.Parameter(torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]]))
    b = torch.nn.Parameter(torch.tensor([2.0]))
    w.grad = torch.tensor([[0.5, 0.0, 1.0], [1.0, 0.0, 0.0]])
    g, n = group_norms([w, b])  # b has no gradient: a zero gradient
    assert (g.item(), n.item()) == pytest.approx((2.25, 19.0))
    g, n = group_norms([(w, 1, 3)])  # the column block w[:, 1:3]
    assert (g.item(), n.item()) == pytest.approx((1.0, 14.0))
    assert effective_learning_rate(t(2.25), t(19.0)).item() == pytest.approx(2.25 / 19)
    assert effective_learning_rate(t(1.0), t(0.0)).item() == 0.0


def test_conditional_learning_speed_and_trigger_two_modalities():
    # Σμ fusion = (1e-2, 1e-2), Σμ branch = (1e-3, 1e-2): s = (1, 0); d = s_0 − s_1 = 1.
    s = conditional_learning_speed(t(1e-2, 1e-2), t(1e-3, 1e-2))
    assert s.tolist() == pytest.approx([1.0, 0.0])
    assert rebalance_target(s, 0.5) == 0  # d > 0: modality 0's own branch learns the slower → cared for
    assert rebalance_target(s.flip(0), 0.5) == 1  # d < 0 → modality 1
    assert rebalance_target(s, 1.0) is None  # |d| must exceed α
    assert conditional_learning_speed(None, t(1e-3, 1e-1)).tolist() == pytest.approx([3.0, 1.0])


def test_conditional_learning_speed_and_trigger_three_modalities():
    s = conditional_learning_speed(t(1.0, 1.0, 1.0), t(10.0, 1.0, 0.1))
    assert s.tolist() == pytest.approx([-1.0, 0.0, 1.0])
    assert rebalance_target(s, 1.5) == 2  # gap max − min = 2 > 1.5: the slowest branch (text)
    assert rebalance_target(s, 2.0) is None


# ----------------------------------------------------------------------------- the method in a trial

def build(params=None, **sections):
    return Trial(parse_trial_config(tiny_config("greedy", params=params or {}, **sections)))


def test_short_trial_reports_finite_traces_two_and_three_modalities():
    for modalities in (AV, AVT):
        metrics = build(dataset={"modalities": modalities}).step()
        for quantity in QUANTITIES:
            for m in modalities:
                assert math.isfinite(metrics[f"trace/{quantity}/{m}"]), (quantity, m)
        share = sum(metrics[f"trace/rebalance/{m}"] for m in modalities)
        assert 0.0 <= share <= 1.0 and math.isfinite(metrics["train_loss"])


def step_context(trial, epoch=1, modulating=True):
    return StepContext(epoch=epoch, step=0, global_step=0, modulating=modulating, generator=trial.method_generator,
                       device=trial.device, model=trial.model, optimizer=trial.optimizer, train=trial.data.train,
                       batch_size=trial.spec.train.batch_size)


def backward(trial):
    batch = next(trial.data.train.batches(32, generator=torch.Generator().manual_seed(0)))
    trial.model.zero_grad(set_to_none=True)
    out = trial.model(batch.inputs)
    F.cross_entropy(out.logits, batch.labels).backward()
    return out, batch


@pytest.mark.parametrize(("scope", "modalities"), [("branch", AV), ("encoder", AVT)])
def test_rebalancing_freezes_the_other_branches_for_the_window(scope, modalities):
    fusion = "late" if scope == "encoder" else "concat"
    trial = build({"alpha": 0.0, "window": 3, "freeze_scope": scope, "speed": "branch"},
                  dataset={"modalities": modalities}, model={"fusion": fusion})
    model, method = trial.model, trial.method
    ctx = step_context(trial)
    out, batch = backward(trial)
    speeds = conditional_learning_speed(None, torch.stack([
        effective_learning_rate(*group_norms(model.modality_parameters()[m])) for m in modalities]))
    method.modulate_gradients(model, out, batch, ctx)  # a normal step: nothing frozen, the trigger fires
    assert all(p.grad is not None for p in model.parameters())
    assert method.caring == int(speeds.argmax()) and method.remaining == 3
    cared = modalities[method.caring]
    for left in (2, 1, 0):
        out, batch = backward(trial)
        method.modulate_gradients(model, out, batch, ctx)
        assert method.remaining == left
        for m in modalities:
            assert all((p.grad is not None) == (m == cared) for p in model.encoders[m].parameters()), m
            heads = model.fusion.owned_parameters(m)  # late: own heads learn under freeze_scope=encoder
            assert all(p.grad is not None for p in heads)
        assert all(p.grad is not None for p in model.shared_parameters())
    out, batch = backward(trial)  # the window is over: a normal step again
    method.modulate_gradients(model, out, batch, ctx)
    assert all(p.grad is not None for p in model.parameters()) and method.remaining == 3  # α = 0: fires again
    traces = method.traces.compute()
    assert traces[f"rebalance/{cared}"] == pytest.approx(3 / 5)


def test_branch_scope_freezes_the_late_heads_and_code_speed_uses_the_concat_blocks():
    trial = build({"alpha": 0.0, "window": 1, "speed": "branch"}, model={"fusion": "late"})
    out, batch = backward(trial)
    trial.method.modulate_gradients(trial.model, out, batch, step_context(trial))
    out, batch = backward(trial)
    trial.method.modulate_gradients(trial.model, out, batch, step_context(trial))
    other = AV[1 - trial.method.caring]
    assert all(p.grad is None for p in trial.model.fusion.owned_parameters(other))
    concat = build()
    assert all(isinstance(g[0], tuple) for g in concat.method.fusion_groups.values())  # W^m column blocks


def test_no_rebalancing_above_the_threshold_and_none_mode_only_monitors():
    trial = build({"alpha": 1e9})
    metrics = trial.step()
    assert trial.method.remaining == 0 and metrics["trace/rebalance/audio"] == metrics["trace/rebalance/video"] == 0.0
    trial = build({"alpha": 0.0, "rebalance": "none"})
    out, batch = backward(trial)
    for _ in range(2):
        trial.method.modulate_gradients(trial.model, out, batch, step_context(trial))
        assert all(p.grad is not None for p in trial.model.parameters())


@pytest.mark.parametrize(("history", "steps_counted"), [("all", True), ("window", False)])
def test_window_is_respected(history, steps_counted):
    trial = build({"start_epoch": 2, "end_epoch": 2, "alpha": 0.0, "history": history})
    first = trial.step()
    assert "trace/rebalance/audio" not in first and "trace/utilization/audio" not in first
    assert ("trace/learning_speed/audio" in first) == steps_counted
    assert bool(trial.method.sums.sum() > 0) == steps_counted
    second = trial.step()
    assert second["trace/rebalance/audio"] + second["trace/rebalance/video"] > 0  # α = 0: re-balancing steps
    assert math.isfinite(second["trace/utilization/audio"])
    sums = trial.method.sums.clone()
    third = trial.step()
    assert not any(k.startswith("trace/") for k in third) and torch.equal(trial.method.sums, sums)


def test_save_restore_continue_equals_uninterrupted():
    restored, uninterrupted = check_restore_continues(tiny_config("greedy", params={"alpha": 0.0, "window": 3}))
    assert torch.equal(restored.method.sums, uninterrupted.method.sums)
    assert (restored.method.remaining, restored.method.caring) == (uninterrupted.method.remaining, uninterrupted.method.caring)


def test_late_fusion_needs_the_branch_speed():
    with pytest.raises(ConfigError, match="params.speed"):
        build(model={"fusion": "late"})


@pytest.mark.parametrize(("key", "value"), [
    ("alpha", -1.0), ("window", 0), ("speed", "bdr"), ("rebalance", "mmtm"), ("freeze_scope", "all"), ("history", "ema"),
])
def test_bad_params_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"params.{key}"):
        parse_trial_config(tiny_config("greedy", params={key: value}))
