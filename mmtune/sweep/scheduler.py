"""ASHA over configurations, not trials: the seeds of one configuration rise or stop together.

Asynchronous successive halving (Li et al., "A System for Massively Parallel Hyperparameter Tuning",
MLSys 2020, arXiv:1810.05934) judges each trial at rungs ``grace_period · rf^k`` (< ``max_t``): a
trial whose value at a rung lies below the ``(1 − 1/rf)`` quantile of the values recorded there is
stopped. Ray's ``AsyncHyperBandScheduler`` applies it to every trial on its own, so with seeds it
stops one seed of a configuration and keeps the other, and a report is left with n = 1 per
configuration. :class:`ConfigASHA` applies the same rule to configurations:

* A trial's configuration is its config without ``seed`` (:func:`mmtune.store.schema.config_key`,
  the key reports group by; the variant's ``label`` stays part of it).
* A seed that reaches a rung records its value and is **paused** (it checkpoints and frees its
  resources) until every seed of its configuration has reached that rung. The configuration's rung
  value is then the **seed mean**, compared with Ray's cutoff: ``nanpercentile`` of the means
  recorded at that rung so far, ``(1 − 1/rf)·100``, in the mode's direction.
* The decision applies to every seed: *continue* makes the paused seeds runnable again
  (:meth:`ConfigASHA.choose_trial_to_run`), *stop* stops the deciding seed and the paused ones
  (``tune_controller.stop_trial``, as Ray's HyperBand stops paused trials). A stopped configuration
  thus has all its seeds stopped after the same epoch, stored as ``STOPPED_EARLY``.
* A seed that ends before the rung (an error with no retries left, a removal) does not hold the
  others: the rung is decided with the seeds that arrived. The check runs on the controller's next
  step, after Tune has re-queued a trial it retries, so a retried seed is still waited for.

Deadlock: Tune's ``max_concurrent_trials`` counts paused trials as live. mmtune's searchers hand out
the seeds of a configuration one after another, so with a cap of at least ``num_seeds`` some
configuration always has all its seeds at their rung when every live trial is paused; the sweep
raises the cap to the seed count (:func:`mmtune.sweep.tuner.build_tuner`).

Resuming: Tune 2.60 snapshots its searcher and callbacks with the experiment, never its scheduler.
:meth:`ConfigASHA.state_callback` returns a callback that carries the scheduler's bookkeeping in that
snapshot, so a resumed sweep keeps its rung records and decisions; a seed that was paused at an
undecided rung comes back re-queued by Tune and is paused again before it runs.
"""

from __future__ import annotations

import copy
import math
import pickle
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.result import DEFAULT_METRIC
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from mmtune.store.schema import config_key

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

__all__ = ["ConfigASHA", "rung_milestones"]

# The bookkeeping that save/restore and the experiment snapshot carry (trial ids and values only).
_STATE = ("_key_of", "_members", "_ended", "_values", "_rung_means", "_decisions", "_waiting", "_released", "num_stopped")


def rung_milestones(*, grace_period: float, reduction_factor: float, max_t: float) -> list[float]:
    """``grace_period · rf^k`` below ``max_t``: Ray's one-bracket ASHA rungs (a result at ``max_t`` stops anyway)."""
    milestones = []
    milestone = grace_period
    while milestone < max_t:
        milestones.append(milestone)
        milestone *= reduction_factor
    return milestones


class ConfigASHA(FIFOScheduler):
    """Asynchronous successive halving whose unit is a configuration (all its seeds); see the module docstring.

    ``num_seeds`` is how many trials (seeds) each configuration has: a rung is decided once that many
    have reached it or ended.
    """

    # A result past a rung must not be processed before the configuration's decision at that rung.
    _supports_buffered_results = False

    def __init__(self, *, num_seeds: int, max_t: int, grace_period: int = 1, reduction_factor: float = 2,
                 time_attr: str = "training_iteration", metric: str | None = None, mode: str | None = None):
        if not (isinstance(num_seeds, int) and num_seeds >= 1):
            raise ValueError(f"`num_seeds >= 1` must hold, but got {num_seeds=}.")
        if not 0 < grace_period <= max_t:
            raise ValueError(f"`0 < grace_period <= max_t` must hold, but got ({grace_period=}, {max_t=}).")
        if not reduction_factor > 1:
            raise ValueError(f"`reduction_factor > 1` must hold, but got {reduction_factor=}.")
        if mode not in (None, "min", "max"):
            raise ValueError(f"`mode` must be 'min' or 'max', got {mode!r}.")
        super().__init__()
        self.num_seeds, self.max_t, self.time_attr = num_seeds, max_t, time_attr
        self.grace_period, self.reduction_factor = grace_period, reduction_factor
        self.milestones = rung_milestones(grace_period=grace_period, reduction_factor=reduction_factor, max_t=max_t)
        self._metric, self._mode = metric, mode
        self._trials: dict[str, Trial] = {}  # Tune's trial objects by id (not saved: Tune re-adds them on resume)
        self._key_of: dict[str, str] = {}  # trial id -> configuration key
        self._members: dict[str, list[str]] = {}  # configuration key -> its trial ids (its seeds)
        self._ended: set[str] = set()  # trials completed, stopped, removed or errored
        self._values: dict[tuple[str, float], dict[str, float]] = {}  # (key, milestone) -> {trial id: signed value}
        self._rung_means: dict[float, dict[str, float]] = {}  # milestone -> {key: signed seed mean}
        self._decisions: dict[tuple[str, float], str] = {}  # (key, milestone) -> CONTINUE | STOP
        self._waiting: dict[str, float] = {}  # paused trial id -> the milestone it waits at
        self._released: set[str] = set()  # paused trials whose configuration continues: ready to run
        self._to_repause: set[str] = set()  # waiting trials a resumed experiment re-queued as PENDING
        self.num_stopped = 0  # configurations stopped

    # -- search properties -------------------------------------------------------------------------
    @property
    def _sign(self) -> float:
        return -1.0 if self._mode == "min" else 1.0

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        if self._metric is None and self._mode:
            self._metric = DEFAULT_METRIC
        return True

    # -- trial bookkeeping -------------------------------------------------------------------------
    def _register(self, trial: Trial) -> str:
        tid = trial.trial_id
        self._trials[tid] = trial
        if tid not in self._key_of:
            key = config_key(trial.config)
            self._key_of[tid] = key
            self._members.setdefault(key, []).append(tid)
        return self._key_of[tid]

    def on_trial_add(self, tune_controller: TuneController, trial: Trial) -> None:
        if not self._metric or not self._mode:
            raise ValueError(f"{type(self).__name__} needs a `metric` and a `mode` (got {self._metric!r}, {self._mode!r}); "
                             "pass them to the scheduler or to tune.TuneConfig().")
        self._register(trial)
        # Tune re-adds a trial it retries (and every trial of a resumed experiment): alive again unless ended.
        if trial.status in (Trial.TERMINATED, Trial.ERROR):
            self._ended.add(trial.trial_id)
        else:
            self._ended.discard(trial.trial_id)

    def _end(self, trial: Trial) -> None:
        # The rung this trial's siblings may wait at is settled on the next choose_trial_to_run: a trial
        # that Tune retries is errored and re-added within one call, and must still be waited for.
        self._ended.add(trial.trial_id)
        self._waiting.pop(trial.trial_id, None)
        self._released.discard(trial.trial_id)
        self._to_repause.discard(trial.trial_id)

    def on_trial_complete(self, tune_controller: TuneController, trial: Trial, result: dict) -> None:
        self._end(trial)

    def on_trial_error(self, tune_controller: TuneController, trial: Trial) -> None:
        self._end(trial)

    def on_trial_remove(self, tune_controller: TuneController, trial: Trial) -> None:
        self._end(trial)

    # -- results and decisions ---------------------------------------------------------------------
    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict) -> str:
        tid = trial.trial_id
        key = self._register(trial)
        self._released.discard(tid)  # it runs again
        self._waiting.pop(tid, None)
        if self.time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        progress = result[self.time_attr]
        if progress >= self.max_t:
            return TrialScheduler.STOP
        reached = [m for m in self.milestones if m <= progress]
        if not reached:
            return TrialScheduler.CONTINUE
        milestone = reached[-1]
        decided = self._decisions.get((key, milestone))
        if decided is not None:  # a re-run after a restore, or a seed the rung was decided without
            return decided
        value = result[self._metric]
        self._values.setdefault((key, milestone), {})[tid] = math.nan if value is None else self._sign * float(value)
        if self._ready(key, milestone):
            return self._decide(tune_controller, key, milestone, deciding=tid)
        self._waiting[tid] = milestone
        return TrialScheduler.PAUSE

    def _ready(self, key: str, milestone: float) -> bool:
        """Every seed of ``key`` has reached ``milestone`` or ended (and at least one reached it)."""
        members = self._members.get(key, [])
        values = self._values.get((key, milestone), {})
        return (len(members) >= self.num_seeds and bool(values)
                and all(tid in values or tid in self._ended for tid in members))

    def _decide(self, tune_controller: TuneController, key: str, milestone: float, *, deciding: str | None = None) -> str:
        """Decide ``key`` at ``milestone`` (once) and apply it to the seeds waiting there; the decision."""
        decision = self._decisions.get((key, milestone))
        if decision is None:
            values = [v for v in self._values[(key, milestone)].values() if not math.isnan(v)]
            mean = sum(values) / len(values) if values else math.nan
            recorded = self._rung_means.setdefault(milestone, {})
            finite = [v for v in recorded.values() if not math.isnan(v)]  # Ray's cutoff: the nanpercentile
            cutoff = np.percentile(finite, (1 - 1 / self.reduction_factor) * 100) if finite else None
            decision = TrialScheduler.STOP if cutoff is not None and mean < cutoff else TrialScheduler.CONTINUE
            recorded[key] = mean
            self._decisions[(key, milestone)] = decision
            if decision == TrialScheduler.STOP:
                self.num_stopped += 1
        for tid in [t for t in self._members[key] if t != deciding and self._waiting.get(t) == milestone]:
            del self._waiting[tid]
            if decision == TrialScheduler.CONTINUE:
                self._released.add(tid)
                continue
            trial = self._trials.get(tid)
            # A seed still RUNNING here is finishing its pause checkpoint (Ray's HyperBand stops those too).
            if trial is not None and (trial.status in (Trial.PAUSED, Trial.PENDING) or getattr(trial, "is_saving", False)):
                tune_controller.stop_trial(trial)
        return decision

    def _settle(self, tune_controller: TuneController) -> None:
        """Decide the rungs whose missing seeds have ended since (errors, removals)."""
        for tid, milestone in list(self._waiting.items()):
            if self._waiting.get(tid) != milestone:
                continue  # stopped or released by a decision earlier in this loop
            key = self._key_of[tid]
            if (key, milestone) in self._decisions or self._ready(key, milestone):
                self._decide(tune_controller, key, milestone)

    def choose_trial_to_run(self, tune_controller: TuneController) -> Trial | None:
        """A PENDING trial first, then a PAUSED one whose configuration continues; never one still waiting."""
        for tid in sorted(self._to_repause):
            trial = self._trials.get(tid)
            if trial is not None and trial.status == Trial.PENDING and tid in self._waiting:
                tune_controller._set_trial_status(trial, Trial.PAUSED)
        self._to_repause.clear()
        self._settle(tune_controller)
        trials = tune_controller.get_trials()
        for trial in trials:
            if trial.status == Trial.PENDING and trial.trial_id not in self._waiting:
                return trial
        for trial in trials:
            if trial.status == Trial.PAUSED and trial.trial_id in self._released:
                return trial
        return None

    def debug_string(self) -> str:
        rungs = ", ".join(f"{m:g}: {len(self._rung_means.get(m, {}))}" for m in self.milestones)
        return (f"Using ConfigASHA (per configuration, {self.num_seeds} seeds): {self.num_stopped} configurations "
                f"stopped, {len(self._waiting)} trials waiting; configurations per rung {{{rungs}}}")

    # -- state -------------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {name: copy.deepcopy(getattr(self, name)) for name in _STATE}

    def set_state(self, state: dict[str, Any]) -> None:
        for name in _STATE:
            setattr(self, name, copy.deepcopy(state[name]))
        # Tune re-queues a paused trial as PENDING on resume: those still waiting are paused again.
        self._to_repause = set(self._waiting)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))

    def state_callback(self) -> Callback:
        """A Tune callback that carries this scheduler's state in the experiment snapshot (see module docstring)."""
        return _SchedulerState(self)


class _SchedulerState(Callback):
    """Tune saves callbacks' state with each experiment snapshot, and Tuner.restore unpickles this callback
    and the scheduler together (one ``tuner.pkl``), so ``self.scheduler`` is the scheduler the sweep runs."""

    def __init__(self, scheduler: ConfigASHA):
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any]:
        return {"config_asha": self.scheduler.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.scheduler.set_state(state["config_asha"])
