"""PMR: Eq. 6–13 by hand (2 and 3 modalities), prototypes from the training split only, PER stops
after E_r, the window, save → restore → continue."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import restore_into, tiny_config

from mmtune.engine.method import StepContext
from mmtune.engine.trial import TIMING_KEYS, Trial, parse_trial_config
from mmtune.errors import ConfigError
from mmtune.trainables.pmr import (
    class_feature_sums,
    class_prototypes,
    entropy_coefficients,
    momentum_prototypes,
    pce_coefficients,
    prototype_entropy,
    prototype_log_probs,
    prototype_scores,
    prototypical_cross_entropy,
    rebalance_loss,
    stack_features,
    subset_size,
)

THREE = {"modalities": ["audio", "video", "text"]}


# ----------------------------------------------------------------------------- pure functions

def test_subset_size():
    assert [subset_size(2000, f) for f in (0.01, 0.05, 0.1, 0.5, 1.0)] == [20, 100, 200, 1000, 2000]
    assert subset_size(256, 0.1) == 26 and subset_size(10, 0.01) == 1


def test_class_prototypes_two_modalities_with_an_absent_class():
    z = torch.tensor([[[1.0, 0], [3, 0], [0, 2], [0, 4]],
                      [[1.0, 1], [1, 1], [2, 2], [4, 4]]])  # (M=2, n=4, D=2)
    y = torch.tensor([0, 0, 1, 1])  # class 2 absent
    sums, counts = class_feature_sums(z, y, 3)
    assert counts.tolist() == [2, 2, 0]
    c = class_prototypes(sums, counts)
    # Eq. 6 centroids; the absent class gets the subset's mean feature (no previous prototype yet).
    assert c.tolist() == [[[2, 0], [0, 3], [1, 1.5]], [[1, 1], [3, 3], [2, 2]]]
    previous = torch.full((2, 3, 2), 7.0)
    assert class_prototypes(sums, counts, previous=previous)[:, 2].tolist() == [[7, 7], [7, 7]]  # keeps its old one
    assert class_prototypes(sums, counts, previous=previous)[:, :2].tolist() == c[:, :2].tolist()


def test_class_prototypes_three_modalities_over_chunks():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(3, 10, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    whole = class_prototypes(*class_feature_sums(z, y, 3))
    a, b = class_feature_sums(z[:, :6], y[:6], 3), class_feature_sums(z[:, 6:], y[6:], 3)
    chunked = class_prototypes(a[0] + b[0], a[1] + b[1])
    expected = torch.stack([torch.stack([z[m, y == k].mean(0) for k in range(3)]) for m in range(3)])
    assert torch.allclose(whole, expected, atol=1e-6) and torch.allclose(chunked, expected, atol=1e-6)


def test_momentum_prototypes_eq12():
    old, new = torch.tensor([4.0, 8.0]), torch.tensor([0.0, 4.0])
    assert momentum_prototypes(None, new, 0.5) is new  # the first computation has no old prototype
    assert momentum_prototypes(old, new, 0.0).tolist() == [0.0, 4.0]
    assert momentum_prototypes(old, new, 0.25).tolist() == [1.0, 5.0]  # ε weights the old one


def test_zero_padding_leaves_distances_unchanged():
    a, b = torch.randn(5, 2), torch.randn(5, 3)
    stacked = stack_features([a, b], 3)
    assert stacked.shape == (2, 5, 3) and stacked[0, :, 2].eq(0).all()
    ca, cb = torch.randn(4, 2), torch.randn(4, 3)
    lp = prototype_log_probs(stacked, stack_features([ca, cb], 3))
    assert torch.allclose(lp[0], torch.log_softmax(-torch.cdist(a, ca), -1), atol=1e-6)
    assert torch.allclose(lp[1], torch.log_softmax(-torch.cdist(b, cb), -1), atol=1e-6)


def test_prototype_log_probs_eq7_euclidean_not_squared():
    z = torch.tensor([[[0.0, 0.0]]])  # one modality, one sample
    c = torch.tensor([[[3.0, 4.0], [0.0, 0.0]]])  # distances 5 and 0
    p = prototype_log_probs(z, c).exp()[0, 0]
    assert p.tolist() == pytest.approx([math.exp(-5) / (1 + math.exp(-5)), 1 / (1 + math.exp(-5))])
    p2 = prototype_log_probs(z, c, distance="squared").exp()[0, 0]
    assert p2.tolist() == pytest.approx([math.exp(-25) / (1 + math.exp(-25)), 1 / (1 + math.exp(-25))])


def test_scores_pce_and_entropy_by_hand():
    p = torch.tensor([[[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]],
                      [[0.2, 0.4, 0.4], [0.1, 0.8, 0.1]],
                      [[1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1]]])  # (M=3, B=2, K=3)
    y = torch.tensor([0, 1])
    lp = p.log()
    assert prototype_scores(lp, y).tolist() == pytest.approx([0.95, 1.0, 1 / 3 + 0.3])  # Eq. 8's sums
    assert prototypical_cross_entropy(lp, y).tolist() == pytest.approx([
        -(math.log(0.7) + math.log(0.25)) / 2, -(math.log(0.2) + math.log(0.8)) / 2, -(math.log(1 / 3) + math.log(0.3)) / 2])

    def h(row):
        return -sum(q * math.log(q) for q in row)
    assert prototype_entropy(lp).tolist() == pytest.approx(
        [(h(p[m, 0].tolist()) + h(p[m, 1].tolist())) / 2 for m in range(3)], rel=1e-6)
    assert prototype_entropy(lp)[2].item() > prototype_entropy(lp)[0].item()  # the flatter modality


def eq11(rho):
    """Eq. 11 literally: (β on m0's PCE, γ on m1's PCE)."""
    if rho < 1:
        return min(max(1 / rho - 1, 0.0), 1.0), 0.0
    return 0.0, min(max(rho - 1, 0.0), 1.0)


@pytest.mark.parametrize("rho", [0.2, 0.5, 0.8, 1.0, 1.25, 1.6, 2.5, 4.0])
def test_two_modalities_reduce_to_eq11_and_eq13(rho):
    scores = torch.tensor([rho * 3.0, 3.0], dtype=torch.float64)  # ρ_t = s0 / s1
    beta, gamma = eq11(rho)
    assert pce_coefficients(scores).tolist() == pytest.approx([beta, gamma])  # Eq. 10: β·L0 + γ·L1
    assert entropy_coefficients(scores).tolist() == pytest.approx([gamma, beta])  # Eq. 13: γ·H0 + β·H1 (swapped)
    # The code: a hard switch α on the slower modality, 0 on the other, 0 for both on a tie.
    code = [float(rho < 1), float(rho > 1)]
    assert pce_coefficients(scores, "code").tolist() == code
    assert entropy_coefficients(scores, "code").tolist() == code[::-1]


def test_three_modality_coefficients_by_hand():
    s = torch.tensor([4.0, 3.0, 2.5])
    assert pce_coefficients(s).tolist() == pytest.approx([0.0, 4 / 3 - 1, 4 / 2.5 - 1])  # s_max/s − 1
    assert entropy_coefficients(s).tolist() == pytest.approx([4 / 2.5 - 1, 3 / 2.5 - 1, 0.0])  # s/s_min − 1
    assert pce_coefficients(torch.tensor([4.0, 2.0, 1.0])).tolist() == [0.0, 1.0, 1.0]  # clipped at 1
    assert entropy_coefficients(torch.tensor([4.0, 2.0, 1.0])).tolist() == [1.0, 1.0, 0.0]
    tie = torch.tensor([2.0, 2.0, 1.0])
    assert pce_coefficients(tie, "code").tolist() == [0.0, 0.0, 1.0]
    assert entropy_coefficients(tie, "code").tolist() == [1.0, 1.0, 0.0]
    assert pce_coefficients(torch.tensor([0.0, 1.0])).tolist() == [1.0, 0.0]  # an underflowed score saturates


def test_rebalance_loss_by_hand():
    pce, beta = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 0.5, 1.0])
    assert rebalance_loss(pce, beta, alpha=2.0).item() == pytest.approx(2 * (0.5 * 2 + 3))
    got = rebalance_loss(pce, beta, alpha=2.0, entropy=torch.tensor([1.0, 2.0, 4.0]), gamma=torch.tensor([0.5, 0.25, 0.0]), mu=0.1)
    assert got.item() == pytest.approx(8.0 - 0.1 * (0.5 + 0.5))  # minus: PER maximises the entropy


def test_pce_gradient_reaches_features_not_prototypes_and_is_finite_at_zero_distance():
    z = torch.tensor([[[1.0, 2.0], [0.0, 0.0]]], requires_grad=True)
    c = torch.tensor([[[1.0, 2.0], [3.0, 3.0]]])  # sample 0 sits on its prototype
    loss = prototypical_cross_entropy(prototype_log_probs(z, c), torch.tensor([0, 1])).sum()
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- the method in a trial

def build(params=None, **sections):
    return Trial(parse_trial_config(tiny_config("pmr", params=params or {}, **sections)))


def context(trial, epoch=1):
    return StepContext(epoch=epoch, step=0, global_step=0, modulating=True, generator=trial.method_generator,
                       device=trial.device, model=trial.model, optimizer=trial.optimizer, train=trial.data.train,
                       batch_size=trial.spec.train.batch_size)


def test_short_trial_reports_finite_traces_two_and_three_modalities():
    for dataset, modalities in (({}, ["audio", "video"]), (THREE, THREE["modalities"])):
        metrics = build(dataset=dataset).step()
        for quantity in ("beta", "rho", "pce", "entropy_weight"):
            for m in modalities:
                value = metrics[f"trace/{quantity}/{m}"]
                assert math.isfinite(value)
                if quantity in ("beta", "entropy_weight"):
                    assert 0.0 <= value <= 1.0
        assert math.isfinite(metrics["train_loss"])


def eval_class_means(trial, index):
    model, split = trial.model, trial.data.train
    model.eval()
    with torch.no_grad():
        feats = model.encode({m: x[index] for m, x in split.inputs.items()})
    model.train()
    y = split.labels[index]
    return torch.stack([torch.stack([feats[m][y == k].mean(0) for k in range(trial.data.num_classes)])
                        for m in trial.modalities])


def test_prototypes_are_eval_mode_class_means_of_the_training_split_only():
    trial = build({"proto_fraction": 1.0})
    for split in (trial.data.val, trial.data.test):  # anything read from val/test would poison the prototypes
        for x in split.inputs.values():
            x.fill_(float("nan"))
    modes = []
    hook = trial.model.encoders["audio"].register_forward_hook(lambda module, *_: modes.append(module.training))
    trial.method.begin_epoch(context(trial))
    hook.remove()
    assert modes and not any(modes) and trial.model.training  # eval mode for the pass, train mode restored
    expected = eval_class_means(trial, torch.arange(len(trial.data.train)))
    assert torch.allclose(trial.method.prototypes, expected, atol=1e-5)
    assert not trial.method.prototypes.requires_grad


def test_subset_is_drawn_from_the_method_generator():
    trial = build({"proto_fraction": 0.5})
    replay = torch.Generator(trial.device).set_state(trial.method_generator.get_state())
    n = len(trial.data.train)
    index = torch.randperm(n, generator=replay)[: subset_size(n, 0.5)]
    trial.method.begin_epoch(context(trial))
    assert torch.allclose(trial.method.prototypes, eval_class_means(trial, index), atol=1e-5)


def test_extra_loss_by_hand_and_entropy_stops_after_entropy_epochs():
    trial = build({"alpha": 2.0, "mu": 0.1, "entropy_epochs": 1})
    method = trial.method
    method.begin_epoch(context(trial))
    batch = next(trial.data.train.batches(64, generator=torch.Generator().manual_seed(0)))
    out = trial.model(batch.inputs)
    lp = prototype_log_probs(stack_features([out.features[m] for m in trial.modalities], method.prototypes.shape[-1]),
                             method.prototypes)
    pce, s = prototypical_cross_entropy(lp, batch.labels), prototype_scores(lp, batch.labels).detach()
    acc = 2.0 * (pce_coefficients(s) * pce).sum()  # Eq. 10
    per = 0.1 * (entropy_coefficients(s) * prototype_entropy(lp)).sum()  # Eq. 13
    assert per.item() > 0
    assert method.extra_loss(out, batch, context(trial, epoch=1)).item() == pytest.approx((acc - per).item(), rel=1e-6)
    assert method.extra_loss(out, batch, context(trial, epoch=2)).item() == pytest.approx(acc.item(), rel=1e-6)


def test_entropy_trace_only_in_the_first_entropy_epochs():
    trial = build({"entropy_epochs": 1})
    assert ["trace/entropy_weight/audio" in trial.step() for _ in range(2)] == [True, False]
    trial = build({"entropy": False})
    assert "trace/entropy_weight/audio" not in trial.step()


def test_window_is_respected_and_prototypes_wait_for_it():
    trial = build({"start_epoch": 2})
    first = trial.step()
    assert "trace/beta/audio" not in first and trial.method.prototypes is None
    assert "trace/beta/audio" in trial.step() and trial.method.prototypes is not None


def test_save_restore_continue_equals_uninterrupted():
    params = {"proto_momentum": 0.5, "proto_fraction": 0.5, "coeff": "code"}  # restored prototypes feed Eq. 12
    config = tiny_config("pmr", params=params)
    uninterrupted = Trial(parse_trial_config(config))
    expected = [uninterrupted.step() for _ in range(3)]
    trial = Trial(parse_trial_config(config))
    trial.step()
    restored = restore_into(trial, Trial(parse_trial_config(config)))
    assert torch.equal(restored.method.prototypes, trial.method.prototypes)
    continued = [restored.step(), restored.step()]

    def strip(m):
        return {k: v for k, v in m.items() if k not in TIMING_KEYS}
    assert [strip(m) for m in continued] == [strip(m) for m in expected[1:]]
    assert torch.equal(restored.method.prototypes, uninterrupted.method.prototypes)


@pytest.mark.parametrize(("key", "value"), [
    ("proto_fraction", 0.0), ("proto_fraction", 1.5), ("proto_momentum", 1.0), ("distance", "cosine"),
    ("coeff", "ramp"), ("alpha", -1.0), ("mu", -0.1), ("entropy_epochs", -1),
])
def test_bad_params_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"params.{key}"):
        parse_trial_config(tiny_config("pmr", params={key: value}))
