"""Ray Tune's own result files and the spec's ``logging:`` loggers (mmtune.sweep.loggers): a sweep
stays readable by ExperimentAnalysis / Tuner.restore, TensorBoard event files and an MLflow store."""

from __future__ import annotations

import glob
import io
import os
import struct
from pathlib import Path

import pytest
from rich.console import Console

from mmtune.errors import ConfigError
from mmtune.sweep import spec as spec_module
from mmtune.sweep.loggers import logger_callbacks, mlflow_tracking_uri, wandb_configured
from mmtune.sweep.spec import parse_spec

TINY = {"name": "synthetic", "n_train": 256, "n_val": 96, "n_test": 96}


def spec_of(**overrides):
    data = {"name": "logs", "method": ["joint", "ogm"], "dataset": dict(TINY), "train": {"epochs": 2, "batch_size": 64},
            "seeds": [0]}
    data.update(overrides)
    return parse_spec(data)


def problems(**overrides) -> list[str]:
    with pytest.raises(ConfigError) as err:
        spec_of(**overrides)
    return [f"{p.path}: {p.message}" for p in err.value.problems]


# ------------------------------------------------------------------------------------- the spec key
def test_logging_key_takes_known_names_once():
    assert spec_of().logging == ()
    assert spec_of(logging=["tensorboard"]).logging == ("tensorboard",)
    assert spec_of(logging="tensorboard").logging == ("tensorboard",)
    found = problems(logging=["tensorbord", "tensorboard", "tensorboard", 3])
    assert any(p.startswith("logging[0]: unknown logger 'tensorbord'. Did you mean 'tensorboard'? Valid loggers: "
                            "tensorboard, mlflow, wandb.") for p in found), found
    assert any(p.startswith("logging[2]: 'tensorboard' is listed twice") for p in found), found
    assert any(p.startswith("logging[3]: unknown logger 3.") for p in found), found
    assert problems(logging={"tensorboard": True})[0].startswith("logging: must be a list of logger names")


def test_logging_is_a_spec_key_for_the_sweep_overrides():
    from mmtune.cli import load_spec_with_overrides

    spec = load_spec_with_overrides("quickstart", ["logging=[tensorboard]"])
    assert spec.logging == ("tensorboard",)


def test_a_logger_whose_library_is_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(spec_module.LOGGERS, "wandb", ("mmtune_no_such_module", "wandb"))
    (found,) = problems(logging=["wandb"])
    assert found.startswith("logging[0]: the wandb logger needs the wandb package, which is not installed.")
    assert "pip install 'mmtune[logging]'" in found


def test_mlflow_store_and_wandb_mode_follow_the_users_setup(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_tracking_uri(str(tmp_path)) == f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI"):
        mlflow_tracking_uri("s3://bucket/sweep")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert mlflow_tracking_uri("s3://bucket/sweep") == "http://mlflow.example:5000"

    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not wandb_configured()  # no key, no login: offline
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password k\n")
    os.chmod(tmp_path / "netrc", 0o600)
    assert wandb_configured()
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert wandb_configured()


def test_wandb_logs_offline_into_the_sweep_unless_configured(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    (callback,) = logger_callbacks(("wandb",), path=str(tmp_path), name="s")[2:]
    assert callback.kwargs == {"mode": "offline", "dir": f"{tmp_path}.wandb"} and callback.group == "s"
    callback.setup()  # no API key asked for offline
    monkeypatch.setenv("WANDB_MODE", "online")
    (callback,) = logger_callbacks(("wandb",), path=str(tmp_path), name="s")[2:]
    assert "mode" not in callback.kwargs


# ----------------------------------------------------------------------------------- through Ray
def tensorboard_scalars(folder: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under ``folder``: TFRecord framing (length, CRC, data,
    CRC) around tensorboardX's Event protos."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    files = glob.glob(f"{folder}/**/events.out.tfevents.*", recursive=True)
    for file in files:
        data = Path(file).read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


@pytest.mark.slow
def test_sweep_keeps_ray_results_tensorboard_and_mlflow(ray_session, tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX")
    mlflow = pytest.importorskip("mlflow")
    import pandas as pd
    from ray import tune

    from mmtune.sweep.trainable import BalancedTrainable
    from mmtune.sweep.tuner import run_sweep

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = spec_of(logging=["tensorboard", "mlflow"])
    out = run_sweep(spec, storage=str(tmp_path), console=Console(file=io.StringIO()), live=False)
    assert out.ok and out.counts == {"TERMINATED": 2}
    # mlflow exports its tracking URI to the process; left there, the next sweep would log into this one's store
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert not glob.glob(f"{out.path}/**/params.pkl", recursive=True)  # no unsigned pickle in the folder
    trials = pd.read_parquet(f"{out.path}/trials.parquet")
    epochs = pd.read_parquet(f"{out.path}/epochs.parquet")

    # Ray Tune's own view of the sweep: every trial, every epoch.
    analysis = tune.ExperimentAnalysis(out.path)
    frame = analysis.dataframe()
    assert len(frame) == 2 and set(frame["trial_id"]) == set(trials["trial_id"])
    assert sorted(frame["val_acc"]) == sorted(epochs.loc[epochs["epoch"] == 2, "val_acc"])
    assert sum(len(df) for df in analysis.trial_dataframes.values()) == 4
    results = tune.Tuner.restore(out.path, trainable=BalancedTrainable).get_results()
    assert len(results) == 2 and not results.errors
    assert sorted(r.metrics["val_acc"] for r in results) == sorted(frame["val_acc"])

    # TensorBoard: one value per trial and epoch, equal to the stored table's.
    scalars = tensorboard_scalars(out.path)
    val = sorted(v for _, v in scalars["ray/tune/val_acc"])
    assert val == pytest.approx(sorted(epochs["val_acc"]), abs=1e-6)
    assert sorted(step for step, _ in scalars["ray/tune/val_acc"]) == [1, 1, 2, 2]

    # MLflow: an experiment named after the sweep in <sweep>/mlflow.db, one finished run per trial.
    client = mlflow.MlflowClient(f"sqlite:///{out.path}/mlflow.db")
    experiment = client.get_experiment_by_name("logs")
    assert experiment.artifact_location.endswith(f"{out.path}/mlartifacts")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2]
        assert run.data.tags["mmtune.sweep"] == "logs"
    stored = sorted(epochs["val_acc"])
    logged = sorted(m.value for r in runs for m in client.get_metric_history(r.info.run_id, "val_acc"))
    assert logged == pytest.approx(stored)
