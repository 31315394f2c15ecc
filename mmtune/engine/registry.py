"""The method registry: a name → strategy class map, filled by :func:`register` (timm style).

Layering: the engine owns the registry but never imports a method file. Methods register
themselves when their package is imported; the built-in ones live in ``mmtune.trainables``, which
the entry points (the CLI, the sweep's Trainable, tests) import. On the first lookup of an unknown
name the registry also loads every module of the ``mmtune.methods`` entry-point group (mmtune's own
``pyproject.toml`` names ``mmtune.trainables`` there), so a notebook that only imports
:class:`~mmtune.engine.trial.Trial` finds them too. A third-party package adds methods the same
way: an entry point in that group naming the module that registers them.

A name joined by ``+`` (``opm+ogm``) is the composition of registered methods
(:mod:`mmtune.engine.compose`), built on first use and cached apart from the registered ones.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from mmtune.engine.method import BalancingMethod, check_hook_names
from mmtune.errors import ConfigError, Problem, unknown_name_message

__all__ = ["METHODS", "register", "get_method", "list_methods", "load_plugins", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "mmtune.methods"

METHODS: dict[str, type[BalancingMethod]] = {}
_COMPOSED: dict[str, type[BalancingMethod]] = {}
_loaded = False


def register(method: type[BalancingMethod]) -> type[BalancingMethod]:
    """Class decorator: register a strategy by its ``name``; raises on a duplicate name or a hook typo."""
    if not (isinstance(method, type) and issubclass(method, BalancingMethod)) or not method.name:
        raise TypeError(f"@register takes a BalancingMethod subclass with a name, got {method!r}")
    if method.name in METHODS and METHODS[method.name] is not method:
        raise ValueError(f"method '{method.name}' is already registered (by {METHODS[method.name].__module__})")
    if "+" in method.name:
        raise ValueError(f"method name '{method.name}' may not contain '+' (it joins compositions)")
    check_hook_names(method)
    METHODS[method.name] = method
    return method


def load_plugins() -> None:
    """Import the built-in methods and every module of the ``mmtune.methods`` entry-point group (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        importlib.import_module(ep.value)


def _unknown(name: str) -> ConfigError:
    if not METHODS:
        return ConfigError([Problem("method", (
            f"unknown method '{name}': no method is registered. Import mmtune.trainables (the built-in methods) "
            "or install mmtune (pip install -e .), whose entry points register them."))])
    return ConfigError([Problem("method", unknown_name_message("method", name, METHODS))])


def _composed(name: str) -> type[BalancingMethod]:
    from mmtune.engine.compose import compose

    if name not in _COMPOSED:
        parts = name.split("+")
        if any(p not in METHODS for p in parts):
            load_plugins()
        unknown = [p for p in parts if p not in METHODS]
        if unknown:
            raise ConfigError([problem for p in unknown for problem in _unknown(p).problems])
        try:
            _COMPOSED[name] = compose(name, [METHODS[p] for p in parts])
        except ValueError as err:
            raise ConfigError([Problem("method", str(err))]) from None
    return _COMPOSED[name]


def get_method(name: str) -> type[BalancingMethod]:
    if isinstance(name, str) and "+" in name:
        return _composed(name)
    if name not in METHODS:
        load_plugins()
    if name not in METHODS:
        raise _unknown(str(name))
    return METHODS[name]


def list_methods() -> list[str]:
    load_plugins()
    return sorted(METHODS)
