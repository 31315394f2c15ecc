"""Fusion modules: per-modality features in, class logits out.

Each fusion declares whether it is *additive* — logits = Σ_m f_m(φ^m) exactly — and, if so, gives
the per-modality components f_m. That is what the balancing papers call the uni-modal prediction:

* ``concat``: logits = W·[φ^1; …; φ^M] + b = Σ_m (W^m·φ^m + γ^m·b), γ^m = 1/M by default
  (OPM/OGM Eq. 2 and 6; the bias split γ is Table 14's ablation).
* ``sum``: logits = Σ_m (W_m·φ^m + b_m); the component of m is its own linear map with its own bias,
  exactly as the official OGM-GE code scores the sum fusion.
* ``late``: one head per modality, logits averaged: component = head_m(φ^m) / M.

``film`` and ``gated`` mix modalities multiplicatively, so there is no exact split; for them the
model falls back to the zero-out rule (OPM/OGM §4.3.7, AMSS §III-B): the uni-modal prediction of m
is the fusion applied with every other modality's feature set to zero.

For M > 2, FiLM and gating generalise the official two-modality modules by letting the *first*
modality generate the FiLM parameters (or the gate) for the concatenation (or sum) of the others,
which is the official code's default orientation (audio conditions video).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from mmtune.errors import ConfigError, unknown_name_message
from mmtune.models.units import MaskLayer, column_layer, param_layer

__all__ = ["Fusion", "FUSIONS", "build_fusion", "list_fusions", "register_fusion"]

FUSIONS: dict[str, Callable[..., Fusion]] = {}


def register_fusion(name: str) -> Callable[[type[Fusion]], type[Fusion]]:
    def wrap(cls: type[Fusion]) -> type[Fusion]:
        if name in FUSIONS:
            raise ValueError(f"fusion '{name}' is registered twice")
        FUSIONS[name] = cls
        cls.name = name
        return cls

    return wrap


def list_fusions() -> list[str]:
    return sorted(FUSIONS)


def build_fusion(name: str, *, feature_dims: dict[str, int], num_classes: int) -> Fusion:
    if name not in FUSIONS:
        raise ConfigError(unknown_name_message("fusion", name, FUSIONS))
    return FUSIONS[name](feature_dims, num_classes)


class Fusion(nn.Module, ABC):
    """Base fusion. Subclasses set ``additive`` and implement ``forward`` (and ``components``)."""

    name: ClassVar[str] = ""
    additive: ClassVar[bool] = False

    def __init__(self, feature_dims: dict[str, int], num_classes: int):
        super().__init__()
        self.modalities = list(feature_dims)
        self.feature_dims = dict(feature_dims)
        self.num_classes = num_classes

    @abstractmethod
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """Class logits (B, num_classes) from each modality's feature (B, d_m)."""

    def components(self, features: dict[str, Tensor], bias_split: Sequence[float] | None = None) -> dict[str, Tensor]:
        """Exact per-modality logit components (additive fusions only); they sum to ``forward``."""
        raise TypeError(f"fusion '{self.name}' is not additive; use the zero-out rule")

    def stacked_components(self, features: dict[str, Tensor], bias_split: Sequence[float] | None = None) -> Tensor:
        """:meth:`components` as one (M, B, C) tensor, in ``modalities`` order (the per-step hot path)."""
        return torch.stack([c for c in self.components(features, bias_split).values()])

    def owned_parameters(self, modality: str) -> list[nn.Parameter]:
        """Fusion parameters that belong to one modality's subnetwork (its own head under late fusion)."""
        return []

    def owned_columns(self, modality: str) -> list[tuple[nn.Parameter, int, int]]:
        """Column blocks ``weight[:, start:stop]`` of shared weight matrices that act on this modality's
        feature alone (the concat head's W^m): its part of a head it shares with the others."""
        return []

    def mask_units(self, modality: str, unit: str = "auto") -> list[MaskLayer]:
        """The mask units of the classifier part this modality owns (AMSS Table VII's classifier scope):
        the class rows of its own head's weights, then of its column block of a shared head. Biases
        and shared parameters belong to no modality and have none."""
        layers = [param_layer(p, unit, "rows") for p in self.owned_parameters(modality) if p.dim() >= 2]
        return layers + [column_layer(p, start, stop, unit) for p, start, stop in self.owned_columns(modality)]

    def own_logits(self, features: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """Each modality's prediction by a classifier of its own, when the fusion has one per modality
        (late fusion's heads, unscaled); None otherwise."""
        return None


@register_fusion("concat")
class ConcatFusion(Fusion):
    additive = True

    def __init__(self, feature_dims: dict[str, int], num_classes: int):
        super().__init__(feature_dims, num_classes)
        self.fc = nn.Linear(sum(feature_dims.values()), num_classes)
        self._gamma_cache: dict[tuple, Tensor] = {}

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.fc(torch.cat([features[m] for m in self.modalities], dim=1))

    def components(self, features: dict[str, Tensor], bias_split: Sequence[float] | None = None) -> dict[str, Tensor]:
        # Eq. 2/6: W = [W^1; …; W^M] split by columns, bias shared out by γ^m (default 1/M).
        gamma = bias_split if bias_split is not None else [1.0 / len(self.modalities)] * len(self.modalities)
        blocks = self.fc.weight.split([self.feature_dims[m] for m in self.modalities], dim=1)
        return {
            m: torch.addmm(self.fc.bias * g, features[m], w.T)
            for m, w, g in zip(self.modalities, blocks, gamma, strict=True)
        }

    def stacked_components(self, features: dict[str, Tensor], bias_split: Sequence[float] | None = None) -> Tensor:
        dims = {self.feature_dims[m] for m in self.modalities}
        if len(dims) != 1:
            return super().stacked_components(features, bias_split)
        # Equal feature widths: all M components in one batched matmul, (M, B, d) @ (M, d, C) + γ^m·b.
        n, d, c = len(self.modalities), dims.pop(), self.num_classes
        gamma = tuple(bias_split) if bias_split is not None else (1.0 / n,) * n
        bias = self.fc.bias
        key = (gamma, bias.dtype, bias.device)
        gamma_t = self._gamma_cache.get(key)
        if gamma_t is None:  # built once per split and device: no host-to-device copy per step
            gamma_t = self._gamma_cache[key] = torch.tensor(gamma, dtype=bias.dtype, device=bias.device).view(n, 1, 1)
        stacked = torch.stack([features[m] for m in self.modalities])
        return torch.baddbmm(gamma_t * bias, stacked, self.fc.weight.view(c, n, d).permute(1, 2, 0))

    def owned_columns(self, modality: str) -> list[tuple[nn.Parameter, int, int]]:
        start = sum(self.feature_dims[m] for m in self.modalities[: self.modalities.index(modality)])
        return [(self.fc.weight, start, start + self.feature_dims[modality])]


@register_fusion("sum")
class SumFusion(Fusion):
    additive = True

    def __init__(self, feature_dims: dict[str, int], num_classes: int):
        super().__init__(feature_dims, num_classes)
        self.fc = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in feature_dims.items()})

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return sum(self.fc[m](features[m]) for m in self.modalities)

    def components(self, features: dict[str, Tensor], bias_split: Sequence[float] | None = None) -> dict[str, Tensor]:
        return {m: self.fc[m](features[m]) for m in self.modalities}

    def own_logits(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.components(features)


@register_fusion("late")
class LateFusion(Fusion):
    """One classifier head per modality; logits are the mean of the heads' logits."""

    additive = True

    def __init__(self, feature_dims: dict[str, int], num_classes: int):
        super().__init__(feature_dims, num_classes)
        self.heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in feature_dims.items()})

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return sum(self.heads[m](features[m]) for m in self.modalities) / len(self.modalities)

    def components(self, features: dict[str, Tensor], bias_split: Sequence[float] | None = None) -> dict[str, Tensor]:
        return {m: self.heads[m](features[m]) / len(self.modalities) for m in self.modalities}

    def own_logits(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return {m: self.heads[m](features[m]) for m in self.modalities}

    def owned_parameters(self, modality: str) -> list[nn.Parameter]:
        return list(self.heads[modality].parameters())


@register_fusion("film")
class FiLMFusion(Fusion):
    """FiLM (Perez et al. 2018): the first modality predicts (γ, β) that modulate the others."""

    def __init__(self, feature_dims: dict[str, int], num_classes: int):
        super().__init__(feature_dims, num_classes)
        cond, *rest = self.modalities
        self.target_dim = sum(feature_dims[m] for m in rest)
        self.film = nn.Linear(feature_dims[cond], 2 * self.target_dim)
        self.fc_out = nn.Linear(self.target_dim, num_classes)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        cond, *rest = self.modalities
        gamma, beta = self.film(features[cond]).chunk(2, dim=1)
        target = torch.cat([features[m] for m in rest], dim=1)
        return self.fc_out(gamma * target + beta)


@register_fusion("gated")
class GatedFusion(Fusion):
    """Gated fusion (as in the OGM-GE code): σ(fc(φ^first)) gates the projected other modalities."""

    def __init__(self, feature_dims: dict[str, int], num_classes: int):
        super().__init__(feature_dims, num_classes)
        hidden = feature_dims[self.modalities[0]]
        self.proj = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in feature_dims.items()})
        self.fc_out = nn.Linear(hidden, num_classes)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        gate_m, *rest = self.modalities
        gate = torch.sigmoid(self.proj[gate_m](features[gate_m]))
        return self.fc_out(gate * sum(self.proj[m](features[m]) for m in rest))
