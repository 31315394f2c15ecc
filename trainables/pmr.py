"""PMR: Prototypical Modal Rebalance.

Paper: Fan, Xu, Wang, Wang, Guo, "PMR: Prototypical Modal Rebalance for Multimodal Learning", CVPR
2023, pp. 20029–20038, arXiv:2211.07089 (equation numbers of the CVPR version). Official code:
github.com/fanyunfeng-bit/Modal-Imbalance-PMR (``main_Prototype_grad.py``, "the code" below); also
re-implemented in BalanceBenchmark (GeWu-Lab/BalanceBenchmark, ``PMR_trainer.py``).

The paper writes two modalities m0, m1; here there are M, in ``model.modalities`` order, and every
quantity is one (M, …) tensor. z^m = φ^m(x^m) is the pooled encoder output (``out.features``), the
"representation outputs of encoders" the prototypes live among (the code: ResNet18 after pooling).

Equation → function:
* Eq. 6 (prototype c^m_k = centroid of class k's z^m): :func:`class_feature_sums` over the chunks of a
  random training subset, then :func:`class_prototypes`; the subset holds :func:`subset_size` samples
  (``proto_fraction``, §5.2's one-tenth). Computed at the start of every epoch (Alg. 1), under no_grad
  with the model in eval mode (as the code), so the prototypes are constants for the gradient.
* Eq. 12 (c_k|old ← ε·c_k|old + (1 − ε)·c_k|new): :func:`momentum_prototypes` (``proto_momentum`` = ε).
* Eq. 7 (p^m_i(y = k) = softmax_k(−d(z^m_i, c^m_k)), d Euclidean, no temperature):
  :func:`prototype_log_probs`.
* Eq. 8 (ρ_t = Σ_{i∈B} p^0_i(y_i) / Σ_{i∈B} p^1_i(y_i)): :func:`prototype_scores` gives the sums s^m.
* Eq. 9 (L^m_PCE = E_i[−log p^m_i(y_i)]): :func:`prototypical_cross_entropy`.
* Eq. 10–11 (L_acc = L_CE + α·β·L^0_PCE + α·γ·L^1_PCE; β = clip(0, 1/ρ − 1, 1), γ = 0 if ρ < 1, else
  β = 0, γ = clip(0, ρ − 1, 1)): :func:`pce_coefficients` (the PCE weight of every modality).
* Eq. 13 (L_final = L_acc − μ·γ·H^0 − μ·β·H^1, H the entropy of softmax_k(−d(z, c_k)); the coefficients
  swapped, so the slow modality's coefficient *raises* the dominant modality's prototype entropy):
  :func:`prototype_entropy`, :func:`entropy_coefficients`.
* Eq. 10 + 13, what is added to L_CE: :func:`rebalance_loss`.

M > 2 modalities (ours; the paper is two-modality only, and BalanceBenchmark runs no PCE at all for
M > 2). With s^m = Σ_i p^m_i(y_i), s_max = max_m s^m and s_min = min_m s^m:
  PCE weight β^m = clip(0, s_max/s^m − 1, 1): every modality behind the leader is accelerated;
  PER weight γ^m = clip(0, s^m/s_min − 1, 1): every modality ahead of the weakest is entropy-regularised.
For M = 2 this is Eq. 11 and 13 exactly: with ρ = s^0/s^1 < 1, β^0 = 1/ρ − 1 (the paper's β),
β^1 = 0, γ^1 = 1/ρ − 1 (the paper's β on H^1), γ^0 = 0; with ρ ≥ 1 the mirror image (the paper's γ),
and at ρ = 1 all four are 0.

Interpretations (our reading where the paper is silent or ambiguous):
* Subset: round(proto_fraction·N) training samples (at least 1), drawn anew each epoch from the
  method's generator, as the code does (its first len(loader)//10 batches of the shuffled loader);
  Alg. 1 lists "subset D_s" among its inputs, which could also mean one fixed subset. The pass runs
  in chunks of the training batch size. Only the training split is used — the code takes AVE's
  prototypes from the validation set and CG-MNIST's from the test split; that is not offered.
* Eval mode for the pass (BN running statistics, no dropout), as the code; the paper does not say.
  The model's train/eval mode is restored afterwards.
* Start: there are no prototypes before the first modulated epoch; its ``begin_epoch`` computes them
  from the model as it is (at epoch 1 the random initialisation, as the code before epoch 0), with no
  momentum (there is no old prototype). Prototypes are computed only in epochs inside the window
  ``start_epoch``..``end_epoch``, so Eq. 12's momentum runs over modulated epochs.
* A class absent from the subset (possible for small fractions): the code divides by zero (NaN).
  Ours: it keeps its previous prototype, or, before there is one, gets the subset's mean feature.
* ρ and the coefficients are computed under no_grad, as in the code (Python scalars there): β, γ
  carry no gradient. Ties (ρ = 1) give both coefficients 0 (Eq. 11, and the code).
* H in Eq. 13 is the entropy of the whole prototype distribution softmax_k(−d(z^m, c^m_k)) (the
  paper's "c_y" there is loose), averaged over the batch like Eq. 9's expectation.
* PER timing: Alg. 1 applies Eq. 13 while ``e < E_r`` (0-based e), i.e. in epochs 1..E_r here
  (1-based, counted from the start of training, not from ``start_epoch``); PCE runs in every epoch
  of the window. **E_r is not given in the paper**; ``entropy_epochs = 5`` (a quarter of the
  20-epoch default) is ours. The paper's μ is "1e-2 or 1e-3 for different datasets" without saying
  which dataset takes which; we take **μ = 1e-2** for the audio–video default. (H ≤ log K, so with
  K = 6 the term is at most ≈ 0.018 — small against L_CE either way.)
* ε: **the paper gives no value**. The code's default is 0.2, but every published PMR run passes
  ``--momentum_coef 0.0`` (BalanceBenchmark: 0.5); our default is 0.0, the value of those runs.
* α: the paper uses "1 or 2, for different datasets"; default 1.0 (also the code's default).

Where the official code departs from the paper, as hyperparameters:
* ``coeff: code`` — the code's hard switch: α on the slower modality, 0 on the other (0 for both on
  a tie), instead of Eq. 11's clipped ramp; for M > 2, weight 1 for every modality behind the
  leader (and, for PER, every modality ahead of the weakest). Because ρ is a batch statistic, the
  switch can flip from batch to batch.
* ``entropy: false`` — the code and BalanceBenchmark have no PER term (no μ, no E_r): the paper's
  "PMR w/o PER" (Tab. 2). Their full configuration is ``coeff: code, entropy: false``.
* The code stops PCE after ``--modulation_ends`` epochs: that is ``end_epoch`` here.
* ``distance: squared`` — the squared Euclidean distance of Prototypical Networks [35]; the paper,
  the code and BalanceBenchmark all use the plain (non-squared) L2 norm, our default ``euclidean``.

Traces (means over the epoch's modulated steps):
* ``trace/beta/<m>`` — the PCE coefficient β^m ∈ [0, 1] of Eq. 11 (before α; the weight on L^m_PCE
  is α·β^m).
* ``trace/rho/<m>`` — a *ratio* of prototype score sums: s^m / mean_{j≠m} s^j. For two modalities
  ``trace/rho/<first modality>`` is the paper's ρ_t of Eq. 8.
* ``trace/pce/<m>`` — L^m_PCE (Eq. 9), weighted or not.
* ``trace/entropy_weight/<m>`` — the PER coefficient γ^m ∈ [0, 1] of Eq. 13 (before μ); only in
  epochs where PER is on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmtune.config import hp
from mmtune.data.base import Batch
from mmtune.engine.method import BalancingMethod, MethodConfig, StepContext
from mmtune.engine.metrics import discrepancy_ratio
from mmtune.engine.registry import register
from mmtune.models.multimodal import ModelOutput, MultimodalModel

__all__ = [
    "PMR", "PMRConfig", "subset_size", "stack_features", "class_feature_sums", "class_prototypes",
    "momentum_prototypes", "prototype_log_probs", "prototype_scores", "prototypical_cross_entropy",
    "prototype_entropy", "pce_coefficients", "entropy_coefficients", "rebalance_loss",
]

# A score sum s^m can underflow to 0 when every true-class probability does; the ratios then saturate
# the clip at 1 instead of dividing by zero.
_TINY = 1e-12


@dataclass(frozen=True)
class PMRConfig(MethodConfig):
    alpha: float = hp(1.0, low=0.0, doc="modulation strength α on the PCE loss (Eq. 10; paper 1 or 2)")
    proto_fraction: float = hp(0.1, low=0.0, low_open=True, high=1.0,
                               doc="share of the training split the prototypes are computed from each epoch (paper 10%, Tab. 5)")
    proto_momentum: float = hp(0.0, low=0.0, high=1.0, high_open=True,
                               doc="prototype momentum ε of Eq. 12, weight of the old prototype (paper: no value; code runs 0)")
    distance: str = hp("euclidean", choices=("euclidean", "squared"), doc="d of Eq. 7: L2 (paper, code) or squared L2 (ProtoNets)")
    coeff: str = hp("paper", choices=("paper", "code"), doc="PCE/PER coefficients: Eq. 11's clip ramp (paper) or a 0/1 switch (code)")
    entropy: bool = hp(True, doc="add the prototype entropy regularisation PER (Eq. 13); false = 'PMR w/o PER' (code)")
    mu: float = hp(1e-2, low=0.0, doc="PER strength μ (Eq. 13; paper 1e-2 or 1e-3)")
    entropy_epochs: int = hp(5, low=0, doc="E_r: PER applies in epochs 1..E_r (Alg. 1; paper: no value, ours 5)")


# ----------------------------------------------------------------------------- pure functions

def subset_size(n: int, fraction: float) -> int:
    """Samples of the prototype subset: round(fraction·n), at least 1 and at most n (§5.2: one-tenth)."""
    return max(1, min(n, round(fraction * n)))


def stack_features(features: list[Tensor], dim: int) -> Tensor:
    """(M, B, dim): each modality's (B, d_m) feature zero-padded to ``dim``; zero padding leaves every
    Euclidean distance to equally padded prototypes unchanged, so all modalities go through one cdist."""
    return torch.stack([f if f.shape[1] == dim else F.pad(f, (0, dim - f.shape[1])) for f in features])


def class_feature_sums(features: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Eq. 6's sums for one chunk: Σ_{i: y_i = k} z^m_i as (M, K, D), and the class counts N_k as (K,).

    A one-hot matmul rather than ``index_add_`` (atomic adds on CUDA are not deterministic) and
    rather than ``F.one_hot`` (which reads the labels' range back to the host).
    """
    onehot = (labels.unsqueeze(0) == torch.arange(num_classes, device=labels.device).unsqueeze(1)).to(features.dtype)
    return onehot @ features, onehot.sum(dim=1)


def class_prototypes(sums: Tensor, counts: Tensor, *, previous: Tensor | None = None) -> Tensor:
    """Eq. 6: c^m_k = (1/N_k) Σ_{i: y_i = k} z^m_i, (M, K, D).

    A class with no sample keeps ``previous`` (its prototype of the last epoch), or, when there is
    none, gets the mean of all the subset's features (ours; the code divides by zero).
    """
    present = (counts > 0).view(1, -1, 1)
    centroids = sums / counts.clamp_min(1.0).view(1, -1, 1)
    if previous is None:
        previous = (sums.sum(dim=1, keepdim=True) / counts.sum().clamp_min(1.0)).expand_as(sums)
    return torch.where(present, centroids, previous)


def momentum_prototypes(old: Tensor | None, new: Tensor, epsilon: float) -> Tensor:
    """Eq. 12: c|old ← ε·c|old + (1 − ε)·c|new; the first computation (no old prototype) is ``new``."""
    if old is None or epsilon == 0.0:
        return new
    return epsilon * old + (1.0 - epsilon) * new


def prototype_log_probs(features: Tensor, prototypes: Tensor, *, distance: str = "euclidean") -> Tensor:
    """Eq. 7: log p^m_i(y = k) = log softmax_k(−d(z^m_i, c^m_k)); (M, B, D) × (M, K, D) → (M, B, K).

    The exact cdist (no matmul shortcut, whose cancellation errors differ with the batch size); its
    gradient at zero distance is 0, not NaN.
    """
    d = torch.cdist(features, prototypes, compute_mode="donot_use_mm_for_euclid_dist")
    if distance == "squared":
        d = d.square()
    elif distance != "euclidean":
        raise ValueError(f"distance must be 'euclidean' or 'squared', got {distance!r}")
    return torch.log_softmax(-d, dim=-1)


def _true_class(log_probs: Tensor, labels: Tensor) -> Tensor:
    """(M, B): log p^m_i(y_i)."""
    index = labels.view(1, -1, 1).expand(log_probs.shape[0], -1, 1)
    return log_probs.gather(-1, index).squeeze(-1)


def prototype_scores(log_probs: Tensor, labels: Tensor) -> Tensor:
    """Eq. 8's sums s^m = Σ_{i∈B} p^m_i(y_i), (M,); ρ_t = s^0 / s^1 for two modalities."""
    return _true_class(log_probs, labels).exp().sum(dim=1)


def prototypical_cross_entropy(log_probs: Tensor, labels: Tensor) -> Tensor:
    """Eq. 9: L^m_PCE = mean_i −log p^m_i(y_i), (M,)."""
    return -_true_class(log_probs, labels).mean(dim=1)


def prototype_entropy(log_probs: Tensor) -> Tensor:
    """Eq. 13's H^m: entropy of softmax_k(−d(z^m_i, c^m_k)), mean over the batch, (M,)."""
    return -(log_probs.exp() * log_probs).sum(dim=-1).mean(dim=1)


def pce_coefficients(scores: Tensor, coeff: str = "paper") -> Tensor:
    """Eq. 11, generalised to M modalities: β^m = clip(0, s_max/s^m − 1, 1) (``paper``), or 1 for every
    modality behind the leader and 0 for the leader (``code``). For M = 2 exactly Eq. 11's β and γ."""
    s = scores.clamp_min(_TINY)
    top = s.max()
    if coeff == "paper":
        return (top / s - 1.0).clamp(0.0, 1.0)
    if coeff == "code":
        return (s < top).to(s.dtype)
    raise ValueError(f"coeff must be 'paper' or 'code', got {coeff!r}")


def entropy_coefficients(scores: Tensor, coeff: str = "paper") -> Tensor:
    """Eq. 13's swapped coefficients, generalised: γ^m = clip(0, s^m/s_min − 1, 1) (``paper``), or 1 for
    every modality ahead of the weakest (``code``). For M = 2: the slow modality's β on the dominant H."""
    s = scores.clamp_min(_TINY)
    bottom = s.min()
    if coeff == "paper":
        return (s / bottom - 1.0).clamp(0.0, 1.0)
    if coeff == "code":
        return (s > bottom).to(s.dtype)
    raise ValueError(f"coeff must be 'paper' or 'code', got {coeff!r}")


def rebalance_loss(pce: Tensor, beta: Tensor, *, alpha: float,
                   entropy: Tensor | None = None, gamma: Tensor | None = None, mu: float = 0.0) -> Tensor:
    """What Eq. 10 and 13 add to L_CE: α·Σ_m β^m·L^m_PCE − μ·Σ_m γ^m·H^m (the PER part only when given)."""
    loss = alpha * (beta * pce).sum()
    if entropy is not None:
        loss = loss - mu * (gamma * entropy).sum()
    return loss


# ----------------------------------------------------------------------------- the strategy

@register
class PMR(BalancingMethod):
    name = "pmr"
    Config = PMRConfig
    paper = "PMR — Fan et al., CVPR 2023, arXiv:2211.07089 (§4, Alg. 1)"
    state = ("prototypes",)  # (M, K, D) of the current epoch, D the widest feature; None before the first pass

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.prototypes: Tensor | None = None

    def bind(self, model: MultimodalModel) -> None:
        if len(model.modalities) < 2:
            raise ValueError(f"PMR rebalances two or more modalities, the model has {model.modalities}")

    def _entropy_on(self, epoch: int) -> bool:
        cfg: PMRConfig = self.config
        return cfg.entropy and cfg.mu > 0.0 and epoch <= cfg.entropy_epochs  # Alg. 1: e < E_r, e 0-based

    def begin_epoch(self, ctx: StepContext) -> None:
        super().begin_epoch(ctx)
        if ctx.modulating:  # Alg. 1: the subset is fed forward and the prototypes recomputed before each epoch
            self.prototypes = momentum_prototypes(self.prototypes, self._prototype_pass(ctx), self.config.proto_momentum)

    @torch.no_grad()
    def _prototype_pass(self, ctx: StepContext) -> Tensor:
        """Eq. 6 on a random ``proto_fraction`` of the training split, in eval mode; (M, K, D)."""
        if ctx.model is None or ctx.train is None:
            raise RuntimeError("PMR computes its prototypes from ctx.model and ctx.train at begin_epoch; this context lacks one of them")
        model, split = ctx.model, ctx.train
        n = len(split)
        size = subset_size(n, self.config.proto_fraction)
        if size < n:  # any split type (synthetic tensors, a prepared real-dataset cache): subset + batches
            split = split.subset(torch.randperm(n, generator=ctx.generator, device=ctx.generator.device)[:size])
        was_training = model.training
        model.eval()
        try:
            sums = counts = None
            for batch in split.batches(max(ctx.batch_size, 1)):
                encoded = model.encode({m: batch.inputs[m] for m in self.modalities})
                features = [encoded[m] for m in self.modalities]
                width = max(f.shape[1] for f in features)
                labels = batch.labels
                chunk_sums, chunk_counts = class_feature_sums(stack_features(features, width), labels, self.num_classes)
                sums = chunk_sums if sums is None else sums + chunk_sums
                counts = chunk_counts if counts is None else counts + chunk_counts
        finally:
            model.train(was_training)
        return class_prototypes(sums, counts, previous=self.prototypes)

    def extra_loss(self, out: ModelOutput, batch: Batch, ctx: StepContext) -> Tensor:
        cfg: PMRConfig = self.config
        if self.prototypes is None:
            raise RuntimeError("PMR.extra_loss before any prototypes: begin_epoch computes them at the start of a modulated epoch")
        z = stack_features([out.features[m] for m in self.modalities], self.prototypes.shape[-1])
        log_probs = prototype_log_probs(z, self.prototypes, distance=cfg.distance)  # Eq. 7
        pce = prototypical_cross_entropy(log_probs, batch.labels)  # Eq. 9
        with torch.no_grad():  # ρ and the coefficients carry no gradient (Python scalars in the code)
            scores = prototype_scores(log_probs, batch.labels)  # Eq. 8
            beta = pce_coefficients(scores, cfg.coeff)  # Eq. 11
            rho = discrepancy_ratio(scores)
        self.traces.add_many("beta", beta, self.modalities)
        self.traces.add_many("rho", rho, self.modalities)
        self.traces.add_many("pce", pce.detach(), self.modalities)
        if not self._entropy_on(ctx.epoch):
            return rebalance_loss(pce, beta, alpha=cfg.alpha)  # Eq. 10
        with torch.no_grad():
            gamma = entropy_coefficients(scores, cfg.coeff)
        self.traces.add_many("entropy_weight", gamma, self.modalities)
        return rebalance_loss(pce, beta, alpha=cfg.alpha, entropy=prototype_entropy(log_probs), gamma=gamma, mu=cfg.mu)  # Eq. 13
