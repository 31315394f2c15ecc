"""Datasets by name. ``synthetic`` is the default; real datasets register here as they land."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from mmtune.config import Record, from_dict
from mmtune.data.base import Batch, MultimodalData, TensorSplit
from mmtune.data import cremad, kinetics_sounds, mosi, text_image, ucf101  # noqa: F401  (each real dataset registers itself on import)
from mmtune.data.real import REAL_DATASETS, load_real
from mmtune.data.synthetic import SyntheticConfig, make_synthetic
from mmtune.errors import ConfigError, Problem, shorten, unknown_name_message

__all__ = ["Batch", "DATASETS", "MultimodalData", "TensorSplit", "build_dataset", "dataset_config"]

# name -> (config record, builder(config, device) -> MultimodalData)
DATASETS: dict[str, tuple[type[Record], Callable[[Any, torch.device], MultimodalData]]] = {
    "synthetic": (SyntheticConfig, make_synthetic),
}
# Real datasets: each module registers itself in REAL_DATASETS on import (listed here explicitly).
DATASETS.update({name: (cls.Config, load_real) for name, cls in REAL_DATASETS.items()})


def dataset_config(data: Mapping[str, Any] | None, *, path: str = "dataset") -> Record:
    """Validate a dataset node (``{name: synthetic, dominance: 2}``) into its config record."""
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError([Problem(path, f"expected a mapping of keys to values, got {shorten(data)}.")])
    data = dict(data or {})
    name = data.get("name", "synthetic")
    if not isinstance(name, str):
        raise ConfigError([Problem(f"{path}.name", f"must be a dataset name such as 'synthetic', got {shorten(name)}. "
                                                   f"Known datasets: {', '.join(sorted(DATASETS))}.")])
    if name not in DATASETS:
        raise ConfigError([Problem(f"{path}.name", unknown_name_message("dataset", name, DATASETS))])
    return from_dict(DATASETS[name][0], data, path=path)


def build_dataset(cfg: Record, device: torch.device | str = "cpu") -> MultimodalData:
    return DATASETS[cfg.name][1](cfg, torch.device(device))
