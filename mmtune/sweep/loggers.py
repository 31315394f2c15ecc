"""Ray Tune's own result files and loggers in a sweep (the spec's ``logging:`` key).

Every sweep keeps Ray Tune's per-trial ``result.json`` and ``progress.csv`` (plus ``params.json``; not
``params.pkl``), so
that ``ray.tune.ExperimentAnalysis(<sweep>)`` and ``Tuner.restore(<sweep>, trainable).get_results()``
return the sweep's trials; mmtune's Parquet tables stay the source of its reports. ``logging:`` adds,
by name (:data:`mmtune.sweep.spec.LOGGERS`; libraries from ``pip install 'mmtune[logging]'``):

* ``tensorboard`` — :class:`ray.tune.logger.TBXLoggerCallback`: ``events.out.tfevents.*`` in each trial
  folder (``tensorboard --logdir <sweep>``).
* ``mlflow`` — :class:`ray.air.integrations.mlflow.MLflowLoggerCallback`, one MLflow run per trial in
  the experiment named after the sweep. By default the store is local, in the sweep folder: an SQLite
  database ``mlflow.db`` (MLflow 3 refuses its old file store unless told otherwise) with artifacts
  under ``mlartifacts/`` (``mlflow ui --backend-store-uri sqlite:///<sweep>/mlflow.db``).
  ``MLFLOW_TRACKING_URI`` set by the user wins.
* ``wandb`` — :class:`ray.air.integrations.wandb.WandbLoggerCallback`, project ``$WANDB_PROJECT`` or
  ``mmtune``, grouped by the sweep's name. Offline unless the user configured W&B (``WANDB_MODE`` or
  ``WANDB_API_KEY`` set, or a ``wandb login``); its local files go beside the sweep folder, in
  ``<storage>/<name>.wandb/wandb/`` (``wandb sync`` uploads an offline run later).

The callbacks run on the driver (W&B: in a Ray actor per trial) and travel in ``tuner.pkl``. The MLflow
and W&B ones live in :mod:`mmtune.sweep.logger_integrations`, imported only by a sweep that asks for
them (importing mlflow takes seconds).
"""

from __future__ import annotations

import json
import netrc
import os
from pathlib import Path
from typing import Any

from ray.tune.logger import JsonLoggerCallback
from ray.tune.result import EXPR_PARAM_FILE, EXPR_RESULT_FILE
from ray.tune.utils.util import SafeFallbackEncoder

from mmtune.errors import ConfigError, Problem

__all__ = ["check_loggers", "logger_callbacks", "mlflow_tracking_uri", "wandb_configured"]

MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
WANDB_SUFFIX = ".wandb"  # W&B's local files: <storage>/<name>.wandb/wandb/


def logger_callbacks(loggers: tuple[str, ...], *, path: str, name: str) -> list:
    """Ray Tune's JSON and CSV result files, then the spec's ``loggers`` for the sweep at ``path``."""
    from ray.tune.logger import CSVLoggerCallback

    callbacks: list[Any] = [JsonResults(), CSVLoggerCallback()]
    for logger in loggers:
        if logger == "tensorboard":
            from ray.tune.logger import TBXLoggerCallback

            callbacks.append(TBXLoggerCallback())
        elif logger == "mlflow":
            uri = mlflow_tracking_uri(path)
            artifacts = None if "://" in path or os.environ.get("MLFLOW_TRACKING_URI") else f"{path}/{MLFLOW_ARTIFACTS}"
            from mmtune.sweep.logger_integrations import SweepMLflowLogger  # imports mlflow (~2 s): only when asked

            callbacks.append(SweepMLflowLogger(uri, experiment_name=name, artifact_location=artifacts,
                                               tags={"mmtune.sweep": name}))
        elif logger == "wandb":
            offline = not wandb_configured()
            kwargs: dict[str, Any] = {"mode": "offline"} if offline else {}
            if "://" not in path:
                # Beside the sweep folder, not in it: wandb's run folders hold symbolic links (latest-run, the
                # debug logs), which `mmtune resume` refuses to find in a sweep folder (mmtune.sweep.signing).
                kwargs["dir"] = f"{path}{WANDB_SUFFIX}"  # wandb writes <dir>/wandb/offline-run-*
            from mmtune.sweep.logger_integrations import SweepWandbLogger

            callbacks.append(SweepWandbLogger(project=os.environ.get("WANDB_PROJECT") or "mmtune", group=name,
                                              **kwargs))
        else:  # parse_spec refuses any other name
            raise ValueError(f"unknown logger {logger!r}")
    return callbacks


def check_loggers(loggers: tuple[str, ...], *, path: str) -> None:
    """What the loggers need of the sweep's storage, checked before anything is written (ConfigError)."""
    if "mlflow" in loggers:
        mlflow_tracking_uri(path)


def mlflow_tracking_uri(path: str) -> str:
    """``MLFLOW_TRACKING_URI`` if the user set one, else the SQLite store in the (local) sweep folder."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if "://" in path:
        raise ConfigError(Problem("logging", f"mlflow: the sweep is stored at {path}, where MLflow cannot keep a local "
                                             "store. Set MLFLOW_TRACKING_URI (an MLflow server or a local "
                                             "sqlite:///…/mlflow.db), or drop mlflow from logging."))
    return f"sqlite:///{os.path.abspath(path)}/{MLFLOW_DB}"


def wandb_configured() -> bool:
    """Whether the user set W&B up: ``WANDB_MODE`` or ``WANDB_API_KEY``, or ``wandb login`` (its netrc entry)."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return True
    try:
        file = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
        return netrc.netrc(file).authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class JsonResults(JsonLoggerCallback):
    """Ray's ``result.json`` and ``params.json`` per trial, without ``params.pkl``: the config is plain data,
    and a sweep folder holds no pickle that mmtune does not sign and resuming does not need
    (:mod:`mmtune.sweep.signing`)."""

    _SAVED_FILE_TEMPLATES = [EXPR_RESULT_FILE, EXPR_PARAM_FILE]

    def update_config(self, trial: Any, config: dict) -> None:
        self._trial_configs[trial] = config
        with Path(trial.local_path, EXPR_PARAM_FILE).open("w") as f:
            json.dump(config, f, indent=2, sort_keys=True, cls=SafeFallbackEncoder)
