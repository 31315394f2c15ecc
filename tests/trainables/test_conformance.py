"""Every registered method, tested without anyone writing a test for it (timm style).

For each method in the registry: setup + 2 steps on the synthetic set give every DESIGN §3.3 metric,
finite; the same seed gives the same metrics; save → restore → continue equals an uninterrupted
run; the one Ray Trainable runs it and keeps the Trainable contract (in-process; through Ray actors,
``validate_save_restore``, for representatives of each kind of method state).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import restore_into, tiny_config

from mmtune.engine.trial import TIMING_KEYS, Trial, parse_trial_config
from mmtune.sweep.trainable import BalancedTrainable
from mmtune.trainables import COMPOSITIONS, list_methods

ALL_METHODS = list_methods() + COMPOSITIONS

# Hyperparameters a method needs to be exercised at all on the tiny set's 2-3 step runs.
CONFORMANCE_PARAMS: dict[str, dict] = {
    "valuation": {"start_epoch": 2},  # the code's 5 warm-up epochs would leave the method off
}

REQUIRED = [
    "epoch", "train_loss", "val_acc", "val_macro_f1", "val_map", "test_acc", "test_macro_f1", "test_map",
    "epoch_s", "samples_per_s", "best_val_acc", "best_epoch", "test_acc_at_best_val",
]


def config_for(method: str) -> dict:
    return tiny_config(method, params=CONFORMANCE_PARAMS.get(method, {}))


def run(method: str, steps: int) -> list[dict[str, float]]:
    trial = Trial(parse_trial_config(config_for(method)))
    return [trial.step() for _ in range(steps)]


def without_timing(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


@pytest.mark.parametrize("method", ALL_METHODS)
def test_two_steps_report_every_metric_finite(method):
    history = run(method, 2)
    trial_modalities = [k.split("/", 1)[1] for k in history[-1] if k.startswith("val_acc/")]
    assert trial_modalities, "per-modality accuracy val_acc/<modality> missing"
    for epoch, metrics in enumerate(history, start=1):
        assert metrics["epoch"] == epoch
        for key in REQUIRED:
            assert key in metrics, f"{method} does not report {key}"
        if len(trial_modalities) > 1:
            for m in trial_modalities:
                assert f"imbalance/{m}" in metrics
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        assert not bad, f"non-finite metrics: {bad}"
        assert 0.0 <= metrics["val_acc"] <= 1.0


@pytest.mark.parametrize("method", ALL_METHODS)
def test_same_seed_same_metrics(method):
    first, second = run(method, 2), run(method, 2)
    assert [without_timing(m) for m in first] == [without_timing(m) for m in second]


@pytest.mark.parametrize("method", ALL_METHODS)
def test_save_restore_continue_equals_uninterrupted(method):
    uninterrupted = run(method, 3)
    trial = Trial(parse_trial_config(config_for(method)))
    trial.step()
    restored = restore_into(trial, Trial(parse_trial_config(config_for(method))))
    continued = [restored.step(), restored.step()]
    assert [without_timing(m) for m in continued] == [without_timing(m) for m in uninterrupted[1:]]


@pytest.mark.parametrize("method", ALL_METHODS)
def test_trainable_checkpoint_roundtrip_in_process(method, tmp_path):
    cls = BalancedTrainable
    a = cls(config=config_for(method))
    b = cls(config=config_for(method))
    try:
        a.train()
        checkpoint = a.save(str(tmp_path / "ckpt"))
        expected = without_timing(a.train())
        b.restore(checkpoint)
        got = without_timing(b.train())
    finally:
        a.stop()
        b.stop()
    ray_keys = {"training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "time_since_restore",
                "iterations_since_restore", "timesteps_total", "episodes_total", "timesteps_since_restore",
                "date", "pid", "hostname", "node_ip", "trial_id", "experiment_id", "config", "done", "should_checkpoint"}
    assert got["training_iteration"] == expected["training_iteration"] == 2
    assert {k: v for k, v in got.items() if k not in ray_keys} == {k: v for k, v in expected.items() if k not in ray_keys}


# Through Ray actors (validate_save_restore: a checkpoint saved in one actor, restored in another). The
# Trainable is one class for every method, and every method's state already goes through its save/restore
# in test_trainable_checkpoint_roundtrip_in_process; the actors add only the transport (~6 s per method),
# so they run for representatives of each kind of state: none, per-step statistics, extra parameters, a
# composition, stages with a fresh optimizer, a re-sampled epoch.
RAY_ROUNDTRIP = ["joint", "ogm", "aim", "opm+amss", "umt", "valuation"]


@pytest.mark.slow
@pytest.mark.parametrize("method", RAY_ROUNDTRIP)
def test_ray_validate_save_restore(method, ray_session):
    from ray.tune.utils import validate_save_restore

    config = config_for(method)
    config["train"]["epochs"] = 6  # validate_save_restore runs five steps
    assert validate_save_restore(BalancedTrainable, config)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_trainable_reset_config_rebuilds_the_trial(method):
    cls = BalancedTrainable
    trainable = cls(config=config_for(method))
    try:
        trainable.train()
        assert trainable.reset_config(tiny_config(method, seed=1, params=CONFORMANCE_PARAMS.get(method, {})))
        assert trainable.trial.epoch == 0 and trainable.trial.spec.seed == 1
        fresh = Trial(parse_trial_config(tiny_config(method, seed=1, params=CONFORMANCE_PARAMS.get(method, {}))))
        assert without_timing(trainable.trial.step()) == without_timing(fresh.step())
    finally:
        trainable.stop()


# The field's baselines run on a real dataset's prepared cache with ResNet-18 (CREMA-D fixture), not only
# on the synthetic set's tensors: the methods that pass over the training split themselves (prototypes,
# held-out estimates, utilisation rates, a hypergradient batch, valuations) most of all — PMR and
# G-Blending once read ``split.labels``, which the cache does not have.
SPLIT_PASSES = {"pmr": {}, "gblending": {"super_epoch": 1}, "greedy": {}, "lfm": {}, "valuation": {"start_epoch": 1},
                "reconboost": {}, "relearn": {"interval": 1, "timing": "multiple"}, "mla": {}, "umt": {},
                "mmcosine": {}, "cml": {}, "mmpareto": {}, "amco": {}, "mbsd": {}}
# Epochs a method needs before it does what is tested (UMT: a teacher stage per modality, then its student;
# relearn's first diagnosis is at epoch 2; its pass on this fixture is also in test_relearn.py).
SPLIT_EPOCHS = {"umt": 3, "relearn": 2}


@pytest.fixture(scope="module")
def cremad_root(tmp_path_factory):
    from tests.data.test_cremad import write_cremad

    return write_cremad(tmp_path_factory.mktemp("cremad") / "cremad", csv="ogm")


@pytest.mark.slow
@pytest.mark.parametrize("method", list(SPLIT_PASSES))
def test_methods_that_pass_over_the_training_split_run_on_a_real_dataset_cache(method, cremad_root):
    epochs = SPLIT_EPOCHS.get(method, 1)
    config = {"method": method, "seed": 0, "params": SPLIT_PASSES[method], "train": {"epochs": epochs, "batch_size": 12},
              "dataset": {"name": "cremad", "root": str(cremad_root), "workers": 0, "image_size": 32},
              "model": {"backbone": "resnet18"}}
    trial = Trial(parse_trial_config(config))
    for _ in range(epochs):
        metrics = trial.step()
        assert all(math.isfinite(v) for v in without_timing(metrics).values())
