"""Composition of balancing methods by ``+``: ``opm+ogm`` runs OPM's and OGM's hooks together.

``compose("opm+amss", [OPM, AMSS])`` builds a method whose hyperparameters are its parts':

* a name only one part has keeps its bare name (``q_base``, ``tau``);
* a name several parts inherit from the same declaration (OPM's and OGM's ``gamma``, ``discrepancy``,
  ``z`` from the shared discrepancy config; the window ``start_epoch``/``end_epoch`` of
  :class:`~mmtune.engine.method.MethodConfig`) means the same thing in each, so it stays one bare
  hyperparameter that every part reads (OPM/OGM §4.3.9 in general form);
* a name several parts declare *separately* (OPM's λ and AMSS's λ; AIM's E and OGM's start epoch)
  means different things, so each part's is namespaced, ``opm.lam`` and ``amss.lam``; a spec or an
  override may set either, and the bare ``lam`` is refused as ambiguous, naming both.

Hooks: ``before_forward`` chains, ``extra_loss`` sums, ``modulate_gradients`` and ``after_step`` run
each part in the order written; ``train_indices`` intersects (a sample any part reserves is held out
of training for all of them); ``substeps``, ``epoch_indices`` and ``predict`` belong to the one part
that overrides them (two parts overriding the same one are refused). Each part keeps its own window: the composite calls a part's
per-batch hooks only inside that part's window (or always, for an always-active part, with
``ctx.modulating`` telling it which side of its own E it is on), so an always-active part never
switches its partners on outside their windows.

A pair that cannot compose is refused with the reason: a method with itself, two methods that both
replace the task loss, and methods that declare themselves non-composable (baselines that drop
modalities, multi-stage training schemes).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from mmtune.config import Record
from mmtune.engine.method import BalancingMethod, MethodConfig, Stage, StepContext
from mmtune.errors import Problem

__all__ = ["Composite", "compose", "composition_problem"]

SEP = "__"  # field name of a namespaced hyperparameter: opm__lam (users write opm.lam)


def _declaring_class(config_cls: type, name: str) -> type:
    """The class in ``config_cls``'s MRO whose own annotations declare field ``name``."""
    for klass in config_cls.__mro__:
        if name in vars(klass).get("__annotations__", {}):
            return klass
    return config_cls


def composition_problem(parts: list[type[BalancingMethod]]) -> str | None:
    """Why ``parts`` cannot compose, or None."""
    names = [p.name for p in parts]
    if len(set(names)) != len(names):
        return f"cannot compose a method with itself: {'+'.join(names)}"
    for part in parts:
        if part.composable is not True:
            return f"'{part.name}' does not compose with other methods: {part.composable}"
    replacing = [p.name for p in parts if p.replaces_loss]
    if len(replacing) > 1:
        return f"{' and '.join(replacing)} both replace the task loss; only one part of a composition may"
    for hook, what in SOLE_HOOKS.items():
        owners = [p.name for p in parts if _overrides(p, hook)]
        if len(owners) > 1:
            return f"{' and '.join(owners)} both {what}; only one part of a composition may"
    return None


# Hooks only one part of a composition may override (the composite hands them to that part).
SOLE_HOOKS = {
    "substeps": "split a batch into substeps of their own (substeps)",
    "epoch_indices": "choose the epoch's training samples (epoch_indices)",
    "predict": "have an inference rule of their own (predict)",
}


def _overrides(part: type[BalancingMethod], hook: str) -> bool:
    return getattr(part, hook) is not getattr(BalancingMethod, hook)


def _merged_config(name: str, parts: list[type[BalancingMethod]]) -> tuple[type[Record], dict[str, dict[str, str]]]:
    """The composite's config class and, per part, its field name → the composite's field name."""
    declared: dict[str, list[tuple[type[BalancingMethod], dataclasses.Field, type]]] = {}
    for part in parts:
        for f in dataclasses.fields(part.Config):
            declared.setdefault(f.name, []).append((part, f, _declaring_class(part.Config, f.name)))
    spec: list[tuple[str, Any, dataclasses.Field]] = []
    external: dict[str, str] = {}
    mapping: dict[str, dict[str, str]] = {p.name: {} for p in parts}
    ambiguous: dict[str, list[str]] = {}
    for fname, owners in declared.items():
        shared = len({id(cls) for _, _, cls in owners}) == 1 and len({repr(f.default) for _, f, _ in owners}) == 1
        for part, f, _ in owners if not shared else owners[:1]:
            field_name = fname if shared or len(owners) == 1 else f"{part.name}{SEP}{fname}"
            hint = typing.get_type_hints(part.Config)[fname]
            kwargs: dict[str, Any] = {"metadata": f.metadata}
            if f.default is not dataclasses.MISSING:
                kwargs["default"] = f.default
            else:
                kwargs["default_factory"] = f.default_factory
            spec.append((field_name, hint, dataclasses.field(**kwargs)))
            if field_name != fname:
                external[field_name] = f"{part.name}.{fname}"
                ambiguous.setdefault(fname, []).append(f"{part.name}.{fname}")
        for part, _, _ in owners:
            mapping[part.name][fname] = fname if shared or len(owners) == 1 else f"{part.name}{SEP}{fname}"
    part_names = [p.name for p in parts]

    def normalize_input(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key in part_names and isinstance(value, Mapping):  # {opm: {lam: 0.5}} → opm.lam
                for sub, v in value.items():
                    out[f"{key}.{sub}"] = v
            else:
                out[key] = value
        # A part's bare-named hyperparameter may also be written with the part's prefix (ogm.alpha).
        fields = {external.get(f.name, f.name) for f in dataclasses.fields(cls)}
        return {k if k in fields or "." not in k or k.split(".", 1)[1] not in fields else k.split(".", 1)[1]: v
                for k, v in out.items()}

    def unknown_key_message(cls: type, key: str) -> str | None:
        if key in ambiguous:
            return (f"is ambiguous in '{name}': the parts declare it separately, as {' and '.join(ambiguous[key])}; "
                    "set the one you mean (either may be swept).")
        return None

    def extra_checks(self: Record) -> list[Problem]:
        problems: list[Problem] = []
        for part in parts:
            try:
                part_config(part, self)
            except Exception as err:  # noqa: BLE001 - a ConfigError of the part, re-pathed below
                for p in getattr(err, "problems", [Problem("", str(err))]):
                    field = mapping[part.name].get(p.path, p.path)
                    problems.append(Problem(external.get(field, field), p.message))
        return problems

    cls_name = "".join(p.Config.__name__.removesuffix("Config") for p in parts) + "Config"
    config_cls = dataclasses.make_dataclass(
        cls_name, spec, bases=(Record,), frozen=True,
        namespace={
            "external_names": external,
            "field_map": mapping,
            "normalize_input": classmethod(normalize_input),
            "unknown_key_message": classmethod(unknown_key_message),
            "extra_checks": extra_checks,
        },
    )
    return config_cls, mapping


def part_config(part: type[BalancingMethod], config: Record) -> MethodConfig:
    """The config of one part, read from the composite's (namespaced fields under their plain names)."""
    mapping = type(config).field_map[part.name]
    return part.Config(**{f.name: getattr(config, mapping[f.name]) for f in dataclasses.fields(part.Config)})


class Composite(BalancingMethod):
    parts: ClassVar[tuple[type[BalancingMethod], ...]] = ()
    always_active = True  # the loop calls every batch; each part is gated by its own window here

    def __init__(self, config: Record, **kwargs: Any):
        super().__init__(config, **kwargs)  # type: ignore[arg-type]
        self.children = [part(part_config(part, config), **kwargs) for part in self.parts]
        self._active: list[bool] = [False] * len(self.children)

    @classmethod
    def select_modalities(cls, config: Record, modalities: list[str]) -> list[str]:
        for part in cls.parts:
            modalities = part.select_modalities(part_config(part, config), modalities)
        return modalities

    @classmethod
    def hyperparameters(cls) -> list[str]:
        return [cls.Config.external_names.get(f.name, f.name) for f in dataclasses.fields(cls.Config)]

    def bind(self, model) -> None:
        for child in self.children:
            child.bind(model)

    def extra_parameters(self):
        return [p for child in self.children for p in child.extra_parameters()]

    def train_indices(self, n: int, generator):
        # A sample any part reserves is held out for all of them: the loop trains on the intersection.
        kept = None
        for child in self.children:
            index = child.train_indices(n, generator)
            if index is not None:
                index = torch.as_tensor(index).long()
                kept = index if kept is None else kept[torch.isin(kept, index)]
        return kept

    def stages(self, epochs: int) -> tuple[Stage, ...]:
        return (Stage("train", epochs),)

    def in_window(self, epoch: int) -> bool:
        return any(child.in_window(epoch) for child in self.children)

    def _sole(self, hook: str) -> int | None:
        """The index of the part that overrides ``hook``, or None."""
        return next((i for i, part in enumerate(self.parts) if _overrides(part, hook)), None)

    def epoch_indices(self, ctx: StepContext) -> Tensor | None:
        i = self._sole("epoch_indices")
        return self.children[i].epoch_indices(self._ctx(i, ctx)) if i is not None and self._active[i] else None

    def substeps(self, batch, ctx):
        i = self._sole("substeps")
        return self.children[i].substeps(batch, self._ctx(i, ctx)) if i is not None and self._active[i] else None

    def predict(self, model, out):
        i = self._sole("predict")
        return self.children[i].predict(model, out) if i is not None else None

    def _ctx(self, i: int, ctx: StepContext) -> StepContext:
        return dataclasses.replace(ctx, modulating=self._modulating[i])

    def begin_epoch(self, ctx: StepContext) -> None:
        super().begin_epoch(ctx)
        self._modulating = [child.in_window(ctx.epoch) for child in self.children]
        self._active = [child.always_active or m for child, m in zip(self.children, self._modulating, strict=True)]
        for i, child in enumerate(self.children):
            child.begin_epoch(self._ctx(i, ctx))

    def end_epoch(self, ctx: StepContext) -> dict[str, float]:
        traces: dict[str, float] = {}
        for i, child in enumerate(self.children):
            traces.update(child.end_epoch(self._ctx(i, ctx)))
        return traces

    def before_forward(self, batch, ctx):
        for i, child in enumerate(self.children):
            if self._active[i]:
                batch = child.before_forward(batch, self._ctx(i, ctx))
                if batch is None:  # the part skips this substep
                    return None
        return batch

    def loss(self, out, batch, ctx) -> Tensor:
        for i, child in enumerate(self.children):
            if child.replaces_loss and self._active[i]:
                return child.loss(out, batch, self._ctx(i, ctx))
        return super().loss(out, batch, ctx)

    def extra_loss(self, out, batch, ctx) -> Tensor | None:
        losses = [loss for i, child in enumerate(self.children)
                  if self._active[i] and (loss := child.extra_loss(out, batch, self._ctx(i, ctx))) is not None]
        return sum(losses) if losses else None

    def modulate_gradients(self, model, out, batch, ctx) -> None:
        for i, child in enumerate(self.children):
            if self._active[i]:
                child.modulate_gradients(model, out, batch, self._ctx(i, ctx))

    def after_step(self, out, batch, ctx) -> None:
        for i, child in enumerate(self.children):
            if self._active[i]:
                child.after_step(out, batch, self._ctx(i, ctx))

    def state_dict(self) -> dict[str, Any]:
        return {child.name: child.state_dict() for child in self.children}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for child in self.children:
            child.load_state_dict(state[child.name])


def compose(name: str, parts: list[type[BalancingMethod]]) -> type[BalancingMethod]:
    """The method class of the composition ``name`` (e.g. ``"opm+ogm"``) of ``parts``; ValueError if it cannot be."""
    problem = composition_problem(parts)
    if problem:
        raise ValueError(problem)
    config_cls, _ = _merged_config(name, parts)
    return type(
        "".join(p.__name__ for p in parts),
        (Composite,),
        {
            "name": name,
            "parts": tuple(parts),
            "Config": config_cls,
            "paper": " + ".join(p.paper for p in parts),
            "replaces_loss": any(p.replaces_loss for p in parts),
        },
    )
