"""The synthetic dataset: determinism, split sizes and disjointness, shapes, the dominance knob, validation."""

from __future__ import annotations

import pytest
import math

import torch

import torch.nn.functional as F

from mmtune.data.synthetic import SyntheticConfig, make_synthetic
from mmtune.errors import ConfigError

SPLITS = ("train", "val", "test")
SMALL = dict(n_train=60, n_val=30, n_test=25, num_classes=4, dim=24, latent_dim=8)


def test_same_config_is_bit_identical() -> None:
    cfg = SyntheticConfig(**SMALL)
    a, b = make_synthetic(cfg), make_synthetic(cfg)
    for name in SPLITS:
        sa, sb = a.split(name), b.split(name)
        assert torch.equal(sa.labels, sb.labels)
        assert set(sa.inputs) == set(sb.inputs) == {"audio", "video"}
        for m in sa.inputs:
            assert torch.equal(sa.inputs[m], sb.inputs[m])


def test_same_config_shaped_is_bit_identical() -> None:
    cfg = SyntheticConfig(**SMALL, shape="shaped", image_size=8)
    a, b = make_synthetic(cfg), make_synthetic(cfg)
    for name in SPLITS:
        for m in ("audio", "video"):
            assert torch.equal(a.split(name).inputs[m], b.split(name).inputs[m])


def test_different_seed_gives_different_data() -> None:
    a = make_synthetic(SyntheticConfig(**SMALL, seed=0))
    b = make_synthetic(SyntheticConfig(**SMALL, seed=1))
    for name in SPLITS:
        for m in ("audio", "video"):
            assert not torch.allclose(a.split(name).inputs[m], b.split(name).inputs[m])


def test_split_sizes_labels_and_balance() -> None:
    cfg = SyntheticConfig(**SMALL)
    data = make_synthetic(cfg)
    assert data.num_classes == 4
    assert data.modalities == ["audio", "video"]
    assert data.input_shapes == {"audio": (24,), "video": (24,)}
    for name, n in zip(SPLITS, (cfg.n_train, cfg.n_val, cfg.n_test)):
        split = data.split(name)
        assert len(split) == n
        assert split.labels.shape == (n,) and split.labels.dtype == torch.long
        assert int(split.labels.min()) >= 0 and int(split.labels.max()) < cfg.num_classes
        counts = torch.bincount(split.labels, minlength=cfg.num_classes)
        assert int(counts.max() - counts.min()) <= 1, f"{name}: unbalanced classes {counts.tolist()}"
        for m in cfg.modalities:
            assert split.inputs[m].shape == (n, cfg.dim)
            assert split.inputs[m].dtype == torch.float32
            assert torch.isfinite(split.inputs[m]).all()
        # labels are shuffled, not sorted 0,1,2,3,0,1,...
        assert not torch.equal(split.labels, torch.arange(n) % cfg.num_classes)


def test_splits_are_disjoint() -> None:
    data = make_synthetic(SyntheticConfig(**SMALL))
    for m in ("audio", "video"):
        rows = {name: {tuple(r.tolist()) for r in data.split(name).inputs[m]} for name in SPLITS}
        for name in SPLITS:
            assert len(rows[name]) == len(data.split(name)), f"duplicate rows inside {name}"
        assert not rows["train"] & rows["val"]
        assert not rows["train"] & rows["test"]
        assert not rows["val"] & rows["test"]


def test_shaped_default_shapes() -> None:
    cfg = SyntheticConfig(shape="shaped", n_train=6, n_val=4, n_test=3)
    data = make_synthetic(cfg)
    assert data.input_shapes == {"audio": (1, 32, 32), "video": (3, 32, 32)}
    for name, n in zip(SPLITS, (6, 4, 3)):
        assert data.split(name).inputs["audio"].shape == (n, 1, 32, 32)
        assert data.split(name).inputs["video"].shape == (n, 3, 32, 32)


def test_three_modalities_shaped() -> None:
    cfg = SyntheticConfig(modalities=("audio", "video", "text"), shape="shaped", image_size=16, latent_dim=8,
                          n_train=12, n_val=6, n_test=6)
    data = make_synthetic(cfg)
    assert data.modalities == ["audio", "video", "text"]
    assert data.input_shapes == {"audio": (1, 16, 16), "video": (3, 16, 16), "text": (3, 16, 16)}
    assert data.info["dominant"] == "audio"
    signals = data.info["signals"]
    assert signals["audio"] == pytest.approx(cfg.signal * cfg.dominance)
    assert signals["video"] == signals["text"] == pytest.approx(cfg.signal)
    for name in SPLITS:
        assert set(data.split(name).inputs) == {"audio", "video", "text"}


def _smooth_basis(channels: int, size: int, latent_dim: int = 16) -> torch.Tensor:
    """Orthonormal basis (D, k) of bilinearly upsampled coarse images, per channel; the coarse side is
    large enough to hold latent_dim smooth directions (as the generator chooses it)."""
    c = min(size, max(2, size // 4, math.ceil(math.sqrt(latent_dim / channels))))
    up = F.interpolate(torch.eye(c * c, dtype=torch.float64).reshape(c * c, 1, c, c), size=(size, size),
                       mode="bilinear", align_corners=False).reshape(c * c, size * size)
    per_channel = torch.block_diag(*([up] * channels))  # (channels*c*c, channels*size*size)
    q, _ = torch.linalg.qr(per_channel.T)
    return q


@pytest.mark.parametrize(
    "image_size",
    [
        32,
        16,
        8,
    ],
)
def test_shaped_inputs_are_smooth_patterns(image_size: int) -> None:
    """shape=shaped: x = z @ decode + noise with decode made of smooth patterns, so with tiny noise
    every input lies in the span of low-pass (upsampled coarse) images."""
    cfg = SyntheticConfig(shape="shaped", image_size=image_size, noise=1e-6, n_train=40, n_val=2, n_test=2)
    data = make_synthetic(cfg)
    for m in cfg.modalities:
        x = data.train.inputs[m].flatten(1).double()
        q = _smooth_basis(data.input_shapes[m][0], image_size)
        residual = x - (x @ q) @ q.T
        rel = float(residual.norm() / x.norm())
        assert rel < 1e-3, f"{m}: {rel:.3g} of the input energy is not smooth"


def test_shaped_latent_dim_too_large_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        cfg = SyntheticConfig(shape="shaped", image_size=8, latent_dim=65, n_train=2, n_val=2, n_test=2)
        make_synthetic(cfg)
    assert "latent_dim" in str(err.value)


def _ncm_val_accuracy(data, modality: str) -> float:
    """Nearest-class-mean classifier fitted on train, scored on val (one modality)."""
    x = data.train.inputs[modality].flatten(1).double()
    y = data.train.labels
    means = torch.stack([x[y == c].mean(0) for c in range(data.num_classes)])
    xv = data.val.inputs[modality].flatten(1).double()
    pred = torch.cdist(xv, means).argmin(1)
    return float((pred == data.val.labels).double().mean())


def _dominance_data(dominance: float):
    cfg = SyntheticConfig(n_train=600, n_val=600, n_test=1, num_classes=4, dim=32, latent_dim=8, clusters=1,
                          signal=1.0, noise=1.0, dominance=dominance, dominant="video", seed=3)
    return make_synthetic(cfg)


def test_dominance_controls_per_modality_signal() -> None:
    strong = _dominance_data(3.0)
    acc_dom, acc_weak = _ncm_val_accuracy(strong, "video"), _ncm_val_accuracy(strong, "audio")
    assert acc_weak > 1 / 4 + 0.1, "the weak modality should still carry some signal"
    assert acc_dom > acc_weak + 0.2, (acc_dom, acc_weak)
    balanced = _dominance_data(1.0)
    acc_v, acc_a = _ncm_val_accuracy(balanced, "video"), _ncm_val_accuracy(balanced, "audio")
    assert abs(acc_v - acc_a) < 0.1, (acc_v, acc_a)
    assert acc_v > 1 / 4 + 0.1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"modalities": ("audio",)}, "modalities"),
        ({"dominant": "text"}, "dominant"),
        ({"dominance": 0}, "dominance"),
        ({"dominance": 0.0}, "dominance"),
        ({"noise": -1}, "noise"),
        ({"noise": 0.0}, "noise"),
        ({"modalities": ("audio", "audio")}, "modalities"),
        ({"shape": "flat", "latent_dim": 100, "dim": 10}, "latent_dim"),
    ],
)
def test_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        SyntheticConfig(**kwargs)
    assert field in str(err.value)
    assert any(p.path == field for p in err.value.problems)


def test_select_keeps_only_video() -> None:
    data = make_synthetic(SyntheticConfig(**SMALL))
    only = data.select(["video"])
    assert only.modalities == ["video"]
    assert only.input_shapes == {"video": (24,)}
    assert only.num_classes == data.num_classes
    for name in SPLITS:
        split = only.split(name)
        assert list(split.inputs) == ["video"]
        assert torch.equal(split.inputs["video"], data.split(name).inputs["video"])
        assert torch.equal(split.labels, data.split(name).labels)
    # the original is untouched
    assert set(data.train.inputs) == {"audio", "video"}


# ----------------------------------------------------------------------------- presets (issue 20)

from mmtune.config import from_dict, to_dict  # noqa: E402
from mmtune.data import dataset_config  # noqa: E402
from mmtune.data.synthetic import PRESETS, V1, _decoder, _latent_model, bayes_accuracy  # noqa: E402


def _v1_splits(cfg: SyntheticConfig) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """The generator as it was when issue 20 was filed, verbatim: the reference for bit-identity."""
    g = torch.Generator().manual_seed(cfg.seed)
    centers, decoders, signals = {}, {}, {}
    for m in cfg.modalities:
        c = torch.randn(cfg.num_classes, cfg.clusters, cfg.latent_dim, generator=g)
        centers[m] = c / c.norm(dim=-1, keepdim=True)
        decoders[m] = _decoder(cfg, m, g)
        signals[m] = cfg.signal * (cfg.dominance if m == cfg.dominant else 1.0)
    out = []
    for n in (cfg.n_train, cfg.n_val, cfg.n_test):
        labels = torch.arange(n) % cfg.num_classes
        labels = labels[torch.randperm(n, generator=g)]
        inputs = {}
        for m in cfg.modalities:
            k = torch.randint(cfg.clusters, (n,), generator=g)
            x = (signals[m] * centers[m][labels, k]) @ decoders[m]
            x = x + cfg.noise * torch.randn(x.shape, generator=g)
            inputs[m] = x.reshape(n, *cfg.input_shape(m))
        out.append((labels, inputs))
    return out


@pytest.mark.parametrize("extra", [{}, {"shape": "shaped", "image_size": 8}, {"modalities": ("audio", "video", "text"), "seed": 5}])
def test_new_fields_off_draw_v1_bit_for_bit(extra: dict) -> None:
    cfg = SyntheticConfig(**SMALL, **extra, antipodal=())  # the default's ± pairs off: v1's generator
    data = make_synthetic(cfg)
    for name, (labels, inputs) in zip(SPLITS, _v1_splits(cfg)):
        split = data.split(name)
        assert torch.equal(split.labels, labels)
        for m in cfg.modalities:
            assert torch.equal(split.inputs[m], inputs[m]), (name, m)


def test_the_default_is_antipodal_3k_bit_for_bit_and_v1_the_old_default() -> None:
    """Since issue 20 the plain defaults are antipodal-3k's; v1 keeps the defaults before it (its published
    numbers: tests/golden pins them, every synthetic golden variant runs on preset v1)."""
    new = dataset_config({"preset": "antipodal-3k"})
    plain = SyntheticConfig()
    assert {k: v for k, v in to_dict(new).items() if k != "preset"} == {k: v for k, v in to_dict(plain).items() if k != "preset"} | {"antipodal": ["video"]}
    assert plain.antipodal is None and plain.antipodal_modalities == ("video",)
    a, b = make_synthetic(new), make_synthetic(plain)
    for name in SPLITS:
        assert torch.equal(a.split(name).labels, b.split(name).labels)
        for m in plain.modalities:
            assert torch.equal(a.split(name).inputs[m], b.split(name).inputs[m])
    v1 = dataset_config({"preset": "v1"})
    assert (v1.n_train, v1.signal, v1.dominance, v1.antipodal_modalities) == (2000, 2.0, 1.5, ())


def test_null_antipodal_skips_odd_cluster_counts_and_names_the_rest() -> None:
    assert SyntheticConfig(clusters=1).antipodal_modalities == ()
    three = dataset_config({"modalities": ["audio", "video", "text"], "modality_clusters": {"text": 3}})
    assert three.antipodal_modalities == ("video",)
    with pytest.raises(ConfigError, match="antipodal"):
        dataset_config({"clusters": 3, "antipodal": ["video"]})


def test_v1_lists_every_generator_field() -> None:
    """A preset fills every field but name, preset and seed, so no preset depends on the defaults."""
    fields = set(to_dict(SyntheticConfig())) - {"name", "preset", "seed"}
    assert set(V1) == fields
    assert all(set(p.changes) <= fields for p in PRESETS.values())


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_fills_its_values(name: str) -> None:
    cfg = dataset_config({"preset": name})
    assert cfg.preset == name
    expected = from_dict(SyntheticConfig, {**PRESETS[name].values, "preset": name})
    assert cfg == expected
    for key, value in PRESETS[name].changes.items():
        assert to_dict(cfg)[key] == value
    # What a trial stores (every field written out) parses back to the same record.
    assert dataset_config(to_dict(cfg)) == cfg
    assert SyntheticConfig.from_preset(name) == cfg


def test_explicit_keys_win_over_the_preset() -> None:
    cfg = dataset_config({"preset": "antipodal-3k", "n_train": 2000, "signal": 1.0, "seed": 4})
    assert (cfg.n_train, cfg.signal, cfg.seed) == (2000, 1.0, 4)  # 2000 is the plain default: still given
    assert cfg.antipodal == ("video",) and cfg.dominance == 1.2  # the rest from the preset
    assert SyntheticConfig.from_preset("antipodal-3k", n_train=64).n_train == 64


def test_preset_reaches_the_trial_config() -> None:
    from mmtune.engine.trial import parse_trial_config

    spec = parse_trial_config({"method": "joint", "dataset": {"preset": "antipodal", "n_test": 40}})
    assert spec.dataset.antipodal == ("video",) and spec.dataset.n_test == 40
    assert parse_trial_config(spec.to_config()).dataset == spec.dataset


def test_unknown_preset_and_unapplied_preset_are_config_errors() -> None:
    with pytest.raises(ConfigError) as err:
        dataset_config({"preset": "antipodl"})
    assert err.value.problems[0].path == "dataset.preset" and "Did you mean 'antipodal'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        SyntheticConfig(preset="antipodal")  # the dataclass cannot apply it; refused instead of ignored
    assert "from_preset" in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"modality_noise": {"text": 0.5}}, "modality_noise"),
        ({"modality_noise": {"audio": 0.0}}, "modality_noise.audio"),
        ({"modality_clusters": {"video": 0}}, "modality_clusters.video"),
        ({"class_codes": {"audio": 7}}, "class_codes.audio"),
        ({"antipodal": ("video",), "clusters": 3}, "antipodal"),
        ({"antipodal": ("video",), "modality_clusters": {"video": 1}}, "antipodal"),
        ({"antipodal": ("text",)}, "antipodal"),
    ],
)
def test_mechanism_validation(kwargs: dict, path: str) -> None:
    with pytest.raises(ConfigError) as err:
        SyntheticConfig(**kwargs)
    assert any(p.path == path for p in err.value.problems), err.value.problems


def test_mechanisms_shape_the_latent_codes() -> None:
    cfg = SyntheticConfig(**SMALL, antipodal=("video",), modality_clusters={"video": 4, "audio": 3},
                          class_codes={"audio": 2}, modality_noise={"audio": 0.25}, modality_signal={"video": 0.5})
    centers, signals = _latent_model(cfg)
    assert centers["audio"].shape == (4, 3, 8) and centers["video"].shape == (4, 4, 8)
    assert torch.equal(centers["video"][:, 1::2], -centers["video"][:, 0::2])  # ± pairs
    assert torch.allclose(centers["video"].mean(1), torch.zeros(4, 8), atol=1e-7)  # every class mean is zero
    assert torch.equal(centers["audio"][0], centers["audio"][2]) and torch.equal(centers["audio"][1], centers["audio"][3])
    assert not torch.equal(centers["audio"][0], centers["audio"][1])
    assert signals == {"audio": cfg.signal * cfg.dominance, "video": 0.5}
    noisy = SyntheticConfig(**{**SMALL, "n_train": 4000}, modality_noise={"audio": 0.25})
    data = make_synthetic(noisy)
    for m, sigma in (("audio", 0.25), ("video", 1.0)):  # off the code's span x is noise of the modality's std
        x = data.train.inputs[m].double()
        q = _decoder(noisy, m, _replay_to(noisy, m)).double()
        off = x - (x @ q.T) @ q
        assert float(off.square().sum(1).mean() / (noisy.dim - noisy.latent_dim)) == pytest.approx(sigma**2, rel=0.05)


def _replay_to(cfg: SyntheticConfig, modality: str) -> torch.Generator:
    """A generator advanced to where make_synthetic draws ``modality``'s decoder."""
    from mmtune.data.synthetic import _class_codes

    g = torch.Generator().manual_seed(cfg.seed)
    for m in cfg.modalities:
        _class_codes(cfg, m, g)
        if m == modality:
            return g
        _decoder(cfg, m, g)
    raise AssertionError(modality)


# ----------------------------------------------------------------------------- Bayes limits of the mechanisms


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_bayes_closed_form_with_per_modality_noise_and_signal() -> None:
    """Two single-cluster classes per modality: accuracy Φ(s_m·‖c0 − c1‖ / 2σ_m); the joint rule adds the
    log-likelihood ratios, so the normalised distances add in quadrature."""
    cfg = SyntheticConfig(num_classes=2, clusters=1, latent_dim=4, dim=8, modality_noise={"audio": 0.6, "video": 1.7},
                          modality_signal={"video": 1.5}, signal=1.0)
    centers, signals = _latent_model(cfg)
    got = bayes_accuracy(cfg, samples=100_000)
    d = {m: signals[m] * float((centers[m][0, 0] - centers[m][1, 0]).norm()) / cfg.noise_of(m) for m in cfg.modalities}
    for m in cfg.modalities:
        assert got[m] == pytest.approx(_phi(d[m] / 2), abs=0.006)  # 4 standard errors at 100 000 draws
    assert got["joint"] == pytest.approx(_phi(math.hypot(*d.values()) / 2), abs=0.006)


def test_bayes_of_shared_class_codes_is_codes_over_classes() -> None:
    """With (almost) no noise a modality with G codes for C classes tells G groups apart and nothing
    inside them: accuracy G/C (ties to the lowest class index); the other modality resolves the rest."""
    cfg = SyntheticConfig(num_classes=6, class_codes={"audio": 2}, noise=1e-3, signal=1.0)
    got = bayes_accuracy(cfg, samples=30_000)
    assert got["audio"] == pytest.approx(2 / 6, abs=0.011)  # 4 standard errors
    assert got["video"] == pytest.approx(1.0, abs=1e-3) and got["joint"] == pytest.approx(1.0, abs=1e-3)


def test_bayes_of_antipodal_clusters_limits() -> None:
    """Antipodal codes: class means are zero, yet the clusters are distinct, so the Bayes rule is
    perfect without noise, and at chance with overwhelming noise."""
    quiet = bayes_accuracy(SyntheticConfig(antipodal=("video",), noise=1e-3), samples=10_000)
    assert quiet["video"] == pytest.approx(1.0, abs=1e-3)
    loud = bayes_accuracy(SyntheticConfig(antipodal=("video",), noise=1e3), samples=30_000)
    assert loud["video"] == pytest.approx(1 / 6, abs=0.009)  # 4 standard errors


def test_bayes_matches_the_optimal_rule_on_drawn_data_for_every_mechanism() -> None:
    """The posterior from the model, applied to a drawn test split projected on the decoders, scores the
    Monte-Carlo Bayes accuracy within sampling error: generator and Bayes read the same model."""
    from mmtune.data.synthetic import _log_likelihood, _model

    cfg = SyntheticConfig(n_train=8, n_val=8, n_test=4000, antipodal=("video",), class_codes={"audio": 4},
                          modality_clusters={"audio": 3}, modality_noise={"audio": 1.4}, signal=2.5)
    data = make_synthetic(cfg)
    model = _model(cfg, torch.Generator().manual_seed(cfg.seed))
    joint = 0
    for m in cfg.modalities:
        z = data.test.inputs[m].double() @ model.decoders[m].double().T
        joint = joint + _log_likelihood(z, model.signals[m] * model.centers[m].double(), model.noises[m])
    measured = float((joint.argmax(1) == data.test.labels).double().mean())
    expected = bayes_accuracy(cfg, samples=40_000)["joint"]
    assert measured == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / cfg.n_test) + 0.003)


@pytest.mark.parametrize("name", list(PRESETS))
def test_joint_bayes_is_at_least_each_modality(name: str) -> None:
    cfg = dataset_config({"preset": name})
    got = bayes_accuracy(cfg, samples=20_000)
    assert got["joint"] >= max(got[m] for m in cfg.modalities) - 0.005  # the same draws: MC noise only
    assert all(1 / cfg.num_classes - 0.02 < got[m] <= 1.0 for m in cfg.modalities)
