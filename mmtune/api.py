"""A sweep in a notebook: ``mmtune.load(path)`` and ``mmtune.study(path)``.

Both read the sweep's stored tables only (:mod:`mmtune.report.data`), never Ray's files or a
trainable, so a sweep copied off a cluster opens anywhere pandas and pyarrow do::

    import mmtune
    sweep = mmtune.load("runs/quickstart")
    sweep.summary                 # one row per variant: mean/std/n over finished seeds (the report's table)
    sweep.epochs.query("trial_id == @tid")[["epoch", "val_acc"]]
    study = mmtune.study("runs/optuna_ogm_ge")        # an Optuna sweep as an in-memory optuna.Study
    optuna.visualization.matplotlib.plot_slice(study)

The numbers follow the report's rules (DESIGN §4): each trial's best epoch is selected on the
validation ``metric`` only; test metrics are read at that epoch; a variant's mean is over its seeds
that finished (``TERMINATED``) — the others are counted, never averaged in.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

__all__ = ["SweepResults", "load", "study"]

TEST_COLUMNS = ("test_acc", "test_macro_f1", "test_map")  # as the report's ablation table


@dataclass
class SweepResults:
    """One sweep's tables and its ablation summary (what :func:`load` returns)."""

    name: str
    path: str
    metric: str  # the validation column that selects each trial's best epoch
    axes: list[str]  # dotted keys that make a variant (seeds excluded)
    epochs: pd.DataFrame  # one row per (trial, epoch): the epochs table
    trials: pd.DataFrame  # one row per trial: the trials table (plus a column per axis)
    outcomes: pd.DataFrame  # one row per trial: status, seed, best_epoch and every metric at it
    summary: pd.DataFrame  # one row per variant: (metric, mean | std | n) and (seeds, finished | trials)
    meta: dict[str, Any] = field(repr=False)  # spec.json (the spec, the command, the hardware …)
    notes: list[str] = field(default_factory=list)

    @property
    def spec(self) -> dict[str, Any]:
        spec = self.meta.get("spec")
        return spec if isinstance(spec, dict) else {}

    def __repr__(self) -> str:
        return (f"SweepResults({self.name!r}, {len(self.trials)} trials, {len(self.epochs)} epochs, "
                f"{len(self.summary)} variants; axes: {', '.join(self.axes) or 'none'})")


def load(path: str | os.PathLike[str], *, metric: str = "val_acc", storage: str = "runs") -> SweepResults:
    """Read a sweep folder (or a sweep name under ``storage``) into data frames and its summary.

    ``summary`` holds, per variant (index: the variant's axis values), the mean, standard deviation and
    count over its finished seeds of ``metric`` at each trial's best epoch and of each test metric at that
    epoch: the numbers of the report's ablation table (:func:`mmtune.report.tables.ablation_table`).
    """
    from mmtune.report.data import check_metric, group_variants, load_sweep, trial_outcomes
    from mmtune.report.stats import summarize

    data = load_sweep(os.fspath(path), storage=storage)
    column = check_metric(data, metric)
    outcomes = trial_outcomes(data, column)
    variants = group_variants(data, outcomes)
    metrics = [column, *(c for c in TEST_COLUMNS if c in outcomes.columns)]
    rows = []
    for variant in variants:
        done = variant.finished()
        row: dict[tuple[str, str], Any] = {}
        for m in metrics:
            s = summarize(done[m].tolist() if m in done.columns else [])
            row[(m, "mean")], row[(m, "std")], row[(m, "n")] = s.mean, s.std, s.n
        row[("seeds", "finished")], row[("seeds", "trials")] = len(done), len(variant.trials)
        rows.append(row)
    if data.axes:
        index = pd.MultiIndex.from_tuples([tuple(v.values.get(a) for a in data.axes) for v in variants],
                                          names=data.axes) if len(data.axes) > 1 else \
            pd.Index([v.values.get(data.axes[0]) for v in variants], name=data.axes[0])
    else:
        index = pd.Index([v.name for v in variants], name="variant")
    summary = pd.DataFrame(rows, index=index)
    summary.columns = pd.MultiIndex.from_tuples(summary.columns)
    return SweepResults(name=data.name, path=data.path, metric=column, axes=list(data.axes), epochs=data.epochs,
                        trials=data.trials, outcomes=outcomes, summary=summary, meta=data.meta, notes=list(data.notes))


def study(path: str | os.PathLike[str], *, storage: str = "runs") -> Any:
    """An Optuna sweep as an in-memory :class:`optuna.Study`, one trial per sampled configuration, as
    mmtune's searcher told Optuna (:class:`mmtune.sweep.tuner.SeededOptunaSearcher`):

    * COMPLETE, valued at the mean over its seeds of the sweep's metric at their last epoch, when every
      seed finished (``TERMINATED``);
    * PRUNED when a seed was stopped early by ASHA, FAIL when one errored (no value);
    * left out while a seed has not ended.

    Parameters are the spec's sampled domains (dotted keys such as ``params.alpha``, ``train.lr``) with
    their distributions; each trial's ``intermediate_values`` are the seed mean per epoch and its user
    attributes name its Ray trials and seeds. ``optuna.visualization`` works on it.
    """
    import optuna

    from mmtune.errors import ConfigError, Problem
    from mmtune.report.data import load_sweep, selection_column, trial_outcomes
    from mmtune.report.importance import distributions
    from mmtune.store.schema import ERROR, STOPPED_EARLY, TERMINATED

    data = load_sweep(os.fspath(path), storage=storage)
    if data.algorithm != "optuna":
        raise ConfigError(Problem(data.path, f"is a {data.algorithm} sweep: an Optuna study is rebuilt from a sweep "
                                             "with search.algorithm: optuna. Use mmtune.load() for its tables."))
    dists = {k: d for k, d in distributions(data.spec).items() if k in data.trials.columns}
    if not dists:
        raise ConfigError(Problem(data.path, "its spec (spec.json) has no sampled domain (choice, uniform, "
                                             "loguniform, int): there are no parameters to rebuild."))
    objective = str(data.meta.get("metric") or "val_acc")
    outcomes = trial_outcomes(data, selection_column(objective))  # its "objective": the metric at the last epoch
    status = dict(zip(outcomes["trial_id"], outcomes["objective"], strict=True))
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # no "A new study created in memory" line
    try:
        result = optuna.create_study(study_name=data.name,
                                     direction="minimize" if data.meta.get("mode") == "min" else "maximize")
    finally:
        optuna.logging.set_verbosity(level)
    seeds = data.spec.get("seeds", [0])
    n_seeds = seeds if isinstance(seeds, int) else len(seeds) if isinstance(seeds, list) else 1
    for config_key, rows in data.trials.groupby("config_key", sort=False):
        states = set(rows["status"])
        first = rows.iloc[0]
        params = {k: _param_value(first[k], d) for k, d in dists.items()}
        per_epoch = data.epochs[data.epochs["trial_id"].isin(rows["trial_id"])]
        intermediate = {}
        if objective in per_epoch.columns:
            means = per_epoch.groupby("epoch")[objective].mean()
            intermediate = {int(e): float(v) for e, v in means.items() if math.isfinite(v)}
        attrs = {"config_key": config_key, "trial_ids": list(rows["trial_id"]), "seeds": [int(s) for s in rows["seed"]]}
        if ERROR in states:
            state, value = optuna.trial.TrialState.FAIL, None
        elif STOPPED_EARLY in states:
            state, value = optuna.trial.TrialState.PRUNED, None
        elif states == {TERMINATED} and len(rows) >= n_seeds:
            state, value = optuna.trial.TrialState.COMPLETE, float(pd.Series([status[t] for t in rows["trial_id"]]).mean())
        else:
            continue  # a seed still pending or running, or interrupted: not told to Optuna yet
        result.add_trial(optuna.trial.create_trial(state=state, value=value, params=params, distributions=dists,
                                                   intermediate_values=intermediate, user_attrs=attrs))
    return result


def _param_value(value: Any, dist: Any) -> Any:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if hasattr(value, "item"):
        value = value.item()
    if isinstance(dist, IntDistribution):
        return int(value)
    if isinstance(dist, CategoricalDistribution):
        return value
    return float(value)
