"""The method registry: a name → (strategy class, Trainable class) map, filled by ``@register``.

A name joined by ``+`` (``opm+ogm``) is the composition of registered methods
(:mod:`trainables.compose`), built on first use and cached apart from the registered ones.
"""

from __future__ import annotations

from mmtune.engine.method import BalancingMethod
from mmtune.engine.trainable import BalancedTrainable
from mmtune.errors import ConfigError, Problem, unknown_name_message

__all__ = ["METHODS", "TRAINABLES", "register", "get_method", "get_trainable", "list_methods"]

METHODS: dict[str, type[BalancingMethod]] = {}
TRAINABLES: dict[str, type[BalancedTrainable]] = {}
_COMPOSED: dict[str, tuple[type[BalancingMethod], type[BalancedTrainable]]] = {}


def register(trainable: type[BalancedTrainable]) -> type[BalancedTrainable]:
    """Class decorator for a method's two-line Trainable; raises on a duplicate name."""
    method = trainable.method
    if method is None or not method.name:
        raise ValueError(f"{trainable.__name__}.method must be a BalancingMethod with a name")
    if method.name in METHODS:
        raise ValueError(f"method '{method.name}' is already registered (by {METHODS[method.name].__module__})")
    METHODS[method.name] = method
    TRAINABLES[method.name] = trainable
    return trainable


def _composed(name: str) -> tuple[type[BalancingMethod], type[BalancedTrainable]]:
    from trainables.compose import compose

    if name not in _COMPOSED:
        parts = name.split("+")
        unknown = [p for p in parts if p not in METHODS]
        if unknown:
            raise ConfigError([Problem("method", unknown_name_message("method", p, METHODS)) for p in unknown])
        try:
            _COMPOSED[name] = compose(name, [METHODS[p] for p in parts])
        except ValueError as err:
            raise ConfigError([Problem("method", str(err))]) from None
    return _COMPOSED[name]


def get_method(name: str) -> type[BalancingMethod]:
    if isinstance(name, str) and "+" in name:
        return _composed(name)[0]
    if name not in METHODS:
        raise ConfigError([Problem("method", unknown_name_message("method", name, METHODS))])
    return METHODS[name]


def get_trainable(name: str) -> type[BalancedTrainable]:
    if isinstance(name, str) and "+" in name:
        return _composed(name)[1]
    get_method(name)
    return TRAINABLES[name]


def list_methods() -> list[str]:
    return sorted(METHODS)
