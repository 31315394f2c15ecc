"""Composition of balancing methods by ``+``: ``opm+ogm`` runs OPM's and OGM's hooks together.

``compose(["opm", "ogm"])`` builds a method whose hyperparameters are the union of its parts'
(a name shared by two parts — the window, γ, the discrepancy form, z — is one hyperparameter that
both parts read) and whose hooks call each part's hook in the order written: ``before_forward``
chains, ``extra_loss`` sums, ``modulate_gradients`` runs each in turn. This is OPM/OGM §4.3.9
(OPM+OGM) in general form. Parts must agree on the defaults of shared hyperparameters.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor

from mmtune.engine.method import BalancingMethod, MethodConfig, StepContext
from mmtune.engine.trainable import BalancedTrainable

__all__ = ["compose"]


def _merged_config(name: str, parts: list[type[BalancingMethod]]) -> type[MethodConfig]:
    fields: dict[str, tuple[Any, dataclasses.Field]] = {}
    for part in parts:
        hints = typing.get_type_hints(part.Config)
        for f in dataclasses.fields(part.Config):
            if f.name in fields:
                prior = fields[f.name][1]
                if prior.default != f.default:
                    raise ValueError(f"cannot compose {name}: '{f.name}' defaults differ ({prior.default!r} vs {f.default!r})")
                continue
            fields[f.name] = (hints[f.name], f)
    spec = []
    for fname, (tp, f) in fields.items():
        if fname in {g.name for g in dataclasses.fields(MethodConfig)}:
            continue
        kwargs = {"metadata": f.metadata}
        if f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        else:
            kwargs["default_factory"] = f.default_factory
        spec.append((fname, tp, dataclasses.field(**kwargs)))
    cls_name = "".join(p.Config.__name__.removesuffix("Config") for p in parts) + "Config"
    return dataclasses.make_dataclass(cls_name, spec, bases=(MethodConfig,), frozen=True)


def _part_config(part: type[BalancingMethod], config: MethodConfig) -> MethodConfig:
    return part.Config(**{f.name: getattr(config, f.name) for f in dataclasses.fields(part.Config)})


class Composite(BalancingMethod):
    parts: ClassVar[tuple[type[BalancingMethod], ...]] = ()

    def __init__(self, config: MethodConfig, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.children = [part(_part_config(part, config), **kwargs) for part in self.parts]

    @classmethod
    def select_modalities(cls, config: MethodConfig, modalities: list[str]) -> list[str]:
        for part in cls.parts:
            modalities = part.select_modalities(_part_config(part, config), modalities)
        return modalities

    def bind(self, model) -> None:
        for child in self.children:
            child.bind(model)

    def extra_parameters(self):
        return [p for child in self.children for p in child.extra_parameters()]

    def begin_epoch(self, ctx: StepContext) -> None:
        for child in self.children:
            child.begin_epoch(ctx)

    def end_epoch(self, ctx: StepContext) -> dict[str, float]:
        traces: dict[str, float] = {}
        for child in self.children:
            traces.update(child.end_epoch(ctx))
        return traces

    def before_forward(self, batch, ctx):
        for child in self.children:
            batch = child.before_forward(batch, ctx)
        return batch

    def extra_loss(self, out, batch, ctx) -> Tensor | None:
        losses = [loss for child in self.children if (loss := child.extra_loss(out, batch, ctx)) is not None]
        return sum(losses) if losses else None

    def modulate_gradients(self, model, out, batch, ctx) -> None:
        for child in self.children:
            child.modulate_gradients(model, out, batch, ctx)

    def state_dict(self) -> dict[str, Any]:
        return {child.name: child.state_dict() for child in self.children}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for child in self.children:
            child.load_state_dict(state[child.name])


def compose(name: str, parts: list[type[BalancingMethod]]) -> tuple[type[BalancingMethod], type[BalancedTrainable]]:
    """A method class and its Trainable for the composition ``name`` (e.g. ``"opm+ogm"``) of ``parts``."""
    names = [p.name for p in parts]
    if len(set(names)) != len(names):
        raise ValueError(f"cannot compose a method with itself: {name}")
    method = type(
        "".join(p.__name__ for p in parts),
        (Composite,),
        {
            "name": name,
            "parts": tuple(parts),
            "Config": _merged_config(name, parts),
            "paper": " + ".join(p.paper for p in parts),
            "always_active": any(p.always_active for p in parts),
        },
    )
    trainable = type(f"{method.__name__}Trainable", (BalancedTrainable,), {"method": method})
    return method, trainable
