"""The Ray Tune contract, written once (DESIGN §2): one ``step()`` is one epoch.

``BalancedTrainable`` wraps a :class:`~mmtune.engine.trial.Trial` and takes the method from
``config["method"]``: one Trainable runs every registered method (and every composition), in sweeps
and tests alike, so one Tuner can grid over methods. ``reset_config`` rebuilds the trial in place,
so Tune can reuse actors across trials instead of paying a fresh Python + torch start-up for each
(DESIGN §5).

It lives in the sweep package, not the engine: the engine (and ``mmtune run``) never imports Ray.
Importing this module registers the built-in methods, so a Ray worker that unpickles the class has
them.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch
from ray import tune

import mmtune.trainables  # noqa: F401  registers the built-in methods in this process (Ray workers too)
from mmtune.data.synthetic import SyntheticConfig, bayes_metrics
from mmtune.engine.threads import configure_threads, trial_threads
from mmtune.engine.trial import Trial, parse_trial_config

__all__ = ["BalancedTrainable", "CHECKPOINT_FILE", "load_trial_state"]

CHECKPOINT_FILE = "trial.pt"
logger = logging.getLogger(__name__)


def load_trial_state(path: str, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A ``trial.pt`` written by ``save_checkpoint``: tensors, numbers, strings and containers of them
    (:meth:`Trial.state_dict`), read with ``weights_only=True``, so a checkpoint in a sweep folder someone
    else wrote cannot run code: a pickled object of any other type is refused, unexecuted."""
    import pickle

    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} is not an mmtune checkpoint: it holds a pickled object beyond tensors and "
                         f"plain values, which mmtune never writes; refusing to load it (unpickling it could run "
                         f"code). {str(err).splitlines()[0]}") from None


class BalancedTrainable(tune.Trainable):
    """Checkpoints are time-based: ``step`` asks Tune for one (``should_checkpoint``) after the first
    epoch that ends ``checkpoint_every_s`` after the last one (0: every epoch); the sweep also
    checkpoints at each trial's end. Each checkpoint makes Tune snapshot the experiment, which per
    short epoch would cost more than the epoch itself."""

    checkpoint_every_s: float = 0.0

    def _build(self, config: dict[str, Any]) -> None:
        self.trial = Trial(parse_trial_config(config))
        self._last_checkpoint = time.monotonic()
        # On the built-in synthetic set: the Bayes-optimal accuracy of its generative model, stored with
        # every epoch so that reports can show how far the methods are from it (cached per model).
        dataset = self.trial.spec.dataset
        self._limits = bayes_metrics(dataset) if isinstance(dataset, SyntheticConfig) else {}

    def setup(self, config: dict[str, Any], checkpoint_every_s: float | None = None, cpus: float | None = None) -> None:
        if checkpoint_every_s is not None:  # given by the sweep through tune.with_parameters
            self.checkpoint_every_s = checkpoint_every_s
        if cpus is not None:  # the trial's resources.cpu: a pool no larger than its share (mmtune.engine.threads)
            configure_threads(trial_threads(cpus))
        self._build(config)

    def step(self) -> dict[str, float]:
        metrics: dict[str, Any] = {**self.trial.step(), **self._limits}
        if self.trial.epoch >= self.trial.spec.train.epochs:
            metrics["done"] = True
        now = time.monotonic()
        if now - self._last_checkpoint >= self.checkpoint_every_s:
            metrics["should_checkpoint"] = True
            self._last_checkpoint = now
        return metrics

    def restore(self, checkpoint_path: Any) -> None:
        """Tune's restore, except that a checkpoint which never reached the storage starts the trial again
        from its first epoch instead of failing it: a disk that filled up while Tune recorded the checkpoint
        (its folder, or its ``trial.pt``, was never written) leaves Tune's snapshot naming it, and
        ``mmtune resume`` would otherwise end that trial in ERROR. The trial is deterministic, and the results
        writer drops the rows of the abandoned run as the new one reports the same epochs again."""
        checkpoint = _checkpoint_of(checkpoint_path)
        if checkpoint is not None and not _holds_trial_state(checkpoint):
            logger.warning("the checkpoint %s never reached the storage (no %s there): the trial starts again "
                           "from its first epoch", checkpoint.path, CHECKPOINT_FILE)
            self._build(self.config)
            self._iteration, self._time_total = 0, 0.0  # Tune's counters, as on a trial that never ran
            return
        super().restore(checkpoint_path)

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        torch.save(self.trial.state_dict(), os.path.join(checkpoint_dir, CHECKPOINT_FILE))

    def load_checkpoint(self, checkpoint: dict[str, Any] | str | None) -> None:
        if isinstance(checkpoint, dict):
            state = checkpoint
        else:
            path = os.path.join(checkpoint, CHECKPOINT_FILE) if os.path.isdir(str(checkpoint)) else str(checkpoint)
            state = load_trial_state(path, self.trial.device)
        self.trial.load_state_dict(state)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self._build(new_config)
        self.config = new_config
        return True


def _checkpoint_of(checkpoint_path: Any) -> tune.Checkpoint | None:
    """The :class:`ray.tune.Checkpoint` Tune asks a Trainable to restore: a path, a Checkpoint, or a
    training result carrying one (what the Tune controller passes); None for anything else."""
    if isinstance(checkpoint_path, str | os.PathLike):
        return tune.Checkpoint.from_directory(os.fspath(checkpoint_path))
    if isinstance(checkpoint_path, tune.Checkpoint):
        return checkpoint_path
    checkpoint = getattr(checkpoint_path, "checkpoint", None)
    return checkpoint if isinstance(checkpoint, tune.Checkpoint) else None


def _holds_trial_state(checkpoint: tune.Checkpoint) -> bool:
    import pyarrow.fs as pafs

    info = checkpoint.filesystem.get_file_info(f"{checkpoint.path.rstrip('/')}/{CHECKPOINT_FILE}")
    return info.type == pafs.FileType.File
