"""Evaluation metrics and the papers' uni-modal score / discrepancy ratio.

All functions take tensors on any device and return tensors, so a caller can compute everything
for an epoch and read it back with a single host sync.

* :func:`accuracy`, :func:`macro_f1` (F1 averaged over the classes that occur in labels or
  predictions, as scikit-learn's ``f1_score(average="macro")``), :func:`mean_average_precision`
  (one-vs-rest average precision of the softmax scores per class, averaged over classes with at
  least one positive, as ``average_precision_score`` per class — the papers' mAP).
* :func:`unimodal_score` — OPM/OGM Eq. 6: s_i^m = softmax(uni-modal logits of x_i)_{y_i}.
* :func:`discrepancy_ratio` — OPM/OGM Eq. 7: ρ^m = 1/(M−1) Σ_{j≠m} (Σ_i s_i^m) / (Σ_i s_i^j), or the
  difference form of Table 15.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "accuracy",
    "macro_f1",
    "mean_average_precision",
    "unimodal_score",
    "unimodal_score_sums",
    "discrepancy_ratio",
    "classification_metrics",
]

EPS = 1e-8


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(dim=1) == labels).float().mean()


def macro_f1(preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    idx = labels * num_classes + preds
    confusion = torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes).float()
    tp = confusion.diagonal()
    support = confusion.sum(dim=1)  # true count per class
    predicted = confusion.sum(dim=0)
    denom = support + predicted
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
    present = (denom > 0).float()  # classes seen in labels or predictions
    # A masked mean instead of f1[present]: boolean indexing would force a host sync on CUDA.
    return (f1 * present).sum() / present.sum().clamp_min(1)


def mean_average_precision(scores: Tensor, labels: Tensor) -> Tensor:
    """Mean over classes (with ≥ 1 positive) of non-interpolated average precision, ties grouped."""
    n, num_classes = scores.shape
    order = scores.argsort(dim=0, descending=True)
    sorted_scores = scores.gather(0, order)
    positive = (labels.unsqueeze(1) == torch.arange(num_classes, device=labels.device)).float()
    sorted_pos = positive.gather(0, order)
    tp = sorted_pos.cumsum(0)
    rank = torch.arange(1, n + 1, device=scores.device, dtype=scores.dtype).unsqueeze(1)
    # A threshold closes where the next score differs (or at the end): precision is taken there.
    closes = torch.ones_like(sorted_scores, dtype=torch.bool)
    closes[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    precision = tp / rank
    total_pos = positive.sum(0)
    # Recall increment at each closing threshold = positives gained since the previous closing one.
    tp_at_close = torch.where(closes, tp, torch.zeros_like(tp))
    prev_tp = torch.cummax(tp_at_close, dim=0).values
    prev_tp = torch.cat([torch.zeros_like(prev_tp[:1]), prev_tp[:-1]], dim=0)
    gained = torch.where(closes, tp - prev_tp, torch.zeros_like(tp))
    ap = (gained * precision).sum(0) / total_pos.clamp_min(1)
    has_pos = (total_pos > 0).to(ap.dtype)
    return (ap * has_pos).sum() / has_pos.sum().clamp_min(1)


def unimodal_score(logits: Tensor, labels: Tensor) -> Tensor:
    """OPM/OGM Eq. 6: the softmax probability each sample's uni-modal prediction gives its label."""
    return torch.softmax(logits.float(), dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)


def unimodal_score_sums(stacked_logits: Tensor, labels: Tensor) -> Tensor:
    """(M,) Σ_i s_i^m of Eq. 6 for every modality at once, from (M, B, C) uni-modal logits."""
    m, b, _ = stacked_logits.shape
    probs = torch.softmax(stacked_logits.float(), dim=2)
    return probs.gather(2, labels.view(1, b, 1).expand(m, b, 1)).sum(dim=(1, 2))


def discrepancy_ratio(score_sums: Tensor, form: str = "ratio") -> Tensor:
    """OPM/OGM Eq. 7 for M ≥ 2 modalities.

    ``score_sums`` is (M,): Σ_{i∈B} s_i^m per modality. ``form="ratio"`` gives
    ρ^m = 1/(M−1) Σ_{j≠m} S^m / S^j (ε in the denominator); ``form="difference"`` gives
    1/(M−1) Σ_{j≠m} (S^m − S^j) (Table 15).
    """
    m = score_sums.shape[0]
    if m < 2:
        raise ValueError(f"the discrepancy ratio needs two or more modalities, got {m}")
    if form == "ratio":
        # Σ_{j≠m} S^m / (S^j + ε) = S^m · (Σ_j 1/(S^j + ε) − 1/(S^m + ε)): no M×M matrix.
        inv = (score_sums + EPS).reciprocal()
        return score_sums * (inv.sum() - inv) / (m - 1)
    if form == "difference":
        # Σ_{j≠m} (S^m − S^j) = M·S^m − Σ_j S^j
        return (m * score_sums - score_sums.sum()) / (m - 1)
    raise ValueError(f"form must be 'ratio' or 'difference', got {form!r}")


def classification_metrics(logits: Tensor, labels: Tensor, num_classes: int) -> dict[str, Tensor]:
    """acc, macro_f1 and map of one split's logits (tensors; the caller syncs once)."""
    return {
        "acc": accuracy(logits, labels),
        "macro_f1": macro_f1(logits.argmax(dim=1), labels, num_classes),
        "map": mean_average_precision(torch.softmax(logits.float(), dim=1), labels),
    }
