"""OGM / OGM-GE / OGM*: On-the-fly Gradient Modulation (with Generalisation Enhancement).

Paper: Wei, Hu, Ma, Zhang, "On-the-fly Modulation for Balanced Multimodal Learning", IEEE TPAMI
2024, arXiv:2410.11582 (extends Peng et al., "Balanced Multimodal Learning via On-the-fly Gradient
Modulation", CVPR 2022, arXiv:2203.15332).

Equation → function:
* Eq. 6–7 (score s, discrepancy ρ_t^m): ``trainables._discrepancy.batch_discrepancy``.
* Eq. 11 (coefficient k_t^m = 1 − α·z(ρ_t^m) if ρ_t^m > 1 else 1, clamped at 0): :func:`gradient_coefficient`.
* Eq. 12 (θ ← θ − η·k·g̃): :func:`modulate` scales modality m's gradients by k_t^m after backward,
  before the optimizer step (so momentum / weight decay see the modulated gradient, as in the code).
* Eq. 16–17 (GE: add h(θ) ~ N(0, Cov(g̃))): :func:`generalisation_noise`.
* §4.4.2 (OGM*): :func:`boost_coefficient`.

Variants (hyperparameters, so one sweep can grid over them):
* ``k_form``: ``paper`` (Eq. 11, default); ``cvpr2022`` — the released CVPR 2022 code,
  k = 1 − tanh(α·ρ) for the dominant modality (a jump from 1 to 1 − tanh(α) at ρ = 1);
  ``cvpr2022_relu`` — an earlier commit of that code, k = 1 − tanh(α·relu(ρ − 1)).
* ``scope``: ``encoder`` (paper: every parameter of encoder m) or ``conv`` (official code: only the
  encoder's 4-D convolution weights).
* ``ge``: OGM-GE. Deviation, stated: the paper's h(θ) has the full covariance of the mini-batch
  gradient, which is infeasible to estimate per step; like the official code we use an isotropic
  Gaussian per gradient tensor with σ = std of that tensor's gradient *before* modulation, added to
  every modulated tensor of every modality (the weak modality's too, where k = 1).
* ``variant: boost`` (OGM*, §4.4.2): the dominant modality is left alone and the weak one's gradient
  is enlarged. The paper gives no formula; our reading mirrors Eq. 11: for ρ_t^m < 1,
  k_t^m = 1 + α·z(1/ρ_t^m) (ratio form; 2 − ρ for the difference form), else 1. The official TPAMI
  code's ``use_OGM_plus`` does something else: it multiplies the weak modality's gradient by a
  constant 4, whatever ρ is (not offered as a variant; ``alpha`` has no role there).
* ``gamma``, ``discrepancy``, ``z`` (Tables 14–15) and the window ``start_epoch``/``end_epoch`` (E).

Traces: ``trace/k/<m>`` and ``trace/rho/<m>`` (means over the epoch's modulated steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmtune.config import hp
from mmtune.engine.method import BalancingMethod, StepContext
from mmtune.errors import ConfigError, Problem
from mmtune.models.multimodal import MultimodalModel
from mmtune.trainables._discrepancy import DiscrepancyConfig, batch_discrepancy, check_gamma, z_function
from mmtune.engine.registry import register

__all__ = ["OGM", "OGMConfig", "gradient_coefficient", "boost_coefficient", "generalisation_noise", "modulate"]


@dataclass(frozen=True)
class OGMConfig(DiscrepancyConfig):
    alpha: float = hp(0.8, low=0.0, low_open=True, doc="modulation strength α (Eq. 11)")
    ge: bool = hp(False, doc="OGM-GE: add generalisation-enhancement noise (Eq. 16–17)")
    k_form: str = hp("paper", choices=("paper", "cvpr2022", "cvpr2022_relu"), doc="k of Eq. 11 or of the CVPR 2022 code")
    scope: str = hp("encoder", choices=("encoder", "conv"), doc="all encoder parameters (paper) or 4-D conv weights (code)")
    variant: str = hp("attenuate", choices=("attenuate", "boost"), doc="attenuate the dominant (OGM) or boost the weak (OGM*, our "
                                                                           "reading; the TPAMI code's use_OGM_plus instead multiplies "
                                                                           "the weak modality's gradient by a constant 4)")


def gradient_coefficient(rho: Tensor, alpha: float, *, k_form: str = "paper", z: str = "tanh") -> Tensor:
    """Eq. 11: k^m = 1 − α·z(ρ^m) where ρ^m > 1, else 1; clamped at 0 (§3.3: "the minimum value of k is 0")."""
    dominant = rho > 1.0
    if k_form == "paper":
        k = 1.0 - alpha * z_function(rho, z)
    elif k_form == "cvpr2022":
        k = 1.0 - torch.tanh(alpha * rho)
    elif k_form == "cvpr2022_relu":
        k = 1.0 - torch.tanh(alpha * torch.relu(rho - 1.0))
    else:
        raise ValueError(f"unknown k_form {k_form!r}")
    return torch.where(dominant, k.clamp_min(0.0), 1.0)


def boost_coefficient(rho: Tensor, alpha: float, *, z: str = "tanh", discrepancy: str = "ratio") -> Tensor:
    """OGM* (§4.4.2), our reading: k^m = 1 + α·z(ρ̄^m) where ρ^m < 1, else 1; ρ̄ = 1/ρ (ratio) or 2 − ρ (difference)."""
    mirrored = 1.0 / rho.clamp_min(1e-8) if discrepancy == "ratio" else 2.0 - rho
    return torch.where(rho < 1.0, 1.0 + alpha * z_function(mirrored, z), 1.0)


def generalisation_noise(grads: list[Tensor], generator: torch.Generator, buffer: Tensor | None = None) -> list[Tensor]:
    """Eq. 16 h(θ), isotropic per tensor: N(0, σ²) with σ = std of the gradient tensor (+1e-8, as the code).

    The noise of all tensors is drawn with one in-place ``normal_`` into a flat ``buffer`` (reused
    across steps when given and large enough; the returned tensors are views of it): a fresh
    allocation per step costs as much as the drawing itself on CPU (page faults on ~44 MB per
    ResNet18), and one RNG call replaces one per tensor on GPU.
    """
    if not grads:
        return []
    total = sum(g.numel() for g in grads)
    dtype = grads[0].dtype
    if buffer is None or buffer.numel() < total or buffer.dtype != dtype or buffer.device != grads[0].device:
        buffer = grads[0].new_empty(total)
    flat = buffer[:total].normal_(generator=generator)
    noise = [n.view(g.shape) for n, g in zip(flat.split([g.numel() for g in grads]), grads, strict=True)]
    sigmas = [(g.std() if g.numel() > 1 else g.new_zeros(())).to(dtype) + 1e-8 for g in grads]
    torch._foreach_mul_(noise, sigmas)
    return noise


def modulate(grads: list[Tensor], k: Tensor, noise: list[Tensor] | None = None) -> None:
    """Eq. 12 / 16 in place: g ← k·g (+ h). ``k`` is a 0-d device tensor: no host sync."""
    if not grads:
        return
    torch._foreach_mul_(grads, k)
    if noise is not None:
        torch._foreach_add_(grads, noise)


@register
class OGM(BalancingMethod):
    name = "ogm"
    Config = OGMConfig
    paper = "OGM / OGM-GE / OGM* — Wei et al., TPAMI 2024, arXiv:2410.11582 (Peng et al., CVPR 2022)"

    def bind(self, model: MultimodalModel) -> None:
        cfg: OGMConfig = self.config
        check_gamma(cfg.gamma, self.modalities)
        groups = model.modality_parameters(heads=False)
        if cfg.scope == "conv":
            groups = {m: [p for p in ps if p.dim() == 4] for m, ps in groups.items()}
            if not any(groups.values()):
                raise ConfigError(
                    [Problem("params.scope", "is 'conv' but no encoder has 4-D convolution weights; use scope=encoder "
                             "or a conv backbone (model.backbone=cnn | resnet18).")]
                )
        self.groups = groups
        self._noise: dict[str, Tensor] = {}

    def _noise_buffer(self, modality: str) -> Tensor:
        """GE's flat noise buffer for one modality, sized for all its modulated tensors, made once."""
        if modality not in self._noise:
            params = self.groups[modality]
            self._noise[modality] = params[0].new_empty(sum(p.numel() for p in params)) if params else torch.empty(0)
        return self._noise[modality]

    @torch.inference_mode()  # as no_grad, minus autograd's per-op bookkeeping: nothing here is differentiated
    def modulate_gradients(self, model: MultimodalModel, out, batch, ctx: StepContext) -> None:
        cfg: OGMConfig = self.config
        rho = batch_discrepancy(model, out, batch.labels, cfg)
        if cfg.variant == "boost":
            k = boost_coefficient(rho, cfg.alpha, z=cfg.z, discrepancy=cfg.discrepancy)
        else:
            k = gradient_coefficient(rho, cfg.alpha, k_form=cfg.k_form, z=cfg.z)
        for i, m in enumerate(self.modalities):
            grads = [p.grad for p in self.groups[m] if p.grad is not None]
            noise = generalisation_noise(grads, ctx.generator, self._noise_buffer(m)) if cfg.ge else None
            modulate(grads, k[i], noise)
        self.traces.add_many("k", k, self.modalities)
        self.traces.add_many("rho", rho, self.modalities)
