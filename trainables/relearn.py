"""Diagnosing & Re-learning: purity-diagnosed learning states, soft re-initialisation of the encoders.

Paper: Wei, Li, Feng, Hu, "Diagnosing and Re-learning for Balanced Multimodal Learning", ECCV 2024,
arXiv:2407.09705. Official code: github.com/GeWu-Lab/Diagnosing_Relearning_ECCV2024 (read at 025085e;
``code/ours.py``, ``code/script/ours.sh``, ``code/dataset/cremad/*.csv``; "the code" below);
re-implemented in GeWu-Lab/BalanceBenchmark (``balancemm/trainer/ReLearning_trainer.py``,
``configs/trainer_config.yaml``; "BB" below).

Sources. The paper's body could not be read here (only its abstract and a third-party summary, which
gives the purity gap g^k = |P^k_D − P^k_V|, the strength tanh(λ g^k) and the update below); no
equation numbers are cited, and every formula below is the code's, which agrees with that summary.

The method, every ``interval`` epochs (at most ``max_reinits`` times):
* Diagnosis. For each modality m: the encoder's features φ^m (the pooled encoder output, eval mode,
  no grad) of a set of samples, scaled per feature to [−1, 1] (the code's ``MinMaxScaler``), clustered
  by k-means into C clusters (C = the number of classes, k-means++ seeding); the clusters' purity
  P = (1/N) Σ_clusters max_y |{i in cluster : y_i = y}| (the code's ``purity_score``: each cluster
  votes its majority label, P is the accuracy of that vote). P^m_D on the trained samples, P^m_V on a
  held-out set V; the learning state is the gap g^m = |P^m_D − P^m_V| (a modality whose training
  representation separates far better than its held-out one is over-trained).
* Re-learning strength α^m = tanh(λ g^m) (the code's ``move_lambda`` λ = 3).
* Soft re-initialisation of encoder m: θ^m ← (1 − α^m) θ^m + α^m θ^m_init.

Equation → function:
* the [−1, 1] feature scaling: :func:`minmax_scale`; k-means (k-means++ seeding, Lloyd iterations):
  :func:`kmeans_plusplus`, :func:`kmeans`; P: :func:`purity`; g: :func:`purity_gap`;
  α = tanh(λ g): :func:`reinit_strength`; the update: :func:`soft_reinit_`; the schedule:
  :func:`reinit_due`; the capped sample of a split: :func:`sample_indices`.
* The held-out set V: :meth:`Relearn.train_indices` (G-Blending's :func:`split_indices`); the whole
  diagnosis: :meth:`Relearn.diagnose`; diagnosis + re-initialisation: :meth:`Relearn.begin_epoch`.

Data. The code's V is CREMA-D's ``val.csv``, which is **carved out of the training split**: its 744
clips are all in ``train.csv`` and the code trains on ``my_train.csv`` = ``train.csv`` less them
(checked line by line), so V is 11.1 % of the original training split, never the test set. Here V is
``holdout_fraction`` (default 0.111, the code's 744 / 6698) of the training split, drawn once from
the trial's seed and reserved through the engine's ``train_indices`` (``ctx.holdout``): the loop never
trains on it, no BatchNorm statistic sees it; the diagnosis reads it with ``subset``/``batches`` only.
P_D is measured on ``ctx.train`` (the trained samples). Neither validation nor test is ever read.
BB uses the *validation* split as V — not offered (model selection reads validation).

Interpretations and departures (the code's choice is the default unless said):
* Timing (``timing``): the code re-initialises after its 0-based epoch k when k % interval == 0 and
  k > 0, i.e. after 1-based epochs interval + 1, 2·interval + 1, …; here the diagnosis runs in
  ``begin_epoch`` of the next epoch (on the same weights: nothing trains in between), so at 1-based
  epochs interval + 2, 2·interval + 2, … (``code``). ``multiple``: after every ``interval`` completed
  epochs (epochs interval + 1, 2·interval + 1, …). Only inside the window; ``max_reinits`` counts the
  re-initialisations done (the code's ``reinit_num`` 3; null: no limit).
* θ_init (``init``): ``stored`` — the weights the model had when the trial built it (the code saves
  them before training, ``init_para.pkl``); copied in ``bind``, and a restored trial rebuilds the same
  ones from its seed, so they are not checkpointed. With pretrained encoders they are the pretrained
  weights. ``fresh`` (ours): a new initialisation at each re-initialisation, every layer's
  ``reset_parameters()`` (PyTorch's default layer init; note torchvision's ResNet constructor uses
  Kaiming-normal for its convolutions, so ``fresh`` is not a draw of the builder's own init) run under a
  CPU RNG seeded from the method's generator (deterministic, checkpointed with the generator); a
  parameter held by a module without such a method (a learned positional table) keeps its value.
* What is re-initialised: every parameter of encoder m (the code: every ``audio_net``/``visual_net``
  parameter, BatchNorm affine included; BB: the modality's encoder). Buffers (BatchNorm running
  statistics) and the optimizer's momentum are left as they are, as in the code; heads and fusion are
  not touched.
* k-means: ours on the training device in torch, deterministic from the method's generator, where the
  code calls scikit-learn's ``KMeans(n_clusters=C, random_state=0)``: greedy k-means++ seeding with
  2 + ⌊ln C⌋ local trials (scikit-learn's), Lloyd iterations to ``max_iter`` (300) or until the labels
  stop changing or the centres move less than 1e-4 × the mean per-feature variance (scikit-learn's
  ``tol``); an empty cluster keeps its centre (scikit-learn relocates it). ``n_init`` restarts, best
  inertia kept (scikit-learn: 10 before 1.4, one k-means++ run since; default 1).
* Samples: at most ``max_samples`` of each set (default 4096, drawn without replacement from the
  method's generator; null: all, as the code), to keep the pass and the clustering cheap.
* ``scaler: none`` clusters the raw features (ours).

Composition: the re-initialisation acts between epochs on the encoders' weights and touches no
per-batch hook, so it composes with the in-loop methods (``relearn+ogm`` is tested): the partner's
hooks run on the re-initialised encoders. With a partner that reserves samples of its own (G-Blending)
the engine holds out the union of both reservations, and P_V is measured on that union (``ctx.holdout``).

Cost: each diagnosis is one eval-mode encoder pass over ≤ max_samples trained and held-out samples plus
two k-means per modality; nothing per batch. The held-out set removes 11.1 % of the trained samples.

Traces (window epochs): ``trace/reinit/<m>`` — α^m applied at the start of this epoch (0 when there
was none); on diagnosis epochs also ``trace/purity/<m>`` (P_D, the training-representation purity),
``trace/purity_holdout/<m>`` (P_V) and ``trace/purity_gap/<m>`` (g^m, the learning state).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mmtune.config import hp
from mmtune.data.base import TensorSplit
from mmtune.engine.method import BalancingMethod, MethodConfig, StepContext
from mmtune.engine.registry import register
from mmtune.errors import ConfigError, Problem
from mmtune.models.multimodal import MultimodalModel
from mmtune.trainables.gblending import split_indices

__all__ = [
    "Relearn", "RelearnConfig", "minmax_scale", "kmeans_plusplus", "kmeans", "purity", "purity_gap",
    "reinit_strength", "soft_reinit_", "reinit_due", "sample_indices",
]

_TOL = 1e-4  # scikit-learn's KMeans tol (relative to the mean per-feature variance)


@dataclass(frozen=True)
class RelearnConfig(MethodConfig):
    lam: float = hp(3.0, low=0.0, doc="λ in α = tanh(λ·|P_D − P_V|) (code move_lambda 3, BalanceBenchmark 3)")
    interval: int = hp(20, low=1, doc="epochs between re-initialisations (code reinit_epoch 20, BalanceBenchmark 15)")
    max_reinits: int | None = hp(3, low=1,
                                 doc="re-initialisations at most (code reinit_num 3, BalanceBenchmark 2; null: no limit)")
    timing: str = hp("code", choices=("code", "multiple"),
                     doc="code: after 1-based epochs interval+1, 2·interval+1, … (0-based k % interval == 0, k > 0); "
                         "multiple: after epochs interval, 2·interval, …")
    holdout_fraction: float = hp(0.111, low=0.0, low_open=True, high=1.0, high_open=True,
                                 doc="share of the training split held out as V for P_V (code: 744 of 6698 CREMA-D "
                                     "training clips, 0.111); never validation or test")
    init: str = hp("stored", choices=("stored", "fresh"),
                   doc="θ_init: the weights the trial built (stored, code) or a fresh layer init per re-init (ours)")
    max_samples: int | None = hp(4096, low=2, doc="samples per set clustered at most (ours; null: all, as the code)")
    n_init: int = hp(1, low=1, doc="k-means restarts, best inertia kept (scikit-learn >= 1.4: 1; older: 10)")
    max_iter: int = hp(300, low=1, doc="k-means Lloyd iterations at most (scikit-learn 300)")
    scaler: str = hp("minmax", choices=("minmax", "none"),
                     doc="features scaled per dimension to [-1, 1] before k-means (code MinMaxScaler) or raw (ours)")


# ----------------------------------------------------------------------------- pure functions

def minmax_scale(x: Tensor) -> Tensor:
    """Each column of (N, D) ``x`` mapped linearly onto [−1, 1] (scikit-learn ``MinMaxScaler((-1, 1))``;
    a constant column maps to −1, as scikit-learn's zero-range rule)."""
    low, high = x.min(0).values, x.max(0).values
    span = high - low
    scale = 2.0 / torch.where(span > 0, span, torch.ones_like(span))
    return (x - low) * scale - 1.0


def _sq_dist(x: Tensor, c: Tensor) -> Tensor:
    """Squared Euclidean distances (N, K) between the rows of x (N, D) and c (K, D)."""
    return (x.square().sum(1, keepdim=True) - 2.0 * x @ c.T + c.square().sum(1)).clamp_min(0.0)


def _draw(weights: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """``count`` indices drawn with replacement ∝ ``weights`` (uniform when they sum to 0)."""
    if not bool(weights.sum() > 0):
        weights = torch.ones_like(weights)
    return torch.multinomial(weights, count, replacement=True, generator=generator)


def kmeans_plusplus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k initial centres (k, D) by greedy k-means++ (scikit-learn's: 2 + ⌊ln k⌋ candidates per centre,
    the one that lowers the potential Σ_i min_c ‖x_i − c‖² most is kept)."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    first = torch.randint(n, (1,), generator=generator, device=generator.device).to(x.device)
    centres = [x[first[0]]]
    closest = _sq_dist(x, centres[0][None]).squeeze(1)
    for _ in range(1, k):
        candidates = _draw(closest, trials, generator)
        new = torch.minimum(closest[None], _sq_dist(x, x[candidates]).T)  # (trials, N)
        best = int(new.sum(1).argmin())
        centres.append(x[candidates[best]])
        closest = new[best]
    return torch.stack(centres)


def kmeans(x: Tensor, k: int, generator: torch.Generator, *, n_init: int = 1, max_iter: int = 300,
           tol: float = _TOL) -> Tensor:
    """Cluster labels (N,) of the rows of ``x`` into ``k`` clusters (min(k, N)): k-means++ seeding, Lloyd
    iterations until the labels stop changing, the centres move (Σ‖Δc‖²) at most tol × the mean
    per-feature variance, or ``max_iter``; ``n_init`` runs, the lowest inertia kept. An empty cluster keeps
    its centre. Deterministic given ``generator``."""
    x = x.float()
    n = x.shape[0]
    k = max(1, min(k, n))
    threshold = tol * float(x.var(0, unbiased=False).mean()) if n > 1 else 0.0
    best_labels, best_inertia = None, math.inf
    for _ in range(n_init):
        centres = kmeans_plusplus(x, k, generator)
        labels = None
        for _ in range(max_iter):
            new_labels = _sq_dist(x, centres).argmin(1)
            counts = torch.bincount(new_labels, minlength=k).to(x.dtype)
            sums = torch.zeros_like(centres).index_add_(0, new_labels, x)
            moved = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1.0)[:, None], centres)
            shift = float((moved - centres).square().sum())
            centres = moved
            if labels is not None and torch.equal(labels, new_labels):
                break
            labels = new_labels
            if shift <= threshold:
                break
        dist = _sq_dist(x, centres)
        inertia = float(dist.min(1).values.sum())
        if inertia < best_inertia:
            best_labels, best_inertia = dist.argmin(1), inertia
    assert best_labels is not None
    return best_labels


def purity(labels: Tensor, clusters: Tensor, num_classes: int) -> Tensor:
    """P = (1/N) Σ_clusters max_y |{i in cluster : y_i = y}|: each cluster votes its majority label, P is
    the accuracy of that vote (the code's ``purity_score``)."""
    k = int(clusters.max()) + 1
    counts = torch.bincount(clusters.long() * num_classes + labels.long(), minlength=k * num_classes)
    return counts.view(k, num_classes).max(1).values.sum().float() / labels.shape[0]


def purity_gap(train: Tensor, holdout: Tensor) -> Tensor:
    """The learning state g = |P_D − P_V| (per modality)."""
    return (train - holdout).abs()


def reinit_strength(gap: Tensor, lam: float) -> Tensor:
    """α = tanh(λ g) ∈ [0, 1)."""
    return torch.tanh(lam * gap)


@torch.no_grad()
def soft_reinit_(params: Sequence[Tensor], init: Sequence[Tensor], alpha: float | Tensor) -> None:
    """θ ← (1 − α) θ + α θ_init, in place, for each parameter and its initial value."""
    for p, p0 in zip(params, init, strict=True):
        p.mul_(1.0 - alpha).add_(p0.to(p.device, p.dtype) * alpha)


def reinit_due(epoch: int, interval: int, timing: str = "code") -> bool:
    """Whether a re-initialisation is scheduled at the start of 1-based ``epoch`` (before it trains):
    ``code`` after 1-based epochs interval + 1, 2·interval + 1, … (the code's 0-based k % interval == 0,
    k > 0); ``multiple`` after 1-based epochs interval, 2·interval, …"""
    done = epoch - 1  # epochs completed
    if timing == "code":
        return done > 1 and (done - 1) % interval == 0
    if timing == "multiple":
        return done > 0 and done % interval == 0
    raise ValueError(f"timing must be 'code' or 'multiple', got {timing!r}")


def sample_indices(n: int, cap: int | None, generator: torch.Generator) -> Tensor | None:
    """At most ``cap`` of ``n`` indices, drawn without replacement (sorted); None: all ``n`` (n <= cap)."""
    if cap is None or n <= cap:
        return None
    return torch.randperm(n, generator=generator, device=generator.device)[:cap].sort().values


# ----------------------------------------------------------------------------- the strategy

@register
class Relearn(BalancingMethod):
    name = "relearn"
    Config = RelearnConfig
    paper = "Diagnosing & Re-learning — Wei, Li, Feng, Hu, ECCV 2024, arXiv:2407.09705"
    # The last diagnosis (P_D, P_V, α per modality; None before the first) and the number of
    # re-initialisations done. θ_init is rebuilt from the trial's seed in bind (init=stored) or drawn
    # from the checkpointed method generator (init=fresh).
    state = ("purity_train", "purity_holdout", "alpha", "reinits")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.purity_train: Tensor | None = None
        self.purity_holdout: Tensor | None = None
        self.alpha: Tensor | None = None
        self.reinits = 0
        self._init: dict[str, list[Tensor]] = {}

    def bind(self, model: MultimodalModel) -> None:
        if len(self.modalities) < 2:
            raise ConfigError([Problem("dataset.modalities", (
                f"Diagnosing & Re-learning balances two or more modalities, got {self.modalities}; "
                "use method=joint or unimodal."))])
        self._encoders = {m: model.encoders[m] for m in self.modalities}
        if self.config.init == "stored":
            self._init = {m: [p.detach().clone() for p in enc.parameters()] for m, enc in self._encoders.items()}

    def train_indices(self, n: int, generator: torch.Generator) -> Tensor:
        """The trained samples: all but a random ``holdout_fraction`` of the split (V, ``ctx.holdout``)."""
        return split_indices(n, self.config.holdout_fraction, generator)[0]

    # -- diagnosis ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _features(self, model: MultimodalModel, split: TensorSplit, ctx: StepContext) -> tuple[dict[str, Tensor], Tensor]:
        """Each encoder's φ^m and the labels of at most ``max_samples`` samples of ``split`` (eval mode)."""
        index = sample_indices(len(split), self.config.max_samples, ctx.generator)
        part = split if index is None else split.subset(index)
        feats: dict[str, list[Tensor]] = {m: [] for m in self.modalities}
        labels = []
        for batch in part.batches(max(ctx.batch_size, 256)):
            phi = model.encode(batch.inputs)
            for m in self.modalities:
                feats[m].append(phi[m].flatten(1).float())
            labels.append(batch.labels)
        return {m: torch.cat(v) for m, v in feats.items()}, torch.cat(labels)

    def _purities(self, model: MultimodalModel, split: TensorSplit, ctx: StepContext) -> Tensor:
        cfg: RelearnConfig = self.config
        feats, labels = self._features(model, split, ctx)
        out = []
        for m in self.modalities:
            x = minmax_scale(feats[m]) if cfg.scaler == "minmax" else feats[m]
            clusters = kmeans(x, self.num_classes, ctx.generator, n_init=cfg.n_init, max_iter=cfg.max_iter)
            out.append(purity(labels, clusters, self.num_classes))
        return torch.stack(out)

    def diagnose(self, model: MultimodalModel, ctx: StepContext) -> tuple[Tensor, Tensor]:
        """(P_D, P_V), (M,) each: purity of every encoder's representation of the trained samples and of V."""
        if ctx.train is None or ctx.holdout is None:
            raise RuntimeError("relearn needs the trained samples (ctx.train) and its held-out set (ctx.holdout)")
        was_training = model.training
        model.eval()
        try:
            return self._purities(model, ctx.train, ctx), self._purities(model, ctx.holdout, ctx)
        finally:
            model.train(was_training)

    def _fresh_init(self, m: str, ctx: StepContext) -> list[Tensor]:
        """A fresh initialisation of encoder m: every layer's reset_parameters() under a CPU RNG seeded from
        the method's generator."""
        seed = int(torch.randint(2**62, (1,), generator=ctx.generator, device=ctx.generator.device))
        clone = copy.deepcopy(self._encoders[m]).cpu()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            for module in clone.modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()
                elif isinstance(module, nn.MultiheadAttention):
                    module._reset_parameters()
        return [p.detach() for p in clone.parameters()]

    # -- the hooks ----------------------------------------------------------------------------------
    def begin_epoch(self, ctx: StepContext) -> None:
        super().begin_epoch(ctx)
        cfg: RelearnConfig = self.config
        if not ctx.modulating:
            return
        limit = cfg.max_reinits is None or self.reinits < cfg.max_reinits
        if ctx.model is None or not limit or not reinit_due(ctx.epoch, cfg.interval, cfg.timing):
            self.traces.add_many("reinit", torch.zeros(len(self.modalities), device=self.device), self.modalities)
            return
        p_train, p_holdout = self.diagnose(ctx.model, ctx)
        alpha = reinit_strength(purity_gap(p_train, p_holdout), cfg.lam)
        for i, m in enumerate(self.modalities):
            init = self._init[m] if cfg.init == "stored" else self._fresh_init(m, ctx)
            soft_reinit_(list(self._encoders[m].parameters()), init, alpha[i])
        self.purity_train, self.purity_holdout, self.alpha = p_train, p_holdout, alpha
        self.reinits += 1
        self.traces.add_many("reinit", alpha, self.modalities)
        self.traces.add_many("purity", p_train, self.modalities)
        self.traces.add_many("purity_holdout", p_holdout, self.modalities)
        self.traces.add_many("purity_gap", purity_gap(p_train, p_holdout), self.modalities)
