"""Baselines every paper's table starts from: joint training and uni-modal training.

* ``joint``: plain joint training of all modalities with one cross-entropy loss — the balancing
  method whose hooks all do nothing ("Concatenation" / "Joint-Train" rows of OPM/OGM Table 2,
  AMSS Table III, AIM Table II).
* ``unimodal``: the chosen modality's encoder and a classifier trained on that modality alone (the
  "Audio-only" / "Visual-only" rows). The same encoder, data, optimizer and schedule as ``joint``;
  only the other modalities are left out of the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmtune.config import hp
from mmtune.engine.method import BalancingMethod, MethodConfig
from mmtune.errors import ConfigError, Problem
from mmtune.engine.registry import register


@register
class Joint(BalancingMethod):
    name = "joint"
    paper = "baseline: joint training with one cross-entropy loss"



@dataclass(frozen=True)
class UnimodalConfig(MethodConfig):
    modality: str = hp("video", doc="the one modality to train on")


@register
class Unimodal(BalancingMethod):
    name = "unimodal"
    Config = UnimodalConfig
    paper = "baseline: one modality trained alone"
    composable = "a baseline that trains one modality alone; the balancing methods need them all"

    @classmethod
    def select_modalities(cls, config: UnimodalConfig, modalities: list[str]) -> list[str]:
        if config.modality not in modalities:
            raise ConfigError(
                [Problem("params.modality", f"'{config.modality}' is not a modality of this dataset: {modalities}.")]
            )
        return [config.modality]
