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
