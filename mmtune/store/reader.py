"""Read the results store: a sweep's ``epochs`` / ``trials`` tables and the sweeps under a storage.

A sweep lives at ``<storage>/<sweep name>/`` (``epochs.parquet``, ``trials.parquet``). ``storage``
is a local path or a URI that pyarrow understands (``file://``, ``s3://``, ``gs://``, ``hdfs://``),
so the same calls work against shared storage on a cluster. Nothing here imports torch, Ray or a
trainable; the files themselves are plain Parquet (pandas, DuckDB and Polars read them as is).
"""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mmtune.store.faults import damaged_table, is_storage_error
from mmtune.store.schema import (
    EPOCHS_FILE,
    ERROR,
    SPEC_FILE,
    STATUSES,
    STOPPED_EARLY,
    TERMINATED,
    TRIALS_FILE,
    check_schema_version,
    schema_version,
)

__all__ = [
    "SweepSummary", "finished_counts", "open_storage", "read_epochs", "read_trials", "read_table_file", "list_sweeps",
    "schema_version",
]

_HOW_TO_FIND = (
    "A sweep directory is <storage>/<sweep name>, holding epochs.parquet and trials.parquet; "
    "list the sweeps of a storage with mmtune.store.list_sweeps(<storage>) (`mmtune ls <storage>`), "
    "or check the storage path (--storage) and the sweep name the sweep ran with."
)


def open_storage(path_or_uri: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path (relative paths allowed) or a URI (``s3://b/x``)."""
    text = os.fspath(path_or_uri)
    if "://" in text:
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text)).replace(os.sep, "/")


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _table_path(path_or_uri: str | os.PathLike[str], file_name: str) -> tuple[pafs.FileSystem, str, str]:
    text = os.fspath(path_or_uri)
    fs, path = open_storage(text)
    if not path.endswith(".parquet"):
        path = _join(path, file_name)
        text = _join(text, file_name)
    return fs, path, text


def _read(path_or_uri: str | os.PathLike[str], file_name: str, columns: list[str] | None = None) -> pa.Table:
    fs, path, shown = _table_path(path_or_uri, file_name)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"no results table at {shown}. {_HOW_TO_FIND}")
    table = read_table_file(fs, path, shown, columns=columns)
    check_schema_version(table, shown)
    return table


def read_table_file(fs: pafs.FileSystem, path: str, shown: str, *, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file, whole (page checksums verified where the writer stored them). A file that
    exists but cannot be read — bytes overwritten, truncated by a full disk — is a
    :class:`~mmtune.errors.StorageError` naming it and the way back, not pyarrow's own error."""
    try:
        return pq.read_table(path, filesystem=fs, columns=columns, page_checksum_verification=True)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException, EOFError) as err:  # ArrowInvalid is a ValueError, the others OSErrors
        raise damaged_table(shown, err) from None


def read_epochs(path_or_uri: str | os.PathLike[str]) -> pa.Table:
    """The ``epochs`` table of a sweep directory (or of an ``epochs.parquet`` path)."""
    return _read(path_or_uri, EPOCHS_FILE)


def read_trials(path_or_uri: str | os.PathLike[str]) -> pa.Table:
    """The ``trials`` table of a sweep directory (or of a ``trials.parquet`` path)."""
    return _read(path_or_uri, TRIALS_FILE)


def finished_counts(path_or_uri: str | os.PathLike[str], *, errored_count_as_ended: bool = True) -> dict[str, int] | None:
    """Trials by status when every trial the sweep planned has ended, else None (something to resume).

    A trial that failed because the storage was full or read-only has not ended: it says nothing about
    its configuration, and `mmtune resume` runs it again. Reads only ``spec.json`` and two columns of
    the trials table (no Ray, no torch), so `mmtune resume` of a finished sweep answers at once."""
    import json

    fs, base = open_storage(path_or_uri)
    try:
        with fs.open_input_stream(_join(base, SPEC_FILE)) as f:
            planned = json.loads(f.read().decode()).get("num_trials")
        table = _read(path_or_uri, TRIALS_FILE, columns=["status", "error"])
    except Exception:  # noqa: BLE001 - unreadable or missing: let the full resume path explain
        return None
    statuses = table.column("status").to_pylist()
    if any(s == ERROR and is_storage_error(e) for s, e in zip(statuses, table.column("error").to_pylist(), strict=True)):
        return None
    counts = dict(Counter(statuses))
    ended = {TERMINATED, STOPPED_EARLY} | ({ERROR} if errored_count_as_ended else set())
    if not counts or not isinstance(planned, int) or sum(counts.values()) < planned or not set(counts) <= ended:
        return None
    return counts


@dataclass(frozen=True)
class SweepSummary:
    """One sweep under a storage, as ``mmtune ls`` shows it."""

    name: str
    path: str  # the sweep directory, in the form the storage was given (a local path or a URI)
    counts: dict[str, int] = field(default_factory=dict)  # trials by status, statuses with trials only
    epochs_done: int = 0  # Σ epochs_run
    epochs_planned: int = 0  # Σ max_epochs
    modified: dt.datetime | None = None  # newest of the two table files
    problem: str | None = None  # why its tables could not be read (a damaged sweep is listed, not fatal)

    @property
    def trials(self) -> int:
        return sum(self.counts.values())


def list_sweeps(storage: str | os.PathLike[str]) -> list[SweepSummary]:
    """Every sweep under ``storage`` that has a ``trials`` table, sorted by name.

    Reads only the small ``trials`` tables (three columns of them), never the ``epochs`` tables.
    """
    text = os.fspath(storage)
    fs, base = open_storage(text)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise FileNotFoundError(
            f"no storage directory at {text}. Pass the --storage a sweep ran with (the directory that holds one "
            "folder per sweep)."
        )
    summaries = []
    for entry in fs.get_file_info(pafs.FileSelector(base, recursive=False)):
        if entry.type != pafs.FileType.Directory:
            continue
        trials_info, epochs_info = fs.get_file_info([_join(entry.path, TRIALS_FILE), _join(entry.path, EPOCHS_FILE)])
        if trials_info.type != pafs.FileType.File:
            continue
        shown = _join(text, entry.base_name)
        try:
            check_schema_version(pq.read_schema(trials_info.path, filesystem=fs), _join(shown, TRIALS_FILE))
            table = pq.read_table(trials_info.path, filesystem=fs, columns=["status", "epochs_run", "max_epochs"])
        except Exception as err:  # noqa: BLE001 - one damaged sweep must not hide the others
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            summaries.append(SweepSummary(name=entry.base_name, path=shown, modified=trials_info.mtime,
                                          problem=f"{_join(shown, TRIALS_FILE)} cannot be read ({first})"))
            continue
        found = Counter(table.column("status").to_pylist())
        counts = {s: found.pop(s) for s in STATUSES if s in found} | dict(found)  # in lifecycle order
        times = [i.mtime for i in (trials_info, epochs_info) if i.type == pafs.FileType.File and i.mtime is not None]
        summaries.append(
            SweepSummary(
                name=entry.base_name,
                path=shown,
                counts=counts,
                epochs_done=int(sum(v or 0 for v in table.column("epochs_run").to_pylist())),
                epochs_planned=int(sum(v or 0 for v in table.column("max_epochs").to_pylist())),
                modified=max(times) if times else None,
            )
        )
    return sorted(summaries, key=lambda s: s.name)
