"""Typed, validated configuration records.

Every config in mmtune (a method's hyperparameters, a dataset's knobs, the model and the training
recipe) is a frozen dataclass whose fields are declared with :func:`hp`, which records the valid
range or choices and a one-line doc. :func:`from_dict` builds one from plain data (a Tune config,
a YAML node, ``key=value`` overrides) and reports *every* problem at once, each with its path:
unknown keys (with a did-you-mean), wrong types and out-of-range values. ``__post_init__`` of
:class:`Record` runs the same checks, so a record can never exist in an invalid state, however it
was built.

Example::

    @dataclass(frozen=True)
    class OGMConfig(Record):
        alpha: float = hp(0.8, low=0.0, doc="modulation strength α (Eq. 11)")
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from mmtune.errors import ConfigError, Problem, did_you_mean, shorten

__all__ = ["Record", "hp", "from_dict", "describe_fields", "field_defaults", "check_record", "external_name", "to_dict",
           "number_problem", "INT64_MAX", "MAX_SEED"]

R = TypeVar("R", bound="Record")
_MISSING = dataclasses.MISSING
INT64_MAX = 2**63 - 1  # every integer a config holds is stored as a 64-bit integer (Arrow tables, torch)
# Trial seeds: a trial also seeds its method's generator with seed + 1,000,003, which must stay a 64-bit integer.
MAX_SEED = 2**63 - 2**20


def number_problem(value: Any) -> str | None:
    """What is wrong with a number no config may hold (NaN, an infinity, an integer beyond 64 bits), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value!r}."
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        return f"must fit in a 64-bit integer (|x| < 2**63), got {shorten(value, 30)}."
    return None


def _numeric_text_hint(value: Any, tp: Any) -> str:
    """For text that reads as a number in a numeric field: how to write it so YAML reads a number.
    (YAML 1.1 reads ``1e-3`` as text: a float needs a dot and a signed exponent, ``1.0e-3``.)"""
    allowed = _scalar_types(tp)
    if not isinstance(value, str) or not {int, float} & allowed or len(value) > 40:
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    if not math.isfinite(number):
        return ""
    if float not in allowed:  # an integer field
        if not number.is_integer():
            return ""
        written = str(int(number))
    else:
        mantissa, e, exponent = value.strip().lower().partition("e")
        written = value.strip()
        if e:
            mantissa = mantissa if "." in mantissa else f"{mantissa}.0"
            written = f"{mantissa}e{exponent if exponent[:1] in '+-' else '+' + exponent}"
        if not isinstance(_yaml_number(written), float):
            written = repr(number)
    return f" YAML reads {value!r} as text; write {written} for the number."


def _yaml_number(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def _scalar_types(tp: Any) -> set[type]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return {t for arg in typing.get_args(tp) for t in _scalar_types(arg)}
    return {tp} if isinstance(tp, type) else set()


def hp(
    default: Any = _MISSING,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: Sequence[Any] | None = None,
    doc: str = "",
    default_factory: Any = _MISSING,
) -> Any:
    """A dataclass field with validation metadata (range, choices) and documentation."""
    meta = {
        "low": low,
        "high": high,
        "low_open": low_open,
        "high_open": high_open,
        "choices": tuple(choices) if choices is not None else None,
        "doc": doc,
    }
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Record:
    """Base for frozen config dataclasses: validates every field on construction."""

    # Fields that may not be given by users in any config (e.g. set by mmtune itself).
    internal_fields: ClassVar[tuple[str, ...]] = ()
    # The name users write for a field whose Python name differs (a composed method's ``opm.lam``
    # is the field ``opm__lam``): used by from_dict, to_dict, describe_fields and error paths.
    external_names: ClassVar[Mapping[str, str]] = {}

    def __post_init__(self) -> None:
        problems = check_record(self)
        if problems:
            raise ConfigError(problems)

    def replace(self: R, **changes: Any) -> R:
        return dataclasses.replace(self, **changes)


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    # Resolving string annotations is slow (~ms per class) and configs are parsed per trial and per
    # probe during spec validation: resolve each class once.
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple, Sequence):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin in (dict, Mapping):
        args = typing.get_args(tp)
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}" if args else "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Return (ok, coerced) for value against annotation tp. Ints widen to float; nothing else converts."""
    if tp is Any:
        return True, value
    if tp is type(None):
        return value is None, value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, value
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if origin in (list, tuple, Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return False, value
        (arg,) = typing.get_args(tp)[:1] or (Any,)
        out = []
        for item in value:
            ok, item = _coerce(item, arg)
            if not ok:
                return False, value
            out.append(item)
        return True, tuple(out)
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            return False, value
        key_tp, value_tp = typing.get_args(tp) or (Any, Any)
        out_map = {}
        for k, v in value.items():
            ok_k, k = _coerce(k, key_tp)
            ok_v, v = _coerce(v, value_tp)
            if not (ok_k and ok_v):
                return False, value
            out_map[k] = v
        return True, out_map
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        return True, float(value)
    if tp is str:
        return isinstance(value, str), value
    return isinstance(value, tp), value


def _range_text(meta: Mapping[str, Any]) -> str:
    low, high = meta.get("low"), meta.get("high")
    left = "(" if meta.get("low_open") else "["
    right = ")" if meta.get("high_open") else "]"
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    if low is None:
        left = "("
    if high is None:
        right = ")"
    return f"{left}{lo}, {hi}{right}"


def _check_value(name: str, value: Any, meta: Mapping[str, Any]) -> str | None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        opts = ", ".join(repr(c) for c in choices)
        return f"must be one of {opts}, got {shorten(value)}.{did_you_mean(str(value), map(str, choices))}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if number_problem(value):
        return number_problem(value)
    low, high = meta.get("low"), meta.get("high")
    too_low = low is not None and (value <= low if meta.get("low_open") else value < low)
    too_high = high is not None and (value >= high if meta.get("high_open") else value > high)
    if too_low or too_high:
        return f"must lie in {_range_text(meta)}, got {value!r}."
    return None


def _items_problem(value: Any) -> tuple[str, str] | None:
    """(where, what) of a number no config may hold in a value, or inside a list or mapping value
    (``fixed_p: {audio: .nan}`` → ``(".audio", "must be a finite number, got nan.")``)."""
    if not isinstance(value, (Mapping, list, tuple)):
        problem = number_problem(value)
        return ("", problem) if problem else None
    stack: list[tuple[Any, str]] = [(value, "")]
    seen = 0
    while stack and seen < 10_000:
        item, where = stack.pop()
        seen += 1
        if isinstance(item, Mapping):
            stack.extend((v, f"{where}.{k}") for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
        elif number_problem(item):
            return where, number_problem(item)
    return None


def external_name(cls: type, field_name: str) -> str:
    """The key users write for ``field_name`` of record class ``cls``."""
    return getattr(cls, "external_names", {}).get(field_name, field_name)


def check_record(record: Any) -> list[Problem]:
    """Type and range problems of an already-built record (used by ``__post_init__``)."""
    hints = _type_hints(type(record))
    problems: list[Problem] = []
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        name = external_name(type(record), f.name)
        problem = _items_problem(value)
        if problem:  # before coercing: float() of a 400-digit integer overflows
            problems.append(Problem(f"{name}{problem[0]}", problem[1]))
            continue
        ok, coerced = _coerce(value, hints[f.name])
        if not ok:
            hint = _numeric_text_hint(value, hints[f.name])
            problems.append(
                Problem(name, f"expected {_type_name(hints[f.name])}, got {shorten(value)} ({type(value).__name__}).{hint}")
            )
            continue
        if coerced is not value and coerced != value or type(coerced) is not type(value):
            object.__setattr__(record, f.name, coerced)
        message = _check_value(name, coerced, f.metadata)
        if message:
            problems.append(Problem(name, message))
    extra = getattr(record, "extra_checks", None)
    if extra is not None and not problems:
        problems.extend(extra())
    return problems


def from_dict(cls: type[R], data: Mapping[str, Any] | None, *, path: str = "") -> R:
    """Build ``cls`` from ``data``; raise :class:`ConfigError` listing every problem with its path."""
    data = {} if data is None else data
    prefix = f"{path}." if path else ""
    if not isinstance(data, Mapping):
        raise ConfigError([Problem(path, f"expected a mapping of keys to values, got {shorten(data)}.")])
    normalize = getattr(cls, "normalize_input", None)
    if normalize is not None:  # e.g. a composed method's nested {opm: {lam: 0.5}} → {opm.lam: 0.5}
        data = normalize(data)
    fields = {external_name(cls, f.name): f for f in dataclasses.fields(cls) if f.name not in cls.internal_fields}
    problems: list[Problem] = []
    unknown_key = getattr(cls, "unknown_key_message", None)
    for key in data:
        if key not in fields:
            special = unknown_key(str(key)) if unknown_key is not None else None
            hint = did_you_mean(str(key), fields)
            known = ", ".join(sorted(fields)) or "(none)"
            problems.append(Problem(f"{prefix}{key}", special or f"unknown key.{hint} Valid keys: {known}."))
    kwargs = {fields[k].name: v for k, v in data.items() if k in fields}
    if problems:
        # Report type/range problems of the known keys too, so the user sees everything at once.
        try:
            cls(**kwargs)
        except ConfigError as err:
            problems.extend(err.prefixed(path).problems if path else err.problems)
        raise ConfigError(problems)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise (err.prefixed(path) if path else err) from None


def to_dict(record: Any) -> dict[str, Any]:
    """Plain-data view of a record (tuples as lists), suitable for YAML/JSON and Tune configs."""
    out = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        out[external_name(type(record), f.name)] = list(value) if isinstance(value, tuple) else value
    return out


def field_defaults(cls: type) -> dict[str, Any]:
    """Each user-facing field's default value, by the name users write (``mmtune methods`` prints them as YAML)."""
    return {external_name(cls, f.name): (f.default if f.default is not _MISSING else f.default_factory())  # type: ignore[misc]
            for f in dataclasses.fields(cls) if f.name not in getattr(cls, "internal_fields", ())}


def describe_fields(cls: type) -> list[dict[str, str]]:
    """Rows (name, type, default, valid, doc) for ``mmtune methods`` and docs."""
    hints = _type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.name in getattr(cls, "internal_fields", ()):
            continue
        meta = f.metadata
        if meta.get("choices") is not None:
            valid = " | ".join(str(c) for c in meta["choices"])
        elif meta.get("low") is not None or meta.get("high") is not None:
            valid = _range_text(meta)
        else:
            valid = _type_name(hints[f.name])
        default = f.default if f.default is not _MISSING else f.default_factory()  # type: ignore[misc]
        rows.append(
            {
                "name": external_name(cls, f.name),
                "type": _type_name(hints[f.name]),
                "default": repr(default),
                "valid": valid,
                "doc": meta.get("doc", ""),
            }
        )
    return rows
