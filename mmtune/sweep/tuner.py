"""Run a validated sweep spec with Ray Tune (DESIGN §2, §5, §6).

Design:

* **Grid sweeps** run a precomputed trial list (:func:`mmtune.sweep.spec.expand_grid`: method entries ×
  grid axes × seeds) through :class:`TrialListSearcher`, which hands out each config exactly once, in
  order, and is checkpointed with the experiment — so a resumed sweep neither repeats nor skips one.
  Each trial's ``trial.config`` is a plain trial config (``method, label, seed, dataset, model,
  train, params``), the same dict ``mmtune run`` builds, so any trial can be replayed alone.
* **Optuna sweeps** (:class:`SeededOptunaSearcher`): Ray's ``OptunaSearch`` (TPE) samples a
  configuration; mmtune runs it once per seed and tells Optuna the **seed mean** of the metric only when
  every seed has finished. If any seed of a configuration was stopped early by ASHA the configuration
  is told as *pruned* (Optuna ranks pruned trials below finished ones, instead of taking the truncated
  score as a finished one's), and as *failed* if any seed errored. The value told is the metric of
  each seed's last reported epoch (use ``metric: best_val_acc`` to optimise the best epoch).
* **ASHA** (:class:`mmtune.sweep.scheduler.ConfigASHA`) on ``training_iteration`` (= epoch),
  ``max_t = train.epochs``, the sweep's metric and mode, deciding per **configuration**: a seed that
  reaches a rung is paused until all seeds of its configuration have, and the seed mean is judged, so a
  configuration's seeds continue or stop together (after the same epoch). Its state travels in the
  experiment snapshot through a callback (Tune does not snapshot schedulers); the concurrency cap is at
  least the seed count (paused trials count as live).
* One actor per concurrent trial is reused across trials (``reuse_actors``; the Trainable's
  ``reset_config`` rebuilds in place), Ray is started once per sweep, its console output is quieted,
  failed trials are retried ``max_failures`` times from their last checkpoint (2 kept; a trial
  checkpoints every ``checkpoint_every_s`` seconds and at its end, see ``BalancedTrainable``). A
  trial that Tune errors with retries left (a race when a node dies, :mod:`mmtune.sweep.retry`) is
  resumed from its last checkpoint once the fit returns, if it is the only kind of error.
* Concurrency: without ``max_concurrent`` the cap is the number of trials the cluster fits at once
  (CPUs / ``resources.cpu``, GPUs / ``resources.gpu``). Uncapped, Tune keeps a pending trial for a
  custom searcher, starts a fresh actor for it and kills that actor when a running one frees up, so
  short trials ran nearly one at a time (BENCHMARKS.md, sweep efficiency).
* Results: :class:`mmtune.store.writer.ResultsWriter` (Parquet tables under the sweep folder) and
  :class:`mmtune.sweep.progress.SweepProgress` (rich live view, plain lines off a terminal).

Storage: ``--storage`` is a local folder (default ``runs/``) or a URI that pyarrow understands
(``s3://bucket/path``, ``gs://…``) — on a cluster it must be storage every node can reach.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import pickle
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from mmtune import __version__
from mmtune.errors import ConfigError, Problem
from mmtune.store.schema import SPEC_FILE  # the validated spec as read (plus how it was run)
from mmtune.sweep.spec import DEFAULT_STORAGE, SweepSpec, expand_grid, optuna_base, parse_spec, smoke_spec

__all__ = ["TrialListSearcher", "SeededOptunaSearcher", "SweepOutcome", "run_sweep", "resume_sweep", "sweep_path", "DEFAULT_STORAGE"]

log = logging.getLogger(__name__)


def _searcher_base():
    from ray.tune.search import Searcher

    return Searcher


# --------------------------------------------------------------------------------------- searchers
class TrialListSearcher(_searcher_base()):
    """Hands out a fixed list of trial configs, each exactly once, then FINISHED (grid sweeps)."""

    def __init__(self, configs: list[dict[str, Any]], *, metric: str | None = None, mode: str | None = None):
        super().__init__(metric=metric, mode=mode)
        self.configs = [copy.deepcopy(c) for c in configs]
        self.next_index = 0
        self.assigned: dict[str, int] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if trial_id in self.assigned:
            return copy.deepcopy(self.configs[self.assigned[trial_id]])
        if self.next_index >= len(self.configs):
            return self.FINISHED
        self.assigned[trial_id] = self.next_index
        self.next_index += 1
        return copy.deepcopy(self.configs[self.assigned[trial_id]])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        return None

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))

    def get_state(self) -> dict[str, Any]:
        return {"configs": self.configs, "next_index": self.next_index, "assigned": self.assigned}

    def set_state(self, state: dict[str, Any]) -> None:
        self.configs, self.next_index, self.assigned = state["configs"], state["next_index"], state["assigned"]


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class _Sample:
    params: dict[str, Any]  # what Optuna sampled (nested)
    seeds_left: list[int]
    values: dict[int, float | None]
    stopped_early: bool = False
    failed: bool = False
    told: str | None = None  # COMPLETE | PRUNED | FAIL once Optuna has been told


class SeededOptunaSearcher(_searcher_base()):
    """Optuna (TPE) over configurations; each configuration runs once per seed (see module docstring)."""

    def __init__(self, *, fixed: dict[str, Any], space: dict[str, Any], seeds: list[int], num_samples: int,
                 metric: str, mode: str, max_epochs: int, sampler_seed: int = 0):
        super().__init__(metric=metric, mode=mode)
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.base = OptunaSearch(space=space, metric=metric, mode=mode, sampler=optuna.samplers.TPESampler(seed=sampler_seed))
        self.fixed, self.seeds, self.num_samples, self.max_epochs = fixed, list(seeds), num_samples, max_epochs
        self.samples: dict[str, _Sample] = {}
        self.trials: dict[str, tuple[str, int]] = {}  # Ray trial id -> (sample id, seed)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # metric, mode and space were fixed at construction

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if trial_id in self.trials:
            sid, seed = self.trials[trial_id]
            return self._config(sid, seed)
        open_samples = [sid for sid, s in self.samples.items() if s.seeds_left]
        if open_samples:
            sid = open_samples[0]
        elif len(self.samples) >= self.num_samples:
            return self.FINISHED
        else:
            sid = f"sample_{len(self.samples):04d}"
            params = self.base.suggest(sid)
            if params is None:
                return None
            self.samples[sid] = _Sample(params=params, seeds_left=list(self.seeds), values={})
        seed = self.samples[sid].seeds_left.pop(0)
        self.trials[trial_id] = (sid, seed)
        return self._config(sid, seed)

    def _config(self, sid: str, seed: int) -> dict[str, Any]:
        return {**_deep_merge(self.fixed, self.samples[sid].params), "seed": seed}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.trials:
            return
        sid, seed = self.trials[trial_id]
        sample = self.samples[sid]
        value = None if (error or not result) else result.get(self.metric)
        epochs = (result or {}).get("training_iteration", 0)
        if not error and not result:
            # Tune stops a paused trial without a result: ConfigASHA stopping the waiting seeds of a
            # configuration it stops at a rung.
            sample.stopped_early = True
        elif error or value is None:
            sample.failed = True
        elif epochs < self.max_epochs:
            sample.stopped_early = True
        sample.values[seed] = value
        if len(sample.values) == len(self.seeds) and sample.told is None:
            self._tell(sid, sample)

    def _tell(self, sid: str, sample: _Sample) -> None:
        if sample.failed:
            self.base.on_trial_complete(sid, None, error=True)
            sample.told = "FAIL"
        elif sample.stopped_early:
            # Ray's OptunaSearch tells a result without the metric as PRUNED: stopped trials never
            # enter the posterior as if they had finished with their truncated scores.
            self.base.on_trial_complete(sid, None, error=False)
            sample.told = "PRUNED"
        else:
            mean = statistics.fmean(v for v in sample.values.values() if v is not None)
            self.base.on_trial_complete(sid, {self.metric: mean}, error=False)
            sample.told = "COMPLETE"

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


# ------------------------------------------------------------------------------------------ running
@dataclass
class SweepOutcome:
    path: str  # the sweep folder (local path or URI)
    counts: dict[str, int]  # trials by status
    wall_s: float
    interrupted: bool = False  # stopped by Ctrl-C / SIGTERM: `mmtune resume` continues it
    nothing_to_do: bool = False  # `mmtune resume` of a sweep whose every trial had ended

    @property
    def ok(self) -> bool:
        return self.counts.get("ERROR", 0) == 0


def sweep_path(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}"


def _filesystem(path: str):
    import pyarrow.fs as pafs

    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _exists(path: str) -> bool:
    import pyarrow.fs as pafs

    fs, p = _filesystem(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def _write_text(path: str, text: str) -> None:
    fs, p = _filesystem(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def _read_text(path: str) -> str:
    fs, p = _filesystem(path)
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def _quiet_ray() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # our Parquet tables replace CSV/JSON/TBX
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "60")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # mmtune catches Ctrl-C itself (to record INTERRUPTED), then triggers Tune's graceful stop.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    for name in ("ray", "ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _init_ray(address: str | None, spec: SweepSpec, console: Any = None) -> bool:
    """Start (or join) Ray once per sweep; returns whether we started it (and so must stop it). Says
    so on ``console`` first: starting Ray takes seconds, with nothing else on screen meanwhile."""
    import ray

    _quiet_ray()
    if ray.is_initialized():
        started = False
    else:
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address is None:
            try:  # what Ray will find on this machine (its own detection: cgroup CPU limits, visible GPUs)
                from ray._private.accelerators import get_accelerator_manager_for_resource
                from ray._private.utils import get_num_cpus

                cpus, gpus = get_num_cpus(), get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()
                message = f"starting Ray ({cpus} CPUs, {gpus} GPUs)…"
            except Exception:  # noqa: BLE001 - private Ray API: only the message depends on it
                message = f"starting Ray ({os.cpu_count() or '?'} CPUs)…"
        else:
            message = f"connecting to the Ray cluster at {address}…"
        if console is not None:
            console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            log.info(message)
        ray.init(address=address, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR, configure_logging=True)
        started = True
    if spec.gpu > 0 and ray.cluster_resources().get("GPU", 0) <= 0:
        if started:
            ray.shutdown()
        raise ConfigError(Problem("resources.gpu", f"asks for {spec.gpu} GPU per trial but the Ray cluster has none; "
                                  "set resources.gpu: 0 or run on a machine/cluster with GPUs."))
    return started


# Config leaves that name files: made absolute on the driver, because Tune runs each trial in its
# own folder, where a relative path (`root: data/CREMA-D`) would point somewhere else.
PATH_LEAVES = ("dataset.root", "dataset.cache_dir", "dataset.tokenizer", "model.weights.*")


def absolute_paths(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every relative path of :data:`PATH_LEAVES` resolved against the current folder."""
    config = copy.deepcopy(config)
    for leaf in PATH_LEAVES:
        section, key = leaf.split(".", 1)
        node = config.get(section)
        if key == "weights.*":
            node = node.get("weights") if isinstance(node, dict) else None
            keys = list(node) if isinstance(node, dict) else []
        else:
            keys = [key]
        for k in keys:
            value = node.get(k) if isinstance(node, dict) else None
            if isinstance(value, str) and value and "://" not in value and not os.path.isabs(os.path.expanduser(value)):
                node[k] = os.path.abspath(value)
    return config


def _searcher(spec: SweepSpec):
    if spec.algorithm == "optuna":
        fixed, space = optuna_base(spec)
        fixed = absolute_paths(fixed)
        return SeededOptunaSearcher(fixed=fixed, space=space, seeds=list(spec.seeds), num_samples=spec.num_samples,
                                    metric=spec.metric, mode=spec.mode, max_epochs=spec.epochs, sampler_seed=spec.search_seed)
    return TrialListSearcher([absolute_paths(c) for c in expand_grid(spec)], metric=spec.metric, mode=spec.mode)


def _scheduler(spec: SweepSpec):
    from ray.tune.schedulers import FIFOScheduler

    from mmtune.sweep.scheduler import ConfigASHA

    if spec.asha is None:
        return FIFOScheduler()
    return ConfigASHA(num_seeds=len(spec.seeds), time_attr="training_iteration", max_t=spec.epochs,
                      grace_period=spec.asha["grace_period"], reduction_factor=spec.asha["reduction_factor"])


def _scheduler_callbacks(scheduler: Any) -> list:
    from mmtune.sweep.scheduler import ConfigASHA

    # Tune snapshots searchers and callbacks with the experiment, not schedulers: without this a
    # resumed sweep would forget ConfigASHA's rung records and decisions.
    return [scheduler.state_callback()] if isinstance(scheduler, ConfigASHA) else []


def _max_concurrent(spec: SweepSpec, max_concurrent: int | None) -> int:
    cap = max_concurrent or spec.max_concurrent or fitting_trials(spec)
    if spec.asha is not None:
        # ConfigASHA pauses a seed at a rung until the other seeds of its configuration get there, and
        # Tune counts paused trials as live. The searchers hand out a configuration's seeds one after
        # another, so with at least one slot per seed some configuration is always complete at its
        # rung when every live trial waits; with fewer, waiting seeds could hold every slot.
        cap = max(cap, len(spec.seeds))
    return cap


def _trainable(spec: SweepSpec, trainable: Any = None) -> Any:
    from ray import tune

    from mmtune.sweep.trainable import BalancedTrainable

    trainable = trainable or BalancedTrainable  # the method comes from each trial's config
    wrapped = tune.with_parameters(trainable, checkpoint_every_s=spec.checkpoint_every_s, cpus=spec.cpu)
    return tune.with_resources(wrapped, {"cpu": spec.cpu, "gpu": spec.gpu})


def fitting_trials(spec: SweepSpec) -> int:
    """How many trials of ``spec`` the Ray cluster runs at once (its CPUs and GPUs over a trial's)."""
    import ray

    resources = ray.cluster_resources()
    fits = []
    if spec.cpu > 0:
        fits.append(int(resources.get("CPU", 0) // spec.cpu))
    if spec.gpu > 0:
        fits.append(int(resources.get("GPU", 0) // spec.gpu))
    return max(1, min(fits)) if fits else max(1, int(resources.get("CPU", 1)))


def _callbacks(spec: SweepSpec, storage: str, name: str, console: Any, live: bool | None) -> list:
    from mmtune.store.writer import ResultsWriter
    from mmtune.sweep.progress import SweepProgress
    from mmtune.sweep.retry import RetryLedger

    # Progress first: the writer's last flush raises if the tables cannot be written, and Tune skips
    # the callbacks after a raising one — the live view must be closed before that.
    return [
        SweepProgress(total_trials=spec.num_trials(), metric=spec.metric, mode=spec.mode, swept=spec.axes(),
                      console=console, live=live),
        ResultsWriter(storage, name),
        RetryLedger(),
    ]


def _counts(path: str) -> dict[str, int]:
    from mmtune.store.reader import read_trials

    try:
        trials = read_trials(path)
    except Exception:  # noqa: BLE001 - no table means no finished trial
        return {}
    counts: dict[str, int] = {}
    for status in trials.column("status").to_pylist():
        counts[status] = counts.get(status, 0) + 1
    return counts


def build_tuner(spec: SweepSpec, *, storage: str, name: str, max_concurrent: int | None = None, console: Any = None,
                live: bool | None = None, trainable: Any = None) -> tuple[Any, Any]:
    """The Ray Tuner of a sweep and its searcher (Ray must be initialised). ``trainable`` overrides
    the default :class:`BalancedTrainable` (tests inject failures this way)."""
    from ray import tune

    searcher = _searcher(spec)
    scheduler = _scheduler(spec)
    tuner = tune.Tuner(
        _trainable(spec, trainable),
        param_space={},
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, metric=spec.metric, mode=spec.mode,
            num_samples=spec.num_trials(),
            max_concurrent_trials=_max_concurrent(spec, max_concurrent),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=_storage_for_ray(storage),
            callbacks=[*_callbacks(spec, storage, name, console, live), *_scheduler_callbacks(scheduler)],
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_frequency=0, checkpoint_at_end=True),
            verbose=0, log_to_file=True,
        ),
    )
    return tuner, searcher


def run_sweep(spec: SweepSpec, *, storage: str = DEFAULT_STORAGE, name: str | None = None, address: str | None = None,
              max_concurrent: int | None = None, smoke_test: bool = False, console: Any = None,
              live: bool | None = None, command: str = "", trainable: Any = None,
              overrides: list[str] | None = None) -> SweepOutcome:
    """Run a validated sweep to the end; every trial's epochs and summary land under ``storage/name``."""
    if smoke_test:
        spec = smoke_spec(spec)
    name = name or spec.name
    path = sweep_path(storage, name)
    if _exists(path):
        raise ConfigError(Problem("--name", f"a sweep already exists at {path}. Continue it with `mmtune resume {path}`, "
                                  "or give this one another --name (nothing there was touched)."))
    _prepare_datasets(spec, console)
    started = _init_ray(address, spec, console)
    try:
        meta = {"spec": spec.source, "name": name, "smoke_test": smoke_test, "mmtune_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command or " ".join(sys.argv),
                "overrides": list(overrides or []),  # key=value given to `mmtune sweep`; "spec" already has them
                "num_trials": spec.num_trials(), "axes": spec.axes(), "metric": spec.metric, "mode": spec.mode,
                "algorithm": spec.algorithm, "hardware": _hardware(),
                "max_concurrent": _max_concurrent(spec, max_concurrent)}
        _write_text(f"{path}/{SPEC_FILE}", json.dumps(meta, indent=2, default=str))
        tuner, _ = build_tuner(spec, storage=storage, name=name, max_concurrent=max_concurrent, console=console,
                               live=live, trainable=trainable)
    except BaseException:
        _stop_ray(started)
        raise
    return _fit(tuner, path, started, spec=spec, trainable=trainable, console=console, live=live)


def _prepare_datasets(spec: SweepSpec, console: Any) -> None:
    """Decode every real dataset the sweep uses once, here, before any trial starts (with all cores),
    instead of letting the first trials do it while the others wait on its lock."""
    from mmtune.data import dataset_config
    from mmtune.data.real import REAL_DATASETS, RealDataConfig, prepare

    if spec.algorithm == "grid":
        nodes = [absolute_paths(c).get("dataset") or {} for c in expand_grid(spec)]
    else:
        fixed, space = optuna_base(spec)
        nodes = [] if "dataset" in space else [absolute_paths(fixed).get("dataset") or {}]
    seen: set[str] = set()
    for node in nodes:
        if node.get("name") not in REAL_DATASETS:
            continue
        key = json.dumps(node, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            cfg = dataset_config(node)
            assert isinstance(cfg, RealDataConfig)
            prepare(cfg, progress=(console.print if console is not None else log.info))


def _hardware() -> dict[str, Any]:
    """What the sweep ran on (the Ray cluster's totals, and this machine), for reports."""
    import platform

    import ray
    import torch

    resources = ray.cluster_resources()
    info: dict[str, Any] = {"cluster_cpus": resources.get("CPU", 0), "cluster_gpus": resources.get("GPU", 0),
                            "nodes": len(ray.nodes()), "driver": f"{platform.platform()}, Python {platform.python_version()}",
                            "torch": torch.__version__}
    if torch.cuda.is_available():
        info["driver_gpu"] = torch.cuda.get_device_name(0)
    return info


def _storage_for_ray(storage: str) -> str:
    return storage if "://" in storage else os.path.abspath(storage)


def load_sweep_spec(path: str) -> tuple[SweepSpec, dict[str, Any]]:
    """The spec a sweep folder was started with (as validated then), and its run metadata."""
    file = f"{path.rstrip('/')}/{SPEC_FILE}"
    if not _exists(file):
        raise ConfigError(Problem(path, f"is not an mmtune sweep folder (no {SPEC_FILE}). Pass the folder `mmtune sweep` "
                                  "created: <storage>/<name>, as `mmtune ls` lists them."))
    meta = json.loads(_read_text(file))
    spec = parse_spec(meta["spec"])
    return (smoke_spec(spec) if meta.get("smoke_test") else spec), meta


def resume_sweep(path: str, *, retry_errored: bool = False, address: str | None = None, console: Any = None,
                 live: bool | None = None) -> SweepOutcome:
    """Continue an interrupted sweep: unfinished trials resume from their last checkpoint; with
    ``retry_errored`` errored trials too. Finished trials are kept as they are."""
    path = _local_or_uri(path)
    spec, meta = load_sweep_spec(path)
    counts = _counts(path)
    ended = ("TERMINATED", "STOPPED_EARLY") + (() if retry_errored else ("ERROR",))
    planned = meta.get("num_trials", spec.num_trials())
    if counts and sum(counts.values()) >= planned and set(counts) <= set(ended):
        return SweepOutcome(path, counts, 0.0, nothing_to_do=True)  # before Ray: no start-up to pay for nothing
    started = _init_ray(address, spec, console)
    try:
        tuner = _restore_tuner(path, spec, retry_errored=retry_errored, console=console, live=live)
    except BaseException:
        _stop_ray(started)
        raise
    return _fit(tuner, path, started, spec=spec, console=console, live=live)


def _local_or_uri(path: str) -> str:
    return path if "://" in path else os.path.abspath(path.rstrip("/"))


def _restore_tuner(path: str, spec: SweepSpec, *, retry_errored: bool, trainable: Any = None, console: Any = None,
                   live: bool | None = None) -> Any:
    """The sweep's Tuner restored from its experiment snapshot (Ray must be initialised)."""
    from ray import tune

    from mmtune.sweep.progress import SweepProgress

    tuner = tune.Tuner.restore(path, trainable=_trainable(spec, trainable), resume_unfinished=True,
                               resume_errored=retry_errored)
    # Callbacks come back from the pickled run config; give the progress view this terminal.
    for cb in _tuner_callbacks(tuner):
        if isinstance(cb, SweepProgress):
            cb.attach(console=console, live=live)
    return tuner


def _tuner_callbacks(tuner: Any) -> list:
    return list(tuner._local_tuner._run_config.callbacks or [])


def _fit(tuner: Any, path: str, started: bool, *, spec: SweepSpec, trainable: Any = None, console: Any = None,
         live: bool | None = None) -> SweepOutcome:
    """Run the tuner to the end, then stop Ray if this sweep started it. Trials that Tune errored with
    retries left (:mod:`mmtune.sweep.retry`) are resumed from their last checkpoint, when they are the
    sweep's only errored trials (``resume_errored`` would rerun every errored trial)."""
    from mmtune.sweep.retry import RetryLedger

    try:
        start = time.perf_counter()
        with _interruptible(tuner) as interrupted:
            tuner.fit()
        if interrupted.is_set():
            return SweepOutcome(path, _counts(path), time.perf_counter() - start, interrupted=True)
        # Bounded by the sweep's retry budget (a preempted node does not count as a trial's failure).
        for _ in range(spec.max_failures + 1):
            raced = set().union(*(cb.unspent for cb in _tuner_callbacks(tuner) if isinstance(cb, RetryLedger)))
            if not raced or len(raced) < _counts(path).get("ERROR", 0):
                break
            message = (f"{len(raced)} trial(s) ended in ERROR with retries left (a Ray Tune race when a node or "
                       "actor dies); resuming them from their last checkpoint.")
            log.warning(message)
            if console is not None:
                console.print(f"[yellow]{message}[/yellow]")
            tuner = _restore_tuner(_local_or_uri(path), spec, retry_errored=True, trainable=trainable,
                                   console=console, live=live)
            tuner.fit()
        return SweepOutcome(path, _counts(path), time.perf_counter() - start)
    finally:
        _stop_ray(started)


@contextlib.contextmanager
def _interruptible(tuner: Any):
    """Ctrl-C (SIGINT) or SIGTERM during ``fit``: mark the trials not ended by now INTERRUPTED (the
    results writer), then let Ray Tune stop gracefully (its SIGUSR1 handler: a last experiment
    snapshot, so `mmtune resume` continues them). A second signal stops at once (KeyboardInterrupt).
    Yields an Event set when the sweep was interrupted. Off the main thread signals cannot be caught:
    the context does nothing there."""
    import signal
    import threading

    from mmtune.store.writer import ResultsWriter

    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        yield interrupted
        return

    def on_signal(signum: int, frame: Any) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        for cb in _tuner_callbacks(tuner):
            if isinstance(cb, ResultsWriter):
                cb.interrupt()
        os.kill(os.getpid(), signal.SIGUSR1)  # Ray Tune's own graceful stop (tune.run registers it)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield interrupted
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_ray(started: bool) -> None:
    if started:
        import ray

        ray.shutdown()
