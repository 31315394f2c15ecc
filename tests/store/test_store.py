"""Results store: schema, rows → tables, atomic writes, resume without duplicates, trial status,
readers, and a real Ray Tune run read back with pandas."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmtune.store import list_sweeps, read_epochs, read_trials, schema_version
from mmtune.store import writer as writer_mod
from mmtune.store.schema import (
    EPOCH_COLUMNS,
    MMTUNE_VERSION_KEY,
    SCHEMA_VERSION,
    TRIAL_COLUMNS,
    VERSION_KEY,
    config_key,
    epochs_table,
    trials_table,
)
from mmtune.store.writer import RAY_RESULT_KEYS, ResultsWriter, result_metrics, trial_columns

TINY = {"dataset": {"n_train": 256, "n_val": 96, "n_test": 96}, "train": {"epochs": 3, "batch_size": 32}}


def config(method="joint", seed=0, **sections):
    cfg = {"method": method, "seed": seed, **{k: dict(v) for k, v in TINY.items()}}
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


def fake_trial(trial_id, cfg, status="PENDING", **extra):
    fields = {"trial_id": trial_id, "config": cfg, "status": status, "pickled_error_file": None, "error_file": None}
    return SimpleNamespace(**{**fields, **extra})


def fake_result(epoch, val_acc=0.5, **extra):
    """A result as Tune hands it to callbacks: Trial.step()'s metrics plus Ray's own keys."""
    return {
        "epoch": epoch, "train_loss": 1.0 / epoch, "val_acc": val_acc, "val_macro_f1": val_acc - 0.1,
        "val_map": val_acc + 0.1, "test_acc": 0.4, "test_macro_f1": 0.3, "test_map": 0.45,
        "val_acc/audio": 0.6, "val_acc/video": 0.3, "imbalance/audio": 2.0, "imbalance/video": 0.5,
        "epoch_s": 0.01, "samples_per_s": 1e4,
        "best_val_acc": val_acc, "best_val_macro_f1": val_acc - 0.1, "best_val_map": val_acc + 0.1,
        "best_epoch": float(epoch), "test_acc_at_best_val": 0.4, "test_macro_f1_at_best_val": 0.3,
        "test_map_at_best_val": 0.45,
        # Ray's auto-filled keys: never stored as metrics.
        "training_iteration": epoch, "time_this_iter_s": 0.02, "time_total_s": 0.02 * epoch, "trial_id": "x",
        "date": "2026-01-01", "timestamp": 1, "pid": 1, "hostname": "h", "node_ip": "1.2.3.4",
        "config": {"method": "joint"}, "time_since_restore": 0.1, "iterations_since_restore": epoch,
        "checkpoint_dir_name": None, "done": False, "experiment_tag": "0",
        **extra,
    }


def run_fake(writer, trial, epochs, trials=None, *, end="complete", values=None):
    trials = trials if trials is not None else [trial]
    writer.on_trial_start(0, trials, trial)
    for e in epochs:
        writer.on_trial_result(0, trials, trial, fake_result(e, **({"val_acc": values[e]} if values else {})))
    if end == "complete":
        writer.on_trial_complete(0, trials, trial)
    elif end == "error":
        writer.on_trial_error(0, trials, trial)


# -- schema ---------------------------------------------------------------------------------------
def test_epochs_table_column_order_types_and_version():
    rows = [
        {"trial_id": "a", "sweep": "s", "val_acc": 0.5, "epoch": 1, "trace/k/audio": 0.9, "train_loss": 1.2},
        {"epoch": 2, "sweep": "s", "trial_id": "a", "val_acc": 0.6, "train_loss": 1.0, "imbalance/audio": 2},
    ]
    table = epochs_table(rows)
    assert table.column_names == ["sweep", "trial_id", "epoch", "imbalance/audio", "trace/k/audio", "train_loss", "val_acc"]
    assert table.schema.field("epoch").type == pa.int64()
    for name in table.column_names[3:]:
        assert table.schema.field(name).type == pa.float64(), name
    assert table.column("imbalance/audio").to_pylist() == [None, 2.0]
    assert schema_version(table) == SCHEMA_VERSION == 1
    assert table.schema.metadata[VERSION_KEY] == b"1"
    assert table.schema.metadata[MMTUNE_VERSION_KEY]


def test_trials_table_fixed_columns_first_then_hyperparameters_sorted():
    joint, joint_types = trial_columns("s", "t0", config("joint"))
    ogm, ogm_types = trial_columns("s", "t1", config("ogm", params={"alpha": 0.3, "ge": True}))
    table = trials_table([joint, ogm], {**joint_types, **ogm_types})
    names = table.column_names
    assert names[: len(TRIAL_COLUMNS)] == list(TRIAL_COLUMNS)
    rest = names[len(TRIAL_COLUMNS):]
    assert rest == sorted(rest) and "params.alpha" in rest and "train.lr" in rest and "dataset.dominance" in rest
    schema = table.schema
    for name, typ in TRIAL_COLUMNS.items():
        assert schema.field(name).type == typ, name
    assert schema.field("params.alpha").type == pa.float64()
    assert schema.field("params.ge").type == pa.bool_()
    assert schema.field("params.k_form").type == pa.string()
    assert schema.field("train.epochs").type == pa.int64()
    assert schema.field("train.lr_step").type == pa.int64()  # `int | None`, null in every row: still int64
    assert schema.field("dataset.modalities").type == pa.string()  # a list, stored as JSON
    rows = table.to_pylist()
    assert rows[0]["params.alpha"] is None and rows[1]["params.alpha"] == 0.3  # joint has no alpha
    assert rows[1]["params.ge"] is True
    assert json.loads(rows[0]["dataset.modalities"]) == ["audio", "video"]
    assert rows[0]["train.lr_step"] is None and rows[0]["train.epochs"] == 3
    assert json.loads(rows[1]["config_json"])["params"]["alpha"] == 0.3


def test_config_key_groups_seeds_of_one_configuration():
    key = lambda cfg: trial_columns("s", "t", cfg)[0]["config_key"]  # noqa: E731
    assert key(config(seed=0)) == key(config(seed=3))
    assert key(config(train={"lr": 0.01})) == key(config())  # lr 0.01 is the default: same resolved config
    assert key(config(train={"lr": 0.02})) != key(config())
    assert key(config("ogm")) != key(config("joint"))
    assert config_key({"method": "x", "seed": 1}) == config_key({"seed": 2, "method": "x"})


def test_ray_keys_come_from_ray():
    from ray.tune.result import AUTO_RESULT_KEYS

    assert set(AUTO_RESULT_KEYS) <= RAY_RESULT_KEYS
    assert {"trial_id", "date", "done", "config", "experiment_tag"} <= RAY_RESULT_KEYS
    assert not RAY_RESULT_KEYS & {"epoch", "val_acc", "train_loss", "best_val_acc"}


# -- writer ---------------------------------------------------------------------------------------
def test_mixed_methods_union_of_columns_with_nulls(tmp_path):
    writer = ResultsWriter(str(tmp_path), "mix")
    joint = fake_trial("j", config("joint"))
    ogm = fake_trial("o", config("ogm", params={"alpha": 0.5}))
    trials = [joint, ogm]
    writer.on_trial_start(0, trials, joint)
    writer.on_trial_start(0, trials, ogm)
    for e in (1, 2, 3):
        writer.on_trial_result(0, trials, joint, fake_result(e))
        writer.on_trial_result(0, trials, ogm, fake_result(e, **{"trace/k/audio": 0.7 + e / 100, "trace/k/video": 1.0}))
    writer.on_trial_complete(0, trials, joint)
    writer.on_trial_complete(0, trials, ogm)
    writer.on_experiment_end(trials)

    epochs = pd.read_parquet(tmp_path / "mix" / "epochs.parquet")
    assert len(epochs) == 6 and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert list(epochs.columns[:3]) == list(EPOCH_COLUMNS)
    assert not (set(epochs.columns) - set(EPOCH_COLUMNS)) & RAY_RESULT_KEYS
    assert epochs.loc[epochs.trial_id == "j", "trace/k/audio"].isna().all()
    assert epochs.loc[epochs.trial_id == "o", "trace/k/audio"].tolist() == pytest.approx([0.71, 0.72, 0.73])
    assert epochs["epoch"].dtype == "int64" and epochs["val_acc"].dtype == "float64"

    trials_df = pd.read_parquet(tmp_path / "mix" / "trials.parquet").set_index("trial_id")
    assert trials_df.loc["o", "params.alpha"] == 0.5 and pd.isna(trials_df.loc["j", "params.alpha"])
    assert trials_df.loc["j", "status"] == trials_df.loc["o", "status"] == "TERMINATED"
    assert trials_df.loc["j", "epochs_run"] == 3 and trials_df.loc["j", "best_epoch"] == 3
    assert trials_df.loc["j", "wall_s"] == pytest.approx(0.06)
    assert (trials_df["sweep"] == "mix").all()

    # Plain Parquet: a fresh interpreter reads both tables with pandas alone.
    script = (
        "import sys, pandas as pd; "
        f"e = pd.read_parquet({str(tmp_path / 'mix' / 'epochs.parquet')!r}); "
        f"t = pd.read_parquet({str(tmp_path / 'mix' / 'trials.parquet')!r}); "
        "assert not any(m.split('.')[0] in ('mmtune', 'trainables', 'torch', 'ray') for m in sys.modules); "
        "print(len(e), len(t), t['params.alpha'].dtype)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.split() == ["6", "2", "float64"]


def test_a_trial_first_seen_after_the_interruption_is_interrupted_not_stopped_early(tmp_path):
    # Seen once in a fresh clone's Ctrl-C test: Tune, stopping, ran a trial the writer had not seen yet;
    # its short run then read as "stopped early" (a finished state resume skips), not as cut.
    writer = ResultsWriter(str(tmp_path), "cut", flush_interval_s=3600)
    running, late = fake_trial("running", config()), fake_trial("late", config(seed=1))
    writer.on_trial_start(0, [running], running)
    writer.on_trial_result(0, [running], running, fake_result(1))
    writer.interrupt()
    run_fake(writer, running, [2], [running, late])
    run_fake(writer, late, [1], [running, late])
    writer.flush()
    trials = read_trials(str(tmp_path / "cut"))
    statuses = dict(zip(trials["trial_id"].to_pylist(), trials["status"].to_pylist(), strict=True))
    assert statuses == {"running": "INTERRUPTED", "late": "INTERRUPTED"}


def test_status_terminated_stopped_early_error_running_pending(tmp_path):
    writer = ResultsWriter(str(tmp_path), "st", flush_interval_s=3600)
    done = fake_trial("done", config())
    early = fake_trial("early", config())
    error_file = tmp_path / "error.txt"
    error_file.write_text(
        "Failure # 1 (occurred at 2026-01-01_00-00-00)\n"
        "ray::JointTrainable.train() (pid=1)\n  File \"trial.py\", line 187, in step\n    raise FloatingPointError(\n"
        "FloatingPointError: train_loss is nan at epoch 2 (method joint, lr 1000000.0): training diverged. "
        "Lower train.lr or set train.grad_clip.\n"
    )
    failed = fake_trial("failed", config(), error_file=str(error_file))
    running = fake_trial("running", config(), status="RUNNING")
    pending = fake_trial("pending", config(method="ogm", params={"alpha": 0.2}), status="PENDING")
    trials = [done, early, failed, running, pending]

    run_fake(writer, done, [1, 2, 3], trials)
    run_fake(writer, early, [1], trials)  # completed by a scheduler after 1 of 3 epochs
    run_fake(writer, failed, [1], trials, end="error")
    run_fake(writer, running, [1, 2], trials, end=None)
    writer.flush()

    rows = read_trials(tmp_path / "st").to_pandas().set_index("trial_id")
    assert rows.loc["done", "status"] == "TERMINATED" and rows.loc["done", "epochs_run"] == 3
    assert rows.loc["early", "status"] == "STOPPED_EARLY" and rows.loc["early", "epochs_run"] == 1
    assert rows.loc["failed", "status"] == "ERROR"
    assert rows.loc["failed", "error"].startswith("FloatingPointError: train_loss is nan")
    assert "Lower train.lr" in rows.loc["failed", "error"]
    assert rows.loc["running", "status"] == "RUNNING" and rows.loc["running", "epochs_run"] == 2
    assert rows.loc["pending", "status"] == "PENDING" and rows.loc["pending", "epochs_run"] == 0
    assert rows.loc["pending", "params.alpha"] == 0.2  # a pending trial already has its config columns
    assert rows.loc["done", "max_epochs"] == 3 and pd.isna(rows.loc["done", "error"])
    epochs = read_epochs(tmp_path / "st").to_pandas()
    assert sorted(epochs.groupby("trial_id").size().items()) == [("done", 3), ("early", 1), ("failed", 1), ("running", 2)]


def test_error_text_from_pickled_exception(tmp_path):
    import ray.cloudpickle

    path = tmp_path / "error.pkl"
    try:
        raise FloatingPointError("train_loss is nan at epoch 1. Lower train.lr or set train.grad_clip.")
    except FloatingPointError as err:
        path.write_bytes(ray.cloudpickle.dumps(err))
    trial = fake_trial("t", config(), pickled_error_file=str(path))
    text = writer_mod.trial_error_text(trial)
    assert text == "FloatingPointError: train_loss is nan at epoch 1. Lower train.lr or set train.grad_clip."
    assert writer_mod.trial_error_text(fake_trial("u", config())).startswith("unknown error")


def test_atomic_write_keeps_previous_table_on_crash(tmp_path, monkeypatch, caplog):
    writer = ResultsWriter(str(tmp_path), "atomic", flush_interval_s=0)
    writer.flush_share = math.inf  # no spacing between flushes: every result flushes
    trial = fake_trial("a", config())
    trials = [trial]
    writer.on_trial_start(0, trials, trial)
    writer.on_trial_result(0, trials, trial, fake_result(1))  # flush_interval_s=0: flushed now
    before = pq.read_table(tmp_path / "atomic" / "epochs.parquet")
    assert before.num_rows == 1

    real_write = pq.write_table

    def crash_midway(table, where, **kwargs):
        where.write(b"PAR1 half a table")
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer_mod.pq, "write_table", crash_midway)
    writer.on_trial_result(0, trials, trial, fake_result(2))  # a failing flush during the sweep only warns
    assert "disk full" in caplog.text and "will retry" in caplog.text
    with pytest.raises(OSError, match="could not write the results tables to .*atomic.*disk full"):
        writer.flush()

    assert sorted(os.listdir(tmp_path / "atomic")) == ["epochs.parquet", "trials.parquet"]  # no temp left behind
    assert pq.read_table(tmp_path / "atomic" / "epochs.parquet").equals(before)  # previous table intact

    monkeypatch.setattr(writer_mod.pq, "write_table", real_write)
    writer.on_trial_complete(0, trials, trial)  # rows kept in memory are written at the next flush
    writer.on_experiment_end(trials)
    assert read_epochs(tmp_path / "atomic").column("epoch").to_pylist() == [1, 2]


def test_resume_replaces_reported_epochs_without_duplicates(tmp_path):
    first = ResultsWriter(str(tmp_path), "res")
    a, b = fake_trial("a", config(train={"epochs": 6})), fake_trial("b", config())
    run_fake(first, a, [1, 2, 3, 4, 5], [a, b], end=None, values={e: e / 10 for e in range(1, 6)})
    run_fake(first, b, [1, 2, 3], [a, b])
    first.flush()  # ... and the driver dies here

    # The resumed sweep: trial a restored from its epoch-2 checkpoint re-runs epochs 3.. .
    second = ResultsWriter(str(tmp_path), "res")
    a_again = fake_trial("a", config(train={"epochs": 6}))
    b_done = fake_trial("b", config(), status="TERMINATED")
    trials = [a_again, b_done]
    second.on_trial_restore(0, trials, a_again)
    for e in (3, 4):
        second.on_trial_result(0, trials, a_again, fake_result(e, val_acc=e / 10 + 0.5))
    second.flush()
    mid = read_epochs(tmp_path / "res").to_pandas()
    assert not mid.duplicated(["trial_id", "epoch"]).any()
    # epoch 5 belonged to the abandoned run: gone until the new run reports it
    assert mid[mid.trial_id == "a"].set_index("epoch")["val_acc"].to_dict() == pytest.approx({1: 0.1, 2: 0.2, 3: 0.8, 4: 0.9})
    for e in (5, 6):
        second.on_trial_result(0, trials, a_again, fake_result(e, val_acc=e / 10 + 0.5))
    second.on_trial_complete(0, trials, a_again)
    second.on_experiment_end(trials)

    epochs = read_epochs(tmp_path / "res").to_pandas()
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    a_rows = epochs[epochs.trial_id == "a"].set_index("epoch")["val_acc"].to_dict()
    assert a_rows == pytest.approx({1: 0.1, 2: 0.2, 3: 0.8, 4: 0.9, 5: 1.0, 6: 1.1})  # later values kept
    assert epochs[epochs.trial_id == "b"]["epoch"].tolist() == [1, 2, 3]  # untouched rows survive the resume
    trials_df = read_trials(tmp_path / "res").to_pandas()
    assert sorted(trials_df.trial_id) == ["a", "b"]
    assert trials_df.set_index("trial_id").loc["a", "status"] == "TERMINATED"
    assert trials_df.set_index("trial_id").loc["b", "status"] == "TERMINATED"

    # Re-reporting inside one writer (Tune retried a trial from a checkpoint) replaces rows too.
    third = ResultsWriter(str(tmp_path), "res", flush_interval_s=0)
    c = fake_trial("c", config())
    run_fake(third, c, [1, 2, 3], end=None)
    third.on_trial_result(0, [c], c, fake_result(2, val_acc=0.99))
    third.flush()
    c_rows = read_epochs(tmp_path / "res").to_pandas().query("trial_id == 'c'")
    assert c_rows["epoch"].tolist() == [1, 2] and c_rows["val_acc"].tolist()[-1] == 0.99


def test_resume_forgets_orphans_of_the_killed_driver(tmp_path):
    """Trials the killed driver started after its last experiment snapshot are unknown to the
    resumed Tune run (it reruns their configs under new ids): their rows and epochs go, including
    epochs whose trial row was never written (the driver died between the two table writes)."""
    first = ResultsWriter(str(tmp_path), "orph")
    kept, orphan, rowless = (fake_trial(t, config(train={"epochs": 3})) for t in ("kept", "orphan", "rowless"))
    run_fake(first, kept, [1, 2, 3], [kept, orphan])
    run_fake(first, orphan, [1, 2], [kept, orphan], end=None)
    first.flush()
    # The epochs of a third trial reached storage, its trial row did not.
    rowless_epochs = epochs_table([{"sweep": "orph", "trial_id": "rowless", "epoch": e,
                                    **result_metrics(fake_result(e))[1]} for e in (1, 2)])
    table = pa.concat_tables([read_epochs(tmp_path / "orph"), rowless_epochs], promote_options="permissive")
    pq.write_table(table, tmp_path / "orph" / "epochs.parquet")
    assert "rowless" not in read_trials(tmp_path / "orph").column("trial_id").to_pylist()

    second = ResultsWriter(str(tmp_path), "orph")
    kept_done, fresh = fake_trial("kept", config(train={"epochs": 3}), status="TERMINATED"), fake_trial("fresh", config())
    run_fake(second, fresh, [1, 2, 3], [kept_done, fresh])
    second.on_experiment_end([kept_done, fresh])
    epochs = read_epochs(tmp_path / "orph").to_pandas()
    assert epochs.groupby("trial_id")["epoch"].apply(list).to_dict() == {"fresh": [1, 2, 3], "kept": [1, 2, 3]}
    assert sorted(read_trials(tmp_path / "orph").column("trial_id").to_pylist()) == ["fresh", "kept"]


def test_writer_pickles_by_settings_and_reloads(tmp_path):
    writer = ResultsWriter(str(tmp_path), "p", flush_interval_s=5)
    run_fake(writer, fake_trial("a", config()), [1, 2, 3])
    writer.flush()
    clone = pickle.loads(pickle.dumps(writer))  # Tuner pickles its RunConfig for Tuner.restore
    assert (clone.storage, clone.sweep, clone.flush_interval_s) == (str(tmp_path), "p", 5.0)
    assert clone._flushed.num_rows == 3 and set(clone._rows) == {"a"}


def test_storage_uri_and_readers(tmp_path):
    writer = ResultsWriter(f"file://{tmp_path}", "uri")
    run_fake(writer, fake_trial("a", config()), [1, 2])
    writer.on_experiment_end([])
    other = ResultsWriter(str(tmp_path), "other")
    run_fake(other, fake_trial("b", config()), [1, 2, 3], end="error")
    other.on_experiment_end([])
    (tmp_path / "not_a_sweep").mkdir()

    assert read_epochs(f"file://{tmp_path}/uri").num_rows == 2
    assert read_trials(tmp_path / "uri" / "trials.parquet").num_rows == 1
    sweeps = list_sweeps(tmp_path)
    assert [s.name for s in sweeps] == ["other", "uri"]
    other_s, uri_s = sweeps
    assert uri_s.counts == {"STOPPED_EARLY": 1} and uri_s.trials == 1  # 2 of 3 epochs, then completed
    assert (uri_s.epochs_done, uri_s.epochs_planned) == (2, 3)
    assert other_s.counts == {"ERROR": 1} and other_s.modified is not None
    assert other_s.path == f"{tmp_path}/other"

    with pytest.raises(FileNotFoundError, match=r"no results table at .*missing/epochs\.parquet.*list_sweeps"):
        read_epochs(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no storage directory at"):
        list_sweeps(tmp_path / "nowhere")


def test_newer_schema_is_refused(tmp_path):
    table = epochs_table([{"sweep": "s", "trial_id": "a", "epoch": 1, "val_acc": 0.5}])
    table = table.replace_schema_metadata({**table.schema.metadata, VERSION_KEY: b"99"})
    (tmp_path / "s").mkdir()
    pq.write_table(table, tmp_path / "s" / "epochs.parquet")
    with pytest.raises(ValueError, match="schema v99.*Upgrade mmtune"):
        read_epochs(tmp_path / "s")
    with pytest.raises(ValueError, match="schema v99"):
        ResultsWriter(str(tmp_path), "s")


def test_duckdb_reads_the_tables_without_mmtune(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    writer = ResultsWriter(str(tmp_path), "d")
    run_fake(writer, fake_trial("a", config()), [1, 2, 3])
    writer.on_experiment_end([])
    (n,) = duckdb.sql(f"select count(*) from '{tmp_path}/d/epochs.parquet'").fetchone()
    (status,) = duckdb.sql(f"select status from '{tmp_path}/d/trials.parquet'").fetchone()
    assert (n, status) == (3, "TERMINATED")


# -- a real sweep ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_tune_run_is_stored(ray_session, tmp_path):
    from ray import tune

    from mmtune.sweep.trainable import BalancedTrainable

    # Seed 0 runs its 3 epochs; seed 1 is stopped by Tune after 1 (as ASHA would); seed 2 gets lr 1e6,
    # which diverges to NaN and raises FloatingPointError in Trial.step.
    space = config("joint", train={"lr": tune.sample_from(lambda spec: 1e6 if spec.config.seed == 2 else 0.05)})
    space["seed"] = tune.grid_search([0, 1, 2])
    tuner = tune.Tuner(
        BalancedTrainable,
        param_space=space,
        # One actor, reused: the failing trial (last in grid order) is the only one to end it.
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path), name="t", callbacks=[ResultsWriter(str(tmp_path), "t")], verbose=0,
            stop=lambda trial_id, result: result["config"]["seed"] == 1 and result["training_iteration"] >= 1,
        ),
    )
    tuner.fit()  # errored trials are reported in the result grid, not raised

    epochs = pd.read_parquet(tmp_path / "t" / "epochs.parquet")
    trials_df = pd.read_parquet(tmp_path / "t" / "trials.parquet")
    assert len(trials_df) == 3 and trials_df.trial_id.is_unique
    by_seed = trials_df.set_index("seed")
    assert by_seed.loc[0, ["status", "epochs_run", "max_epochs"]].tolist() == ["TERMINATED", 3, 3]
    assert by_seed.loc[1, ["status", "epochs_run", "max_epochs"]].tolist() == ["STOPPED_EARLY", 1, 3]
    assert by_seed.loc[2, ["status", "epochs_run"]].tolist() == ["ERROR", 0]
    error = by_seed.loc[2, "error"]
    assert error.startswith("FloatingPointError: train_loss is nan at epoch 1") and "Lower train.lr" in error
    assert by_seed.loc[0, "config_key"] == by_seed.loc[1, "config_key"] != by_seed.loc[2, "config_key"]
    assert pd.isna(by_seed.loc[0, "error"]) and by_seed.loc[0, "method"] == "joint"
    assert by_seed.loc[0, "dataset"] == "synthetic" and by_seed.loc[0, "fusion"] == "concat"
    ok = by_seed.loc[[0, 1]]
    assert ok.best_val_acc.between(0, 1).all() and ok.test_acc_at_best_val.between(0, 1).all()
    assert ok.final_val_acc.notna().all() and (ok.wall_s > 0).all() and ok.best_epoch.between(1, 3).all()
    assert by_seed["train.lr"].tolist() == [0.05, 0.05, 1e6]

    # one row per (trial, epoch); the failed trial has none
    assert len(epochs) == 4 and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert epochs.groupby("trial_id").size().to_dict() == {by_seed.loc[0, "trial_id"]: 3, by_seed.loc[1, "trial_id"]: 1}
    assert {"val_acc", "val_acc/audio", "imbalance/video", "test_map", "samples_per_s"} <= set(epochs.columns)
    assert not set(epochs.columns) & {"training_iteration", "time_total_s", "date", "hostname", "config", "done"}
    assert all(math.isfinite(v) for v in epochs.val_acc)

    schema = pq.read_schema(tmp_path / "t" / "trials.parquet")
    assert schema.field("train.lr").type == pa.float64() and schema.field("seed").type == pa.int64()
    assert schema.field("train.epochs").type == pa.int64() and schema.field("model.fusion").type == pa.string()
    assert schema_version(schema) == SCHEMA_VERSION
