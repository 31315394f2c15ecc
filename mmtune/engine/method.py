"""The balancing-method strategy: the hooks the one training loop calls (DESIGN §3.2).

A method is a small object, not a subclass of the loop. Per batch the loop calls, by name and in
this order::

    batch = method.before_forward(batch, ctx)              # e.g. OPM: sample drop masks
    out   = model(batch.inputs, drop=batch.drop)
    loss  = cross_entropy(out.logits, y) + method.extra_loss(out, batch, ctx)
    loss.backward()
    method.modulate_gradients(model, out, batch, ctx)      # e.g. OGM: scale modality gradients
    optimizer.step()

plus ``begin_epoch(ctx)`` / ``end_epoch(ctx) -> traces`` around each epoch. The per-batch hooks are
called only inside the modulation window ``start_epoch <= epoch <= end_epoch`` (1-based, inclusive;
the papers' E) unless a method sets ``always_active`` (e.g. AIM, whose phases switch at E): that is
the one mechanism every method's window goes through, and ``ctx.modulating`` says which side of it
an always-active method is on.

Traces (k, q, ρ, p …) are accumulated on the device with :class:`TraceMeter` and read back once per
epoch, so no hook forces a host sync per batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from mmtune.config import Record, hp
from mmtune.data.base import Batch
from mmtune.errors import Problem

__all__ = ["BalancingMethod", "MethodConfig", "StepContext", "TraceMeter"]


@dataclass(frozen=True)
class MethodConfig(Record):
    """Hyperparameters every method has: the modulation window (the papers' start epoch E)."""

    start_epoch: int = hp(1, low=1, doc="first epoch (1-based) the method modulates")
    end_epoch: int | None = hp(None, low=1, doc="last epoch it modulates, inclusive (null: to the end)")

    def extra_checks(self) -> list[Problem]:
        if self.end_epoch is not None and self.end_epoch < self.start_epoch:
            return [Problem("end_epoch", f"must be >= start_epoch ({self.start_epoch}), got {self.end_epoch}.")]
        return []


@dataclass
class StepContext:
    """What a hook may know about where training is."""

    epoch: int  # 1-based
    step: int  # batch index within the epoch
    global_step: int
    modulating: bool  # inside [start_epoch, end_epoch]
    generator: torch.Generator  # the method's own RNG (on the training device), checkpointed
    device: torch.device


class TraceMeter:
    """Running means of named tensors, kept on the device; ``compute()`` syncs once."""

    def __init__(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}
        self._vector_names: dict[str, tuple[str, list[str]]] = {}

    def add(self, name: str, value: Tensor) -> None:
        value = value.detach()
        if name in self._sums:
            self._sums[name] += value
            self._counts[name] += 1
        else:
            self._sums[name] = value.clone().float()
            self._counts[name] = 1

    def add_many(self, prefix: str, values: Tensor, names: list[str]) -> None:
        """Add a (len(names),) tensor as ``prefix/<name>`` entries with one device op."""
        key = f"\0{prefix}"
        self.add(key, values)
        self._vector_names[key] = (prefix, list(names))

    def compute(self) -> dict[str, float]:
        if not self._sums:
            return {}
        keys = list(self._sums)
        stacked = torch.cat([(self._sums[k] / self._counts[k]).reshape(-1) for k in keys]).cpu().tolist()
        out: dict[str, float] = {}
        i = 0
        for k in keys:
            if k in self._vector_names:
                prefix, names = self._vector_names[k]
                for name in names:
                    out[f"{prefix}/{name}"] = stacked[i]
                    i += 1
            else:
                out[k] = stacked[i]
                i += 1
        return out

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()
        self._vector_names.clear()


class BalancingMethod:
    """Base strategy whose hooks all do nothing: that is exactly joint training."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    paper: ClassVar[str] = ""
    always_active: ClassVar[bool] = False

    def __init__(self, config: MethodConfig, *, modalities: list[str], num_classes: int, device: torch.device):
        self.config = config
        self.modalities = list(modalities)
        self.num_classes = num_classes
        self.device = device
        self.traces = TraceMeter()

    # -- set-up ----------------------------------------------------------------------------------
    @classmethod
    def select_modalities(cls, config: MethodConfig, modalities: list[str]) -> list[str]:
        """The modalities the trial trains on (all of them, except for the uni-modal baseline)."""
        return list(modalities)

    def bind(self, model: torch.nn.Module) -> None:
        """Called once after the model is built (cache parameter groups, add modules …)."""

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters the method owns (optimised with the model's)."""
        return []

    def in_window(self, epoch: int) -> bool:
        end = self.config.end_epoch
        return self.config.start_epoch <= epoch and (end is None or epoch <= end)

    # -- per-epoch hooks ----------------------------------------------------------------------------
    def begin_epoch(self, ctx: StepContext) -> None:
        self.traces.reset()

    def end_epoch(self, ctx: StepContext) -> dict[str, float]:
        """The method's trace for the epoch, as ``trace/<quantity>/<modality or depth>`` → mean."""
        return {f"trace/{k}": v for k, v in self.traces.compute().items()}

    # -- per-batch hooks --------------------------------------------------------------------------
    def before_forward(self, batch: Batch, ctx: StepContext) -> Batch:
        return batch

    def extra_loss(self, out: Any, batch: Batch, ctx: StepContext) -> Tensor | None:
        return None

    def modulate_gradients(self, model: torch.nn.Module, out: Any, batch: Batch, ctx: StepContext) -> None:
        return None

    # -- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"method '{self.name}' has no state, got keys {sorted(state)}")

    @classmethod
    def hyperparameters(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls.Config)]
