"""OPM: On-the-fly Prediction Modulation.

Paper: Wei, Hu, Ma, Zhang, "On-the-fly Modulation for Balanced Multimodal Learning", IEEE TPAMI
2024, arXiv:2410.11582, §3.2 and Algorithm 1.

Equation → function:
* Eq. 6–7 (score s, discrepancy ρ_t^m): ``trainables._discrepancy.batch_discrepancy``.
* Eq. 8 (q_{t+1}^m = q_base·(1 + λ·z(ρ_t^m)) if ρ_t^m > 1 else 0, capped at 1): :func:`drop_probability`.
* Alg. 1 ("drop the input of each modality with probability q_t^m"): :func:`sample_keep_masks` draws one
  Bernoulli(1 − q_t^m) keep flag per sample and modality; the model zeroes the dropped samples'
  feature φ^m before fusion (training only — evaluation never drops).

Timing, as Algorithm 1 states it (``timing: paper``, default): the q computed from step t's forward
pass is used at step t + 1. The first modulated step of a trial uses q = 0. q carries over epoch
boundaries and is checkpointed.

``timing: code``: the official TPAMI code (BML_TPAMI2024) instead computes q from the *current*
batch — it encodes the batch, scores it, and drops within the same batch. Here ``before_forward``
encodes the batch once (with grad, through ``ctx.model``), computes ρ and q from those features
under no_grad, and hands the features to the forward pass (``batch.features``), so the encoders still
run once per step. The code also warms up for 6 epochs before modulating: ``start_epoch: 7`` here
(1-based). Its full configuration is ``timing: code, p_exe: 0.7, rescale: theta_all, start_epoch: 7``.

Variants of the official TPAMI code (BML_TPAMI2024), as hyperparameters:
* ``p_exe``: the code executes the drop on a batch only with probability p_exe (0.7 there); default
  1.0, the paper.
* ``rescale``: ``none`` (default, the paper: dropped features are zero, kept ones unchanged);
  ``theta_all`` (the code: every kept feature of every modality is scaled by 1/(1 − θ), θ the
  dimension-weighted mean of q over modalities); ``inverted`` (inverted dropout per modality:
  kept features of m scaled by 1/(1 − q^m), so E[feature] is unchanged). We default to ``none``
  because it is what the paper specifies and evaluates; the code's rescaling changes the expected
  fused logit scale between training and evaluation, which the paper does not discuss.
* ``gamma``, ``discrepancy``, ``z`` (Tables 14–15) and the window ``start_epoch``/``end_epoch``.

Traces: ``trace/q/<m>`` (mean q used per step), ``trace/rho/<m>``, ``trace/kept/<m>`` (realised keep rate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmtune.config import hp
from mmtune.data.base import Batch
from mmtune.engine.method import BalancingMethod, StepContext
from mmtune.engine.metrics import discrepancy_ratio, unimodal_score_sums
from mmtune.models.multimodal import MultimodalModel
from mmtune.trainables._discrepancy import DiscrepancyConfig, batch_discrepancy, check_gamma, z_function
from mmtune.engine.registry import register

__all__ = ["OPM", "OPMConfig", "drop_probability", "sample_keep_masks", "feature_scale"]


@dataclass(frozen=True)
class OPMConfig(DiscrepancyConfig):
    q_base: float = hp(0.5, low=0.0, high=1.0, low_open=True, high_open=True, doc="base drop probability q_base (Eq. 8)")
    lam: float = hp(0.5, low=0.0, low_open=True, doc="adjustment degree λ (Eq. 8)")
    p_exe: float = hp(1.0, low=0.0, high=1.0, doc="probability a batch executes the drop (code: 0.7; paper: 1)")
    rescale: str = hp("none", choices=("none", "theta_all", "inverted"), doc="scaling of kept features (see docstring)")
    timing: str = hp("paper", choices=("paper", "code"), doc="paper: q from the previous step (Alg. 1); code: the official code's q "
                                                    "from this batch, dropped within it (its full setting: "
                                                    "p_exe=0.7 rescale=theta_all start_epoch=7, a 6-epoch warm-up)")


def drop_probability(rho: Tensor, q_base: float, lam: float, *, z: str = "tanh") -> Tensor:
    """Eq. 8: q^m = min(1, q_base·(1 + λ·z(ρ^m))) where ρ^m > 1, else 0."""
    q = (q_base * (1.0 + lam * z_function(rho, z))).clamp(0.0, 1.0)
    return torch.where(rho > 1.0, q, 0.0)


def sample_keep_masks(q: Tensor, batch_size: int, generator: torch.Generator) -> Tensor:
    """(M, B) 0/1 keep flags: sample i keeps modality m with probability 1 − q^m (one draw for all)."""
    u = torch.rand((q.shape[0], batch_size), generator=generator, device=q.device)
    return (u >= q.unsqueeze(1)).float()


def feature_scale(q: Tensor, dims: Tensor, rescale: str) -> Tensor:
    """(M,) factor applied to kept features: 1 (paper), 1/(1 − θ) for all (code), or 1/(1 − q^m) (inverted)."""
    if rescale == "none":
        return torch.ones_like(q)
    if rescale == "theta_all":
        theta = (q * dims).sum() / dims.sum()
        return torch.full_like(q, 1.0) / (1.0 - theta).clamp_min(1e-6)
    if rescale == "inverted":
        return 1.0 / (1.0 - q).clamp_min(1e-6)
    raise ValueError(f"unknown rescale {rescale!r}")


@register
class OPM(BalancingMethod):
    name = "opm"
    Config = OPMConfig
    state = ("q",)  # q_t, computed at step t and used at step t + 1 (Alg. 1), across epochs too
    paper = "OPM — Wei et al., TPAMI 2024, arXiv:2410.11582 (§3.2, Alg. 1)"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.q = torch.zeros(len(self.modalities), device=self.device)  # q_t, used at the next step

    def bind(self, model: MultimodalModel) -> None:
        check_gamma(self.config.gamma, self.modalities)
        self.dims = torch.tensor([float(model.fusion.feature_dims[m]) for m in self.modalities], device=self.device)

    def before_forward(self, batch: Batch, ctx: StepContext) -> Batch:
        cfg: OPMConfig = self.config
        if cfg.timing == "code":  # the official code: score this batch, then drop within it
            batch.features = ctx.model.encode(batch.inputs)
            with torch.no_grad():
                uni = ctx.model.stacked_unimodal_logits(batch.features, bias_split=cfg.gamma)
                rho = discrepancy_ratio(unimodal_score_sums(uni, batch.labels), cfg.discrepancy)
            self.q = drop_probability(rho, cfg.q_base, cfg.lam, z=cfg.z)
            self.traces.add_many("rho", rho, self.modalities)
        keep = sample_keep_masks(self.q, len(batch), ctx.generator)
        if cfg.p_exe < 1.0:
            execute = (torch.rand((), generator=ctx.generator, device=self.device) < cfg.p_exe).float()
            keep = 1.0 - execute * (1.0 - keep)  # a batch that does not execute keeps everything
        else:
            execute = torch.ones((), device=self.device)
        scale = feature_scale(self.q * execute, self.dims, cfg.rescale)
        weights = keep * scale.unsqueeze(1)
        self.traces.add_many("q", self.q, self.modalities)
        self.traces.add_many("kept", keep.mean(dim=1), self.modalities)
        batch.drop = {m: weights[i] for i, m in enumerate(self.modalities)}
        return batch

    @torch.inference_mode()  # as no_grad, minus autograd's per-op bookkeeping: nothing here is differentiated
    def modulate_gradients(self, model: MultimodalModel, out, batch: Batch, ctx: StepContext) -> None:
        # Alg. 1: ρ_t from this step's forward pass gives q_{t+1}, used by the next step's drop.
        cfg: OPMConfig = self.config
        if cfg.timing == "code":
            return
        rho = batch_discrepancy(model, out, batch.labels, cfg)
        self.q = drop_probability(rho, cfg.q_base, cfg.lam, z=cfg.z)
        self.traces.add_many("rho", rho, self.modalities)
