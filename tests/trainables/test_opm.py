"""OPM: Eq. 8 by hand, realised drop frequency, q from step t used at t+1, no drop in evaluation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from mmtune.engine.loop import evaluate
from mmtune.engine.method import StepContext
from mmtune.engine.metrics import discrepancy_ratio
from mmtune.engine.trial import Trial, parse_trial_config
from mmtune.trainables._discrepancy import batch_discrepancy
from mmtune.trainables.opm import drop_probability, feature_scale, sample_keep_masks


def test_drop_probability_two_modalities():
    q = drop_probability(torch.tensor([2.0, 0.5]), 0.5, 0.5)
    assert q.tolist() == pytest.approx([0.5 * (1 + 0.5 * math.tanh(1.0)), 0.0])


def test_drop_probability_three_modalities_and_cap():
    rho = discrepancy_ratio(torch.tensor([4.0, 2.0, 1.0]))  # [3, 1.25, 0.375]
    q = drop_probability(rho, 0.3, 1.0)
    assert q.tolist() == pytest.approx([0.3 * (1 + math.tanh(2.0)), 0.3 * (1 + math.tanh(0.25)), 0.0])
    assert drop_probability(torch.tensor([3.0, 0.2]), 0.9, 1.0).tolist() == [1.0, 0.0]  # capped at 1
    q = drop_probability(torch.tensor([1.5, 0.7]), 0.4, 0.5, z="sigmoid")
    assert q.tolist() == pytest.approx([0.4 * (1 + 0.5 / (1 + math.exp(-1.5))), 0.0])


def test_realised_drop_frequency_matches_q():
    keep = sample_keep_masks(torch.tensor([0.3, 0.0, 1.0]), 200_000, torch.Generator().manual_seed(0))
    assert keep.mean(dim=1).tolist() == pytest.approx([0.7, 1.0, 0.0], abs=0.005)


def test_rescale_variants():
    q, dims = torch.tensor([0.5, 0.0]), torch.tensor([128.0, 128.0])
    assert feature_scale(q, dims, "none").tolist() == [1.0, 1.0]
    assert feature_scale(q, dims, "theta_all").tolist() == pytest.approx([1 / 0.75, 1 / 0.75])
    assert feature_scale(q, dims, "inverted").tolist() == pytest.approx([2.0, 1.0])


def setup(**params):
    trial = Trial(parse_trial_config(tiny_config("opm", params=params)))
    batch = next(trial.data.train.batches(64, generator=torch.Generator().manual_seed(0)))
    ctx = StepContext(epoch=1, step=0, global_step=0, modulating=True, generator=trial.method_generator, device=trial.device)
    return trial, batch, ctx


def test_q_from_step_t_is_used_at_step_t_plus_1():
    trial, batch, ctx = setup()
    method = trial.method
    assert method.q.tolist() == [0.0, 0.0]
    first = method.before_forward(batch, ctx)
    assert all(bool((w == 1).all()) for w in first.drop.values())  # q_0 = 0: nothing dropped at step 0
    out = trial.model(first.inputs, drop=first.drop)
    F.cross_entropy(out.logits, first.labels).backward()
    method.modulate_gradients(trial.model, out, first, ctx)
    expected = drop_probability(batch_discrepancy(trial.model, out, first.labels, method.config), 0.5, 0.5)
    assert torch.equal(method.q, expected)  # q_{t+1} from step t's forward
    method.q = torch.tensor([1.0, 0.0])
    second = method.before_forward(batch, ctx)
    assert bool((second.drop["audio"] == 0).all()) and bool((second.drop["video"] == 1).all())


def test_p_exe_zero_never_drops():
    trial, batch, ctx = setup(p_exe=0.0)
    trial.method.q = torch.tensor([1.0, 1.0])
    out = trial.method.before_forward(batch, ctx)
    assert all(bool((w == 1).all()) for w in out.drop.values())


def test_nothing_is_dropped_in_evaluation():
    trial, _, _ = setup()
    trial.step()
    trial.method.q = torch.tensor([1.0, 1.0])  # would drop everything if evaluation dropped
    with_q = {k: v.item() for k, v in evaluate(trial.model, trial.data.val, batch_size=64, prefix="val").items()}
    trial.method.q = torch.tensor([0.0, 0.0])
    without = {k: v.item() for k, v in evaluate(trial.model, trial.data.val, batch_size=64, prefix="val").items()}
    assert with_q == without and with_q["val_acc"] > 1 / 6


def test_window_is_respected():
    trial = Trial(parse_trial_config(tiny_config("opm", params={"start_epoch": 2})))
    traced = ["trace/q/audio" in trial.step() for _ in range(3)]
    assert traced == [False, True, True]


def test_default_set_drops_audio_not_video():
    trial = Trial(parse_trial_config(tiny_config("opm", train={"epochs": 4})))
    metrics = [trial.step() for _ in range(4)][-1]
    assert metrics["trace/q/audio"] > 0.4 and metrics["trace/q/video"] < metrics["trace/q/audio"]


def test_code_timing_scores_this_batch_and_encodes_it_once():
    """timing=code (the official TPAMI code): q comes from the current batch's own features, the drop
    happens in the same batch, and the forward reuses those features (one encoder pass per step)."""
    trial, batch, ctx = setup(timing="code", q_base=0.9, lam=1.0)
    ctx.model = trial.model
    method, model = trial.method, trial.model
    expected_rho = batch_discrepancy(model, model(batch.inputs), batch.labels, method.config)
    expected_q = drop_probability(expected_rho, 0.9, 1.0)
    assert (expected_q > 0).any()  # the dominant modality is dropped in this very batch
    calls = {m: 0 for m in model.modalities}
    hooks = [model.encoders[m].register_forward_hook(lambda *_, m=m: calls.__setitem__(m, calls[m] + 1))
             for m in model.modalities]
    try:
        modulated = method.before_forward(batch, ctx)
        assert torch.allclose(method.q, expected_q)
        out = model(modulated.inputs, drop=modulated.drop, features=modulated.features)
        F.cross_entropy(out.logits, modulated.labels).backward()
        method.modulate_gradients(model, out, modulated, ctx)  # no change of q after the step
        assert torch.allclose(method.q, expected_q)
    finally:
        for h in hooks:
            h.remove()
    assert calls == {m: 1 for m in model.modalities}
    trial.step()  # and a whole epoch runs
