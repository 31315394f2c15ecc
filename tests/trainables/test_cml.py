"""CML: confidence, removal chains, pairs, the code's masks and the hinge/reduction variants by hand
(2 and 3 modalities); the regulariser of a real step equals its hand computation; window, traces,
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
from mmtune.trainables.cml import (
    adjacent_pairs,
    chain_present,
    cml_penalty,
    confidence,
    confidence_increment,
    masked_differences,
    masked_features,
    violation_rate,
)

THREE = {"modalities": ["audio", "video", "text"]}


# ----------------------------------------------------------------------------- pure functions

def test_confidence_is_the_max_softmax_probability():
    conf, pred = confidence(torch.tensor([[0.0, math.log(3.0)], [math.log(4.0), 0.0]]))
    assert conf.tolist() == pytest.approx([0.75, 0.8]) and pred.tolist() == [1, 0]


def test_increment_and_violation_rate_by_hand():
    small, large = torch.tensor([0.9, 0.5, 0.4, 0.7]), torch.tensor([0.8, 0.6, 0.4, 0.2])
    assert confidence_increment(small, large).tolist() == pytest.approx([0.1, -0.1, 0.0, 0.5])
    assert violation_rate(small, large).item() == pytest.approx(0.5)  # a tie is no violation


def test_chain_two_modalities():
    present = chain_present(torch.tensor([[1, 0], [0, 1]]))  # sample 0 drops video first, sample 1 audio
    assert present.tolist() == [[[True, True], [True, True]],  # level 0: the full set
                                [[True, False], [False, True]]]  # level 1: sample 0 keeps audio, sample 1 video


def test_chain_three_modalities_is_nested():
    present = chain_present(torch.tensor([[2, 0, 1], [0, 1, 2]]))  # removal orders: video, text | audio, video
    assert present[:, 0].tolist() == [[True, True, True], [True, False, True], [True, False, False]]
    assert present[:, 1].tolist() == [[True, True, True], [False, True, True], [False, False, True]]
    assert (present[1:] <= present[:-1]).all()  # each level a subset of the one before


def test_masked_features_zero_the_absent_modalities_level_major():
    f = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "v": torch.tensor([[5.0], [6.0]])}
    present = chain_present(torch.tensor([[1, 0], [0, 1]]))
    out = masked_features(f, present, ["a", "v"])
    assert out["a"].tolist() == [[1, 2], [3, 4], [1, 2], [0, 0]]
    assert out["v"].tolist() == [[5], [6], [0], [6]]


def test_adjacent_pairs_two_and_three_modalities():
    two = [("a",), ("v",), ("a", "v")]
    assert adjacent_pairs(two) == ([2, 2], [1, 0])  # full vs {v} (a removed), full vs {a}
    three = [s for s in [(), ("a",), ("v",), ("t",), ("a", "v"), ("a", "t"), ("v", "t"), ("a", "v", "t")] if s]
    large, small = adjacent_pairs(three)
    assert len(large) == 9  # 3 pairs from the full set, 2 from each of the three pairs
    for i, j in zip(large, small, strict=True):
        assert set(three[j]) < set(three[i]) and len(three[j]) == len(three[i]) - 1


def test_masked_differences_code_tricks_by_hand():
    small = torch.tensor([[0.9, 0.9, 0.9, 0.9]], requires_grad=True)
    large = torch.tensor([[0.5, 0.5, 0.5, 0.5]], requires_grad=True)
    # columns: both right | both wrong | only T right | only S right
    right_s, right_t = torch.tensor([[True, False, False, True]]), torch.tensor([[True, False, True, False]])
    d = masked_differences(small, large, right_t, right_s, "code")
    assert d.tolist() == [pytest.approx([0.4, 0.4, 0.0, 0.4])]
    d.sum().backward()
    assert small.grad.tolist() == [[1.0, 1.0, 0.0, 1.0]]
    assert large.grad.tolist() == [[-1.0, 0.0, 0.0, -1.0]]  # both wrong: S detached; only T right: nothing
    assert masked_differences(small, large, right_t, right_s, "none").tolist() == [pytest.approx([0.4] * 4)]


def test_penalty_hinge_and_reduction_by_hand():
    d = torch.tensor([[0.2, -0.1, 0.3], [-0.5, 0.1, 0.1]])  # two pairs, three samples
    assert cml_penalty(d).item() == pytest.approx(0.5 + 0.2)  # Σ_pairs Σ_i max(0, d)
    assert cml_penalty(d, reduction="mean").item() == pytest.approx(0.5 / 3 + 0.2 / 3)
    assert cml_penalty(d, hinge="batch").item() == pytest.approx(0.4 + 0.0)  # BB: max(0, Σ_i d) per pair
    assert cml_penalty(d, hinge="batch", reduction="mean").item() == pytest.approx(0.4 / 3)


# ----------------------------------------------------------------------------- the method in a trial

def build(params=None, **sections):
    return Trial(parse_trial_config(tiny_config("cml", params=params or {}, **sections)))


def context(trial, epoch=1):
    return StepContext(epoch=epoch, step=0, global_step=0, modulating=True, generator=trial.method_generator,
                       device=trial.device, model=trial.model, optimizer=trial.optimizer, train=trial.data.train,
                       batch_size=trial.spec.train.batch_size)


def first_batch(trial):
    batch = next(trial.data.train.batches(32, generator=torch.Generator().manual_seed(0)))
    return batch, trial.model(batch.inputs)


def conf_of(model, out, subset):
    return confidence(model.subset_logits(out.features, [subset])[0])[0]


@pytest.mark.parametrize("dataset", [{}, THREE])
def test_removal_all_equals_the_sum_over_every_one_modality_removal(dataset):
    trial = build({"removal": "all", "lam": 2.0}, dataset=dataset)
    model, (batch, out) = trial.model, first_batch(trial)
    full = tuple(trial.modalities)
    expected = torch.zeros(())
    subsets = [s for s in model.all_subsets() if len(s) >= 2]
    for s in subsets:
        for m in s:
            smaller = tuple(j for j in s if j != m)
            expected = expected + F.relu(conf_of(model, out, smaller) - conf_of(model, out, s)).sum()
    assert len(subsets) == (1 if len(full) == 2 else 4)
    got = trial.method.extra_loss(out, batch, context(trial))
    assert got.item() == pytest.approx(2.0 * expected.item(), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("dataset", [{}, THREE])
def test_removal_sample_replays_each_samples_random_chain(dataset):
    trial = build({"mask": "code"}, dataset=dataset)  # λ = 0.1, sum over the batch, the code's tricks
    model, (batch, out) = trial.model, first_batch(trial)
    mods = trial.modalities
    replay = torch.Generator(trial.device).set_state(trial.method_generator.get_state())
    ranks = torch.rand(len(batch.labels), len(mods), generator=replay, device=trial.device).argsort(1).argsort(1)
    expected = 0.0
    for i, y in enumerate(batch.labels.tolist()):
        order = sorted(mods, key=lambda m: ranks[i, mods.index(m)].item())  # removal order of sample i
        sets = [tuple(m for m in mods if m not in order[:k]) for k in range(len(mods))]
        logits = [model.subset_logits({m: f[i:i + 1] for m, f in out.features.items()}, [s])[0, 0] for s in sets]
        probs = [torch.softmax(z, 0) for z in logits]
        for big, small in zip(probs[:-1], probs[1:], strict=True):
            if big.argmax().item() == y or (small.argmax().item() != y):
                expected += max(0.0, small.max().item() - big.max().item())
    got = trial.method.extra_loss(out, batch, context(trial))
    assert got.item() == pytest.approx(0.1 * expected, rel=1e-5, abs=1e-7)


def test_removal_epoch_uses_one_order_for_every_sample_and_epoch():
    trial = build({"removal": "epoch"}, dataset=THREE)
    trial.method.begin_epoch(context(trial))
    ranks = trial.method._chain_ranks(5, context(trial))
    assert sorted(ranks[0].tolist()) == [0, 1, 2] and (ranks == ranks[0]).all()
    again = trial.method._chain_ranks(5, context(trial))
    assert torch.equal(ranks, again)  # fixed within the epoch


@pytest.mark.parametrize("removal", ["sample", "all"])
def test_subset_ce_makes_the_total_the_mean_cross_entropy(removal):
    trial = build({"lam": 0.0, "subset_ce": True, "removal": removal}, dataset=THREE)
    model, (batch, out) = trial.model, first_batch(trial)
    extra = trial.method.extra_loss(out, batch, context(trial))
    total = F.cross_entropy(out.logits, batch.labels) + extra
    if removal == "all":
        subsets = [s for s in model.all_subsets() if s]
        expected = torch.stack([F.cross_entropy(model.subset_logits(out.features, [s])[0], batch.labels) for s in subsets]).mean()
        assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    else:  # full, then one and two modalities removed: three levels
        assert math.isfinite(total.item()) and extra.requires_grad


def test_regulariser_reaches_the_encoders():
    trial = build({"removal": "all", "lam": 1.0, "reduction": "mean"})
    batch, out = first_batch(trial)
    trial.method.extra_loss(out, batch, context(trial)).backward()
    grads = [p.grad for m in trial.modalities for p in trial.model.encoders[m].parameters()]
    assert all(g is None or torch.isfinite(g).all() for g in grads) and any(g is not None and g.abs().sum() > 0 for g in grads)


def test_short_trial_reports_finite_traces_two_and_three_modalities():
    for dataset, modalities in (({}, ["audio", "video"]), (THREE, THREE["modalities"])):
        metrics = build(dataset=dataset).step()
        for m in modalities:
            assert 0.0 <= metrics[f"trace/violation/{m}"] <= 1.0
            assert -1.0 <= metrics[f"trace/increment/{m}"] <= 1.0
        assert metrics["trace/penalty/all"] >= 0.0 and 0.0 <= metrics["trace/vrr/all"] <= 1.0
        assert all(math.isfinite(v) for v in metrics.values())


def test_window_is_respected():
    trial = build({"start_epoch": 2, "end_epoch": 2})
    assert ["trace/penalty/all" in trial.step() for _ in range(3)] == [False, True, False]


@pytest.mark.parametrize("params", [{}, {"removal": "epoch", "hinge": "batch", "subset_ce": True}])
def test_save_restore_continue_equals_uninterrupted(params):
    config = tiny_config("cml", params=params, dataset={"n_train": 128})
    check_restore_continues(config)


@pytest.mark.parametrize(("key", "value"), [
    ("lam", -0.1), ("removal", "random"), ("reduction", "max"), ("hinge", "pair"), ("mask", "trick"),
    ("subset_ce", "yes"), ("start_epoch", 0),
])
def test_bad_params_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"params.{key}"):
        parse_trial_config(tiny_config("cml", params={key: value}))
