"""``mmtune <verb>``: one handler per verb.

* ``mmtune run <method> [key=value ...] [--json]`` — one trial, in-process (no Ray cluster), with a
  live per-epoch table and a final summary. Overrides use the spec's dotted keys
  (``train.epochs=3``, ``dataset.dominance=4``, ``model.fusion=sum``, ``seed=1``) and bare method
  hyperparameters (``alpha=0.8``). ``--json``: the last stdout line is one JSON object of the final
  metrics.
* ``mmtune methods [NAME]`` — every registered method (or one, or a composition) with its hyperparameters,
  defaults (as YAML) and valid ranges.
* ``mmtune validate SPEC`` — check a sweep spec; every problem with its YAML path and line; exit 2.
* ``mmtune sweep SPEC [key=value ...] [--storage DIR|URI] [--name NAME] [--address auto] [--max-concurrent N]
  [--smoke-test]`` — apply the overrides (``train.epochs=5 seeds=[0,1] alpha=0.5``), validate, then run the sweep with Ray Tune; live progress; Parquet tables under
  ``<storage>/<name>``. Exit 0 when every trial finished (or was stopped early by ASHA), 1 when some
  trial ended in ERROR (the others still ran), 2 for an invalid spec (nothing started or written).
  ``--plan [--plan-margin M] [--json]`` runs nothing: a one-batch probe per configuration measures the per-trial
  memory and step time, and says how many trials fit per GPU and the ``resources.gpu`` to write (:mod:`mmtune.sweep.plan`).
* ``mmtune example [NAME [DEST]]`` — list the shipped specs (``search_spaces/``, inside the installed package
  too), or copy one out to edit. ``mmtune sweep``/``validate`` take a shipped spec by name from any folder.
* ``mmtune resume DIR [--retry-errored] [--trust-pickles]`` — continue an interrupted sweep from its checkpoints
  (its pickles must carry your signing key's signatures: README, "Sharing sweep folders").
* ``mmtune ls [STORAGE]`` — the sweeps under a storage path (default ``runs``), with status counts and progress.
* ``mmtune report SWEEP [--out reports/<name>.md] [--metric val_acc] [--latex] [--paper-protocol]
  [--baseline LABEL] [--figures png,pdf,svg]`` — markdown ablation tables (mean ± std (n) over seeds,
  paired significance vs the baseline) and plots, built from the stored tables only.

Bad input exits 2 with a message naming the key, the rule and the fix; never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Self

import yaml

from mmtune import __version__
from mmtune.errors import ConfigError, Problem, did_you_mean, shorten

EXIT_USAGE = 2
SECTIONS = ("dataset", "model", "train", "params")


def parse_value(text: str) -> Any:
    """YAML scalar/list syntax for override values (``3``, ``0.5``, ``true``, ``null``, ``[a, b]``).

    Read under a spec file's bounds (depth, aliases, plain values only); anything else stays the text
    it is, which the key's own type check then names.
    """
    from mmtune.sweep.spec import load_yaml_value

    try:
        value = load_yaml_value(text, where="override") if text.strip() else ""
    except (yaml.YAMLError, ConfigError):
        return text
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string; users mean the number.
            return float(value) if value.lower() not in ("nan", "inf", "-inf", ".nan") else value
        except ValueError:
            return value
    return value


def apply_overrides(config: dict[str, Any], overrides: Sequence[str], *,
                    top_level: Sequence[str] = ("seed",)) -> tuple[dict[str, Any], list[Problem]]:
    """``["train.lr=0.1", "alpha=0.8", "seed=1"]`` → nested config (bare keys are method params).

    ``top_level``: the bare keys that are not method parameters (``seed`` for a run; ``seeds``,
    ``name`` … for a sweep spec). Returns the config and the syntax problems found, so callers can
    report them together with the config's own problems in one pass.
    """
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(Problem(item, "overrides are key=value, e.g. train.epochs=3 or alpha=0.8."))
            continue
        value = parse_value(raw)
        section, dot, rest = key.partition(".")
        if key == "method":
            problems.append(Problem(key, "the method is the command's first argument (`mmtune run ogm …`), not an "
                                         "override; `method=` would silently replace it."))
        elif key in top_level:
            config[key] = value
        elif dot and rest and section in str(config.get("method", "")).split("+") and "+" in str(config.get("method", "")):
            _set(config, ["params", key], value, key, problems)  # a composed method's own name: opm.lam=0.5
        elif dot and section in SECTIONS and rest:
            _set(config, [section, *rest.split(".")], value, key, problems)
        elif dot:
            problems.append(
                Problem(key, f"unknown section '{section}'. Dotted keys start with one of: {', '.join(SECTIONS)}.")
            )
        else:
            _set(config, ["params", key], value, key, problems)
    return config, problems


def _set(config: dict[str, Any], path: list[str], value: Any, key: str, problems: list[Problem]) -> None:
    """``config[path[0]]…[path[-1]] = value``, copying each mapping on the way (a spec's data may share
    one mapping between places through a YAML alias); a problem if the way passes a non-mapping."""
    node = config
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is not None and not isinstance(child, Mapping):
            where = ".".join(path[:depth + 1])
            problems.append(Problem(key, f"cannot be set: {where} is {type(child).__name__} {shorten(child, 40)}, not a mapping."))
            return
        node[part] = child = dict(child or {})
        node = child
    node[path[-1]] = value


def _section_keys() -> list[str]:
    """Every dotted key of the non-method sections, for did-you-mean on a bare key."""
    import dataclasses

    from mmtune.data import DATASETS
    from mmtune.engine.trial import TrainConfig
    from mmtune.models import ModelConfig

    keys = ["seed"]
    for section, cls in [("train", TrainConfig), ("model", ModelConfig), *(("dataset", c) for c, _ in DATASETS.values())]:
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    return sorted(set(keys))


def validate_run_config(config: dict[str, Any], syntax: list[Problem]):
    """Parse a run config; raise one ConfigError with the syntax and config problems together."""
    from mmtune.engine.trial import memory_of_machine, parse_trial_config, preflight

    try:
        spec = parse_trial_config(config)
    except ConfigError as err:
        raise ConfigError([*syntax, *prefer_section_keys(err.problems, f"method '{config.get('method')}'")]) from None
    problems = [*syntax, *preflight(spec, memory=memory_of_machine(available=True))]  # what building it would refuse
    if problems:
        raise ConfigError(problems)
    return spec


def prefer_section_keys(problems: Sequence[Problem], owner: str, *, keep_path: bool = False) -> list[Problem]:
    """An unknown bare key that is the last part of a section key (``epochs`` → ``train.epochs``) gets
    that key as its suggestion, ahead of a look-alike hyperparameter (``end_epoch``)."""
    out = []
    keys = _section_keys()
    for p in problems:
        leaf = p.path.removeprefix("params.")
        unknown = "unknown key" in p.message or "is not a hyperparameter" in p.message
        if not (p.path.startswith("params.") and unknown and "." not in leaf):
            out.append(p)
            continue
        valid = p.message.split("Valid keys: ", 1)[-1] if "Valid keys: " in p.message else ""
        exact = [k for k in keys if k.split(".")[-1] == leaf]
        if exact:
            hint = f" Did you mean '{exact[0]}'?"
        elif "Did you mean" in p.message:
            hint = " Did you mean" + p.message.split("Did you mean", 1)[1].split("?", 1)[0] + "?"
        else:
            close = did_you_mean(leaf, [k.split(".")[-1] for k in keys])
            hint = f" Did you mean '{next(k for k in keys if k.split('.')[-1] == close.split(chr(39))[1])}'?" if close else ""
        out.append(Problem(p.path if keep_path else leaf,
                           f"is not a hyperparameter of {owner}.{hint}" + (f" Its hyperparameters: {valid}" if valid else "")))
    return out


def _console(stderr: bool):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1e3 else f"{value:.3g}"
    return str(value)


_SHORT = {"epoch": "ep", "train_loss": "loss", "val_acc": "val", "test_acc": "test", "best_val_acc": "best", "epoch_s": "s"}


def _short(key: str) -> str:
    """Compact column headers so the live table fits an 80-column terminal."""
    key = _SHORT.get(key, key)
    return key.replace("val_acc/", "val/").replace("val_probe/", "probe/").replace("imbalance/", "ρ/").replace("trace/", "")


class _EpochTable:
    """The per-epoch table of ``mmtune run``: a live table when it fits the terminal, else plain lines.

    Rich squeezes a table wider than the console into ellipses ("1…"), and a console that is not a
    terminal (a pipe, a log file, CI) is 80 columns wide and shows a live table only when it stops.
    So the table goes live only on a terminal wide enough for all its columns; otherwise every
    epoch is printed as one aligned line as soon as it ends (``soft_wrap``: never cut), and the
    header is printed again when a method's traces add columns. Columns are fixed after the first
    epoch, when the method's ``trace/*`` keys are known; trace keys that appear later are added then.
    """

    def __init__(self, console: Any, title: str, columns: list[str]):
        self.console, self.title, self.columns = console, title, list(columns)
        self.table: Any = None
        self.live: Any = None
        self.widths: list[int] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def waiting(self, epoch: int, epochs: int) -> Any:
        """A spinner while the first epoch runs on a terminal (nothing else is on screen yet)."""
        if epoch == 1 and self.console.is_terminal:
            return self.console.status(f"epoch 1 of {epochs}…")
        return contextlib.nullcontext()

    def add(self, metrics: Mapping[str, Any]) -> None:
        new = [k for k in metrics if k.startswith("trace/") and k not in self.columns]
        first = not self.widths
        if new or first:
            self.columns += new
            self._layout(first, new)
        row = [_fmt(metrics.get(c, "")) for c in self.columns]
        if self.live is not None:
            self.table.add_row(*row)
        else:
            self._line(row)

    def _layout(self, first: bool, new: list[str]) -> None:
        headers = [_short(c) for c in self.columns]
        self.widths = [max(len(h), 6) for h in headers]
        if first and self.console.is_terminal and sum(w + 1 for w in self.widths) <= self.console.width:
            from rich import box
            from rich.live import Live
            from rich.table import Table

            self.table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, title=self.title)
            for h in headers:
                self.table.add_column(h, justify="right")
            self.live = Live(self.table, console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
            return
        if self.live is not None:
            for c in new:
                self.table.add_column(_short(c), justify="right")
            return
        if first:
            self.console.print(self.title, soft_wrap=True)
        self._line(headers)

    def _line(self, cells: list[str]) -> None:
        self.console.print(" ".join(c.rjust(w) for c, w in zip(cells, self.widths)), soft_wrap=True, markup=False)


def cmd_run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from mmtune.data.synthetic import SyntheticConfig, bayes_metrics
    from mmtune.engine.threads import auto_threads, configure_threads
    from mmtune.engine.trial import Trial

    config, syntax = apply_overrides({"method": args.method}, args.overrides)
    spec = validate_run_config(config, syntax)
    console = _console(stderr=args.json)
    threads = configure_threads(auto_threads())
    trial = Trial(spec)
    mods = trial.modalities
    title = f"mmtune run {spec.method} · {spec.dataset.name} · {spec.model.backbone}/{spec.model.fusion} · seed {spec.seed}"
    columns = ["epoch", "train_loss", "val_acc", *(f"val_acc/{m}" for m in mods)]
    columns += [f"val_probe/{m}" for m in mods] if spec.train.probe else []
    columns += [f"imbalance/{m}" for m in mods if len(mods) > 1] + ["test_acc", "best_val_acc", "epoch_s"]
    epochs = _EpochTable(console, title, columns)
    metrics: dict[str, float] = {}
    start = time.perf_counter()
    with epochs:
        for epoch in range(1, spec.train.epochs + 1):
            with epochs.waiting(epoch, spec.train.epochs):
                metrics = trial.step()
            epochs.add(metrics)
    total = time.perf_counter() - start
    limits = bayes_metrics(spec.dataset) if isinstance(spec.dataset, SyntheticConfig) else {}
    console.print()
    summary = Table(title="summary", caption="model selected on validation;\ntest at the best-validation epoch")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    rows = [
        ("best_val_acc", metrics["best_val_acc"]),
        ("best_epoch", int(metrics["best_epoch"])),
        ("test_acc_at_best_val", metrics["test_acc_at_best_val"]),
        ("test_macro_f1_at_best_val", metrics["test_macro_f1_at_best_val"]),
        ("test_map_at_best_val", metrics["test_map_at_best_val"]),
        *((f"final val_acc/{m}", metrics[f"val_acc/{m}"]) for m in mods),
        *((f"final val_probe/{m}", metrics[f"val_probe/{m}"]) for m in mods if spec.train.probe),
        *((f"final imbalance/{m}", metrics[f"imbalance/{m}"]) for m in mods if len(mods) > 1),
        *(((f"Bayes limit ({'joint' if k == 'bayes_acc' else k.split('/')[1] + ' alone'})", v) for k, v in limits.items())),
        ("wall time (s)", total),
        ("device", f"{trial.device} ({threads} threads)" if trial.device.type == "cpu" else str(trial.device)),
        ("ran with", _ran_with(trial.resolved)),
    ]
    for name, value in rows:
        summary.add_row(name, _fmt(value))
    console.print(summary)
    if args.json:
        print(json.dumps({**metrics, **limits, "wall_s": total, "threads": threads}), flush=True)
    return 0


def _ran_with(resolved: dict[str, Any]) -> str:
    """The trial's GPU-path settings with every ``auto`` resolved (precision, channels_last, compile, resident)."""
    parts = [resolved["precision"]]
    if resolved["channels_last"]:
        parts.append("channels_last")
    if resolved["compile"]:
        parts.append(f"compile={resolved['compile']}")
    if resolved.get("resident") is not None:
        parts.append("cache on the device" if resolved["resident"] else "cache read by the loader")
    return ", ".join(parts)


def yaml_value(value: Any) -> str:
    """A default as a user writes it in a spec or an override: null, true, 0.5, [0.3, 0.7], {audio: 0.2}."""
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def cmd_methods(args: argparse.Namespace) -> int:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from mmtune.config import describe_fields, field_defaults
    from mmtune.engine.registry import get_method
    from mmtune.trainables import METHODS

    console = _console(stderr=False)
    names = [args.name] if args.name else sorted(METHODS)
    for name in names:
        cls = get_method(name)  # a composition too; an unknown name: ConfigError with a did-you-mean
        title = f"[bold]{escape(name)}[/bold] — {escape(cls.paper)}"
        table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, title=title, title_justify="left")
        for col in ("hyperparameter", "default", "valid", "meaning"):
            table.add_column(col, overflow="fold")
        defaults = field_defaults(cls.Config)
        for row in describe_fields(cls.Config):
            default = yaml_value(defaults[row["name"]])
            table.add_row(*(escape(text) for text in (row["name"], default, row["valid"], row["doc"])))
        console.print(table)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from mmtune.sweep.spec import load_spec

    spec = load_spec(args.spec)
    n = spec.num_trials()
    what = f"{n // len(spec.seeds)} configuration(s) × {len(spec.seeds)} seed(s)"
    if spec.algorithm == "optuna":
        what = f"Optuna, {spec.num_samples} configurations × {len(spec.seeds)} seed(s)"
    axes = ", ".join(spec.axes()) or "none"
    print(f"{args.spec}: valid — sweep '{spec.name}', {n} trials ({what}), {spec.epochs} epochs each; varies: {axes}.")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Decode a real dataset once into its cache (spectrograms, resized frames, token ids) so that every
    later run and sweep trial reads arrays instead of media files."""
    from mmtune.data import dataset_config
    from mmtune.data.real import REAL_DATASETS, cache_changes, cache_path, prepare

    console = _console(stderr=False)
    data: dict[str, Any] = {"name": args.dataset, "root": args.root}
    problems = []
    for item in args.overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().removeprefix("dataset.")
        if not sep or not key:
            problems.append(Problem(item, "overrides are key=value dataset fields, e.g. spectrogram=code image_size=112."))
            continue
        data[key] = parse_value(raw)
    if problems:
        raise ConfigError(problems)
    if args.dataset not in REAL_DATASETS:
        known = ", ".join(sorted(REAL_DATASETS))
        raise ConfigError(Problem("dataset", f"'{args.dataset}' is not a real dataset that needs preparing. Real datasets: {known}."))
    cfg = dataset_config(data)
    folder = cache_path(cfg)
    if not args.force and cache_changes(cfg, folder) == []:  # a cache whose media files changed is prepared again
        console.print(f"{cfg.name}: already prepared in {folder} (use --force to rebuild)")
        return 0
    start = time.perf_counter()
    folder = prepare(cfg, workers=args.workers, force=args.force, progress=console.print)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    console.print(f"{cfg.name}: {size / 2**20:.1f} MiB in {folder} ({time.perf_counter() - start:.1f} s). "
                  f"Runs with the same dataset settings reuse it.")
    return 0


def cmd_example(args: argparse.Namespace) -> int:
    """List the shipped sweep specs, or copy one out (to DEST, a file or a folder [./NAME.yaml]) to edit."""
    import shutil
    from pathlib import Path

    from mmtune.sweep.spec import shipped_specs

    specs = shipped_specs()
    if args.name is None:
        width = max((len(n) for n in specs), default=0)
        for name, path in specs.items():
            try:
                description = (yaml.safe_load(path.read_text()) or {}).get("description") or ""
            except (OSError, yaml.YAMLError, AttributeError):
                description = ""
            print(f"{name:<{width}}  {' '.join(str(description).split())}".rstrip())
        print(f"copy one out: mmtune example NAME [DEST]   run one as it is: mmtune sweep NAME  ({len(specs)} specs)")
        return 0
    name = args.name.removesuffix(".yaml")
    if name not in specs:
        raise ConfigError(Problem("NAME", f"no shipped spec '{args.name}'.{did_you_mean(name, specs)} "
                                          f"Shipped specs: {', '.join(specs)}."))
    dest = Path(args.dest or ".")
    if dest.is_dir() or str(args.dest).endswith(("/", os.sep)):
        dest = dest / f"{name}.yaml"
    if dest.exists() and not args.force:
        raise ConfigError(Problem(str(dest), "already exists; nothing was written. Pass another DEST, or --force to replace it."))
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(specs[name], dest)
    print(f"{dest}: copied from the shipped spec '{name}'. Edit it, then: mmtune validate {dest} && mmtune sweep {dest}")
    return 0


def _sweep_exit(outcome, console) -> int:
    from rich.markup import escape

    counts = ", ".join(f"{k} {v}" for k, v in sorted(outcome.counts.items())) or "no trials recorded"
    path = escape(str(outcome.path))
    if outcome.nothing_to_do:
        console.print(f"nothing to resume: every trial of {path} has ended ({counts}).", soft_wrap=True)
        console.print(f"next: mmtune report {path}  (errored trials: mmtune resume {path} --retry-errored)", soft_wrap=True)
        return 0
    console.print(f"sweep folder: {path}  ({counts}; {outcome.wall_s:.1f} s)", soft_wrap=True)
    if outcome.interrupted:
        cut = outcome.counts.get("INTERRUPTED", 0)
        console.print(f"[yellow]interrupted: {cut} trial(s) did not finish. Continue the sweep with: "
                      f"mmtune resume {path}[/yellow]", soft_wrap=True)
        return 130
    unfinished = getattr(outcome, "unfinished", 0)
    if unfinished:  # never a success code with planned trials missing
        console.print(f"[red]unfinished: {unfinished} of the {outcome.planned} planned trials have not ended. "
                      f"Continue the sweep with: mmtune resume {path}[/red]", soft_wrap=True)
        return 1
    if getattr(outcome, "storage_errors", 0):
        console.print(f"[red]{outcome.storage_errors} trial(s) failed because the storage was full or read-only. Free "
                      f"some space, then run them again with: mmtune resume {path}[/red]", soft_wrap=True)
        return 1
    console.print(f"next: mmtune report {path}", soft_wrap=True)
    return 0 if outcome.ok else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.plan or args.json or args.plan_margin is not None:  # plans without Ray (not even imported)
        if not args.plan:
            raise ConfigError(Problem("--json" if args.json else "--plan-margin", "only goes with --plan."))
        from mmtune.sweep.plan import DEFAULT_MARGIN, run_plan
        from mmtune.sweep.spec import smoke_spec

        spec = load_spec_with_overrides(args.spec, args.overrides)
        margin = DEFAULT_MARGIN if args.plan_margin is None else args.plan_margin
        return run_plan(smoke_spec(spec) if args.smoke_test else spec, margin=margin, as_json=args.json,
                        max_concurrent=args.max_concurrent)
    from mmtune.sweep.tuner import check_sweep_name, run_sweep

    if args.name is not None:
        check_sweep_name(args.name)  # a folder under --storage, never a path out of it
    spec = load_spec_with_overrides(args.spec, args.overrides)  # every problem, before Ray starts
    check_address(args.address or os.environ.get("RAY_ADDRESS"))
    console = _console(stderr=False)
    outcome = run_sweep(spec, storage=args.storage, name=args.name, address=args.address,
                        max_concurrent=args.max_concurrent, smoke_test=args.smoke_test, console=console,
                        command="mmtune " + " ".join(sys.argv[1:]), overrides=list(args.overrides))
    return _sweep_exit(outcome, console)


# Bare override keys of a sweep that are spec keys, not method hyperparameters.
SPEC_TOP_LEVEL = ("seeds", "name", "description", "max_concurrent", "max_failures", "checkpoint_every_s", "logging")


def load_spec_with_overrides(path: str, overrides: Sequence[str]):
    """``mmtune sweep SPEC key=value …``: the spec file with the overrides applied to its data, then
    validated as a whole (the same dotted keys as ``mmtune run``; bare keys are method hyperparameters)."""
    from mmtune.sweep.spec import load_spec, load_spec_data, parse_spec_data

    if not overrides:
        return load_spec(path)
    data, node = load_spec_data(path)
    if not isinstance(data, Mapping):
        return parse_spec_data(data, node)  # not a spec at all: that error, without the overrides
    data, syntax = apply_overrides(dict(data), overrides, top_level=SPEC_TOP_LEVEL)
    try:
        spec = parse_spec_data(data, node)
    except ConfigError as err:
        methods = data.get("method")
        owner = f"method '{methods}'" if isinstance(methods, str) else "every listed method"
        raise ConfigError([*syntax, *prefer_section_keys(err.problems, owner, keep_path=True)]) from None
    if syntax:
        raise ConfigError(syntax)
    return spec


def check_address(address: str | None, *, timeout_s: float = 5.0) -> None:
    """Fail fast, with the fix, when ``--address`` names no reachable Ray cluster (Ray itself retries
    for minutes, printing "Failed to connect to GCS" lines). ``auto`` and ``ray://`` are left to Ray."""
    import socket

    if not address or address == "auto" or address.startswith("ray://") or address == "local":
        return
    host, sep, port = address.rpartition(":")
    fix = ("Start a cluster with `ray start --head --port=6379` on the head node (and `ray start --address=HEAD:6379` "
           "on each worker), then pass --address HEAD:6379; or leave --address (and RAY_ADDRESS) unset to run on this machine.")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(Problem("--address", f"{address!r} is not HOST:PORT (or auto, or ray://HOST:PORT). {fix}"))
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        why = "timed out" if isinstance(err, TimeoutError) else (err.strerror or type(err).__name__).lower()
        raise ConfigError(Problem("--address", f"no Ray cluster answers at {address} ({why}). {fix}")) from None


def cmd_resume(args: argparse.Namespace) -> int:
    from mmtune.store.reader import finished_counts
    from mmtune.sweep.driver import clean_up_dead_driver

    console = _console(stderr=False)
    counts = finished_counts(args.path, errored_count_as_ended=not args.retry_errored)
    if counts is not None:  # answered from the tables alone: no Ray, no torch, well under a second
        from types import SimpleNamespace

        with contextlib.suppress(ConfigError):  # its driver still runs (printing its summary): nothing to end
            clean_up_dead_driver(args.path)  # a driver killed after its last trial left Ray running too

        return _sweep_exit(SimpleNamespace(path=args.path, counts=counts, nothing_to_do=True), console)
    from mmtune.sweep.tuner import resume_sweep

    check_address(args.address or os.environ.get("RAY_ADDRESS"))
    outcome = resume_sweep(args.path, retry_errored=args.retry_errored, address=args.address, console=console,
                           trust_pickles=args.trust_pickles)
    return _sweep_exit(outcome, console)


def cmd_ls(args: argparse.Namespace) -> int:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from mmtune.store.reader import list_sweeps

    storage = args.storage_dir or args.storage
    console = _console(stderr=False)
    try:
        sweeps = list_sweeps(storage)
    except FileNotFoundError:
        raise ConfigError(Problem(storage, (
            "no such storage folder. Pass the folder a sweep wrote to (`mmtune ls <storage>`; `mmtune sweep` "
            "writes to runs/ by default), or start one: mmtune sweep search_spaces/quickstart.yaml"))) from None
    except OSError as err:  # a folder that cannot be listed (permissions, a dead mount)
        from mmtune.errors import StorageError
        from mmtune.store.faults import first_line

        raise StorageError(Problem(storage, f"cannot be listed ({first_line(err)}).")) from None
    if not sweeps:
        console.print(f"no sweeps under {escape(storage)}. Start one: mmtune sweep search_spaces/quickstart.yaml")
        return 0

    def cells(sw) -> list[str]:
        if sw.problem:
            return [sw.name, "?", f"DAMAGED: {sw.problem}", "-", str(sw.modified or "-")]
        status = ", ".join(f"{k} {v}" for k, v in sorted(sw.counts.items()))
        return [sw.name, str(sum(sw.counts.values())), status, f"{sw.epochs_done}/{sw.epochs_planned}", str(sw.modified)]

    if not console.is_terminal:  # pipes and logs: every field whole, one line per sweep, tab-separated
        print("\t".join(("sweep", "trials", "status", "epochs", "modified")))
        for sw in sweeps:
            print("\t".join(cells(sw)))
        return 0
    table = Table(box=box.SIMPLE_HEAD, title=f"sweeps under {escape(storage)}")
    for col in ("sweep", "trials", "status", "epochs", "modified"):
        table.add_column(col, overflow="fold")
    for sw in sweeps:
        table.add_row(*(escape(c) for c in cells(sw)))
    console.print(table)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from mmtune.errors import StorageError
    from mmtune.report import write_report
    from mmtune.store.faults import first_line, free_space, is_storage_error

    try:
        path = write_report(args.sweep, out=args.out, metric=args.metric, latex=args.latex,
                            paper_protocol=args.paper_protocol, baseline=args.baseline, storage=args.storage,
                            force=args.force, figures=args.figures)
    except (OSError, pa.ArrowException) as err:  # a full or read-only --out folder, a table damaged past the checks
        where = str(getattr(err, "filename", None) or args.out or args.sweep)
        if is_storage_error(err) or isinstance(err, PermissionError):
            space = free_space(where)
            raise StorageError(Problem(where, f"cannot be written ({first_line(err)}{'; ' + space if space else ''}). "
                                       "Free some space or pass another --out.")) from None
        raise StorageError(Problem(args.sweep, f"the report could not be made from its tables ({first_line(err)}). If a "
                                   f"table is damaged, `mmtune resume {args.sweep}` rebuilds it.")) from None
    print(f"report: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmtune", description="Ablation sweeps for balanced multimodal learning.")
    parser.add_argument("--version", action="version", version=f"mmtune {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")

    run = verbs.add_parser("run", help="run one trial in-process", description=cmd_run.__doc__)
    run.add_argument("method", help="a registered method (see `mmtune methods`)")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="train.epochs=3, model.fusion=sum, alpha=0.8 …")
    run.add_argument("--json", action="store_true", help="print the final metrics as one JSON line on stdout")
    run.set_defaults(handler=cmd_run)

    methods = verbs.add_parser("methods", help="list methods with their hyperparameters")
    methods.add_argument("name", nargs="?", help="one method or composition (opm+amss) [all registered methods]")
    methods.set_defaults(handler=cmd_methods)

    validate = verbs.add_parser("validate", help="check a sweep spec, list every problem")
    validate.add_argument("spec", help="a YAML sweep spec, or a shipped spec's name (quickstart; `mmtune example` lists them)")
    validate.set_defaults(handler=cmd_validate)

    prep = verbs.add_parser("prepare", help="decode a real dataset once into its cache", description=cmd_prepare.__doc__)
    prep.add_argument("dataset", help="cremad | kinetics_sounds | ucf101 | mosi | mosei | twitter15 | …")
    prep.add_argument("--root", required=True, help="the dataset folder, in its reference layout")
    prep.add_argument("overrides", nargs="*", metavar="key=value", help="dataset settings, e.g. spectrogram=code")
    prep.add_argument("--workers", type=int, help="decoding threads [all cores]")
    prep.add_argument("--force", action="store_true", help="rebuild even if a cache for these settings exists")
    prep.set_defaults(handler=cmd_prepare)

    from mmtune.sweep.spec import DEFAULT_STORAGE

    sweep = verbs.add_parser("sweep", help="run a sweep spec with Ray Tune")
    sweep.add_argument("spec", help="a YAML sweep spec, or a shipped spec's name (quickstart; `mmtune example` lists them)")
    sweep.add_argument("overrides", nargs="*", metavar="key=value",
                       help="change the spec without copying it: train.epochs=5 seeds=[0,1] alpha=0.5 (recorded in spec.json)")
    sweep.add_argument("--storage", default=DEFAULT_STORAGE, help="results folder or URI (s3://…, gs://…) [runs]")
    sweep.add_argument("--name", help="the sweep's folder name (default: the spec's name)")
    sweep.add_argument("--address", help="Ray cluster address ('auto' = the running cluster; default: RAY_ADDRESS or local)")
    sweep.add_argument("--max-concurrent", type=int, help="cap on trials running at once")
    sweep.add_argument("--smoke-test", action="store_true", help="≤2 epochs, small data, one seed: check a spec in seconds")
    sweep.add_argument("--plan", action="store_true", help="run nothing: probe one batch per configuration, print the "
                                                           "per-trial memory, trials per GPU and the resources.gpu to write")
    sweep.add_argument("--plan-margin", type=float, metavar="M", help="share of free memory --plan packs into, in (0, 1] [0.9]")
    sweep.add_argument("--json", action="store_true", help="with --plan: print the plan as one JSON object")
    sweep.set_defaults(handler=cmd_sweep)

    example = verbs.add_parser("example", help="list the shipped sweep specs, or copy one out to edit",
                               description=cmd_example.__doc__)
    example.add_argument("name", nargs="?", help="a shipped spec (quickstart, amss_tau …) [list them]")
    example.add_argument("dest", nargs="?", help="file or folder to copy it to [./NAME.yaml]")
    example.add_argument("--force", action="store_true", help="replace DEST if it exists")
    example.set_defaults(handler=cmd_example)

    resume = verbs.add_parser("resume", help="continue an interrupted sweep")
    resume.add_argument("path", help="the sweep folder (<storage>/<name>)")
    resume.add_argument("--retry-errored", action="store_true", help="also rerun errored trials from their last checkpoint")
    resume.add_argument("--address", help="Ray cluster address")
    resume.add_argument("--trust-pickles", action="store_true",
                        help="resume a folder whose pickles are not signed with your key (another user's, or from "
                             "before signing): unpickling them can run code, so only for a folder you trust")
    resume.set_defaults(handler=cmd_resume)

    ls = verbs.add_parser("ls", help="list sweeps with status counts")
    ls.add_argument("storage_dir", nargs="?", metavar="STORAGE", help="results folder or URI [runs]")
    ls.add_argument("--storage", default=DEFAULT_STORAGE, help="the same, as an option")
    ls.set_defaults(handler=cmd_ls)

    report = verbs.add_parser("report", help="markdown ablation tables and plots from a sweep's tables")
    report.add_argument("sweep", help="a sweep folder (<storage>/<name>) or a sweep name under --storage")
    report.add_argument("--out", help="markdown file to write [reports/<name>.md]")
    report.add_argument("--metric", default="val_acc", help="validation metric that selects the best epoch [val_acc]")
    report.add_argument("--latex", action="store_true",
                        help="also write every table as paper-style booktabs LaTeX (<out>.tex)")
    report.add_argument("--figures", default="png", metavar="FORMATS",
                        help="comma-separated figure formats, any of png,pdf,svg (pdf/svg: vector, for papers) [png]")
    report.add_argument("--paper-protocol", action="store_true",
                        help="add the optimistic test-selected column (max over epochs of test acc), labelled")
    report.add_argument("--baseline", help="variant label the others are compared with [joint]")
    report.add_argument("--storage", default=DEFAULT_STORAGE, help="where to look up a bare sweep name [runs]")
    report.add_argument("--force", action="store_true",
                        help="replace --out even if it is not this sweep's own report (a committed one, another sweep's)")
    report.set_defaults(handler=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (`prepare cremad --root D spectrogram=code`); argparse
    # only collects positionals given before the first option, so gather the rest here.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.handler(args)
    except ConfigError as err:  # StorageError too: "storage problem", with the path and the way back
        print(f"mmtune {args.verb}: {err.headline}\n{err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
