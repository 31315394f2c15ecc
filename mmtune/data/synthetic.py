"""Synthetic multimodal classification with controllable modality imbalance (the default dataset).

Generative model. Every modality m sees the same label y through its own, independent evidence:

    z^m = s_m · c^m_{y,k} ,   k ~ Uniform{1..clusters}          (latent class code, latent_dim)
    x^m = decode_m(z^m) + noise · ε,   ε ~ N(0, I)               (observed input)

``c^m_{y,k}`` are random unit vectors (``clusters`` of them per class, so with clusters > 1 no
class is a single blob and the encoder must learn non-linear features). ``decode_m`` is a fixed
random isometry into the input space: an orthonormal projection into R^dim for ``shape: flat``, or a
set of orthonormalised smooth random patterns for ``shape: shaped`` (spectrogram-like 1×F×T for the
first modality, frame-like C×H×W for the others), so CNN encoders see the same phenomenon.

``s_m`` is the class signal: ``signal`` for every modality except the dominant one, which gets
``signal · dominance``. A dominant modality therefore is more discriminative *and* is learnt faster;
under joint training it drives the training loss down alone and starves the others, which is the
imbalance the balancing methods fix. ``dominance = 1`` gives balanced modalities. The README and
``bench/imbalance.py`` show the measured effect: the weak modality's accuracy inside the jointly
trained model is clearly below that of the same encoder trained on it alone.

Everything is drawn from ``torch.Generator(seed)``: the same config gives bit-identical tensors.
The dataset seed is separate from the trial seed, as with a real benchmark: seeds vary the training
(initialisation, shuffling), not the data. Train / val / test are disjoint draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mmtune.config import Record, hp
from mmtune.data.base import MultimodalData, TensorSplit
from mmtune.errors import Problem

__all__ = ["SyntheticConfig", "make_synthetic"]


@dataclass(frozen=True)
class SyntheticConfig(Record):
    name: str = hp("synthetic", doc="dataset name")
    modalities: tuple[str, ...] = hp(("audio", "video"), doc="modality names (two or more)")
    dominant: str = hp("audio", doc="the modality that carries `dominance` times more class signal")
    num_classes: int = hp(6, low=2, doc="number of classes (CREMA-D has 6)")
    dim: int = hp(64, low=1, doc="input dimension per modality (shape: flat)")
    latent_dim: int = hp(16, low=1, doc="dimension of the class code behind each modality")
    clusters: int = hp(2, low=1, doc="clusters per class in each modality's latent space")
    dominance: float = hp(1.5, low=0.0, low_open=True, doc="signal of the dominant modality / signal of the others")
    signal: float = hp(2.0, low=0.0, doc="class signal (cluster radius) of the non-dominant modalities")
    noise: float = hp(1.0, low=0.0, low_open=True, doc="std of the isotropic input noise")
    n_train: int = hp(2000, low=1, doc="training samples")
    n_val: int = hp(500, low=1, doc="validation samples (model selection)")
    n_test: int = hp(500, low=1, doc="test samples (reported, never selects)")
    shape: str = hp("flat", choices=("flat", "shaped"), doc="flat vectors, or spectrogram-/frame-like images")
    image_size: int = hp(32, low=8, doc="F = T = H = W of shaped inputs")
    channels: int = hp(3, low=1, doc="channels of frame-like (video) inputs when shaped")
    seed: int = hp(0, low=0, doc="data seed (trial seeds vary training, not the data)")

    def extra_checks(self) -> list[Problem]:
        problems = []
        if len(self.modalities) < 2:
            problems.append(Problem("modalities", f"need two or more modalities, got {list(self.modalities)}."))
        if len(set(self.modalities)) != len(self.modalities):
            problems.append(Problem("modalities", f"names must be unique, got {list(self.modalities)}."))
        if self.dominant not in self.modalities:
            problems.append(
                Problem("dominant", f"'{self.dominant}' is not one of the modalities {list(self.modalities)}.")
            )
        if not problems:
            smallest = min(math.prod(self.input_shape(m)) for m in self.modalities)
            if self.latent_dim > smallest:
                what = "dim" if self.shape == "flat" else "the smallest shaped input (channels × image_size²)"
                problems.append(Problem("latent_dim", f"must be <= {what} = {smallest}, got {self.latent_dim}."))
        return problems

    def input_shape(self, modality: str) -> tuple[int, ...]:
        if self.shape == "flat":
            return (self.dim,)
        if modality == self.modalities[0]:
            return (1, self.image_size, self.image_size)  # spectrogram-like: 1 × F × T
        return (self.channels, self.image_size, self.image_size)  # frame-like: C × H × W


def _smooth_patterns(count: int, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """``count`` smooth random images of ``shape`` (low-pass filtered noise), as (count, prod(shape))."""
    c, h, w = shape
    # The coarse grid must have at least `count` degrees of freedom, or the orthonormalisation that
    # follows would fill the missing directions with rounding noise instead of smooth patterns.
    side = max(2, h // 4, math.ceil(math.sqrt(count / c)))
    coarse = torch.randn(count, c, min(side, h), min(side, w), generator=generator)
    fine = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return fine.reshape(count, c * h * w)


def _decoder(cfg: SyntheticConfig, modality: str, generator: torch.Generator) -> Tensor:
    """A (latent_dim, D) matrix with orthonormal rows: the fixed isometry decode_m."""
    shape = cfg.input_shape(modality)
    flat_dim = math.prod(shape)
    if cfg.latent_dim > flat_dim:
        raise ValueError(f"latent_dim {cfg.latent_dim} exceeds the input size {flat_dim} of '{modality}'")
    if cfg.shape == "flat":
        basis = torch.randn(flat_dim, cfg.latent_dim, generator=generator)
    else:
        basis = _smooth_patterns(cfg.latent_dim, shape, generator).T
    q, _ = torch.linalg.qr(basis)  # (D, latent) with orthonormal columns
    return q.T.contiguous()


def _draw_split(
    cfg: SyntheticConfig,
    n: int,
    centers: dict[str, Tensor],
    decoders: dict[str, Tensor],
    signals: dict[str, float],
    generator: torch.Generator,
) -> TensorSplit:
    labels = torch.arange(n) % cfg.num_classes  # balanced classes, then shuffled
    labels = labels[torch.randperm(n, generator=generator)]
    inputs = {}
    for m in cfg.modalities:
        k = torch.randint(cfg.clusters, (n,), generator=generator)
        z = signals[m] * centers[m][labels, k]  # (n, latent)
        x = z @ decoders[m]
        x = x + cfg.noise * torch.randn(x.shape, generator=generator)
        inputs[m] = x.reshape(n, *cfg.input_shape(m)).contiguous()
    return TensorSplit(inputs, labels)


def make_synthetic(cfg: SyntheticConfig, device: torch.device | str = "cpu") -> MultimodalData:
    """Build the three splits of the synthetic dataset described by ``cfg`` on ``device``."""
    g = torch.Generator().manual_seed(cfg.seed)
    centers, decoders, signals = {}, {}, {}
    for m in cfg.modalities:
        c = torch.randn(cfg.num_classes, cfg.clusters, cfg.latent_dim, generator=g)
        centers[m] = c / c.norm(dim=-1, keepdim=True)
        decoders[m] = _decoder(cfg, m, g)
        signals[m] = cfg.signal * (cfg.dominance if m == cfg.dominant else 1.0)
    splits = [_draw_split(cfg, n, centers, decoders, signals, g) for n in (cfg.n_train, cfg.n_val, cfg.n_test)]
    data = MultimodalData(
        *splits,
        modalities=list(cfg.modalities),
        num_classes=cfg.num_classes,
        input_shapes={m: cfg.input_shape(m) for m in cfg.modalities},
        info={"dataset": "synthetic", "dominant": cfg.dominant, "signals": signals},
    )
    return data.to(device)
