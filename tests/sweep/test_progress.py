"""SweepProgress: plain lines off a terminal, a rich live view on one, best config on validation only."""

from __future__ import annotations

import io
import pickle
import re
from types import SimpleNamespace

import pytest
from rich.console import Console

from mmtune.sweep.progress import SweepProgress

TINY = {"dataset": {"n_train": 256, "n_val": 96, "n_test": 96}, "train": {"epochs": 3, "batch_size": 32}}


def config(seed=0, lr=0.05, method="joint"):
    return {"method": method, "seed": seed, "dataset": dict(TINY["dataset"]), "train": {**TINY["train"], "lr": lr}}


def fake_trial(trial_id, cfg, **extra):
    fields = {"trial_id": trial_id, "config": cfg, "status": "PENDING", "pickled_error_file": None, "error_file": None}
    return SimpleNamespace(**{**fields, **extra})


def result(epoch, val_acc, test_acc=0.5):
    return {"epoch": epoch, "val_acc": val_acc, "test_acc": test_acc, "train_loss": 1.0, "training_iteration": epoch,
            "time_total_s": 0.1 * epoch, "trial_id": "ignored", "config": {}}


def drive(progress, tmp_path):
    """Four trials: two seeds of lr=0.05, one lr=0.1 stopped early, one failing with NaN."""
    error_file = tmp_path / "error.txt"
    error_file.write_text("Failure # 1\nTraceback ...\nFloatingPointError: train_loss is nan at epoch 2. Lower train.lr.\n")
    a = fake_trial("t_a", config(seed=0, lr=0.05))
    b = fake_trial("t_b", config(seed=1, lr=0.05))
    c = fake_trial("t_c", config(seed=0, lr=0.1))
    d = fake_trial("t_d", config(seed=0, lr=1e6), error_file=str(error_file))
    trials = [a, b, c, d]
    progress.setup(total_num_samples=4)
    for t in trials[:2]:
        progress.on_trial_start(0, trials, t)
    for epoch, (va, vb) in enumerate([(0.5, 0.4), (0.7, 0.5), (0.6, 0.45)], start=1):
        progress.on_trial_result(0, trials, a, result(epoch, va, test_acc=0.1))
        progress.on_trial_result(0, trials, b, result(epoch, vb, test_acc=0.99))  # high test never selects
        progress.on_step_end(0, trials)
    progress.on_trial_complete(0, trials, a)
    progress.on_trial_complete(0, trials, b)
    progress.on_trial_start(0, trials, c)
    progress.on_trial_result(0, trials, c, result(1, 0.65))
    progress.on_trial_complete(0, trials, c)  # 1 of 3 epochs: stopped early
    progress.on_trial_start(0, trials, d)
    progress.on_trial_result(0, trials, d, result(1, 0.9))
    progress.on_trial_error(0, trials, d)
    progress.on_experiment_end(trials)
    return trials


def test_plain_lines_for_every_event_and_a_summary(tmp_path):
    out = io.StringIO()
    progress = SweepProgress(
        total_trials=4, swept=["train.lr", "seed"], console=Console(file=out, force_terminal=False, width=100),
        line_interval_s=0,
    )
    assert progress.live is False  # not a terminal: plain lines
    drive(progress, tmp_path)
    text = out.getvalue()
    lines = text.splitlines()
    assert all(len(line) > 0 for line in lines)
    assert any(re.search(r"start +t_a +method=joint train\.lr=0\.05 seed=0$", line) for line in lines)
    assert any(re.search(r"epoch +t_a +2/3 +val_acc=0\.7000 best=0\.7000 +\| trials 0/4, epochs \d+/\d+, ETA", line) for line in lines)
    assert any(re.search(r"done +t_a +TERMINATED at epoch 3/3 +best val_acc=0\.7000 @ epoch 2", line) for line in lines)
    assert any(re.search(r"stopped +t_c +STOPPED_EARLY at epoch 1/3", line) for line in lines)
    error = r"error +t_d +ERROR at epoch 1/3: FloatingPointError: train_loss is nan at epoch 2\. Lower train\.lr\.$"
    assert any(re.search(error, line) for line in lines)
    assert "sweep finished in" in text and "TERMINATED 2" in text and "STOPPED_EARLY 1" in text and "ERROR 1" in text
    # Best configuration: lr=0.1 (0.65, one seed) beats lr=0.05 (mean of 0.7 and 0.5 = 0.6); the
    # failed trial's 0.9 and every test number are ignored.
    (best,) = [line for line in lines if line.startswith("best configuration")]
    assert "(val_acc, max, validation): 0.6500 (n=1, seeds 0) method=joint train.lr=0.1" in best
    assert progress.counts() == {"PENDING": 0, "RUNNING": 0, "PAUSED": 0, "TERMINATED": 2, "STOPPED_EARLY": 1, "ERROR": 1}
    assert progress.epochs() == (8, 8)  # ended trials plan what they ran
    assert progress.best()["seeds"] == [0] and progress.best()["n"] == 1


def test_best_averages_seeds_and_mode_min(tmp_path):
    progress = SweepProgress(total_trials=None, metric="val_loss", mode="min", console=Console(file=io.StringIO()), live=False)
    a, b, c = (fake_trial(f"t{i}", config(seed=s, lr=lr)) for i, (s, lr) in enumerate([(0, 0.05), (1, 0.05), (0, 0.1)]))
    trials = [a, b, c, fake_trial("t3", config(seed=1, lr=0.1))]
    for t, values in [(a, [1.0, 0.4]), (b, [0.8, 0.6]), (c, [0.45, 0.7])]:
        progress.on_trial_start(0, trials, t)
        for epoch, v in enumerate(values, start=1):
            progress.on_trial_result(0, trials, t, {"epoch": epoch, "val_loss": v})
    best = progress.best()
    assert best["mean"] == pytest.approx(0.45) and best["swept"] == {} and best["trial_ids"] == ["t2"]
    assert progress.counts()["PENDING"] == 1 and progress.counts()["RUNNING"] == 3  # t3 is known to Tune only


def test_live_view_renders_and_stops_cleanly(tmp_path):
    out = io.StringIO()
    progress = SweepProgress(total_trials=4, swept=["train.lr"], console=Console(file=out, force_terminal=True, width=140))
    assert progress.live is True
    drive(progress, tmp_path)
    assert progress._live_view is None  # stopped at experiment end
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # drop ANSI control sequences
    for fragment in ("trials", "epochs", "ETA", "t_a", "train.lr", "val_acc", "STOPPED_EARLY", "best so far", "sweep finished",
                     "best configuration"):
        assert fragment in text, fragment
    assert "start    t_a" not in text  # no plain event lines in live mode, except failures:
    assert re.search(r"error +t_d +ERROR at epoch 1/3: FloatingPointError", text)
    progress.close()  # idempotent


def test_live_view_closes_on_context_exit_when_the_sweep_dies():
    out = io.StringIO()
    with pytest.raises(RuntimeError, match="driver died"):
        with SweepProgress(total_trials=2, console=Console(file=out, force_terminal=True)) as progress:
            progress.setup()
            progress.on_trial_start(0, [], fake_trial("t0", config()))
            assert progress._live_view is not None and progress._live_view.is_started
            raise RuntimeError("driver died")
    assert progress._live_view is None


def test_rejects_test_metrics_and_pickles_without_its_console():
    with pytest.raises(ValueError, match="validation only"):
        SweepProgress(total_trials=1, metric="test_acc")
    with pytest.raises(ValueError, match="mode"):
        SweepProgress(total_trials=1, mode="best")
    progress = SweepProgress(total_trials=3, swept=["params.tau"], console=Console(file=io.StringIO()), live=False, max_rows=5)
    clone = pickle.loads(pickle.dumps(progress))  # Tuner pickles its RunConfig, callbacks included
    assert (clone.total_trials, clone.swept, clone.max_rows, clone.live) == (3, ["params.tau"], 5, False)
    out = io.StringIO()
    clone.attach(console=Console(file=out, force_terminal=False))  # `mmtune resume` hands it this terminal
    clone.on_trial_start(0, [], fake_trial("t0", config()))
    assert "start    t0  method=joint params.tau=-" in out.getvalue()


@pytest.mark.slow
def test_real_run_prints_plain_lines(ray_session, tmp_path):
    from ray import tune

    from mmtune.sweep.trainable import BalancedTrainable

    out = io.StringIO()
    progress = SweepProgress(total_trials=2, swept=["seed"], console=Console(file=out, force_terminal=False, width=160), line_interval_s=0)
    space = {**config(), "train": {**TINY["train"], "epochs": 2}, "seed": tune.grid_search([0, 1])}
    tune.Tuner(
        BalancedTrainable,
        param_space=space,
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="p", callbacks=[progress], verbose=0),
    ).fit()
    text = out.getvalue()
    assert len(re.findall(r"start +\w+ +method=joint seed=\d", text)) == 2
    assert len(re.findall(r"epoch +\w+ +[12]/2 +val_acc=0\.\d{4} best=0\.\d{4}", text)) == 4
    assert len(re.findall(r"done +\w+ +TERMINATED at epoch 2/2", text)) == 2
    assert "2 trials (" in text and "TERMINATED 2" in text and "epochs run" in text
    assert re.search(r"best configuration \(val_acc, max, validation\): 0\.\d{4} ± 0\.\d{4} \(n=2, seeds 0,1\) method=joint", text)


def test_lookup_finds_a_composed_methods_dotted_parameter():
    from mmtune.sweep.progress import _UNSET, _lookup

    config = {"params": {"opm.lam": 0.3, "fixed_p": {"audio": 0.2}}, "seed": 1}
    assert _lookup(config, "params.opm.lam") == 0.3  # the key itself holds a dot
    assert _lookup(config, "params.fixed_p.audio") == 0.2
    assert _lookup(config, "params.amss.lam") is _UNSET
