"""AMSS / AMSS+: Adaptively Mask Subnetworks considering modal Significance (+ unbiased estimation).

Paper: Yang, Pan, Jiang, Xu, Tang, "Learning to Rebalance Multi-Modal Optimization by Adaptively
Masking Subnetworks", IEEE TPAMI 2025, DOI 10.1109/TPAMI.2025.3547417, arXiv:2404.08347
(equations numbered as in the TPAMI version; "App." is its supplementary material). Official code:
github.com/njustkmg/TPAMI-AMSS (``AMSS/train_test.py`` for audio–video), read for the ``code`` variants.

After ``loss.backward()`` and before the optimizer step, every modality k keeps the gradient of only
a sampled part of its subnetwork: ⌈p^(k)·C_l⌉ of the C_l mask units of each masked layer l, drawn
without replacement in proportion to their Fisher importance. The dominant modality (higher modal
significance) gets the smaller update ratio p^(k), so its subnetwork is updated more sparsely.

Equation → function:
* Eq. 2, H(Y) from the batch's label frequencies: :func:`label_entropy`.
* Eq. 2, E[log q(y | x^(k))] = (1/B) Σ_i log softmax(uni-modal logits of x_i^(k))_{y_i}:
  :func:`expected_log_likelihood` on ``model.modality_logits(features)`` under no_grad: q(y | x^(k)) is
  modality k's own classifier (§III-B) — its own head under late and sum fusion (unscaled: late
  fusion's fused logits are the heads' mean, but each head is a classifier of its own), the exact
  split under concat, the zero-out rule for FiLM/gated (the paper's zero-padding).
* H(X^(k)), the denominator of the mutual information rate: :func:`feature_entropy`. The paper leaves
  its estimate open; like the official code we use the entropy of a softmax over the dimensions of
  the pooled feature φ^(k), averaged over the batch.
* ξ^(k) = (H(Y) + E[log q(y | x^(k))]) / H(X^(k)): :func:`modal_significance`.
* Eq. 3, u^(k) ← λ·u^(k) + (1 − λ)·ξ^(k): :func:`momentum_update`.
* Eq. 4, p^(k) = 1 − softmax(u / τ)_k: :func:`update_ratio` (so Σ_k (1 − p^(k)) = 1).
* Eq. 5 + App. C.2, diagonal empirical Fisher, summed over each mask unit and normalised within its
  layer: :func:`fisher_importance` (mini-batch or per-sample Fisher: :func:`per_sample_fisher`).
* Eq. 6 (S^(k): ⌈p^(k)·|w|⌉ units without replacement, P ∝ importance — the paper's non-uniform
  adaptive sampling, NAS) and Eq. 1 (0/1 mask on the gradient): :func:`sample_count`, :func:`sample_mask`.
* Eq. 7–8 (AMSS+: sampled unit j scaled by 1/(p_j + a), others 0): :func:`unbiased_mask`.
* Official code's variant of Eq. 2–4: :func:`code_label_entropy`, :func:`code_update_ratio`.

What runs (every choice is a hyperparameter, so one sweep can grid over them):
* ``formula: paper`` (default): Eq. 2–4 as written, λ = ``lam`` (the paper gives no value; 0.9 here).
  u^(k) starts at the first modulated batch's ξ^(k) (the paper leaves u_0 open; a zero start would
  hold p^(k) near 1 − 1/K for the first ~1/(1 − λ) steps). u is carried across epochs and checkpointed.
  ``formula: code``: the official audio–video code — no momentum (u = ξ); ξ^(k) = (E[log q] + H̃(Y) +
  0.5)/H(X^(k)) with the +0.5 offset and H̃(Y) = −Σ_c p_c·log softmax(p)_c (the code feeds the label
  frequencies to ``nn.CrossEntropyLoss`` as logits *and* target; the softmax runs over classes
  0..max label of the batch, as the code's ``bincount``); p = 0.5 for every modality when any
  numerator is ≤ 0; NaN → 0.5. Both: p^(k) = 1 − softmax(u/τ)_k, which for K = 2 is the code's
  exp(t_other)/(exp(t_a) + exp(t_v)).
* ``clamp``: clip p^(k) to [``p_min``, ``p_max``] = [0.1, 0.9] as the code does; ``null`` (default)
  means "as the formula": off for ``paper``, on for ``code``.
* ``tau``: τ of Eq. 4; default 0.25, App. C.1's value for the audio–video datasets (0.5 for text–image).
* ``fisher: batch`` (default): F_j = g_j², the square of the mini-batch gradient that backward has
  already computed (what the official code uses, ``gn_mode=gn``): one elementwise square and a sum
  per mask unit, no extra pass — the default because it is the one that can keep the step-time goal.
  ``fisher: per_sample``: Eq. 5 literally, F_j = (1/B) Σ_i (∂ℓ_i/∂w_j)² with ℓ_i = −log p(y_i | x_i)
  of the joint model, from per-sample gradients (``torch.func.vmap(grad)``): a second, vectorised
  forward/backward every step (5–7× a joint step measured on the MLP on CPU). BatchNorm layers run
  on their running statistics in that pass (a per-sample gradient through batch statistics is not
  defined, and the pass must not update the running statistics).
* ``mask_unit: auto`` (default, App. C.2): output channels of a convolution (importance summed over I,
  H, W), heads of a multi-head attention (summed over the Q, K, V rows of the head and its columns of
  the output projection, i.e. M = 4 matrices; ``nn.MultiheadAttention`` of the ``transformer``
  encoder and the Hugging Face ``BertAttention`` of ``bert`` alike), output rows of a linear layer;
  ``element``: every weight is its own unit.
* ``sampling: fisher`` (default, the paper's NAS) or ``uniform`` (Table VI's "Random").
  Sampling is the exponential race that ``torch.multinomial(replacement=False)`` itself runs
  (top-n of w_j / E_j, E_j ~ Exp(1), drawn from ``ctx.generator``), as one sort for all layers with
  the same number of units: per-row sample counts and no host sync (``torch.multinomial`` reads its
  validity checks back to the host and takes one count for all rows).
* ``plus`` (AMSS+): m_j = 1/(p_j + a) on sampled units, 0 elsewhere, with p_j the unit's normalised
  Fisher importance (Eq. 5's symbol, as Eq. 7–8 print it and as the official code computes it,
  ``1/(important_gn + 1/C)``) and a = 1/C_l (the paper first says a ∈ [0, 1), then "substitutes the
  number of mask units C_l for a"; the code uses 1/C_l, consistent with a < 1). App. A.2's proof of
  unbiasedness uses p_j(t) = P(w_j ∈ S), the inclusion probability, instead; mmtune used to offer that
  reading (``plus_pi: inclusion``, and ``plus_scale: normalized``) but its closed-form approximation
  was not an inclusion probability (for one draw it must equal w; w = [.1, .2, .7] gave
  [.1307, .2444, .6249]) and no exact form is cheap per step, so both options were removed.
  Measured on the synthetic default (5 seeds, ``bench/imbalance.py``) the importance reading lifts the
  weak modality (Δ val video +0.099 ± 0.032); much of that comes from its larger steps on the masked
  layers (1/(p_j + a) ≈ C_l/2 where p_j ≈ 1/C_l), not from rebalancing alone.
* ``mask_scope`` (Table VII, App. C.2). ``backbone`` (default) is Table VII's "w/ Backbone Mask(+)" row,
  the set the official code masks; the paper's full AMSS/AMSS+ rows mask backbone *and* classifier,
  ``both`` here. Units are the model's (``model.mask_units``, declared by each encoder,
  :mod:`mmtune.models.units`). ``backbone``: the weight matrices of the encoder's
  depth blocks (``model.depth_blocks(m)``): linear weights (the transformer's token projection
  included, it is a linear layer of block 1), attention projections and convolution kernels; no
  norms, biases, positional embeddings. For ResNet blocks, only the convolutions of the
  residual branches (conv1/conv2[/conv3] of every BasicBlock/Bottleneck): not the stem convolution,
  not the downsample projections, not BatchNorm — exactly what the official audio–video code masks
  (``'layer' in name and 'conv' in name``, 4-D). That code also builds masks for the concat
  classifier (``mask_ffn``) but never applies them, so its runs mask the backbone only.
  ``classifier``: the weight matrices of modality k's own head, ``model.fusion.owned_parameters(m)``
  (late fusion), or under concat fusion modality k's column block W^k of the shared head (the
  columns acting on φ^k, ``model.fusion.owned_columns(m)``), its units the class rows of that block
  (App. C.2's "output rows", restricted to W^k); the shared bias belongs to no subnetwork and is never
  masked. ``both``: the union. Fusions with neither (sum, FiLM, gated) refuse ``classifier``/``both``
  with a ConfigError.
* ``fixed_p`` (default null): a fixed update ratio per modality, ``{audio: 0.2, video: 1.0}``, in
  place of Eq. 2–4: the element-wise "MS" of the paper's preliminary experiment (Table I, uniform
  sampling there: add ``sampling: uniform``), the baseline that AMSS makes adaptive; the official
  code's ``param_mode: fix`` with ``coeff_a``/``coeff_v``. ξ and u are still computed and traced;
  ``clamp`` does not apply to the given ratios.
* The window ``start_epoch``/``end_epoch`` (the loop calls the hook only inside it).

Traces: ``trace/xi/<m>`` (ξ^(k) of the batch), ``trace/u/<m>`` (u^(k) after the update),
``trace/p/<m>`` (p^(k)), means over the epoch's modulated steps.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmtune.config import hp
from mmtune.data.base import Batch
from mmtune.engine.method import BalancingMethod, MethodConfig, StepContext
from mmtune.errors import ConfigError, Problem
from mmtune.engine.registry import register
from mmtune.models.multimodal import ModelOutput, MultimodalModel
from mmtune.models.units import MaskLayer, MaskPiece

__all__ = [
    "AMSS",
    "AMSSConfig",
    "MaskLayer",
    "code_label_entropy",
    "code_update_ratio",
    "expected_log_likelihood",
    "feature_entropy",
    "fisher_importance",
    "label_entropy",
    "mask_layers",
    "modal_significance",
    "momentum_update",
    "per_sample_fisher",
    "sample_count",
    "sample_mask",
    "unbiased_mask",
    "unit_fisher",
    "update_ratio",
]

PER_SAMPLE_BUDGET = 1 << 25  # floats of per-sample gradients materialised at once (128 MB)


@dataclass(frozen=True)
class AMSSConfig(MethodConfig):
    tau: float = hp(0.25, low=0.0, low_open=True, doc="temperature τ of Eq. 4 (App. C.1: 0.25 audio–video)")
    lam: float = hp(0.9, low=0.0, high=1.0, high_open=True, doc="momentum λ of Eq. 3 (formula=paper)")
    formula: str = hp("paper", choices=("paper", "code"), doc="Eq. 2–4 as written, or the official code's variant")
    clamp: bool | None = hp(None, doc="clip p to [p_min, p_max]; null = as the formula (paper: no, code: yes)")
    p_min: float = hp(0.1, low=0.0, high=1.0, doc="lower clip of p (the code: 0.1)")
    p_max: float = hp(0.9, low=0.0, high=1.0, doc="upper clip of p (the code: 0.9)")
    plus: bool = hp(False, doc="AMSS+: scale sampled units by 1/(π_j + a) (Eq. 7–8)")
    fisher: str = hp("batch", choices=("batch", "per_sample"), doc="F_j = g² of the batch gradient, or mean per-sample g²")
    sampling: str = hp("fisher", choices=("fisher", "uniform"), doc="units drawn ∝ importance (NAS) or uniformly")
    mask_unit: str = hp("auto", choices=("auto", "element"), doc="channels/heads/rows (App. C.2) or single weights")
    mask_scope: str = hp("backbone", choices=("backbone", "classifier", "both"), doc="masked subnetwork (Table VII): backbone = its 'w/ Backbone Mask(+)' "
                                                                                         "row, what the official code masks; both = the full AMSS(+) row")
    fixed_p: dict[str, float] | None = hp(None, doc="Table I's MS: a fixed p per modality, e.g. {audio: 0.2, video: 1.0}, "
                                                    "instead of Eq. 2–4 (null: adaptive AMSS)")

    def extra_checks(self) -> list[Problem]:
        problems = super().extra_checks()
        if self.p_min > self.p_max:
            problems.append(Problem("p_min", f"must be <= p_max ({self.p_max}), got {self.p_min}."))
        for modality, ratio in (self.fixed_p or {}).items():
            if not 0.0 <= ratio <= 1.0:
                problems.append(Problem(f"fixed_p.{modality}", f"is an update ratio and must lie in [0, 1], got {ratio}."))
        return problems

    @property
    def clamps(self) -> bool:
        return self.formula == "code" if self.clamp is None else self.clamp


# ----------------------------------------------------------------------------- modal significance


def label_entropy(labels: Tensor, num_classes: int) -> Tensor:
    """Eq. 2: H(Y) = −Σ_c p(y_c)·log p(y_c) with p(y_c) the label frequencies of the batch."""
    freq = _label_frequencies(labels, num_classes)
    return -torch.special.xlogy(freq, freq).sum()


def code_label_entropy(labels: Tensor, num_classes: int) -> Tensor:
    """The official code's H(Y): ``CrossEntropyLoss(p, p)`` = −Σ_c p_c·log softmax(p)_c, c = 0..max label."""
    freq = _label_frequencies(labels, num_classes)
    present = torch.arange(num_classes, device=labels.device) <= labels.max()  # the length of bincount(labels)
    log_norm = torch.logsumexp(freq.masked_fill(~present, float("-inf")), dim=0)
    return -(freq * (freq - log_norm)).sum()


def _label_frequencies(labels: Tensor, num_classes: int) -> Tensor:
    # scatter_add, not bincount: CUDA bincount reads the largest label back to the host.
    ones = torch.ones(labels.shape, device=labels.device)
    return torch.zeros(num_classes, device=labels.device).scatter_add_(0, labels, ones) / labels.shape[0]


def expected_log_likelihood(unimodal_logits: Tensor, labels: Tensor) -> Tensor:
    """Eq. 2: E[log q(y | x^(k))] = (1/B) Σ_i log softmax(logits^(k)_i)_{y_i}; (K, B, C) logits → (K,)."""
    log_q = unimodal_logits.float().log_softmax(dim=-1)
    picked = log_q.gather(-1, labels.view(1, -1, 1).expand(log_q.shape[0], -1, 1))
    return picked.mean(dim=(1, 2))


def feature_entropy(features: Sequence[Tensor]) -> Tensor:
    """H(X^(k)) estimate: batch mean of the entropy of softmax(φ^(k)) over the feature dimensions (the code's)."""

    def entropy(x: Tensor) -> Tensor:
        log_s = x.float().log_softmax(dim=-1)
        return -(log_s.exp() * log_s).sum(-1).mean(-1)

    if len({tuple(f.shape) for f in features}) == 1:
        return entropy(torch.stack(list(features)))
    return torch.stack([entropy(f) for f in features])


def modal_significance(h_y: Tensor, log_likelihood: Tensor, h_x: Tensor, *, offset: float = 0.0) -> Tensor:
    """Eq. 2 over H(X): ξ^(k) = (H(Y) + E[log q(y | x^(k))] + offset) / H(X^(k)) (offset 0.5 in the code)."""
    return (h_y + log_likelihood + offset) / h_x.clamp_min(1e-12)


def momentum_update(u: Tensor | None, xi: Tensor, lam: float) -> Tensor:
    """Eq. 3: u ← λ·u + (1 − λ)·ξ; the first call (u is None) starts the average at ξ."""
    return xi.clone() if u is None else torch.lerp(xi, u, lam)


def update_ratio(u: Tensor, tau: float) -> Tensor:
    """Eq. 4: p^(k) = 1 − exp(u^(k)/τ) / Σ_j exp(u^(j)/τ)."""
    return 1.0 - torch.softmax(u / tau, dim=0)


def code_update_ratio(xi: Tensor, numerator: Tensor, tau: float) -> Tensor:
    """The official code's Eq. 4: 1 − softmax(ξ/τ); 0.5 for all when any numerator ≤ 0; NaN → 0.5."""
    p = torch.where((numerator > 0).all(), 1.0 - torch.softmax(xi / tau, dim=0), torch.full_like(xi, 0.5))
    return torch.nan_to_num(p, nan=0.5)


# ----------------------------------------------------------------------------- mask units and importance


def mask_layers(model: MultimodalModel, modalities: Sequence[str], *, scope: str, unit: str) -> list[MaskLayer]:
    """Every masked layer of every modality's subnetwork (``scope``: backbone | classifier | both), each
    tagged with its modality's index; the units are the model's (:meth:`MultimodalModel.mask_units`)."""
    layers = [dataclasses.replace(layer, modality=k)
              for k, m in enumerate(modalities) for layer in model.mask_units(m, scope=scope, unit=unit)]
    seen: set[tuple[int, tuple[int, int] | None]] = set()
    unique = []
    for layer in layers:  # a parameter shared by two modules is masked once
        keys = {(id(piece.param), piece.columns) for piece in layer.pieces}
        if not keys & seen:
            unique.append(layer)
            seen.update(keys)
    return unique


def unit_fisher(layer: MaskLayer, squared: Sequence[Tensor]) -> Tensor:
    """Σ of the diagonal Fisher over each of the layer's C_l units; ``squared`` holds one tensor per piece."""
    total = None
    for piece, sq in zip(layer.pieces, squared, strict=True):
        per_unit = piece.of(sq) if piece.columns is not None or sq.shape == piece.shape else sq.reshape(piece.shape)
        per_unit = per_unit.sum(piece.reduce) if piece.reduce else per_unit.reshape(-1)
        total = per_unit if total is None else total + per_unit
    return total


def fisher_importance(unit_fishers: Tensor) -> Tensor:
    """Eq. 5: w_j = F_j / Σ_l F_l within each row (layer). A row of zeros becomes uniform."""
    tiny = torch.finfo(unit_fishers.dtype).tiny  # a unit with no gradient is drawn last, never divides by 0
    f = unit_fishers + tiny
    return f / f.sum(dim=-1, keepdim=True)


def per_sample_fisher(model: MultimodalModel, params: Sequence[nn.Parameter], batch: Batch) -> list[Tensor]:
    """Eq. 5 literally: F_j = (1/B) Σ_i (∂ℓ_i/∂w_j)², ℓ_i = CE(joint logits of x_i, y_i), for ``params``.

    Per-sample gradients come from ``torch.func`` (vmap of grad over the batch), in chunks of at most
    ``PER_SAMPLE_BUDGET`` gradient floats. BatchNorm layers use their running statistics in this pass.
    """
    from torch.func import functional_call, grad, vmap

    names = {id(p): n for n, p in model.named_parameters()}
    keys = [names[id(p)] for p in params]

    def sample_loss(sub: dict[str, Tensor], x: dict[str, Tensor], y: Tensor, keep: dict[str, Tensor] | None) -> Tensor:
        x = {m: v.unsqueeze(0) for m, v in x.items()}
        keep = None if keep is None else {m: v.unsqueeze(0) for m, v in keep.items()}
        out = functional_call(model, sub, (x,), {"drop": keep})
        return F.cross_entropy(out.logits, y.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0, None if batch.drop is None else 0))
    n = len(batch)
    chunk = max(1, min(n, PER_SAMPLE_BUDGET // max(1, sum(p.numel() for p in params))))
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    sub = {k: p.detach() for k, p in zip(keys, params, strict=True)}
    total = [torch.zeros_like(p) for p in params]
    for m in norms:
        m.train(False)
    try:
        # no_grad stops ordinary autograd from recording the pass; torch.func.grad ignores it.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="There is a performance drop")  # vmap fallbacks (CPU attention)
            for start in range(0, n, chunk):
                part = slice(start, start + chunk)
                drop = None if batch.drop is None else {m: v[part] for m, v in batch.drop.items()}
                grads = per_sample(sub, {m: v[part] for m, v in batch.inputs.items()}, batch.labels[part], drop)
                torch._foreach_add_(total, [grads[k].square().sum(0) for k in keys])
    finally:
        for m in norms:
            m.train(True)
    torch._foreach_div_(total, float(n))
    return total


# ----------------------------------------------------------------------------- sampling and masks


def sample_count(p: Tensor | float, units: int) -> Tensor:
    """Eq. 6: ⌈p^(k)·C_l⌉ units per row (as a float tensor, for device-side comparisons).

    Counted in float64, less a tolerance of two float32 ulps of p times C_l (2^-23·C_l, the precision p
    has): p = 0.15 is 0.15000000596 in float32 and 0.15000000000000002 as a Python float, so a plain
    ceil would draw 16 of 100 units, not 15. A p within 2^-23 above k/C_l counts as k/C_l.
    """
    product = torch.as_tensor(p).to(torch.float64) * units
    return torch.ceil(product - units * 2.0**-23).clamp_min(0.0).to(torch.float32)


def sample_mask(weights: Tensor, counts: Tensor, generator: torch.Generator | None) -> Tensor:
    """Eq. 1/6: per row, ``counts`` units without replacement with P ∝ ``weights``; 0/1 mask of the same shape.

    The exponential race of ``torch.multinomial(replacement=False)``: keep the top-n of w_j / E_j,
    E_j ~ Exp(1). One sort for all rows, each with its own n; nothing is read back to the host.
    """
    keys = weights / torch.empty_like(weights).exponential_(generator=generator)
    order = keys.argsort(dim=-1, descending=True)
    ranks = torch.arange(weights.shape[-1], device=weights.device)
    chosen = (ranks < counts.unsqueeze(-1)).to(weights.dtype)
    return torch.zeros_like(weights).scatter_(-1, order, chosen)


def unbiased_mask(mask: Tensor, importance: Tensor) -> Tensor:
    """Eq. 7–8 (AMSS+): m_j = 1/(p_j + a) on sampled units, 0 elsewhere, with p_j the unit's normalised
    importance (Eq. 5) and a = 1/C_l."""
    a = 1.0 / mask.shape[-1]
    return mask * (1.0 / (importance + a))


# ----------------------------------------------------------------------------- the strategy


@dataclass
class _Group:
    """Layers with the same number of mask units, sampled together as the rows of one matrix."""

    units: int
    layers: list[MaskLayer]
    rows: Tensor  # (R,) modality index of each row
    uniform: Tensor  # (R, C) 1/C, the weights of uniform sampling


@register
class AMSS(BalancingMethod):
    name = "amss"
    Config = AMSSConfig
    state = ("u",)  # the momentum u^(k) of Eq. 3, carried across epochs and checkpointed
    paper = "AMSS / AMSS+ — Yang et al., TPAMI 2025, DOI 10.1109/TPAMI.2025.3547417, arXiv:2404.08347"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.u: Tensor | None = None  # momentum u^(k) of Eq. 3, on the device
        self.fixed: Tensor | None = None  # (K,) p^(k) of fixed_p (Table I's MS), else None

    def bind(self, model: MultimodalModel) -> None:
        cfg: AMSSConfig = self.config
        if cfg.fixed_p is not None:
            if set(cfg.fixed_p) != set(self.modalities):
                raise ConfigError([Problem("params.fixed_p", (
                    f"names modalities {sorted(cfg.fixed_p)}, but the dataset's are {list(self.modalities)}; give "
                    "one update ratio per modality, e.g. fixed_p: {" + ", ".join(f"{m}: 1.0" for m in self.modalities)
                    + "}, or null for adaptive AMSS."))])
            self.fixed = torch.tensor([float(cfg.fixed_p[m]) for m in self.modalities], device=self.device)
        if cfg.mask_scope != "backbone":
            headless = [m for m in self.modalities
                        if not model.fusion.owned_parameters(m) and not model.fusion.owned_columns(m)]
            if headless:
                raise ConfigError([Problem("params.mask_scope", (
                    f"is '{cfg.mask_scope}', but fusion '{model.fusion.name}' gives modalities {headless} no "
                    "classifier part of their own (neither a head, Fusion.owned_parameters, nor a column block "
                    "of a shared head, Fusion.owned_columns). Use model.fusion=concat or late, or "
                    "mask_scope=backbone."))])
        layers = mask_layers(model, self.modalities, scope=cfg.mask_scope, unit=cfg.mask_unit)
        empty = [m for k, m in enumerate(self.modalities) if not any(layer.modality == k for layer in layers)]
        if empty:
            raise ConfigError([Problem("params.mask_scope", (
                f"'{cfg.mask_scope}' finds no weight matrix to mask for modalities {empty} "
                f"(backbone '{type(model.encoders[empty[0]]).__name__}')."))])
        by_units: dict[int, list[MaskLayer]] = {}
        for layer in layers:
            by_units.setdefault(layer.units, []).append(layer)
        self.groups = [
            _Group(c, ls, torch.tensor([layer.modality for layer in ls], device=self.device),
                   torch.full((len(ls), c), 1.0 / c, device=self.device))
            for c, ls in by_units.items()
        ]
        self.params = list({id(piece.param): piece.param for layer in layers for piece in layer.pieces}.values())

    # -- Eq. 2–4 --------------------------------------------------------------------------------
    @torch.inference_mode()  # as no_grad, minus autograd's per-op bookkeeping: nothing here is differentiated
    def update_ratios(self, model: MultimodalModel, out: ModelOutput, labels: Tensor) -> tuple[Tensor, Tensor]:
        """ξ^(k) of this batch and p^(k) (updating u^(k)); both (K,) in ``self.modalities`` order."""
        cfg: AMSSConfig = self.config
        features = [out.features[m] for m in self.modalities]  # no_grad: nothing joins the graph
        uni = model.modality_logits(dict(zip(self.modalities, features, strict=True)))
        log_lik = expected_log_likelihood(torch.stack([uni[m] for m in self.modalities]), labels)
        h_x = feature_entropy(features)
        if cfg.formula == "paper":
            xi = modal_significance(label_entropy(labels, self.num_classes), log_lik, h_x)
            self.u = momentum_update(self.u, xi, cfg.lam)
            p = update_ratio(self.u, cfg.tau)
        else:
            numerator = code_label_entropy(labels, self.num_classes) + log_lik + 0.5
            xi = numerator / h_x.clamp_min(1e-12)
            self.u = xi
            p = code_update_ratio(xi, numerator, cfg.tau)
        if self.fixed is not None:  # Table I: ξ and u still traced, p given
            return xi, self.fixed
        if cfg.clamps:
            p = p.clamp(cfg.p_min, cfg.p_max)
        return xi, p

    # -- Eq. 1, 5–8 -----------------------------------------------------------------------------
    def modulate_gradients(self, model: MultimodalModel, out: ModelOutput, batch: Batch, ctx: StepContext) -> None:
        cfg: AMSSConfig = self.config
        xi, p = self.update_ratios(model, out, batch.labels)
        grads = {id(q): q.grad for q in self.params}
        squared = None
        if cfg.sampling == "fisher":
            if cfg.fisher == "per_sample":
                squared = dict(zip(grads, per_sample_fisher(model, self.params, batch), strict=True))
            else:
                present = [g for g in grads.values() if g is not None]
                squared = dict(zip([i for i, g in grads.items() if g is not None],
                                   torch._foreach_mul(present, present), strict=True))
        targets, factors = [], []
        with torch.inference_mode():
            for group in self.groups:
                counts = sample_count(p.index_select(0, group.rows), group.units)
                if squared is None:
                    weights = group.uniform
                else:
                    weights = fisher_importance(torch.stack([
                        unit_fisher(layer, [self._squared(squared, piece) for piece in layer.pieces])
                        for layer in group.layers
                    ]))
                mask = sample_mask(weights, counts, ctx.generator)
                if cfg.plus:
                    mask = unbiased_mask(mask, weights)
                for layer, row in zip(group.layers, mask.unbind(0), strict=True):
                    for piece in layer.pieces:
                        g = grads[id(piece.param)]
                        if g is not None:
                            target, factor = piece.masked(g, row)
                            targets.append(target)
                            factors.append(factor)
            if targets:
                torch._foreach_mul_(targets, factors)
        self.traces.add_many("xi", xi, self.modalities)
        self.traces.add_many("u", self.u, self.modalities)
        self.traces.add_many("p", p, self.modalities)

    @staticmethod
    def _squared(squared: dict[int, Tensor], piece: MaskPiece) -> Tensor:
        sq = squared.get(id(piece.param))
        return sq if sq is not None else torch.zeros(piece.param.shape, device=piece.param.device)
