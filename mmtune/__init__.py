"""mmtune: Ray Tune ablation sweeps for balanced multimodal learning.

In a notebook: ``mmtune.load(path)`` (a sweep's tables and its ablation summary) and
``mmtune.study(path)`` (an Optuna sweep as an ``optuna.Study``); see :mod:`mmtune.api`.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load", "study"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import mmtune` (the CLI, the trials) stays free of pandas and optuna.
    if name in ("load", "study", "SweepResults"):
        from mmtune import api

        return getattr(api, name)
    raise AttributeError(f"module 'mmtune' has no attribute {name!r}")
