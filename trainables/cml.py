"""CML: Calibrating Multimodal Learning — confidence must not rise when a modality is removed.

Paper: Ma, Zhang, Zhang, Wu, Fu, Zhou, Hu, "Calibrating Multimodal Learning", ICML 2023 (PMLR 202),
arXiv:2306.01265. Official code: github.com/QingyangZhang/CML (read at 9d2496e; ``miwae/train.py``,
``cpm/CPM_Nets.py``; "the code" below); also re-implemented in BalanceBenchmark (GeWu-Lab/BalanceBenchmark,
``balancemm/trainer/CML_trainer.py``, "BB"). The paper's body could not be read here: its abstract, a
public review of it (Trombetta, the proposition, VRR and the regulariser) and the two codes are the
sources; equation numbers are not cited.

The principle (the paper's proposition). For T ⊂ S ⊆ 𝓜 (sets of modalities), a trustworthy classifier
has Conf(x^T) ≤ Conf(x^S), where Conf(x) = max_k P(y = k | x) is the maximum softmax probability. The
confidence increment CI(x^T, x^S) = Conf(x^T) − Conf(x^S); the violation ranking rate VRR is the
share of pairs with CI > 0. The regulariser penalises only violations (the paper rejects penalising
CI itself, which drives the partial-modality confidence to 0):

    L^{(T,S)} = max(0, Conf(x^T) − Conf(x^S)),   L = L_CE + λ · Σ_{(T,S)} L^{(T,S)}.

Equation → function:
* Conf(x) and the prediction: :func:`confidence`.
* CI: :func:`confidence_increment`; VRR: :func:`violation_rate`.
* x^T: the fused logits with the absent modalities' features set to zero (mmtune's subset rule,
  ``model.subset_logits``; for a per-sample subset :func:`chain_present` + :func:`masked_features`).
* Which pairs (T, S): :func:`chain_present` (a random removal order per sample: 𝓜 ⊃ S_1 ⊃ … ⊃ S_{M−1},
  M − 1 pairs of consecutive sets) or :func:`adjacent_pairs` (every (S, S∖{m})).
* the per-sample differences the hinge sees (with the code's masks): :func:`masked_differences`.
* λ·Σ L^{(T,S)}: :func:`cml_penalty` (times ``lam``).

Interpretations (our reading where the sources are silent or disagree):
* Absent modality = its encoder feature set to zero before the fusion (exact for every fusion, one
  fusion call on the extra rows; the engine's ``subset_logits`` rule, as AGM). BB gets the same for
  concat by subtracting W^m·φ^m from the fused logits (the whole bias kept). The code (MIWAE) instead
  imputes the absent modality's raw input with its training-set mean and re-runs the model: not offered.
* Pairs (``removal``): ``sample`` (default, the code's ``get_multi_mask``): each sample draws its own
  random order and removes its modalities one at a time, giving M − 1 nested pairs per sample (for two
  modalities: one random modality removed). Drawn each step from the method's generator. ``epoch`` (BB):
  one random order per epoch, shared by every sample. ``all`` (ours, the proposition's every
  one-modality removal): every pair (S, S∖{m}) with |S| ≥ 2 — for M = 2 both single modalities against
  the full set, for M = 3 nine pairs; deterministic, 2^M − 1 subsets per step.
* Sum over pairs; over the batch ``reduction: sum`` (default: the code and BB sum over the batch; λ is
  then per sample, so its effect grows with the batch size) or ``mean`` (batch-size independent).
* Conf carries gradient on both sides of the hinge (both codes); the confidence pairs are taken from
  one forward pass of this step's features (train mode).
* ``lam`` λ = 0.1: the code's ``--beta 10`` ("with mcca", loss ``rank_loss * beta / 100``) and BB's
  ``lam: 0.1``. The paper's λ ablation could not be read (``search_spaces/cml_lambda.yaml`` is ours).
* Any fusion (zero padding is defined for all); two or more modalities.

Departures of the official code / BB, as hyperparameters:
* ``mask: code`` — ``miwae/train.py``'s two "tricks": the hinge counts where the larger set S predicts
  the label correctly; where both S and T predict wrongly, only Conf(x^T) gets the gradient
  (Conf(x^S) detached); where only T is right, nothing. ``none`` (default): every sample, the
  proposition as stated. (``cpm/CPM_Nets.py`` has a third mask — all but "T right, S wrong" — not
  offered; BB computes a mask and ignores it.)
* ``hinge: batch`` — BB's ``conf_loss``: max(0, Σ_i (Conf(x_i^T) − Conf(x_i^S))), one hinge on the
  batch sum per pair instead of one per sample (with ``reduction: mean``, on the batch mean).
  Full BB setting: ``removal: epoch, hinge: batch, subset_ce: true``.
* ``subset_ce: true`` — both codes also train every partial prediction: the task loss becomes the mean
  of the cross-entropies of the full logits and of each subset's logits (the code: of its M nested
  inputs; BB: (CE_full + Σ_k CE_{S_k}) / M; with ``removal: all``: over all 2^M − 1 non-empty subsets).
  Implemented as an extra loss equal to that mean minus the loop's CE_full, so the optimised total is
  exactly the mean. ``false`` (default): the paper's L_CE + λ·L_CML.
Not offered: the code's tolerance margin ε (``--epsilon``, default 0), its two-stage MIWAE schedule.

Traces (means over the epoch's modulated steps):
* ``trace/violation/<m>`` — the share of the batch whose confidence rises when m alone is removed from
  the full set, [Conf(x^{𝓜∖m}) > Conf(x^𝓜)] (the paper's VRR on those pairs, by removed modality:
  its Fig. 2 pie chart); ``trace/increment/<m>`` — the mean CI of that pair.
* ``trace/penalty/all`` — Σ L^{(T,S)} of the step (before λ, with ``reduction`` applied);
  ``trace/vrr/all`` — VRR over the pairs the loss used.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    "CML", "CMLConfig", "confidence", "confidence_increment", "violation_rate", "chain_present",
    "masked_features", "adjacent_pairs", "masked_differences", "cml_penalty",
]


@dataclass(frozen=True)
class CMLConfig(MethodConfig):
    lam: float = hp(0.1, low=0.0, doc="weight λ of the CML regulariser (code --beta 10 → 0.1; BalanceBenchmark 0.1)")
    removal: str = hp("sample", choices=("sample", "epoch", "all"),
                      doc="pairs (T, S): per-sample random removal chain (code), one order per epoch (BB), or every (S, S minus m)")
    reduction: str = hp("sum", choices=("sum", "mean"), doc="over the batch: sum (code, BB) or mean")
    hinge: str = hp("sample", choices=("sample", "batch"), doc="max(0, ·) per sample (paper, code) or on the batch sum (BB)")
    mask: str = hp("none", choices=("none", "code"), doc="penalise every sample (paper) or the code's correct/both-wrong tricks")
    subset_ce: bool = hp(False, doc="also train each subset's prediction: mean CE over full + subsets (code, BB)")


# ----------------------------------------------------------------------------- pure functions

def confidence(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Conf(x) = max_k softmax(logits)_k and the predicted class, over the last dimension."""
    return torch.softmax(logits, dim=-1).max(dim=-1)


def confidence_increment(conf_small: Tensor, conf_large: Tensor) -> Tensor:
    """CI(x^T, x^S) = Conf(x^T) − Conf(x^S), T ⊂ S (positive: a violation)."""
    return conf_small - conf_large


def violation_rate(conf_small: Tensor, conf_large: Tensor) -> Tensor:
    """VRR: the share of pairs whose confidence rises on removing modalities, mean of [CI > 0]."""
    return (conf_small > conf_large).float().mean()


def chain_present(ranks: Tensor) -> Tensor:
    """The nested chain of a random removal order, (M, B, M) bool: present[k, i, j] — modality j is still
    present after k removals for sample i, i.e. ranks[i, j] ≥ k (ranks (B, M): the step at which each
    modality goes; level 0 is the full set, level M − 1 keeps one modality)."""
    levels = torch.arange(ranks.shape[1], device=ranks.device).view(-1, 1, 1)
    return ranks.unsqueeze(0) >= levels


def masked_features(features: dict[str, Tensor], present: Tensor, modalities: Sequence[str]) -> dict[str, Tensor]:
    """Each modality's feature repeated for the K levels of ``present`` (K, B, M), zero where absent:
    (K·B, d_m), level-major (one fusion call scores every level)."""
    k = present.shape[0]
    return {m: torch.where(present[:, :, j].reshape(-1, 1), features[m].repeat(k, 1), 0.0)
            for j, m in enumerate(modalities)}


def adjacent_pairs(subsets: Sequence[Sequence[str]]) -> tuple[list[int], list[int]]:
    """Indices (larger S, smaller T) of every pair with T = S minus one modality, T non-empty."""
    index = {frozenset(s): i for i, s in enumerate(subsets)}
    large, small = [], []
    for i, s in enumerate(subsets):
        if len(s) < 2:
            continue
        for m in s:
            large.append(i)
            small.append(index[frozenset(s) - {m}])
    return large, small


def masked_differences(conf_small: Tensor, conf_large: Tensor, correct_small: Tensor, correct_large: Tensor,
                       mask: str = "none") -> Tensor:
    """Per-sample Conf(x^T) − Conf(x^S) the hinge sees, (P, B).

    ``none``: every sample. ``code`` (miwae/train.py): S right → the difference; S and T both wrong →
    Conf(x^T) − Conf(x^S).detach() (only T's confidence is pushed down); only T right → 0.
    """
    if mask == "none":
        return conf_small - conf_large
    if mask == "code":
        both_wrong = ~correct_large & ~correct_small
        zero = torch.zeros_like(conf_small)
        return torch.where(correct_large, conf_small - conf_large,
                           torch.where(both_wrong, conf_small - conf_large.detach(), zero))
    raise ValueError(f"mask must be 'none' or 'code', got {mask!r}")


def cml_penalty(differences: Tensor, *, hinge: str = "sample", reduction: str = "sum") -> Tensor:
    """Σ_pairs L^{(T,S)} from the (P, B) differences: ``sample`` hinge Σ_p reduce_i max(0, d_pi) (paper);
    ``batch`` hinge Σ_p max(0, reduce_i d_pi) (BB). ``reduction`` over the batch: sum or mean."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")

    def reduce(x: Tensor) -> Tensor:
        return x.sum(dim=-1) if reduction == "sum" else x.mean(dim=-1)

    if hinge == "sample":
        return reduce(F.relu(differences)).sum()
    if hinge == "batch":
        return F.relu(reduce(differences)).sum()
    raise ValueError(f"hinge must be 'sample' or 'batch', got {hinge!r}")


# ----------------------------------------------------------------------------- the strategy

@register
class CML(BalancingMethod):
    name = "cml"
    Config = CMLConfig
    paper = "CML — Ma et al., ICML 2023, arXiv:2306.01265 (confidence ranking regulariser)"
    state = ()  # the epoch's order (removal: epoch) is drawn at begin_epoch from the checkpointed generator

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._model: MultimodalModel | None = None
        self._epoch_ranks: Tensor | None = None

    def bind(self, model: MultimodalModel) -> None:
        if len(model.modalities) < 2:
            raise ConfigError([Problem("dataset.modalities", (
                f"has {model.modalities}: CML compares the confidence with fewer modalities against more, "
                "so it needs two or more modalities."))])
        self._model = model
        full = tuple(model.modalities)
        self._subsets = [s for s in model.all_subsets() if s]  # every non-empty subset, smallest first
        self._large, self._small = adjacent_pairs(self._subsets)
        self._full_index = self._subsets.index(full)
        self._loo_index = [self._subsets.index(tuple(j for j in full if j != m)) for m in full]
        self._loo_subsets = [self._subsets[i] for i in self._loo_index]

    def begin_epoch(self, ctx: StepContext) -> None:
        super().begin_epoch(ctx)
        if ctx.modulating and self.config.removal == "epoch":  # BB: one random order per epoch
            g = ctx.generator
            order = torch.randperm(len(self.modalities), generator=g, device=g.device)
            self._epoch_ranks = torch.argsort(order).to(self.device)

    def _chain_ranks(self, batch_size: int, ctx: StepContext) -> Tensor:
        if self.config.removal == "epoch":
            if self._epoch_ranks is None:
                raise RuntimeError("CML removal=epoch: begin_epoch draws the epoch's order before the first step")
            return self._epoch_ranks.unsqueeze(0).expand(batch_size, -1)
        g = ctx.generator
        draws = torch.rand(batch_size, len(self.modalities), generator=g, device=g.device)
        return draws.argsort(dim=1).argsort(dim=1).to(self.device)  # each sample's own random order

    def extra_loss(self, out: ModelOutput, batch: Batch, ctx: StepContext) -> Tensor:
        cfg: CMLConfig = self.config
        if self._model is None:
            raise RuntimeError("CML.extra_loss before bind: the trial binds the model first")
        model, labels, features = self._model, batch.labels, out.features
        b = labels.shape[0]
        if cfg.removal == "all":
            logits = model.subset_logits(features, self._subsets)  # (S, B, C)
            large, small, full = self._large, self._small, self._full_index
        else:
            present = chain_present(self._chain_ranks(b, ctx))  # (M, B, M)
            logits = model.fusion(masked_features(features, present, self.modalities)).view(len(self.modalities), b, -1)
            large, small, full = list(range(len(self.modalities) - 1)), list(range(1, len(self.modalities))), 0
        conf, pred = confidence(logits)  # (S, B)
        correct = pred == labels.unsqueeze(0)
        d = masked_differences(conf[small], conf[large], correct[small], correct[large], cfg.mask)
        penalty = cml_penalty(d, hinge=cfg.hinge, reduction=cfg.reduction)
        loss = cfg.lam * penalty
        if cfg.subset_ce:  # mean CE over the full set and every subset, minus the CE_full the loop adds
            mean_ce = F.cross_entropy(logits.flatten(0, 1), labels.repeat(logits.shape[0]))
            loss = loss + mean_ce - F.cross_entropy(out.logits, labels)
        with torch.no_grad():
            self.traces.add_many("penalty", penalty.detach().reshape(1), ["all"])
            self.traces.add_many("vrr", violation_rate(conf[small], conf[large]).reshape(1), ["all"])
            if cfg.removal == "all":
                loo = conf[self._loo_index]
            else:
                loo = confidence(model.subset_logits({m: f.detach() for m, f in features.items()}, self._loo_subsets))[0]
            full_conf = conf[full].detach()
            self.traces.add_many("violation", (loo > full_conf).float().mean(dim=1), self.modalities)
            self.traces.add_many("increment", confidence_increment(loo, full_conf).mean(dim=1), self.modalities)
        return loss
