"""``ResultsWriter``: the driver-side Tune callback that streams a sweep into the results store.

Per result it only files the trial's numeric metrics in an in-memory dict keyed by epoch; tables
are built and written at a flush: when a trial completes or fails, at the end of the experiment,
and on results at most every ``flush_interval_s``. Flushes are also spaced so that they take at most
a tenth of the driver's time (``flush_share``): on a very large sweep, where one flush takes long, a
completion soon after a flush is written by the next one. Rows already flushed are held as Arrow
tables, not Python dicts, so driver memory grows by about 8 bytes per stored number.

Each flush rewrites ``<storage>/<sweep>/epochs.parquet`` and ``trials.parquet`` atomically: the
table goes to a hidden temporary name in the same directory and is then moved over the old file,
so a crash leaves the previous table intact, never a half-written one.

A flush that fails during the sweep (a storage hiccup) is retried at the next one; it is logged once,
with the folder and its free space, not at every flush. The last flush raises.

Resuming: a writer created over an existing sweep directory loads both tables. Rows are keyed by
(trial_id, epoch) and trial_id, so a trial restored from a checkpoint, which re-runs the epochs
after that checkpoint, replaces their rows instead of duplicating them; rows of later epochs from
the abandoned run are dropped with them, so each trial's rows describe one run. Rows of trials that
Tune does not know are orphans of a killed driver and are dropped, except the ``carried`` trials:
finished trials of an earlier Tune experiment, kept when `mmtune resume` had to start a new one
(its experiment state was damaged) for the trials that had not finished.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray import tune
from ray.tune import result as ray_result

from mmtune.store.faults import free_space, is_storage_error
from mmtune.store.reader import open_storage, read_table_file
from mmtune.store.schema import (
    EPOCHS,
    ENDED_STATUSES,
    EPOCHS_FILE,
    ERROR,
    INTERRUPTED,
    HYPERPARAMETER_SECTIONS,
    PAUSED,
    PENDING,
    RUNNING,
    TERMINATED,
    TRIAL_COLUMNS,
    TRIALS_FILE,
    check_schema_version,
    config_key,
    conform,
    ended_status,
    epochs_table,
    hyperparameters,
    merge_type,
    raw_hyperparameters,
    trials_table,
)

__all__ = ["ResultsWriter", "RAY_RESULT_KEYS", "trial_columns", "trial_error_text", "result_metrics"]

logger = logging.getLogger(__name__)

# Keys Ray Tune adds to every result (ids, clocks, hosts, the config): not metrics.
RAY_RESULT_KEYS = frozenset(
    {
        *ray_result.AUTO_RESULT_KEYS,
        *ray_result.DEBUG_METRICS,
        ray_result.DONE,
        ray_result.SHOULD_CHECKPOINT,
        ray_result.EXPERIMENT_TAG,
        ray_result.TRIAL_ID,
        ray_result.RESULT_DUPLICATE,
        ray_result.TRAINING_ITERATION,
        ray_result.TIME_THIS_ITER_S,
        ray_result.TIMESTAMP,
    }
)

# Copied from a trial's last result into its trials row (the Trainable tracks them, DESIGN §3.3).
_BEST_KEYS = (
    "best_val_acc", "best_val_macro_f1", "best_val_map",
    "test_acc_at_best_val", "test_macro_f1_at_best_val", "test_map_at_best_val",
)
_TOP_LEVEL_FIXED = frozenset({"method", "seed", *HYPERPARAMETER_SECTIONS})


def result_metrics(result: Mapping[str, Any]) -> tuple[int, dict[str, float]]:
    """``(epoch, {metric: float})`` of one Tune result: Ray's own keys and non-numbers left out."""
    metrics = {
        k: float(v) for k, v in result.items()
        if k not in RAY_RESULT_KEYS and isinstance(v, (int, float))
    }
    epoch = metrics.pop("epoch", None)
    if epoch is None:  # a Trainable that is not mmtune's: Tune's iteration count is the epoch
        epoch = result.get(ray_result.TRAINING_ITERATION, 0)
    return int(epoch), metrics


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def trial_columns(sweep: str, trial_id: str, config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, pa.DataType]]:
    """The config-derived cells of a trial's row, and the Arrow types of its hyperparameter columns.

    The config is resolved with :func:`parse_trial_config` (defaults filled in). A config that does
    not parse (the trial will fail in ``setup`` with the same message) is stored as given.
    """
    from mmtune.engine.trial import parse_trial_config
    from mmtune.errors import ConfigError

    try:
        spec = parse_trial_config(config)
    except (ConfigError, TypeError, ValueError, AttributeError):
        spec = None
    if spec is not None:
        resolved = spec.to_config()
        values, column_types = hyperparameters(spec)
        row = {
            "method": spec.method, "dataset": spec.dataset.name, "fusion": spec.model.fusion,
            "backbone": spec.model.backbone, "seed": spec.seed, "max_epochs": spec.train.epochs,
        }
    else:
        resolved = dict(config)
        values, column_types = raw_hyperparameters(config)
        seed = config.get("seed")
        epochs = values.get("train.epochs")
        row = {
            "method": _opt_str(config.get("method")),
            "dataset": _opt_str(values.get("dataset.name")),
            "fusion": _opt_str(values.get("model.fusion")),
            "backbone": _opt_str(values.get("model.backbone")),
            "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            "max_epochs": epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None,
        }
    for key, value in resolved.items():  # other top-level scalars (a variant's label) get a column too
        if key not in _TOP_LEVEL_FIXED and (value is None or isinstance(value, (bool, int, float, str))):
            values[key] = value
    row.update(
        sweep=sweep,
        trial_id=trial_id,
        config_key=config_key(resolved),
        config_json=json.dumps(resolved, sort_keys=True, default=str),
        **values,
    )
    return row, column_types


def _exception_text(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)  # RayTaskError wraps the exception raised in the Trainable
    if isinstance(cause, BaseException):
        exc = cause
    return f"{type(exc).__name__}: {exc}"


def _last_exception(text: str) -> str:
    """``"FloatingPointError: ..."`` from the end of a traceback text (Ray's error.txt)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        head, sep, _ = lines[i].partition(": ")
        if sep and head and not head[0].isspace() and head.replace(".", "").replace("_", "").isalnum():
            return "\n".join(lines[i:])
    return lines[-1] if lines else ""


def trial_error_text(trial: Any) -> str:
    """The readable error of a failed Ray trial: ``"<ExceptionType>: <message>"``.

    Reads the pickled exception Ray writes next to the trial on the driver, falling back to the
    text error file; never raises.
    """
    import ray.cloudpickle

    pickled = getattr(trial, "pickled_error_file", None)
    if pickled and os.path.isfile(pickled):
        try:
            with open(pickled, "rb") as f:
                return _exception_text(ray.cloudpickle.load(f))
        except Exception:  # unpicklable cause or a torn file: the text file below still has it
            pass
    text = None
    error_file = getattr(trial, "error_file", None)
    if error_file and os.path.isfile(error_file):
        with open(error_file, errors="replace") as f:
            text = f.read()
    elif hasattr(trial, "get_error"):
        try:
            text = trial.get_error()
        except Exception:
            text = None
    if text:
        return _last_exception(text)
    return "unknown error (Ray wrote no error file for this trial)"


class ResultsWriter(tune.Callback):
    """Write a sweep's ``epochs`` and ``trials`` tables under ``<storage>/<sweep>/`` (DESIGN §3.4).

    ``storage`` is a local path or a URI (``file://``, ``s3://``, ``gs://`` …) read through
    :mod:`pyarrow.fs`, so a sweep on a cluster can write to shared storage.
    """

    # Flushing may take at most this share of the driver's time: after a flush that took d seconds
    # the next one waits d / flush_share (a few milliseconds on small sweeps).
    flush_share: float = 0.1

    def __init__(self, storage: str, sweep: str, *, flush_interval_s: float = 10.0, carried: Iterable[str] = ()):
        if not sweep or "/" in sweep or sweep in (".", ".."):
            raise ValueError(f"`sweep` must be a plain folder name, got {sweep!r}.")
        if not flush_interval_s >= 0:
            raise ValueError(f"`flush_interval_s >= 0` must hold, but got {flush_interval_s=}.")
        self.storage = os.fspath(storage)
        self.sweep = sweep
        self.flush_interval_s = float(flush_interval_s)
        self.carried = frozenset(carried)  # trial ids of an earlier Tune experiment whose rows stay
        fs, base = open_storage(self.storage)
        self._fs: pafs.FileSystem = fs
        self.directory = f"{base.rstrip('/')}/{sweep}"
        # Epoch rows: those already flushed (or loaded) as one Arrow table, plus the ones reported
        # since the last flush as {trial_id: {epoch: {metric: value}}} (insertion = epoch order).
        self._flushed: pa.Table | None = None
        self._flushed_max_epoch: dict[str, int] = {}
        self._new: dict[str, dict[int, dict[str, float]]] = {}
        # Trial rows by trial_id, and the types of their columns.
        self._rows: dict[str, dict[str, Any]] = {}
        self._types: dict[str, pa.DataType] = {}
        # The latest (epoch, metrics, time_total_s) of each trial, folded into its row at a flush.
        self._latest: dict[str, tuple[int, dict[str, float], float | None]] = {}
        self._started_here: set[str] = set()  # trials this writer saw start or report
        self._ended_here: set[str] = set()  # final statuses set by this writer's own callbacks
        self._cut: set[str] | None = None  # trials not ended when the sweep was interrupted (see interrupt())
        self._ray_trials: list[Any] = []  # Tune's list of every trial (a reference, not a copy)
        self._epochs_dirty = self._trials_dirty = False
        self._last_flush = time.monotonic()
        self._flush_cost_s = 0.0
        self._failing: str | None = None  # the failed flush already logged (logged once, not per flush)
        # The first storage failure seen (a trial's checkpoint or a flush: no space, read-only), and who
        # to tell: the sweep stops Tune then, since every later checkpoint would fail the same way.
        self.storage_fault: str | None = None
        self.on_storage_fault: Callable[[str], None] | None = None  # set by the sweep, never pickled
        self._load()

    # -- pickling: Tuner stores its RunConfig (callbacks included) for Tuner.restore ---------------
    def __getstate__(self) -> dict[str, Any]:
        return {"storage": self.storage, "sweep": self.sweep, "flush_interval_s": self.flush_interval_s,
                "carried": sorted(self.carried)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A restored writer re-reads what is on storage now, exactly like a new one.
        self.__init__(state["storage"], state["sweep"], flush_interval_s=state["flush_interval_s"],
                      carried=state.get("carried", ()))

    @property
    def epochs_path(self) -> str:
        return f"{self.directory}/{EPOCHS_FILE}"

    @property
    def trials_path(self) -> str:
        return f"{self.directory}/{TRIALS_FILE}"

    # -- Tune callbacks ----------------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ray_trials = trials
        self._mark_running(trial)

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ray_trials = trials
        self._mark_running(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._ray_trials = trials
        epoch, metrics = result_metrics(result)
        self._record(trial.trial_id, epoch, metrics, result.get(ray_result.TIME_TOTAL_S))
        if trial.trial_id not in self._rows or self._rows[trial.trial_id]["status"] != RUNNING:
            self._mark_running(trial)
        self._maybe_flush(max(self.flush_interval_s, self._flush_gap_s()))

    def interrupt(self) -> None:
        """The sweep was interrupted (Ctrl-C): every trial not ended by now is INTERRUPTED, whatever Tune
        does to it while stopping (it completes running trials, which would read as STOPPED_EARLY)."""
        self._sync_with_tune()
        self._cut = {tid for tid, row in self._rows.items() if row["status"] not in ENDED_STATUSES}
        self._cut |= {t.trial_id for t in self._ray_trials or [] if t.trial_id not in self._rows}
        for tid in self._cut:
            self._row_of(tid).update(status=INTERRUPTED, error=None)
            self._ended_here.add(tid)
        self._trials_dirty = True

    def _row_of(self, trial_id: str) -> dict[str, Any]:
        trial = next((t for t in self._ray_trials or [] if t.trial_id == trial_id), None)
        return self._row(trial) if trial is not None else self._rows[trial_id]

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ray_trials = trials
        row = self._row(trial)
        self._fold(trial.trial_id)
        cut = self._cut is not None and trial.trial_id in self._cut
        self._end(trial.trial_id, INTERRUPTED if cut else ended_status(row["epochs_run"], row["max_epochs"]), None)
        self._maybe_flush(self._flush_gap_s())

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ray_trials = trials
        self._row(trial)
        self._fold(trial.trial_id)
        if self._cut is not None and trial.trial_id in self._cut:  # its actor went down with the interruption
            self._end(trial.trial_id, INTERRUPTED, None)
        else:
            error = trial_error_text(trial)
            self._end(trial.trial_id, ERROR, error)
            if is_storage_error(error):
                self._storage_failed(error)
        self._maybe_flush(self._flush_gap_s())

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # The trial failed and Tune retries it: keep the error visible until it runs again.
        self._ray_trials = trials
        row = self._row(trial)
        self._fold(trial.trial_id)
        row.update(status=PENDING, error=trial_error_text(trial))
        self._trials_dirty = True
        if is_storage_error(row["error"]):
            self._storage_failed(row["error"])

    def _storage_failed(self, error: str) -> None:
        if self.storage_fault is None:
            self.storage_fault = error
            if self.on_storage_fault is not None:
                self.on_storage_fault(error)

    def get_state(self) -> dict | None:
        # Tune calls this each time it snapshots the experiment (the snapshot `mmtune resume` restores
        # trials from). Flushing here keeps the tables at least as new as that snapshot, so a driver
        # killed at any moment loses no epoch: every later one is re-reported by the resumed trials.
        self._maybe_flush(0.0)
        if self._failing is not None and is_storage_error(self._failing):
            # The tables cannot be written (full or read-only storage): veto the snapshot. Tune writes it
            # to its staging folder first and uploads it only if every callback's state was taken, so
            # storage keeps the last snapshot the tables are as new as. A newer one would let a resume
            # continue a trial from a checkpoint past the epochs the tables hold, or skip a trial whose
            # last epochs never reached them.
            raise OSError(f"not storing Ray Tune's experiment snapshot: the results tables in {self.directory} "
                          f"are behind it ({self._failing})")
        return None

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._ray_trials = trials
        self.flush()  # the last flush must not fail silently: raise if the tables cannot be written

    # -- recording ---------------------------------------------------------------------------------
    def _row(self, trial: Any) -> dict[str, Any]:
        """The trial's row, created from its config the first time the trial is seen."""
        row = self._rows.get(trial.trial_id)
        if row is None:
            row, column_types = trial_columns(self.sweep, trial.trial_id, trial.config)
            row.update(status=PENDING, epochs_run=0, error=None)
            for column, typ in column_types.items():
                self._types[column] = merge_type(self._types.get(column), typ)
            self._rows[trial.trial_id] = row
            self._trials_dirty = True
            if self._cut is not None:  # first seen after the interruption (Tune ran a pending trial while
                self._cut.add(trial.trial_id)  # stopping): cut like the others, never "stopped early"
                row.update(status=INTERRUPTED)
                self._ended_here.add(trial.trial_id)
        return row

    def _mark_running(self, trial: Any) -> None:
        if self._cut is not None and trial.trial_id in self._cut:
            return  # a last result of a trial cut by the interruption: it stays INTERRUPTED
        row = self._row(trial)
        row.update(status=RUNNING, error=None)
        self._started_here.add(trial.trial_id)
        self._ended_here.discard(trial.trial_id)
        self._trials_dirty = True

    def _record(self, trial_id: str, epoch: int, metrics: dict[str, float], total_s: float | None) -> None:
        rows = self._new.setdefault(trial_id, {})
        if rows and epoch <= next(reversed(rows)):  # re-run after a restore: drop the abandoned rows
            for stale in [e for e in rows if e >= epoch]:
                del rows[stale]
        if epoch <= self._flushed_max_epoch.get(trial_id, 0):
            self._drop_flushed(trial_id, from_epoch=epoch)
        rows[epoch] = metrics
        self._latest[trial_id] = (epoch, metrics, total_s)
        self._epochs_dirty = True

    def _forget(self, trial_id: str) -> None:
        """Drop every row of ``trial_id`` (its trial row and all its epochs)."""
        self._rows.pop(trial_id, None)
        self._latest.pop(trial_id, None)
        self._new.pop(trial_id, None)
        self._started_here.discard(trial_id)
        self._ended_here.discard(trial_id)
        if self._flushed is not None and trial_id in self._flushed_max_epoch:
            self._drop_flushed(trial_id, from_epoch=1)
            self._epochs_dirty = True
        self._trials_dirty = True

    def _drop_flushed(self, trial_id: str, *, from_epoch: int) -> None:
        """Forget flushed rows of ``trial_id`` from ``from_epoch`` on (rare: only after a restore)."""
        table = self._flushed
        keep = pc.or_(pc.not_equal(table["trial_id"], trial_id), pc.less(table["epoch"], from_epoch))
        self._flushed = table.filter(keep)
        if from_epoch > 1:
            self._flushed_max_epoch[trial_id] = from_epoch - 1
        else:
            self._flushed_max_epoch.pop(trial_id, None)

    def _fold(self, trial_id: str) -> None:
        """Move the trial's latest result into its row (epochs run, best-so-far, wall time)."""
        latest = self._latest.pop(trial_id, None)
        row = self._rows.get(trial_id)
        if latest is None or row is None:
            return
        epoch, metrics, total_s = latest
        best_epoch = metrics.get("best_epoch")
        row.update({k: metrics.get(k) for k in _BEST_KEYS})
        row.update(
            epochs_run=epoch,
            best_epoch=int(best_epoch) if best_epoch is not None and math.isfinite(best_epoch) else None,
            final_val_acc=metrics.get("val_acc"),
            wall_s=float(total_s) if isinstance(total_s, (int, float)) else row.get("wall_s"),
        )
        self._trials_dirty = True

    def _end(self, trial_id: str, status: str, error: str | None) -> None:
        self._rows[trial_id].update(status=status, error=error)
        self._ended_here.add(trial_id)
        self._trials_dirty = True

    def _sync_with_tune(self) -> None:
        """Rows for trials Tune knows but no callback has reported yet (pending ones), and the
        status of trials this writer did not see end (e.g. rows loaded from an earlier run)."""
        if self._ray_trials:
            # Rows of trials Tune does not know are orphans of a killed driver: trials it created after
            # its last experiment snapshot. The resumed sweep reruns their configs under new ids. An
            # orphan may have epochs and no trial row (the driver died between the two table writes
            # of one flush), so both tables are searched.
            known = {trial.trial_id for trial in self._ray_trials} | self.carried
            for tid in [tid for tid in {*self._rows, *self._flushed_max_epoch} if tid not in known]:
                self._forget(tid)
        for trial in self._ray_trials:
            tid = trial.trial_id
            row = self._row(trial)
            if not row.get("epochs_run") and tid not in self._latest:
                self._latest_from_tune(trial)  # a row rebuilt after its table was lost: Tune's last result
            status = trial.status
            if tid in self._ended_here or (status == PENDING and tid in self._started_here):
                continue  # our own verdict stands; Tune flips PENDING to RUNNING just after on_trial_start
            if status == TERMINATED:
                self._fold(tid)
                status = ended_status(row["epochs_run"], row["max_epochs"])
            elif status not in (PENDING, RUNNING, PAUSED, ERROR):
                continue
            if row["status"] != status:
                error = (row.get("error") or trial_error_text(trial)) if status == ERROR else None
                row.update(status=status, error=error)
                self._trials_dirty = True

    def _latest_from_tune(self, trial: Any) -> None:
        last = getattr(trial, "last_result", None)
        if isinstance(last, Mapping) and last.get(ray_result.TRAINING_ITERATION):
            epoch, metrics = result_metrics(last)
            self._latest[trial.trial_id] = (epoch, metrics, last.get(ray_result.TIME_TOTAL_S))

    # -- flushing ----------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write both tables now (atomically); raise ``OSError`` naming the path if that fails."""
        self._sync_with_tune()  # (builds the rows of new pending trials: one-off work, not timed below)
        for trial_id in list(self._latest):
            self._fold(trial_id)
        start = time.monotonic()
        if self._new:
            self._absorb_new_epochs()
        try:
            if self._epochs_dirty and self._flushed is not None:
                self._write_atomic(self._flushed, EPOCHS_FILE)
                self._epochs_dirty = False
            if self._trials_dirty:
                self._write_atomic(trials_table(list(self._rows.values()), self._types), TRIALS_FILE)
                self._trials_dirty = False
        except Exception as err:
            space = free_space(self.directory) if is_storage_error(err) else ""
            raise OSError(f"mmtune could not write the results tables to {self.directory}: {err}"
                          + (f" ({space})" if space else "")) from err
        finally:
            self._last_flush = time.monotonic()
            self._flush_cost_s = self._last_flush - start

    def _flush_gap_s(self) -> float:
        # Space flushes so that writing takes at most `flush_share` of the driver's time.
        return self._flush_cost_s / self.flush_share

    def _maybe_flush(self, min_gap_s: float) -> None:
        """Flush if ``min_gap_s`` has passed since the last one. A failed flush during the sweep (a
        storage hiccup) must not kill hours of training: the rows stay in memory for the next one."""
        if time.monotonic() - self._last_flush < min_gap_s:
            return
        try:
            self.flush()
        except OSError as err:
            reason = str(err.__cause__ or err)
            storage = is_storage_error(err)
            if reason != self._failing and not (storage and self.on_storage_fault is not None):
                logger.warning("%s; will retry at the next flush.", err)  # (else the sweep stops and says so)
            self._failing = reason
            if storage:
                self._storage_failed(str(err))
        else:
            if self._failing is not None:
                logger.warning("mmtune wrote the results tables to %s again.", self.directory)
            self._failing = None

    def _absorb_new_epochs(self) -> None:
        rows = [
            {"sweep": self.sweep, "trial_id": tid, "epoch": epoch, **metrics}
            for tid, by_epoch in self._new.items()
            for epoch, metrics in by_epoch.items()
        ]
        for tid, by_epoch in self._new.items():
            if by_epoch:
                self._flushed_max_epoch[tid] = max(self._flushed_max_epoch.get(tid, 0), next(reversed(by_epoch)))
        self._new.clear()
        if not rows:
            return
        new = epochs_table(rows)
        table = new if self._flushed is None else pa.concat_tables([self._flushed, new], promote_options="permissive")
        table = conform(table, EPOCHS)
        self._flushed = table.sort_by([("trial_id", "ascending"), ("epoch", "ascending")])

    def _write_atomic(self, table: pa.Table, file_name: str) -> None:
        final = f"{self.directory}/{file_name}"
        temp = f"{self.directory}/.{file_name}.{uuid.uuid4().hex}.tmp"
        self._fs.create_dir(self.directory, recursive=True)
        try:
            with self._fs.open_output_stream(temp) as out:
                pq.write_table(table, out, compression="zstd", write_page_checksum=True)
            self._fs.move(temp, final)
        except BaseException:
            try:
                self._fs.delete_file(temp)
            except OSError:
                pass
            raise

    # -- resuming ----------------------------------------------------------------------------------
    def _read_existing(self, file_name: str) -> pa.Table | None:
        path = f"{self.directory}/{file_name}"
        if self._fs.get_file_info(path).type != pafs.FileType.File:
            return None
        table = read_table_file(self._fs, path, path)  # damaged: a StorageError that says how to recover
        check_schema_version(table, path)
        return table

    def _load(self) -> None:
        epochs = self._read_existing(EPOCHS_FILE)
        if epochs is not None and epochs.num_rows:
            self._flushed = conform(epochs, EPOCHS)
            maxima = epochs.group_by("trial_id").aggregate([("epoch", "max")])
            self._flushed_max_epoch = dict(zip(maxima["trial_id"].to_pylist(), maxima["epoch_max"].to_pylist(), strict=True))
        trials = self._read_existing(TRIALS_FILE)
        if trials is not None:
            for field in trials.schema:
                if field.name not in TRIAL_COLUMNS:
                    self._types[field.name] = field.type
            self._rows = {row["trial_id"]: row for row in trials.to_pylist()}
