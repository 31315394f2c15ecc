"""The Bayes-optimal accuracy of the synthetic generative model (mmtune.data.synthetic.bayes_accuracy)."""

from __future__ import annotations

import pytest

from mmtune.data import build_dataset, dataset_config


def test_bayes_accuracy_matches_the_closed_form_for_two_point_classes():
    """clusters=1, two classes: the optimal rule is the nearest code, accuracy Φ(s·‖c0 − c1‖ / (2σ))."""
    import math

    from mmtune.data.synthetic import _latent_model, bayes_accuracy

    cfg = dataset_config({"name": "synthetic", "num_classes": 2, "clusters": 1, "latent_dim": 4, "dim": 8,
                          "noise": 1.3, "signal": 1.0, "dominance": 2.0})
    centers, signals = _latent_model(cfg)
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    got = bayes_accuracy(cfg, samples=400_000)
    for m in cfg.modalities:
        gap = signals[m] * (centers[m][0, 0] - centers[m][1, 0]).norm().item()
        assert got[m] == pytest.approx(phi(gap / (2 * cfg.noise)), abs=0.004)  # 5 standard errors
    # Independent evidence: the joint rule adds the two log-likelihood ratios; distances add in quadrature.
    gaps = [signals[m] * (centers[m][0, 0] - centers[m][1, 0]).norm().item() for m in cfg.modalities]
    assert got["joint"] == pytest.approx(phi(math.hypot(*gaps) / (2 * cfg.noise)), abs=0.004)


def test_bayes_accuracy_is_what_the_optimal_rule_scores_on_the_drawn_data():
    """The posterior computed from the model, applied to the dataset's own test split (projected onto the
    decoders' rows), scores the Monte-Carlo Bayes accuracy within sampling error."""
    import torch

    from mmtune.data.synthetic import _decoder, bayes_accuracy

    cfg = dataset_config({"name": "synthetic", "n_train": 16, "n_val": 16, "n_test": 6000})
    data = build_dataset(cfg, "cpu")
    g = torch.Generator().manual_seed(cfg.seed)
    joint = 0
    for m in cfg.modalities:  # replay make_synthetic's draws of the model
        c = torch.randn(cfg.num_classes, cfg.clusters, cfg.latent_dim, generator=g)
        c = c / c.norm(dim=-1, keepdim=True)
        if m in cfg.antipodal_modalities:  # the default's weak modality: ± cluster pairs
            c[:, 1::2] = -c[:, 0::2]
        codes = c.double() * data.info["signals"][m]
        z = data.test.inputs[m].reshape(cfg.n_test, -1).double() @ _decoder(cfg, m, g).double().T
        dots = torch.einsum("nd,ckd->nck", z, codes)
        joint = joint + torch.logsumexp((2 * dots - codes.square().sum(-1)) / (2 * cfg.noise**2), dim=-1)
    measured = (joint.argmax(1) == data.test.labels).double().mean().item()
    expected = bayes_accuracy(cfg)["joint"]
    assert measured == pytest.approx(expected, abs=4 * (expected * (1 - expected) / cfg.n_test) ** 0.5)


def test_joint_bayes_accuracy_is_at_least_each_modalitys():
    from mmtune.data.synthetic import bayes_accuracy

    got = bayes_accuracy(dataset_config({"name": "synthetic", "modalities": ["a", "b", "c"], "dominant": "b"}), samples=50_000)
    assert got["joint"] >= max(got["a"], got["b"], got["c"]) and got["b"] > got["a"]
