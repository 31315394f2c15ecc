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
    logging: [tensorboard, mlflow]          # optional: Ray Tune's loggers (tensorboard | mlflow | wandb),
                                            # libraries from the extra: pip install 'mmtune[logging]'
    checkpoint_every_s: 60                  # a trial checkpoints after the first epoch that ends this long
                                            # after its last checkpoint (0: every epoch), and at its end

Domains may stand at any leaf of ``dataset``, ``model``, ``train`` and ``params`` (and inside a method
entry's ``params``). Grid sweeps take only ``grid`` domains and run every combination × every seed
exactly once. Optuna sweeps take ``choice``/``uniform``/``loguniform``/``int`` (not ``grid``: Optuna
cannot enumerate) and a single method entry; seeds are handled by mmtune (see ``tuner.py``).

Selection is on validation only: ``search.metric`` must be a validation key that every trial
reports (DESIGN §3.3, :meth:`mmtune.engine.trial.Trial.step`): ``val_acc``, ``val_macro_f1``, ``val_map``,
their ``best_val_*`` forms, ``val_acc/<m>`` for a modality m that every trial trains on, and
``val_probe/<m>`` when every trial sets ``train.probe``. (A real dataset's modalities are known only
from its files, so there any ``val_acc/<m>`` is accepted.) A ``test_*`` metric is refused.

Nothing escapes validation: whatever the file holds, the outcome is a SweepSpec or a ConfigError,
in bounded time and memory, with messages of readable length (a quoted value is cut to 80
characters). The bounds:

* the file is UTF-8 (a bad byte is named by its offset), at most 256 KiB;
* it nests at most 32 levels and holds at most 10,000 values, both counted with YAML aliases
  expanded — arithmetically, on the composed node graph, before anything is constructed — so an
  alias "bomb" is refused at once. Anchors and aliases within that budget are fine (merge keys
  ``<<: *base`` too); a recursive alias is refused;
* keys are text, each given once (a second one is an error naming both lines, not "last wins");
  values are text, numbers, true/false, null, lists and mappings (no dates, binary, sets or other
  tags); numbers are finite and integers fit in 64 bits. Text that reads as a number in a numeric
  field (``lr: 1e-3``, text to YAML 1.1) is refused with the spelling YAML reads as a number (1.0e-3);
* at most 10,000 trials (configurations × seeds, counted before anything is expanded; Optuna:
  num_samples × seeds), at most 1,000 seeds, each in ``[0, 2**63 - 2**20)``; ``search.seed`` below
  2**32 (Optuna's sampler); ``train.epochs`` one number (ASHA's max_t);
* ``resources.cpu`` in (0, 1024], ``resources.gpu`` in [0, 64], ``checkpoint_every_s`` >= 0,
  ``scheduler.asha.reduction_factor`` > 1, ``max_failures`` <= 1,000, all finite.

Every configuration a grid sweep will run is built and parsed as its trial will parse it
(:func:`~mmtune.engine.trial.parse_trial_config`), with the checks a trial makes before it trains
(:func:`~mmtune.engine.trial.preflight`: the modalities the method and the model name exist, weight
files exist, a synthetic dataset and its MLP fit in this machine's memory). An Optuna sweep is
checked on its fixed part with each domain's candidates and bounds.
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

from mmtune.config import INT64_MAX, MAX_SEED, number_problem
from mmtune.errors import ConfigError, Problem, did_you_mean, shorten

__all__ = ["shipped_specs", "shipped_specs_dir", "resolve_spec_path", "load_spec_data", "load_yaml_value", "parse_spec_data", "SpecSource", "Domain", "MethodEntry", "SweepSpec", "load_spec", "parse_spec", "expand_grid", "entry_domains", "entry_config", "smoke_spec", "DOMAIN_KINDS"]

TOP_KEYS = (
    "name", "description", "method", "dataset", "model", "train", "params", "seeds", "search",
    "scheduler", "resources", "max_concurrent", "max_failures", "checkpoint_every_s", "logging",
)
CONFIG_SECTIONS = ("dataset", "model", "train", "params")
DOMAIN_KINDS = ("grid", "choice", "uniform", "loguniform", "int")
SEARCH_KEYS = ("algorithm", "num_samples", "metric", "mode", "seed")
ASHA_KEYS = ("grace_period", "reduction_factor", "metric", "mode")
RESOURCE_KEYS = ("cpu", "gpu")
# `logging: [...]`: Ray Tune's own logger callbacks, each library in an optional extra (pip install 'mmtune[logging]').
# name -> (module that must be importable, the pip package the extra brings)
LOGGERS = {"tensorboard": ("tensorboardX", "tensorboardX"), "mlflow": ("mlflow", "mlflow-skinny"),
           "wandb": ("wandb", "wandb")}
ENTRY_KEYS = ("name", "method", "params")
DEFAULT_STORAGE = "runs"  # where `mmtune sweep` writes when no --storage is given
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
SMOKE = {"epochs": 2, "n_train": 256, "n_val": 96, "n_test": 96, "num_samples": 2}
# Bounds that keep validation itself bounded in time and memory, whatever a file holds.
MAX_SPEC_BYTES = 2**18  # a spec is a few kilobytes
MAX_DEPTH = 32  # nesting levels (mappings and lists), aliases followed
MAX_VALUES = 10_000  # YAML nodes (keys, values, lists, mappings), aliases expanded
MAX_TRIALS = 10_000  # configurations × seeds; each configuration is parsed (~0.2 ms) during validation
MAX_SEEDS = 1_000
MAX_CPUS, MAX_GPUS = 1024, 64  # per trial: a trial runs on one machine


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
    logging: tuple[str, ...] = ()  # LOGGERS names: Ray Tune's TensorBoard / MLflow / W&B callbacks
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
        """Configurations × seeds, counted (not expanded)."""
        if self.algorithm == "optuna":
            return self.num_samples * len(self.seeds)
        return sum(_grid_size(_entry_base(self.sections, e)) for e in self.methods) * len(self.seeds)


# ------------------------------------------------------------------------------------ shipped specs
def shipped_specs_dir() -> Path | None:
    """The folder of the specs mmtune ships: ``mmtune/search_spaces/`` in an installed wheel (package data),
    else the checkout's ``search_spaces/`` (the one copy in the repo; an editable install reads it)."""
    package = Path(__file__).resolve().parents[1]
    for folder in (package / "search_spaces", package.parent / "search_spaces"):
        if folder.is_dir() and any(folder.glob("*.yaml")):
            return folder
    return None


def shipped_specs() -> dict[str, Path]:
    """``{name: path}`` of the shipped specs, by name (``quickstart`` → ``…/search_spaces/quickstart.yaml``)."""
    folder = shipped_specs_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder else {}


def resolve_spec_path(spec: str | Path) -> Path:
    """A spec argument as a file: the path itself when it exists, else the shipped spec it names — a bare
    name (``quickstart``, ``quickstart.yaml``) or the repo-relative ``search_spaces/quickstart.yaml`` that
    the README uses — so both work from any folder with a pip-installed mmtune. Else the path unchanged."""
    path = Path(spec)
    if path.is_file():
        return path
    bare = len(path.parts) == 1 or (len(path.parts) == 2 and path.parts[0] == "search_spaces")
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    shipped = shipped_specs().get(name) if bare and path.suffix in ("", ".yaml", ".yml") else None
    return shipped if shipped is not None else path


# ----------------------------------------------------------------------------------------- loading
def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a spec file; raise ConfigError listing every problem (with YAML lines)."""
    return parse_spec_data(*load_spec_data(path))


@dataclass(frozen=True)
class SpecSource:
    """What a spec file says beyond its data: the line of each YAML path (``params.tau.grid[2]`` → 9),
    and the problems only its text shows (a key given twice, of which YAML silently keeps the last)."""

    lines: dict[str, int]
    problems: tuple[Problem, ...] = ()


def load_spec_data(path: str | Path) -> tuple[Any, SpecSource]:
    """A spec file's plain data and its :class:`SpecSource`; ConfigError if it cannot be read as a spec.

    The file is read as bytes and decoded as UTF-8; its YAML is composed into a node graph with the
    nesting depth bounded while composing, and the graph is measured (values and depth, aliases
    expanded, arithmetically) before any value is constructed, so no file can exhaust time or memory.
    """
    path = resolve_spec_path(path)
    where = str(path)
    if not path.is_file():
        names = list(shipped_specs())
        hint = did_you_mean(path.name.removesuffix(".yaml"), names)
        raise ConfigError(Problem(where, f"no such spec file.{hint} Pass the path of a YAML sweep spec, or the name of "
                                         f"a shipped one ({', '.join(names) or 'none found'}; `mmtune example NAME` "
                                         "copies one out to edit)."))
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_SPEC_BYTES + 1)  # never more, whatever the file claims to hold
    except OSError as err:
        raise ConfigError(Problem(where, f"cannot be read ({err.strerror or type(err).__name__}).")) from None
    if len(raw) > MAX_SPEC_BYTES:
        raise ConfigError(Problem(where, f"is larger than {MAX_SPEC_BYTES:,} bytes; a sweep spec is a few kilobytes. "
                                         "Is this the spec file?"))
    text = _decode(raw, where)
    if not text.strip():
        raise ConfigError(Problem(where, "the spec file is empty. Start from search_spaces/quickstart.yaml."))
    try:
        node = _compose(text, where)
        source = _spec_source(node)  # before constructing: that inlines merge keys (<<: *base) into their mappings
        data = _construct(node, where)
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_problem(err, text, where)) from None
    if data is None:
        raise ConfigError(Problem(where, "the spec holds no data (only comments?). Start from search_spaces/quickstart.yaml."))
    return data, source


def load_yaml_value(text: str, *, where: str) -> Any:
    """One YAML value (a ``key=value`` override's value) under the same bounds as a spec file:
    ConfigError naming ``where`` if it breaks them, ``yaml.YAMLError`` if it is not YAML."""
    return _construct(_compose(text, where), where)


def parse_spec_data(data: Any, source: SpecSource | yaml.Node | None = None) -> SweepSpec:
    """:func:`parse_spec` with the problems located on the YAML lines of ``source``, together with the
    problems that only the file's text shows (a key given twice)."""
    if not isinstance(source, SpecSource):
        source = _spec_source(source)
    try:
        spec = parse_spec(data)
    except ConfigError as err:
        raise ConfigError([*source.problems, *(_with_line(p, source.lines) for p in err.problems)]) from None
    if source.problems:
        raise ConfigError(source.problems)
    return spec


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise ConfigError(Problem(where, f"is not UTF-8 text: byte 0x{raw[err.start]:02x} at offset {err.start} (line {line}, "
                                         f"byte {column} of the line) cannot be decoded. Save the file as UTF-8.")) from None


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing while composing (so before it recurses deeper or reads on) a
    spec nested more than MAX_DEPTH levels or holding more than MAX_VALUES nodes, and noting the
    aliases it meets."""

    def __init__(self, text: str, where: str):
        super().__init__(text)
        self.where = where
        self.depth = 0
        self.nodes = 0
        self.aliases: list[tuple[str, int]] = []  # (anchor, line) of every *alias

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self.aliases.append((event.anchor, event.start_mark.line + 1))
            return super().compose_node(parent, index)
        self.nodes += 1
        if self.nodes > MAX_VALUES:
            raise ConfigError(Problem(self.where, f"holds more than {MAX_VALUES:,} values (at line {event.start_mark.line + 1}); "
                                                  "a sweep spec is a few dozen lines."))
        container = isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent))
        self.depth += container
        try:
            if self.depth > MAX_DEPTH:
                raise ConfigError(Problem(self.where, f"nests more than {MAX_DEPTH} levels deep (line {event.start_mark.line + 1}). "
                                                      "A sweep spec needs a handful: check the brackets there."))
            return super().compose_node(parent, index)
        finally:
            self.depth -= container


_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null")}  # (merge `<<: *base` is allowed as a key)
_RESOLVER = yaml.resolver.Resolver()


def _compose(text: str, where: str) -> yaml.Node | None:
    """The YAML node graph of ``text`` (an alias is the aliased node itself: nothing is expanded),
    checked for what no spec can hold: an unsupported tag, a recursive alias, too many values or
    levels once its aliases are expanded (ConfigError). A YAML syntax error raises yaml.YAMLError."""
    loader = _SpecLoader(text, where)
    try:
        node = loader.get_single_node()
    finally:
        loader.dispose()
    if node is not None:
        problems = _tag_problems(node, where) or _expansion_problems(node, loader.aliases, where)
        if problems:
            raise ConfigError(problems)
    return node


def _construct(node: yaml.Node | None, where: str) -> Any:
    """Plain values from a checked node graph (an aliased value is shared, not copied)."""
    if node is None:
        return None
    constructor = yaml.SafeLoader("")
    try:
        return constructor.construct_document(node)
    finally:
        constructor.dispose()


def _yaml_problem(err: yaml.YAMLError, text: str, where: str) -> Problem:
    if isinstance(err, yaml.reader.ReaderError):  # a control character (NUL …); position counts characters
        line = text.count("\n", 0, err.position) + 1
        code = err.character if isinstance(err.character, int) else ord(err.character)
        return Problem(where, f"YAML cannot read the character U+{code:04X} (line {line}): {err.reason}. Remove it.")
    mark = getattr(err, "problem_mark", None)
    at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    what = getattr(err, "problem", None) or str(err).splitlines()[0]
    return Problem(where, f"YAML syntax error{at}: {what}. Fix the YAML there.")


def _nodes(root: yaml.Node) -> Iterator[yaml.Node]:
    """Every distinct node of the graph once (an aliased node is not visited again)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(_children(node))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _tag_problems(root: yaml.Node, where: str) -> list[Problem]:
    """Values YAML would construct as something other than plain data (a date, bytes, a set, a Python
    object), or could not construct at all (``!!int abc``): refused before construction."""
    problems = []
    for node in _nodes(root):
        line = node.start_mark.line + 1
        scalar = isinstance(node, yaml.ScalarNode)
        if scalar and node.tag == _TAG + "timestamp":
            problems.append(Problem(where, f"{shorten(node.value)} (line {line}) reads as a date, which is not a spec value. "
                                           "Quote it for text."))
        elif scalar and node.tag in _SCALAR_TAGS - {_TAG + "str"}:
            if _RESOLVER.resolve(yaml.ScalarNode, node.value, (True, False)) != node.tag:
                problems.append(Problem(where, f"{shorten(node.value)} (line {line}) is not a valid !!{node.tag.removeprefix(_TAG)}. "
                                               "Remove the tag, or fix the value."))
        elif not (scalar and node.tag in (_TAG + "str", _TAG + "merge", _TAG + "value")
                  or isinstance(node, yaml.SequenceNode) and node.tag == _TAG + "seq"
                  or isinstance(node, yaml.MappingNode) and node.tag == _TAG + "map"):
            problems.append(Problem(where, f"the tag {shorten(node.tag, 60)} (line {line}) is not supported here: spec values "
                                           "are text, numbers, true/false, null, lists and mappings. Remove the tag."))
    return problems


def _expansion_problems(root: yaml.Node, aliases: list[tuple[str, int]], where: str) -> list[Problem]:
    """Values and nesting depth of the document with every alias expanded, counted on the node graph
    (each node once, bottom-up), so an alias "bomb" is measured without being expanded."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_: set[int] = set()  # nodes whose children are being counted: one met again is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, counted = stack.pop()
        key, children = id(node), _children(node)
        if counted:
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 0 if isinstance(node, yaml.ScalarNode) else 1 + max((depth[id(c)] for c in children), default=0)
            open_.discard(key)
            continue
        if key in size:
            continue
        open_.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in open_:
                return [Problem(where, f"the value at line {child.start_mark.line + 1} contains itself through an alias: "
                                       "a recursive alias cannot be a spec value.")]
            if id(child) not in size:
                stack.append((child, False))
    anchors: dict[str, int] = {}
    for anchor, line in aliases:
        anchors.setdefault(anchor, line)  # each anchor with the line of its first alias
    used = ", ".join(f"*{shorten(a, 30)[1:-1]} (line {line})" for a, line in list(anchors.items())[:3]) + (", …" if len(anchors) > 3 else "")
    through = f" with its aliases expanded ({used})" if aliases else ""
    problems = []
    if depth[id(root)] > MAX_DEPTH:
        problems.append(Problem(where, f"nests {depth[id(root)]:,} levels deep{through}; at most {MAX_DEPTH} are allowed."))
    if size[id(root)] > MAX_VALUES:
        problems.append(Problem(where, f"holds {size[id(root)]:,} values{through}; a sweep spec is a few dozen lines, at most "
                                       f"{MAX_VALUES:,} values are allowed." + (" Write the values out instead." if aliases else "")))
    return problems


def _spec_source(root: yaml.Node | None) -> SpecSource:
    """YAML path → 1-based line, and the keys given twice, from the node graph. Each node is visited
    once: a path under an alias gets the alias's line (the nearest enclosing path), never an expansion."""
    lines: dict[str, int] = {}
    problems: list[Problem] = []
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")] if root is not None else []
    while stack:
        node, path = stack.pop()
        lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for k, v in node.value:
                name = str(k.value) if isinstance(k, yaml.ScalarNode) else "?"
                line = k.start_mark.line + 1
                if k.tag == _TAG + "merge":
                    stack.append((v, path))
                    continue
                key = f"{path}.{name}" if path else name
                if isinstance(k, yaml.ScalarNode) and name in first:
                    problems.append(Problem(key, f"is given twice (lines {first[name]} and {line}); YAML would silently keep "
                                                 "only the last. Remove one."))
                first.setdefault(name, line)
                lines[key] = line
                stack.append((v, key))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node.value))
    return SpecSource(lines, tuple(problems))


def parse_spec(data: Any) -> SweepSpec:
    """Validate plain spec data (a parsed YAML mapping) into a SweepSpec, collecting every problem."""
    if not isinstance(data, Mapping):
        raise ConfigError(Problem("", f"a spec is a mapping of keys (name, method, params …), got {type(data).__name__}."))
    structural, problems = _plain_problems(data)
    if structural:  # the checks below assume plain data: text keys, plain values, bounded size
        raise ConfigError([*structural, *problems])
    for key in data:
        if key not in TOP_KEYS:
            problems.append(Problem(str(key), f"unknown key.{did_you_mean(str(key), TOP_KEYS)} Valid keys: {', '.join(TOP_KEYS)}."))

    name = data.get("name")
    if name is None:
        problems.append(Problem("name", "is required: the sweep's name (its folder under the storage path)."))
    elif not isinstance(name, str) or not NAME_RE.match(name):
        problems.append(Problem("name", f"must be letters, digits, '_', '-', '.', '+' (a folder name), got {shorten(name)}."))

    # search first: it decides which domains are allowed.
    search = _mapping(data, "search", problems) or {}
    _unknown(search, SEARCH_KEYS, "search", problems)
    algorithm = search.get("algorithm", "grid")
    if algorithm not in ("grid", "optuna"):
        problems.append(Problem("search.algorithm", f"must be 'grid' or 'optuna', got {shorten(algorithm)}."))
    num_samples = search.get("num_samples", 10 if algorithm == "optuna" else 1)
    if algorithm == "optuna":
        _check_int(num_samples, "search.num_samples", 1, problems, high=MAX_TRIALS)
    elif "num_samples" in search:
        problems.append(Problem("search.num_samples", "only applies to search.algorithm: optuna (a grid runs every combination once)."))
    metric = search.get("metric", "val_acc")
    mode = search.get("mode", "max")
    _check_metric(metric, "search.metric", problems)
    if mode not in ("max", "min"):
        problems.append(Problem("search.mode", f"must be 'max' or 'min', got {shorten(mode)}."))
    search_seed = search.get("seed", 0)
    _check_int(search_seed, "search.seed", 0, problems, high=2**32 - 1, why=" (Optuna's sampler takes a 32-bit seed)")

    methods, method_paths = _parse_methods(data.get("method"), algorithm, problems)
    sections: dict[str, dict[str, Any]] = {}
    for section in CONFIG_SECTIONS:
        raw = _mapping(data, section, problems)
        sections[section] = _parse_domains(raw or {}, section, algorithm, problems)
    if isinstance(sections["train"].get("epochs"), Domain):
        problems.append(Problem("train.epochs", "must be one number for the whole sweep (ASHA's max_t, the progress view): "
                                                "run one sweep per number of epochs."))
        sections["train"].pop("epochs")

    seeds = _parse_seeds(data.get("seeds", [0]), problems)

    asha = None
    scheduler = _mapping(data, "scheduler", problems)
    if scheduler:
        _unknown(scheduler, ("asha",), "scheduler", problems)
        if "asha" in scheduler:
            raw = scheduler["asha"] if scheduler["asha"] is not None else {}
            if not isinstance(raw, Mapping):
                problems.append(Problem("scheduler.asha", f"must be a mapping like {{grace_period: 3}}, got {shorten(raw)}."))
            else:
                _unknown(raw, ASHA_KEYS, "scheduler.asha", problems)
                asha = {"grace_period": raw.get("grace_period", 1), "reduction_factor": raw.get("reduction_factor", 2)}
                _check_int(asha["grace_period"], "scheduler.asha.grace_period", 1, problems)
                _check_number(asha["reduction_factor"], "scheduler.asha.reduction_factor", problems, low=1, low_open=True,
                              what="a number > 1")
                for key, value in (("metric", metric), ("mode", mode)):
                    if key in raw and raw[key] != value:
                        problems.append(Problem(f"scheduler.asha.{key}", f"is {shorten(raw[key])} but search.{key} is {shorten(value)}: "
                                                "ASHA stops on the sweep's metric. Set it once, under search."))

    resources = _mapping(data, "resources", problems) or {}
    _unknown(resources, RESOURCE_KEYS, "resources", problems)
    cpu, gpu = resources.get("cpu", 1), resources.get("gpu", 0)
    _check_number(cpu, "resources.cpu", problems, low=0, low_open=True, high=MAX_CPUS,
                  what=f"a number of CPUs per trial in (0, {MAX_CPUS}]")
    if _check_number(gpu, "resources.gpu", problems, low=0, high=MAX_GPUS, what=f"a number of GPUs per trial in [0, {MAX_GPUS}]") \
            and gpu > 1 and gpu != int(gpu):
        problems.append(Problem("resources.gpu", f"a fraction (<= 1) or a whole number of GPUs, got {gpu}."))
    max_concurrent = data.get("max_concurrent")
    if max_concurrent is not None:
        _check_int(max_concurrent, "max_concurrent", 1, problems)
    max_failures = data.get("max_failures", 1)
    _check_int(max_failures, "max_failures", 0, problems, high=1_000)
    checkpoint_every_s = data.get("checkpoint_every_s", 60.0)
    _check_number(checkpoint_every_s, "checkpoint_every_s", problems, low=0,
                  what="a number of seconds >= 0 (0: every epoch)")
    loggers = _parse_logging(data.get("logging", []), problems)
    description = data.get("description", "")
    if not isinstance(description, str):
        problems.append(Problem("description", f"must be text, got {type(description).__name__}."))

    trials = _count_trials(methods, sections, algorithm, num_samples, seeds)
    if trials is not None and trials[0] > MAX_TRIALS:
        problems.append(Problem("", f"the sweep would run {trials[0]:,} trials ({trials[1]}); at most {MAX_TRIALS:,} are allowed. "
                                    "Shrink the grid or the seeds, or split it into several sweeps."))
    elif methods:
        problems += _check_trials(methods, method_paths, sections, seeds[0] if seeds else 0,
                                  every_configuration=algorithm == "grid" and not problems)
        if not problems:
            problems += _check_reported_metric(methods, sections, metric, algorithm)
    epochs = sections["train"].get("epochs", _default_epochs())
    if asha is not None and isinstance(epochs, int) and isinstance(asha["grace_period"], int) \
            and epochs <= asha["grace_period"]:
        problems.append(Problem("scheduler.asha.grace_period", f"is {asha['grace_period']} but train.epochs is {epochs}: "
                                "ASHA could never stop a trial. Lower grace_period or drop the scheduler."))
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))  # a value's problem once, however many checks saw it
    return SweepSpec(
        name=name, methods=tuple(methods), sections=sections, seeds=tuple(seeds), algorithm=algorithm,
        num_samples=int(num_samples), metric=metric, mode=mode, search_seed=int(search_seed), asha=asha,
        cpu=float(cpu), gpu=float(gpu), max_concurrent=max_concurrent, max_failures=int(max_failures),
        checkpoint_every_s=float(checkpoint_every_s), logging=loggers, description=description,
        source=copy.deepcopy(dict(data)),
    )


# ------------------------------------------------------------------------------------ expansion
def expand_grid(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every trial config of a grid sweep: method entries × grid axes × seeds, each exactly once.

    Order: method entries outermost, then the grid axes in spec order, seeds innermost, so the seeds
    of one configuration run next to each other.
    """
    if spec.num_trials() > MAX_TRIALS:  # parse_spec refuses such a spec; this guards one built by hand
        raise ConfigError(Problem("", f"the sweep would run {spec.num_trials():,} trials; at most {MAX_TRIALS:,} are allowed."))
    trials = []
    for entry in spec.methods:
        for config in _configurations(_entry_base(spec.sections, entry)):
            for seed in spec.seeds:
                trials.append({"method": entry.method, "label": entry.label, "seed": seed, **copy.deepcopy(config)})
    return trials


def entry_domains(spec: SweepSpec, entry: MethodEntry) -> dict[str, Domain]:
    """The searched leaves of one method entry's trials, by dotted path (``params.alpha``), in spec order."""
    return dict(_domains(_entry_base(spec.sections, entry)))


def entry_config(spec: SweepSpec, entry: MethodEntry, values: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """One trial config of a method entry: every searched leaf set from ``values`` (dotted path → value)."""
    config = _set_leaves(_entry_base(spec.sections, entry), values)
    return {"method": entry.method, "label": entry.label, "seed": seed, **copy.deepcopy(config)}


def _entry_base(sections: Mapping[str, Mapping[str, Any]], entry: MethodEntry) -> dict[str, Any]:
    """The sections of one method entry's trials: its own params over the shared ones."""
    return {**sections, "params": {**sections["params"], **entry.params}}


def _grid_size(base: Mapping[str, Any]) -> int:
    return math.prod(len(d.values) for _, d in _domains(base))


def _configurations(base: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every combination of ``base``'s grid values, grid axes in spec order (the last varies fastest)."""
    axes = list(_domains(base))
    for values in itertools.product(*(d.values for _, d in axes)):
        yield _set_leaves(base, {path: v for (path, _), v in zip(axes, values, strict=True)})


def optuna_base(spec: SweepSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fixed part of the trial config, nested Tune search space) of an Optuna sweep."""
    entry = spec.methods[0]
    domains = entry_domains(spec, entry)
    fixed = _set_leaves(_entry_base(spec.sections, entry), {path: None for path in domains}, drop=True)
    space: dict[str, Any] = {}
    for path, domain in domains.items():
        node = space
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = domain.to_tune()
    return {"method": entry.method, "label": entry.label, **fixed}, space


def smoke_spec(spec: SweepSpec) -> SweepSpec:
    """The same sweep shrunk to run in seconds: ≤ 2 epochs (or the fewest a method of the sweep can run,
    UMT's M + 1), a small synthetic set, one seed, ≤ 2 samples."""
    sections = copy.deepcopy(spec.sections)
    train = sections["train"]
    epochs = _plain_int(train.get("epochs"), spec.epochs)
    train["epochs"] = min(epochs, max(SMOKE["epochs"], _min_epochs(spec)))
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


def _min_epochs(spec: SweepSpec) -> int:
    """The most epochs any method of the sweep needs at least (UMT: a teacher stage per modality, then
    its student); fixed params count, searched ones at their defaults; 1 when it cannot be told."""
    from mmtune.config import from_dict
    from mmtune.data import dataset_config
    from mmtune.engine.registry import get_method

    try:
        modalities = list(getattr(dataset_config(spec.sections.get("dataset")), "modalities", None) or ["a", "b"])
    except ConfigError:
        modalities = ["a", "b"]
    shared = spec.sections.get("params") or {}
    need = 1
    for entry in spec.methods:
        try:
            cls = get_method(entry.method)
            fixed = {k: v for k, v in {**shared, **entry.params}.items() if not isinstance(v, Domain)}
            try:
                config = from_dict(cls.Config, fixed, path="params")
            except ConfigError:
                config = cls.Config()
            need = max(need, cls.min_epochs(config, cls.select_modalities(config, modalities)))
        except ConfigError:
            continue
    return need


# ------------------------------------------------------------------------------------- helpers
def _mapping(data: Mapping[str, Any], key: str, problems: list[Problem]) -> Mapping[str, Any] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        problems.append(Problem(key, f"must be a mapping (key: value lines), got {type(value).__name__} {shorten(value)}."))
        return None
    return value


def _unknown(node: Mapping[str, Any], valid: tuple[str, ...], path: str, problems: list[Problem]) -> None:
    for key in node:
        if key not in valid:
            problems.append(Problem(f"{path}.{key}", f"unknown key.{did_you_mean(str(key), valid)} Valid keys: {', '.join(valid)}."))


def _check_int(value: Any, path: str, low: int, problems: list[Problem], *, high: int | None = None, why: str = "") -> bool:
    """Whether ``value`` is an integer in [low, high]; a problem at ``path`` if not (one that
    :func:`_plain_problems` reported already, an integer beyond 64 bits, is not repeated)."""
    if number_problem(value):
        return False
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        rule = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high:,}]"
        problems.append(Problem(path, f"must be {rule}{why}, got {shorten(value)}."))
        return False
    return True


def _check_number(value: Any, path: str, problems: list[Problem], *, low: float, low_open: bool = False,
                  high: float | None = None, what: str) -> bool:
    """Whether ``value`` is a finite number in its range; a problem naming ``what`` it must be if not."""
    if number_problem(value):
        return False  # NaN, an infinity or a huge integer: reported once, by _plain_problems
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) \
        and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        problems.append(Problem(path, f"must be {what}, got {shorten(value)}."))
    return ok


def _plain_problems(data: Mapping[str, Any]) -> tuple[list[Problem], list[Problem]]:
    """(structural, number) problems of spec data, each at its YAML path.

    Structural: a key that is not text, a value that is not text, a number, a boolean, null, a list or
    a mapping (a date, bytes …), a value that contains itself, more than MAX_DEPTH levels or
    MAX_VALUES values. Number: NaN, an infinity, an integer beyond 64 bits — anywhere, so none
    reaches a trial, Ray or the tables. The walk is iterative and stops at MAX_VALUES, so data built
    in Python (sharing or nesting however it likes) is bounded too.
    """
    structural: list[Problem] = []
    numbers: list[Problem] = []
    count = 0
    open_: set[int] = set()
    stack: list[Any] = [(data, "", 0)]
    while stack:
        item = stack.pop()
        if isinstance(item, int):  # leaving a container
            open_.discard(item)
            continue
        value, path, depth = item
        count += 1
        if count > MAX_VALUES:
            structural.append(Problem("", f"holds more than {MAX_VALUES:,} values; a sweep spec is a few dozen lines."))
            break
        if isinstance(value, (Mapping, list, tuple)):
            if id(value) in open_:
                structural.append(Problem(path, "contains itself: a recursive value cannot be a spec value."))
                continue
            if depth >= MAX_DEPTH:
                structural.append(Problem(path, f"nests more than {MAX_DEPTH} levels deep; a sweep spec needs a handful."))
                continue
            open_.add(id(value))
            stack.append(id(value))
            if isinstance(value, Mapping):
                for key, child in reversed(list(value.items())):
                    here = f"{path}.{key}" if path else str(key)
                    if not isinstance(key, str):
                        structural.append(Problem(here, f"a key must be text, got {type(key).__name__} {shorten(key, 30)}. "
                                                        f"Quote it ('{shorten(key, 30)}') if it is a name."))
                    else:
                        stack.append((child, here, depth + 1))
            else:
                stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in reversed(list(enumerate(value))))
        elif isinstance(value, (str, bool, int, float)) or value is None:
            if number_problem(value):
                numbers.append(Problem(path, number_problem(value)))
        else:
            structural.append(Problem(path, f"a {type(value).__name__} ({shorten(value, 40)}) is not a spec value: values are "
                                            "text, numbers, true/false, null, lists and mappings. Quote it for text."))
    return structural, numbers


def _default_epochs() -> int:
    from mmtune.engine.trial import TrainConfig

    return TrainConfig.epochs


def _plain_int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _check_metric(metric: Any, path: str, problems: list[Problem]) -> None:
    if not isinstance(metric, str):
        problems.append(Problem(path, f"must be a metric name such as 'val_acc', got {shorten(metric)}."))
    elif metric.startswith("test"):
        problems.append(Problem(path, f"'{metric}' is a test metric: selection must never see test data. "
                                      "Use a validation metric (val_acc, val_macro_f1, val_map)."))
    elif not (metric.startswith("val_") or metric.startswith("best_val_")):
        problems.append(Problem(path, f"'{metric}' is not a validation metric.{did_you_mean(metric, ('val_acc', 'val_macro_f1', 'val_map'))} "
                                      "Use val_acc, val_macro_f1, val_map, val_acc/<modality> or best_val_*."))


def _parse_logging(raw: Any, problems: list[Problem]) -> tuple[str, ...]:
    """``logging: [tensorboard, mlflow]`` (or one name): known names, each once, whose library is installed."""
    import importlib.util

    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        problems.append(Problem("logging", f"must be a list of logger names ({', '.join(LOGGERS)}), got {shorten(raw)}."))
        return ()
    names: list[str] = []
    for i, name in enumerate(items):
        path = "logging" if isinstance(raw, str) else f"logging[{i}]"
        if not isinstance(name, str) or name not in LOGGERS:
            hint = did_you_mean(name, tuple(LOGGERS)) if isinstance(name, str) else ""
            problems.append(Problem(path, f"unknown logger {shorten(name)}.{hint} Valid loggers: {', '.join(LOGGERS)}."))
        elif name in names:
            problems.append(Problem(path, f"'{name}' is listed twice: list each logger once."))
        else:
            module, package = LOGGERS[name]
            if importlib.util.find_spec(module) is None:
                problems.append(Problem(path, f"the {name} logger needs the {package} package, which is not installed. "
                                              "Install the extra: pip install 'mmtune[logging]' (or pip install "
                                              f"{package}), or drop '{name}' from logging."))
            names.append(name)
    return tuple(names)


def _parse_seeds(raw: Any, problems: list[Problem]) -> list[int]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        if number_problem(raw):
            return []
        if not 1 <= raw <= MAX_SEEDS:
            problems.append(Problem("seeds", f"a count must be in [1, {MAX_SEEDS:,}], got {shorten(raw)}."))
            return []
        return list(range(raw))
    if not isinstance(raw, list) or not raw:
        problems.append(Problem("seeds", f"must be a non-empty list of integers (or a count), got {shorten(raw)}."))
        return []
    if len(raw) > MAX_SEEDS:
        problems.append(Problem("seeds", f"lists {len(raw):,} seeds; at most {MAX_SEEDS:,} are allowed."))
        return []
    seeds = []
    for i, s in enumerate(raw):
        if number_problem(s):
            continue
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < MAX_SEED:
            problems.append(Problem(f"seeds[{i}]", f"must be a non-negative integer below 2**63 - 2**20, got {shorten(s)}."))
        else:
            seeds.append(s)
    if len(set(seeds)) != len(seeds):
        twice = sorted({s for s in seeds if seeds.count(s) > 1})
        problems.append(Problem("seeds", f"has duplicates {shorten(seeds)}: every seed once ({shorten(twice)} appear twice)."))
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
                problems.append(Problem(f"{path}.params", f"must be a mapping of hyperparameters, got {shorten(params)}."))
                params = {}
            if not isinstance(method, str):
                problems.append(Problem(f"{path}.method", f"is required: the registered method this variant runs, got {shorten(method)}."))
                continue
            if not isinstance(label, str) or not NAME_RE.match(label):
                problems.append(Problem(f"{path}.name", f"must be a short name (letters, digits, _-.+), got {shorten(label)}."))
                continue
        else:
            problems.append(Problem(path, f"must be a method name or {{name, method, params}}, got {shorten(item)}."))
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
            problems.append(Problem(here, f"must be a non-empty list of values, got {shorten(values)}."))
            return None
        if len({repr(v) for v in values}) != len(values):
            problems.append(Problem(here, f"has duplicate values {shorten(values)}: a grid runs each once."))
            return None
        return Domain(kind, tuple(values))
    if not (isinstance(values, list) and len(values) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        problems.append(Problem(here, f"must be [low, high] (two numbers), got {shorten(values)}."))
        return None
    if any(number_problem(v) for v in values):
        return None  # NaN, an infinity, a huge integer: reported at its own path by _plain_problems
    low, high = values
    if not low < high:
        problems.append(Problem(here, f"`low < high` must hold, but got low={low}, high={high}."))
        return None
    if not math.isfinite(float(high) - float(low)) or (kind == "int" and high >= INT64_MAX):
        problems.append(Problem(here, f"the range [{low:g}, {high:g}] is too wide to sample from."))
        return None
    if kind == "loguniform" and low <= 0:
        problems.append(Problem(here, f"log-uniform needs low > 0, got {low}."))
        return None
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
        problems.append(Problem(here, f"an int domain takes integer bounds (inclusive), got {shorten(values)}."))
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


def _count_trials(methods: list[MethodEntry], sections: dict[str, dict[str, Any]], algorithm: str, num_samples: Any,
                  seeds: list[int]) -> tuple[int, str] | None:
    """(trials, how they multiply) of the sweep, counted without expanding anything; None when the
    parts are invalid (their own problems say why)."""
    if not methods:
        return None
    n_seeds = max(len(seeds), 1)  # invalid seeds (their own problem) count as one
    if algorithm == "optuna":
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            return None
        return num_samples * n_seeds, f"{num_samples:,} samples × {n_seeds:,} seeds"
    sizes = []
    for entry in methods:
        axes = [f"{path} {len(d.values)}" for path, d in _domains(_entry_base(sections, entry))]
        sizes.append((_grid_size(_entry_base(sections, entry)), axes))
    configs = sum(n for n, _ in sizes)
    how = " × ".join(sizes[0][1]) if len(sizes) == 1 and sizes[0][1] else f"{len(methods)} method entries"
    return configs * n_seeds, f"{configs:,} configurations ({shorten(how, 120)[1:-1]}) × {n_seeds:,} seeds"


def _check_trials(methods: list[MethodEntry], paths: list[str], sections: dict[str, dict[str, Any]], seed: int, *,
                  every_configuration: bool) -> list[Problem]:
    """Validate every concrete value a trial can take as the trial will: :func:`parse_trial_config`
    and :func:`~mmtune.engine.trial.preflight` (what building it would refuse).

    First each domain candidate (a grid value, a choice, each bound of a range) is checked in a config
    where every other domain takes its first candidate, so a bad value is reported once, at its own
    path. Then, with ``every_configuration`` (a grid sweep whose values all passed), every
    configuration the sweep will run is checked, for values that are only wrong together.
    """
    from mmtune.engine.trial import memory_of_machine

    memory = memory_of_machine(available=False)
    problems: dict[str, Problem] = {}
    for entry, entry_path in zip(methods, paths, strict=True):
        base = _entry_base(sections, entry)
        domains = dict(_domains(base))
        first = {path: d.candidates()[0] for path, d in domains.items()}
        found: dict[str, list[Problem]] = {}  # probes that coincide (a domain's first candidate) are parsed once

        def trial_problems(values: dict[str, Any]) -> list[Problem]:
            key = repr(sorted(values.items()))
            if key not in found:
                found[key] = _trial_problems(entry.method, seed, base, values, memory)
            return found[key]

        baseline = {(p.path, p.message) for p in trial_problems(first)}
        probes: list[tuple[dict[str, Any], str | None, str]] = [(first, None, "")]
        for path, d in domains.items():
            for j, value in enumerate(d.candidates()):
                tag = f"[{j}]" if d.kind in ("grid", "choice") else (".low" if j == 0 else ".high")
                probes.append(({**first, path: value}, path, f".{d.kind}{tag}"))
        for values, varied, suffix in probes:
            for p in trial_problems(values):
                if varied is None:
                    if p.path in domains:
                        continue  # reported by the probe of its own path, with the candidate's index
                    where = p.path
                elif p.path == varied:
                    where = p.path if "unknown key" in p.message else f"{varied}{suffix}"
                elif (p.path, p.message) in baseline:
                    continue  # not this candidate's doing: reported by the first probe
                else:  # a problem elsewhere that this candidate causes (a dataset.dim too small for its latent_dim)
                    where, p = p.path, Problem(p.path, f"{p.message} (with {varied}{suffix} = {shorten(values[varied], 40)})")
                if where.startswith("params.") and where.split(".")[1].split("[")[0] in entry.params:
                    where = f"{entry_path}.{where}"
                elif where.startswith("params.") and "unknown key" in p.message:
                    variant = f" (variant '{entry.label}')" if entry.label != entry.method else ""
                    p = Problem(where, f"is not a hyperparameter of method '{entry.method}'{variant}."
                                       f"{_param_hint(p.message, len(methods))}")
                problems.setdefault(f"{where}|{p.message}", Problem(where, p.message))
    if problems or not every_configuration:
        return list(problems.values())
    return _check_configurations(methods, sections, seed, memory)


def _check_configurations(methods: list[MethodEntry], sections: dict[str, dict[str, Any]], seed: int,
                          memory: int | None) -> list[Problem]:
    """Every configuration of a grid sweep, parsed as its trials will be (seeds aside: each seed is
    checked on its own); the first few that fail, each named by its grid values."""
    shown, failing = 5, 0
    problems: list[Problem] = []
    for entry in methods:
        base = _entry_base(sections, entry)
        axes = [path for path, _ in _domains(base)]
        if len(axes) < 2:
            continue  # every configuration was one of the probes already
        for config in _configurations(base):
            found = _trial_problems(entry.method, seed, config, {}, memory)
            if not found:
                continue
            failing += 1
            if failing <= shown:
                values = {path: _leaf(config, path) for path in axes}
                where = ", ".join(f"{path}={shorten(v, 30)}" for path, v in values.items())
                variant = f"variant '{entry.label}'" + (f" with {where}" if where else "")
                problems += [Problem(p.path, f"{p.message} (in the configuration of {variant})") for p in found]
    if failing > shown:
        problems.append(Problem("", f"… {failing - shown:,} more configurations fail the same way or another."))
    return problems


def _trial_problems(method: str, seed: int, base: Mapping[str, Any], values: Mapping[str, Any],
                    memory: int | None) -> list[Problem]:
    from mmtune.engine.trial import parse_trial_config, preflight

    config = {"method": method, "seed": seed, **_set_leaves(base, values)}
    try:
        return preflight(parse_trial_config(config), memory=memory)
    except ConfigError as err:
        return err.problems


def _leaf(config: Mapping[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        node = node[part]
    return node


def _check_reported_metric(methods: list[MethodEntry], sections: dict[str, dict[str, Any]], metric: Any,
                           algorithm: str) -> list[Problem]:
    """``search.metric`` must be a key every trial reports (DESIGN §3.3), or Tune stops a trial that
    never reports it after its first epoch and records nothing useful. Checked on every configuration
    of a grid sweep, and on each candidate of an Optuna sweep's domains."""
    from mmtune.engine.trial import parse_trial_config

    if not isinstance(metric, str) or metric in REPORTED_ALWAYS:
        return []
    missing: list[str] = []
    reported: set[str] | None = None  # what the first trial without the metric reports instead
    for entry in methods:
        base = _entry_base(sections, entry)
        if algorithm == "grid":
            configs: Iterator[dict[str, Any]] = _configurations(base)
        else:
            domains = dict(_domains(base))
            first = {path: d.candidates()[0] for path, d in domains.items()}
            probes = [first, *({**first, path: v} for path, d in domains.items() for v in d.candidates())]
            configs = (_set_leaves(base, values) for values in probes)
        for config in configs:
            trial = parse_trial_config({"method": entry.method, **config})
            keys = _reported_validation_keys(trial)
            if keys is None:  # a real dataset: its modalities are known from its files only
                ok = bool(re.fullmatch(r"val_acc/[^/]+", metric) or trial.train.probe and re.fullmatch(r"val_probe/[^/]+", metric))
            else:
                ok = metric in keys
            if not ok:
                missing.append(entry.label)
                reported = keys if reported is None else reported
                break
    if not missing:
        return []
    known = sorted(reported) if reported else [*sorted(REPORTED_ALWAYS), "val_acc/<modality>", "val_probe/<modality> (train.probe: true)"]
    return [Problem("search.metric", f"{shorten(metric, 60)} is not reported by the trials of {', '.join(missing[:5])}."
                                     f"{did_you_mean(metric, known)} They report {', '.join(known)}.")]


# Validation keys every trial reports (Trial.step: DESIGN §3.3 and the best-so-far it tracks).
REPORTED_ALWAYS = frozenset({"val_acc", "val_macro_f1", "val_map", "best_val_acc", "best_val_macro_f1", "best_val_map"})


def _reported_validation_keys(trial: Any) -> set[str] | None:
    """The validation keys ``trial`` reports; None when its modalities are known only from its data."""
    from mmtune.engine.registry import get_method

    modalities = getattr(trial.dataset, "modalities", None)
    if modalities is None:
        return None
    modalities = get_method(trial.method).select_modalities(trial.params, list(modalities))
    keys = set(REPORTED_ALWAYS) | {f"val_acc/{m}" for m in modalities}
    if trial.train.probe:
        keys |= {f"val_probe/{m}" for m in modalities}
    return keys


def _param_hint(message: str, n_methods: int) -> str:
    rest = message.split(". ", 1)[-1] if "Valid keys" in message else ""
    hint = f" {rest}" if rest else ""
    if n_methods > 1:
        hint += " Top-level params apply to every listed method; move it into that method's entry: {name, method, params}."
    return hint


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
