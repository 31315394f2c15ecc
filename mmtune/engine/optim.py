"""Optimizers and the learning-rate schedule named by a :class:`~mmtune.engine.trial.TrainConfig`."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["build_optimizer", "build_scheduler", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "adam", "adamw", "adagrad")


def build_optimizer(
    params: Iterable[torch.nn.Parameter], *, name: str, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    # foreach kernels: one fused update per parameter group instead of a Python loop per tensor.
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay, foreach=True)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, step_size: int | None, gamma: float
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Step decay every ``step_size`` epochs (the papers' schedule, e.g. ×0.1 every 70); None = constant."""
    if not step_size:
        return None
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
