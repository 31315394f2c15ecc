"""A sweep as the report sees it: its two tables, its ``spec.json``, its variants and, per trial,
the numbers at the epoch that validation selects.

Everything comes from the results store (:mod:`mmtune.store.reader`) and the sweep folder's
``spec.json``; nothing here imports torch, Ray or a trainable (DESIGN §3.6, STYLE 7).

Selection (DESIGN §4): a trial's *best epoch* is the first epoch with the highest value of the
validation metric (``val_acc`` by default, the same rule the Trainable uses for ``best_epoch``);
every ``val_*``/``test_*`` number of the report is read at that epoch. ``imbalance/<m>`` (ρ^m) is
read at the trial's last epoch. The maximum over epochs of ``test_acc`` is kept apart, only for the
``--paper-protocol`` column.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow.fs as pafs

from mmtune.errors import ConfigError, Problem, StorageError, did_you_mean
from mmtune.store.reader import list_sweeps, open_storage, read_epochs, read_trials
from mmtune.store.schema import (
    EPOCHS_FILE,
    ERROR,
    HYPERPARAMETER_SECTIONS,
    PAUSED,
    PENDING,
    RUNNING,
    STATUSES,
    STOPPED_EARLY,
    TERMINATED,
    TRIALS_FILE,
)

__all__ = [
    "SPEC_FILE", "SweepData", "Variant", "load_sweep", "check_metric", "selection_column", "higher_is_better",
    "trial_outcomes", "group_variants", "modalities", "axis_label", "format_value", "spec_domains",
    "status_counts", "NOT_IN_MEAN", "infer_axes", "resolve_sweep",
]

from mmtune.store.schema import SPEC_FILE  # noqa: E402  written by mmtune.sweep.tuner
# How a trial that is not in the means is counted in its row.
NOT_IN_MEAN = {STOPPED_EARLY: "stopped early (ASHA)", ERROR: "failed", RUNNING: "running", PENDING: "pending",
               PAUSED: "paused"}
_AXIS_SECTIONS = ("label", "method", *HYPERPARAMETER_SECTIONS)


# ---------------------------------------------------------------------------------------- loading
@dataclass
class SweepData:
    """One sweep's tables (as pandas) and metadata."""

    name: str
    path: str  # the sweep folder as given / resolved (local path or URI)
    trials: pd.DataFrame
    epochs: pd.DataFrame
    meta: dict[str, Any]  # spec.json ({} when the folder has none)
    axes: list[str]  # dotted keys that define a variant (seeds excluded)
    notes: list[str] = field(default_factory=list)  # caveats the report must show

    @property
    def spec(self) -> dict[str, Any]:
        spec = self.meta.get("spec")
        return spec if isinstance(spec, dict) else {}

    @property
    def algorithm(self) -> str:
        return str(self.meta.get("algorithm") or self.spec.get("search", {}).get("algorithm") or "grid")


def _is_uri(text: str) -> bool:
    return "://" in text


def _folder_type(path_or_uri: str) -> pafs.FileType:
    try:
        fs, path = open_storage(path_or_uri)
        return fs.get_file_info(path).type
    except (OSError, ValueError):
        return pafs.FileType.NotFound


def resolve_sweep(sweep: str | os.PathLike[str], storage: str) -> str:
    """The sweep folder: ``sweep`` itself (a folder path or URI), or ``<storage>/<sweep>`` for a bare name."""
    text = os.fspath(sweep).rstrip("/") or os.fspath(sweep)
    if _is_uri(text) or _folder_type(text) == pafs.FileType.Directory:
        return text
    bare = "/" not in text and os.sep not in text
    if bare:
        candidate = f"{storage.rstrip('/')}/{text}"
        if _folder_type(candidate) == pafs.FileType.Directory:
            return candidate
    known: list[str] = []
    try:
        known = [s.name for s in list_sweeps(storage)]
    except (FileNotFoundError, OSError, ValueError):
        pass
    where = f"{storage.rstrip('/')}/{text}" if bare else text
    hint = did_you_mean(os.path.basename(text), known)
    listing = f" Sweeps under {storage}: {', '.join(known)}." if known else f" No sweeps found under {storage}."
    raise ConfigError(Problem(where, f"no sweep folder here.{hint} Pass a sweep folder (<storage>/<name>, as "
                                     f"`mmtune ls --storage DIR` lists them) or a sweep name with --storage DIR.{listing}"))


# The spec.json keys the report reads, and the JSON types each must have (None allowed).
_META_TYPES: dict[str, tuple[type, ...]] = {"name": (str,), "spec": (dict,), "axes": (list,), "metric": (str,),
                                            "mode": (str,), "algorithm": (str,), "num_trials": (int,)}


def _read_spec_json(path: str) -> dict[str, Any] | None:
    """The sweep's ``spec.json`` (None when it has none); a damaged one is a StorageError naming it."""
    fs, base = open_storage(path)
    file = f"{base.rstrip('/')}/{SPEC_FILE}"
    if fs.get_file_info(file).type != pafs.FileType.File:
        return None
    shown = f"{path.rstrip('/')}/{SPEC_FILE}"
    fix = (f"Restore it from a backup, or move it away: the report then infers the variants from the trials "
           f"table (`mv {shown} {shown}.bad`).")
    with fs.open_input_stream(file) as f:
        raw = f.read()
    try:
        meta = json.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as err:
        raise StorageError(Problem(shown, f"is not valid JSON ({err}). {fix}")) from None
    if not isinstance(meta, dict):
        raise StorageError(Problem(shown, f"must hold a JSON object (the sweep's spec and run metadata), not a "
                                   f"{type(meta).__name__}. {fix}"))
    problems = [Problem(f"{shown}: {key}", f"must be {' or '.join(t.__name__ for t in types)}, not "
                        f"{type(meta[key]).__name__} ({meta[key]!r:.60}).")
                for key, types in _META_TYPES.items()
                if meta.get(key) is not None and (not isinstance(meta[key], types) or isinstance(meta[key], bool))]
    axes = meta.get("axes")
    if isinstance(axes, list) and not all(isinstance(a, str) for a in axes):
        problems.append(Problem(f"{shown}: axes", f"must list dotted keys (strings), got {axes!r:.60}."))
    if problems:
        raise StorageError([*problems, Problem(shown, fix)])
    return meta


def load_sweep(sweep: str | os.PathLike[str], *, storage: str = "runs") -> SweepData:
    """Read a sweep folder (or a sweep name under ``storage``); ConfigError when there is nothing to report."""
    path = resolve_sweep(sweep, storage)
    try:
        trials_table = read_trials(path)
    except FileNotFoundError:
        raise ConfigError(Problem(f"{path}/{TRIALS_FILE}", "missing: this sweep has not recorded a single trial yet "
                                  "(was it started? is it still setting up?). Run it with `mmtune sweep SPEC`, or continue "
                                  f"it with `mmtune resume {path}`.")) from None
    except ConfigError:  # damaged (StorageError): it names the file and the way back
        raise
    except ValueError as err:  # not an mmtune table / newer schema
        raise ConfigError(Problem(f"{path}/{TRIALS_FILE}", str(err))) from None
    if trials_table.num_rows == 0:
        raise ConfigError(Problem(path, "the sweep is empty: its trials table has no rows, so there is nothing to report. "
                                  f"Run or resume it first (`mmtune resume {path}`)."))
    notes: list[str] = []
    try:
        epochs_table = read_epochs(path)
        epochs = epochs_table.to_pandas()
    except FileNotFoundError:
        epochs = pd.DataFrame({"sweep": pd.Series(dtype=object), "trial_id": pd.Series(dtype=object),
                               "epoch": pd.Series(dtype="int64")})
        notes.append(f"{path}/{EPOCHS_FILE} is missing: no trial reported an epoch; only the trials table is shown.")
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(Problem(f"{path}/{EPOCHS_FILE}", str(err))) from None
    trials = trials_table.to_pandas()
    meta = _read_spec_json(path)
    if meta is None:
        notes.append(f"{path}/{SPEC_FILE} is missing: variants are the configurations (config_key), their axes inferred "
                     "from the hyperparameters that differ.")
        meta = {}
    name = str(meta.get("name") or os.path.basename(path.rstrip("/")) or path)
    trials = _with_axis_columns(trials, meta.get("axes") or [])
    axes = [a for a in (meta.get("axes") or []) if a in trials.columns]
    if not meta.get("axes"):
        axes = infer_axes(trials)
    mixed = _mixed_axes(trials, axes)
    if mixed:
        notes.append(f"the spec's axes ({', '.join(axes) or 'none'}) do not separate every configuration; "
                     f"also grouped by {', '.join(mixed)}.")
        axes = axes + mixed
    epochs = epochs.sort_values(["trial_id", "epoch"], kind="stable").reset_index(drop=True)
    return SweepData(name=name, path=path, trials=trials.reset_index(drop=True), epochs=epochs, meta=meta,
                     axes=axes, notes=notes)


def _dotted(config: Mapping[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return json.dumps(node, sort_keys=True) if isinstance(node, (dict, list)) else node


def _with_axis_columns(trials: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """Add an axis the table has no column for (a nested key such as ``model.backbones.audio``) from config_json."""
    missing = [a for a in axes if a not in trials.columns]
    if not missing:
        return trials
    configs = [json.loads(c) if isinstance(c, str) else {} for c in trials["config_json"]]
    trials = trials.copy()
    for axis in missing:
        trials[axis] = pd.Series([_dotted(c, axis) for c in configs], index=trials.index, dtype=object)
    return trials


def _candidate_axes(trials: pd.DataFrame) -> list[str]:
    cols = [c for c in trials.columns if c == "label" or c.split(".", 1)[0] in HYPERPARAMETER_SECTIONS and "." in c]
    if "label" not in trials.columns and "method" in trials.columns:
        cols.insert(0, "method")
    return cols


def infer_axes(trials: pd.DataFrame) -> list[str]:
    """Columns whose value differs between configurations (config_key): what varies besides the seed."""
    firsts = trials.drop_duplicates("config_key")
    if len(firsts) < 2:
        return []
    return [c for c in _candidate_axes(trials) if firsts[c].map(_key).nunique(dropna=False) > 1 and c != "dataset.seed"]


def _mixed_axes(trials: pd.DataFrame, axes: list[str]) -> list[str]:
    """Inferred axes to add when the given axes put two configurations in one variant."""
    keys = trials[axes].map(_key).apply(tuple, axis=1) if axes else pd.Series([()] * len(trials), index=trials.index)
    per_group = trials.groupby(keys, sort=False)["config_key"].nunique()
    if (per_group <= 1).all():
        return []
    return [a for a in infer_axes(trials) if a not in axes]


# ---------------------------------------------------------------------------------------- metrics
def selection_column(metric: str) -> str:
    """The per-epoch column that selects the best epoch: ``best_val_acc`` selects like ``val_acc``."""
    return metric.removeprefix("best_") if metric.startswith("best_val_") else metric


def higher_is_better(metric: str) -> bool:
    return "loss" not in metric


def check_metric(data: SweepData, metric: str) -> str:
    """Validate ``--metric`` (a validation column of the epochs table); return the column to select on."""
    column = selection_column(metric)
    valid = sorted(c for c in data.epochs.columns if c.startswith("val_"))
    if metric.startswith("test"):
        raise ConfigError(Problem("--metric", f"'{metric}' is a test metric: the best epoch must be selected on validation "
                                  f"only (DESIGN §4). Use one of: {', '.join(valid) or 'val_acc'}."))
    if column not in data.epochs.columns and not (data.epochs.empty and column in ("val_acc", "val_macro_f1", "val_map")):
        raise ConfigError(Problem("--metric", f"unknown metric '{metric}' for sweep {data.path}.{did_you_mean(metric, valid)} "
                                  f"Validation metrics in its epochs table: {', '.join(valid) or 'none'}."))
    return column


def modalities(epochs: pd.DataFrame) -> list[str]:
    """Modality names, from the ``val_acc/<m>`` columns (the order of the table: sorted)."""
    return [c.split("/", 1)[1] for c in epochs.columns if c.startswith("val_acc/")]


_PER_EPOCH_AT_BEST = ("val_acc", "val_macro_f1", "val_map", "test_acc", "test_macro_f1", "test_map")
_STORED_AT_BEST = {  # trials-table columns that hold the same numbers when selection is on val_acc
    "val_acc": "best_val_acc", "val_macro_f1": "best_val_macro_f1", "val_map": "best_val_map",
    "test_acc": "test_acc_at_best_val", "test_macro_f1": "test_macro_f1_at_best_val", "test_map": "test_map_at_best_val",
}


def trial_outcomes(data: SweepData, column: str) -> pd.DataFrame:
    """One row per trial: status and seed, the best epoch by ``column`` and every metric there.

    Columns: ``trial_id, seed, status, epochs_run, max_epochs, error, best_epoch, last_epoch`` +
    ``<metric>`` at the best epoch for val/test acc, macro-F1, mAP and per-modality accuracy (and
    linear-probe accuracy, with train.probe=true) +
    ``imbalance/<m>`` at the last epoch + ``max_test_acc`` (the paper protocol) + ``objective`` (the
    sweep's search metric at the last epoch: what Optuna was told).
    """
    trials, epochs = data.trials, data.epochs
    mods = modalities(epochs)
    at_best = [*_PER_EPOCH_AT_BEST, *(f"val_acc/{m}" for m in mods),
               *(f"{k}/{m}" for k in ("test_acc", "val_probe", "test_probe") for m in mods
                 if f"{k}/{m}" in epochs.columns)]
    at_last = [c for c in epochs.columns if c.startswith("imbalance/")]
    out = trials[["trial_id", "seed", "status", "epochs_run", "max_epochs", "error"]].copy()
    out = out.astype({"trial_id": object, "status": object, "error": object})
    out = out.set_index("trial_id", drop=False)
    best_epoch = pd.Series(math.nan, index=out.index, dtype=float)
    for c in at_best + at_last + ["max_test_acc", "last_epoch", "objective"]:
        out[c] = math.nan
    if not epochs.empty and column in epochs.columns:
        scored = epochs.dropna(subset=[column])
        if not scored.empty:
            grouped = scored.groupby("trial_id", sort=False)[column]
            idx = grouped.idxmax() if higher_is_better(column) else grouped.idxmin()  # first on ties
            best = epochs.loc[idx.to_numpy()].set_index("trial_id")
            best = best[best.index.isin(out.index)]
            best_epoch.loc[best.index] = best["epoch"].astype(float)
            for c in at_best:
                if c in best.columns:
                    out.loc[best.index, c] = best[c].astype(float)
    if not epochs.empty:
        last = epochs.loc[epochs.groupby("trial_id", sort=False)["epoch"].idxmax().to_numpy()].set_index("trial_id")
        last = last[last.index.isin(out.index)]
        out.loc[last.index, "last_epoch"] = last["epoch"].astype(float)
        for c in at_last:
            out.loc[last.index, c] = last[c].astype(float)
        objective = str(data.meta.get("metric") or "")
        if objective in last.columns:
            out.loc[last.index, "objective"] = last[objective].astype(float)
        if "test_acc" in epochs.columns:
            top = epochs.groupby("trial_id", sort=False)["test_acc"].max()
            top = top[top.index.isin(out.index)]
            out.loc[top.index, "max_test_acc"] = top.astype(float)
    # A trial without epoch rows: the trials table's own best-epoch numbers (they select on val_acc).
    no_epochs = best_epoch.isna() & ~out.index.isin(epochs["trial_id"].unique())
    if column == "val_acc" and no_epochs.any():
        stored = trials.set_index("trial_id").loc[out.index[no_epochs.to_numpy()]]
        best_epoch.loc[stored.index] = stored["best_epoch"].astype(float)
        for c, s in _STORED_AT_BEST.items():
            if c in out.columns and s in stored.columns:
                out.loc[stored.index, c] = stored[s].astype(float)
    out["best_epoch"] = best_epoch
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------------------- variants
@dataclass
class Variant:
    """One row of an ablation table: the trials (all seeds, any status) sharing the axes' values."""

    values: dict[str, Any]  # axis -> value (None where the variant does not have it)
    trials: pd.DataFrame  # its rows of trial_outcomes()
    config_keys: list[str]

    @property
    def label(self) -> str | None:
        value = self.values.get("label", self.values.get("method"))
        return None if value is None else str(value)

    @property
    def name(self) -> str:
        """Short display name: ``ogm``, ``ogm, alpha=0.3``, ``plus=True, tau=0.5``, ``all trials``."""
        parts = []
        for axis, value in self.values.items():
            if value is None:
                continue
            parts.append(format_value(value) if axis in ("label", "method") else f"{axis_label(axis)}={format_value(value)}")
        return ", ".join(parts) or "all trials"

    def finished(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] == TERMINATED]

    def counts(self) -> dict[str, int]:
        return status_counts(self.trials)

    def seed_values(self, column: str) -> dict[int, float]:
        """``{seed: value}`` of the finished trials (the pairs of the significance test)."""
        rows = self.finished()
        if column not in rows.columns:
            return {}
        return {int(s): float(v) for s, v in zip(rows["seed"], rows[column], strict=True)
                if s is not None and not pd.isna(s) and not pd.isna(v)}


def _key(value: Any) -> Any:
    """A hashable, NaN-free stand-in for a cell (None for null)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return value  # keep 1.0 a float: it prints as 1.0
    return value


def format_value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        text = f"{value:.4g}"
        return text if any(ch in text for ch in ".eninf") else f"{text}.0"  # 1.0 stays visibly a float
    return str(value)


def axis_label(axis: str) -> str:
    """``params.tau`` → ``tau``, ``model.fusion`` → ``fusion``, ``label`` → ``variant``."""
    if axis in ("label", "method"):
        return "variant"
    return axis.split(".", 1)[1] if axis.split(".", 1)[0] in HYPERPARAMETER_SECTIONS and "." in axis else axis


def spec_domains(spec: Mapping[str, Any]) -> dict[str, tuple[str, list[Any]]]:
    """``{"params.tau": ("grid", [0.1, 0.5]), "params.alpha": ("loguniform", [0.05, 2.0]), ...}`` from the
    spec as read (section leaves and each method entry's params; the first entry that names a key wins)."""
    kinds = ("grid", "choice", "uniform", "loguniform", "int")
    found: dict[str, tuple[str, list[Any]]] = {}

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, Mapping):
            return
        for key, value in node.items():
            path = f"{prefix}.{key}"
            if isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in kinds:
                kind, values = next(iter(value.items()))
                found.setdefault(path, (kind, list(values) if isinstance(values, list) else [values]))
            elif isinstance(value, Mapping):
                walk(value, path)

    for section in HYPERPARAMETER_SECTIONS:
        walk(spec.get(section), section)
    methods = spec.get("method")
    for entry in methods if isinstance(methods, list) else [methods]:
        if isinstance(entry, Mapping):
            walk(entry.get("params"), "params")
    return found


def _spec_labels(spec: Mapping[str, Any]) -> list[str]:
    methods = spec.get("method")
    labels = []
    for entry in methods if isinstance(methods, list) else [methods]:
        if isinstance(entry, str):
            labels.append(entry)
        elif isinstance(entry, Mapping):
            labels.append(str(entry.get("name", entry.get("method"))))
    return labels


def group_variants(data: SweepData, outcomes: pd.DataFrame) -> list[Variant]:
    """The variants of a sweep in the spec's order (method entries, then grid values as listed)."""
    trials = data.trials
    axes = data.axes
    keys = [tuple(_key(v) for v in row) for row in trials[axes].itertuples(index=False, name=None)] if axes \
        else [()] * len(trials)
    order: dict[tuple, int] = {}
    for k in keys:
        order.setdefault(k, len(order))
    by_id = outcomes.set_index("trial_id", drop=False)
    domains = spec_domains(data.spec)
    listed: dict[str, list[Any]] = {a: [_key(v) for v in domains[a][1]] for a in axes
                                    if a in domains and domains[a][0] in ("grid", "choice")}
    labels = _spec_labels(data.spec)
    for axis in ("label", "method"):
        if axis in axes and labels:
            listed[axis] = labels

    def sort_key(k: tuple) -> tuple:
        parts = []
        for axis, value in zip(axes, k, strict=True):
            options = listed.get(axis)
            if options is not None and value in options:
                parts.append(options.index(value))
            elif options is not None:
                parts.append(len(options))
            else:
                parts.append(-1)  # not listed (Optuna samples): keep first appearance
        return (*parts, order[k])

    variants = []
    ids = trials["trial_id"].astype(object).to_numpy()
    cfg = trials["config_key"].astype(object).to_numpy()
    for k in sorted(order, key=sort_key):
        members = [i for i, kk in enumerate(keys) if kk == k]
        rows = by_id.loc[[ids[i] for i in members]].reset_index(drop=True)
        variants.append(Variant(values=dict(zip(axes, k, strict=True)), trials=rows,
                                config_keys=list(dict.fromkeys(cfg[i] for i in members))))
    return variants


def status_counts(trials: pd.DataFrame) -> dict[str, int]:
    """Trials by status, in lifecycle order (then any status this mmtune does not know)."""
    found = trials["status"].astype(object).value_counts().to_dict()
    return {s: int(found[s]) for s in STATUSES if s in found} | {str(s): int(n) for s, n in found.items() if s not in STATUSES}
