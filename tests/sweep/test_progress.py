"""SweepProgress: plain lines off a terminal, a rich live view on one, best config on validation only."""

from __future__ import annotations

import io
import pickle
import re
from types import SimpleNamespace

import pytest
from rich.console import Console

from mmtune.store.schema import STATUSES
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
    # Best configuration, by the report's rule: lr=0.05 (mean of 0.7 and 0.5 over its two finished
    # seeds); lr=0.1's 0.65 after 1 of 3 epochs (stopped early) is not ranked with finished ones, the
    # failed trial's 0.9 and every test number are ignored.
    (best,) = [line for line in lines if line.startswith("best configuration")]
    assert "(val_acc, max, validation): 0.6000 ± 0.1414 (n=2, seeds 0,1) method=joint train.lr=0.05" in best
    counts = progress.counts()
    assert list(counts) == list(STATUSES)
    assert {s: n for s, n in counts.items() if n} == {"TERMINATED": 2, "STOPPED_EARLY": 1, "ERROR": 1}
    assert progress.epochs() == (8, 8)  # ended trials plan what they ran
    assert progress.best()["seeds"] == [0, 1] and progress.best()["n"] == 2


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
    for fragment in ("trials", "epochs", "ETA", "lr = train.lr", "val_acc", "STOPPED_EARLY", "best so far", "sweep finished",
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


# -- the live view at 80 / 120 columns --------------------------------------------------------------
def screen(progress, width=80):
    """The live view as a terminal of ``width`` columns shows it (styles dropped)."""
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=True, color_system=None, record=True)
    console.print(progress.render())
    return console.export_text(styles=False)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def live_progress(total, swept=("train.lr",), **kwargs):
    """A SweepProgress whose live view the test renders itself, through screen()."""
    return SweepProgress(total_trials=total, swept=list(swept), console=Console(file=io.StringIO()), live=False, **kwargs)


def run_epochs(progress, trials, trial, values, *, seconds=None):
    for epoch, value in enumerate(values, start=1):
        extra = {} if seconds is None else {"time_this_iter_s": seconds}
        progress.on_trial_result(0, trials, trial, {**result(epoch, value), **extra})


@pytest.mark.parametrize("width", [80, 120])
def test_live_rows_are_configurations_averaged_by_the_reports_rule(width):
    """One row per configuration; its finished seeds averaged, the stopped seed apart, never in the mean."""
    a, b, c = (fake_trial(f"t_{s}", config(seed=s, lr=0.05)) for s in (0, 1, 2))
    d = fake_trial("t_d", config(seed=0, lr=0.1))
    trials = [a, b, c, d]
    progress = live_progress(4)
    progress.setup(total_num_samples=4)
    for t, values in [(a, [0.5, 0.7, 0.6]), (b, [0.4, 0.5, 0.45]), (c, [0.9])]:
        progress.on_trial_start(0, trials, t)
        run_epochs(progress, trials, t, values)
        progress.on_trial_complete(0, trials, t)  # c: 1 of 3 epochs, stopped early
    progress.on_trial_start(0, trials, d)
    run_epochs(progress, trials, d, [0.55])
    text = screen(progress, width)
    assert "t_0" not in text and "TERMIN" not in text and "…" not in text.split("best so far")[0]
    (row_05,) = [line for line in text.splitlines() if re.match(r"\s*joint\s+0\.05\s", line)]
    (row_1,) = [line for line in text.splitlines() if re.match(r"\s*joint\s+0\.1\s", line)]
    assert re.search(r"✓2 ■1\s+7/7\s+0\.6000 ± 0\.1414\s+0\.9000\s*$", row_05)  # 0.9 is not averaged in
    assert re.search(r"▸1\s+1/3\s+~0\.5500\s+-\s*$", row_1)  # no finished seed yet: its running seed so far
    assert "✓ finished 2" in text and "■ stopped early 1" in text and "▸ running 1" in text  # the symbols' legend
    assert "stopped seeds ■ apart, never averaged in" in text
    best = re.sub(r"\s+", " ", text.split("best so far")[1])
    assert "0.6000 ± 0.1414 (n=2, seeds 0,1; stopped early, not averaged: seed 2 at epoch 1) method=joint lr=0.05" in best
    assert all(len(line) <= width for line in text.splitlines())


def test_best_configuration_never_averages_a_stopped_seed_with_a_finished_one():
    """The issue's case: seed 0 finished, seed 1 stopped by ASHA at epoch 6 — n=1, not 0.7820 ± 0.0141 (n=2)."""
    out = io.StringIO()
    progress = SweepProgress(total_trials=2, console=Console(file=out, width=200), live=False)
    done, stopped = (fake_trial(f"t{s}", {**config(seed=s), "train": {**TINY["train"], "epochs": 10}}) for s in (0, 1))
    trials = [done, stopped]
    progress.setup(total_num_samples=2)
    for t, values in [(done, [0.70] * 9 + [0.7920]), (stopped, [0.70] * 5 + [0.7720])]:
        progress.on_trial_start(0, trials, t)
        run_epochs(progress, trials, t, values)
        progress.on_trial_complete(0, trials, t)
    progress.on_experiment_end(trials)
    (line,) = [line for line in out.getvalue().splitlines() if line.startswith("best configuration")]
    assert "0.7920 (n=1, seeds 0; stopped early, not averaged: seed 1 at epoch 6) method=joint" in line
    best = progress.best()
    assert (best["n"], best["std"], best["trial_ids"]) == (1, 0.0, ["t0"])


def test_live_view_keeps_the_baseline_when_it_must_cut_rows():
    """Six configurations, three rows: the baseline (first in spec order), the best so far, the running one."""
    trials = [fake_trial(f"t{i}", config(seed=0, lr=0.01 * (i + 1), method="joint" if i == 0 else "ogm")) for i in range(6)]
    progress = live_progress(6, max_rows=3)
    progress.setup(total_num_samples=6)
    for i, t in enumerate(trials[:5]):
        progress.on_trial_start(0, trials, t)
        run_epochs(progress, trials, t, [0.5, 0.7 if i == 3 else 0.6, 0.55])
        progress.on_trial_complete(0, trials, t)
    progress.on_trial_start(0, trials, trials[5])
    run_epochs(progress, trials, trials[5], [0.4])
    progress.on_step_end(0, trials)
    text = screen(progress)
    rows = [line.split()[:2] for line in text.splitlines() if re.match(r"(joint|ogm)\s+\d", line)]
    assert rows == [["joint", "0.01"], ["ogm", "0.04"], ["ogm", "0.06"]]
    assert "3 more configuration(s) not shown" in text


def test_headers_fit_80_columns_with_a_legend_of_full_names():
    swept = ["params.opm.lam", "params.amss.lam", "params.alpha", "train.lr", "train.epochs"]
    cfg = config(seed=0, method="opm+amss")
    cfg["params"] = {"opm.lam": 0.3, "amss.lam": 0.5, "alpha": 0.8}
    progress = live_progress(3, swept=swept)
    trials = [fake_trial("t0", cfg)]
    progress.setup(total_num_samples=3)
    progress.on_trial_start(0, trials, trials[0])
    run_epochs(progress, trials, trials[0], [0.5])
    text = screen(progress, 80)
    header = next(line for line in text.splitlines() if line.lstrip().startswith("method"))
    assert header.split() == ["method", "opm.lam", "amss.lam", "alpha", "lr", "train.epochs", "seeds", "epochs", "val_acc"]
    legend = "opm.lam = params.opm.lam · amss.lam = params.amss.lam · alpha = params.alpha · lr = train.lr"
    assert legend in re.sub(r"\s+", " ", text)  # wrapped at 80 columns
    assert all(len(line) <= 80 for line in text.splitlines())


def test_short_names_take_the_last_part_and_tell_clashes_apart():
    from mmtune.sweep.progress import short_names

    keys = ["params.alpha", "params.opm.lam", "params.amss.lam", "model.fusion", "train.epochs"]
    assert short_names(keys, taken=["epochs"]) == {
        "params.alpha": "alpha", "params.opm.lam": "opm.lam", "params.amss.lam": "amss.lam",
        "model.fusion": "fusion", "train.epochs": "train.epochs",
    }


def test_waiting_for_the_first_trial_and_no_eta_before_an_epoch():
    progress = live_progress(2)
    progress._clock = clock = Clock()
    progress.setup(total_num_samples=2)
    clock.now = 9.0  # Ray is bringing up the first actor
    text = screen(progress)
    assert "waiting for the first trial" in text and "elapsed 0:00:09" in text
    assert "0/0" not in text and "ETA" not in text
    trials = [fake_trial("t0", config(seed=0)), fake_trial("t1", config(seed=1))]
    clock.now = 15.0
    progress.on_trial_start(0, trials, trials[0])
    assert "waiting" not in screen(progress) and "ETA —" in screen(progress)


def test_eta_comes_from_epoch_durations_not_from_the_start_up():
    """15 s of start-up, then 2 s epochs: the first ETA is 7 epochs × 2 s, not 7 × 17 s."""
    progress = live_progress(2)
    progress._clock = clock = Clock()
    trials = [fake_trial("t0", config(seed=0)), fake_trial("t1", config(seed=1))]
    progress.setup(total_num_samples=2)
    clock.now = 15.0
    progress.on_trial_start(0, trials, trials[0])
    assert progress.eta_s() is None
    clock.now = 17.0
    progress.on_trial_result(0, trials, trials[0], {**result(1, 0.5), "time_this_iter_s": 2.0})
    assert progress.epochs() == (1, 6) and progress.eta_s() == pytest.approx(5 * 2.0)  # t1 unseen: planned as 3
    assert "ETA 0:00:10" in screen(progress)
    # without Tune's time_this_iter_s: the time between a trial's results (4 s here)
    clock.now = 21.0
    progress.on_trial_result(0, trials, trials[0], result(2, 0.6))
    assert progress.eta_s() == pytest.approx(4 * 3.0)
    # two trials side by side halve it
    progress.on_trial_start(0, trials, trials[1])
    progress.on_trial_result(0, trials, trials[1], {**result(1, 0.5), "time_this_iter_s": 3.0})
    assert progress.eta_s() == pytest.approx(3 * (2.0 + 4.0 + 3.0) / 3 / 2)


def test_seeds_paused_at_a_rung_are_shown_paused():
    trials = [fake_trial(f"t{s}", config(seed=s)) for s in (0, 1)]
    progress = live_progress(2)
    progress.setup(total_num_samples=2)
    for t in trials:
        progress.on_trial_start(0, trials, t)
    run_epochs(progress, trials, trials[0], [0.5])
    trials[0].status, trials[1].status = "PAUSED", "RUNNING"  # a config-level ASHA waits for seed 1 at the rung
    progress.on_step_end(0, trials)
    text = screen(progress)
    assert progress.counts()["PAUSED"] == 1 and "‖ paused 1" in text and re.search(r"▸1 ‖1\s+1/6\s+~0\.5000", text)
    trials[0].status = "RUNNING"
    progress.on_step_end(0, trials)
    assert progress.counts()["PAUSED"] == 0


def test_init_ray_says_that_it_starts_ray_before_it_does(monkeypatch):
    import ray

    from mmtune.sweep import tuner

    out = io.StringIO()
    console = Console(file=out, width=120)
    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(tuner, "_quiet_ray", lambda: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append((kw["address"], out.getvalue())))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    assert tuner._init_ray(None, SimpleNamespace(gpu=0), console) is True
    ((address, printed_before),) = calls
    # A new local Ray (never a `ray start` cluster found on the machine), listening on loopback only.
    assert address == "local" and re.fullmatch(r"starting Ray \(\d+ CPUs, \d+ GPUs\)…\n", printed_before)
    assert tuner._init_ray("ray://head:10001", SimpleNamespace(gpu=0), console) is True
    assert calls[1] == ("ray://head:10001", out.getvalue()) and out.getvalue().endswith(
        "connecting to the Ray cluster at ray://head:10001…\n")
