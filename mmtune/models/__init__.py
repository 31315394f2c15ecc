"""Encoders, fusions and the multimodal model, built from a :class:`ModelConfig`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmtune.config import Record, hp
from mmtune.errors import ConfigError, Problem, unknown_name_message
from mmtune.models.encoders import ENCODERS, build_encoder, list_encoders
from mmtune.models import text  # noqa: F401  registers "bert" (transformers is imported only when one is built)
from mmtune.models.fusions import FUSIONS, build_fusion, list_fusions
from mmtune.models.multimodal import ModelOutput, MultimodalModel

__all__ = ["ModelConfig", "ModelOutput", "MultimodalModel", "build_model", "list_encoders", "list_fusions",
           "use_channels_last"]


@dataclass(frozen=True)
class ModelConfig(Record):
    backbone: str = hp("mlp", doc="encoder for every modality: " + " | ".join(sorted(ENCODERS)))
    backbones: dict[str, str] = hp(default_factory=dict, doc="per-modality encoder overrides, e.g. {video: resnet18}")
    fusion: str = hp("concat", doc="fusion: " + " | ".join(sorted(FUSIONS)))
    hidden_dim: int = hp(128, low=1, doc="width of mlp / transformer encoders (their feature size)")
    num_layers: int = hp(2, low=1, high=12, doc="depth blocks of mlp / cnn / transformer encoders")
    weights: dict[str, str] = hp(default_factory=dict, doc="per-modality local weight files (no downloads)")

    def extra_checks(self) -> list[Problem]:
        problems = []
        for path, name in [("backbone", self.backbone), *((f"backbones.{m}", b) for m, b in self.backbones.items())]:
            if name not in ENCODERS:
                problems.append(Problem(path, unknown_name_message("encoder", name, ENCODERS)))
        if self.fusion not in FUSIONS:
            problems.append(Problem("fusion", unknown_name_message("fusion", self.fusion, FUSIONS)))
        return problems

    def backbone_for(self, modality: str) -> str:
        return self.backbones.get(modality, self.backbone)


def build_model(cfg: ModelConfig, *, input_shapes: dict[str, tuple[int, ...]], num_classes: int) -> MultimodalModel:
    """Build encoders (one per modality, in the order of ``input_shapes``), the fusion and the model.

    Parameters are initialised from torch's global RNG: seed it first for a reproducible model.
    """
    unknown = sorted((set(cfg.backbones) | set(cfg.weights)) - set(input_shapes))
    if unknown:
        raise ConfigError(
            [Problem("model.backbones", f"names modalities {unknown} that the dataset does not have ({list(input_shapes)}).")]
        )
    encoders = {}
    for m, shape in input_shapes.items():
        try:
            encoders[m] = build_encoder(cfg.backbone_for(m), input_shape=tuple(shape), hidden_dim=cfg.hidden_dim,
                                        num_layers=cfg.num_layers, weights=cfg.weights.get(m))
        except ConfigError as err:  # the encoder names its argument; the user wrote a model.* key
            raise ConfigError([Problem(_model_key(p.path, m, cfg), p.message) for p in err.problems]) from None
    fusion = build_fusion(cfg.fusion, feature_dims={m: e.out_dim for m, e in encoders.items()}, num_classes=num_classes)
    return MultimodalModel(encoders, fusion, num_classes)


def use_channels_last(model: MultimodalModel) -> None:
    """Switch every encoder that convolves images or frames (cnn, resnet18) to channels_last memory format,
    weights and 4-D inputs alike; other encoders (mlp, transformer, bert) are left as they are."""
    for encoder in model.encoders.values():
        if hasattr(encoder, "use_channels_last"):
            encoder.use_channels_last()


def _model_key(argument: str, modality: str, cfg: ModelConfig) -> str:
    """The model.* key behind an encoder argument's problem (``weights`` → ``model.weights.audio``)."""
    if argument == "weights":
        return f"model.weights.{modality}"
    if argument == "input_shape":
        return f"model.backbones.{modality}" if modality in cfg.backbones else "model.backbone"
    return f"model.{argument}" if argument else f"model.backbones.{modality}"


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
