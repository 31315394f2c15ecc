"""Optuna parameter importances of an Optuna sweep, from a study rebuilt from the stored tables.

The study holds one trial per configuration (``config_key``) valued at the mean, over its seeds that
ran to ``max_t`` (TERMINATED), of the sweep's search metric at the last epoch (what mmtune's searcher
tells Optuna). Seeds stopped early by ASHA, failed or unfinished never contribute a value; a
configuration none of whose seeds finished is left out. Both counts are reported. The distributions
come from the spec's domains in ``spec.json`` (choice → categorical, uniform → float, loguniform →
log float, int → int with inclusive bounds).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mmtune.report.data import SweepData, spec_domains
from mmtune.store.schema import TERMINATED

__all__ = ["Importances", "optuna_importances", "distributions"]


@dataclass
class Importances:
    values: dict[str, float]  # param -> normalised importance, most important first ({} when not computed)
    evaluator: str
    n_configs: int  # configurations in the rebuilt study
    n_partial: int  # of those, configurations valued on only some of their seeds (others not TERMINATED)
    n_left_out: int  # configurations without a finished seed (or with a value outside the spec's domains)
    objective: str
    reason: str = ""  # why nothing was computed
    warnings: list[str] = field(default_factory=list)


def distributions(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna distributions of the spec's sampled (non-grid) domains, by dotted key."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for path, (kind, values) in spec_domains(spec).items():
        if kind == "choice":
            out[path] = CategoricalDistribution(list(values))
        elif kind == "uniform":
            out[path] = FloatDistribution(float(values[0]), float(values[1]))
        elif kind == "loguniform":
            out[path] = FloatDistribution(float(values[0]), float(values[1]), log=True)
        elif kind == "int":
            out[path] = IntDistribution(int(values[0]), int(values[1]))
    return out


def _param_value(value: Any, dist: Any) -> Any:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ValueError("missing")
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(dist, IntDistribution):
        return int(value)
    if isinstance(dist, CategoricalDistribution):
        return value
    return float(value)


def optuna_importances(data: SweepData, outcomes: pd.DataFrame) -> Importances:
    """Rebuild the study and ask :func:`optuna.importance.get_param_importances` (its default evaluator)."""
    import optuna

    objective = str(data.meta.get("metric") or "val_acc")
    dists = {k: d for k, d in distributions(data.spec).items() if k in data.trials.columns}
    evaluator_name = "PED-ANOVA"  # optuna.importance.get_param_importances' default evaluator
    if not dists:
        return Importances({}, evaluator_name, 0, 0, 0, objective,
                           reason="the spec in spec.json has no sampled domain (choice/uniform/loguniform/int).")
    merged = data.trials[["trial_id", "config_key", *dists]].merge(
        outcomes[["trial_id", "status", "objective"]], on="trial_id", how="left")
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # no "A new study created in memory" chatter
    try:
        return _importances(optuna, data, merged, dists, objective, evaluator_name)
    finally:
        optuna.logging.set_verbosity(level)


def _importances(optuna: Any, data: SweepData, merged: pd.DataFrame, dists: dict[str, Any], objective: str,
                 evaluator_name: str) -> Importances:
    study = optuna.create_study(direction="minimize" if data.meta.get("mode") == "min" else "maximize")
    n_configs = n_partial = n_left_out = 0
    for _, rows in merged.groupby("config_key", sort=False):
        finished = rows[rows["status"] == TERMINATED]
        values = finished["objective"].astype(float).dropna()
        if values.empty:
            n_left_out += 1
            continue
        first = finished.iloc[0]
        try:
            params = {k: _param_value(first[k], d) for k, d in dists.items()}
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(values.mean())))
        except ValueError:  # a value outside its domain or missing: not a sample of this study
            n_left_out += 1
            continue
        n_configs += 1
        n_partial += int(len(values) < len(rows))
    result = Importances({}, evaluator_name, n_configs, n_partial, n_left_out, objective)
    if n_configs < 2:
        result.reason = (f"needs ≥ 2 configurations with a seed that finished; this sweep has {n_configs} "
                         f"({n_left_out} without one: stopped early by ASHA, failed or unfinished).")
        return result
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result.values = dict(optuna.importance.get_param_importances(study))
        result.warnings = sorted({str(w.message).splitlines()[0] for w in caught})
    except (ValueError, RuntimeError, ZeroDivisionError) as err:
        result.reason = f"optuna could not compute importances: {type(err).__name__}: {err}"
    return result
