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
* Results: :class:`mmtune.store.writer.ResultsWriter` (Parquet tables under the sweep folder),
  :class:`mmtune.sweep.progress.SweepProgress` (rich live view, plain lines off a terminal), Ray Tune's
  own per-trial ``result.json``/``progress.csv`` (so ``ray.tune.ExperimentAnalysis(<sweep>)`` works) and
  the spec's ``logging:`` loggers (TensorBoard, MLflow, W&B: :mod:`mmtune.sweep.loggers`).

Storage: ``--storage`` is a local folder (default ``runs/``) or a URI that pyarrow understands
(``s3://bucket/path``, ``gs://…``) — on a cluster it must be storage every node can reach. Before Ray
starts, a write probe (:func:`mmtune.store.faults.check_writable`) turns a read-only or full storage
into one error naming the path and its free space; a storage that fills up during the sweep ends it
with one such error (Ray's per-trial tracebacks of it are left out) and `mmtune resume` continues it.

Resuming (:func:`resume_sweep`): the processes a killed driver's Ray session left running are ended
(:mod:`mmtune.sweep.driver`); a results table that cannot be read is set aside (``*.damaged-<time>``)
and rebuilt; Tune's experiment state is checked before it is restored. When that state is damaged
(a full disk leaves it truncated) or the epochs table is lost, the sweep is rebuilt from what exists:
the trials the tables show as ended are kept, and a new Tune experiment in the same folder runs every
other trial of the spec again from its start. A sweep that ends with fewer ended trials than
``spec.json``'s ``num_trials`` is reported as unfinished (exit 1), never as done.
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
from mmtune.errors import ConfigError, Problem, StorageError
from mmtune.store.schema import SPEC_FILE  # the validated spec as read (plus how it was run)
from mmtune.sweep.spec import DEFAULT_STORAGE, SweepSpec, expand_grid, optuna_base, parse_spec, smoke_spec

__all__ = ["TrialListSearcher", "SeededOptunaSearcher", "SweepOutcome", "run_sweep", "resume_sweep", "sweep_path",
           "check_sweep_name", "DEFAULT_STORAGE"]

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
        # JSON, not pickle: the state is plain data (trial configs, who got which), and reading it runs nothing.
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            data = f.read()
        # A sweep started before the state was JSON holds a pickle here; `mmtune resume` has verified
        # (or been told to trust) the folder's pickles before Tune calls this (mmtune.sweep.signing).
        self.set_state(pickle.loads(data) if data[:1] == b"\x80" else json.loads(data))

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
        # A pickle: the state holds Ray's OptunaSearch and its Optuna study (Ray saves those as pickles
        # too). The file is signed with the sweep's other pickles and verified before a resume unpickles
        # it (mmtune.sweep.signing).
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
    planned: int | None = None  # spec.json's num_trials
    storage_errors: int = 0  # trials in ERROR because the storage was full or read-only

    @property
    def unfinished(self) -> int:
        """Planned trials that have not ended (never ran, or still pending/running when the fit returned)."""
        if self.planned is None:
            return 0
        ended = sum(self.counts.get(s, 0) for s in ("TERMINATED", "STOPPED_EARLY", "ERROR"))
        return max(0, self.planned - ended)

    @property
    def ok(self) -> bool:
        return self.counts.get("ERROR", 0) == 0 and self.unfinished == 0


def sweep_path(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}"


def check_sweep_name(name: str, *, key: str = "--name") -> None:
    """A sweep's folder name must be one plain name under the storage path (the spec's ``name`` rule):
    no separator, no ``..``, not absolute, so it can never write outside the storage."""
    from mmtune.sweep.spec import NAME_RE

    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ConfigError(Problem(key, f"must be a plain folder name (letters, digits, '_', '-', '.', '+'; no '/' "
                                       f"or '..'), got {name!r}: the sweep's folder under --storage. Nothing was written."))


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
    from mmtune.store.faults import write_atomic

    write_atomic(path, text.encode())  # a temporary name, then a rename: never a truncated spec.json


def _read_text(path: str) -> str:
    fs, p = _filesystem(path)
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def _quiet_ray() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Tune's default loggers off: mmtune adds its JSON/CSV result files itself, TensorBoard only when the
    # spec's `logging:` asks (mmtune.sweep.loggers), instead of whenever tensorboardX happens to be installed.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "60")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # mmtune catches Ctrl-C itself (to record INTERRUPTED), then triggers Tune's graceful stop.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    for name in ("ray", "ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.ERROR)


LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def _loopback_only(local: bool):
    """While a local Ray starts: every Ray process of this sweep listens on 127.0.0.1 only, not on all
    interfaces (nothing off this machine needs to reach a local sweep). Ray's servers (GCS, raylet, core
    workers, runtime-env agent) bind loopback exactly when the node IP is ``"127.0.0.1"``; on Linux
    ``ray.init`` replaces a loopback ``_node_ip_address`` with the machine's routable address unless
    its single-machine mode is on (``ray_constants.ENABLE_RAY_CLUSTER`` false, the default on macOS and
    Windows), so that mode is on for the duration of ``ray.init``: the processes it starts get
    ``--node-ip-address=127.0.0.1``. ``--address`` (joining a cluster) is left as it is."""
    from ray._private import ray_constants

    if not local or not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        yield
        return
    previous = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous


def _init_ray(address: str | None, spec: SweepSpec, console: Any = None) -> bool:
    """Start (or join) Ray once per sweep; returns whether we started it (and so must stop it). Says
    so on ``console`` first: starting Ray takes seconds, with nothing else on screen meanwhile."""
    import ray

    _quiet_ray()
    if ray.is_initialized():
        started = False
    else:
        address = address or os.environ.get("RAY_ADDRESS") or None
        local = address in (None, "local")  # --help: "default: RAY_ADDRESS or local", never a cluster found by chance
        if local:
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
        with _loopback_only(local):
            ray.init(address="local" if local else address, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.ERROR, configure_logging=True,
                     **({"_node_ip_address": LOOPBACK} if local else {}))
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


def _callbacks(spec: SweepSpec, storage: str, name: str, console: Any, live: bool | None,
               carried: frozenset[str] = frozenset()) -> list:
    from mmtune.store.writer import ResultsWriter
    from mmtune.sweep.loggers import logger_callbacks
    from mmtune.sweep.progress import SweepProgress
    from mmtune.sweep.retry import RetryLedger
    from mmtune.sweep.signing import PickleSigner

    # Progress before the writer: the writer's last flush raises if the tables cannot be written, and Tune
    # skips the callbacks after a raising one — the live view must be closed before that.
    return [
        PickleSigner(sweep_path(storage, name)),  # first: signs Tune's snapshots as soon as they are written
        SweepProgress(total_trials=spec.num_trials(), metric=spec.metric, mode=spec.mode, swept=spec.axes(),
                      console=console, live=live),
        ResultsWriter(storage, name, carried=carried),
        RetryLedger(),
        # Ray Tune's result.json/progress.csv (ExperimentAnalysis, Tuner.restore(...).get_results()) and
        # the spec's `logging:` callbacks (TensorBoard, MLflow, W&B).
        *logger_callbacks(spec.logging, path=_local_or_uri(sweep_path(storage, name)), name=name),
    ]


def _counts(path: str) -> dict[str, int]:
    """Trials by status; ``{}`` when the sweep has no trials table yet. A table that exists but cannot
    be read is a :class:`StorageError` naming it (never a silent "no trials")."""
    from mmtune.store.reader import read_trials

    try:
        trials = read_trials(path)
    except FileNotFoundError:  # no table: no trial recorded yet
        return {}
    counts: dict[str, int] = {}
    for status in trials.column("status").to_pylist():
        counts[status] = counts.get(status, 0) + 1
    return counts


def build_tuner(spec: SweepSpec, *, storage: str, name: str, max_concurrent: int | None = None, console: Any = None,
                live: bool | None = None, trainable: Any = None, searcher: Any = None, num_samples: int | None = None,
                carried: frozenset[str] = frozenset()) -> tuple[Any, Any]:
    """The Ray Tuner of a sweep and its searcher (Ray must be initialised). ``trainable`` overrides
    the default :class:`BalancedTrainable` (tests inject failures this way). A rebuilt sweep passes the
    ``searcher`` of its remaining trials, their ``num_samples``, and the ``carried`` trial ids whose
    rows the results writer keeps (see :func:`_rebuilt_tuner`)."""
    from ray import tune

    from mmtune.sweep.signing import sign_folder

    searcher = searcher if searcher is not None else _searcher(spec)
    scheduler = _scheduler(spec)
    tuner = tune.Tuner(
        _trainable(spec, trainable),
        param_space={},
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, metric=spec.metric, mode=spec.mode,
            num_samples=spec.num_trials() if num_samples is None else num_samples,
            max_concurrent_trials=_max_concurrent(spec, max_concurrent),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=_storage_for_ray(storage),
            callbacks=[*_callbacks(spec, storage, name, console, live, carried), *_scheduler_callbacks(scheduler)],
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_frequency=0, checkpoint_at_end=True),
            verbose=0, log_to_file=True,
        ),
    )
    sign_folder(sweep_path(storage, name), ["tuner.pkl"])  # the Tuner has just written it
    return tuner, searcher


def run_sweep(spec: SweepSpec, *, storage: str = DEFAULT_STORAGE, name: str | None = None, address: str | None = None,
              max_concurrent: int | None = None, smoke_test: bool = False, console: Any = None,
              live: bool | None = None, command: str = "", trainable: Any = None,
              overrides: list[str] | None = None) -> SweepOutcome:
    """Run a validated sweep to the end; every trial's epochs and summary land under ``storage/name``."""
    from mmtune.sweep.loggers import check_loggers

    if smoke_test:
        spec = smoke_spec(spec)
    check_sweep_name(name or spec.name, key="--name" if name else "name")
    name = name or spec.name
    path = sweep_path(storage, name)
    if _exists(path):
        raise ConfigError(Problem("--name", f"a sweep already exists at {path}. Continue it with `mmtune resume {path}`, "
                                  "or give this one another --name (nothing there was touched)."))
    _check_storage(storage, then="run the sweep again")
    check_loggers(spec.logging, path=_local_or_uri(path))  # e.g. mlflow on object storage needs a tracking URI
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
        _record_driver(path, started)
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
    try:
        meta = json.loads(_read_text(file))
    except (ValueError, UnicodeDecodeError) as err:
        meta, why = None, f"is not valid JSON ({err})"
    else:
        why = "holds no sweep spec: it must be a JSON object with the spec under \"spec\""
    if not isinstance(meta, dict) or not isinstance(meta.get("spec"), dict):
        raise StorageError(Problem(file, f"{why}. It records the spec the sweep was started with; restore it from a "
                                   "backup, or rerun the spec into a new folder (`mmtune sweep SPEC --name NEW`)."))
    spec = parse_spec(meta["spec"])
    return (smoke_spec(spec) if meta.get("smoke_test") else spec), meta


def resume_sweep(path: str, *, retry_errored: bool = False, address: str | None = None, console: Any = None,
                 live: bool | None = None, trust_pickles: bool = False) -> SweepOutcome:
    """Continue an interrupted sweep: unfinished trials resume from their last checkpoint; with
    ``retry_errored`` errored trials too, and without it those that failed because the storage was full
    or read-only. Finished trials are kept as they are. When Tune's experiment state or the epochs table
    is damaged, the sweep is rebuilt instead (module docstring)."""
    from mmtune.store.schema import EPOCHS_FILE
    from mmtune.sweep.driver import clean_up_dead_driver
    from mmtune.sweep.signing import unsigned_snapshot

    path = _local_or_uri(path)
    spec, meta = load_sweep_spec(path)
    ended_pids = clean_up_dead_driver(path)  # refuses while the sweep's driver still runs
    if ended_pids:
        _say(console, f"ended {len(ended_pids)} process(es) the killed driver's Ray session left running.")
    _check_storage(path, then=f"run `mmtune resume {path}` again")
    set_aside = _set_aside_damaged_tables(path, console)
    counts = _counts(path)
    storage_errored = _storage_errored(path)
    ended = ("TERMINATED", "STOPPED_EARLY") + (() if retry_errored else ("ERROR",))
    planned = _planned(path, spec)
    if (counts and not set_aside and not storage_errored and sum(counts.values()) >= planned
            and set(counts) <= set(ended)):
        return SweepOutcome(path, counts, 0.0, nothing_to_do=True, planned=planned)  # before Ray: nothing to pay for
    state_problem = _tune_state_problem(path)
    if state_problem is None and EPOCHS_FILE in set_aside:
        state_problem = f"{EPOCHS_FILE} was damaged: the epochs of the finished trials are gone"
    if state_problem is None:
        state_problem = _tables_behind_tune(path)
    if state_problem is None:  # before Ray starts: nothing of the folder has been unpickled yet
        unsigned = unsigned_snapshot(path, trust=trust_pickles)
        if unsigned:
            names = ", ".join(line.partition(" (")[0] for line in unsigned[:3]) + (", …" if len(unsigned) > 3 else "")
            state_problem = (f"{len(unsigned)} of Ray Tune's snapshot file(s) changed after mmtune last signed them "
                             f"({names}): a driver killed or a disk that filled up between Tune's write and the "
                             "signature, or an edit. They are not unpickled (`--trust-pickles` resumes from them)")
    if storage_errored and not retry_errored and state_problem is None:
        _say(console, f"{storage_errored} trial(s) failed because the storage was full or read-only; resuming the "
                      "errored trials from their last checkpoint.")
    started = _init_ray(address, spec, console)
    try:
        _record_driver(path, started)
        if state_problem is None:
            tuner = _restore_tuner(path, spec, retry_errored=retry_errored or bool(storage_errored), console=console,
                                   live=live, trust_pickles=trust_pickles)
            _write_results_here(tuner, path)
        else:
            tuner = _rebuilt_tuner(path, spec, reason=state_problem, retry_errored=retry_errored, console=console,
                                   live=live)
            if tuner is None:  # every planned trial had ended: only Tune's state was damaged
                _stop_ray(started)
                return SweepOutcome(path, _counts(path), 0.0, nothing_to_do=True, planned=planned)
    except BaseException:
        _stop_ray(started)
        raise
    return _fit(tuner, path, started, spec=spec, console=console, live=live)


def _write_results_here(tuner: Any, path: str) -> None:
    """Point the restored results writer at the folder being resumed: its pickle names the storage the
    sweep was started in, and a sweep folder that was moved or copied since must not write there."""
    from mmtune.store.reader import open_storage
    from mmtune.store.writer import ResultsWriter

    _, here = open_storage(path)
    for cb in _tuner_callbacks(tuner):
        if isinstance(cb, ResultsWriter) and cb.directory.rstrip("/") != here.rstrip("/"):
            storage, name = path.rstrip("/").rsplit("/", 1)
            cb.__init__(storage, name, flush_interval_s=cb.flush_interval_s, carried=cb.carried)


def _say(console: Any, message: str, style: str = "yellow") -> None:
    from rich.markup import escape

    if console is None:
        log.warning(message)
    else:
        console.print(f"[{style}]{escape(message)}[/{style}]", soft_wrap=True)


def _check_storage(location: str, *, then: str) -> None:
    """The write probe (:func:`mmtune.store.faults.check_writable`) on the storage, before Ray starts."""
    from mmtune.store.faults import check_writable

    check_writable(location, then=then)


def _record_driver(path: str, started: bool) -> None:
    """``driver.json``: this process, and the Ray session it started (a joined cluster is not the sweep's)."""
    from mmtune.sweep.driver import ray_session_dir, record_driver

    try:
        record_driver(path, session_dir=ray_session_dir() if started else None)
    except OSError as err:  # the probe passed a moment ago; without the record only the clean-up is lost
        log.warning("could not record the sweep's driver in %s: %s", path, err)


def _planned(path: str, spec: SweepSpec) -> int:
    """How many trials the sweep plans: spec.json's ``num_trials`` (the spec's count if it has none)."""
    try:
        planned = json.loads(_read_text(f"{path.rstrip('/')}/{SPEC_FILE}")).get("num_trials")
    except (OSError, ValueError, AttributeError):
        planned = None
    return planned if isinstance(planned, int) and not isinstance(planned, bool) else spec.num_trials()


def _storage_errored(path: str) -> int:
    """Trials in ERROR whose error is the storage's (no space, read-only): not a verdict on the trial."""
    from mmtune.store.faults import is_storage_error
    from mmtune.store.reader import read_trials

    try:
        table = read_trials(path)
    except (FileNotFoundError, ValueError):
        return 0
    if "error" not in table.column_names:
        return 0
    rows = zip(table.column("status").to_pylist(), table.column("error").to_pylist(), strict=True)
    return sum(1 for status, error in rows if status == "ERROR" and is_storage_error(error))


def _set_aside_damaged_tables(path: str, console: Any) -> list[str]:
    """Move each results table that exists but cannot be read to ``<name>.damaged-<time>`` (kept for a
    look, never read again) and say so; the resume rebuilds it. Returns the file names set aside."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from mmtune.store.faults import first_line
    from mmtune.store.reader import open_storage
    from mmtune.store.schema import EPOCHS_FILE, TRIALS_FILE

    fs, base = open_storage(path)
    moved = []
    for name in (TRIALS_FILE, EPOCHS_FILE):
        file = f"{base.rstrip('/')}/{name}"
        if fs.get_file_info(file).type != pafs.FileType.File:
            continue
        try:
            pq.read_table(file, filesystem=fs, page_checksum_verification=True)
        except (OSError, pa.ArrowException, EOFError) as err:
            aside = f"{file}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
            fs.move(file, aside)
            moved.append(name)
            _say(console, f"{path}/{name} cannot be read ({first_line(err)}); set aside as {os.path.basename(aside)} "
                          "and rebuilt by this resume.")
    return moved


# Ray Tune's files at the top of an experiment folder: what Tuner.restore reads.
_TUNE_STATE_PREFIXES = ("experiment_state-", "searcher-state-", "search_gen_state-", "basic-variant-state-",
                        "callback-states-")


def _tune_state_problem(path: str) -> str | None:
    """Why Tune's experiment state cannot be restored (a missing, empty or truncated file), or None.

    Tune itself, given a damaged state, logs the error and starts the experiment afresh with no
    trials; the resumed sweep would then run a few trials and report success. The experiment state
    (JSON) is parsed; the other files are pickles (``search_gen_state-*.json`` too), checked for their
    final STOP opcode (a truncated pickle lacks it) without being loaded."""
    import pyarrow.fs as pafs

    from mmtune.store.reader import open_storage

    fs, base = open_storage(path)
    base = base.rstrip("/")
    files = {i.base_name: i for i in fs.get_file_info(pafs.FileSelector(base)) if i.type == pafs.FileType.File}
    states = sorted(n for n in files if n.startswith("experiment_state-") and n.endswith(".json"))
    if "tuner.pkl" not in files or not states:
        return "Ray Tune's experiment state is missing (no tuner.pkl or experiment_state-*.json)"
    checked = ["tuner.pkl", states[-1], *(n for n in files if n.startswith(_TUNE_STATE_PREFIXES[1:]))]
    for name in checked:
        try:
            with fs.open_input_stream(f"{base}/{name}") as f:
                data = f.read()
        except OSError as err:
            return f"{name} cannot be read ({err})"
        if not data:
            return f"{name} is empty"
        if name.startswith("experiment_state-") or (name.startswith("searcher-state-") and data[:1] == b"{"):
            try:  # TrialListSearcher's state is JSON (the grid searcher); Optuna's is a pickle
                json.loads(data)
            except ValueError as err:
                return f"{name} is not valid JSON ({err})"
        elif not data.endswith(b"."):  # the others are (cloud)pickles, whatever their extension
            return f"{name} is truncated"
    return None


def _tables_behind_tune(path: str) -> str | None:
    """Why the epochs table misses epochs of trials that Tune's snapshot has ended, or None.

    Restoring would keep those trials as they are (Tune does not run an ended trial again), so the
    lost epochs would stay lost under a success code. The results writer vetoes snapshots while the
    tables cannot be written (:meth:`ResultsWriter.get_state`); this catches what slipped through
    (a sweep from before the veto, a flush that failed for another reason). Reads the snapshot as
    JSON: its pickled parts are not loaded."""
    from collections import Counter

    import pyarrow.fs as pafs

    from mmtune.store.reader import open_storage, read_epochs

    fs, base = open_storage(path)
    states = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(base.rstrip("/")))
                    if i.base_name.startswith("experiment_state-") and i.base_name.endswith(".json"))
    try:
        with fs.open_input_stream(states[-1]) as f:
            trials = json.loads(f.read())["trial_data"]
        stored = Counter(read_epochs(path).column("trial_id").to_pylist())
    except (IndexError, KeyError, TypeError, ValueError, OSError):  # no table yet, or a state Tune will judge
        return None
    behind = 0
    for entry in trials:
        try:
            trial, runtime = (json.loads(part) for part in entry)
            last = runtime.get("last_result") or {}
            epochs = int(last.get("epoch", last.get("training_iteration")) or 0)
        except (TypeError, ValueError, AttributeError):
            continue
        if trial.get("status") in ("TERMINATED", "ERROR") and epochs > stored[trial.get("trial_id")]:
            behind += 1
    if behind:
        return (f"the epochs table lacks the last epochs of {behind} trial(s) that Ray Tune had ended (the storage "
                "failed before they were written)")
    return None


def _rebuilt_tuner(path: str, spec: SweepSpec, *, reason: str, retry_errored: bool, console: Any = None,
                   live: bool | None = None) -> Any:
    """A new Tune experiment in the sweep folder for every planned trial that has not ended; None when
    none is left. Ray's damaged state is moved to ``.damaged-ray-state-<time>/``. Ended trials (whose
    epochs are all in the epochs table) keep their rows: the results writer carries them."""
    import pyarrow.fs as pafs

    from mmtune.store.reader import open_storage

    kept, searcher, num_samples, note = _remaining(path, spec, retry_errored=retry_errored)
    if num_samples == 0:
        return None
    fs, base = open_storage(path)
    base = base.rstrip("/")
    aside = f"{base}/.damaged-ray-state-{time.strftime('%Y%m%d-%H%M%S')}"
    fs.create_dir(aside, recursive=True)
    for info in fs.get_file_info(pafs.FileSelector(base)):
        name = info.base_name
        if info.type == pafs.FileType.File and (name == "tuner.pkl" or name.startswith(_TUNE_STATE_PREFIXES)):
            fs.move(info.path, f"{aside}/{name}")
    _say(console, f"{reason}. Rebuilding the sweep from its tables: {len(kept)} ended trial(s) kept, {num_samples} "
                  f"trial(s) run again from the start{note} (Ray Tune's state is set aside in {os.path.basename(aside)}/).")
    storage, name = path.rstrip("/").rsplit("/", 1)
    tuner, _ = build_tuner(spec, storage=storage, name=name, console=console, live=live, searcher=searcher,
                           num_samples=num_samples, carried=frozenset(kept))
    return tuner


def _remaining(path: str, spec: SweepSpec, *, retry_errored: bool) -> tuple[set[str], Any, int, str]:
    """``(kept trial ids, searcher of the other trials, their number, a note)`` for a rebuilt sweep.

    A trial is kept when it ended (TERMINATED, STOPPED_EARLY, or ERROR not caused by the storage and
    without ``retry_errored``) and the epochs table holds all its epochs. Grid: the spec's trial list
    less the kept (configuration, seed) pairs. Optuna: configurations with every seed kept stay; the
    others are dropped and as many new configurations are sampled (the new sampler does not know the
    kept ones)."""
    from collections import Counter

    from mmtune.store.faults import is_storage_error
    from mmtune.store.reader import read_epochs, read_trials
    from mmtune.store.writer import trial_columns

    try:
        rows = read_trials(path).to_pylist()
    except FileNotFoundError:
        rows = []
    try:
        epochs = Counter(read_epochs(path).column("trial_id").to_pylist())
    except FileNotFoundError:
        epochs = Counter()

    def ended(row: dict[str, Any]) -> bool:
        status = row.get("status")
        done = status in ("TERMINATED", "STOPPED_EARLY") or (
            status == "ERROR" and not retry_errored and not is_storage_error(row.get("error")))
        return done and epochs[row["trial_id"]] >= (row.get("epochs_run") or 0)

    finished = [r for r in rows if ended(r)]
    if spec.algorithm == "optuna":
        fixed, space = optuna_base(spec)
        seeds_of: dict[str, set[int]] = {}
        for r in finished:
            seeds_of.setdefault(r["config_key"], set()).add(r["seed"])
        complete = {k for k, seeds in seeds_of.items() if set(spec.seeds) <= seeds}
        kept: set[str] = set()
        for r in finished:
            if r["config_key"] in complete and r["seed"] in spec.seeds:
                kept.add(r["trial_id"])
        fresh = max(0, spec.num_samples - len(complete))
        # Another sampler seed: the original one would propose the kept configurations first again.
        searcher = SeededOptunaSearcher(fixed=absolute_paths(fixed), space=space, seeds=list(spec.seeds),
                                        num_samples=fresh, metric=spec.metric, mode=spec.mode, max_epochs=spec.epochs,
                                        sampler_seed=spec.search_seed + 1 + len(complete))
        note = "; Optuna samples the new configurations without the kept ones in its posterior" if fresh else ""
        return kept, searcher, fresh * len(spec.seeds), note
    available = Counter((r["config_key"], r["seed"]) for r in finished)
    by_key: dict[tuple[str, Any], list[str]] = {}
    for r in finished:
        by_key.setdefault((r["config_key"], r["seed"]), []).append(r["trial_id"])
    kept, remaining = set(), []
    for config in (absolute_paths(c) for c in expand_grid(spec)):
        key = (trial_columns("", "", config)[0]["config_key"], config.get("seed"))
        if available[key] > 0:
            available[key] -= 1
            kept.add(by_key[key].pop())
        else:
            remaining.append(config)
    return kept, TrialListSearcher(remaining, metric=spec.metric, mode=spec.mode), len(remaining), ""


def _local_or_uri(path: str) -> str:
    return path if "://" in path else os.path.abspath(path.rstrip("/"))


def _restore_tuner(path: str, spec: SweepSpec, *, retry_errored: bool, trainable: Any = None, console: Any = None,
                   live: bool | None = None, trust_pickles: bool = False) -> Any:
    """The sweep's Tuner restored from its experiment snapshot (Ray must be initialised). Tune unpickles
    the folder's files: they must carry this user's signatures first, unless ``trust_pickles``
    (``--trust-pickles``: the user vouches for the folder, whose files are then signed)."""
    from ray import tune

    from mmtune.sweep.progress import SweepProgress
    from mmtune.sweep.signing import PickleSigner, check_folder

    check_folder(path, trust=trust_pickles)
    tuner = tune.Tuner.restore(path, trainable=_trainable(spec, trainable), resume_unfinished=True,
                               resume_errored=retry_errored)
    # Callbacks come back from the pickled run config; give the progress view this terminal.
    for cb in _tuner_callbacks(tuner):
        if isinstance(cb, SweepProgress):
            cb.attach(console=console, live=live)
    # The signer signs where the sweep is now (it may have been moved); a sweep from before signing gets one.
    signers = [cb for cb in _tuner_callbacks(tuner) if isinstance(cb, PickleSigner)]
    for cb in signers:
        cb.path = path
    if not signers:
        run_config = tuner._local_tuner._run_config
        run_config.callbacks = [*(run_config.callbacks or []), PickleSigner(path)]
    return tuner


def _tuner_callbacks(tuner: Any) -> list:
    return list(tuner._local_tuner._run_config.callbacks or [])


def _fit(tuner: Any, path: str, started: bool, *, spec: SweepSpec, trainable: Any = None, console: Any = None,
         live: bool | None = None) -> SweepOutcome:
    """Run the tuner to the end, then stop Ray if this sweep started it. Trials that Tune errored with
    retries left (:mod:`mmtune.sweep.retry`) are resumed from their last checkpoint, when they are the
    sweep's only errored trials (``resume_errored`` would rerun every errored trial)."""
    from mmtune.sweep.retry import RetryLedger

    planned = _planned(path, spec)
    try:
        start = time.perf_counter()
        with _interruptible(tuner) as interrupted, _storage_faults(tuner, path):
            tuner.fit()
        if interrupted.is_set():
            return SweepOutcome(path, _counts(path), time.perf_counter() - start, interrupted=True, planned=planned)
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
            with _storage_faults(tuner, path):
                tuner.fit()
        return SweepOutcome(path, _counts(path), time.perf_counter() - start, planned=planned,
                            storage_errors=_storage_errored(path))
    finally:
        _stop_ray(started)


class _StorageNoise:
    """A logging filter for Ray's records whose exception is the storage's (no space, read-only): each
    trial's failed checkpoint and each failed snapshot would print a traceback of the same fault,
    which :func:`_storage_faults` reports once."""

    def __init__(self) -> None:
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        from mmtune.store.faults import is_storage_error

        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and is_storage_error(exc):
            self.dropped += 1
            return False
        return True


@contextlib.contextmanager
def _storage_faults(tuner: Any, path: str):
    """Around ``tuner.fit``: when the storage fails (full, read-only) — a trial's checkpoint or a flush
    of the tables — the sweep stops at once, its unended trials INTERRUPTED (Tune's graceful stop,
    as for Ctrl-C): every later checkpoint would fail the same way and turn the trials into ERRORs.
    The sweep then ends with one :class:`StorageError` naming the folder, its free space and the way on
    (`mmtune resume`), instead of Ray's tracebacks of it."""
    import signal
    import threading

    from mmtune.store.faults import free_space, is_storage_error, storage_reason
    from mmtune.store.writer import ResultsWriter

    writers = [cb for cb in _tuner_callbacks(tuner) if isinstance(cb, ResultsWriter)]

    def stop(error: str) -> None:
        log.debug("storage failed (%s): stopping the sweep", error)
        for writer in writers:
            writer.interrupt()
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGUSR1"):
            os.kill(os.getpid(), signal.SIGUSR1)  # Ray Tune's graceful stop (tune.run registers it)

    def failure(reason: str) -> StorageError:
        space = free_space(path)
        return StorageError(Problem(path, (
            f"the storage failed during the sweep ({reason}{'; ' + space if space else ''}), so the sweep was stopped: "
            "its results tables and Ray Tune's state may be incomplete. Free some space (or make the storage "
            f"writable), then continue it with `mmtune resume {path}`: it runs every trial that had not finished.")))

    noise = _StorageNoise()
    loggers = [logging.getLogger(n) for n in ("ray.tune.execution.tune_controller", "ray.tune.execution.experiment_state",
                                              "ray.tune.tune", "ray.train._internal.storage")]
    for logger in loggers:
        logger.addFilter(noise)
    for writer in writers:
        writer.on_storage_fault = stop
    try:
        yield
    except OSError as err:
        if not is_storage_error(err):
            raise
        raise failure(storage_reason(err)) from None
    finally:
        for logger in loggers:
            logger.removeFilter(noise)
        for writer in writers:
            writer.on_storage_fault = None
    fault = next((w.storage_fault for w in writers if w.storage_fault), None)
    if fault is not None:
        raise failure(storage_reason(OSError(fault)))


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
