"""Trials Ray Tune ended in ERROR although they had retries left, so that the sweep can resume them.

A Ray Tune race (Ray 2.60, ``TuneController._process_trial_failure``): when a node dies, the dead
actor's in-flight futures fail together. The first failure re-queues the trial (PENDING, one of its
``max_failures`` retries spent); the second then finds the trial not RUNNING and errors it for good,
with retries left. Measured: 1 of 5 runs of the multi-node test (a worker node removed mid-sweep)
ended with one trial in ERROR, its error file showing 2 failures against ``max_failures: 3``.

:func:`mmtune.sweep.tuner.run_sweep` resumes such trials from their last checkpoint (the Tune
experiment restored with ``resume_errored``) when every errored trial of the sweep is one of them, at
most ``max_failures + 1`` times per sweep (Tune does not count a preempted node, "terminated
expectedly", as a failure, so the trial's own count alone would not bound the rounds).
"""

from __future__ import annotations

from typing import Any

from ray import tune

__all__ = ["RetryLedger"]


class RetryLedger(tune.Callback):
    """Records the ids of trials that ended in ERROR with ``num_failures <= max_failures``."""

    def __init__(self) -> None:
        self.unspent: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {}  # a restored sweep starts a fresh ledger: only its own errors count

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.max_failures < 0 or trial.num_failures <= trial.max_failures:
            self.unspent.add(trial.trial_id)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.unspent.discard(trial.trial_id)

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.unspent.discard(trial.trial_id)
