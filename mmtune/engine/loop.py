"""The one epoch loop (DESIGN §3.2). Every balancing method runs through it, by hooks.

Read it top to bottom like nanoGPT's train.py: batch → method.before_forward → forward →
method.loss (+ method.extra_loss) → backward → method.modulate_gradients → clip → step →
method.after_step. The loop knows no method by name: everything a method changes goes through these
hooks (:mod:`mmtune.engine.method`). Nothing here reads a value back to the host per batch: the loss
is summed on the device and read once per epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mmtune.data.base import TensorSplit
from mmtune.engine.method import BalancingMethod, StepContext
from mmtune.engine.metrics import classification_metrics, discrepancy_ratio, unimodal_score
from mmtune.models.multimodal import ModelOutput, MultimodalModel

__all__ = ["EpochStats", "train_epoch", "evaluate", "PRECISIONS", "autocast"]

# train.precision → the autocast dtype of the model's forward pass (None: plain fp32, no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The mixed-precision context of ``precision`` on ``device``; fp32 enters none at all, so that fp32
    runs the very kernels it ran before precision existed (bit-identical results)."""
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _as_float(out: ModelOutput) -> ModelOutput:
    """The model's output in fp32. Under autocast the logits and features come out in bf16/fp16; the loss
    and every method's statistics (OGM's ratios, softmax scores, AMSS's Fisher terms, MMPareto's Gram
    products, norms) are computed from them outside autocast, so they get fp32 copies (differentiable:
    gradients flow back through the cast). Methods' own statistics thus stay fp32 with no change to them."""
    return ModelOutput(out.logits.float(), {m: f.float() for m, f in out.features.items()})


@dataclass
class EpochStats:
    loss_sum: Tensor  # Σ over samples of the optimised loss, on the device (every substep's)
    samples: int  # training samples the epoch passed over
    steps: int  # batches
    loss_samples: int  # the samples loss_sum is summed over (samples, unless a method takes substeps)

    @property
    def mean_loss(self) -> Tensor:
        return self.loss_sum / max(self.loss_samples, 1)


def _check_indices(indices: Tensor, n: int, method: str) -> Tensor:
    """A method's epoch_indices, checked: a non-empty 1-D integer tensor of indices in [0, n)."""
    index = torch.as_tensor(indices).detach()
    where = f"method '{method}': epoch_indices(...)"
    if index.dim() != 1 or index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool or not len(index):
        raise ValueError(f"{where} must return a non-empty 1-D integer tensor of indices into the {n} training samples, "
                         f"got {tuple(index.shape)} {index.dtype}")
    low, high = int(index.min()), int(index.max())
    if low < 0 or high >= n:
        raise ValueError(f"{where} must index the {n} training samples, [0, {n}); got indices in [{low}, {high}]")
    return index.long()


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
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
) -> EpochStats:
    """One epoch. ``precision`` bf16/fp16 runs the model's forward pass under autocast; its logits and
    features are then cast to fp32, so the loss and every method hook compute in fp32 (see
    :func:`_as_float`). ``scaler`` (fp16) scales the loss and is unscaled before the method's gradient
    hooks and clipping, so those see true gradients (a step whose gradients overflowed is skipped)."""
    model.train()
    scaling = scaler is not None and scaler.is_enabled()
    active = ctx.modulating or method.always_active
    loss_sum = torch.zeros((), device=ctx.device)
    samples = loss_n = steps = 0
    indices = method.epoch_indices(ctx) if active else None
    if indices is not None:
        split = split.subset(_check_indices(indices, len(split), method.name))
    for step, batch in enumerate(split.batches(batch_size, generator=data_generator)):
        ctx.step = step
        names = method.substeps(batch, ctx) if active else None
        for name in (None,) if names is None else names:
            ctx.substep = name
            part = batch if name is None else dataclasses.replace(batch)
            if active:
                part = method.before_forward(part, ctx)
                if part is None:
                    continue
            with autocast(ctx.device, precision):
                out = model(part.inputs, drop=part.drop, features=part.features)
            if precision != "fp32":
                out = _as_float(out)
            loss = method.loss(out, part, ctx) if active and method.replaces_loss else F.cross_entropy(out.logits, part.labels)
            if active:
                extra = method.extra_loss(out, part, ctx)
                if extra is not None:
                    loss = loss + extra
            overflow = False
            if scaling:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)  # the hooks and the clip below see unscaled fp32 gradients
                # A step whose fp16 gradients overflowed is skipped by scaler.step (which reads this same flag
                # on the host: no extra sync); its inf/NaN gradients must not reach the method either, or a
                # gradient statistic the method keeps would stay NaN for the rest of the run.
                overflow = any(v.item() for v in scaler._found_inf_per_device(optimizer).values())
            else:
                loss.backward()
            if active and not overflow:
                method.modulate_gradients(model, out, part, ctx)
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            if scaling:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            # Free the gradients now rather than at the next backward: no need for that memory.
            optimizer.zero_grad(set_to_none=True)
            if active:
                method.after_step(out, part, ctx)
            loss_sum += loss.detach() * len(part)
            loss_n += len(part)
        ctx.substep = None
        samples += len(batch)
        steps += 1
        ctx.global_step += 1
    return EpochStats(loss_sum, samples, steps, loss_n)


@torch.no_grad()
def evaluate(
    model: MultimodalModel, split: TensorSplit, *, batch_size: int, prefix: str, imbalance: bool = True,
    method: BalancingMethod | None = None, precision: str = "fp32",
) -> dict[str, Tensor]:
    """Joint and per-modality metrics of one split, as device tensors (``<prefix>_acc`` …).

    With ``imbalance``, also the discrepancy ratio ρ^m (OPM/OGM Eq. 6–7) over the whole split, as
    ``imbalance/<m>`` (the trial reports it for validation only). A ``method`` with an inference rule
    of its own (:meth:`BalancingMethod.predict`, e.g. MLA's uncertainty-weighted fusion) scores with it.
    """
    model.eval()
    device = next(model.parameters()).device
    logits, uni, labels = [], {m: [] for m in model.modalities}, []
    for batch in split.batches(batch_size):
        with autocast(device, precision):
            out = model(batch.inputs)
        if precision != "fp32":
            out = _as_float(out)
        rule = method.predict(model, out) if method is not None else None
        fused, per_modality = rule if rule is not None else (out.logits, model.unimodal_logits(out.features))
        logits.append(fused)
        for m in model.modalities:
            uni[m].append(per_modality[m])
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
