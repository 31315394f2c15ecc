"""Greedy: conditional learning speed and balanced multi-modal learning (re-balancing steps).

Paper: Wu, Jastrzębski, Cho, Geras, "Characterizing and overcoming the greedy nature of learning in
multi-modal deep neural networks", ICML 2022, arXiv:2202.05306. Official code:
github.com/nyukat/greedy_multimodal_learning (read at a190e03; ``src/callbacks.py``
``Bias_Mitigation_Strong``, ``src/balanced_mmtm.py`` ``MMTM_mitigate``, ``configs/training_guided.gin``;
"the code" below); re-implemented in GeWu-Lab/BalanceBenchmark (``balancemm/trainer/Greedy_trainer.py``).

Sources. Only the paper's abstract and summaries could be read here (no copy of its body was
reachable), so no equation numbers are cited: the quantities below are the abstract's definitions
made concrete by the official code, whose lines they follow.

The quantities:
* Conditional utilisation rate (abstract: "the gain on the accuracy when the model has access to it
  in addition to another modality"), u(m0 | m1) = (A(m0, m1) − A(m1)) / A(m0, m1), with A(S) the
  model's accuracy when only the modalities in S are present; for M modalities u(m | rest) =
  (A(𝓜) − A(𝓜∖{m})) / A(𝓜). Its imbalance d_util = u(m1 | m0) − u(m0 | m1).
* The effective learning rate of a parameter group θ at step t (the code's ``gn / wn``):
  μ(θ; t) = ‖∇_θ L_t‖² / ‖θ_t‖², both taken after backward and before the optimizer step.
* Conditional learning speed (the code's ``BDR``): s_m = log10(Σ_{τ≤t} μ(θ_m^fuse; τ) / Σ_{τ≤t}
  μ(θ_m; τ)): how fast the model learns modality m's branch through the fusion (the code: the MMTM
  layers that feed the other modality into branch m) against how fast it learns m's own branch θ_m.
  The sums run over every normal step so far (not an average, not reset per epoch).
* Balanced multi-modal learning (Algorithm 1 as the code runs it): after the backward of each
  *normal* step compute d = s_0 − s_1; if |d| > α, the next Q steps (the re-balancing window,
  ``curation_windowsize``) are *re-balancing* steps for the modality with the larger s (d > 0 →
  modality 0: its own branch learns the slower), after which normal steps resume. The learning speed
  is not accumulated during re-balancing steps (the code calls ``compute_BDR`` only on normal steps).

Equation → function:
* u(m | rest): :func:`conditional_utilization`; d_util: :func:`utilization_difference`; the
  accuracies A(𝓜), A(𝓜∖{m}): :meth:`Greedy.subset_accuracies` (``model.subset_logits``).
* ‖∇θ‖², ‖θ‖² of a group (whole tensors and column blocks): :func:`group_norms`; μ:
  :func:`effective_learning_rate`.
* s_m: :func:`conditional_learning_speed`; the trigger |s_0 − s_1| > α and the cared modality:
  :func:`rebalance_target` (M modalities: max_m s_m − min_m s_m > α, the argmax is cared for).
* The window Q and the frozen branches: :meth:`Greedy.modulate_gradients`.

Interpretations (our architecture has no MMTM layers between the branches):
* The "fusion" group θ_m^fuse of modality m: its block W^m of a shared head (``concat``: the columns
  that act on φ^m, ``fusion.owned_columns``); for a fusion without such blocks (``sum``, ``film``,
  ``gated``) the fusion's shared parameters (the code adds MMTM's shared squeeze layer to every
  modality's bypass the same way). ``late`` has neither (each head is the modality's own), so it
  needs ``speed: branch``. ``speed: branch`` drops the fusion term: s_m = −log10 Σ μ(θ_m) (the
  modality whose branch has accumulated the least effective learning is cared for).
* The branch θ_m: ``model.modality_parameters()`` (encoder m, plus its own head under ``late``).
* A re-balancing step (``rebalance: freeze``, default; **our interpretation**, not a quote of the
  paper, whose body could not be read): the other modalities' branches get no update (their gradients are set to None,
  so SGD momentum and weight decay do not move them either); the fusion head and the cared branch
  update. ``freeze_scope: encoder`` freezes only the encoders (their own late heads still learn).
  The code instead changes the *forward* of a re-balancing step: branch m's MMTM scaling is replaced by
  its running average (the cross-modal flow into m is cut), every parameter still updating. No fusion
  here carries cross-modal flow into a branch, so that rule has no analogue and is not offered.
* A(S) uses the zero-feature rule (absent modalities' features set to zero before the fusion, as AGM),
  where the paper replaces the absent flow by its average; measured on the training split at the end
  of each epoch (``utilization: true``; eval mode, no gradient), the trial's evaluation stays as it is.
* The window (``start_epoch``, the code's ``starting_epoch=2``): with ``history: all`` (default, the
  code) the learning speed accumulates from the first step and re-balancing only starts inside the
  window; ``history: window`` accumulates only inside it. After ``end_epoch`` everything stops and a
  pending re-balancing window is dropped.
* One host sync per normal step inside the window (the trigger decides which gradients to drop), as
  the code's ``.item()`` calls.

Defaults: α = 0.01 and Q = 5 from ``configs/training_guided.gin`` (``epsilon``,
``curation_windowsize``); ``start_epoch`` stays 1 (the code's 2 is ``start_epoch=3`` here if its
epochs are 0-based — not checked).

Traces (means over the epoch's steps): ``trace/learning_speed/<m>`` (s_m, normal steps),
``trace/effective_lr/<m>`` (μ(θ_m; t), normal steps), ``trace/rebalance/<m>`` (share of the epoch's
steps that were re-balancing steps caring for m; Σ_m = the re-balancing-step share),
``trace/utilization/<m>`` (u(m | rest)) and ``trace/d_util/<m>`` (u(m | rest) − mean of the others'; for
two modalities d_util/<m1> = u(m1|m0) − u(m0|m1)), the last two once per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mmtune.config import hp
from mmtune.data.base import Batch
from mmtune.engine.method import BalancingMethod, MethodConfig, StepContext
from mmtune.engine.registry import register
from mmtune.errors import ConfigError, Problem
from mmtune.models.multimodal import ModelOutput, MultimodalModel

__all__ = [
    "Greedy", "GreedyConfig", "conditional_utilization", "utilization_difference", "group_norms",
    "effective_learning_rate", "conditional_learning_speed", "rebalance_target",
]

# A parameter group: whole tensors, or (weight, start, stop) column blocks weight[:, start:stop].
Member = nn.Parameter | tuple[nn.Parameter, int, int]


@dataclass(frozen=True)
class GreedyConfig(MethodConfig):
    alpha: float = hp(0.01, low=0.0, doc="threshold α on the learning-speed gap |s_0 − s_1| (code epsilon 0.01)")
    window: int = hp(5, low=1, doc="re-balancing window Q: steps of re-balancing after a trigger (code 5)")
    speed: str = hp("code", choices=("code", "branch"),
                    doc="s_m = log10(Σμ fusion_m / Σμ branch_m) (code) or −log10 Σμ branch_m (no fusion term)")
    rebalance: str = hp("freeze", choices=("freeze", "none"),
                        doc="re-balancing steps update only the cared branch (freeze) or nothing changes (none: monitor only)")
    freeze_scope: str = hp("branch", choices=("branch", "encoder"),
                           doc="what is frozen of the other modalities: encoder + own head (branch) or the encoder only")
    history: str = hp("all", choices=("all", "window"),
                      doc="accumulate the learning speed from the first step (code) or only inside the window")
    utilization: bool = hp(True, doc="trace u(m | rest) and d_util on the training split at each epoch's end")


# ----------------------------------------------------------------------------- pure functions

def conditional_utilization(acc_all: Tensor, acc_without: Tensor) -> Tensor:
    """u(m | rest) = (A(𝓜) − A(𝓜∖{m})) / A(𝓜) for each m: (,) and (M,) → (M,); 0 where A(𝓜) = 0."""
    safe = acc_all.clamp_min(torch.finfo(acc_without.dtype).tiny)
    return torch.where(acc_all > 0, (acc_all - acc_without) / safe, torch.zeros_like(acc_without))


def utilization_difference(u: Tensor) -> Tensor:
    """d_m = u_m − mean_{k≠m} u_k, (M,) → (M,); for M = 2, d_1 = u(m1|m0) − u(m0|m1) (the paper's d_util)."""
    m = u.shape[0]
    return u - (u.sum() - u) / (m - 1)


def group_norms(members: Sequence[Member]) -> tuple[Tensor, Tensor]:
    """(‖∇θ‖², ‖θ‖²) of a parameter group; a member without a gradient counts as a zero gradient."""
    grad_sq, weight_sq = [], []
    for member in members:
        p, block = (member[0], (slice(None), slice(member[1], member[2]))) if isinstance(member, tuple) else (member, ...)
        w = p.detach()[block]
        weight_sq.append(w.square().sum())
        if p.grad is not None:
            grad_sq.append(p.grad.detach()[block].square().sum())
    zero = weight_sq[0].new_zeros(()) if weight_sq else torch.zeros(())
    return (torch.stack(grad_sq).sum() if grad_sq else zero), (torch.stack(weight_sq).sum() if weight_sq else zero)


def effective_learning_rate(grad_sq: Tensor, weight_sq: Tensor) -> Tensor:
    """μ = ‖∇θ‖² / ‖θ‖² (the code's gn / wn); 0 where ‖θ‖ = 0."""
    safe = weight_sq.clamp_min(torch.finfo(weight_sq.dtype).tiny)
    return torch.where(weight_sq > 0, grad_sq / safe, torch.zeros_like(grad_sq))


def conditional_learning_speed(fusion_sum: Tensor | None, branch_sum: Tensor) -> Tensor:
    """s_m = log10(Σμ(θ_m^fuse) / Σμ(θ_m)) (the code's BDR); ``fusion_sum`` None: −log10 Σμ(θ_m)."""
    tiny = torch.finfo(branch_sum.dtype).tiny
    speed = -torch.log10(branch_sum.clamp_min(tiny))
    if fusion_sum is not None:
        speed = speed + torch.log10(fusion_sum.clamp_min(tiny))
    return speed


def rebalance_target(speeds: Tensor, alpha: float) -> int | None:
    """The modality to care for, or None: max_m s_m − min_m s_m > α → argmax s (M = 2: |s_0 − s_1| > α,
    modality 0 when s_0 − s_1 > 0, as the code's sign rule). One host read."""
    gap = (speeds.max() - speeds.min()).item()
    return int(speeds.argmax().item()) if gap > alpha else None


# ----------------------------------------------------------------------------- the strategy

@register
class Greedy(BalancingMethod):
    name = "greedy"
    Config = GreedyConfig
    paper = "Greedy (balanced multi-modal learning) — Wu et al., ICML 2022, arXiv:2202.05306"
    # The learning speed accumulates before the window (history: all, as the code); the hook checks
    # ctx.modulating itself before it re-balances.
    always_active = True
    state = ("sums", "remaining", "caring")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        m = len(self.modalities)
        self.sums: Tensor = torch.zeros(2, m, device=self.device)  # rows: Σμ fusion_m, Σμ branch_m
        self.remaining = 0  # re-balancing steps left in the current window
        self.caring = -1  # index of the cared modality during a window
        self._zeros = torch.zeros(m, device=self.device)  # the rebalance trace of a normal step

    def bind(self, model: MultimodalModel) -> None:
        cfg: GreedyConfig = self.config
        if len(self.modalities) < 2:
            raise ConfigError([Problem("dataset.modalities", (
                f"Greedy balances two or more modalities, got {self.modalities}; use method=joint or unimodal."))])
        self.branches: dict[str, list[Member]] = dict(model.modality_parameters(heads=True))
        self.frozen = model.modality_parameters(heads=cfg.freeze_scope == "branch")
        self.fusion_groups: dict[str, list[Member]] | None = None
        if cfg.speed == "code":
            groups = {m: list(model.fusion.owned_columns(m)) for m in self.modalities}
            if not all(groups.values()):
                shared = model.shared_parameters()
                groups = {m: list(shared) for m in self.modalities}
            if not all(groups.values()):
                raise ConfigError([Problem("params.speed", (
                    f"'code' needs fusion parameters through which each modality reaches the prediction; fusion "
                    f"'{model.fusion.name}' has none besides each modality's own head. Use speed=branch."))])
            self.fusion_groups = groups

    def modulate_gradients(self, model: MultimodalModel, out: ModelOutput, batch: Batch, ctx: StepContext) -> None:
        cfg: GreedyConfig = self.config
        if not ctx.modulating:
            self.remaining = 0
            if cfg.history == "window" or ctx.epoch >= cfg.start_epoch:
                return  # after the window (or before it, history: window): plain joint steps
        if self.remaining > 0:  # a re-balancing step: only the cared branch (and the shared fusion) learns
            cared = self.modalities[self.caring]
            if cfg.rebalance == "freeze":
                for m in self.modalities:
                    if m != cared:
                        for p in self.frozen[m]:
                            p.grad = None
            self.remaining -= 1
            self.traces.add_many("rebalance", torch.nn.functional.one_hot(
                torch.tensor(self.caring, device=self.device), len(self.modalities)).float(), self.modalities)
            return
        # A normal step: accumulate μ, then decide on the next steps.
        branch = torch.stack([effective_learning_rate(*group_norms(self.branches[m])) for m in self.modalities])
        self.sums[1] += branch
        fusion_sum = None
        if self.fusion_groups is not None:
            self.sums[0] += torch.stack([effective_learning_rate(*group_norms(self.fusion_groups[m])) for m in self.modalities])
            fusion_sum = self.sums[0]
        speeds = conditional_learning_speed(fusion_sum, self.sums[1])
        self.traces.add_many("learning_speed", speeds, self.modalities)
        self.traces.add_many("effective_lr", branch, self.modalities)
        if ctx.modulating:
            self.traces.add_many("rebalance", self._zeros, self.modalities)
            target = rebalance_target(speeds, cfg.alpha)
            if target is not None:
                self.caring, self.remaining = target, cfg.window

    @torch.no_grad()
    def subset_accuracies(self, model: MultimodalModel, ctx: StepContext) -> tuple[Tensor, Tensor]:
        """A(𝓜) and A(𝓜∖{m}) for each m on the training split (zero-feature rule), eval mode."""
        subsets = [tuple(self.modalities)] + [tuple(k for k in self.modalities if k != m) for m in self.modalities]
        was_training = model.training
        model.eval()
        correct = torch.zeros(len(subsets), device=self.device)
        n = 0
        try:
            for batch in ctx.train.batches(ctx.batch_size or 256):
                logits = model.subset_logits(model.encode(batch.inputs), subsets)
                correct += (logits.argmax(-1) == batch.labels.unsqueeze(0)).float().sum(1)
                n += len(batch)
        finally:
            model.train(was_training)
        acc = correct / max(n, 1)
        return acc[0], acc[1:]

    def end_epoch(self, ctx: StepContext) -> dict[str, float]:
        if self.config.utilization and ctx.model is not None and ctx.train is not None and self.in_window(ctx.epoch):
            u = conditional_utilization(*self.subset_accuracies(ctx.model, ctx))
            self.traces.add_many("utilization", u, self.modalities)
            self.traces.add_many("d_util", utilization_difference(u), self.modalities)
        return super().end_epoch(ctx)
