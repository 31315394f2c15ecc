"""AMCo: adaptive mask co-optimisation for modal dependence.

Paper: Zhou et al., 2023, adaptive mask co-optimisation for modal dependence in multimodal learning
(as the issue names it; the exact title, venue and arXiv id could not be verified here: BalanceBenchmark
names the method without a citation, and no paper page was reachable). No official code was found; the method is re-implemented in
GeWu-Lab/BalanceBenchmark (``balancemm/trainer/AMCo_trainer.py``, ``BaseClassifierAMCoModel`` in
``balancemm/models/avclassify_model.py``, ``configs/trainer_config.yaml`` → ``AMCo``; "the code" below).

Sources. The paper's body could not be read, so every equation below comes from the code, not from
the paper; nothing here quotes the paper.

The quantities (z^m: modality m's block of the fused logits, ``model.unimodal_logits``; concat: the
exact split W^m·φ^m + b/M, as the code's ``unimodality_calculate``):
* Modal dependence d_m = (1/B) Σ_b Σ_{c} softmax([z^1 ‖ … ‖ z^M]_b)[block m, c]: the share of the
  softmax mass over the *concatenated* unimodal logits (M·C entries) that falls on modality m's block.
  Σ_m d_m = 1. Modality m is *dependent* (dominant) when d_m > σ (code σ = 0.5).
* Mask ratio p_t = sin(π/2 · min(ε, ℓ_t)/ε), with ℓ_t reset to 0 at each epoch's start and increased
  by (e−1)·κ after every step of (1-based) epoch e (the code: ``l_t += current_epoch/10``, 0-based
  epoch, κ = 1/10). p_t = 0 all through the first epoch; from epoch 2 on it reaches 1 after ⌈ε/((e−1)κ)⌉ steps.
* The mask: N = ⌊p_t·C⌋ of the C classes chosen at random are zeroed, mask ∈ {0,1}^C, one per step.
* Masked fused logits: ẑ = Σ_m μ_m ⊙ z^m with μ_m = mask if m was dependent at the previous step,
  else 1 (computed as z − Σ_m (1 − μ_m) ⊙ z^m, the same for additive fusions).
* Co-optimisation loss: L = CE(ẑ, y) + Σ_m CE(z^m, y) (the code backpropagates the fused loss, then
  each unimodal loss, into the same gradients: the sum).
* The dependence flags are recomputed from this step's (unmasked) z^m after the loss and are used by
  the next step; they start False at every epoch.

Equation → function: d_m: :func:`modal_dependence`; the flags: :func:`dependent_modalities`; p_t:
:func:`mask_ratio`; ℓ_t: :func:`advance_progress`; the class mask: :func:`class_mask`; ẑ:
:func:`masked_logits`; L: :meth:`AMCo.extra_loss`.

Composition: AMCo does not replace the task loss (G-Blending does, and two such methods cannot compose);
it adds ``extra_loss`` = CE(ẑ, y) − CE(z, y) + Σ_m CE(z^m, y) to the loop's task loss CE(z, y), so alone
the total is exactly L (the ±CE(z) gradients cancel). ``fused_loss: both`` (ours) drops the − CE(z)
term, keeping the unmasked fused loss beside the masked one; use it when composing with a method that
replaces the task loss (G-Blending), whose loss has no plain CE(z) to cancel.

Departures of the code from what its names suggest, and how offered:
* The code masks the dominant modality's unimodal *logits* over classes (``unimodal_result * mask``),
  not its encoder features; we follow the code.
* The code's mask has shape (2, C) (``expand(2, -1)``), which broadcasts against a (B, C) batch only
  when B = 2; we take the evident intent, one mask for the whole batch (``mask_scope: batch``), and
  offer an independent mask per sample (``mask_scope: sample``, ours).
* The code passes the fused logits through an extra C×C linear layer (``linear_star``) after the sum;
  our fusion head is the model's own and the evaluated prediction must be the fused logits, so it is
  not added (not offered).
* ``alpha``, ``U``, ``method`` and ``modality`` in the code's config are unused by its trainer; not offered.
* The unimodal losses: ``unimodal_loss: true`` (code) or false (the fused masked loss alone, ours).
* ``fused_loss`` (see Composition): ``masked`` is the code's objective.
* Defaults from the code's config: σ = 0.5, ε = 0.3, κ = 0.1; modulation over the whole run
  (``modulation_starts: 0``, ``modulation_ends: 80``). Outside the window the task loss is plain CE, as the code.

Traces (means over the epoch's steps in the window): ``trace/dependence/<m>`` (d_m),
``trace/dependent/<m>`` (share of steps on which m's logits were masked), ``trace/mask_ratio/<m>``
(the share of classes masked for m: p_t's ⌊p_t·C⌋/C where m was dependent, else 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmtune.config import hp
from mmtune.data.base import Batch
from mmtune.engine.method import BalancingMethod, MethodConfig, StepContext
from mmtune.engine.registry import register
from mmtune.errors import ConfigError, Problem
from mmtune.models.multimodal import ModelOutput, MultimodalModel

__all__ = [
    "AMCo", "AMCoConfig", "modal_dependence", "dependent_modalities", "mask_ratio", "advance_progress",
    "class_mask", "masked_logits",
]


@dataclass(frozen=True)
class AMCoConfig(MethodConfig):
    sigma: float = hp(0.5, low=0.0, high=1.0, doc="dependence threshold σ: m is dominant when d_m > σ (code 0.5)")
    eps: float = hp(0.3, low=1e-9, doc="ε: the mask ratio sin(π/2·min(ε, ℓ)/ε) saturates at ℓ = ε (code 0.3)")
    kappa: float = hp(0.1, low=0.0, doc="κ: ℓ grows by (epoch−1)·κ per step, reset each epoch (code 1/10)")
    mask_scope: str = hp("batch", choices=("batch", "sample"),
                         doc="one class mask per step for the whole batch (code intent) or one per sample (ours)")
    unimodal_loss: bool = hp(True, doc="add Σ_m CE(z^m, y) to the masked fused loss (code) or not (ours)")
    fused_loss: str = hp("masked", choices=("masked", "both"),
                         doc="the fused term: CE(ẑ) in place of CE(z) (code) or CE(z) + CE(ẑ) (ours)")


# ----------------------------------------------------------------------------- pure functions

def modal_dependence(unimodal: Tensor) -> Tensor:
    """d_m: (M, B, C) unimodal logits → (M,), the batch-mean softmax mass of m's block in the softmax over
    the concatenation [z^1 ‖ … ‖ z^M] (M·C entries per sample). Σ_m d_m = 1."""
    m, b, c = unimodal.shape
    probs = torch.softmax(unimodal.permute(1, 0, 2).reshape(b, m * c), dim=1).reshape(b, m, c)
    return probs.sum(dim=2).mean(dim=0)


def dependent_modalities(dependence: Tensor, sigma: float) -> Tensor:
    """The dominance flags d_m > σ, (M,) bool."""
    return dependence > sigma


def mask_ratio(progress: float, eps: float) -> float:
    """p = sin(π/2 · min(ε, ℓ)/ε) ∈ [0, 1]."""
    return math.sin(math.pi / 2 * (min(eps, progress) / eps))


def advance_progress(progress: float, epoch: int, kappa: float) -> float:
    """ℓ after one step of (1-based) epoch e: ℓ + (e − 1)·κ (the code's ``l_t += current_epoch/10``)."""
    return progress + (epoch - 1) * kappa


def class_mask(ratio: float, num_classes: int, rows: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> Tensor:
    """(rows, C) float mask with N = ⌊ratio·C⌋ zeros per row at random classes (the rest ones)."""
    n = int(ratio * num_classes)
    mask = torch.ones(rows, num_classes, device=device)
    if n > 0:
        order = torch.rand(rows, num_classes, generator=generator, device=device).argsort(dim=1)
        mask.scatter_(1, order[:, :n], 0.0)
    return mask


def masked_logits(fused: Tensor, unimodal: Tensor, dependent: Tensor, mask: Tensor) -> Tensor:
    """ẑ = z − Σ_m [m dependent]·(1 − mask) ⊙ z^m: fused (B, C), unimodal (M, B, C), dependent (M,) bool,
    mask (B or 1, C). For additive fusions (z = Σ z^m) this is Σ_m μ_m ⊙ z^m."""
    removed = (1.0 - mask).unsqueeze(0) * unimodal * dependent.to(unimodal.dtype).view(-1, 1, 1)
    return fused - removed.sum(dim=0)


# ----------------------------------------------------------------------------- the strategy

@register
class AMCo(BalancingMethod):
    name = "amco"
    Config = AMCoConfig
    paper = "AMCo (adaptive mask co-optimisation for modal dependence) — Zhou et al., 2023 (venue not verified)"
    state = ("dependent", "progress")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.dependent: Tensor = torch.zeros(len(self.modalities), dtype=torch.bool, device=self.device)
        self.progress = 0.0

    def bind(self, model: MultimodalModel) -> None:
        if len(self.modalities) < 2:
            raise ConfigError([Problem("dataset.modalities", (
                f"AMCo balances two or more modalities, got {self.modalities}; use method=joint or unimodal."))])

    def begin_epoch(self, ctx: StepContext) -> None:
        super().begin_epoch(ctx)
        self.dependent = torch.zeros(len(self.modalities), dtype=torch.bool, device=self.device)
        self.progress = 0.0

    def extra_loss(self, out: ModelOutput, batch: Batch, ctx: StepContext) -> Tensor | None:
        cfg: AMCoConfig = self.config
        assert ctx.model is not None
        unimodal = torch.stack(list(ctx.model.unimodal_logits(out.features).values()))
        ratio = mask_ratio(self.progress, cfg.eps)
        rows = out.logits.shape[0] if cfg.mask_scope == "sample" else 1
        mask = class_mask(ratio, self.num_classes, rows, ctx.generator, out.logits.device)
        fused = masked_logits(out.logits, unimodal, self.dependent, mask)
        loss = F.cross_entropy(fused, batch.labels)
        if cfg.fused_loss == "masked":
            loss = loss - F.cross_entropy(out.logits, batch.labels)
        if cfg.unimodal_loss:
            loss = loss + sum(F.cross_entropy(z, batch.labels) for z in unimodal)
        flags = self.dependent.float()
        self.traces.add_many("dependent", flags, self.modalities)
        self.traces.add_many("mask_ratio", flags * (int(ratio * self.num_classes) / self.num_classes), self.modalities)
        with torch.no_grad():
            dependence = modal_dependence(unimodal.detach())
        self.traces.add_many("dependence", dependence, self.modalities)
        self.dependent = dependent_modalities(dependence, cfg.sigma)
        self.progress = advance_progress(self.progress, ctx.epoch, cfg.kappa)
        return loss
