"""Linear probes (``train.probe``): the ridge classifier's closed form, its edge cases, the trial's keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config

from mmtune.engine.probe import fit_ridge_probe, probe_predict
from mmtune.engine.trial import Trial, parse_trial_config


def test_ridge_probe_matches_the_closed_form_by_numpy():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g)
    w, mean, std = fit_ridge_probe(x, y, 3, ridge=0.1)
    xs = (x.double().numpy() - x.double().numpy().mean(0)) / x.double().numpy().std(0)
    xs = np.hstack([xs, np.ones((40, 1))])
    penalty = np.diag([0.1 * 40] * 5 + [0.0])
    expected = np.linalg.solve(xs.T @ xs + penalty, xs.T @ np.eye(3)[y.numpy()])
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mean.numpy(), x.double().numpy().mean(0))


def test_ridge_probe_separates_separable_classes_and_keeps_the_bias_free():
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0]])
    y = torch.arange(90) % 3
    x = centres[y] + 0.3 * torch.randn(90, 2, generator=g)
    w, mean, std = fit_ridge_probe(x, y, 3)
    assert torch.equal(probe_predict(x, w, mean, std), y)
    # A huge penalty zeroes the feature weights; the unpenalised bias then predicts the majority class.
    y_skewed = torch.tensor([2] * 50 + [0] * 20 + [1] * 20)
    w, mean, std = fit_ridge_probe(x, y_skewed, 3, ridge=1e9)
    assert torch.all(probe_predict(x, w, mean, std) == 2)


def test_constant_features_do_not_break_the_probe():
    x = torch.cat([torch.randn(30, 3, generator=torch.Generator().manual_seed(2)), torch.zeros(30, 2)], dim=1)
    y = torch.arange(30) % 2
    w, mean, std = fit_ridge_probe(x, y, 2)
    assert torch.isfinite(w).all()
    assert torch.all(w[3:5] == 0)  # dead dimensions get no weight


def test_an_empty_training_set_is_refused_by_name():
    with pytest.raises(ValueError, match="no training samples"):
        fit_ridge_probe(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 2)


def test_trial_reports_probe_accuracies_only_when_asked_and_they_do_not_change_training():
    # preset v1: its video is linearly separable, so a 2-epoch probe is clearly above chance
    plain = Trial(parse_trial_config(tiny_config("joint", train={"epochs": 2}, dataset={"preset": "v1"})))
    probed = Trial(parse_trial_config(tiny_config("joint", train={"epochs": 2, "probe": True}, dataset={"preset": "v1"})))
    for _ in range(2):
        a, b = plain.step(), probed.step()
    assert not any("probe" in k for k in a)
    for m in probed.modalities:
        for prefix in ("val", "test"):
            assert 0.0 <= b[f"{prefix}_probe/{m}"] <= 1.0
    # The probe is fitted on the side: same seed, same training trajectory, same metrics.
    for key in ("train_loss", "val_acc", "test_acc", *(f"val_acc/{m}" for m in plain.modalities)):
        assert a[key] == b[key], key
    # On the synthetic default every modality carries class information: its probe beats chance.
    assert all(b[f"val_probe/{m}"] > 1.5 / probed.data.num_classes for m in probed.modalities)
