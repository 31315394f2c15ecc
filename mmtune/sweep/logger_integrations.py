"""Ray's MLflow and W&B logger callbacks as mmtune's sweeps use them (see :mod:`mmtune.sweep.loggers`).

A module of its own: importing it imports mlflow (~2 s) and wandb, which only a sweep whose spec
names them should pay for.
"""

from __future__ import annotations

import numbers
import os
import time
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback
from ray.tune.result import TIMESTEPS_TOTAL, TRAINING_ITERATION
from ray.tune.utils import flatten_dict

__all__ = ["SweepMLflowLogger", "SweepWandbLogger"]


class SweepMLflowLogger(MLflowLoggerCallback):
    """Ray's MLflow callback with the experiment's artifacts kept under the sweep folder (MLflow's
    default, ``./mlruns``, would be wherever the driver was started)."""

    def __init__(self, tracking_uri: str, *, experiment_name: str, artifact_location: str | None,
                 tags: dict[str, str]):
        super().__init__(tracking_uri, experiment_name=experiment_name, tags=tags)
        self.artifact_location = artifact_location

    def setup(self, *args: Any, **kwargs: Any) -> None:
        # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI to the whole process: the next sweep run
        # in it would take that for the user's own setting and log into this sweep's store.
        exported = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            if self.artifact_location is not None:  # creates the experiment there; super().setup() reuses it
                self.mlflow_util.setup_mlflow(tracking_uri=self.tracking_uri, experiment_name=self.experiment_name,
                                              artifact_location=self.artifact_location)
            super().setup(*args, **kwargs)
        finally:
            if exported is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = exported
        self._client = None

    # Ray's callback logs each metric and each parameter as its own request: with ~40 metrics an epoch that
    # held the Tune driver ~0.66 s per result on an SQLite store. One batch per result instead (~20 ms).
    def log_trial_start(self, trial: Any) -> None:
        from mlflow.entities import Param

        if trial not in self._trial_runs:
            run = self.mlflow_util.start_run(tags={**self.tags, "trial_name": str(trial)}, run_name=str(trial))
            self._trial_runs[trial] = run.info.run_id
        params = [Param(key, str(value)) for key, value in flatten_dict(trial.config, delimiter="/").items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self._mlflow_client().log_batch(self._trial_runs[trial], params=params[i:i + 100])

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        from mlflow.entities import Metric

        step = int(result.get(TIMESTEPS_TOTAL) or result[TRAINING_ITERATION])
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in flatten_dict(result, delimiter="/").items()
                   if isinstance(value, numbers.Real) and not isinstance(value, bool) and key != "config"]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self._mlflow_client().log_batch(self._trial_runs[trial], metrics=metrics[i:i + 1000])

    def _mlflow_client(self) -> Any:
        if getattr(self, "_client", None) is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}


class SweepWandbLogger(WandbLoggerCallback):
    """Ray's W&B callback; offline (``mode="offline"``) it needs no API key, which Ray's setup demands."""

    def setup(self, *args: Any, **kwargs: Any) -> None:
        if self.kwargs.get("dir"):
            os.makedirs(self.kwargs["dir"], exist_ok=True)
        if self.kwargs.get("mode") == "offline":
            self.api_key_file = None
            return  # project and group are given; the trials' wandb.init(mode="offline") needs no login
        super().setup(*args, **kwargs)
