"""Valuation: v(S), the Shapley values, the sample-level copy counts, the modality-level re-sample fraction
and copy rule by hand (2 and 3 modalities); the valuation pass against the code's two-modality formula;
the copy plan reaches the loop (epoch_indices, Batch.index → absent modalities); traces, warm-up and
schedule, save → restore → continue, bad params."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import check_restore_continues, tiny_config

from mmtune.data.base import Batch
from mmtune.engine.loop import train_epoch
from mmtune.engine.method import StepContext
from mmtune.engine.trial import Trial, parse_trial_config
from mmtune.errors import ConfigError
from mmtune.trainables.valuation import (
    modality_copy_keep,
    modality_gaps,
    resample_fraction,
    sample_copies,
    sample_plan,
    shapley_matrix,
    shapley_values,
    subset_values,
)

AV = ["audio", "video"]
AVT = ["audio", "video", "text"]
SUBSETS2 = [(), (0,), (1,), (0, 1)]
SUBSETS3 = [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]


def phi(subsets, correct, m, value="size"):
    sizes = torch.tensor([len(s) for s in subsets])
    return shapley_values(subset_values(torch.tensor(correct, dtype=torch.bool), sizes, value), shapley_matrix(subsets, m))


# ----------------------------------------------------------------------------- pure functions

@pytest.mark.parametrize(("c_a", "c_v", "c_av"), [(a, v, av) for a in (0, 1) for v in (0, 1) for av in (0, 1)])
def test_two_modality_shapley_is_the_codes_formula(c_a, c_v, c_av):
    # The code: value_all = 2·c_av, value_a = c_a, value_v = c_v; contrib_a = (v_a + v_all − v_v) / 2.
    got = phi(SUBSETS2, [[1], [c_a], [c_v], [c_av]], 2)[:, 0].tolist()  # ∅ "correct" is ignored: v(∅) = 0
    assert got == pytest.approx([(c_a + 2 * c_av - c_v) / 2, (c_v + 2 * c_av - c_a) / 2])
    # BalanceBenchmark's value 1[correct]: φ_a = c_a / 2 + (c_av − c_v) / 2.
    got = phi(SUBSETS2, [[0], [c_a], [c_v], [c_av]], 2, value="correct")[:, 0].tolist()
    assert got == pytest.approx([(c_a + c_av - c_v) / 2, (c_v + c_av - c_a) / 2])


def test_three_modality_shapley_by_hand():
    # Correct exactly when audio is present: v = |S| there. φ_a = 1/3·1 + 1/6·(2 + 2) + 1/3·3 = 2,
    # φ_v = φ_t = 1/6·1 + 1/3·1 = 1/2 (Σ φ = v(𝓜) = 3). With 1[correct]: audio alone matters.
    correct = [[int(0 in s)] for s in SUBSETS3]
    assert phi(SUBSETS3, correct, 3)[:, 0].tolist() == pytest.approx([2.0, 0.5, 0.5])
    assert phi(SUBSETS3, correct, 3, value="correct")[:, 0].tolist() == pytest.approx([1.0, 0.0, 0.0])
    # Every subset right: each modality's fair share, exactly 1 (rounded to a multiple of 1/M!).
    assert phi(SUBSETS3, [[1]] * 8, 3)[:, 0].tolist() == [1.0, 1.0, 1.0]
    assert phi(SUBSETS3, [[1]] * 8, 3, value="correct")[:, 0].tolist() == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="all 8 subsets"):
        shapley_matrix(SUBSETS3[:-1], 3)


def test_sample_copies_uses_the_codes_strict_bounds():
    values = torch.tensor([1.5, 1.0, 0.5, 0.4, 0.0, -0.1, -0.5])
    assert sample_copies(values).tolist() == [0, 0, 1, 0, 2, 0, 3]
    assert sample_copies(values, upper=2.0, high=0.6, low=-0.2).tolist() == [1, 1, 2, 2, 2, 2, 3]
    index, owner = sample_plan(torch.tensor([[1, 0, 2], [0, 3, 0]]))
    assert index.tolist() == [0, 2, 2, 1, 1, 1] and owner.tolist() == [0, 0, 0, 1, 1, 1]


def test_resample_fraction_two_and_three_modalities():
    gaps = modality_gaps(torch.tensor([0.6, 0.0])).tolist()  # g = (0.4, 1.0): d = 0.6 · 2/3 = 0.4
    assert gaps == pytest.approx([0.4, 1.0])
    assert resample_fraction(gaps) == pytest.approx(0.4)
    assert resample_fraction(gaps, alpha=0.5) == pytest.approx(0.2)
    assert resample_fraction(gaps, func="tanh") == pytest.approx(math.tanh(0.4))
    assert resample_fraction(gaps, func="square") == pytest.approx(0.4 ** 1.5)
    assert resample_fraction(gaps, gap_sum="ordered") == pytest.approx(0.8)  # BalanceBenchmark: twice the code's
    # Three: |Δ| = 0.3, 0.9, 0.6 → mean 0.6 → d = 0.4; ordered: 2·1.8 / 2 = 1.8 → d = 1.2.
    assert resample_fraction([0.0, 0.3, 0.9]) == pytest.approx(0.4)
    assert resample_fraction([0.0, 0.3, 0.9], gap_sum="ordered") == pytest.approx(1.2)


def test_modality_copy_rules():
    assert modality_copy_keep([0.2, 0.5]) == ([1], [[False, True]])
    assert modality_copy_keep([0.5, 0.2]) == ([0], [[True, False]])
    assert modality_copy_keep([0.5, 0.5]) == ([1], [[False, True]])  # the code's gap_a > gap_v: a tie → video
    owners, keep = modality_copy_keep([0.2, 0.5, 0.3], "ranked")
    assert owners == [0, 1, 2] and keep == [[True, True, True], [False, True, False], [False, True, True]]


# ----------------------------------------------------------------------------- the method in a trial

def build(params=None, **sections):
    return Trial(parse_trial_config(tiny_config("valuation", params=params or {}, **sections)))


def context(trial, epoch=1, modulating=True):
    return StepContext(epoch=epoch, step=0, global_step=0, modulating=modulating, generator=trial.method_generator,
                       device=trial.device, model=trial.model, optimizer=trial.optimizer, train=trial.train_split,
                       batch_size=trial.spec.train.batch_size)


@pytest.mark.parametrize(("level", "modalities"), [("sample", AV), ("modality", AV), ("sample", AVT), ("modality", AVT)])
def test_short_trial_reports_finite_traces(level, modalities):
    metrics = build({"start_epoch": 1, "level": level}, dataset={"modalities": modalities}).step()
    for quantity in ("contribution", "resampled", "copies"):
        for m in modalities:
            assert math.isfinite(metrics[f"trace/{quantity}/{m}"]), (quantity, m)
    assert all(0.0 <= metrics[f"trace/resampled/{m}"] <= 1.0 for m in modalities)
    assert math.isfinite(metrics["train_loss"])


@pytest.mark.parametrize("absent", ["features", "inputs"])
def test_valuation_pass_matches_the_codes_formula_on_the_training_split(absent):
    trial = build({"start_epoch": 1, "absent": absent})
    model, split = trial.model, trial.train_split
    got = trial.method.valuate(model, split, 64)
    assert got.shape == (2, len(split)) and model.training
    model.eval()
    with torch.no_grad():
        rows = []
        for batch in split.batches(64):
            if absent == "features":
                logits = model.subset_logits(model.encode(batch.inputs), [("audio",), ("video",), ("audio", "video")])
            else:
                zero = {m: torch.zeros_like(x) for m, x in batch.inputs.items()}
                logits = torch.stack([model({"audio": batch.inputs["audio"], "video": zero["video"]}).logits,
                                      model({"audio": zero["audio"], "video": batch.inputs["video"]}).logits,
                                      model(batch.inputs).logits])
            rows.append((logits.argmax(-1) == batch.labels).float())
    model.train()
    c_a, c_v, c_av = torch.cat(rows, 1)
    assert torch.allclose(got, torch.stack([(c_a + 2 * c_av - c_v) / 2, (c_v + 2 * c_av - c_a) / 2]))


def test_the_plan_reaches_the_loop_and_copies_keep_one_modality():
    trial = build({"start_epoch": 1})
    method, ctx = trial.method, context(trial)
    n = len(trial.train_split)
    seen = []
    method.valuate, valuate = (lambda model, split, bs: seen.append(len(split)) or valuate(model, split, bs)), method.valuate
    method.begin_epoch(ctx)
    assert seen == [n]  # the whole training split, once
    k = len(method.plan_index)
    assert k > 0 and torch.equal(method.epoch_indices(ctx)[n:], method.plan_index)
    stats = train_epoch(trial.model, trial.train_split, method, trial.optimizer, ctx, batch_size=32,
                        data_generator=torch.Generator().manual_seed(0))
    assert stats.samples == n + k
    # Batch.index ≥ n marks a copy: the modalities it does not keep are dropped (features) or zeroed (inputs).
    pos = torch.tensor([0, n - 1, n, n + k - 1])
    batch = Batch({m: torch.ones(4, 3) for m in AV}, torch.zeros(4, dtype=torch.long), index=pos)
    out = method.before_forward(batch, ctx)
    want = torch.stack([torch.ones(2, 2, dtype=torch.bool), method.plan_keep[[0, k - 1]]]).reshape(4, 2).float()
    assert torch.equal(torch.stack([out.drop[m] for m in AV], 1), want)
    assert torch.equal(want.sum(1)[2:], torch.ones(2))  # a copy keeps exactly its owner
    method.config = type(method.config)(**{**vars(method.config), "absent": "inputs"})
    out = method.before_forward(batch, ctx)
    assert out.drop is None and torch.equal(torch.stack([out.inputs[m][:, 0] for m in AV], 1), want)


def test_modality_level_values_only_z_and_copies_the_weaker_modality():
    trial = build({"start_epoch": 1, "level": "modality", "part_ratio": 0.25, "alpha": 3.0})
    method, ctx = trial.method, context(trial)
    seen = []
    method.valuate, valuate = (lambda model, split, bs: seen.append(len(split)) or valuate(model, split, bs)), method.valuate
    method.begin_epoch(ctx)
    assert seen == [len(trial.train_split) // 4]
    traces = method.traces.compute()
    gaps = [1 - traces[f"contribution/{m}"] for m in AV]
    assert len(method.plan_index) == int(resample_fraction(gaps, 3.0) * len(trial.train_split))
    weak = 0 if gaps[0] > gaps[1] else 1
    assert (method.plan_owner == weak).all() and (method.plan_keep.sum(1) == 1).all()


def test_warm_up_and_schedule():
    assert not any(k.startswith("trace/") for k in build().step())  # default start_epoch 6: the code's warm-up
    trial = build({"start_epoch": 2, "every": 2, "level": "modality", "alpha": 3.0}, train={"epochs": 4})
    first = trial.step()
    assert not any(k.startswith("trace/") for k in first)
    second = trial.step()
    assert "trace/contribution/audio" in second and trial.method.planned_epoch == 2
    plan = trial.method.plan_index.clone()
    third = trial.step()  # the plan is reused: no valuation this epoch
    assert "trace/contribution/audio" not in third and "trace/resampled/audio" in third
    assert torch.equal(trial.method.plan_index, plan) and trial.method.planned_epoch == 2
    trial.step()
    assert trial.method.planned_epoch == 4


@pytest.mark.parametrize("params", [{"start_epoch": 1}, {"start_epoch": 1, "level": "modality", "every": 2, "alpha": 3.0}])
def test_save_restore_continue_equals_uninterrupted(params):
    restored, uninterrupted = check_restore_continues(tiny_config("valuation", params=params))
    assert torch.equal(restored.method.plan_index, uninterrupted.method.plan_index)
    assert torch.equal(restored.method.plan_keep, uninterrupted.method.plan_keep)


@pytest.mark.parametrize(("key", "value"), [
    ("level", "dataset"), ("absent", "mask"), ("value", "loss"), ("func", "exp"), ("gap_sum", "max"),
    ("copy_rule", "all"), ("part_ratio", 0.0), ("every", 0), ("alpha", -1.0), ("high", 2.0),
])
def test_bad_params_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"params.{key}"):
        parse_trial_config(tiny_config("valuation", params={key: value}))
