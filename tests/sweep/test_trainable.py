"""BalancedTrainable checkpoints hold tensors and plain values only and load with ``weights_only``: a
checkpoint in a sweep folder someone else wrote cannot run code (the conformance tests round-trip
every registered method's checkpoint through the same loader)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from mmtune.sweep.trainable import CHECKPOINT_FILE, BalancedTrainable, load_trial_state


class Payload:
    """What a crafted checkpoint could hold: unpickling it calls ``Path.touch(marker)``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.fixture
def trainable():
    trainable = BalancedTrainable(config=tiny_config("ogm"))
    trainable.train()
    yield trainable
    trainable.stop()


def test_a_checkpoint_is_tensors_and_plain_values(trainable, tmp_path):
    trainable.save_checkpoint(str(tmp_path))
    state = load_trial_state(str(tmp_path / CHECKPOINT_FILE))
    assert state["epoch"] == 1 and state["rng"]["data"].dtype == torch.uint8
    trainable.load_checkpoint(str(tmp_path))  # the Trainable's own path: weights_only too
    assert trainable.trial.epoch == 1


def test_a_checkpoint_holding_a_pickled_object_is_refused_unexecuted(trainable, tmp_path):
    marker = tmp_path / "code-ran"
    state = trainable.trial.state_dict()
    state["best"]["note"] = Payload(marker)
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ValueError, match="not an mmtune checkpoint.*could run code"):
        trainable.load_checkpoint(str(tmp_path))
    assert not marker.exists()
    torch.load(tmp_path / CHECKPOINT_FILE, weights_only=False)  # what the old loader did: the payload runs
    assert marker.exists()


@pytest.mark.parametrize("lost", ["folder", "file"])
def test_restoring_a_checkpoint_that_never_reached_the_storage_starts_the_trial_again(trainable, tmp_path, lost):
    """A disk that filled up while Tune recorded a checkpoint leaves its snapshot naming a folder (or a
    trial.pt) that was never written: the trial runs again from its first epoch, as a fresh one does."""
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint

    folder = tmp_path / "checkpoint_000002"
    if lost == "file":
        folder.mkdir()  # the folder was made, the file inside it never written
    trainable.train()
    trainable.restore(_TrainingResult(checkpoint=Checkpoint.from_directory(str(folder)), metrics={"training_iteration": 2}))
    assert trainable.trial.epoch == 0 and trainable.iteration == 0
    fresh = BalancedTrainable(config=tiny_config("ogm"))
    try:
        keys = ("train_loss", "val_acc", "trace/k/audio")
        got, expected = trainable.train(), fresh.train()
        assert {k: got[k] for k in keys} == {k: expected[k] for k in keys}
    finally:
        fresh.stop()


def test_restoring_a_checkpoint_that_exists_still_loads_it(trainable, tmp_path):
    checkpoint = trainable.save(str(tmp_path / "ckpt"))
    expected = trainable.train()
    trainable.train()
    trainable.restore(checkpoint)
    assert trainable.trial.epoch == 1 and trainable.train()["val_acc"] == expected["val_acc"]
