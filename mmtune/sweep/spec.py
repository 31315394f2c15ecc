"""Sweep specs: YAML → a validated :class:`SweepSpec` → the exact list of trials (DESIGN §3.5).

A spec is data. :func:`load_spec` reads it with ``yaml.safe_load`` semantics, checks **everything**
before Ray starts and raises one :class:`~mmtune.errors.ConfigError` listing every problem, each with
its YAML path and line (``params.tau.grid[2] (line 9): must be > 0 …``). Nothing is started or
written for an invalid spec.

Format (every key but ``name`` and ``method`` optional)::

    name: amss_tau                          # the sweep's folder under the storage path
    description: AMSS Table VIII            # free text, shown in reports
    method: amss                            # or a list: a grid axis over variants, each entry either
    #   - joint                             #   a registered name / composition ("opm+ogm"), or
    #   - {name: ogm-ge, method: ogm, params: {ge: true}}   # a named variant with its own params
    dataset: {name: synthetic, dominance: 2.0}
    model: {backbone: mlp, fusion: {grid: [concat, sum]}}
    train: {epochs: 30, lr: 1.0e-3}
    params:                                 # must be hyperparameters of every listed method
      tau: {grid: [0.1, 0.25, 0.5]}         # domains: grid | choice | uniform | loguniform | int
    seeds: [0, 1, 2]                        # or a count (3 = [0, 1, 2]); every configuration × every seed
    search: {algorithm: grid}               # or {algorithm: optuna, num_samples: 20, metric: val_acc, mode: max}
    scheduler: {asha: {grace_period: 3, reduction_factor: 2}}   # optional; max_t = train.epochs
    resources: {cpu: 1, gpu: 0.25}          # per trial; fractional GPUs pack trials on one GPU
    max_concurrent: 4                       # optional cap on trials running at once
    max_failures: 2                         # retries of a failed trial, from its last checkpoint
    checkpoint_every_s: 60                  # a trial checkpoints after the first epoch that ends this long
                                            # after its last checkpoint (0: every epoch), and at its end

Domains may stand at any leaf of ``dataset``, ``model``, ``train`` and ``params`` (and inside a method
entry's ``params``). Grid sweeps take only ``grid`` domains and run every combination × every seed
exactly once. Optuna sweeps take ``choice``/``uniform``/``loguniform``/``int`` (not ``grid``: Optuna
cannot enumerate) and a single method entry; seeds are handled by mmtune (see ``tuner.py``).

Selection is on validation only: ``search.metric`` must be a validation key (``val_acc``,
``val_macro_f1``, ``val_map``, ``val_acc/<modality>``, ``best_val_*``); a ``test_*`` metric is refused.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmtune.errors import ConfigError, Problem, did_you_mean

__all__ = ["load_spec_data", "parse_spec_data", "Domain", "MethodEntry", "SweepSpec", "load_spec", "parse_spec", "expand_grid", "smoke_spec", "DOMAIN_KINDS"]

TOP_KEYS = (
    "name", "description", "method", "dataset", "model", "train", "params", "seeds", "search",
    "scheduler", "resources", "max_concurrent", "max_failures", "checkpoint_every_s",
)
CONFIG_SECTIONS = ("dataset", "model", "train", "params")
DOMAIN_KINDS = ("grid", "choice", "uniform", "loguniform", "int")
SEARCH_KEYS = ("algorithm", "num_samples", "metric", "mode", "seed")
ASHA_KEYS = ("grace_period", "reduction_factor", "metric", "mode")
RESOURCE_KEYS = ("cpu", "gpu")
ENTRY_KEYS = ("name", "method", "params")
DEFAULT_STORAGE = "runs"  # where `mmtune sweep` writes when no --storage is given
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
SMOKE = {"epochs": 2, "n_train": 256, "n_val": 96, "n_test": 96, "num_samples": 2}


# ------------------------------------------------------------------------------------------ model
@dataclass(frozen=True)
class Domain:
    """A search domain at one config leaf: ``{grid: [...]}``, ``{uniform: [lo, hi]}`` …"""

    kind: str
    values: tuple[Any, ...]  # grid/choice: the options; uniform/loguniform/int: (low, high)

    def candidates(self) -> list[Any]:
        """Values that must each be valid for the field (options, or both bounds of a range)."""
        return list(self.values)

    def to_tune(self) -> Any:
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "uniform":
            return tune.uniform(*self.values)
        if self.kind == "loguniform":
            return tune.loguniform(*self.values)
        if self.kind == "int":
            return tune.randint(self.values[0], self.values[1] + 1)  # spec bounds are inclusive
        raise ValueError(f"a {self.kind} domain is expanded by mmtune, not sampled by Tune")


@dataclass(frozen=True)
class MethodEntry:
    """One variant on the method axis: a label, a registered method, its fixed/domain params."""

    label: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    methods: tuple[MethodEntry, ...]
    sections: dict[str, dict[str, Any]]  # dataset/model/train/params; leaves may be Domain objects
    seeds: tuple[int, ...]
    algorithm: str = "grid"
    num_samples: int = 1
    metric: str = "val_acc"
    mode: str = "max"
    search_seed: int = 0
    asha: dict[str, Any] | None = None  # {grace_period, reduction_factor}
    cpu: float = 1.0
    gpu: float = 0.0
    max_concurrent: int | None = None
    max_failures: int = 1
    checkpoint_every_s: float = 60.0
    description: str = ""
    source: dict[str, Any] = field(default_factory=dict, compare=False)  # the YAML as read

    @property
    def epochs(self) -> int:
        from mmtune.engine.trial import TrainConfig

        return int(self.sections["train"].get("epochs", TrainConfig.epochs))

    def axes(self) -> list[str]:
        """Dotted keys that vary across trials (besides the seed): what a report groups by."""
        keys = ["label"] if len(self.methods) > 1 else []
        keys += [path for path, _ in _domains(self.sections)]
        for entry in self.methods:
            keys += [f"params.{p}" for p, _ in _domains(entry.params) if f"params.{p}" not in keys]
        return keys

    def num_trials(self) -> int:
        if self.algorithm == "optuna":
            return self.num_samples * len(self.seeds)
        return len(expand_grid(self))


# ----------------------------------------------------------------------------------------- loading
def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a spec file; raise ConfigError listing every problem (with YAML lines)."""
    return parse_spec_data(*load_spec_data(path))


def load_spec_data(path: str | Path) -> tuple[Any, yaml.Node | None]:
    """A spec file's plain data and its YAML node tree (for line numbers); ConfigError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(Problem(str(path), "no such spec file. Pass the path of a YAML sweep spec (see search_spaces/)."))
    text = path.read_text()
    if not text.strip():
        raise ConfigError(Problem(str(path), "the spec file is empty. Start from search_spaces/quickstart.yaml."))
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(Problem(str(path), f"YAML syntax error{where}: {what}. Fix the YAML there.")) from None
    if data is None:
        raise ConfigError(Problem(str(path), "the spec holds no data (only comments?). Start from search_spaces/quickstart.yaml."))
    return data, node


def parse_spec_data(data: Any, node: yaml.Node | None = None) -> SweepSpec:
    """:func:`parse_spec` with the problems located on the YAML lines of ``node``."""
    try:
        return parse_spec(data)
    except ConfigError as err:
        lines = _line_map(node)
        raise ConfigError(_with_line(p, lines) for p in err.problems) from None


def parse_spec(data: Any) -> SweepSpec:
    """Validate plain spec data (a parsed YAML mapping) into a SweepSpec, collecting every problem."""
    problems: list[Problem] = []
    if not isinstance(data, Mapping):
        raise ConfigError(Problem("", f"a spec is a mapping of keys (name, method, params …), got {type(data).__name__}."))
    for key in data:
        if key not in TOP_KEYS:
            problems.append(Problem(str(key), f"unknown key.{did_you_mean(str(key), TOP_KEYS)} Valid keys: {', '.join(TOP_KEYS)}."))

    name = data.get("name")
    if name is None:
        problems.append(Problem("name", "is required: the sweep's name (its folder under the storage path)."))
    elif not isinstance(name, str) or not NAME_RE.match(name):
        problems.append(Problem("name", f"must be letters, digits, '_', '-', '.', '+' (a folder name), got {name!r}."))

    # search first: it decides which domains are allowed.
    search = _mapping(data, "search", problems) or {}
    _unknown(search, SEARCH_KEYS, "search", problems)
    algorithm = search.get("algorithm", "grid")
    if algorithm not in ("grid", "optuna"):
        problems.append(Problem("search.algorithm", f"must be 'grid' or 'optuna', got {algorithm!r}."))
    num_samples = search.get("num_samples", 10 if algorithm == "optuna" else 1)
    if algorithm == "optuna":
        _check_int(num_samples, "search.num_samples", 1, problems)
    elif "num_samples" in search:
        problems.append(Problem("search.num_samples", "only applies to search.algorithm: optuna (a grid runs every combination once)."))
    metric = search.get("metric", "val_acc")
    mode = search.get("mode", "max")
    _check_metric(metric, "search.metric", problems)
    if mode not in ("max", "min"):
        problems.append(Problem("search.mode", f"must be 'max' or 'min', got {mode!r}."))
    search_seed = search.get("seed", 0)
    _check_int(search_seed, "search.seed", 0, problems)

    methods, method_paths = _parse_methods(data.get("method"), algorithm, problems)
    sections: dict[str, dict[str, Any]] = {}
    for section in CONFIG_SECTIONS:
        raw = _mapping(data, section, problems)
        sections[section] = _parse_domains(raw or {}, section, algorithm, problems)

    seeds = _parse_seeds(data.get("seeds", [0]), problems)

    asha = None
    scheduler = _mapping(data, "scheduler", problems)
    if scheduler:
        _unknown(scheduler, ("asha",), "scheduler", problems)
        if "asha" in scheduler:
            raw = scheduler["asha"] if scheduler["asha"] is not None else {}
            if not isinstance(raw, Mapping):
                problems.append(Problem("scheduler.asha", f"must be a mapping like {{grace_period: 3}}, got {raw!r}."))
            else:
                _unknown(raw, ASHA_KEYS, "scheduler.asha", problems)
                asha = {"grace_period": raw.get("grace_period", 1), "reduction_factor": raw.get("reduction_factor", 2)}
                _check_int(asha["grace_period"], "scheduler.asha.grace_period", 1, problems)
                rf = asha["reduction_factor"]
                if isinstance(rf, bool) or not isinstance(rf, (int, float)) or rf <= 1:
                    problems.append(Problem("scheduler.asha.reduction_factor", f"must be a number > 1, got {rf!r}."))
                for key, value in (("metric", metric), ("mode", mode)):
                    if key in raw and raw[key] != value:
                        problems.append(Problem(f"scheduler.asha.{key}", f"is {raw[key]!r} but search.{key} is {value!r}: "
                                                "ASHA stops on the sweep's metric. Set it once, under search."))

    resources = _mapping(data, "resources", problems) or {}
    _unknown(resources, RESOURCE_KEYS, "resources", problems)
    cpu, gpu = resources.get("cpu", 1), resources.get("gpu", 0)
    for key, value in (("cpu", cpu), ("gpu", gpu)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            problems.append(Problem(f"resources.{key}", f"must be a number >= 0, got {value!r}."))
    if isinstance(gpu, (int, float)) and not isinstance(gpu, bool) and gpu > 1 and gpu != int(gpu):
        problems.append(Problem("resources.gpu", f"a fraction (<= 1) or a whole number of GPUs, got {gpu}."))
    max_concurrent = data.get("max_concurrent")
    if max_concurrent is not None:
        _check_int(max_concurrent, "max_concurrent", 1, problems)
    max_failures = data.get("max_failures", 1)
    _check_int(max_failures, "max_failures", 0, problems)
    checkpoint_every_s = data.get("checkpoint_every_s", 60.0)
    if isinstance(checkpoint_every_s, bool) or not isinstance(checkpoint_every_s, (int, float)) or checkpoint_every_s < 0:
        problems.append(Problem("checkpoint_every_s", f"must be a number of seconds >= 0 (0: every epoch), got {checkpoint_every_s!r}."))
    description = data.get("description", "")
    if not isinstance(description, str):
        problems.append(Problem("description", f"must be text, got {type(description).__name__}."))

    problems += _check_trials(methods, method_paths, sections, seeds[0] if seeds else 0)
    epochs = sections["train"].get("epochs")
    if asha is not None and algorithm == "grid" and isinstance(epochs, int) and isinstance(asha["grace_period"], int) \
            and epochs <= asha["grace_period"]:
        problems.append(Problem("scheduler.asha.grace_period", f"is {asha['grace_period']} but train.epochs is {epochs}: "
                                "ASHA could never stop a trial. Lower grace_period or drop the scheduler."))
    if problems:
        raise ConfigError(problems)
    return SweepSpec(
        name=name, methods=tuple(methods), sections=sections, seeds=tuple(seeds), algorithm=algorithm,
        num_samples=int(num_samples), metric=metric, mode=mode, search_seed=int(search_seed), asha=asha,
        cpu=float(cpu), gpu=float(gpu), max_concurrent=max_concurrent, max_failures=int(max_failures),
        checkpoint_every_s=float(checkpoint_every_s) if isinstance(checkpoint_every_s, (int, float)) else 60.0,
        description=description, source=copy.deepcopy(dict(data)),
    )


# ------------------------------------------------------------------------------------ expansion
def expand_grid(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every trial config of a grid sweep: method entries × grid axes × seeds, each exactly once.

    Order: method entries outermost, then the grid axes in spec order, seeds innermost, so the seeds
    of one configuration run next to each other.
    """
    trials = []
    for entry in spec.methods:
        base = {**spec.sections, "params": {**spec.sections["params"], **entry.params}}
        axes = list(_domains(base))
        for values in itertools.product(*(d.values for _, d in axes)):
            config = _set_leaves(base, {path: v for (path, _), v in zip(axes, values, strict=True)})
            for seed in spec.seeds:
                trials.append({"method": entry.method, "label": entry.label, "seed": seed, **copy.deepcopy(config)})
    return trials


def optuna_base(spec: SweepSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fixed part of the trial config, nested Tune search space) of an Optuna sweep."""
    entry = spec.methods[0]
    base = {**spec.sections, "params": {**spec.sections["params"], **entry.params}}
    domains = dict(_domains(base))
    fixed = _set_leaves(base, {path: None for path in domains}, drop=True)
    space: dict[str, Any] = {}
    for path, domain in domains.items():
        node = space
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = domain.to_tune()
    return {"method": entry.method, "label": entry.label, **fixed}, space


def smoke_spec(spec: SweepSpec) -> SweepSpec:
    """The same sweep shrunk to run in seconds: ≤ 2 epochs, a small synthetic set, one seed, ≤ 2 samples."""
    sections = copy.deepcopy(spec.sections)
    train = sections["train"]
    train["epochs"] = min(_plain_int(train.get("epochs"), spec.epochs), SMOKE["epochs"])
    dataset = sections["dataset"]
    if dataset.get("name", "synthetic") == "synthetic":
        for key in ("n_train", "n_val", "n_test"):
            dataset[key] = SMOKE[key]
    asha = None if spec.asha is None else {**spec.asha, "grace_period": 1}
    return SweepSpec(**{
        **{f: getattr(spec, f) for f in spec.__dataclass_fields__},
        "sections": sections, "seeds": spec.seeds[:1], "num_samples": min(spec.num_samples, SMOKE["num_samples"]),
        "asha": asha,
    })


# ------------------------------------------------------------------------------------- helpers
def _mapping(data: Mapping[str, Any], key: str, problems: list[Problem]) -> Mapping[str, Any] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        problems.append(Problem(key, f"must be a mapping (key: value lines), got {type(value).__name__} {value!r}."))
        return None
    return value


def _unknown(node: Mapping[str, Any], valid: tuple[str, ...], path: str, problems: list[Problem]) -> None:
    for key in node:
        if key not in valid:
            problems.append(Problem(f"{path}.{key}", f"unknown key.{did_you_mean(str(key), valid)} Valid keys: {', '.join(valid)}."))


def _check_int(value: Any, path: str, low: int, problems: list[Problem]) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        problems.append(Problem(path, f"must be an integer >= {low}, got {value!r}."))


def _plain_int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _check_metric(metric: Any, path: str, problems: list[Problem]) -> None:
    if not isinstance(metric, str):
        problems.append(Problem(path, f"must be a metric name such as 'val_acc', got {metric!r}."))
    elif metric.startswith("test"):
        problems.append(Problem(path, f"'{metric}' is a test metric: selection must never see test data. "
                                      "Use a validation metric (val_acc, val_macro_f1, val_map)."))
    elif not (metric.startswith("val_") or metric.startswith("best_val_")):
        problems.append(Problem(path, f"'{metric}' is not a validation metric.{did_you_mean(metric, ('val_acc', 'val_macro_f1', 'val_map'))} "
                                      "Use val_acc, val_macro_f1, val_map, val_acc/<modality> or best_val_*."))


def _parse_seeds(raw: Any, problems: list[Problem]) -> list[int]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 1:
            problems.append(Problem("seeds", f"a count must be >= 1, got {raw}."))
            return []
        return list(range(raw))
    if not isinstance(raw, list) or not raw:
        problems.append(Problem("seeds", f"must be a non-empty list of integers (or a count), got {raw!r}."))
        return []
    seeds = []
    for i, s in enumerate(raw):
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            problems.append(Problem(f"seeds[{i}]", f"must be a non-negative integer, got {s!r}."))
        else:
            seeds.append(s)
    if len(set(seeds)) != len(seeds):
        problems.append(Problem("seeds", f"has duplicates {seeds}: every seed once."))
    return seeds


def _parse_methods(raw: Any, algorithm: str, problems: list[Problem]) -> tuple[list[MethodEntry], list[str]]:
    from mmtune.trainables import get_method

    if raw is None:
        problems.append(Problem("method", "is required: a registered method (see `mmtune methods`) or a list of them."))
        return [], []
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        problems.append(Problem("method", "is an empty list: name at least one method."))
    entries: list[MethodEntry] = []
    paths: list[str] = []
    for i, item in enumerate(items):
        path = f"method[{i}]" if isinstance(raw, list) else "method"
        if isinstance(item, str):
            label, method, params = item, item, {}
        elif isinstance(item, Mapping):
            _unknown(item, ENTRY_KEYS, path, problems)
            method = item.get("method")
            label = item.get("name", method)
            params = item.get("params") or {}
            if not isinstance(params, Mapping):
                problems.append(Problem(f"{path}.params", f"must be a mapping of hyperparameters, got {params!r}."))
                params = {}
            if not isinstance(method, str):
                problems.append(Problem(f"{path}.method", f"is required: the registered method this variant runs, got {method!r}."))
                continue
            if not isinstance(label, str) or not NAME_RE.match(label):
                problems.append(Problem(f"{path}.name", f"must be a short name (letters, digits, _-.+), got {label!r}."))
                continue
        else:
            problems.append(Problem(path, f"must be a method name or {{name, method, params}}, got {item!r}."))
            continue
        try:
            get_method(method)
        except ConfigError as err:
            problems.extend(Problem(f"{path}" if isinstance(item, str) else f"{path}.method", p.message) for p in err.problems)
            continue
        entries.append(MethodEntry(label, method, dict(_parse_domains(params, f"{path}.params", algorithm, problems))))
        paths.append(path)
    labels = [e.label for e in entries]
    for label in sorted({x for x in labels if labels.count(x) > 1}):
        problems.append(Problem("method", f"two variants are named '{label}': give each entry its own name."))
    if algorithm == "optuna" and len(items) > 1:
        problems.append(Problem("method", "an Optuna search tunes one method: run one sweep per method, or use search.algorithm: grid."))
    return entries, paths


def _parse_domains(node: Mapping[str, Any], path: str, algorithm: str, problems: list[Problem]) -> dict[str, Any]:
    """Copy a section, turning ``{grid: [...]}``-style leaves into Domain objects (checked)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        here = f"{path}.{key}"
        if isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in DOMAIN_KINDS:
            domain = _parse_domain(value, here, algorithm, problems)
            if domain is not None:
                out[key] = domain
        elif isinstance(value, Mapping) and any(k in DOMAIN_KINDS for k in value):
            problems.append(Problem(here, f"a domain has exactly one key ({', '.join(DOMAIN_KINDS)}), got {sorted(value)}."))
        elif isinstance(value, Mapping) and path != "params" and not path.endswith(".params"):
            out[key] = _parse_domains(value, here, algorithm, problems)  # nested config (e.g. model.backbones)
        else:
            out[key] = value
    return out


def _parse_domain(node: Mapping[str, Any], path: str, algorithm: str, problems: list[Problem]) -> Domain | None:
    kind, values = next(iter(node.items()))
    here = f"{path}.{kind}"
    if kind == "grid" and algorithm == "optuna":
        problems.append(Problem(here, "Optuna cannot search a grid. Use choice: [...] (sampled by Optuna), "
                                      "or search.algorithm: grid."))
        return None
    if kind != "grid" and algorithm == "grid":
        problems.append(Problem(here, f"a {kind} domain needs search.algorithm: optuna (a grid enumerates). "
                                      "Use grid: [...] for a grid sweep."))
        return None
    if kind in ("grid", "choice"):
        if not isinstance(values, list) or not values:
            problems.append(Problem(here, f"must be a non-empty list of values, got {values!r}."))
            return None
        if len({repr(v) for v in values}) != len(values):
            problems.append(Problem(here, f"has duplicate values {values}: a grid runs each once."))
            return None
        return Domain(kind, tuple(values))
    if not (isinstance(values, list) and len(values) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        problems.append(Problem(here, f"must be [low, high] (two numbers), got {values!r}."))
        return None
    low, high = values
    if not low < high:
        problems.append(Problem(here, f"`low < high` must hold, but got low={low}, high={high}."))
        return None
    if kind == "loguniform" and low <= 0:
        problems.append(Problem(here, f"log-uniform needs low > 0, got {low}."))
        return None
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
        problems.append(Problem(here, f"an int domain takes integer bounds (inclusive), got {values}."))
        return None
    return Domain(kind, (low, high))


def _domains(node: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Domain]]:
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, Domain):
            yield path, value
        elif isinstance(value, Mapping):
            yield from _domains(value, f"{path}.")


def _set_leaves(node: Mapping[str, Any], values: Mapping[str, Any], *, drop: bool = False, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if path in values:
            if not drop:
                out[key] = values[path]
        elif isinstance(value, Mapping):
            out[key] = _set_leaves(value, values, drop=drop, prefix=f"{path}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_trials(methods: list[MethodEntry], paths: list[str], sections: dict[str, dict[str, Any]], seed: int) -> list[Problem]:
    """Validate every concrete value a trial can take against the method/dataset/model/train records.

    Each domain candidate (a grid value, a choice, each bound of a range) is checked in a config where
    every other domain takes its first candidate, so a bad value is reported once, at its own path.
    """
    from mmtune.engine.trial import parse_trial_config

    problems: dict[str, Problem] = {}
    for entry, entry_path in zip(methods, paths, strict=True):
        base = {**sections, "params": {**sections["params"], **entry.params}}
        domains = dict(_domains(base))
        first = {path: d.candidates()[0] for path, d in domains.items()}
        probes: list[tuple[dict[str, Any], str | None, str]] = [(first, None, "")]
        for path, d in domains.items():
            for j, value in enumerate(d.candidates()):
                tag = f"[{j}]" if d.kind in ("grid", "choice") else (".low" if j == 0 else ".high")
                probes.append(({**first, path: value}, path, f".{d.kind}{tag}"))
        for values, varied, suffix in probes:
            config = {"method": entry.method, "seed": seed, **_set_leaves(base, values)}
            try:
                parse_trial_config(config)
            except ConfigError as err:
                for p in err.problems:
                    if (varied is not None and p.path != varied) or (varied is None and p.path in domains):
                        continue  # each problem is reported once: by the probe of its own path
                    where = p.path if varied is None or "unknown key" in p.message else f"{varied}{suffix}"
                    if where.startswith("params.") and where.split(".")[1].split("[")[0] in entry.params:
                        where = f"{entry_path}.{where}"
                    elif where.startswith("params.") and "unknown key" in p.message:
                        variant = f" (variant '{entry.label}')" if entry.label != entry.method else ""
                        p = Problem(where, f"is not a hyperparameter of method '{entry.method}'{variant}."
                                           f"{_param_hint(p.message, len(methods))}")
                    problems.setdefault(f"{where}|{p.message}", Problem(where, p.message))
    return list(problems.values())


def _param_hint(message: str, n_methods: int) -> str:
    rest = message.split(". ", 1)[-1] if "Valid keys" in message else ""
    hint = f" {rest}" if rest else ""
    if n_methods > 1:
        hint += " Top-level params apply to every listed method; move it into that method's entry: {name, method, params}."
    return hint


def _line_map(node: yaml.Node | None) -> dict[str, int]:
    """YAML path (``params.tau.grid[2]``) → 1-based line, from the composed node tree."""
    lines: dict[str, int] = {}

    def walk(n: yaml.Node, path: str) -> None:
        lines[path] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = f"{path}.{k.value}" if path else str(k.value)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
                lines[key] = k.start_mark.line + 1
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, f"{path}[{i}]")

    if node is not None:
        walk(node, "")
    return lines


def _with_line(problem: Problem, lines: dict[str, int]) -> Problem:
    path = problem.path
    probe = path
    while probe and probe not in lines:  # fall back to the nearest enclosing node
        probe = probe.rsplit(".", 1)[0] if "." in probe else (probe.rsplit("[", 1)[0] if "[" in probe else "")
    if probe and probe in lines:
        return Problem(f"{path} (line {lines[probe]})", problem.message)
    return problem


def number_of_configs(spec: SweepSpec) -> int:
    return math.ceil(spec.num_trials() / max(len(spec.seeds), 1))
