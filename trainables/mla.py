"""MLA: multimodal learning with alternating uni-modal adaptation through a shared head.

Paper: Zhang, Yoon, Bansal, Yao, "Multimodal Representation Learning by Alternating Unimodal
Adaptation", CVPR 2024, arXiv:2311.10707. Official code: github.com/Cecile-hi/Multimodal-Learning-
with-Alternating-Unimodal-Adaptation (read at ab6c184: ``main.py`` ``train_epoch``/``valid``/
``calculate_gating_weights``, ``utils/utils.py`` ``GSPlugin``; "the code" below); re-implemented in
GeWu-Lab/BalanceBenchmark (``balancemm/trainer/MLA_trainer.py``, ``balancemm/models/avclassify_model.py``
``BaseClassifierMLAModel``; "BalanceBenchmark").

Sources. Only the paper's abstract and introduction could be read here (no copy of its method
section was reachable), so no equation numbers are cited. The abstract names the three parts —
alternating uni-modal learning, a shared head "controlled by a gradient modification mechanism to
prevent the shared head from losing previously acquired information", and "a test-time
uncertainty-based model fusion mechanism" — and the formulas below are the code's, line by line.

The scheme (inside the window, every training batch):
* One optimizer step per modality, in the model's modality order (``substeps``): substep m encodes
  only modality m, z_m = H(h_m) with h_m = φ^m (or its projection, below) and H the shared head
  Linear(d, C); L_m = CE(z_m, y); backward; the head's weight gradient is modified; optimizer step.
  Only encoder m, its projection and H get gradients; the other encoders' ``.grad`` stay None, so
  SGD momentum and weight decay leave them alone in that substep.
* Gradient modification of the head weight W (bias untouched), the code's ``GSPlugin.before_update``
  (recursive-least-squares projector of orthogonal weight modification, OWM), with r the batch mean
  of the head input h_m (1 × d) and P a d × d matrix kept for the whole trial (P_0 = I):
      α = 0.1^(1 + b / N_b)          b: batch index in the epoch, N_b: batches per epoch
      k = P rᵀ,   P ← P − k kᵀ / (α + r k),   P ← P / ‖P‖_F
      ∇W ← ∇W Pᵀ        (the code)        or   ∇W ← ∇W + ∇W Pᵀ   (BalanceBenchmark)
  skipped (P not updated either) on the trial's very first substep, as the code's ``exp_count != 0``.
* Test-time fusion (``predict``; the usual ``val_acc``/``test_acc``/… keys report it, ``val_acc/<m>``
  each modality through the shared head): per-modality entropy e_m = −Σ_c p_c log p_c of
  p = softmax(z_m), weights λ_m = exp(max_j e_j − e_m) / Σ_k exp(max_j e_j − e_k) (= softmax(−e)),
  fused logits Σ_m λ_m z_m.

Equation → function:
* α(b): :func:`owm_alpha`; the P update: :func:`update_projector`; the gradient rule:
  :func:`modify_gradient`; where they apply: :meth:`MLA.modulate_gradients`.
* e_m: :func:`prediction_entropy` (per sample) and :func:`batch_entropy` (the code's batch form);
  λ: :func:`entropy_weights`; Σ λ z: :func:`fuse_logits`; the rule: :meth:`MLA.predict`.
* L_m: :meth:`MLA.loss`; the alternation: :meth:`MLA.substeps` and :meth:`MLA.before_forward`.

Departures between the sources, offered as hyperparameters:
* ``gradient``: ``project`` (default; ∇W Pᵀ, the code's rule; at the code's last commit the rule never
  fires, because it matches the parameter name ``module.weight`` while the head it is given names its
  weight ``weight`` — the commit "Fix bugs", 2024-03-18, dropped the ``or n == "weight"`` that made it
  fire), ``add`` (BalanceBenchmark: ∇W + ∇W Pᵀ, i.e. ∇W (I + Pᵀ)), ``none`` (no modification: what
  the code's last commit runs in effect; the paper's ablation "without gradient modification").
* ``update_order``: ``update_first`` (both codes: P absorbs the current batch's r before projecting
  the current gradient, so the current modality's own mean direction is removed from its own step)
  or ``project_first`` (**ours**, the usual OWM order: project with P of the earlier substeps, then
  absorb r).
* ``normalize``: P ← P / ‖P‖_F after every update (both codes; true) or not. With it ‖P‖_F = 1, where
  ‖I‖_F = √d: the head's weight gradient shrinks by about √d besides losing the absorbed directions
  (``trace/proj`` ≈ 0.9–0.99 on the default), which acts as a smaller learning rate for the head.
* ``entropy_scope``: ``sample`` (default, BalanceBenchmark: one weight per sample) or ``batch`` (the
  code: ``softmax(dim=0)`` over the evaluation batch and the entropy summed over all B × C entries,
  one weight per modality per evaluation batch; it therefore depends on ``train.eval_batch_size``,
  which is 64 in the code and 1024 here by default).
* ``fusion_rule``: ``entropy`` (default, the code's ``--dynamic``), ``fixed`` (the code without
  ``--dynamic``: Σ w_m z_m with ``fusion_weights``; the code's are 0.55/0.45 for audio/visual and
  0.35/0.25/0.4 for audio/visual/text) or ``mean`` (equal weights).

Interpretations:
* The shared head H is the method's (``extra_parameters``), Linear(d, C), trained by the trial's
  optimizer; ``head_init``: PyTorch's default (default) or ``xavier`` (the code's ``weight_init`` on its
  CREMA-D model: Xavier-normal weight, zero bias; projections get the same); the model's own fusion head is never used (its
  parameters get no gradient and stay at their initialisation). When the encoders' feature sizes
  differ (BERT 768 vs ResNet-18 512), each modality whose size is not d gets its own Linear(d_m, d)
  projection in front of H, owned by that modality (trained only in its substep); d is ``shared_dim``,
  or, when null, the common size if all are equal (no projection: the code's case, 512 or 768) and
  the largest size otherwise.
* Substep m encodes only modality m (``batch.features``: zeros for the others, which nothing reads):
  the same result as the code, which encodes every modality once per batch before the first step,
  since a substep changes no other encoder. The code (PyTorch 1.8, ``zero_grad`` filling zeros) also
  moves the other encoders by momentum and weight decay in each substep; here their gradients are
  None, as in BalanceBenchmark (PyTorch 2).
* The window (``start_epoch``/``end_epoch``; the code runs MLA for every epoch, BalanceBenchmark
  inside ``modulation_starts``..``modulation_ends``): outside it, one joint step on CE of the fused
  prediction through the shared head (the fusion rule above, with gradient through the weights),
  BalanceBenchmark's rule; no gradient modification and no P update there. Evaluation always uses
  ``predict``.
* ``train_loss`` is the mean of the substeps' L_m (the code logs 0.55·L_a + 0.45·L_v).

Not composable: MLA replaces the joint step by one step per modality through its own head and
replaces the inference rule; an in-loop method's hooks would act on a fused step MLA never takes.

Traces: ``trace/loss/<m>`` (L_m), ``trace/entropy/<m>`` (mean prediction entropy of z_m on the
training batches), ``trace/proj/<m>`` (1 − ‖∇W modified‖ / ‖∇W‖: the fraction of the head's weight
gradient norm removed; negative when the rule amplifies it, as ``add`` does; 0 for ``none`` and for the
trial's first substep, which the code skips), all per substep of the window, averaged over the epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmtune.config import hp
from mmtune.data.base import Batch
from mmtune.engine.method import BalancingMethod, MethodConfig, StepContext
from mmtune.engine.registry import register
from mmtune.errors import ConfigError, Problem
from mmtune.models.multimodal import ModelOutput, MultimodalModel

__all__ = ["MLA", "MLAConfig", "batch_entropy", "entropy_weights", "fuse_logits", "modify_gradient", "owm_alpha",
           "prediction_entropy", "update_projector"]


@dataclass(frozen=True)
class MLAConfig(MethodConfig):
    gradient: str = hp("project", choices=("project", "add", "none"),
                       doc="head weight-gradient rule: project ∇W Pᵀ (the code), add ∇W + ∇W Pᵀ "
                           "(BalanceBenchmark), none")
    update_order: str = hp("update_first", choices=("update_first", "project_first"),
                           doc="update_first: P absorbs the batch before projecting its gradient (both codes); "
                               "project_first: project, then absorb (ours, the usual OWM order)")
    normalize: bool = hp(True, doc="divide P by its Frobenius norm after every update (both codes)")
    fusion_rule: str = hp("entropy", choices=("entropy", "mean", "fixed"),
                          doc="test-time fusion: entropy weights (the code's --dynamic), equal weights, or fusion_weights")
    entropy_scope: str = hp("sample", choices=("sample", "batch"),
                            doc="entropy weights per sample (BalanceBenchmark) or per evaluation batch (the code)")
    fusion_weights: tuple[float, ...] | None = hp(
        None, doc="fusion_rule=fixed: one weight per modality in the model's order (the code: 0.55, 0.45 audio/visual)")
    head_init: str = hp("default", choices=("default", "xavier"),
                        doc="shared head (and projections) init: PyTorch's default, or xavier-normal weight + "
                            "zero bias (the code)")
    shared_dim: int | None = hp(None, low=1, doc="shared head input size d; modalities of another size are projected "
                                                 "to it (null: the common size, or the largest if they differ)")

    def extra_checks(self) -> list[Problem]:
        problems = super().extra_checks()
        if self.fusion_rule == "fixed" and self.fusion_weights is None:
            problems.append(Problem("fusion_weights", "is null, but fusion_rule=fixed needs one weight per modality "
                                                      "(the code: [0.55, 0.45] for audio, visual)."))
        if self.fusion_weights is not None:
            if self.fusion_rule != "fixed":
                problems.append(Problem("fusion_weights", f"is only read with fusion_rule=fixed (fusion_rule is "
                                                          f"'{self.fusion_rule}'); set it to null or fusion_rule=fixed."))
            elif any(not math.isfinite(w) or w < 0 for w in self.fusion_weights) or sum(self.fusion_weights) <= 0:
                problems.append(Problem("fusion_weights", f"must be finite, non-negative and not all zero, got "
                                                          f"{list(self.fusion_weights)}."))
        return problems


# -- the equations -----------------------------------------------------------------------------------
def owm_alpha(batch_index: int, batches_per_epoch: int) -> float:
    """The code's regulariser of the projector update: α = 0.1^(1 + b / N_b), 0.1 at an epoch's first batch."""
    return 0.1 ** (1.0 + batch_index / max(batches_per_epoch, 1))


def update_projector(p: Tensor, r: Tensor, alpha: float, *, normalize: bool = True) -> Tensor:
    """P − k kᵀ / (α + r k) with k = P rᵀ (r: the (d,) mean head input), then / ‖·‖_F when ``normalize``."""
    r = r.reshape(1, -1).to(p.dtype)
    k = p @ r.t()
    p = p - (k @ k.t()) / (alpha + r @ k)
    return p / torch.linalg.matrix_norm(p) if normalize else p


def modify_gradient(grad: Tensor, p: Tensor, rule: str) -> Tensor:
    """The head weight gradient (C, d) after the rule: ``project`` ∇W Pᵀ, ``add`` ∇W + ∇W Pᵀ, ``none`` ∇W."""
    if rule == "project":
        return grad @ p.t()
    if rule == "add":
        return grad + grad @ p.t()
    if rule == "none":
        return grad
    raise ValueError(f"unknown gradient rule {rule!r}")


def prediction_entropy(logits: Tensor) -> Tensor:
    """Per-sample entropy of softmax(logits) over the classes: (..., C) → (...)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def batch_entropy(logits: Tensor) -> Tensor:
    """The code's ``calculate_entropy``: softmax over the *batch* (dim 0) of (B, C) logits, entropy summed
    over all B·C entries; a scalar. Stacked (M, B, C) → (M,)."""
    logp = F.log_softmax(logits.float(), dim=-2)
    return -(logp.exp() * logp).sum(dim=(-2, -1))


def entropy_weights(logits: Tensor, scope: str = "sample") -> Tensor:
    """λ_m = exp(max_j e_j − e_m) / Σ_k exp(max_j e_j − e_k) from stacked (M, B, C) logits: (M, B).
    ``sample``: e per sample; ``batch``: the code's one e per modality (:func:`batch_entropy`), broadcast."""
    m, b = logits.shape[0], logits.shape[1]
    if scope == "sample":
        e = prediction_entropy(logits)  # (M, B)
    elif scope == "batch":
        e = batch_entropy(logits).unsqueeze(1).expand(m, b)
    else:
        raise ValueError(f"unknown entropy scope {scope!r}")
    return torch.softmax(-e, dim=0)  # exp(max e − e_m) / Σ: the max cancels


def fuse_logits(logits: Tensor, weights: Tensor) -> Tensor:
    """Σ_m λ_m z_m: stacked (M, B, C) logits, weights (M, B) or (M,) → (B, C)."""
    if weights.dim() == 1:
        weights = weights.unsqueeze(1)
    return (weights.unsqueeze(-1).to(logits.dtype) * logits).sum(dim=0)


@register
class MLA(BalancingMethod):
    name = "mla"
    Config = MLAConfig
    paper = "MLA — Zhang, Yoon, Bansal, Yao, CVPR 2024, arXiv:2311.10707 (alternating uni-modal adaptation)"
    always_active = True  # outside the window: a joint step through the shared head (BalanceBenchmark)
    replaces_loss = True
    state = ("projector", "substeps_done")
    composable = ("MLA replaces the joint step by one optimizer step per modality through its own shared head, and "
                  "the inference rule by its entropy-weighted fusion; an in-loop method's hooks would act on a fused "
                  "step that MLA never takes")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._net: nn.ModuleDict | None = None
        self.projector: Tensor | None = None
        self.substeps_done = 0
        self._head_input: Tensor | None = None  # the current substep's mean head input r (detached)

    # -- set-up -----------------------------------------------------------------------------------
    def bind(self, model: MultimodalModel) -> None:
        cfg: MLAConfig = self.config
        if len(self.modalities) < 2:
            raise ConfigError([Problem("dataset.modalities",
                                       f"MLA alternates between two or more modalities, got {self.modalities}.")])
        if cfg.fusion_weights is not None and len(cfg.fusion_weights) != len(self.modalities):
            raise ConfigError([Problem("params.fusion_weights", (
                f"needs one weight per modality {self.modalities} (in that order), got {list(cfg.fusion_weights)}."))])
        dims = {m: model.fusion.feature_dims[m] for m in self.modalities}
        d = cfg.shared_dim or max(dims.values())
        head = nn.Linear(d, self.num_classes)
        proj = nn.ModuleDict({m: nn.Linear(dm, d) for m, dm in dims.items() if dm != d})
        if cfg.head_init == "xavier":
            for layer in [head, *proj.values()]:
                nn.init.xavier_normal_(layer.weight)
                nn.init.zeros_(layer.bias)
        self._net = nn.ModuleDict({"head": head, "proj": proj}).to(self.device)
        self.projector = torch.eye(d, device=self.device)
        if cfg.fusion_rule == "fixed":
            self._fixed = torch.tensor(cfg.fusion_weights, dtype=torch.float32, device=self.device)

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self._net.parameters()) if self._net is not None else []

    # -- the shared head ----------------------------------------------------------------------------
    def head_input(self, modality: str, feature: Tensor) -> Tensor:
        """h_m: φ^m, or its projection to the shared size d."""
        proj = self._net["proj"]
        return proj[modality](feature) if modality in proj else feature

    def shared_logits(self, features: Mapping[str, Tensor]) -> Tensor:
        """z_m = H(h_m) for every modality, stacked (M, B, C) in the model's order."""
        head = self._net["head"]
        return torch.stack([head(self.head_input(m, features[m])) for m in self.modalities])

    def fused(self, z: Tensor) -> Tensor:
        """The fusion rule on stacked (M, B, C) logits."""
        cfg: MLAConfig = self.config
        if cfg.fusion_rule == "entropy":
            return fuse_logits(z, entropy_weights(z, cfg.entropy_scope))
        if cfg.fusion_rule == "fixed":
            return fuse_logits(z, self._fixed)
        return z.mean(dim=0)

    # -- per-batch hooks ----------------------------------------------------------------------------
    def substeps(self, batch: Batch, ctx: StepContext) -> Sequence[str] | None:
        return list(self.modalities) if ctx.modulating else None

    def before_forward(self, batch: Batch, ctx: StepContext) -> Batch:
        m = ctx.substep
        if m is None:
            return batch  # outside the window: the model encodes every modality
        phi = ctx.model.encoders[m](batch.inputs[m])
        dims = ctx.model.fusion.feature_dims
        batch.features = {j: phi if j == m else phi.new_zeros((phi.shape[0], dims[j])) for j in self.modalities}
        return batch

    def loss(self, out: ModelOutput, batch: Batch, ctx: StepContext) -> Tensor:
        m = ctx.substep
        if m is None:  # outside the window: CE of the fused prediction through the shared head
            return F.cross_entropy(self.fused(self.shared_logits(out.features)), batch.labels)
        h = self.head_input(m, out.features[m])
        z = self._net["head"](h)
        loss = F.cross_entropy(z, batch.labels)
        self._head_input = h.detach().mean(dim=0)
        self.traces.add(f"loss/{m}", loss.detach())
        self.traces.add(f"entropy/{m}", prediction_entropy(z.detach()).mean())
        return loss

    def modulate_gradients(self, model: MultimodalModel, out: ModelOutput, batch: Batch, ctx: StepContext) -> None:
        m = ctx.substep
        if m is None:
            return
        cfg: MLAConfig = self.config
        first = self.substeps_done == 0
        self.substeps_done += 1
        weight = self._net["head"].weight
        if first or cfg.gradient == "none" or weight.grad is None:
            self.traces.add(f"proj/{m}", torch.zeros((), device=self.device))
            return
        alpha = owm_alpha(ctx.step, math.ceil(len(ctx.train) / max(ctx.batch_size, 1)))
        r = self._head_input
        if cfg.update_order == "update_first":
            self.projector = update_projector(self.projector, r, alpha, normalize=cfg.normalize)
        g = weight.grad
        modified = modify_gradient(g, self.projector.to(g.dtype), cfg.gradient)
        norm = torch.linalg.matrix_norm(g)
        self.traces.add(f"proj/{m}", 1.0 - torch.linalg.matrix_norm(modified) / norm.clamp_min(1e-12))
        g.copy_(modified)
        if cfg.update_order == "project_first":
            self.projector = update_projector(self.projector, r, alpha, normalize=cfg.normalize)

    # -- evaluation ---------------------------------------------------------------------------------
    def predict(self, model: MultimodalModel, out: ModelOutput) -> tuple[Tensor, dict[str, Tensor]]:
        z = self.shared_logits(out.features)
        return self.fused(z), {m: z[i] for i, m in enumerate(self.modalities)}

    # -- checkpointing ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["net"] = {k: v.detach().cpu() for k, v in self._net.state_dict().items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        state = dict(state)
        net = state.pop("net")
        super().load_state_dict(state)
        self._net.load_state_dict(net)
