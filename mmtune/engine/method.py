"""The balancing-method contract (v2): the hooks the one training loop calls (DESIGN §3.2).

A method is a small object, not a subclass of the loop. Per batch the loop calls, by name and in
this order::

    batch = method.before_forward(batch, ctx)              # e.g. OPM: sample drop masks
    out   = model(batch.inputs, drop=batch.drop)
    loss  = method.loss(out, batch, ctx)                   # the task loss: CE of the fused logits
    loss += method.extra_loss(out, batch, ctx)             # e.g. AIM: L_mod, PMR: prototype CE
    loss.backward()
    method.modulate_gradients(model, out, batch, ctx)      # e.g. OGM: scale modality gradients
    optimizer.step()                                       # (fp16: a step whose gradients overflowed skips both)
    method.after_step(out, batch, ctx)                     # e.g. AGM: running averages

plus ``begin_epoch(ctx)`` / ``end_epoch(ctx) -> traces`` around each epoch. The per-batch hooks are
called only inside the modulation window ``start_epoch <= epoch <= end_epoch`` (1-based, inclusive;
the papers' E) unless a method sets ``always_active`` (e.g. AIM, whose phases switch at E): that is
the one mechanism every method's window goes through, and ``ctx.modulating`` says which side of it
an always-active method is on.

What a hook may see: one :class:`StepContext` with the epoch and step, the method's own RNG, the
model, the optimizer, the trial's training split (for epoch-level passes: prototypes, class means)
and the current :class:`Stage`. What a method keeps across steps is declared once in ``state``
(attribute names): the base class saves and restores them with the trial's checkpoint.

Held-out samples: a method that estimates something on data it must not train on (G-Blending's
overfitting-to-generalisation ratio) reserves part of the training split with
:meth:`BalancingMethod.train_indices`. The trial asks once, when it is built, with a generator seeded
from the trial's seed alone: the same config reserves the same samples on every build, so a checkpoint
restores the split without storing it. The loop then trains only on the rest (``ctx.train``: no
gradient step, no batch, no BatchNorm statistic sees a reserved sample) and the reserved samples reach
the hooks as ``ctx.holdout``. Every other method trains on the whole split (the default, None).

Multi-stage methods (UME: each modality alone, then the ensemble) return their schedule from
:meth:`BalancingMethod.stages`; one Tune step stays one epoch and the trial knows the stage of each
epoch, so a checkpoint restores mid-stage.

Training schemes (contract v3; the defaults change nothing):

* :meth:`BalancingMethod.substeps` splits one batch into several optimizer steps (MLA: one per
  modality, in turn): the loop runs the whole step once per name, on a shallow copy of the batch,
  with ``ctx.substep`` set; ``before_forward`` returning None skips a substep.
* :meth:`BalancingMethod.epoch_indices` chooses the epoch's training samples (indices into
  ``ctx.train``, repeats allowed: re-sampled copies, e.g. sample-level valuation); ``Batch.index``
  holds each row's position in that tensor (in the split when the method chose none).
* :meth:`BalancingMethod.predict` is the method's inference rule for validation and test (MLA's
  uncertainty-weighted fusion): the usual metric keys report it.

Hook names are checked when a method is registered (:func:`check_hook_names`): a public method whose
name is close to a hook's but not equal (``modulate_gradient``) is refused with a did-you-mean, so a
typo never trains silently as joint.

Traces (k, q, ρ, p …) are accumulated on the device with :class:`TraceMeter` and read back once per
epoch, so no hook forces a host sync per batch.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from mmtune.config import Record, hp
from mmtune.data.base import Batch, TensorSplit
from mmtune.errors import ConfigError, Problem

if TYPE_CHECKING:
    from mmtune.models.multimodal import ModelOutput, MultimodalModel

__all__ = ["HOOKS", "BalancingMethod", "MethodConfig", "Stage", "StepContext", "TraceMeter", "check_hook_names", "check_stages"]


@dataclass(frozen=True)
class MethodConfig(Record):
    """Hyperparameters every method has: the modulation window (the papers' start epoch E)."""

    start_epoch: int = hp(1, low=1, doc="first epoch (1-based) the method modulates")
    end_epoch: int | None = hp(None, low=1, doc="last epoch it modulates, inclusive (null: to the end)")

    def extra_checks(self) -> list[Problem]:
        if self.end_epoch is not None and self.end_epoch < self.start_epoch:
            return [Problem("end_epoch", f"must be >= start_epoch ({self.start_epoch}), got {self.end_epoch}.")]
        return []


@dataclass(frozen=True)
class Stage:
    """One stage of a method's schedule: ``epochs`` consecutive epochs (Tune steps) under one name.

    ``fresh_optimizer``: the trial builds a new optimizer and LR schedule when the stage starts (a
    stage that trains a new model from scratch, e.g. UME's next uni-modal member).
    """

    name: str
    epochs: int
    fresh_optimizer: bool = False


@dataclass
class StepContext:
    """What a hook may know about where training is, and what it may reach."""

    epoch: int  # 1-based
    step: int  # batch index within the epoch
    global_step: int
    modulating: bool  # inside [start_epoch, end_epoch]
    generator: torch.Generator  # the method's own RNG (on the training device), checkpointed
    device: torch.device
    model: MultimodalModel | None = None
    optimizer: torch.optim.Optimizer | None = None
    train: TensorSplit | None = None  # the samples the loop trains on, for epoch-level passes (no val/test)
    holdout: TensorSplit | None = None  # the training samples train_indices reserved (None: none reserved)
    batch_size: int = 0  # the training mini-batch size
    stage: Stage | None = None  # the stage this epoch belongs to
    stage_epoch: int = 0  # 1-based epoch within the stage
    substep: str | None = None  # the substep this step belongs to (None: the batch's one step)


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


# Every name the loop and the trial call on a method; a public method close to one of these but not
# equal is a typo (checked at registration).
HOOKS = frozenset({
    "bind", "extra_parameters", "in_window", "stages", "select_modalities", "hyperparameters", "train_indices",
    "begin_epoch", "end_epoch", "before_forward", "loss", "extra_loss", "modulate_gradients", "after_step",
    "state_dict", "load_state_dict", "substeps", "predict", "epoch_indices", "min_epochs",
})


def check_hook_names(cls: type) -> None:
    """Refuse a public method whose name is a near miss of a hook (``modulate_gradient``)."""
    for name, value in vars(cls).items():
        if name.startswith("_") or name in HOOKS or not callable(value) and not isinstance(value, (classmethod, staticmethod)):
            continue
        close = difflib.get_close_matches(name, HOOKS, n=1, cutoff=0.8)
        if close:
            raise TypeError(
                f"{cls.__name__}.{name} is not a hook the loop calls. Did you mean '{close[0]}'? "
                f"Hooks: {', '.join(sorted(HOOKS))}. (A helper with a name this close to a hook is refused, "
                "so that a typo never trains silently as joint; rename it.)"
            )


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


class BalancingMethod:
    """Base strategy whose hooks all do nothing: that is exactly joint training.

    Subclasses set ``name``, ``Config`` (a :class:`MethodConfig`), ``paper``, and ``state`` (the
    attributes saved with a checkpoint: tensors, numbers, None, or lists/dicts of them), and
    override the hooks they need.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    paper: ClassVar[str] = ""
    always_active: ClassVar[bool] = False
    state: ClassVar[tuple[str, ...]] = ()
    # True, or the reason this method does not compose with others by ``+`` (mmtune.engine.compose).
    composable: ClassVar[bool | str] = True

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

    def bind(self, model: MultimodalModel) -> None:
        """Called once after the model is built (cache parameter groups, add modules …)."""

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters the method owns (optimised with the model's)."""
        return []

    def stages(self, epochs: int) -> tuple[Stage, ...]:
        """The schedule of a trial of ``epochs`` epochs; one stage unless the method has several."""
        return (Stage("train", epochs),)

    @classmethod
    def min_epochs(cls, config: MethodConfig, modalities: list[str]) -> int:
        """The fewest epochs a trial of this method can have (a stage per modality needs one each); a
        smoke test (``mmtune sweep --smoke-test``) runs at least this many."""
        return 1

    def train_indices(self, n: int, generator: torch.Generator) -> Tensor | None:
        """Indices into the training split (``n`` samples) of the samples the loop trains on; None (the
        default): all of them. The others are reserved: held out of every gradient step for the whole
        trial and handed to the hooks as ``ctx.holdout``. Called once, after :meth:`bind`, with a CPU
        generator seeded from the trial's seed only; the result must depend on nothing else, so that
        every build of the same config (a restored checkpoint) reserves the same samples."""
        return None

    def in_window(self, epoch: int) -> bool:
        end = self.config.end_epoch
        return self.config.start_epoch <= epoch and (end is None or epoch <= end)

    # -- per-epoch hooks ----------------------------------------------------------------------------
    def begin_epoch(self, ctx: StepContext) -> None:
        self.traces.reset()

    def epoch_indices(self, ctx: StepContext) -> Tensor | None:
        """The samples this epoch trains on, as a 1-D integer tensor of indices into ``ctx.train``
        (repeats allowed: re-sampled copies); the loop shuffles and batches them, and ``Batch.index``
        holds each row's position in this tensor. None (the default): every sample once. Called
        after :meth:`begin_epoch`, when the method is active."""
        return None

    def end_epoch(self, ctx: StepContext) -> dict[str, float]:
        """The method's trace for the epoch, as ``trace/<quantity>/<modality or depth>`` → mean."""
        return {f"trace/{k}": v for k, v in self.traces.compute().items()}

    # -- per-batch hooks --------------------------------------------------------------------------
    def substeps(self, batch: Batch, ctx: StepContext) -> Sequence[str] | None:
        """Names of the optimizer steps to take on this batch, in order (MLA: one per modality); None
        (the default): one step. Each substep runs the whole step — before_forward on a shallow copy
        of the batch (returning None skips the substep), forward, loss, backward, modulate_gradients,
        optimizer step, after_step — with ``ctx.substep`` set to its name."""
        return None

    def before_forward(self, batch: Batch, ctx: StepContext) -> Batch | None:
        return batch

    # Methods that replace the task loss say so (composition refuses two of them in one composite).
    replaces_loss: ClassVar[bool] = False

    def loss(self, out: ModelOutput, batch: Batch, ctx: StepContext) -> Tensor:
        """The task loss: cross-entropy of the fused logits (a method that sets ``replaces_loss`` may change it)."""
        return F.cross_entropy(out.logits, batch.labels)

    def extra_loss(self, out: ModelOutput, batch: Batch, ctx: StepContext) -> Tensor | None:
        return None

    def modulate_gradients(self, model: MultimodalModel, out: ModelOutput, batch: Batch, ctx: StepContext) -> None:
        return None

    def after_step(self, out: ModelOutput, batch: Batch, ctx: StepContext) -> None:
        """After ``optimizer.step()``: running statistics that must see the updated parameters."""
        return None

    # -- evaluation -------------------------------------------------------------------------------
    def predict(self, model: MultimodalModel, out: ModelOutput) -> tuple[Tensor, dict[str, Tensor]] | None:
        """The method's inference rule for validation and test: (fused logits (B, C), each modality's
        logits), reported under the usual metric keys. None (the default): the model's fused logits
        and :meth:`MultimodalModel.unimodal_logits`. Called per evaluation batch, without grad."""
        return None

    # -- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The attributes named in ``state``, moved to the CPU."""
        return {name: _to_cpu(getattr(self, name)) for name in self.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != set(self.state):
            raise ValueError(f"method '{self.name}' keeps state {sorted(self.state)}, got keys {sorted(state)}")
        for name in self.state:
            setattr(self, name, _to_device(state[name], self.device))

    @classmethod
    def hyperparameters(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls.Config)]


def check_stages(stages: tuple[Stage, ...], epochs: int, method: str) -> None:
    """The stages must cover the trial's epochs exactly, each at least one epoch."""
    total = sum(s.epochs for s in stages)
    if total != epochs or any(s.epochs < 1 for s in stages):
        plan = " + ".join(f"{s.name} {s.epochs}" for s in stages)
        raise ConfigError([Problem("train.epochs", (
            f"is {epochs}, but method '{method}' schedules {plan} = {total} epochs; every stage needs >= 1 epoch "
            "and they must add up to train.epochs. Set train.epochs to the sum, or change the stage budgets in params."))])
