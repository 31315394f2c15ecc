"""Sweeps through Ray Tune, end to end: grid and Optuna + ASHA on 2 CPUs, Arrow tables, trial
failure and restore, a killed driver resumed by `mmtune resume`, and a multi-node local cluster."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from mmtune.sweep.trainable import BalancedTrainable
from mmtune.engine.trial import TIMING_KEYS, Trial, parse_trial_config
from mmtune.sweep.spec import parse_spec
from mmtune.sweep.tuner import build_tuner, run_sweep

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TINY = {"name": "synthetic", "n_train": 256, "n_val": 96, "n_test": 96}


def quiet() -> Console:
    return Console(file=io.StringIO(), force_terminal=False, width=120)


def spec_of(**overrides) -> object:
    data = {"name": "t", "method": "joint", "dataset": dict(TINY), "train": {"epochs": 2, "batch_size": 64}, "seeds": [0]}
    data.update(overrides)
    return parse_spec(data)


def tables(path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(f"{path}/epochs.parquet"), pd.read_parquet(f"{path}/trials.parquet")


def test_grid_sweep_writes_one_row_per_trial_epoch(ray_session, tmp_path):
    spec = spec_of(method=["joint", {"name": "ogm-ge", "method": "ogm", "params": {"ge": True}}], seeds=[0, 1],
                   params={"start_epoch": {"grid": [1, 2]}})
    out = run_sweep(spec, storage=str(tmp_path), console=quiet(), live=False)
    assert out.counts == {"TERMINATED": 8} and out.ok
    epochs, trials = tables(out.path)
    assert len(trials) == 8 and len(epochs) == 16
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    got = sorted(zip(trials["label"], trials["params.start_epoch"], trials["seed"], strict=True))
    assert got == sorted((lab, e, s) for lab in ("joint", "ogm-ge") for e in (1, 2) for s in (0, 1))
    assert (trials.loc[trials["label"] == "ogm-ge", "method"] == "ogm").all()
    assert (trials["epochs_run"] == 2).all() and trials["best_val_acc"].between(0, 1).all()
    meta = json.loads(Path(out.path, "spec.json").read_text())
    assert meta["num_trials"] == 8 and meta["axes"] == ["label", "params.start_epoch"]


def test_optuna_asha_sweep_keeps_stopped_trials_out_of_the_posterior(ray_session, tmp_path):
    import optuna

    # ASHA judges configurations by their seed mean: the learning rate makes them differ (α and E alone
    # barely move val_acc in 4 epochs on this set, so no configuration would be stopped).
    spec = spec_of(
        name="opt", method="ogm", train={"epochs": 4, "batch_size": 64, "lr": {"loguniform": [0.001, 0.3]}}, seeds=[0, 1],
        params={"alpha": {"loguniform": [0.01, 3.0]}, "start_epoch": {"int": [1, 3]}},
        search={"algorithm": "optuna", "num_samples": 5, "metric": "val_acc", "mode": "max"},
        scheduler={"asha": {"grace_period": 1, "reduction_factor": 3}},
    )
    tuner, searcher = build_tuner(spec, storage=str(tmp_path), name="opt", console=quiet(), live=False)
    tuner.fit()
    _, trials = tables(str(tmp_path / "opt"))
    assert len(trials) == 10 and set(trials["status"]) <= {"TERMINATED", "STOPPED_EARLY"}
    assert (trials["status"] == "STOPPED_EARLY").any(), "ASHA stopped nothing: the test checks nothing"
    by_sample = {sid: sample for sid, sample in searcher.samples.items()}
    states = {t.number: t.state for t in searcher.base._ot_study.trials}
    assert len(by_sample) == 5 and len(states) == 5
    ray_id = {tid: sid for tid, (sid, _) in searcher.trials.items()}
    for sid, sample in by_sample.items():
        rows = trials[trials["trial_id"].map(ray_id) == sid]
        assert len(rows) == 2 and sorted(rows["seed"]) == [0, 1]
        assert rows["status"].nunique() == 1 and rows["epochs_run"].nunique() == 1  # seeds stop together
        expected = "PRUNED" if (rows["status"] == "STOPPED_EARLY").any() else "COMPLETE"
        assert sample.told == expected
    pruned = [t for t in searcher.base._ot_study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and all(t.value is None for t in pruned)


def test_a_diverging_trial_ends_as_error_and_the_sweep_goes_on(ray_session, tmp_path):
    # The second learning rate is absurd: the loss is non-finite in epoch 1 and the trial raises.
    spec = spec_of(name="err", train={"epochs": 2, "lr": {"grid": [0.01, 1.0e12]}}, max_failures=0)
    out = run_sweep(spec, storage=str(tmp_path), console=quiet(), live=False)
    assert out.counts == {"TERMINATED": 1, "ERROR": 1} and not out.ok
    _, trials = tables(out.path)
    error = trials.loc[trials["status"] == "ERROR"].iloc[0]
    assert error["train.lr"] == 1.0e12 and "training diverged" in error["error"] and "Lower train.lr" in error["error"]


class FailOnceAtEpoch2(BalancedTrainable):
    """Raises once, in epoch 2 (a crashed worker), then behaves; a marker file remembers the crash."""

    marker = ""  # set by the test; the class travels to the workers by value

    def step(self):
        marker = Path(self.marker)
        if self.trial.epoch == 1 and not marker.exists():
            marker.write_text("crashed")
            raise RuntimeError("injected crash in epoch 2")
        return super().step()


# A crash in epoch 2, restored from the checkpoint after epoch 1; for UMT epoch 2 is mid-stage (its first
# teacher's). (Every method's restore mid-stage, ReconBoost's and valuation's re-sampled epochs included,
# is checked without Ray in tests/trainables: the Ray path restores the same Trial.state_dict.)
CRASH_CASES = {
    "ogm": ({}, 3),
    "umt": ({"teacher_epochs": [2, 1]}, 4),
}


@pytest.mark.parametrize("method", [pytest.param(m, marks=() if m == "ogm" else pytest.mark.slow) for m in CRASH_CASES])
def test_a_crashed_trial_restores_from_its_checkpoint_and_matches_an_uninterrupted_run(ray_session, tmp_path, method):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    FailOnceAtEpoch2.marker = str(tmp_path / "marker")
    params, epochs = CRASH_CASES[method]
    train = {"epochs": epochs, "batch_size": 64}
    spec = spec_of(name="crash", method=method, params=params, train=train, max_failures=1,
                   checkpoint_every_s=0)  # a checkpoint after epoch 1 to restore from
    out = run_sweep(spec, storage=str(tmp_path), console=quiet(), live=False, trainable=FailOnceAtEpoch2)
    assert (tmp_path / "marker").exists(), "the crash was never injected"
    assert out.counts == {"TERMINATED": 1}
    epochs_table, _ = tables(out.path)
    assert sorted(epochs_table["epoch"]) == list(range(1, epochs + 1))
    trial = Trial(parse_trial_config({"method": method, "seed": 0, "dataset": TINY, "train": train, "params": params}))
    for expected in (trial.step() for _ in range(epochs)):
        row = epochs_table[epochs_table["epoch"] == expected["epoch"]].iloc[0]
        for key, value in expected.items():
            if key not in TIMING_KEYS and key in row:
                assert row[key] == pytest.approx(value, abs=1e-6), (method, key)


def test_retry_ledger_keeps_only_trials_errored_with_retries_left():
    from types import SimpleNamespace

    from mmtune.sweep.retry import RetryLedger

    ledger = RetryLedger()
    raced = SimpleNamespace(trial_id="raced", num_failures=2, max_failures=3)  # the race: retries left
    spent = SimpleNamespace(trial_id="spent", num_failures=4, max_failures=3)  # Tune's own verdict
    unlimited = SimpleNamespace(trial_id="unlimited", num_failures=9, max_failures=-1)
    for trial in (raced, spent, unlimited):
        ledger.on_trial_error(0, [], trial)
    assert ledger.unspent == {"raced", "unlimited"}
    ledger.on_trial_restore(0, [], raced)
    assert ledger.unspent == {"unlimited"}
    import ray.cloudpickle

    assert ray.cloudpickle.loads(ray.cloudpickle.dumps(ledger)).unspent == set()  # a restored sweep starts afresh


def test_a_trial_errored_with_retries_left_is_resumed_by_the_sweep(ray_session, tmp_path, monkeypatch):
    # Tune's race (mmtune.sweep.retry) cannot be provoked on demand: every errored trial is
    # declared raced here, so the sweep must resume the crashed trial from its epoch-1 checkpoint.
    import ray.cloudpickle

    from mmtune.sweep import retry

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(retry.RetryLedger, "on_trial_error", lambda self, iteration, trials, trial, **info: self.unspent.add(trial.trial_id))
    FailOnceAtEpoch2.marker = str(tmp_path / "marker")
    console = quiet()
    spec = spec_of(name="raced", train={"epochs": 3, "batch_size": 64}, max_failures=0, checkpoint_every_s=0)
    out = run_sweep(spec, storage=str(tmp_path), console=console, live=False, trainable=FailOnceAtEpoch2)
    assert (tmp_path / "marker").exists(), "the crash was never injected"
    assert out.counts == {"TERMINATED": 1}
    assert "resuming them from their last checkpoint" in " ".join(console.file.getvalue().split())
    epochs, trials = tables(out.path)
    assert sorted(epochs["epoch"]) == [1, 2, 3] and trials["epochs_run"].tolist() == [3]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
    return env


def _rows(path: Path) -> int:
    try:
        return len(pd.read_parquet(path))
    except Exception:  # noqa: BLE001 - not written yet, or being replaced
        return 0


MULTINODE = """
import os, sys, threading, time, io
import pandas as pd
from ray.cluster_utils import Cluster
from rich.console import Console
from mmtune.sweep.spec import parse_spec
from mmtune.sweep.tuner import run_sweep

storage = sys.argv[1]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
cluster.wait_for_nodes()
spec = parse_spec({"name": "multi", "method": ["joint", "ogm"], "seeds": [0, 1, 2],
                   "dataset": {"n_train": 512, "n_val": 96, "n_test": 96}, "train": {"epochs": 5}, "max_failures": 3, "checkpoint_every_s": 0})

def remove_a_worker():
    while True:
        try:
            if len(pd.read_parquet(os.path.join(storage, "multi", "epochs.parquet"))) >= 4:
                break
        except Exception:
            pass
        time.sleep(0.3)
    cluster.remove_node(workers[0])
    print("REMOVED", flush=True)

threading.Thread(target=remove_a_worker, daemon=True).start()
out = run_sweep(spec, storage=storage, address=cluster.address, console=Console(file=io.StringIO()), live=False)
print("COUNTS", out.counts, flush=True)
cluster.shutdown()
"""


def test_multi_node_sweep_completes_when_a_worker_node_is_removed(tmp_path):
    script = tmp_path / "multinode.py"
    script.write_text(MULTINODE)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "runs")], env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "REMOVED" in done.stdout and "COUNTS {'TERMINATED': 6}" in done.stdout, done.stdout[-2000:]
    epochs, trials = tables(str(tmp_path / "runs" / "multi"))
    assert len(trials) == 6 and len(epochs) == 30 and not epochs.duplicated(["trial_id", "epoch"]).any()


SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))
# Run through the CLI and Ray in smoke mode: every method side by side (all_methods runs each registered
# method's default; the quickstart runs so in tests/test_packaging.py, by name, from the installed package), an Optuna + ASHA sweep and a staged method (UMT needs M + 1 epochs). The
# other shipped specs differ only in their params: each of their trial configs is parsed below, and every
# method's trials run in tests/trainables/test_conformance.py.
SMOKE_RUN = ("all_methods", "optuna_ogm_ge", "umt_lam")


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.stem in SMOKE_RUN], ids=lambda p: p.stem)
def test_shipped_spec_smoke_runs_through_the_cli(ray_session, tmp_path, path, capsys):
    from mmtune.cli import main
    from mmtune.sweep.spec import load_spec, smoke_spec

    assert main(["sweep", str(path), "--smoke-test", "--storage", str(tmp_path)]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "sweep finished" in out and f"mmtune report {tmp_path}" in out
    epochs, trials = tables(str(next(tmp_path.iterdir())))
    assert set(trials["status"]) <= {"TERMINATED", "STOPPED_EARLY"} and not epochs.duplicated(["trial_id", "epoch"]).any()
    shrunk = smoke_spec(load_spec(str(path))).epochs  # 2, or the fewest a staged method can run
    assert (trials["seed"] == trials["seed"].iloc[0]).all() and (trials["epochs_run"] <= shrunk).all()
    assert main(["ls", "--storage", str(tmp_path)]) == 0
    assert path.stem in capsys.readouterr().out


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_specs_trials_parse_at_full_and_smoke_size(path):
    from mmtune.engine.trial import parse_trial_config
    from mmtune.sweep.spec import expand_grid, load_spec, smoke_spec

    spec = load_spec(str(path))
    assert SMOKE_RUN and all((ROOT / "search_spaces" / f"{name}.yaml").is_file() for name in SMOKE_RUN)
    for sized in (spec, smoke_spec(spec)):
        if sized.algorithm != "grid":
            continue  # sampled configs: the Optuna spec runs above
        configs = expand_grid(sized)
        assert configs, path.stem
        for config in configs:
            parse_trial_config(config)


@pytest.mark.slow
def test_ctrl_c_marks_trials_interrupted_says_how_to_resume_and_resume_completes(tmp_path):
    """SIGINT mid-sweep: the cut trials are INTERRUPTED (not STOPPED_EARLY), the screen says
    `mmtune resume`, the exit code is 130; resume finishes them; a second resume has nothing to do."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent("""\
        name: cut
        method: [joint]
        dataset: {n_train: 2048, n_val: 96, n_test: 96}
        train: {epochs: 8}
        seeds: [0, 1, 2, 3]
        """))
    mmtune = [sys.executable, "-m", "mmtune.cli"]
    proc = subprocess.Popen([*mmtune, "sweep", str(spec), "--storage", str(tmp_path / "runs")], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    epochs_file = tmp_path / "runs" / "cut" / "epochs.parquet"
    deadline = time.time() + 240
    while _rows(epochs_file) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 130, out[-3000:]
    assert f"mmtune resume {tmp_path / 'runs' / 'cut'}" in " ".join(out.split()), out[-3000:]
    _, trials = tables(str(tmp_path / "runs" / "cut"))
    assert "INTERRUPTED" in set(trials["status"]) and "STOPPED_EARLY" not in set(trials["status"]), trials["status"]
    done = subprocess.run([*mmtune, "resume", str(tmp_path / "runs" / "cut")], env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    epochs, trials = tables(str(tmp_path / "runs" / "cut"))
    assert len(trials) == 4 and set(trials["status"]) == {"TERMINATED"}
    assert len(epochs) == 32 and not epochs.duplicated(["trial_id", "epoch"]).any()
    start = time.monotonic()
    again = subprocess.run([*mmtune, "resume", str(tmp_path / "runs" / "cut")], env=_env(), capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and "nothing to resume" in again.stdout, again.stdout + again.stderr
    assert time.monotonic() - start < 10  # no Ray start-up (it takes 6-20 s here)
    assert "ray" not in again.stderr.lower() or "Traceback" not in again.stderr
