"""The one epoch loop (DESIGN §3.2). Every balancing method runs through it, by hooks.

Read it top to bottom like nanoGPT's train.py: batch → method.before_forward → forward →
method.loss (+ method.extra_loss) → backward → method.modulate_gradients → clip → step →
method.after_step. The loop knows no method by name: everything a method changes goes through these
hooks (:mod:`mmtune.engine.method`). Nothing here reads a value back to the host per batch: the loss
is summed on the device and read once per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mmtune.data.base import TensorSplit
from mmtune.engine.method import BalancingMethod, StepContext
from mmtune.engine.metrics import classification_metrics, discrepancy_ratio, unimodal_score
from mmtune.models.multimodal import MultimodalModel

__all__ = ["EpochStats", "train_epoch", "evaluate"]


@dataclass
class EpochStats:
    loss_sum: Tensor  # Σ over samples of the optimised loss, on the device
    samples: int
    steps: int


def train_epoch(
    model: MultimodalModel,
    split: TensorSplit,
    method: BalancingMethod,
    optimizer: torch.optim.Optimizer,
    ctx: StepContext,
    *,
    batch_size: int,
    data_generator: torch.Generator,
    grad_clip: float | None = None,
) -> EpochStats:
    model.train()
    active = ctx.modulating or method.always_active
    loss_sum = torch.zeros((), device=ctx.device)
    samples = steps = 0
    for step, batch in enumerate(split.batches(batch_size, generator=data_generator)):
        ctx.step = step
        if active:
            batch = method.before_forward(batch, ctx)
        out = model(batch.inputs, drop=batch.drop, features=batch.features)
        loss = method.loss(out, batch, ctx) if active and method.replaces_loss else F.cross_entropy(out.logits, batch.labels)
        if active:
            extra = method.extra_loss(out, batch, ctx)
            if extra is not None:
                loss = loss + extra
        loss.backward()
        if active:
            method.modulate_gradients(model, out, batch, ctx)
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        # Free the gradients now rather than at the next backward: no need for that memory.
        optimizer.zero_grad(set_to_none=True)
        if active:
            method.after_step(out, batch, ctx)
        n = len(batch)
        loss_sum += loss.detach() * n
        samples += n
        steps += 1
        ctx.global_step += 1
    return EpochStats(loss_sum, samples, steps)


@torch.no_grad()
def evaluate(
    model: MultimodalModel, split: TensorSplit, *, batch_size: int, prefix: str, imbalance: bool = True
) -> dict[str, Tensor]:
    """Joint and per-modality metrics of one split, as device tensors (``<prefix>_acc`` …).

    With ``imbalance``, also the discrepancy ratio ρ^m (OPM/OGM Eq. 6–7) over the whole split, as
    ``imbalance/<m>`` (the trial reports it for validation only).
    """
    model.eval()
    logits, uni, labels = [], {m: [] for m in model.modalities}, []
    for batch in split.batches(batch_size):
        out = model(batch.inputs)
        logits.append(out.logits)
        for m, lm in model.unimodal_logits(out.features).items():
            uni[m].append(lm)
        labels.append(batch.labels)
    logits_all, y = torch.cat(logits), torch.cat(labels)
    metrics = {f"{prefix}_{k}": v for k, v in classification_metrics(logits_all, y, model.num_classes).items()}
    uni_all = {m: torch.cat(v) for m, v in uni.items()}
    for m, lm in uni_all.items():
        metrics[f"{prefix}_acc/{m}"] = (lm.argmax(1) == y).float().mean()
    if imbalance and len(model.modalities) >= 2:
        scores = torch.stack([unimodal_score(uni_all[m], y).sum() for m in model.modalities])
        for m, rho in zip(model.modalities, discrepancy_ratio(scores), strict=True):
            metrics[f"imbalance/{m}"] = rho
    return metrics
