"""Linear probes: how much each modality's encoder has learnt, read without the joint classifier.

``val_acc/<m>`` reads modality m through the joint model's own classifier (its share of the fused
logits, OPM/OGM Eq. 2). That mixes two things: how good encoder m's features are, and how much of
the classifier the dominant modality's loss let m train. A *linear probe* (the standard linear
evaluation of a frozen representation) separates them: freeze the encoder, fit a fresh linear
classifier on its training-set features, report its accuracy. Papers that report "each modality's
performance" inside a multimodal model (AIM's Table I and Fig. 1) do not always say which of the
two they measured; with both, a table can show either.

The probe here is the closed-form ridge (least-squares) classifier: features standardised with the
training mean and standard deviation, a bias column, W = (XᵀX + λ·n·I')⁻¹ Xᵀ Y for one-hot Y (I'
leaves the bias unpenalised), prediction = argmax XW. One solve of a (D+1)² system per modality, in
float64 — milliseconds for D = 512 — instead of an iterative logistic regression, and with no
randomness. It costs one extra no-grad encoder pass over the training, validation and test splits
per evaluation (the training split dominates), so the trial
runs it only with ``train.probe=true``; it reports ``val_probe/<m>`` and ``test_probe/<m>``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmtune.data.base import TensorSplit
from mmtune.models.multimodal import MultimodalModel

__all__ = ["encoder_features", "fit_ridge_probe", "probe_predict", "probe_metrics"]


@torch.no_grad()
def encoder_features(model: MultimodalModel, split: TensorSplit, *, batch_size: int) -> tuple[dict[str, Tensor], Tensor]:
    """Each encoder's pooled feature φ^m of every sample of ``split`` (eval mode, in order), and the labels."""
    model.eval()
    features: dict[str, list[Tensor]] = {m: [] for m in model.modalities}
    labels = []
    for batch in split.batches(batch_size):
        for m, f in model.encode(batch.inputs).items():
            features[m].append(f.flatten(1))
        labels.append(batch.labels)
    return {m: torch.cat(f) for m, f in features.items()}, torch.cat(labels)


def _standardise(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    x = (x.double() - mean) / std
    return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)


def fit_ridge_probe(x: Tensor, y: Tensor, num_classes: int, *, ridge: float = 1e-3) -> tuple[Tensor, Tensor, Tensor]:
    """The ridge classifier of the module docstring on (n, D) features: returns (W, mean, std), W of shape (D+1, K).

    ``ridge`` is λ, relative to n (so it means the same whatever the training-set size); constant
    feature dimensions (std 0, e.g. dead ReLUs) are left at 0 after centring rather than divided by 0.
    """
    if x.shape[0] == 0:
        raise ValueError("fit_ridge_probe: no training samples to fit the probe on")
    x64 = x.double()
    mean, std = x64.mean(0), x64.std(0, correction=0)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    xs = _standardise(x, mean, std)
    n, d = xs.shape
    gram = xs.T @ xs
    penalty = torch.full((d,), ridge * n, dtype=xs.dtype, device=xs.device)
    penalty[-1] = 0.0  # the bias is not shrunk
    targets = torch.nn.functional.one_hot(y, num_classes).to(xs.dtype)
    w = torch.linalg.solve(gram + torch.diag(penalty), xs.T @ targets)
    return w, mean, std


def probe_predict(x: Tensor, w: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Class predictions of the fitted probe for (n, D) features."""
    return (_standardise(x, mean, std) @ w).argmax(1)


def probe_metrics(model: MultimodalModel, train: TensorSplit, evals: dict[str, TensorSplit], *,
                  batch_size: int, ridge: float = 1e-3) -> dict[str, Tensor]:
    """``<prefix>_probe/<m>``: accuracy on each split of ``evals`` (prefix → split) of a probe fitted
    on ``train``'s features of modality m. Device tensors, like :func:`mmtune.engine.loop.evaluate`."""
    train_x, train_y = encoder_features(model, train, batch_size=batch_size)
    fitted = {m: fit_ridge_probe(x, train_y, model.num_classes, ridge=ridge) for m, x in train_x.items()}
    metrics: dict[str, Tensor] = {}
    for prefix, split in evals.items():
        xs, y = encoder_features(model, split, batch_size=batch_size)
        for m, x in xs.items():
            metrics[f"{prefix}_probe/{m}"] = (probe_predict(x, *fitted[m]) == y).float().mean()
    return metrics
