"""The notebook API (mmtune.api): mmtune.load gives the report's ablation numbers as a data frame,
mmtune.study rebuilds an Optuna sweep as an optuna.Study that optuna's plots accept."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

import mmtune
from mmtune.errors import ConfigError
from tests.report.test_report import make_golden, make_optuna


def test_load_summary_has_the_numbers_of_the_reports_ablation_table(tmp_path):
    from mmtune.report.data import format_value, group_variants, load_sweep, trial_outcomes
    from mmtune.report.tables import ablation_table

    path = make_golden(tmp_path)
    sweep = mmtune.load(path)
    assert len(sweep.trials) == 12 and len(sweep.epochs) == 9 * 3 + 1 + 0 + 1  # the unfinished seeds' epochs too
    assert sweep.axes == ["label", "params.alpha"] and sweep.metric == "val_acc"

    data = load_sweep(path)
    outcomes = trial_outcomes(data, "val_acc")
    test_columns = [c for c in ("test_acc", "test_macro_f1", "test_map") if c in outcomes.columns]
    table = ablation_table(group_variants(data, outcomes), data.axes, selection="val_acc", test_columns=test_columns)
    metrics = ["val_acc", *test_columns]
    assert [tuple(sweep.summary.columns.get_level_values(0).unique())] == [(*metrics, "seeds")]
    assert len(table.rows) == len(sweep.summary) == 3
    for row, (index, numbers) in zip(table.rows, sweep.summary.iterrows(), strict=True):
        assert [c.text for c in row[:table.n_axes]] == [format_value(None if pd.isna(v) else v) for v in index]
        for cell, metric in zip(row[table.n_axes:table.n_axes + len(metrics)], metrics, strict=True):
            assert numbers[(metric, "n")] == cell.summary.n == 3
            assert numbers[(metric, "mean")] == pytest.approx(cell.summary.mean, abs=0, rel=1e-12)
            assert numbers[(metric, "std")] == pytest.approx(cell.summary.std, abs=0, rel=1e-12)
        assert (numbers[("seeds", "finished")], numbers[("seeds", "trials")]) == (3, 4)
    # the honest protocol: test acc at the best-validation epoch, seeds 0–2 only (seed 3 never finished)
    assert sweep.summary.loc[("ogm", 1.0), ("test_acc", "mean")] == pytest.approx((0.70 + 0.81 + 0.89) / 3)
    assert list(sweep.summary.index.names) == ["label", "params.alpha"]


def test_load_refuses_a_test_metric_and_a_missing_sweep(tmp_path):
    path = make_golden(tmp_path)
    with pytest.raises(ConfigError, match="test metric"):
        mmtune.load(path, metric="test_acc")
    with pytest.raises(ConfigError):
        mmtune.load(tmp_path / "nothing")


def test_study_rebuilds_the_optuna_sweep_as_its_searcher_told_it(tmp_path):
    import optuna

    path = make_optuna(tmp_path)
    study = mmtune.study(path)
    assert isinstance(study, optuna.Study) and study.study_name == "opt"
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    sweep = mmtune.load(path)
    trials = sweep.trials
    epochs = sweep.epochs
    last = epochs.loc[epochs.groupby("trial_id")["epoch"].idxmax()].set_index("trial_id")["best_val_acc"]
    assert len(study.trials) == 4
    for t, (_, rows) in zip(study.trials, trials.groupby("config_key", sort=False), strict=True):
        assert t.params == {"params.alpha": rows.iloc[0]["params.alpha"],
                            "params.start_epoch": int(rows.iloc[0]["params.start_epoch"])}
        assert t.user_attrs["trial_ids"] == list(rows["trial_id"]) and t.user_attrs["seeds"] == [0, 1]
        if (rows["status"] == "TERMINATED").all():
            assert t.state == optuna.trial.TrialState.COMPLETE
            assert t.value == pytest.approx(last[list(rows["trial_id"])].mean())
            assert sorted(t.intermediate_values) == [1, 2, 3]
        else:  # ASHA stopped a seed: pruned, never valued as if finished
            assert t.state == optuna.trial.TrialState.PRUNED and t.value is None
    assert isinstance(study.trials[0].distributions["params.alpha"], optuna.distributions.FloatDistribution)
    assert study.trials[0].distributions["params.alpha"].log
    assert study.best_trial.params["params.alpha"] == 1.2


def test_optunas_matplotlib_plots_take_the_rebuilt_study(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm
    import warnings

    study = mmtune.study(make_optuna(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's "experimental" warnings
        for plot in (ovm.plot_slice, ovm.plot_contour, ovm.plot_optimization_history):
            axes = plot(study)
            assert axes is not None
        plt.close("all")


def test_study_refuses_a_grid_sweep(tmp_path):
    with pytest.raises(ConfigError, match="is a grid sweep"):
        mmtune.study(make_golden(tmp_path))


def test_import_mmtune_stays_light():
    code = "import sys, mmtune; print(sorted(m for m in ('pandas', 'optuna', 'torch', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert callable(mmtune.load) and callable(mmtune.study)
