"""ConfigASHA: successive halving over configurations. The seeds of one configuration wait for each
other at a rung, are judged by their mean, and continue or stop together; an ended seed does not hold
the others; the decisions survive save/restore. Unit tests drive the scheduler the way Tune's
controller does (fake trials, a fake controller); one Ray sweep checks the stored trials table."""

from __future__ import annotations

import glob
import io
import pickle
import sys

import pandas as pd
import pytest
from rich.console import Console

from mmtune.sweep.scheduler import ConfigASHA, rung_milestones
from mmtune.sweep.spec import parse_spec
from mmtune.sweep.trainable import BalancedTrainable
from mmtune.sweep.tuner import build_tuner

CONTINUE, PAUSE, STOP = "CONTINUE", "PAUSE", "STOP"


class FakeTrial:
    def __init__(self, label: str, seed: int):
        self.trial_id = f"{label}{seed}"
        self.config = {"method": "joint", "label": label, "seed": seed, "train": {"epochs": 8}}
        self.status = "PENDING"
        self.is_saving = False

    def __repr__(self) -> str:
        return self.trial_id


class FakeController:
    """What a scheduler sees of Tune's controller: the trials, stop_trial, _set_trial_status."""

    def __init__(self, scheduler: ConfigASHA):
        self.scheduler, self.trials, self.stopped = scheduler, [], []

    def add(self, *trials: FakeTrial) -> None:
        for trial in trials:
            self.trials.append(trial)
            self.scheduler.on_trial_add(self, trial)

    def get_trials(self) -> list[FakeTrial]:
        return self.trials

    def stop_trial(self, trial: FakeTrial) -> None:  # as TuneController.stop_trial
        if trial.status in ("PENDING", "PAUSED"):
            self.scheduler.on_trial_remove(self, trial)
        elif trial.status == "RUNNING":
            self.scheduler.on_trial_complete(self, trial, {})
        trial.status = "TERMINATED"
        self.stopped.append(trial.trial_id)

    def _set_trial_status(self, trial: FakeTrial, status: str) -> None:
        trial.status = status

    def report(self, trial: FakeTrial, epoch: int, value: float) -> str:
        """One result, and the decision applied as Tune applies it."""
        trial.status = "RUNNING"
        decision = self.scheduler.on_trial_result(self, trial, {"training_iteration": epoch, "val_acc": value})
        if decision == PAUSE:
            trial.status = "PAUSED"
        elif decision == STOP:
            self.stop_trial(trial)
        return decision

    def error(self, trial: FakeTrial) -> None:  # no retries left
        self.scheduler.on_trial_error(self, trial)
        trial.status = "ERROR"

    def next_to_run(self) -> FakeTrial | None:
        trial = self.scheduler.choose_trial_to_run(self)
        if trial is not None:
            trial.status = "RUNNING"
        return trial


def setup(num_seeds: int = 2, mode: str = "max", **kwargs) -> tuple[ConfigASHA, FakeController]:
    scheduler = ConfigASHA(num_seeds=num_seeds, max_t=8, grace_period=1, reduction_factor=2, **kwargs)
    assert scheduler.set_search_properties("val_acc", mode)
    return scheduler, FakeController(scheduler)


def test_rungs_are_rays_one_bracket_asha_milestones_below_max_t():
    from ray.tune.schedulers.async_hyperband import _Bracket

    for grace, rf, max_t in [(1, 2, 8), (1, 3, 10), (4, 2, 20), (2, 4, 100), (1, 2, 2)]:
        ray_rungs = sorted(m for m, _ in _Bracket(grace, max_t, rf, 0)._rungs)
        assert rung_milestones(grace_period=grace, reduction_factor=rf, max_t=max_t) == [m for m in ray_rungs if m < max_t]
    assert ConfigASHA(num_seeds=2, max_t=8, grace_period=1, reduction_factor=2).milestones == [1, 2, 4]


def test_disagreeing_seeds_are_judged_by_their_mean_and_stop_together():
    # Ray's ASHA judges each seed alone: A's seed 1 (0.1) would be stopped below A's seed 0 (0.9).
    scheduler, tune = setup()
    a0, a1, b0, b1 = FakeTrial("A", 0), FakeTrial("A", 1), FakeTrial("B", 0), FakeTrial("B", 1)
    tune.add(a0, a1, b0, b1)
    assert tune.report(a0, 1, 0.9) == PAUSE  # waits for seed 1
    assert tune.report(a1, 1, 0.1) == CONTINUE  # mean 0.5, the first configuration at the rung
    assert a0.status == "PAUSED" and tune.next_to_run() is b0  # pending trials first ...
    assert tune.next_to_run() is b1
    assert tune.next_to_run() is a0  # ... then the paused seed whose configuration continues
    assert tune.report(b0, 1, 0.45) == PAUSE
    assert tune.report(b1, 1, 0.45) == STOP  # mean 0.45 < 0.5 (the median of the means at rung 1)
    assert tune.stopped == ["B0", "B1"] and b0.status == b1.status == "TERMINATED"
    assert scheduler.num_stopped == 1 and scheduler._rung_means[1] == {scheduler._key_of["A0"]: 0.5,
                                                                      scheduler._key_of["B0"]: 0.45}
    assert tune.report(a1, 2, 0.1) == PAUSE and tune.report(a0, 2, 0.9) == CONTINUE
    assert tune.next_to_run() is a1 and tune.next_to_run() is None


def test_mode_min_stops_the_configuration_with_the_higher_mean():
    scheduler, tune = setup(mode="min")
    trials = [FakeTrial(label, seed) for label in "AB" for seed in (0, 1)]
    tune.add(*trials)
    for trial, value in zip(trials, [0.9, 0.1, 0.6, 0.6], strict=True):
        decision = tune.report(trial, 1, value)
    assert decision == STOP and tune.stopped == ["B0", "B1"]  # loss mean 0.6 > 0.5


def test_a_seed_is_never_resumed_while_it_waits_for_its_configuration():
    scheduler, tune = setup(num_seeds=3)
    a0, a1, a2 = (FakeTrial("A", s) for s in range(3))
    tune.add(a0, a1)
    assert tune.next_to_run() is a0 and tune.next_to_run() is a1
    assert tune.report(a0, 1, 0.7) == PAUSE and tune.report(a1, 1, 0.7) == PAUSE
    assert tune.next_to_run() is None  # both wait; seed 2 is not even created yet
    tune.add(a2)
    assert tune.next_to_run() is a2 and tune.next_to_run() is None
    assert tune.report(a2, 1, 0.1) == CONTINUE
    assert {tune.next_to_run(), tune.next_to_run()} == {a0, a1}


def test_a_seed_that_errors_before_the_rung_does_not_leave_the_others_waiting():
    scheduler, tune = setup()
    a0, a1, b0, b1 = FakeTrial("A", 0), FakeTrial("A", 1), FakeTrial("B", 0), FakeTrial("B", 1)
    tune.add(a0, a1, b0, b1)
    assert tune.report(a0, 1, 0.5) == PAUSE
    tune.error(a1)
    assert a0.status == "PAUSED" and tune.next_to_run() is b0  # decided with the seed that arrived ...
    tune.next_to_run()
    assert tune.next_to_run() is a0  # ... and it continues
    assert tune.report(b1, 1, 0.2) == PAUSE
    tune.error(b0)
    assert tune.next_to_run() is None and tune.stopped == ["B1"]  # B: 0.2 < 0.5, its waiting seed stopped


def test_a_seed_that_tune_retries_is_still_waited_for():
    scheduler, tune = setup()
    a0, a1 = FakeTrial("A", 0), FakeTrial("A", 1)
    tune.add(a0, a1)
    assert tune.report(a0, 1, 0.9) == PAUSE
    scheduler.on_trial_error(tune, a1)  # Tune's retry: on_trial_error, then the trial is re-added
    a1.status = "PENDING"
    scheduler.on_trial_add(tune, a1)
    assert tune.next_to_run() is a1 and tune.next_to_run() is None  # seed 0 still waits
    assert tune.report(a1, 1, 0.1) == CONTINUE and scheduler._rung_means[1] == {scheduler._key_of["A0"]: 0.5}


def test_a_seed_pausing_when_its_configuration_is_stopped_is_stopped_too():
    scheduler, tune = setup()
    trials = [FakeTrial(label, seed) for label in "AB" for seed in (0, 1)]
    tune.add(*trials)
    tune.report(trials[0], 1, 0.9), tune.report(trials[1], 1, 0.9)
    assert scheduler.on_trial_result(tune, trials[2], {"training_iteration": 1, "val_acc": 0.1}) == PAUSE
    trials[2].status, trials[2].is_saving = "RUNNING", True  # Tune is still writing its pause checkpoint
    assert tune.report(trials[3], 1, 0.1) == STOP and tune.stopped == ["B0", "B1"]


def test_save_and_restore_keep_the_decisions_and_repause_a_waiting_seed(tmp_path):
    scheduler, tune = setup()
    a0, a1, b0, b1 = FakeTrial("A", 0), FakeTrial("A", 1), FakeTrial("B", 0), FakeTrial("B", 1)
    tune.add(a0, a1, b0, b1)
    tune.report(a0, 1, 0.9), tune.report(a1, 1, 0.1)  # A continues at rung 1
    assert tune.report(b0, 1, 0.2) == PAUSE
    scheduler.save(str(tmp_path / "scheduler.pkl"))

    # A resumed experiment: Tune re-adds every trial, unfinished ones as PENDING, each from its last checkpoint.
    restored, tune = setup()
    restored.restore(str(tmp_path / "scheduler.pkl"))
    for trial in (a0, a1, b0, b1):
        trial.status = "PENDING"
    tune.add(a0, a1, b0, b1)
    assert tune.next_to_run() is a0 and b0.status == "PAUSED"  # B0 waits again instead of running on
    assert tune.report(a0, 1, 0.9) == CONTINUE  # a re-run of a decided rung follows the decision
    tune.next_to_run(), tune.next_to_run()
    assert tune.report(b1, 1, 0.2) == STOP and tune.stopped == ["B0", "B1"]
    assert restored.get_state()["_decisions"] == {(restored._key_of["A0"], 1): CONTINUE, (restored._key_of["B0"], 1): STOP}


def test_the_sweep_cap_leaves_a_slot_per_seed_when_asha_is_on():
    from mmtune.sweep.tuner import _max_concurrent

    spec = parse_spec({"name": "t", "method": "joint", "seeds": [0, 1, 2], "train": {"epochs": 4},
                       "scheduler": {"asha": {"grace_period": 1}}})
    assert _max_concurrent(spec, 1) == 3 and _max_concurrent(spec, 5) == 5
    assert _max_concurrent(parse_spec({"name": "t", "method": "joint", "seeds": [0, 1, 2]}), 1) == 1


def test_optuna_is_told_pruned_for_a_seed_stopped_while_paused():
    import optuna

    from mmtune.sweep.spec import optuna_base
    from mmtune.sweep.tuner import SeededOptunaSearcher

    spec = parse_spec({"name": "o", "method": "ogm", "train": {"epochs": 4}, "params": {"alpha": {"uniform": [0.1, 1.0]}},
                       "search": {"algorithm": "optuna", "num_samples": 1, "metric": "val_acc"}, "seeds": [0, 1]})
    fixed, space = optuna_base(spec)
    searcher = SeededOptunaSearcher(fixed=fixed, space=space, seeds=[0, 1], num_samples=1, metric="val_acc",
                                    mode="max", max_epochs=4)
    searcher.suggest("t0"), searcher.suggest("t1")
    searcher.on_trial_complete("t0", None)  # Tune's stop_trial of a PAUSED trial passes no result
    searcher.on_trial_complete("t1", {"val_acc": 0.3, "training_iteration": 1})
    assert searcher.samples["sample_0000"].told == "PRUNED"
    assert searcher.base._ot_study.trials[0].state == optuna.trial.TrialState.PRUNED


# -- one Ray sweep ----------------------------------------------------------------------------------
# val_acc of each (variant, seed), every epoch: seed means a 0.5, b 0.45, c 0.55.
SEED_VALUES = {"a": (0.9, 0.1), "b": (0.45, 0.45), "c": (0.2, 0.9)}


class SeedsDisagree(BalancedTrainable):
    """Trains as usual, then reports a val_acc fixed by the variant and the seed."""

    def step(self):
        metrics = super().step()
        metrics["val_acc"] = SEED_VALUES[self.config["label"]][self.config["seed"]]
        return metrics


@pytest.mark.slow
def test_a_sweep_with_disagreeing_seeds_stops_whole_configurations(ray_session, tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    spec = parse_spec({
        "name": "seeds", "method": [{"name": label, "method": "joint"} for label in SEED_VALUES], "seeds": [0, 1],
        "dataset": {"name": "synthetic", "n_train": 128, "n_val": 64, "n_test": 64},
        "train": {"epochs": 4, "batch_size": 64}, "search": {"metric": "val_acc", "mode": "max"},
        "scheduler": {"asha": {"grace_period": 1, "reduction_factor": 2}},
    })
    tuner, _ = build_tuner(spec, storage=str(tmp_path), name="seeds", console=Console(file=io.StringIO()), live=False,
                           trainable=SeedsDisagree)
    tuner.fit()
    trials = pd.read_parquet(tmp_path / "seeds" / "trials.parquet")
    assert len(trials) == 6 and set(trials["status"]) <= {"TERMINATED", "STOPPED_EARLY"}
    for label, rows in trials.groupby("label"):
        assert sorted(rows["seed"]) == [0, 1]
        assert rows["status"].nunique() == 1 and rows["epochs_run"].nunique() == 1, (label, rows[["seed", "status", "epochs_run"]])
    stopped = trials[trials["status"] == "STOPPED_EARLY"]
    assert len(stopped) >= 2 and (stopped["epochs_run"] < 4).all(), "nothing was stopped: the test checks nothing"
    # The decisions are in the experiment snapshot a resumed sweep restores.
    scheduler = tuner._local_tuner._tune_config.scheduler
    assert isinstance(scheduler, ConfigASHA) and scheduler.num_stopped == stopped["label"].nunique()
    (snapshot,) = glob.glob(str(tmp_path / "seeds" / "callback-states-*.pkl"))
    with open(snapshot, "rb") as f:
        states = [s for s in ray.cloudpickle.load(f).values() if s and "config_asha" in s]
    assert len(states) == 1 and states[0]["config_asha"]["_decisions"] == scheduler._decisions
