"""G-Blending: Gradient-Blending, loss weights from each head's overfitting-to-generalisation ratio.

Paper: Wang, Tran, Feiszli, "What Makes Training Multi-modal Classification Networks Hard?", CVPR
2020, arXiv:1905.12681. Official code: github.com/facebookresearch/VMZ (Caffe2) releases only the
blended loss with given weights (``c2/lib/models/loss/loss_creator.py: add_weighted_loss``), the model
with one extra FC classifier per stream (``c2/lib/models/audio_visual_model.py``, ``g_blend``) and a
table of weights it estimated (``c2/tutorials/gradient_blending.md``); the estimation is not released.
Re-implementations read: BalanceBenchmark (GeWu-Lab/BalanceBenchmark,
``balancemm/trainer/GBlending_trainer.py``, "BB" below) and MultiBench (pliang279/MultiBench,
``training_structures/gradient_blend.py``, "MB").

Sources. The paper's text could not be read here (only its abstract and the two re-implementations);
it is cited by its named objects — the OGR definition, Proposition 1 (Gradient-Blend) and the offline
and online algorithms — not by equation numbers, and every formula below agrees with both
re-implementations.

Heads k = 1..M are the uni-modal classifiers (``model.modalities`` order), k = M + 1 the multimodal
(fused) head, named ``fusion`` in traces. L_k is head k's cross-entropy. L^T is a loss on the samples
the model trains on; L* the "true" loss, estimated as L^V on V, a split **held out of the training
split** (never validation or test: model selection reads validation, reporting reads test).

Equation → function:
* overfitting at checkpoint N, O_N = L^V_N − L^T_N: :func:`overfitting`.
* ΔO_{N,n} = O_{N+n} − O_N and ΔG_{N,n} = L^V_N − L^V_{N+n} (generalisation gained over n epochs):
  :func:`ogr_deltas`.
* OGR = |ΔO_{N,n} / ΔG_{N,n}|: :func:`ogr`.
* Proposition 1, w*_k = ⟨∇L*, v_k⟩ / σ²_k / Z, with the paper's finite-difference estimates
  ⟨∇L*, v_k⟩ ≈ ΔG_k and σ²_k ≈ ΔO_k²: :func:`blend_weights`, w_k = (ΔG_k/ΔO_k²) / Σ_j (ΔG_j/ΔO_j²).
* the blended loss L = Σ_k w_k L_k (VMZ's ``add_weighted_loss``): :func:`blended_loss`, in
  :meth:`GBlending.loss` (replaces the task loss in the window).
* the held-out split V: :func:`holdout_size`, :func:`split_indices`, :meth:`GBlending.train_indices`.
* the weight estimate: :meth:`GBlending._estimate` — for every head k, a copy of the current model
  trained on L_k alone for n epochs on the trained samples; L^T_k and L^V_k measured before (N) and
  after (N + n).
* offline G-Blend (weights estimated once, then fixed) and online G-Blend (re-estimated at the start
  of every super-epoch): :func:`estimate_epoch`, :func:`lookahead_epochs`.

Interpretations (our reading where the paper, as far as we could check it, is silent):
* Normalisation: a blend's squared OGR, Σ_k w_k²σ_k² / (Σ_k w_k ΔG_k)², does not change when w is
  scaled, so Proposition 1's constraint only fixes the scale: Σ_k w_k = 1, as the weights VMZ
  publishes (Kinetics R3D-50: 0.014 + 0.630 + 0.356) and both re-implementations.
* ΔG_k ≤ 0 (the held-out loss of head k did not improve): the formula gives a negative weight, i.e.
  gradient *ascent* on L_k. Ours, ``negative: zero``: w_k = 0, the minimiser of the blend's OGR²
  under w ≥ 0 (such a head only adds overfitting and removes generalisation). If no head has
  ΔG > 0 the previous weights stay in force (before any: w = 1 on the fused head, joint training).
* ΔO_k ≈ 0: ΔO_k² is floored at 1e-12, so such a head takes almost all the weight — the formula's
  limit (neither re-implementation guards it).
* V: ``holdout_fraction`` of the training split (default 0.08, MB's ``v_rate``), drawn at random
  once per trial from the trial's seed and reserved through the engine's ``train_indices``: the loop
  never batches it, so it gets no gradient step, moves no BatchNorm statistic and changes no batch.
  It stays reserved for the whole trial, also outside the window. MB takes the first 8 % of the
  split in its stored order; a random draw is ours.
* The copies: the model (and, with ``heads: own``, the method's heads) copied as it is at the start
  of the epoch, hooks stripped; a fresh optimizer of the trial's type and current hyperparameters
  (this epoch's learning rate; BB and MB: the initial ones) without momentum state, as BB (its temp
  optimizer reset to its initial state) and MB (a new optimizer); batches of the training batch size over the trained
  samples, in an order drawn from the method's generator. ``train.grad_clip`` is not applied to the
  copies (the context does not carry it). A uni-modal copy runs only its own encoder and head: the
  model's heads get zero features for the other modalities (the loss never reads them), as in UME.
* L^T and L^V at a checkpoint: eval-mode passes (BatchNorm running statistics, no dropout), mean
  cross-entropy per sample, no grad; L^T over all the trained samples.
* Schedule: super-epochs count from ``start_epoch``; online estimates at epochs start_epoch,
  start_epoch + s, …, each with look-ahead n = s (``super_epoch``); offline estimates once, at
  ``start_epoch``, with n = ``offline_epochs`` (null: the rest of the window, as BB's offline runs
  its copies for the whole schedule). Outside the window the loss is the fused head's CE (joint).
* Heads, ``heads: model`` (default; mmtune's interface): ``model.modality_logits`` — under late or sum
  fusion each modality's own classifier; under concat the exact split W^m·φ^m + b/M of the fused
  layer (BB's uni-modal outputs too), so the uni-modal heads share weights with the multimodal one.
  ``heads: own`` is the paper's layout: one linear classifier per modality on its pooled feature φ^m
  beside the fused head (VMZ's ``a_last_out``/``v_last_out``, MB's ``unimodal_classification_heads``),
  owned by the method and trained by the trial's optimizer. ``val_acc/<m>`` reports the model's own
  uni-modal split either way.

Where the re-implementations depart from the paper, as hyperparameters:
* ``negative: abs`` — BB and MB weight |ΔG/ΔO²|: a head whose held-out loss rose still gets weight.
* ``reference: first_epoch`` — BB's checkpoint N is after the copy's first epoch, so ΔG and ΔO span
  n − 1 epochs. It needs n ≥ 2 (refused otherwise): at ``super_epoch`` 1 BB never records its
  "after" losses and blends with their initial value, 0.
* ``train_loss: running`` — BB's L^T is the copy's running training loss over the epoch that ends at
  the checkpoint (train mode, weights moving); a checkpoint that ends no copy epoch (N with
  ``reference: start``) keeps the eval pass.
* ``schedule: offline`` with ``offline_epochs: null`` — BB's offline mode (super_epoch = max_epochs).
Not offered, with the reason:
* BB's V is the *validation* split (its ``test_loader`` argument is the val loader): that makes the
  weights a function of the data ``best_*`` selects on — the very thing a held-out split avoids.
* BB sums the losses over batches instead of averaging them, so O = ΣL^V − ΣL^T compares sums over
  different numbers of batches: a scale artefact of the split sizes, not a quantity of the paper.
* BB estimates each uni-modal head by training the fused output with the other modalities' *inputs*
  zeroed, but blends the concat split: it estimates one head and trains another. Ours estimates the
  head it trains.
* MB's default ``delta = False`` weights |L^V_{N+n} / O_{N+n}²| (levels, not changes; O < 0 floored
  to 1e-4): a worse held-out loss gives a *larger* weight — not Gradient-Blending. MB also measures
  its losses in train mode (dropout on) and, after each super-epoch, fine-tunes a copy of the fused
  head on frozen features for 25 epochs; neither is part of G-Blend.

Composition: G-Blending replaces the task loss (``replaces_loss``) and composes with the hook-based
methods — their ``extra_loss`` is added to the blend, their gradient modulation acts on its
gradients. The copies train on their head's CE alone, without the partners' hooks (the paper's
estimate of each head trained on its own), and a composite holds the reserved samples out of
training for every part. Two loss-replacing methods (UME) do not compose.

Cost: an estimate trains M + 1 copies for n epochs, so online G-Blend costs about (M + 1) times
joint training's epochs on top of it, offline (M + 1)·n epochs once; the blended loss itself adds M
small heads per step.

Traces (modulated epochs only):
* ``trace/w/<m>``, ``trace/w/fusion`` — the blending weights in force this epoch (they sum to 1).
* ``trace/ogr/<head>`` — |ΔO/ΔG| of the latest estimate (|ΔG| floored at 1e-12).
* ``trace/delta_g/<head>``, ``trace/delta_o/<head>`` — its ΔG and ΔO.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmtune.config import hp
from mmtune.data.base import Batch, TensorSplit
from mmtune.engine.method import BalancingMethod, MethodConfig, StepContext
from mmtune.engine.registry import register
from mmtune.errors import ConfigError, Problem
from mmtune.models.multimodal import ModelOutput, MultimodalModel

__all__ = [
    "GBlending", "GBlendingConfig", "FUSION", "holdout_size", "split_indices", "overfitting", "ogr_deltas", "ogr",
    "blend_weights", "blended_loss", "estimate_epoch", "lookahead_epochs",
]

FUSION = "fusion"  # the multimodal head's name in traces
_TINY = 1e-12  # floor of ΔO² (and of |ΔG| in the reported OGR)


@dataclass(frozen=True)
class GBlendingConfig(MethodConfig):
    schedule: str = hp("online", choices=("online", "offline"),
                       doc="online: re-estimate the weights every super_epoch epochs; offline: once, at start_epoch")
    super_epoch: int = hp(10, low=1,
                          doc="online: epochs per super-epoch, also each estimate's look-ahead n (BalanceBenchmark: 10)")
    offline_epochs: int | None = hp(None, low=1,
                                    doc="offline: the copies' epochs n (null: the rest of the window, as BalanceBenchmark)")
    holdout_fraction: float = hp(0.08, low=0.0, low_open=True, high=1.0, high_open=True,
                                 doc="share of the training split held out of training to measure L* on (MultiBench: 0.08)")
    heads: str = hp("model", choices=("model", "own"),
                    doc="uni-modal heads: the model's modality_logits, or a linear head per modality owned by the "
                        "method (the paper's layout)")
    negative: str = hp("zero", choices=("zero", "abs"),
                       doc="weight of a head with ΔG <= 0: 0 (ours, the optimum under w >= 0) or |ΔG/ΔO²| "
                           "(BalanceBenchmark, MultiBench)")
    reference: str = hp("start", choices=("start", "first_epoch"),
                        doc="checkpoint N: before the copies train, or after their first epoch (BalanceBenchmark)")
    train_loss: str = hp("eval", choices=("eval", "running"),
                         doc="L^T: an eval-mode pass over the trained samples, or the copy's running loss (BalanceBenchmark)")

    def extra_checks(self) -> list[Problem]:
        problems = super().extra_checks()
        if self.reference == "first_epoch":
            n, key = (self.super_epoch, "super_epoch") if self.schedule == "online" else (self.offline_epochs, "offline_epochs")
            if n is not None and n < 2:
                problems.append(Problem(key, f"is {n}, but reference=first_epoch measures from the copies' first epoch "
                                             "to their last: it needs at least 2 epochs (or set reference=start)."))
        return problems


# ----------------------------------------------------------------------------- pure functions

def holdout_size(n: int, fraction: float) -> int:
    """|V|: round(fraction·n), at least 1 and at most n − 1 (at least one sample is trained on)."""
    if n < 2:
        raise ValueError(f"G-Blending holds out part of the training split; it needs at least 2 samples, got {n}")
    return max(1, min(n - 1, round(fraction * n)))


def split_indices(n: int, fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(trained, held out): sorted indices of a random split of ``range(n)`` with |held out| = holdout_size."""
    order = torch.randperm(n, generator=generator)
    h = holdout_size(n, fraction)
    return order[h:].sort().values, order[:h].sort().values


def overfitting(val_loss: Tensor, train_loss: Tensor) -> Tensor:
    """O_N = L^V_N − L^T_N (the gap between the held-out and the training loss)."""
    return val_loss - train_loss


def ogr_deltas(train_before: Tensor, val_before: Tensor, train_after: Tensor, val_after: Tensor) -> tuple[Tensor, Tensor]:
    """(ΔG, ΔO) between checkpoints N (before) and N + n (after), per head:
    ΔG = L^V_N − L^V_{N+n}, ΔO = O_{N+n} − O_N."""
    delta_g = val_before - val_after
    delta_o = overfitting(val_after, train_after) - overfitting(val_before, train_before)
    return delta_g, delta_o


def ogr(delta_g: Tensor, delta_o: Tensor) -> Tensor:
    """OGR = |ΔO / ΔG| (|ΔG| floored at 1e-12 so that the trace stays finite)."""
    return delta_o.abs() / delta_g.abs().clamp_min(_TINY)


def blend_weights(delta_g: Tensor, delta_o: Tensor, negative: str = "zero") -> Tensor | None:
    """Proposition 1 with ⟨∇L*, v_k⟩ ≈ ΔG_k, σ²_k ≈ ΔO_k²: w_k ∝ ΔG_k / ΔO_k², normalised to Σ w = 1.

    ``negative``: ``zero`` gives a head with ΔG_k <= 0 weight 0 (the optimum under w >= 0); ``abs``
    takes |ΔG_k/ΔO_k²| (the re-implementations). None when no head gets a positive weight.
    """
    raw = delta_g / delta_o.square().clamp_min(_TINY)
    if negative == "zero":
        raw = raw.clamp_min(0.0)
    elif negative == "abs":
        raw = raw.abs()
    else:
        raise ValueError(f"negative must be 'zero' or 'abs', got {negative!r}")
    total = raw.sum()
    if not bool(torch.isfinite(total)) or float(total) <= 0.0:
        return None
    return raw / total


def blended_loss(losses: Tensor, weights: Tensor) -> Tensor:
    """L = Σ_k w_k L_k over the uni-modal heads and the multimodal head (in that order)."""
    return (weights * losses).sum()


def estimate_epoch(epoch: int, start_epoch: int, schedule: str, super_epoch: int) -> bool:
    """Whether the weights are (re-)estimated at the start of ``epoch`` (inside the window): offline at
    ``start_epoch`` only, online at start_epoch, start_epoch + s, start_epoch + 2s, …"""
    if epoch < start_epoch:
        return False
    if schedule == "offline":
        return epoch == start_epoch
    return (epoch - start_epoch) % super_epoch == 0


def lookahead_epochs(config: GBlendingConfig, epoch: int, total_epochs: int) -> int:
    """n, the copies' epochs of the estimate made at ``epoch``: the super-epoch online; offline,
    ``offline_epochs`` or the rest of the window (to ``end_epoch`` or the trial's last epoch)."""
    if config.schedule == "online":
        return config.super_epoch
    if config.offline_epochs is not None:
        return config.offline_epochs
    end = config.end_epoch if config.end_epoch is not None else total_epochs
    return max(1, min(end, total_epochs) - epoch + 1)


def _strip_hooks(module: nn.Module) -> None:
    """Remove every forward/backward hook from a copied module tree (other methods' hooks, e.g. AIM's
    block captures, must not fire on a copy)."""
    for sub in module.modules():
        for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called"):
            hooks = getattr(sub, name, None)
            if hooks:
                hooks.clear()


def _fresh_optimizer(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """An optimizer of ``optimizer``'s type with its current hyperparameters (this epoch's LR), no state."""
    group = optimizer.param_groups[0]
    return type(optimizer)(params, **{k: group[k] for k in optimizer.defaults if k in group})


# ----------------------------------------------------------------------------- the strategy

@register
class GBlending(BalancingMethod):
    name = "gblending"
    Config = GBlendingConfig
    paper = "G-Blending — Wang, Tran, Feiszli, CVPR 2020, arXiv:1905.12681 (OGR, Prop. 1, offline/online Gradient-Blend)"
    replaces_loss = True
    # The weights in force and the latest estimate's ΔG, ΔO, (M + 1,) each; None before the first
    # estimate. The method's own heads (heads=own) are saved beside them (state_dict below).
    state = ("weights", "delta_g", "delta_o")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.weights: Tensor | None = None
        self.delta_g: Tensor | None = None
        self.delta_o: Tensor | None = None
        self.head_names = [*self.modalities, FUSION]
        self._model: MultimodalModel | None = None
        self._heads: nn.ModuleDict | None = None
        self._shadow: MultimodalModel | None = None  # the copy the estimates train (a cache, not state)
        self._shadow_heads: nn.ModuleDict | None = None

    # -- set-up -----------------------------------------------------------------------------------
    def bind(self, model: MultimodalModel) -> None:
        if len(self.modalities) < 2:
            raise ConfigError([Problem("dataset.modalities",
                                       f"G-Blending blends two or more modalities' heads, got {self.modalities}.")])
        if FUSION in self.modalities:
            raise ConfigError([Problem("dataset.modalities", f"G-Blending names the multimodal head '{FUSION}'; "
                                                             "a modality of that name would share its traces. Rename it.")])
        self._model = model
        self._dims = {m: model.fusion.feature_dims[m] for m in self.modalities}
        if self.config.heads == "own":
            self._heads = nn.ModuleDict({m: nn.Linear(d, self.num_classes) for m, d in self._dims.items()}).to(self.device)

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self._heads.parameters()) if self._heads is not None else []

    def train_indices(self, n: int, generator: torch.Generator) -> Tensor:
        """The trained samples: all but a random ``holdout_fraction`` of the split (V, ``ctx.holdout``)."""
        return split_indices(n, self.config.holdout_fraction, generator)[0]

    # -- the heads ----------------------------------------------------------------------------------
    def _unimodal_logits(self, model: MultimodalModel, heads: nn.ModuleDict | None,
                         features: Mapping[str, Tensor]) -> list[Tensor]:
        if heads is not None:
            return [heads[m](features[m]) for m in self.modalities]
        own = model.modality_logits(dict(features))
        return [own[m] for m in self.modalities]

    def _head_logits(self, model: MultimodalModel, heads: nn.ModuleDict | None, inputs: Mapping[str, Tensor], k: int) -> Tensor:
        """Head k's logits; a uni-modal head runs only its own encoder (zeros stand in for the others)."""
        if k == len(self.modalities):
            return model(dict(inputs)).logits
        m = self.modalities[k]
        phi = model.encoders[m](inputs[m])
        if heads is not None:
            return heads[m](phi)
        features = {j: phi if j == m else phi.new_zeros((phi.shape[0], self._dims[j])) for j in self.modalities}
        return model.modality_logits(features)[m]

    @torch.no_grad()
    def _losses(self, model: MultimodalModel, heads: nn.ModuleDict | None, split: TensorSplit, chunk: int,
                k: int | None = None) -> Tensor:
        """Mean CE per sample over ``split`` in eval mode: of every head, (M + 1,), or of head ``k`` only, ()."""
        modules = [model] + ([heads] if heads is not None else [])
        modes = [mod.training for mod in modules]
        for mod in modules:
            mod.eval()
        try:
            sums = torch.zeros(len(self.head_names) if k is None else (), device=split.device)
            for batch in split.batches(chunk):  # any split type: tensors or a prepared real-dataset cache
                x = {m: batch.inputs[m] for m in self.modalities}
                y = batch.labels
                if k is None:
                    out = model(x)
                    logits = [*self._unimodal_logits(model, heads, out.features), out.logits]
                    sums += torch.stack([F.cross_entropy(z, y, reduction="sum") for z in logits])
                else:
                    sums += F.cross_entropy(self._head_logits(model, heads, x, k), y, reduction="sum")
            return sums / len(split)
        finally:
            for mod, mode in zip(modules, modes, strict=True):
                mod.train(mode)

    # -- the estimate -------------------------------------------------------------------------------
    def _copies(self, model: MultimodalModel) -> tuple[MultimodalModel, nn.ModuleDict | None]:
        """The copy (built once, hooks stripped) loaded with the current model's and heads' values."""
        if self._shadow is None:
            self._shadow = copy.deepcopy(model)
            _strip_hooks(self._shadow)
            self._shadow_heads = copy.deepcopy(self._heads) if self._heads is not None else None
        self._shadow.load_state_dict(model.state_dict())
        if self._heads is not None:
            self._shadow_heads.load_state_dict(self._heads.state_dict())
        return self._shadow, self._shadow_heads

    def _train_copy_epoch(self, model: MultimodalModel, heads: nn.ModuleDict | None, k: int, split: TensorSplit,
                          optimizer: torch.optim.Optimizer, ctx: StepContext) -> Tensor:
        """One epoch of a copy on L_k alone; returns its running loss (mean CE per sample)."""
        model.train()
        if heads is not None:
            heads.train()
        n = len(split)
        order = torch.randperm(n, generator=ctx.generator, device=ctx.generator.device)
        total = torch.zeros((), device=split.device)
        # Shuffled by the method's generator: the ordered batches of the permuted subset (any split type).
        for batch in split.subset(order).batches(max(ctx.batch_size, 1)):
            x = {m: batch.inputs[m] for m in self.modalities}
            loss = F.cross_entropy(self._head_logits(model, heads, x, k), batch.labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.detach() * len(batch.labels)
        return total / n

    def _estimate(self, ctx: StepContext, epochs: int) -> None:
        """ΔG_k, ΔO_k of every head from copies trained n = ``epochs`` epochs on L_k alone; new weights."""
        cfg: GBlendingConfig = self.config
        model, train, held = self._model, ctx.train, ctx.holdout
        if model is None or train is None or held is None or ctx.optimizer is None:
            raise RuntimeError("G-Blending estimates its weights from ctx.model, ctx.optimizer, ctx.train and the samples its "
                               "train_indices reserved (ctx.holdout); this context lacks one of them")
        chunk = max(ctx.batch_size, 1)
        k_all = len(self.head_names)
        before_t = after_t = before_v = after_v = None
        if cfg.reference == "start":
            before_t, before_v = self._losses(model, self._heads, train, chunk), self._losses(model, self._heads, held, chunk)
        rows: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        for k in range(k_all):
            shadow, shadow_heads = self._copies(model)
            params = list(shadow.parameters()) + (list(shadow_heads.parameters()) if shadow_heads is not None else [])
            optimizer = _fresh_optimizer(ctx.optimizer, params)
            ref_t = ref_v = running = None
            for e in range(epochs):
                running = self._train_copy_epoch(shadow, shadow_heads, k, train, optimizer, ctx)
                if cfg.reference == "first_epoch" and e == 0:
                    ref_t = running if cfg.train_loss == "running" else self._losses(shadow, shadow_heads, train, chunk, k)
                    ref_v = self._losses(shadow, shadow_heads, held, chunk, k)
            end_t = running if cfg.train_loss == "running" else self._losses(shadow, shadow_heads, train, chunk, k)
            end_v = self._losses(shadow, shadow_heads, held, chunk, k)
            if cfg.reference == "start":
                ref_t, ref_v = before_t[k], before_v[k]
            rows.append((ref_t, ref_v, end_t, end_v))
        before_t, before_v, after_t, after_v = (torch.stack(col) for col in zip(*rows, strict=True))
        self.delta_g, self.delta_o = ogr_deltas(before_t, before_v, after_t, after_v)
        weights = blend_weights(self.delta_g, self.delta_o, cfg.negative)
        if weights is not None:
            self.weights = weights
        elif self.weights is None:  # no head generalised: joint training until an estimate says otherwise
            self.weights = torch.zeros(k_all, device=self.device)
            self.weights[-1] = 1.0

    # -- per-epoch and per-batch hooks -------------------------------------------------------------
    def begin_epoch(self, ctx: StepContext) -> None:
        super().begin_epoch(ctx)
        if not ctx.modulating:
            return
        cfg: GBlendingConfig = self.config
        if self.weights is None or estimate_epoch(ctx.epoch, cfg.start_epoch, cfg.schedule, cfg.super_epoch):
            total = ctx.stage.epochs if ctx.stage is not None else ctx.epoch
            self._estimate(ctx, lookahead_epochs(cfg, ctx.epoch, total))
        self.traces.add_many("w", self.weights, self.head_names)
        self.traces.add_many("ogr", ogr(self.delta_g, self.delta_o), self.head_names)
        self.traces.add_many("delta_g", self.delta_g, self.head_names)
        self.traces.add_many("delta_o", self.delta_o, self.head_names)

    def loss(self, out: ModelOutput, batch: Batch, ctx: StepContext) -> Tensor:
        if self.weights is None:
            raise RuntimeError("G-Blending.loss before any weights: begin_epoch estimates them at the start of the window")
        logits = [*self._unimodal_logits(self._model, self._heads, out.features), out.logits]
        losses = torch.stack([F.cross_entropy(z, batch.labels) for z in logits])
        return blended_loss(losses, self.weights)

    # -- checkpointing ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["heads"] = {k: v.detach().cpu() for k, v in self._heads.state_dict().items()} if self._heads is not None else None
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        state = dict(state)
        heads = state.pop("heads", None)
        super().load_state_dict(state)
        if (heads is None) != (self._heads is None):
            raise ValueError("G-Blending checkpoint and config disagree on params.heads")
        if self._heads is not None:
            self._heads.load_state_dict(heads)
