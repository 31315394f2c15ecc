"""`mmtune run` / `mmtune methods` end to end, including every error path (exit 2, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmtune.cli import apply_overrides, main, parse_value

TINY = ["dataset.n_train=256", "dataset.n_val=96", "dataset.n_test=96", "train.batch_size=32"]
DESIGN_KEYS = ["epoch", "train_loss", "val_acc", "val_macro_f1", "val_map", "test_acc", "test_macro_f1", "test_map",
               "val_acc/audio", "val_acc/video", "imbalance/audio", "imbalance/video", "epoch_s", "samples_per_s",
               "best_val_acc", "best_epoch", "test_acc_at_best_val"]


def run_json(capsys, *args) -> dict:
    assert main(["run", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_run_json_reports_every_metric_and_is_deterministic(capsys):
    first = run_json(capsys, "joint", "train.epochs=2", "seed=0", *TINY)
    second = run_json(capsys, "joint", "train.epochs=2", "seed=0", *TINY)
    for key in DESIGN_KEYS:
        assert key in first
    timing = {"epoch_s", "samples_per_s", "wall_s"}
    assert {k: v for k, v in first.items() if k not in timing} == {k: v for k, v in second.items() if k not in timing}
    assert first["epoch"] == 2


def test_overrides_reach_the_trial(capsys):
    out = run_json(capsys, "unimodal", "modality=audio", "train.epochs=1", "model.fusion=sum", *TINY)
    assert "val_acc/audio" in out and "val_acc/video" not in out


def test_run_prints_every_column_whole_when_not_a_terminal(capsys):
    """A pipe or log file gets one aligned line per epoch, trace columns included, never squeezed into '…'."""
    assert main(["run", "amss", "train.epochs=2", *TINY]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    lines = out.splitlines()
    header = next(line for line in lines if line.split()[:2] == ["ep", "loss"])
    for key in ["val/audio", "val/video", "xi/audio", "u/video", "p/audio", "p/video"]:
        assert key in header.split()
    rows = [line.split() for line in lines if line.split()[:1] in (["1"], ["2"])]
    assert [r[0] for r in rows] == ["1", "2"]
    assert all(len(r) == len(header.split()) for r in rows)
    assert all(0.0 <= float(p) <= 1.0 for r in rows for p in r[-2:])


@pytest.mark.parametrize(
    "args,needles",
    [
        (["joint", "bogus_key=1"], ["bogus_key", "start_epoch"]),
        (["jiont"], ["jiont", "Did you mean 'joint'"]),
        (["joint", "epocs=3"], ["epocs", "train.epochs"]),
        (["joint", "train.lr=-1", "model.fusion=concatt"], ["train.lr", "(0, inf)", "model.fusion", "'concat'"]),
        (["joint", "trian.epochs=3"], ["trian", "dataset, model, train, params"]),
        (["joint", "noequals"], ["noequals", "key=value"]),
        (["joint", "dataset.name=cremd"], ["dataset.name", "Did you mean 'cremad'"]),
    ],
)
def test_bad_input_exits_2_naming_the_problem(capsys, args, needles):
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err
    assert "Traceback" not in err


def test_console_script_exit_code_and_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "mmtune.cli", "run", "joint", "bogus_key=1"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "bogus_key" in proc.stderr and "Traceback" not in proc.stderr


def test_methods_lists_each_method_with_hyperparameters(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for needle in ["joint", "unimodal", "start_epoch", "end_epoch", "modality"]:
        assert needle in out


def test_parse_value_types():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("1e-3") == pytest.approx(1e-3)
    assert parse_value("true") is True and parse_value("null") is None
    assert parse_value("[audio, video]") == ["audio", "video"] and parse_value("sum") == "sum"


def test_apply_overrides_nests_sections_and_params():
    config, problems = apply_overrides({}, ["train.lr=0.1", "alpha=0.8", "seed=2", "dataset.modalities=[a, b]"])
    assert not problems
    assert config == {"train": {"lr": 0.1}, "params": {"alpha": 0.8}, "seed": 2, "dataset": {"modalities": ["a", "b"]}}
