"""Faults and damaged folders (issue 23): a full or read-only storage, damaged tables and spec.json,
Ray's experiment state truncated by a full disk, and the processes a killed driver leaves running.

Each test reproduces one failure the audit found. A real full or read-only disk is a small tmpfs
(``mount`` needs root; those tests skip without it); the unit-level ones fake the failing filesystem
call instead. The end-to-end ones run Ray and are marked slow.
"""

from __future__ import annotations

import errno
import glob
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmtune.cli import main
from mmtune.store import read_trials
from mmtune.store import writer as writer_mod
from mmtune.store.writer import ResultsWriter

ROOT = Path(__file__).resolve().parents[2]
TINY = {"dataset": {"n_train": 256, "n_val": 96, "n_test": 96}, "train": {"epochs": 3, "batch_size": 32}}


# -- helpers ----------------------------------------------------------------------------------------
def _config(seed: int = 0) -> dict:
    return {"method": "joint", "seed": seed, **{k: dict(v) for k, v in TINY.items()}}


def _trial(trial_id: str, seed: int = 0, status: str = "PENDING", **extra) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config=_config(seed), status=status, pickled_error_file=None,
                           error_file=None, **extra)


def _result(epoch: int) -> dict:
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "val_acc": 0.5, "test_acc": 0.4, "best_val_acc": 0.5,
            "best_epoch": float(epoch), "training_iteration": epoch, "time_total_s": 0.1 * epoch}


def _finished_sweep(storage: Path, name: str = "s", seeds=(0, 1)) -> Path:
    """A sweep folder as a finished grid sweep leaves it: both tables and spec.json (no Ray)."""
    writer = ResultsWriter(str(storage), name)
    trials = [_trial(f"t{seed}", seed) for seed in seeds]
    for trial in trials:
        writer.on_trial_start(0, trials, trial)
        for epoch in (1, 2, 3):
            writer.on_trial_result(0, trials, trial, _result(epoch))
        writer.on_trial_complete(0, trials, trial)
    writer.on_experiment_end(trials)
    folder = storage / name
    spec = {"name": name, "method": "joint", "seeds": list(seeds), **TINY}
    (folder / "spec.json").write_text(json.dumps({"spec": spec, "name": name, "num_trials": len(seeds), "axes": [],
                                                  "metric": "val_acc", "mode": "max", "algorithm": "grid"}))
    return folder


def _thrift_damage(file: Path) -> None:
    """Bytes overwritten inside the footer: pyarrow's "Couldn't deserialize thrift" (an OSError)."""
    data = bytearray(file.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    start = len(data) - 8 - footer
    data[start:start + 16] = b"\xff" * 16
    file.write_bytes(bytes(data))


def _truncate(file: Path, keep: float = 0.5) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    # "local": a Ray of its own, never a cluster some other `ray start` left on this machine.
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT), RAY_ADDRESS="local")
    return env


@contextmanager
def tmpfs(folder: Path, size: str):
    """A size-capped folder (a tmpfs mount); skips the test where mounting is not permitted."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"cannot mount a tmpfs here: {err}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


def _fill(folder: Path) -> None:
    """Write until the disk is full."""
    fd = os.open(folder / "ballast", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"\0" * 2**16)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


# -- atomic writes ----------------------------------------------------------------------------------
def test_spec_json_is_replaced_atomically_on_a_full_disk(tmp_path):
    from mmtune.sweep.tuner import _write_text

    with tmpfs(tmp_path / "disk", "256k") as disk:
        _write_text(str(disk / "s" / "spec.json"), json.dumps({"spec": {"name": "s"}, "num_trials": 1}))
        _fill(disk)
        with pytest.raises(OSError):
            _write_text(str(disk / "s" / "spec.json"), json.dumps({"spec": {"name": "s", "pad": "x" * 2**20}}))
        # The old file is whole (it was truncated to 0 bytes before), and no temporary file is left.
        assert json.loads((disk / "s" / "spec.json").read_text())["num_trials"] == 1
        assert os.listdir(disk / "s") == ["spec.json"]


class _HalfWritten:
    """An output stream that writes half of what it is given, then fails as a full disk does."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, data):
        self.stream.write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()


def test_spec_json_is_replaced_atomically_when_a_write_fails(tmp_path, monkeypatch):
    """The same without a tmpfs: the filesystem's write fails half way."""
    import pyarrow.fs as pafs

    from mmtune.sweep.tuner import _write_text

    file = tmp_path / "s" / "spec.json"
    _write_text(str(file), json.dumps({"spec": {"name": "s"}, "num_trials": 1}))

    class FullDisk(pafs.LocalFileSystem):
        def open_output_stream(self, path, *args, **kwargs):
            return _HalfWritten(super().open_output_stream(path, *args, **kwargs))

    monkeypatch.setattr(pafs, "LocalFileSystem", FullDisk)
    with pytest.raises(OSError):
        _write_text(str(file), json.dumps({"spec": {"name": "s"}, "num_trials": 2}))
    assert json.loads(file.read_text())["num_trials"] == 1 and os.listdir(file.parent) == ["spec.json"]


def test_a_failing_flush_is_logged_once_with_the_folder_and_its_free_space(tmp_path, monkeypatch, caplog):
    writer = ResultsWriter(str(tmp_path), "full", flush_interval_s=0)
    writer.flush_share = float("inf")  # every result flushes
    trial = _trial("a")
    writer.on_trial_start(0, [trial], trial)

    def no_space(table, where, **kwargs):
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(writer_mod.pq, "write_table", no_space)
    with caplog.at_level(logging.WARNING, logger=writer_mod.__name__):
        for epoch in (1, 2, 3):
            writer.on_trial_result(0, [trial], trial, _result(epoch))
    failures = [r for r in caplog.records if "could not write the results tables" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]  # not one per flush
    assert str(tmp_path / "full") in failures[0].getMessage() and " free of " in failures[0].getMessage()
    assert writer.storage_fault is not None  # what stops the sweep
    with pytest.raises(OSError, match=r"could not write the results tables to .*full.*free of"):
        writer.flush()
    # Tune must not store an experiment snapshot newer than the tables: a resume would trust it.
    with pytest.raises(OSError, match="not storing Ray Tune's experiment snapshot"):
        writer.get_state()


@pytest.mark.parametrize("err,expected", [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EROFS, "Read-only file system"), True),
    (OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"), True),  # pyarrow's
    ("OSError: [Errno 30] Read-only file system: '/runs/s/checkpoint_000001'", True),  # a trial's stored error
    (OSError(errno.ENOENT, "No such file or directory"), False),
    ("FloatingPointError: train_loss is nan at epoch 2", False),
    (None, False),
])
def test_storage_errors_are_told_from_a_trials_own_failures(err, expected):
    from mmtune.store.faults import is_storage_error

    assert is_storage_error(err) is expected
    if isinstance(err, OSError):
        wrapped = RuntimeError("Trial task failed")
        wrapped.__cause__ = err
        assert is_storage_error(wrapped) is expected


# -- full or read-only storage, before the sweep starts ---------------------------------------------
class _ReadOnlyFs:
    """The calls the write probe makes, failing as a read-only mount does."""

    def get_file_info(self, path):
        import pyarrow.fs as pafs

        return pafs.LocalFileSystem().get_file_info(path)

    def create_dir(self, path, recursive=True):
        pass

    def open_output_stream(self, path):
        raise OSError(errno.EROFS, "Read-only file system", path)

    def delete_file(self, path):
        raise FileNotFoundError(path)


def test_read_only_storage_is_one_clear_error_before_ray_starts(tmp_path, monkeypatch, capsys):
    from mmtune.store import reader

    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nmethod: joint\ntrain: {epochs: 1}\nseeds: [0]\n")
    storage = tmp_path / "ro"
    storage.mkdir()
    real = reader.open_storage

    def read_only(path):
        fs, where = real(path)
        return (_ReadOnlyFs(), where) if where.startswith(str(storage)) else (fs, where)

    monkeypatch.setattr(reader, "open_storage", read_only)
    code, out, err = _cli(capsys, "sweep", str(spec), "--storage", str(storage))
    assert code == 2 and "Traceback" not in err, err
    assert "storage problem" in err and str(storage) in err and "read-only file system" in err and " free of " in err
    assert "starting Ray" not in out and os.listdir(storage) == []


def test_full_or_read_only_tmpfs_is_refused_by_mmtune_sweep(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nmethod: joint\ntrain: {epochs: 1}\nseeds: [0]\n")
    with tmpfs(tmp_path / "disk", "1m") as disk:  # the audit's disk: 1 MiB
        done = subprocess.run([sys.executable, "-m", "mmtune.cli", "sweep", str(spec), "--storage", str(disk)],
                              env=_env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert "storage problem" in done.stderr and str(disk) in done.stderr and "1.0 MiB free" in done.stderr
        assert "starting Ray" not in done.stdout and os.listdir(disk) == []  # nothing started or written
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True, timeout=30)
        done = subprocess.run([sys.executable, "-m", "mmtune.cli", "sweep", str(spec), "--storage", str(disk / "runs")],
                              env=_env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert "read-only file system" in done.stderr and str(disk / "runs") in done.stderr


# -- damaged folders --------------------------------------------------------------------------------
@pytest.mark.parametrize("table", ["trials.parquet", "epochs.parquet"])
@pytest.mark.parametrize("damage", [_thrift_damage, _truncate], ids=["bytes-overwritten", "truncated"])
def test_report_on_a_damaged_table_names_it_and_the_way_back(tmp_path, capsys, table, damage):
    folder = _finished_sweep(tmp_path)
    damage(folder / table)
    code, _, err = _cli(capsys, "report", str(folder), "--out", str(tmp_path / "r.md"))
    assert code == 2 and "Traceback" not in err, err
    assert f"{folder}/{table}" in err and "damaged" in err and f"mmtune resume {folder}" in err


def test_read_trials_of_a_damaged_table_is_a_config_error(tmp_path):
    from mmtune.errors import ConfigError

    folder = _finished_sweep(tmp_path)
    _thrift_damage(folder / "trials.parquet")
    with pytest.raises(ConfigError, match="trials.parquet: is damaged"):
        read_trials(folder)


def test_ls_lists_a_sweep_with_a_damaged_table_as_damaged(tmp_path, capsys):
    _finished_sweep(tmp_path, "good")
    _thrift_damage(_finished_sweep(tmp_path, "bad") / "trials.parquet")
    code, out, err = _cli(capsys, "ls", str(tmp_path))
    assert code == 0 and "Traceback" not in err
    rows = {line.split("\t")[0]: line for line in out.splitlines()}
    assert "TERMINATED 2" in rows["good"] and "DAMAGED" in rows["bad"]


@pytest.mark.parametrize("text,needle", [
    ("{\"spec\": {", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ("{\"spec\": 3, \"axes\": 5, \"name\": \"s\"}", "axes: must be list"),
    ("{\"axes\": [1]}", "must list dotted keys"),
])
def test_report_on_a_damaged_spec_json_is_a_clear_error(tmp_path, capsys, text, needle):
    folder = _finished_sweep(tmp_path)
    (folder / "spec.json").write_text(text)
    code, _, err = _cli(capsys, "report", str(folder), "--out", str(tmp_path / "r.md"))
    assert code == 2 and "Traceback" not in err, err
    assert f"{folder}/spec.json" in err and needle in err


@pytest.mark.parametrize("text", ["{\"spec\": {", "[]", "{\"spec\": 3}"])
def test_resume_with_a_damaged_spec_json_is_a_clear_error(tmp_path, capsys, text):
    folder = _finished_sweep(tmp_path)
    (folder / "spec.json").write_text(text)
    code, _, err = _cli(capsys, "resume", str(folder))
    assert code == 2 and "Traceback" not in err, err
    assert f"{folder}/spec.json" in err


def test_trials_failed_by_a_full_disk_are_not_ended(tmp_path, capsys):
    """A trial in ERROR because the storage was full is not a verdict: `mmtune resume` must run it
    again instead of answering "nothing to resume"."""
    from mmtune.store.reader import finished_counts

    writer = ResultsWriter(str(tmp_path), "s")
    trial = _trial("t0")
    writer.on_trial_start(0, [trial], trial)
    writer.on_trial_result(0, [trial], trial, _result(1))
    text = tmp_path / "error.txt"
    text.write_text("OSError: [Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device\n")
    trial.error_file = str(text)
    writer.on_trial_error(0, [trial], trial)
    writer.on_experiment_end([trial])
    (tmp_path / "s" / "spec.json").write_text(json.dumps({"spec": {"name": "s", "method": "joint"}, "num_trials": 1}))
    assert read_trials(tmp_path / "s").column("status").to_pylist() == ["ERROR"]
    assert finished_counts(tmp_path / "s") is None


def test_a_sweep_with_planned_trials_missing_never_exits_0(capsys):
    from mmtune.cli import _console, _sweep_exit
    from mmtune.sweep.tuner import SweepOutcome

    console = _console(stderr=False)
    outcome = SweepOutcome("runs/s", {"TERMINATED": 1, "PENDING": 5}, 4.4, planned=6)
    assert _sweep_exit(outcome, console) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "5 of the 6 planned trials have not ended" in out and "mmtune resume runs/s" in out
    assert _sweep_exit(SweepOutcome("runs/s", {"TERMINATED": 6}, 4.4, planned=6), console) == 0


# -- a killed driver's Ray processes --------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _sleeper(*args: str, title: str | None = None, hold: Path | None = None) -> subprocess.Popen:
    """A process whose command line holds ``args``, or is ``title`` (as Ray's agents retitle
    themselves), optionally holding the file ``hold`` open."""
    redirect = f"exec 3>>'{hold}'; " if hold else ""
    sleep = f"{sys.executable} -c 'import time; time.sleep(60)' {' '.join(args)}"
    command = f"exec -a '{title}' sleep 60" if title else f"exec {sleep}"
    return subprocess.Popen(["bash", "-c", redirect + command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _alive(proc: subprocess.Popen) -> bool:
    return proc.poll() is None


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="process discovery reads /proc")
def test_resume_ends_only_the_dead_drivers_ray_session_processes(tmp_path):
    from mmtune.sweep.driver import DRIVER_FILE, clean_up_dead_driver

    pid = _dead_pid()
    session = tmp_path / "ray" / f"session_2026-01-01_00-00-00_000001_{pid}"
    other = tmp_path / "ray" / f"session_2026-01-01_00-00-00_000001_{pid}0"  # its name starts like ours
    for folder in (session, other):
        (folder / "logs").mkdir(parents=True)
    mine = [_sleeper(f"--session-dir={session}"), _sleeper(title="ray::DashboardAgent", hold=session / "logs" / "a.log")]
    theirs = [_sleeper(f"--session-dir={other}"), _sleeper(title="ray::DashboardAgent", hold=other / "logs" / "a.log"),
              _sleeper(f"--log-dir={other}/logs")]
    time.sleep(0.3)  # let bash exec
    try:
        (tmp_path / "s").mkdir()
        record = {"pid": pid, "host": socket.gethostname(), "start_ticks": 1, "ray_session_dir": str(session)}
        (tmp_path / "s" / DRIVER_FILE).write_text(json.dumps(record))
        ended = clean_up_dead_driver(str(tmp_path / "s"))
        assert sorted(ended) == sorted(p.pid for p in mine)
        for proc in mine:
            proc.wait(timeout=10)
        assert all(_alive(p) for p in theirs)  # another session's processes are never touched
        # A record naming a session that is not the dead driver's (its pid is not in the name) ends nothing.
        (tmp_path / "s" / DRIVER_FILE).write_text(json.dumps({**record, "ray_session_dir": str(other)}))
        assert clean_up_dead_driver(str(tmp_path / "s")) == [] and all(_alive(p) for p in theirs)
    finally:
        for proc in mine + theirs:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="process discovery reads /proc")
def test_a_record_naming_a_live_drivers_session_ends_nothing(tmp_path):
    """A driver.json with a wrong start time (a reused pid, or a crafted record) naming the Ray session of
    a driver that still runs must not stop that driver's sweep."""
    from mmtune.sweep.driver import DRIVER_FILE, clean_up_dead_driver

    driver = _sleeper()
    session = tmp_path / "ray" / f"session_2026-01-01_00-00-00_000001_{driver.pid}"
    (session / "logs").mkdir(parents=True)
    agent = _sleeper(title="ray::DashboardAgent", hold=session / "logs" / "a.log")
    time.sleep(0.3)
    try:
        (tmp_path / "s").mkdir()
        record = {"pid": driver.pid, "host": socket.gethostname(), "start_ticks": 1, "ray_session_dir": str(session)}
        (tmp_path / "s" / DRIVER_FILE).write_text(json.dumps(record))
        assert clean_up_dead_driver(str(tmp_path / "s")) == []
        assert _alive(driver) and _alive(agent)
    finally:
        for proc in (driver, agent):
            proc.kill()
            proc.wait()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="process discovery reads /proc")
def test_resume_refuses_while_the_sweeps_driver_still_runs(tmp_path, capsys):
    from mmtune.sweep.driver import DRIVER_FILE, _start_ticks

    folder = _finished_sweep(tmp_path)
    (folder / "trials.parquet").unlink()  # something left to resume
    driver = _sleeper()
    try:
        record = {"pid": driver.pid, "host": socket.gethostname(), "start_ticks": _start_ticks(driver.pid),
                  "ray_session_dir": None}
        (folder / DRIVER_FILE).write_text(json.dumps(record))
        code, _, err = _cli(capsys, "resume", str(folder))
        assert code == 2 and "still running" in err and str(driver.pid) in err
        assert _alive(driver)
    finally:
        driver.kill()
        driver.wait()


# -- end to end, with Ray ---------------------------------------------------------------------------
def _quiet():
    from rich.console import Console

    return Console(file=io.StringIO(), force_terminal=False, width=120)


def _grid(name: str, seeds: int = 4, **extra):
    from mmtune.sweep.spec import parse_spec

    return parse_spec({"name": name, "method": "joint", "dataset": {"name": "synthetic", **TINY["dataset"]},
                       "train": {"epochs": 2, "batch_size": 64}, "seeds": list(range(seeds)), **extra})


@pytest.mark.slow
def test_resume_rebuilds_a_truncated_trials_table_from_tunes_state(ray_session, tmp_path, capsys):
    from mmtune.sweep.tuner import run_sweep

    out = run_sweep(_grid("fin", seeds=2), storage=str(tmp_path), console=_quiet(), live=False)
    before = pd.read_parquet(Path(out.path, "trials.parquet")).set_index("trial_id").sort_index()
    _truncate(Path(out.path, "trials.parquet"))
    code, stdout, err = _cli(capsys, "resume", out.path)
    assert code == 0 and "Traceback" not in err, stdout + err
    assert "trials.parquet cannot be read" in " ".join(stdout.split())
    after = pd.read_parquet(Path(out.path, "trials.parquet")).set_index("trial_id").sort_index()
    columns = ["status", "seed", "epochs_run", "best_epoch", "best_val_acc", "config_key"]
    pd.testing.assert_frame_equal(after[columns], before[columns])
    assert any(p.name.startswith("trials.parquet.damaged-") for p in Path(out.path).iterdir())


@pytest.mark.slow
def test_resume_after_tunes_state_was_truncated_runs_every_unfinished_trial(ray_session, tmp_path, capsys):
    """The audit's full disk: Ray's experiment state and searcher state left as 0-byte files and two
    trials unfinished. Tune would start afresh and run a fraction of them with exit 0; the resumed
    sweep must end every planned trial and keep the ones that had ended."""
    from mmtune.sweep.tuner import run_sweep

    out = run_sweep(_grid("cut"), storage=str(tmp_path), console=_quiet(), live=False)
    folder = Path(out.path)
    trials = pq.read_table(folder / "trials.parquet")
    ended = sorted(trials.column("trial_id").to_pylist())[:2]
    keep = [t in ended for t in trials.column("trial_id").to_pylist()]
    pq.write_table(trials.filter(keep), folder / "trials.parquet")  # the other two never reached the table
    for pattern in ("experiment_state-*.json", "searcher-state-*.pkl"):
        for file in folder.glob(pattern):
            file.write_bytes(b"")
    code, stdout, err = _cli(capsys, "resume", out.path)
    assert code == 0 and "Traceback" not in err, stdout + err
    assert "Rebuilding the sweep from its tables: 2 ended trial(s) kept, 2 trial(s) run again" in " ".join(stdout.split())
    epochs, trials = pd.read_parquet(folder / "epochs.parquet"), pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 4 and set(trials["status"]) == {"TERMINATED"} and sorted(trials["seed"]) == [0, 1, 2, 3]
    assert set(ended) <= set(trials["trial_id"])  # the ended trials kept their rows
    assert len(epochs) == 8 and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert set(epochs["trial_id"]) == set(trials["trial_id"])
    code, stdout, _ = _cli(capsys, "resume", out.path)  # and the rebuilt sweep is a sweep like any other
    assert code == 0 and "nothing to resume" in stdout


@pytest.mark.slow
def test_resume_never_keeps_a_trial_whose_last_epochs_the_tables_lack(ray_session, tmp_path, capsys):
    """The storage failed after a trial's last epochs were reported but before they reached the tables,
    and Tune's snapshot recorded the trial as ended: restoring would keep it ended with epochs missing
    (and call it STOPPED_EARLY). It must run again."""
    import pyarrow.compute as pc

    from mmtune.sweep.tuner import run_sweep

    out = run_sweep(_grid("behind", seeds=2), storage=str(tmp_path), console=_quiet(), live=False)
    folder = Path(out.path)
    epochs, trials = pq.read_table(folder / "epochs.parquet"), pq.read_table(folder / "trials.parquet")
    lost = sorted(trials.column("trial_id").to_pylist())[0]
    keep = pc.invert(pc.and_(pc.equal(epochs["trial_id"], lost), pc.equal(epochs["epoch"], 2)))
    pq.write_table(epochs.filter(keep), folder / "epochs.parquet")  # the tables as their last flush left them
    rows = trials.to_pylist()
    for row in rows:
        if row["trial_id"] == lost:
            row.update(status="RUNNING", epochs_run=1)
    pq.write_table(pa.Table.from_pylist(rows, schema=trials.schema), folder / "trials.parquet")
    code, stdout, err = _cli(capsys, "resume", out.path)
    assert code == 0 and "Traceback" not in err, stdout + err
    assert "lacks the last epochs of 1 trial(s)" in " ".join(stdout.split())
    epochs, trials = pd.read_parquet(folder / "epochs.parquet"), pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 2 and set(trials["status"]) == {"TERMINATED"} and sorted(trials["seed"]) == [0, 1]
    assert len(epochs) == 4 and not epochs.duplicated(["trial_id", "epoch"]).any()


@pytest.mark.slow
def test_resume_rebuilds_an_optuna_sweep_keeping_complete_configurations(ray_session, tmp_path, capsys):
    from mmtune.sweep.tuner import run_sweep

    spec = _grid("opt", seeds=2, train={"epochs": 2, "batch_size": 64, "lr": {"loguniform": [0.001, 0.1]}},
                 search={"algorithm": "optuna", "num_samples": 3, "metric": "val_acc", "mode": "max"})
    out = run_sweep(spec, storage=str(tmp_path), console=_quiet(), live=False)
    folder = Path(out.path)
    trials = pq.read_table(folder / "trials.parquet")
    keys = trials.column("config_key").to_pylist()
    first = sorted(set(keys))[0]
    seeds = trials.column("seed").to_pylist()
    keep = [k != first or s == 0 for k, s in zip(keys, seeds, strict=True)]  # one seed of one configuration lost
    pq.write_table(trials.filter(keep), folder / "trials.parquet")
    (next(folder.glob("experiment_state-*.json"))).write_bytes(b"")
    code, stdout, err = _cli(capsys, "resume", out.path)
    assert code == 0 and "Traceback" not in err, stdout + err
    assert "4 ended trial(s) kept, 2 trial(s) run again" in " ".join(stdout.split())
    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 6 and set(trials["status"]) == {"TERMINATED"}
    assert trials.groupby("config_key")["seed"].apply(sorted).tolist() == [[0, 1]] * 3
    assert first not in set(trials["config_key"]) or (trials["config_key"] == first).sum() == 2


@pytest.mark.slow
def test_disk_filling_up_mid_sweep_is_one_clear_error_and_resume_completes(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent("""\
        name: full
        method: [joint, opm]
        dataset: {n_train: 1024, n_val: 96, n_test: 96}
        train: {epochs: 10}
        seeds: [0, 1]
        checkpoint_every_s: 0
        """))  # a checkpoint every epoch: the full disk shows at the next one
    mmtune = [sys.executable, "-m", "mmtune.cli"]
    with tmpfs(tmp_path / "disk", "24m") as disk:
        proc = subprocess.Popen([*mmtune, "sweep", str(spec), "--storage", str(disk)], env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 120
        while not (disk / "full" / "epochs.parquet").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        _fill(disk)  # another program takes the rest of the disk
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 2, out[-3000:]
        assert "Traceback" not in out and out.count("storage problem") == 1, out[-5000:]
        assert f"{disk}/full" in out and f"mmtune resume {disk}/full" in out, out[-3000:]
        assert re.search(r"no space left on device; \d+ (B|KiB) free of 24\.0 MiB", out), out[-3000:]
        (disk / "ballast").unlink()
        # The full disk may also have kept mmtune from signing Ray's last snapshot (mmtune.sweep.signing): then
        # resume unpickles none of it and rebuilds from the tables; either way every trial ends.
        done = subprocess.run([*mmtune, "resume", str(disk / "full")], env=_env(),
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        epochs, trials = pd.read_parquet(disk / "full" / "epochs.parquet"), pd.read_parquet(disk / "full" / "trials.parquet")
        assert len(trials) == 4 and set(trials["status"]) == {"TERMINATED"}
        assert len(epochs) == 40 and not epochs.duplicated(["trial_id", "epoch"]).any()


def _session_processes_of(session: str) -> list[str]:
    """Command lines of the live processes of a Ray session, found independently of mmtune: the session
    named on the command line, or a file open inside the session folder."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            state = (proc / "stat").read_bytes().rsplit(b")", 1)[-1].split()[0]
            fds = [os.readlink(fd) for fd in (proc / "fd").iterdir()] if cmd.startswith("ray::") else []
        except (OSError, IndexError):
            continue
        if state != b"Z" and (session in cmd or any(fd.startswith(session + "/") for fd in fds)):
            found.append(cmd[:80])
    return found


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="process discovery reads /proc")
def test_resume_after_a_sigkilled_driver_ends_its_leftover_ray_processes(tmp_path):
    """`kill -9` of the driver alone mid-sweep: resume ends what its Ray session left running and completes
    every trial, each epoch stored once (a killed process group leaves nothing to end; the rest is the same)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent("""\
        name: killed
        method: joint
        dataset: {n_train: 1024, n_val: 96, n_test: 96}
        train: {epochs: 8}
        seeds: [0, 1, 2, 3, 4, 5, 6, 7]
        """))  # the tables are first written when the first trial ends, if not before: six or more are left to kill
    mmtune = [sys.executable, "-m", "mmtune.cli"]
    folder = tmp_path / "runs" / "killed"
    log = (tmp_path / "driver.log").open("w")  # what the killed driver printed, for a failure's message
    proc = subprocess.Popen([*mmtune, "sweep", str(spec), "--storage", str(tmp_path / "runs")], env=_env(),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    session = None
    try:
        deadline = time.time() + 120
        while not (folder / "epochs.parquet").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        (session,) = glob.glob(f"/tmp/ray/session_*_{proc.pid}")  # Ray names the session after the driver's pid
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone, as the OOM killer or `kill -9 PID` does
        proc.wait()
        time.sleep(2)
        left = _session_processes_of(session)
        assert any(cmd.startswith("ray::") for cmd in left), left  # Ray's agents outlive their driver
        # The kill landed mid-sweep (it may land between a flush's two files: no trials table yet).
        before = pd.read_parquet(folder / "trials.parquet") if (folder / "trials.parquet").exists() else None
        assert before is None or (before["status"] == "TERMINATED").sum() < 8, before
        done = subprocess.run([*mmtune, "resume", str(folder)], env=_env(), capture_output=True, text=True, timeout=240)
        killed = (tmp_path / "driver.log").read_text()[-2000:]
        assert done.returncode == 0, killed + done.stdout[-3000:] + done.stderr[-3000:]
        assert _session_processes_of(session) == []
        assert "process(es) the killed driver's Ray session left running" in " ".join(done.stdout.split())
        trials, epochs = pd.read_parquet(folder / "trials.parquet"), pd.read_parquet(folder / "epochs.parquet")
        assert len(trials) == 8 and set(trials["status"]) == {"TERMINATED"} and sorted(trials["seed"]) == list(range(8))
        assert len(epochs) == 64 and not epochs.duplicated(["trial_id", "epoch"]).any()  # every epoch once
    finally:
        log.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if session:  # whatever this test left running
            from mmtune.sweep.driver import end_processes, session_processes

            end_processes(session_processes(session))
