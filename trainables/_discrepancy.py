"""What OPM and OGM share: the batch's discriminative discrepancy ρ_t (OPM/OGM Eq. 6–7) and z(·).

Source: Wei, Hu, Ma, Zhang (2024), "On-the-fly Modulation for Balanced Multimodal Learning",
IEEE TPAMI, arXiv:2410.11582.

* Eq. 6 — s_i^m = softmax(W^m·φ_i^m + γ^m·b)_{y_i}: :func:`mmtune.engine.metrics.unimodal_score_sums`
  on :meth:`MultimodalModel.stacked_unimodal_logits` (exact split for concat/sum/late, zero-out rule for
  FiLM/gated, §4.3.7). γ^m = 1/M unless ``gamma`` is given (Table 14).
* Eq. 7 — ρ_t^m = 1/(M−1) Σ_{j≠m} Σ_i s_i^m / Σ_i s_i^j over the mini-batch, or the difference form
  of Table 15: :func:`mmtune.engine.metrics.discrepancy_ratio`.
* z(x) = tanh(x − 1) (the paper's choice) or sigmoid(x) (Table 15): :func:`z_function`.

Scores are computed from *detached* features: the monitoring never adds to the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmtune.config import hp
from mmtune.engine.method import MethodConfig
from mmtune.engine.metrics import discrepancy_ratio, unimodal_score_sums
from mmtune.errors import ConfigError, Problem
from mmtune.models.multimodal import ModelOutput, MultimodalModel

__all__ = ["DiscrepancyConfig", "z_function", "batch_discrepancy", "check_gamma"]


@dataclass(frozen=True)
class DiscrepancyConfig(MethodConfig):
    gamma: tuple[float, ...] | None = hp(None, doc="bias split γ^m per modality (Eq. 6, Table 14); null = 1/M each")
    discrepancy: str = hp("ratio", choices=("ratio", "difference"), doc="ρ as score ratio (Eq. 7) or difference (Table 15)")
    z: str = hp("tanh", choices=("tanh", "sigmoid"), doc="z(x) = tanh(x − 1) (paper) or sigmoid(x) (Table 15)")


def z_function(x: Tensor, kind: str = "tanh") -> Tensor:
    """The monotone map z of Eq. 8 and 11: tanh(x − 1) (paper default) or sigmoid(x) (Table 15)."""
    if kind == "tanh":
        return torch.tanh(x - 1.0)
    if kind == "sigmoid":
        return torch.sigmoid(x)
    raise ValueError(f"z must be 'tanh' or 'sigmoid', got {kind!r}")


def check_gamma(gamma: tuple[float, ...] | None, modalities: list[str]) -> None:
    if gamma is not None and len(gamma) != len(modalities):
        raise ConfigError([Problem("params.gamma", f"needs one value per modality {modalities}, got {list(gamma)}.")])


@torch.no_grad()
def batch_discrepancy(model: MultimodalModel, out: ModelOutput, labels: Tensor, cfg: DiscrepancyConfig) -> Tensor:
    """ρ_t^m for every modality (in ``model.modalities`` order) from this batch's forward pass."""
    # Under no_grad nothing here joins the graph, so the features need no detach.
    uni = model.stacked_unimodal_logits(out.features, bias_split=cfg.gamma)  # (M, B, C)
    return discrepancy_ratio(unimodal_score_sums(uni, labels), cfg.discrepancy)
