"""Shared fixtures. Ray is started once per test session, only by tests that ask for it."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Sweeps sign their pickles with a per-user key under $XDG_CONFIG_HOME (mmtune.sweep.signing): the
# tests (and the CLI subprocesses they start) use a key of their own, never the developer's.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="mmtune-tests-config-")

import pytest  # noqa: E402

# A small default trial: the synthetic set shrunk so a step takes milliseconds.
TINY = {
    "dataset": {"n_train": 256, "n_val": 96, "n_test": 96},
    "train": {"epochs": 3, "batch_size": 32},
}


def tiny_config(method: str, **sections: dict) -> dict:
    """A trial config on the tiny synthetic set, with per-section overrides."""
    config = {"method": method, "seed": 0, **{k: dict(v) for k, v in TINY.items()}}
    for key, value in sections.items():
        if isinstance(value, dict):
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    return config


def restore_into(trial, fresh):
    """Checkpoint ``trial`` as the Trainable does (torch.save of Trial.state_dict) and load it into the
    freshly built trial ``fresh``; returns ``fresh``."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(trial.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def check_restore_continues(config: dict):
    """Step a trial once, checkpoint it (:func:`restore_into`) into a fresh trial and step that twice: the
    metrics, timing keys aside, must equal epochs 2-3 of an uninterrupted run. Returns ``(restored,
    uninterrupted)`` for further checks (a method's own parameters, say)."""
    from mmtune.engine.trial import TIMING_KEYS, Trial, parse_trial_config

    uninterrupted = Trial(parse_trial_config(config))
    expected = [uninterrupted.step() for _ in range(3)]
    trial = Trial(parse_trial_config(config))
    trial.step()
    restored = restore_into(trial, Trial(parse_trial_config(config)))
    continued = [restored.step(), restored.step()]

    def strip(metrics):
        return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}

    assert [strip(m) for m in continued] == [strip(m) for m in expected[1:]]
    return restored, uninterrupted


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(
        address="local",  # never join a cluster some earlier process left running (/tmp/ray/ray_current_cluster)
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        namespace="mmtune-tests",
    )
    yield ray
    ray.shutdown()
