"""The multimodal classifier and the interface balancing methods use (DESIGN §3.1).

Methods never reach into a model's internals; they ask the model for:

* uni-modal predictions inside the joint model: the exact additive split
  (:meth:`MultimodalModel.unimodal_logits`, OPM/OGM Eq. 6) or each modality's prediction by its own
  classifier (:meth:`MultimodalModel.modality_logits`, AMSS §III-B, UME's members);
* the fused prediction of any subset of modalities (:meth:`MultimodalModel.subset_logits`, AGM's
  Shapley responses), for every fusion;
* the parameters that belong to each modality (:meth:`MultimodalModel.modality_parameters`);
* each encoder's depth blocks (:meth:`MultimodalModel.depth_blocks`, AIM) and the mask units its
  layers split into (:meth:`MultimodalModel.mask_units`, AMSS), declared by the encoder itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import NamedTuple

import torch
from torch import Tensor, nn

from mmtune.models.fusions import Fusion
from mmtune.models.units import MaskLayer

__all__ = ["ModelOutput", "MultimodalModel"]


class ModelOutput(NamedTuple):
    logits: Tensor
    features: dict[str, Tensor]  # each encoder's pooled feature φ^m, before any drop mask


class MultimodalModel(nn.Module):
    def __init__(self, encoders: dict[str, nn.Module], fusion: Fusion, num_classes: int):
        super().__init__()
        if list(encoders) != fusion.modalities:
            raise ValueError(f"encoders {list(encoders)} and fusion modalities {fusion.modalities} differ")
        self.modalities = list(encoders)
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.num_classes = num_classes

    def encode(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {m: self.encoders[m](inputs[m]) for m in self.modalities}

    def forward(self, inputs: dict[str, Tensor], drop: dict[str, Tensor] | None = None,
                features: dict[str, Tensor] | None = None) -> ModelOutput:
        """Fused logits; ``features`` (encoder outputs already computed for these inputs) skips encoding."""
        features = self.encode(inputs) if features is None else features
        fused_in = features
        if drop:
            # OPM: per-sample keep weights (0 = dropped; 1, or a rescale factor, = kept) on φ^m.
            fused_in = {m: f * drop[m].unsqueeze(1).to(f.dtype) if m in drop else f for m, f in features.items()}
        return ModelOutput(self.fusion(fused_in), features)

    def unimodal_logits(self, features: dict[str, Tensor], *, bias_split: Sequence[float] | None = None) -> dict[str, Tensor]:
        """Each modality's own prediction inside the joint model.

        Additive fusions give the exact split (concat: W^m·φ^m + γ^m·b, OPM/OGM Eq. 2, 6; γ = 1/M
        unless ``bias_split`` is given). Other fusions use the zero-out rule (OPM/OGM §4.3.7): the
        fusion applied with every other modality's feature set to zero.
        """
        if self.fusion.additive:
            return self.fusion.components(features, bias_split)
        out = {}
        for m in self.modalities:
            only_m = {j: f if j == m else f.new_zeros(f.shape) for j, f in features.items()}
            out[m] = self.fusion(only_m)
        return out

    def stacked_unimodal_logits(self, features: dict[str, Tensor], *, bias_split: Sequence[float] | None = None) -> Tensor:
        """:meth:`unimodal_logits` as one (M, B, C) tensor in ``modalities`` order: the per-step path of
        the methods that score every modality each batch (batched matmul where the fusion allows)."""
        if self.fusion.additive:
            return self.fusion.stacked_components(features, bias_split)
        return torch.stack(list(self.unimodal_logits(features, bias_split=bias_split).values()))

    def modality_logits(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each modality's prediction as a classifier of its own, q(y | x^m) (AMSS §III-B).

        Late and sum fusion have one head per modality: its logits, unscaled (late fusion's fused
        logits are their mean, so :meth:`unimodal_logits` is head/M there). Fusions without a head
        per modality give :meth:`unimodal_logits` (concat's exact split, the zero-out rule otherwise).
        """
        own = self.fusion.own_logits(features)
        return own if own is not None else self.unimodal_logits(features)

    def subset_logits(self, features: dict[str, Tensor], subsets: Sequence[Sequence[str]]) -> Tensor:
        """The fused logits with only each subset's modalities present, (S, B, C).

        Absent modalities' features are set to zero before the fusion (zero-padding, the rule of the
        Shapley-style methods, e.g. AGM): exact for every fusion, one fusion call on S·B rows. The
        empty subset gives the fusion of all-zero features (its biases).
        """
        b = next(iter(features.values())).shape[0]
        stacked = {
            m: torch.cat([f if m in subset else torch.zeros_like(f) for subset in subsets])
            for m, f in features.items()
        }
        return self.fusion(stacked).view(len(subsets), b, -1)

    def all_subsets(self) -> list[tuple[str, ...]]:
        """Every subset of the modalities, smallest first (the empty one included), in ``modalities`` order."""
        return [c for k in range(len(self.modalities) + 1) for c in combinations(self.modalities, k)]

    def mask_units(self, modality: str, *, scope: str = "backbone", unit: str = "auto") -> list[MaskLayer]:
        """The mask units of a modality's subnetwork (:mod:`mmtune.models.units`): ``backbone`` (its
        encoder's, as the encoder declares them), ``classifier`` (the head part it owns), or ``both``."""
        layers: list[MaskLayer] = []
        if scope in ("backbone", "both"):
            layers += self.encoders[modality].mask_units(unit)
        if scope in ("classifier", "both"):
            layers += self.fusion.mask_units(modality, unit)
        return layers

    def modality_parameters(self, *, heads: bool = True) -> dict[str, list[nn.Parameter]]:
        """Parameters of each modality's subnetwork: its encoder, plus its own head under late fusion
        (AMSS App. C.2) when ``heads``. Parameters shared by all modalities belong to none."""
        return {
            m: list(self.encoders[m].parameters()) + (self.fusion.owned_parameters(m) if heads else [])
            for m in self.modalities
        }

    def shared_parameters(self) -> list[nn.Parameter]:
        owned = {id(p) for m in self.modalities for p in self.fusion.owned_parameters(m)}
        return [p for p in self.fusion.parameters() if id(p) not in owned]

    def depth_blocks(self, modality: str) -> list[nn.Module]:
        """The D sequential blocks of modality's encoder (AIM §III-B)."""
        return list(self.encoders[modality].blocks)
