"""The results store (DESIGN §3.4): Arrow/Parquet tables of every epoch and every trial of a sweep.

``schema`` defines the tables, ``writer.ResultsWriter`` (a Ray Tune callback on the driver) writes
them, ``reader`` reads them back. Importing this package needs only pyarrow; ``ResultsWriter`` (which
needs Ray) is imported on first use.
"""

from mmtune.store.reader import SweepSummary, list_sweeps, open_storage, read_epochs, read_trials
from mmtune.store.schema import SCHEMA_VERSION, STATUSES, schema_version

__all__ = [
    "SCHEMA_VERSION", "STATUSES", "ResultsWriter", "SweepSummary",
    "list_sweeps", "open_storage", "read_epochs", "read_trials", "schema_version",
]


def __getattr__(name: str):
    if name == "ResultsWriter":
        from mmtune.store.writer import ResultsWriter

        return ResultsWriter
    raise AttributeError(f"module 'mmtune.store' has no attribute {name!r}")
