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

Further mechanisms, all per modality (each off in ``v1``, so v1's draws stay bit-identical):
``modality_noise`` (σ_m instead of ``noise``), ``modality_signal`` (s_m instead of signal·dominance),
``modality_clusters`` (K_m instead of ``clusters``), ``class_codes`` (G_m < num_classes distinct codes:
classes y ≡ y' mod G_m look alike in m, only the other modalities tell them apart) and ``antipodal``
(c_{y,2j+1} = −c_{y,2j}: every class has mean zero in m, so only non-linear features of x^m separate
the classes, and an encoder learns them slowly; the default makes the weak modality, video,
antipodal). :func:`bayes_accuracy` is exact for all of them.

Presets. ``preset: NAME`` names a design (:data:`PRESETS`) that fills every generator field (all but
``name``, ``preset`` and ``seed``) *that the config does not give*: explicit keys win, whether or not
they equal a default (``{preset: antipodal-3k, n_train: 2000}`` is antipodal-3k with 2000 samples).
The filling happens where configs are read (:meth:`SyntheticConfig.normalize_input`, called by
``from_dict`` for YAML specs, ``key=value`` overrides and Tune configs); in Python use
:meth:`SyntheticConfig.from_preset`. ``v1`` is the default generator of issue 20 and all numbers
published before it. ``preset: null`` (the default) keeps the fields' own defaults, which since issue
20 are ``antipodal-3k``'s: the design where the uni-modal ensemble beats joint training by +0.065
(5 seeds), so balancing has accuracy to win; under v1 it had +0.018. BENCHMARKS.md, "Headroom of the
synthetic presets (issue 20)", measures every preset.

Everything is drawn from ``torch.Generator(seed)``: the same config gives bit-identical tensors.
The dataset seed is separate from the trial seed, as with a real benchmark: seeds vary the training
(initialisation, shuffling), not the data. Train / val / test are disjoint draws.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmtune.config import Record, from_dict, hp, to_dict
from mmtune.data.base import MultimodalData, TensorSplit
from mmtune.errors import Problem

__all__ = ["PRESETS", "Preset", "SyntheticConfig", "bayes_accuracy", "bayes_metrics", "make_synthetic"]


@dataclass(frozen=True)
class Preset:
    """A named design of the generator: ``changes`` on top of v1 (the default up to issue 20)."""

    doc: str
    changes: Mapping[str, Any]

    @property
    def values(self) -> dict[str, Any]:
        """Every generator field (all but name, preset and seed), so a preset never depends on the
        fields' defaults: v1's numbers stay reproducible whatever the defaults become."""
        return {**V1, **self.changes}


# v1: the generator's defaults when issue 20 was filed (README's "The phenomenon, measured").
V1: dict[str, Any] = {
    "modalities": ["audio", "video"], "dominant": "audio", "num_classes": 6, "dim": 64, "latent_dim": 16,
    "clusters": 2, "dominance": 1.5, "signal": 2.0, "noise": 1.0, "modality_noise": {}, "modality_signal": {},
    "modality_clusters": {}, "class_codes": {}, "antipodal": [], "n_train": 2000, "n_val": 500, "n_test": 500,
    "shape": "flat", "image_size": 32, "channels": 3,
}
# Measured in BENCHMARKS.md, "Headroom of the synthetic presets (issue 20)" (bench/headroom.py).
# "gap" in the docs: the uni-modal ensemble (ume, joint's compute) − joint, test accuracy, 5 seeds.
PRESETS: dict[str, Preset] = {
    "v1": Preset("the default up to issue 20 (README's measured phenomenon); gap +0.018", {}),
    "memorise": Preset(
        "memorisation regime: 500 training samples in 256 dims, the dominant modality nearly noise-free "
        "(σ 0.5) and no stronger than the weak one; nothing fits in 20 epochs of 8 steps: gap −0.178",
        {"n_train": 500, "dim": 256, "dominance": 1.0, "modality_noise": {"audio": 0.5}}),
    "lookup": Preset(
        "the dominant modality a low-noise lookup table (100 clusters per class, σ 0.5): the mlp does not "
        "learn it (0.28 alone): gap +0.006", {"modality_clusters": {"audio": 100}, "modality_noise": {"audio": 0.5}}),
    "complementary": Preset(
        "complementary evidence: the dominant modality has 3 class codes for 6 classes (classes y and y+3 "
        "look alike there), only the weak one tells them apart: gap +0.006", {"class_codes": {"audio": 3}}),
    "three": Preset("a third modality (text), as weak as video: gap −0.000 (+0.050 with E epochs per member)",
                    {"modalities": ["audio", "video", "text"]}),
    "antipodal": Preset(
        "the weak modality needs non-linear features: its two clusters per class are a ± pair (class mean "
        "zero: no linear feature separates its classes), both modalities stronger (signal 3, dominance "
        "1.2): gap +0.058", {"antipodal": ["video"], "signal": 3.0, "dominance": 1.2}),
    "antipodal-3k": Preset(
        "antipodal with 3000 training samples (more steps per epoch, so the ensemble's members, E/2 epochs "
        "each, learn the weak modality's non-linear features): gap +0.065 [+0.053, +0.077]",
        {"antipodal": ["video"], "signal": 3.0, "dominance": 1.2, "n_train": 3000}),
    "antipodal-three": Preset(
        "antipodal with a third modality (text) built like video: gap −0.005 (E/3 epochs per member are too "
        "few; +0.098 with E epochs each)",
        {"modalities": ["audio", "video", "text"], "antipodal": ["video", "text"], "signal": 3.0, "dominance": 1.2}),
}


@dataclass(frozen=True)
class SyntheticConfig(Record):
    name: str = hp("synthetic", doc="dataset name")
    preset: str | None = hp(None, choices=(None, *PRESETS), doc=(
        "a named design that fills every other field below except seed, unless that field is given "
        "explicitly (the given value wins): " + ", ".join(PRESETS) + " (null: the fields' own defaults, "
        "which are antipodal-3k's values; v1 is the default before issue 20)"))
    modalities: tuple[str, ...] = hp(("audio", "video"), doc="modality names (two or more)")
    dominant: str = hp("audio", doc="the modality that carries `dominance` times more class signal")
    num_classes: int = hp(6, low=2, doc="number of classes (CREMA-D has 6)")
    dim: int = hp(64, low=1, doc="input dimension per modality (shape: flat)")
    latent_dim: int = hp(16, low=1, doc="dimension of the class code behind each modality")
    clusters: int = hp(2, low=1, doc="clusters per class in each modality's latent space")
    dominance: float = hp(1.2, low=0.0, low_open=True, doc="signal of the dominant modality / signal of the others")
    signal: float = hp(3.0, low=0.0, doc="class signal (cluster radius) of the non-dominant modalities")
    noise: float = hp(1.0, low=0.0, low_open=True, doc="std of the isotropic input noise")
    modality_noise: dict[str, float] = hp(default_factory=dict, doc=(
        "per-modality noise std replacing `noise`, e.g. {audio: 0.5} (modalities not named keep `noise`)"))
    modality_signal: dict[str, float] = hp(default_factory=dict, doc=(
        "per-modality class signal s_m replacing signal·dominance, e.g. {text: 1.0}"))
    modality_clusters: dict[str, int] = hp(default_factory=dict, doc=(
        "per-modality clusters per class replacing `clusters`, e.g. {audio: 60}"))
    class_codes: dict[str, int] = hp(default_factory=dict, doc=(
        "per-modality number of distinct class codes G_m < num_classes: classes y and y' with y ≡ y' "
        "(mod G_m) share their codes there, so only the other modalities tell them apart"))
    antipodal: tuple[str, ...] | None = hp(None, doc=(
        "modalities whose clusters come in ± pairs (c_{y,2j+1} = −c_{y,2j}): every class has mean zero "
        "there, so no linear feature separates them (needs an even cluster count); null: every modality "
        "but the dominant one whose cluster count is even; [] for none (v1)"))
    n_train: int = hp(3000, low=1, doc="training samples")
    n_val: int = hp(500, low=1, doc="validation samples (model selection)")
    n_test: int = hp(500, low=1, doc="test samples (reported, never selects)")
    shape: str = hp("flat", choices=("flat", "shaped"), doc="flat vectors, or spectrogram-/frame-like images")
    image_size: int = hp(32, low=8, doc="F = T = H = W of shaped inputs")
    channels: int = hp(3, low=1, doc="channels of frame-like (video) inputs when shaped")
    seed: int = hp(0, low=0, doc="data seed (trial seeds vary training, not the data)")

    @classmethod
    def normalize_input(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """Fill the keys a preset sets and ``data`` does not give (what :func:`from_dict` builds from).

        Every config path (YAML specs, ``key=value`` overrides, Tune configs) goes through
        ``from_dict``, so ``{preset: h2, n_train: 800}`` is h2 with 800 training samples everywhere.
        """
        preset = data.get("preset", _field_default(cls, "preset"))
        if not isinstance(preset, str) or preset not in PRESETS:
            return dict(data)  # null, or a name the field's choices will report
        return {**PRESETS[preset].values, **data}

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> SyntheticConfig:
        """``SyntheticConfig.from_preset("h2", n_train=800)``: a preset in Python, explicit keys winning.

        ``SyntheticConfig(preset="h2")`` alone would keep the plain defaults (a dataclass cannot tell a
        given field from a defaulted one); it is refused where that is detectable, see extra_checks.
        """
        return from_dict(cls, {**overrides, "preset": preset})

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
        problems += self._per_modality_problems()
        if not problems:
            smallest = min(math.prod(self.input_shape(m)) for m in self.modalities)
            if self.latent_dim > smallest:
                what = "dim" if self.shape == "flat" else "the smallest shaped input (channels × image_size²)"
                problems.append(Problem("latent_dim", f"must be <= {what} = {smallest}, got {self.latent_dim}."))
        # The fields the preset sets to other values than the plain defaults: all still at their
        # defaults means the preset was named but never applied (SyntheticConfig(preset=...)).
        changed = [] if self.preset is None else [
            key for key, value in PRESETS[self.preset].values.items()
            if _plain(value) != _plain(_field_default(type(self), key))]
        if changed:
            if all(_plain(getattr(self, key)) == _plain(_field_default(type(self), key)) for key in changed):
                problems.append(Problem("preset", (
                    f"is '{self.preset}', but every field it sets ({', '.join(sorted(changed))}) still has its "
                    "plain default: the preset was not applied. Build the config with "
                    f"SyntheticConfig.from_preset('{self.preset}', ...) or from a dict (dataset_config), not "
                    "SyntheticConfig(preset=...); or drop the preset if those defaults are meant.")))
        return problems

    def _per_modality_problems(self) -> list[Problem]:
        problems = []
        mods = list(self.modalities)
        for key in ("modality_noise", "modality_signal", "modality_clusters", "class_codes", "antipodal"):
            unknown = [m for m in getattr(self, key) or () if m not in mods]
            if unknown:
                problems.append(Problem(key, f"names {unknown}, which are not among the modalities {mods}."))
        for m, v in self.modality_noise.items():
            if not v > 0:
                problems.append(Problem(f"modality_noise.{m}", f"must be > 0, got {v!r}."))
        for m, v in self.modality_signal.items():
            if not v >= 0:
                problems.append(Problem(f"modality_signal.{m}", f"must be >= 0, got {v!r}."))
        for m, v in self.modality_clusters.items():
            if v < 1:
                problems.append(Problem(f"modality_clusters.{m}", f"must be >= 1, got {v!r}."))
        for m, v in self.class_codes.items():
            if not 1 <= v <= self.num_classes:
                problems.append(Problem(f"class_codes.{m}", f"must lie in [1, num_classes = {self.num_classes}], got {v!r}."))
        for m in self.antipodal_modalities:
            k = self.clusters_of(m) if m in mods else 0
            if m in mods and k % 2:
                problems.append(Problem("antipodal", (
                    f"'{m}' has {k} clusters per class, but antipodal clusters come in ± pairs: give it an even "
                    f"count (clusters, or modality_clusters.{m}).")))
        if self.antipodal is not None and len(set(self.antipodal)) != len(self.antipodal):
            problems.append(Problem("antipodal", f"names must be unique, got {list(self.antipodal)}."))
        return problems

    @property
    def antipodal_modalities(self) -> tuple[str, ...]:
        """The modalities with ± cluster pairs: ``antipodal``, or when it is null every modality but the
        dominant one that has an even number of clusters per class."""
        if self.antipodal is None:  # ± pairs need an even cluster count; odd ones stay plain
            return tuple(m for m in self.modalities if m != self.dominant and self.clusters_of(m) % 2 == 0)
        return tuple(self.antipodal)

    def input_shape(self, modality: str) -> tuple[int, ...]:
        if self.shape == "flat":
            return (self.dim,)
        if modality == self.modalities[0]:
            return (1, self.image_size, self.image_size)  # spectrogram-like: 1 × F × T
        return (self.channels, self.image_size, self.image_size)  # frame-like: C × H × W

    def noise_of(self, modality: str) -> float:
        return self.modality_noise.get(modality, self.noise)

    def signal_of(self, modality: str) -> float:
        if modality in self.modality_signal:
            return self.modality_signal[modality]
        return self.signal * (self.dominance if modality == self.dominant else 1.0)

    def clusters_of(self, modality: str) -> int:
        return self.modality_clusters.get(modality, self.clusters)

    def codes_of(self, modality: str) -> int:
        return self.class_codes.get(modality, self.num_classes)


def _plain(value: Any) -> Any:
    """Tuples as lists, to compare a preset's values (YAML-like) with the fields (tuples)."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _field_default(cls: type, name: str) -> Any:
    f = cls.__dataclass_fields__[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


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


@dataclass(frozen=True)
class _Model:
    """The fixed part of the generative model, per modality: class codes c^m_{y,k} (C, K_m, latent),
    decoder (latent, D), signal s_m and noise std."""

    centers: dict[str, Tensor]
    decoders: dict[str, Tensor]
    signals: dict[str, float]
    noises: dict[str, float]


def _class_codes(cfg: SyntheticConfig, modality: str, generator: torch.Generator) -> Tensor:
    """c^m_{y,k}: random unit vectors, (num_classes, K_m, latent_dim).

    With the defaults this is exactly the draw of v1 (one randn of (C, clusters, latent)); the other
    mechanisms change the shape of that one draw or the values after it, never the order of draws.
    """
    codes, clusters = cfg.codes_of(modality), cfg.clusters_of(modality)
    c = torch.randn(codes, clusters, cfg.latent_dim, generator=generator)
    c = c / c.norm(dim=-1, keepdim=True)
    if modality in cfg.antipodal_modalities:
        c[:, 1::2] = -c[:, 0::2]  # ± pairs: every class's mean is zero
    return c[torch.arange(cfg.num_classes) % codes]  # y ≡ y' (mod G_m) share their codes


def _model(cfg: SyntheticConfig, generator: torch.Generator) -> _Model:
    centers, decoders = {}, {}
    for m in cfg.modalities:
        centers[m] = _class_codes(cfg, m, generator)
        decoders[m] = _decoder(cfg, m, generator)
    return _Model(centers, decoders, {m: cfg.signal_of(m) for m in cfg.modalities},
                  {m: cfg.noise_of(m) for m in cfg.modalities})


def _draw_split(cfg: SyntheticConfig, n: int, model: _Model, generator: torch.Generator) -> TensorSplit:
    labels = torch.arange(n) % cfg.num_classes  # balanced classes, then shuffled
    labels = labels[torch.randperm(n, generator=generator)]
    inputs = {}
    for m in cfg.modalities:
        k = torch.randint(cfg.clusters_of(m), (n,), generator=generator)
        z = model.signals[m] * model.centers[m][labels, k]  # (n, latent)
        x = z @ model.decoders[m]
        x = x + model.noises[m] * torch.randn(x.shape, generator=generator)
        inputs[m] = x.reshape(n, *cfg.input_shape(m)).contiguous()
    return TensorSplit(inputs, labels)


def make_synthetic(cfg: SyntheticConfig, device: torch.device | str = "cpu") -> MultimodalData:
    """Build the three splits of the synthetic dataset described by ``cfg`` on ``device``."""
    g = torch.Generator().manual_seed(cfg.seed)
    model = _model(cfg, g)  # the splits' draws continue this generator
    splits = [_draw_split(cfg, n, model, g) for n in (cfg.n_train, cfg.n_val, cfg.n_test)]
    data = MultimodalData(
        *splits,
        modalities=list(cfg.modalities),
        num_classes=cfg.num_classes,
        input_shapes={m: cfg.input_shape(m) for m in cfg.modalities},
        info={"dataset": "synthetic", "dominant": cfg.dominant, "signals": model.signals, "preset": cfg.preset},
    )
    return data.to(device)


@torch.no_grad()
def bayes_accuracy(cfg: SyntheticConfig, *, samples: int = 200_000, seed: int = 1234) -> dict[str, float]:
    """The Bayes-optimal accuracy of the generative model: per modality and jointly (``"joint"``).

    decode_m has orthonormal rows, so x^m's projection onto them, z̃^m = s_m·c^m_{y,k} + σ_m·ε
    (ε ~ N(0, I_latent)), is a sufficient statistic for y: the part of x^m outside the code's span is
    noise that is the same for every class. The exact posterior is then

        log p(y | x^m) = log Σ_k exp(−‖z̃^m − s_m·c^m_{y,k}‖² / (2·σ_m²)) + const,

    and, the modalities being independent given y, the joint posterior is the sum of these over m
    (classes are balanced, so the prior is flat). This holds for every mechanism of the generator:
    per-modality noise σ_m and signal s_m, per-modality cluster counts K_m, shared class codes (two
    classes with the same codes get the same likelihood in that modality) and antipodal clusters only
    change the c^m_{y,k} and σ_m the formula reads. The accuracy of its argmax (ties go to the lowest
    class index, like ``argmax``) has no closed form in general; it is estimated by Monte Carlo over
    ``samples`` fresh draws from the same model (standard error at most 0.5/√samples ≈ 0.0011).
    """
    model = _model(cfg, torch.Generator().manual_seed(cfg.seed))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(cfg.num_classes, (samples,), generator=g)
    joint = torch.zeros(samples, cfg.num_classes, dtype=torch.float64)
    out: dict[str, float] = {}
    for m in cfg.modalities:
        codes = model.signals[m] * model.centers[m].double()  # (C, K, latent)
        noise = model.noises[m]
        k = torch.randint(cfg.clusters_of(m), (samples,), generator=g)
        z = codes[labels, k] + noise * torch.randn(samples, cfg.latent_dim, generator=g, dtype=torch.float64)
        log_lik = torch.cat([_log_likelihood(chunk, codes, noise) for chunk in z.split(_CHUNK)])  # (n, C)
        out[m] = (log_lik.argmax(1) == labels).double().mean().item()
        joint += log_lik
    out["joint"] = (joint.argmax(1) == labels).double().mean().item()
    return out


_CHUNK = 16_384  # samples per block: (block, C, K) float64 stays small even with hundreds of clusters


def _log_likelihood(z: Tensor, codes: Tensor, noise: float) -> Tensor:
    """log p(z | y) + const for every class, (n, C), from codes (C, K, latent)."""
    # ‖z − c‖² = ‖z‖² − 2 z·c + ‖c‖²; ‖z‖² is the same for every class and drops out of the argmax.
    dots = torch.einsum("nd,ckd->nck", z, codes)
    return torch.logsumexp((2 * dots - codes.square().sum(-1)) / (2 * noise**2), dim=-1)


def _latent_model(cfg: SyntheticConfig) -> tuple[dict[str, Tensor], dict[str, float]]:
    """The class codes c^m_{y,k} and signals s_m exactly as :func:`make_synthetic` draws them."""
    model = _model(cfg, torch.Generator().manual_seed(cfg.seed))
    return model.centers, model.signals


_BAYES_CACHE: dict[str, dict[str, float]] = {}


def bayes_metrics(cfg: SyntheticConfig) -> dict[str, float]:
    """:func:`bayes_accuracy` as metrics: ``bayes_acc`` (joint) and ``bayes_acc/<m>``, cached per model.

    The limit depends on the generative model only (not on the split sizes), so trials that differ in
    n_train or in the method share one Monte-Carlo estimate.
    """
    model_fields = {k: v for k, v in to_dict(cfg).items() if k not in ("name", "preset", "n_train", "n_val", "n_test")}
    key = json.dumps(model_fields, sort_keys=True)
    if key not in _BAYES_CACHE:
        acc = bayes_accuracy(cfg)
        _BAYES_CACHE[key] = {"bayes_acc": acc["joint"], **{f"bayes_acc/{m}": acc[m] for m in cfg.modalities}}
    return dict(_BAYES_CACHE[key])
