"""The results store's schema (DESIGN §3.4): two Parquet tables and one version number.

``epochs`` — one row per (trial, epoch)::

    sweep, trial_id, epoch,  <every metric key of DESIGN §3.3, sorted>      (metrics: float64)

``trials`` — one row per trial::

    sweep, trial_id, config_key, method, dataset, fusion, backbone, seed, status, epochs_run,
    max_epochs, best_epoch, best_val_acc, best_val_macro_f1, best_val_map, test_acc_at_best_val,
    test_macro_f1_at_best_val, test_map_at_best_val, final_val_acc, wall_s, error, config_json,
    <every hyperparameter by its dotted path, sorted: dataset.*, model.*, params.*, train.*>

Columns that only some trials have (``trace/k/audio`` for OGM, ``params.tau`` for AMSS) are null in
the other trials' rows. Hyperparameter columns keep their Python type (bool, int64, float64,
string); lists and mappings are stored as JSON strings. ``config_key`` hashes the resolved config
without the seed, so the seeds of one configuration share it (reports group by it).

The version lives in the Parquet file metadata (``mmtune.schema_version``), next to the mmtune
version that wrote the file. Bump :data:`SCHEMA_VERSION` when a column changes meaning or type.
This module needs only pyarrow: the report side reads the store without importing torch or a
trainable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from mmtune import __version__

if TYPE_CHECKING:
    from mmtune.engine.trial import TrialSpec

__all__ = [
    "SCHEMA_VERSION", "VERSION_KEY", "MMTUNE_VERSION_KEY", "TABLE_KEY",
    "EPOCHS", "TRIALS", "EPOCHS_FILE", "TRIALS_FILE",
    "EPOCH_COLUMNS", "TRIAL_COLUMNS", "METRIC_TYPE", "HYPERPARAMETER_SECTIONS",
    "PENDING", "RUNNING", "PAUSED", "TERMINATED", "STOPPED_EARLY", "ERROR", "INTERRUPTED", "STATUSES", "ENDED_STATUSES",
    "ended_status", "config_key", "hyperparameters", "raw_hyperparameters", "merge_type",
    "epochs_table", "trials_table", "conform", "schema_version", "check_schema_version",
]

SCHEMA_VERSION = 1
# The sweep's spec and run metadata, written by mmtune.sweep.tuner next to the tables.
SPEC_FILE = "spec.json"
VERSION_KEY = b"mmtune.schema_version"
MMTUNE_VERSION_KEY = b"mmtune.version"
TABLE_KEY = b"mmtune.table"

EPOCHS = "epochs"
TRIALS = "trials"
EPOCHS_FILE = "epochs.parquet"
TRIALS_FILE = "trials.parquet"

METRIC_TYPE = pa.float64()

EPOCH_COLUMNS: dict[str, pa.DataType] = {
    "sweep": pa.string(),
    "trial_id": pa.string(),
    "epoch": pa.int64(),
}

TRIAL_COLUMNS: dict[str, pa.DataType] = {
    "sweep": pa.string(),
    "trial_id": pa.string(),
    "config_key": pa.string(),
    "method": pa.string(),
    "dataset": pa.string(),
    "fusion": pa.string(),
    "backbone": pa.string(),
    "seed": pa.int64(),
    "status": pa.string(),
    "epochs_run": pa.int64(),
    "max_epochs": pa.int64(),
    "best_epoch": pa.int64(),
    "best_val_acc": pa.float64(),
    "best_val_macro_f1": pa.float64(),
    "best_val_map": pa.float64(),
    "test_acc_at_best_val": pa.float64(),
    "test_macro_f1_at_best_val": pa.float64(),
    "test_map_at_best_val": pa.float64(),
    "final_val_acc": pa.float64(),
    "wall_s": pa.float64(),
    "error": pa.string(),
    "config_json": pa.string(),
}

# Config sections flattened into one column per hyperparameter (``params.tau``, ``train.lr``).
HYPERPARAMETER_SECTIONS = ("dataset", "model", "train", "params")

# Trial status. The last three are final; the others describe a trial not ended at flush time
# (DESIGN §4: unfinished results are shown as such, never dropped).
PENDING = "PENDING"
RUNNING = "RUNNING"
PAUSED = "PAUSED"
TERMINATED = "TERMINATED"  # ran all max_epochs
STOPPED_EARLY = "STOPPED_EARLY"  # completed by the scheduler (ASHA) or a stopper before max_epochs
ERROR = "ERROR"
# Cut by Ctrl-C (or SIGTERM) before it ended: not a verdict on the trial; `mmtune resume` continues it.
INTERRUPTED = "INTERRUPTED"
STATUSES = (PENDING, RUNNING, PAUSED, TERMINATED, STOPPED_EARLY, ERROR, INTERRUPTED)
ENDED_STATUSES = frozenset({TERMINATED, STOPPED_EARLY, ERROR})

_FIXED = {EPOCHS: EPOCH_COLUMNS, TRIALS: TRIAL_COLUMNS}


def ended_status(epochs_run: int | None, max_epochs: int | None) -> str:
    """Status of a trial that completed without error: all its epochs, or stopped before."""
    if max_epochs is None or (epochs_run or 0) >= max_epochs:
        return TERMINATED
    return STOPPED_EARLY


def config_key(config: Mapping[str, Any]) -> str:
    """Short stable hash of a trial config without its seed: the seeds of one configuration share it."""
    rest = {k: v for k, v in config.items() if k != "seed"}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# -- hyperparameter columns -----------------------------------------------------------------------
_SCALAR_TYPES: dict[type, pa.DataType] = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}


def _value_type(value: Any) -> pa.DataType:
    if value is None:
        return pa.null()
    return _SCALAR_TYPES.get(type(value), pa.string())


def _hint_type(hint: Any, value: Any) -> pa.DataType:
    """Arrow type of a config field from its annotation (so an all-null ``int | None`` stays int64)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return _hint_type(args[0], value)
        return _value_type(value)
    if origin is typing.Literal:
        return _value_type(value)
    if isinstance(hint, type) and hint in _SCALAR_TYPES:
        return _SCALAR_TYPES[hint]
    if hint is None or hint is Any:
        return _value_type(value)
    return pa.string()  # lists, tuples, mappings: JSON text


@cache
def _field_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _cell(value: Any, typ: pa.DataType) -> Any:
    """A Python value as stored under ``typ``: containers (and type conflicts) become JSON text."""
    if value is None or not pa.types.is_string(typ) or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def hyperparameters(spec: TrialSpec) -> tuple[dict[str, Any], dict[str, pa.DataType]]:
    """``{"params.tau": 0.5, "train.lr": 0.01, ...}`` and their Arrow types, from a resolved spec."""
    config = spec.to_config()
    values: dict[str, Any] = {}
    column_types: dict[str, pa.DataType] = {}
    for section in HYPERPARAMETER_SECTIONS:
        record = getattr(spec, section)
        hints = _field_hints(type(record)) if dataclasses.is_dataclass(record) else {}
        for name, value in config[section].items():
            column = f"{section}.{name}"
            typ = _hint_type(hints.get(name), value)
            values[column] = _cell(value, typ)
            column_types[column] = typ
    return values, column_types


def raw_hyperparameters(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, pa.DataType]]:
    """The same columns from an unvalidated config (a trial whose config did not parse)."""
    values: dict[str, Any] = {}
    column_types: dict[str, pa.DataType] = {}
    for section in HYPERPARAMETER_SECTIONS:
        node = config.get(section)
        if not isinstance(node, Mapping):
            continue
        for name, value in node.items():
            column = f"{section}.{name}"
            typ = _value_type(value)
            values[column] = _cell(value, typ)
            column_types[column] = typ
    return values, column_types


def merge_type(a: pa.DataType | None, b: pa.DataType) -> pa.DataType:
    """The type a column takes when two trials disagree: null yields, int widens to float, else string."""
    if a is None or a == b or pa.types.is_null(b):
        return a if a is not None else b
    if pa.types.is_null(a):
        return b
    if {a, b} == {pa.int64(), pa.float64()}:
        return pa.float64()
    return pa.string()


# -- rows -> tables -------------------------------------------------------------------------------
def _ordered(names: Iterable[str], kind: str) -> list[str]:
    fixed = _FIXED[kind]
    names = set(names)
    return [c for c in fixed if c in names] + sorted(names - fixed.keys())


def _with_metadata(table: pa.Table, kind: str) -> pa.Table:
    return table.replace_schema_metadata({
        VERSION_KEY: str(SCHEMA_VERSION).encode(),
        MMTUNE_VERSION_KEY: __version__.encode(),
        TABLE_KEY: kind.encode(),
    })


def epochs_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows ``{sweep, trial_id, epoch, <metric>: float, ...}`` → the ``epochs`` table (any key set)."""
    names: set[str] = set(EPOCH_COLUMNS)
    for row in rows:
        names.update(row)
    columns = _ordered(names, EPOCHS)
    arrays = [pa.array([row.get(c) for row in rows], type=EPOCH_COLUMNS.get(c, METRIC_TYPE)) for c in columns]
    return _with_metadata(pa.table(arrays, names=columns), EPOCHS)


def trials_table(rows: Sequence[Mapping[str, Any]], column_types: Mapping[str, pa.DataType] | None = None) -> pa.Table:
    """Rows of the ``trials`` table → a table; ``column_types`` types the hyperparameter columns.

    A column without a given type takes the merged type of its values (:func:`merge_type`).
    """
    names: set[str] = set(TRIAL_COLUMNS)
    for row in rows:
        names.update(row)
    typed = dict(column_types or {})
    typed.update(TRIAL_COLUMNS)
    columns = _ordered(names, TRIALS)
    arrays = []
    for c in columns:
        typ = typed.get(c)
        if typ is None:
            for row in rows:
                typ = merge_type(typ, _value_type(row.get(c)))
        arrays.append(pa.array([_cell(row.get(c), typ) for row in rows], type=typ))
    return _with_metadata(pa.table(arrays, names=columns), TRIALS)


def conform(table: pa.Table, kind: str) -> pa.Table:
    """Stable column order (fixed columns, then the rest sorted), fixed types, metrics as float64.

    Used after concatenating tables whose column sets differ (``promote_options="permissive"``
    leaves an all-null column typed ``null``; here it gets its proper type back).
    """
    fixed = _FIXED[kind]
    columns = _ordered(table.column_names, kind)
    arrays = []
    for c in columns:
        col = table.column(c)
        want = fixed.get(c, METRIC_TYPE if kind == EPOCHS else None)
        if want is not None and col.type != want:
            col = col.cast(want)
        elif want is None and pa.types.is_null(col.type):
            col = col.cast(pa.string())
        arrays.append(col)
    out = pa.table(arrays, names=columns)
    if out.num_columns and out.column(0).num_chunks > 16:
        out = out.combine_chunks()
    return _with_metadata(out, kind)


def schema_version(table: pa.Table | pa.Schema) -> int | None:
    """The schema version a table was written with (None: not written by mmtune)."""
    schema = table.schema if isinstance(table, pa.Table) else table
    raw = (schema.metadata or {}).get(VERSION_KEY)
    return int(raw) if raw is not None else None


def check_schema_version(table: pa.Table | pa.Schema, where: str) -> None:
    """Raise if ``table`` was not written by mmtune or by a newer schema than this mmtune reads."""
    version = schema_version(table)
    if version is None:
        raise ValueError(f"{where} is not an mmtune results table (its Parquet metadata has no {VERSION_KEY.decode()}).")
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{where} was written with results schema v{version}, but this mmtune ({__version__}) reads up to "
            f"v{SCHEMA_VERSION}. Upgrade mmtune to read it."
        )
