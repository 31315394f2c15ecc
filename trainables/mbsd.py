"""MBSD: sample-weighted self-distillation between the uni-modal predictions (as BalanceBenchmark runs it).

Sources. GeWu-Lab/BalanceBenchmark (``balancemm/trainer/MBSD_trainer.py``, its ``configs/trainer_config.yaml``
entry ``MBSD: {modulation_starts: 0, modulation_ends: 80}``, and ``balancemm/models/avclassify_model.py``
``unimodality_calculate``; "the code" / "BB" below) lists MBSD among its "objective methods" in its README
(the survey "BalanceBenchmark: A Survey for Multimodal Imbalance Learning", Xu, Cui, Huang, Wang, Hu,
arXiv:2502.10816) but gives no citation for it, and no official repository of MBSD was found. The title,
authors, venue and arXiv id of the MBSD paper could **not** be verified here (three searches of the stored
pages found nothing that matches), so none is given, and no name is expanded from the acronym. Every
equation below is read from the BB code, not quoted from a paper.

The quantities (per sample, inside the window), with u^m the logits of modality m and p^m = softmax(u^m):
* Each pair of modalities (i, j) (M = 2: the one pair; M = 3: the three pairs, averaged — the code has
  these two cases; for M > 3 we average over all pairs the same way):
  - the true-class confidences p^i_y, p^j_y; the strong one p_s = max(p^i_y, p^j_y), the weak p_w = min;
  - the sample weight w = p_s − p_w = |p^i_y − p^j_y| where at least one of the two predicts the label
    (argmax p^i = y or argmax p^j = y), else 0;
  - the regression term RS = (1/C) Σ_k (z^i_k − z^j_k)², z = logits for M = 2, z = p for M = 3 (the code);
  - the distillation term KL = F.kl_div(p_s, p_w) = p_w (log p_w − p_s) (the code passes the probability
    p_s where kl_div expects a log-probability; elementwise on the two scalars).
* L_pair = (1/B) Σ_b w_b (RS_b + KL_b); L_SD = mean over pairs of L_pair.
* Total: L = CE(fused) + Σ_m CE(u^m) + λ · L_SD (code: λ = 1). Outside the window: CE(fused) only.

Equation → function:
* p^m_y, correctness: :func:`true_class_confidence`; w: :func:`pair_weight`; RS: :func:`regression_term`;
  KL: :func:`distillation_term` (``kl: code`` / ``full``); L_pair: :func:`pair_loss`; the pair mean:
  :func:`self_distillation_loss`; the total: :meth:`MBSD.extra_loss` (adds Σ CE(u^m) + λ L_SD to the loop's CE).

Interpretations:
* u^m: ``logits: unimodal`` (default) is ``model.unimodal_logits`` — for concat exactly BB's
  W^m·φ^m + b/M; other fusions use mmtune's split/zero-out rule. ``own``: ``model.modality_logits`` (each
  modality's own head where the fusion has one: late, sum).
* The window: BB's epochs 0..80 (0-based, inclusive) of its runs; here the base window (default the whole
  run, ``start_epoch``/``end_epoch``); outside it the loop's plain CE(fused) is the code's ``loss['out']``.
* Gradients flow through w, p_s, p_w, RS as in the code (its w is filled by item assignment from tensors
  that carry gradient, so w is part of the graph). ``detach_weight: true`` stops the gradient through w.

Departures of the code, offered as hyperparameters:
* ``rs_space: code`` (default) uses logits for M = 2 and probabilities for M ≥ 3, as the code;
  ``logits`` / ``probs`` use one space for every M.
* ``kl: code`` (default) is the code's kl_div on the true-class scalars with a probability as "input";
  ``full`` is KL(p^s ‖ p^w) over the C classes, s the modality with the larger true-class probability.
* ``unimodal_ce: false`` drops Σ_m CE(u^m) (the code always adds it inside the window).
* ``lam`` λ scales L_SD (the code: 1, no weight).

Traces (means over the window's steps): ``trace/confidence/<m>`` (mean p^m_y), ``trace/strong/<m>`` (share
of (sample, pair) slots where m is the strong side, over the pairs m is in), ``trace/unimodal_ce/<m>``,
``trace/weight/all`` (mean w), ``trace/rs/all``, ``trace/kl/all`` (the weighted terms, pair-averaged),
``trace/sd_loss/all`` (L_SD).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
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
    "MBSD", "MBSDConfig", "true_class_confidence", "pair_weight", "regression_term", "distillation_term",
    "pair_loss", "self_distillation_loss",
]


@dataclass(frozen=True)
class MBSDConfig(MethodConfig):
    lam: float = hp(1.0, low=0.0, doc="weight λ of the self-distillation term L_SD (code: 1)")
    rs_space: str = hp("code", choices=("code", "logits", "probs"),
                       doc="space of the regression term: code (logits for 2 modalities, probs for 3+), logits, probs")
    kl: str = hp("code", choices=("code", "full"),
                 doc="code: kl_div(p_s, p_w) on the true-class scalars (as BB); full: KL(p^s‖p^w) over the classes")
    unimodal_ce: bool = hp(True, doc="add Σ_m CE of each modality's logits inside the window (code: yes)")
    detach_weight: bool = hp(False, doc="stop the gradient through the sample weight w (code: it flows)")
    logits: str = hp("unimodal", choices=("unimodal", "own"),
                     doc="u^m: the fused head's split (unimodal, BB's concat rule) or each modality's own head (own)")


# ----------------------------------------------------------------------------- pure functions

def true_class_confidence(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(M, B, C) logits, (B,) labels → (probabilities (M, B, C), p^m_y (M, B), correct (M, B) bool)."""
    probs = logits.softmax(dim=-1)
    index = labels.view(1, -1, 1).expand(logits.shape[0], -1, 1)
    return probs, probs.gather(-1, index).squeeze(-1), logits.argmax(dim=-1) == labels.unsqueeze(0)


def pair_weight(p_i: Tensor, p_j: Tensor, correct_i: Tensor, correct_j: Tensor) -> Tensor:
    """w = |p^i_y − p^j_y| where modality i or j predicts the label, else 0: (B,) each → (B,)."""
    return torch.where(correct_i | correct_j, (p_i - p_j).abs(), torch.zeros_like(p_i))


def regression_term(z_i: Tensor, z_j: Tensor) -> Tensor:
    """RS = (1/C) Σ_k (z^i_k − z^j_k)²: (B, C) each → (B,)."""
    return (z_i - z_j).square().sum(dim=-1) / z_i.shape[-1]


def distillation_term(p_i: Tensor, p_j: Tensor, probs_i: Tensor | None = None, probs_j: Tensor | None = None,
                      *, kind: str = "code") -> Tensor:
    """The per-sample KL term, (B,).

    ``code``: with p_s = max(p^i_y, p^j_y), p_w = min: p_w (log p_w − p_s) (BB's ``F.kl_div(ps, pw)``, 0 where
    p_w = 0). ``full``: Σ_k p^s_k (log p^s_k − log p^w_k) with s the side of larger p_y (needs ``probs_*``)."""
    strong_i = p_i >= p_j
    if kind == "code":
        ps, pw = torch.maximum(p_i, p_j), torch.minimum(p_i, p_j)
        return torch.xlogy(pw, pw) - pw * ps
    if kind == "full":
        if probs_i is None or probs_j is None:
            raise ValueError("kl='full' needs the class probabilities of both modalities")
        s = torch.where(strong_i.unsqueeze(-1), probs_i, probs_j)
        w = torch.where(strong_i.unsqueeze(-1), probs_j, probs_i)
        tiny = torch.finfo(w.dtype).tiny
        return (torch.xlogy(s, s) - s * w.clamp_min(tiny).log()).sum(dim=-1)
    raise ValueError(f"unknown kl kind {kind!r}")


def pair_loss(weight: Tensor, rs: Tensor, kl: Tensor) -> Tensor:
    """L_pair = (1/B) Σ_b w_b (RS_b + KL_b) (the code's ``mm(w, ·) / len``)."""
    return (weight * (rs + kl)).sum() / weight.shape[0]


def self_distillation_loss(logits: Tensor, labels: Tensor, *, rs_space: str = "code", kl: str = "code",
                           detach_weight: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
    """L_SD = mean over the pairs (i < j) of L_pair, from (M, B, C) uni-modal logits; also the parts for traces
    (``weight``, ``rs``, ``kl``: pair-averaged weighted terms; ``strong``: (M,) share of strong slots)."""
    m = logits.shape[0]
    if m < 2:
        raise ValueError(f"MBSD needs two or more modalities, got {m}")
    probs, p_y, correct = true_class_confidence(logits, labels)
    space = ("logits" if m == 2 else "probs") if rs_space == "code" else rs_space
    z = logits if space == "logits" else probs
    pairs = list(combinations(range(m), 2))
    total = logits.new_zeros(())
    parts = {"weight": logits.new_zeros(()), "rs": logits.new_zeros(()), "kl": logits.new_zeros(())}
    strong = logits.new_zeros(m)
    b = logits.shape[1]
    for i, j in pairs:
        w = pair_weight(p_y[i], p_y[j], correct[i], correct[j])
        if detach_weight:
            w = w.detach()
        rs = regression_term(z[i], z[j])
        d = distillation_term(p_y[i], p_y[j], probs[i], probs[j], kind=kl)
        total = total + pair_loss(w, rs, d)
        with torch.no_grad():
            parts["weight"] += w.mean()
            parts["rs"] += (w * rs).sum() / b
            parts["kl"] += (w * d).sum() / b
            share_i = (p_y[i] >= p_y[j]).float().mean()
            strong[i] += share_i
            strong[j] += 1 - share_i
    n = len(pairs)
    parts = {k: v / n for k, v in parts.items()}
    parts["strong"] = strong / (m - 1)  # each modality is in M − 1 pairs
    return total / n, parts


# ----------------------------------------------------------------------------- the strategy

@register
class MBSD(BalancingMethod):
    name = "mbsd"
    Config = MBSDConfig
    paper = "MBSD — as implemented in GeWu-Lab/BalanceBenchmark (MBSD_trainer.py); paper not verified here"
    state = ()  # stateless: every term is computed from the step's forward pass

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._model: MultimodalModel | None = None

    def bind(self, model: MultimodalModel) -> None:
        if len(model.modalities) < 2:
            raise ConfigError([Problem("dataset.modalities", (
                f"has {model.modalities}: MBSD distils between pairs of modalities, so it needs two or more; "
                "use method=joint or unimodal."))])
        self._model = model

    def unimodal(self, features: dict[str, Tensor]) -> Tensor:
        """u^m for every modality, (M, B, C) in ``modalities`` order."""
        if self._model is None:
            raise RuntimeError("MBSD before bind: the trial binds the model first")
        if self.config.logits == "own":
            own = self._model.modality_logits(features)
            return torch.stack([own[m] for m in self.modalities])
        return self._model.stacked_unimodal_logits(features)

    def extra_loss(self, out: ModelOutput, batch: Batch, ctx: StepContext) -> Tensor:
        cfg: MBSDConfig = self.config
        logits = self.unimodal(out.features)
        labels = batch.labels
        sd, parts = self_distillation_loss(logits, labels, rs_space=cfg.rs_space, kl=cfg.kl,
                                           detach_weight=cfg.detach_weight)
        ce = torch.stack([F.cross_entropy(u, labels) for u in logits])
        loss = cfg.lam * sd
        if cfg.unimodal_ce:
            loss = loss + ce.sum()
        with torch.no_grad():
            self.traces.add_many("confidence", true_class_confidence(logits.detach(), labels)[1].mean(dim=1), self.modalities)
            self.traces.add_many("strong", parts["strong"], self.modalities)
            self.traces.add_many("unimodal_ce", ce.detach(), self.modalities)
            self.traces.add_many("weight", parts["weight"].reshape(1), ["all"])
            self.traces.add_many("rs", parts["rs"].reshape(1), ["all"])
            self.traces.add_many("kl", parts["kl"].reshape(1), ["all"])
            self.traces.add_many("sd_loss", sd.detach().reshape(1), ["all"])
        return loss
