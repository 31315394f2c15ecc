"""LFM: dynamically integrating a cross-modal alignment loss with the supervised loss.

Paper: Yang et al., "Facilitating Multimodal Classification via Dynamically Learning Modality Gap",
NeurIPS 2024 (no arXiv id found here). The official code (an anonymous 4open.science link in the
paper's supplement) could not be fetched; the re-implementation read is GeWu-Lab/BalanceBenchmark
``balancemm/trainer/LFM_trainer.py`` ("the code" below).

Sources. Only the paper's abstract could be read (no copy of its body was reachable): it says a
*heuristic* and a *learning-based* strategy integrate an unsupervised contrastive loss with the
supervised multimodal loss. The equations below come from the code, not from the paper; the heuristic
schedule is **ours** (the code implements only the learned strategy), and nothing here quotes the paper.

The quantities (M modalities, pairs P = {(i, j): i < j}, z^m the uni-modal logits):
* Alignment loss (the code's ``Alignment``): L_al = (1/|P|) Σ_{(i,j)∈P} D(softmax z^i, softmax z^j),
  D(p, q) = ½ (KL(m‖p) + KL(m‖q)), m = ½ (p + q) — the code calls ``F.kl_div(p.log(), m)``, which is
  KL(m‖p), not the Jensen–Shannon term KL(p‖m) (``divergence: code``, default; ``js`` the true JSD).
  ``align: infonce`` replaces D by a symmetric cross-modal InfoNCE on the ℓ2-normalised z (temperature τ):
  the paper's "contrastive" wording, our reading.
* Integrated loss: L = s · (α_0 L_CE + α_1 L_al), α_0 = 1 − α_1, s = 2 (the code's ``2 *``; ``scale``).
* Learned α (the code's ``getAlpha_Learnable``, once before each epoch, on a quarter of a fixed batch):
  g = mean(H(θ_0) v), the Hessian–vector product of L_tot = α_0 L_CE + α_1 L_al with v = ∇_θ L_CE,
  restricted to the model's first parameter tensor θ_0 (``hvp: first``; ``all`` averages over every
  parameter); α_1 ← clip(α_1 − η_α g, 0.05, 0.95); η_α halves at every 0-based epoch e with e % 20 = 0,
  e ≠ 0 (cumulative). α_1 starts at 0.05.
* Heuristic α (ours): α_1(e) = a_start + (a_end − a_start) · min(1, (e − start_epoch) / decay_epochs),
  a linear schedule from a strong alignment weight to a weak one.

Equation → function: D: :func:`pair_divergence`; InfoNCE: :func:`cross_modal_infonce`; L_al:
:func:`alignment_loss`; L: :func:`integrated_loss`; the α_1 update: :func:`learned_alpha_step`; the
heuristic: :func:`heuristic_alpha`; g: :meth:`LFM.hypergradient`.

Interpretations / departures:
* z^m = ``model.modality_logits`` (own heads under ``late``, concat's exact split otherwise).
* The code estimates α on a fixed *validation* batch; no hook sees validation data, so α is learned on
  the first batch of the training split (fixed order), a quarter of the training batch size.
* α_1 is an ``nn.Parameter`` returned by :meth:`LFM.extra_parameters` but updated only by the
  hypergradient rule (its ``.grad`` stays None, so the optimizer leaves it alone); it is checkpointed
  through ``state`` (``alpha``, ``lr_alpha``).
* Outside the window the loss is plain CE (the loop's rule for an inactive method). L is returned as
  ``extra_loss`` = L − L_CE on top of the loop's CE (same value and gradient), so LFM composes with the
  methods that replace the task loss.

Traces: ``trace/align/<m>`` (mean divergence of the pairs containing m), ``trace/unimodal_ce/<m>``,
``trace/alpha`` (α_1 this epoch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmtune.config import hp
from mmtune.data.base import Batch
from mmtune.engine.method import BalancingMethod, MethodConfig, StepContext
from mmtune.engine.registry import register
from mmtune.errors import ConfigError, Problem
from mmtune.models.multimodal import ModelOutput, MultimodalModel

__all__ = ["LFM", "LFMConfig", "pair_divergence", "cross_modal_infonce", "alignment_loss", "integrated_loss",
           "learned_alpha_step", "heuristic_alpha"]

ALPHA_LOW, ALPHA_HIGH = 0.05, 0.95



@dataclass(frozen=True)
class LFMConfig(MethodConfig):
    strategy: str = hp("learned", choices=("learned", "heuristic"),
                       doc="α_1 by the code's hypergradient rule (learned) or a linear schedule (heuristic, ours)")
    align: str = hp("divergence", choices=("divergence", "infonce"),
                    doc="alignment of uni-modal outputs: pairwise divergence of softmaxes (code) or cross-modal InfoNCE (ours)")
    divergence: str = hp("code", choices=("code", "js"),
                         doc="D = ½(KL(m‖p)+KL(m‖q)) as the code's kl_div call (code) or the true JSD (js)")
    temperature: float = hp(0.1, low=1e-4, doc="InfoNCE temperature τ (align=infonce only; ours)")
    scale: float = hp(2.0, low=0.0, doc="overall factor s of the integrated loss (code 2)")
    alpha_init: float = hp(0.05, low=ALPHA_LOW, high=ALPHA_HIGH, doc="initial α_1 of the learned strategy (code 0.05)")
    lr_alpha: float = hp(1e-4, low=0.0, doc="step size η_α of the α_1 update (code lr_alpha 1e-4)")
    lr_alpha_halve: int = hp(20, low=1, doc="η_α halves every this many epochs (code 20)")
    hvp: str = hp("first", choices=("first", "all"),
                  doc="g = mean of the HVP over the first parameter tensor (code) or over all parameters")
    heuristic_start: float = hp(0.5, low=0.0, high=1.0, doc="α_1 at start_epoch under strategy=heuristic (ours)")
    heuristic_end: float = hp(0.05, low=0.0, high=1.0, doc="α_1 after decay_epochs under strategy=heuristic (ours)")
    decay_epochs: int = hp(10, low=1, doc="epochs of the heuristic's linear decay (ours)")


# ----------------------------------------------------------------------------- pure functions

def pair_divergence(zi: Tensor, zj: Tensor, divergence: str = "code") -> Tensor:
    """D(softmax zi, softmax zj), batch mean: ½(KL(m‖p)+KL(m‖q)) (code) or ½(KL(p‖m)+KL(q‖m)) (js)."""
    logp, logq = F.log_softmax(zi, -1), F.log_softmax(zj, -1)
    logm = torch.logaddexp(logp, logq) - torch.log(torch.tensor(2.0, dtype=zi.dtype, device=zi.device))
    if divergence == "code":  # F.kl_div(p.log(), m, 'batchmean') = Σ m (log m − log p) / B
        return 0.5 * (F.kl_div(logp, logm, reduction="batchmean", log_target=True)
                      + F.kl_div(logq, logm, reduction="batchmean", log_target=True))
    return 0.5 * (F.kl_div(logm, logp, reduction="batchmean", log_target=True)
                  + F.kl_div(logm, logq, reduction="batchmean", log_target=True))


def cross_modal_infonce(zi: Tensor, zj: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE between ℓ2-normalised rows of zi and zj (positives: the same sample)."""
    a, b = F.normalize(zi, dim=-1), F.normalize(zj, dim=-1)
    sim = a @ b.T / temperature
    target = torch.arange(sim.shape[0], device=sim.device)
    return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target))


def alignment_loss(logits: list[Tensor], align: str = "divergence", divergence: str = "code",
                   temperature: float = 0.1) -> tuple[Tensor, Tensor]:
    """(L_al, per-modality mean over the pairs containing m): (1/|P|) Σ_{i<j} D(z^i, z^j)."""
    m = len(logits)
    per = [logits[0].new_zeros(()) for _ in range(m)]
    total = logits[0].new_zeros(())
    pairs = [(i, j) for i in range(m - 1) for j in range(i + 1, m)]
    for i, j in pairs:
        d = (pair_divergence(logits[i], logits[j], divergence) if align == "divergence"
             else cross_modal_infonce(logits[i], logits[j], temperature))
        total = total + d
        per[i] = per[i] + d
        per[j] = per[j] + d
    return total / len(pairs), torch.stack(per) / (m - 1)


def integrated_loss(ce: Tensor, align: Tensor, alpha1: Tensor | float, scale: float = 2.0) -> Tensor:
    """L = s · ((1 − α_1) L_CE + α_1 L_al)."""
    return scale * ((1.0 - alpha1) * ce + alpha1 * align)


def learned_alpha_step(alpha1: float, grad: float, lr: float) -> float:
    """α_1 ← clip(α_1 − η g, 0.05, 0.95)."""
    return max(ALPHA_LOW, min(ALPHA_HIGH, alpha1 - lr * grad))


def heuristic_alpha(epoch: int, start_epoch: int, a_start: float, a_end: float, decay_epochs: int) -> float:
    """α_1(e) = a_start + (a_end − a_start) · min(1, (e − start_epoch) / decay_epochs)."""
    frac = min(1.0, max(0.0, (epoch - start_epoch) / decay_epochs))
    return a_start + (a_end - a_start) * frac


# ----------------------------------------------------------------------------- the strategy

@register
class LFM(BalancingMethod):
    name = "lfm"
    Config = LFMConfig
    paper = "LFM (dynamically learning the modality gap) — Yang et al., NeurIPS 2024"
    state = ("alpha", "lr_now")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        cfg: LFMConfig = self.config
        self._alpha = nn.Parameter(torch.tensor(float(cfg.alpha_init), device=self.device))  # never in a graph: .grad stays None
        self.lr_now = float(cfg.lr_alpha)

    @property
    def alpha(self) -> Tensor:
        return self._alpha.detach()

    @alpha.setter
    def alpha(self, value: Tensor) -> None:
        with torch.no_grad():
            self._alpha.copy_(torch.as_tensor(value, dtype=self._alpha.dtype))

    def bind(self, model: MultimodalModel) -> None:
        if len(self.modalities) < 2:
            raise ConfigError([Problem("dataset.modalities", (
                f"LFM aligns two or more modalities, got {self.modalities}; use method=joint or unimodal."))])
        self.model = model

    def extra_parameters(self) -> list[nn.Parameter]:
        return [self._alpha]

    def _losses(self, model: MultimodalModel, out: ModelOutput, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        cfg: LFMConfig = self.config
        uni = model.modality_logits(out.features)
        logits = [uni[m] for m in self.modalities]
        align, per = alignment_loss(logits, cfg.align, cfg.divergence, cfg.temperature)
        return F.cross_entropy(out.logits, labels), align, per, logits

    def hypergradient(self, model: MultimodalModel, batch: Batch) -> float:
        """g = mean(H v) over the first parameter (hvp: first) or all of them, v = ∇θ L_CE (the code)."""
        params = [p for p in model.parameters() if p.requires_grad]
        out = model(batch.inputs)
        ce, align, _, _ = self._losses(model, out, batch.labels)
        a1 = self.alpha
        total = (1.0 - a1) * ce + a1 * align
        theta = torch.autograd.grad(total, params, create_graph=True, allow_unused=True)
        cls = torch.autograd.grad(ce, params, retain_graph=True, create_graph=True, allow_unused=True)
        keep = [i for i, (t, c) in enumerate(zip(theta, cls)) if t is not None and c is not None and t.requires_grad]
        hvp = torch.autograd.grad([theta[i] for i in keep], [params[i] for i in keep],
                                  grad_outputs=[cls[i] for i in keep], allow_unused=True)
        hvp = [h if h is not None else torch.zeros_like(params[i]) for h, i in zip(hvp, keep)]
        if self.config.hvp == "first":
            return float(hvp[0].mean().item())
        return float(torch.cat([h.reshape(-1) for h in hvp]).mean().item())

    def begin_epoch(self, ctx: StepContext) -> None:
        super().begin_epoch(ctx)
        cfg: LFMConfig = self.config
        if not self.in_window(ctx.epoch):
            return
        if cfg.strategy == "heuristic":
            self.alpha = torch.tensor(heuristic_alpha(ctx.epoch, cfg.start_epoch, cfg.heuristic_start,
                                                      cfg.heuristic_end, cfg.decay_epochs))
        elif ctx.model is not None and ctx.train is not None:
            e0 = ctx.epoch - 1  # the code's 0-based epoch
            if e0 % cfg.lr_alpha_halve == 0 and e0 != 0:
                self.lr_now = self.lr_now / 2
            batch = next(iter(ctx.train.batches(max(1, (ctx.batch_size or 64) // 4))))
            was = ctx.model.training
            ctx.model.train()
            try:
                g = self.hypergradient(ctx.model, batch)
            finally:
                ctx.model.train(was)
                ctx.model.zero_grad(set_to_none=True)
            self.alpha = torch.tensor(learned_alpha_step(float(self.alpha.item()), g, self.lr_now))
        self.traces.add("alpha", self.alpha)

    def extra_loss(self, out: ModelOutput, batch: Batch, ctx: StepContext) -> Tensor:
        """L − L_CE, so that the loop's CE plus this is L (the method composes instead of replacing the loss)."""
        cfg: LFMConfig = self.config
        ce, align, per, logits = self._losses(self.model, out, batch.labels)
        self.traces.add_many("align", per.detach(), self.modalities)
        self.traces.add_many("unimodal_ce", torch.stack([F.cross_entropy(z.detach(), batch.labels) for z in logits]),
                             self.modalities)
        return integrated_loss(ce, align, self.alpha, cfg.scale) - ce
