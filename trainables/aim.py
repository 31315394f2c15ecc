"""AIM: Adaptive Intra-Network Modulation (PAM + DAM with depth-adaptive prototypes).

Paper: Shen, Chen, Zhang, "AIM: Adaptive Intra-Network Modulation for Balanced Multimodal
Learning" (South China University of Technology). The text we work from gives no arXiv id.
**No official code is public: this is a reimplementation from the paper**; every reading of an
under-specified step is listed below with its reason.

Structure (§III-B): every modality's encoder is split into the same number D of depth blocks
(``MultimodalModel.depth_blocks``; ResNet18: its four stages). Depth names are ``d1..dD``.

Equation → function:
* Eq. 3 (L_cls: the input prototypes, passed through the whole framework, classified as their own
  classes): :func:`dap_classification_loss` (per modality by default, reading 12).
* Eq. 4 (L_r = 1/(M·K) Σ_m Σ_k ‖Ψ_dap^m(p_k) − X̄^{m,k}‖²): :func:`dap_reconstruction_loss`.
* Eq. 5 (P_0 = argmin L_cls + L_r, the framework frozen): ``AIM.modulate_gradients`` — one step
  of the method's own optimizer on the prototypes and Ψ_dap per training step.
* Eq. 6 (P_d = E_{~d}(P_0)): the prototypes' own forward pass through the model (eval mode), whose
  block outputs are read at every depth.
* Eq. 7 (θ_b = Ψ(Φ_lat(θ) ⊙ σ(Φ_mask(Φ_lat(θ))))): :func:`latent_and_mask`, :func:`decoupled_parameters`.
* Eq. 8 (L_pdm = L_g + L_re; θ_g from 1 − w): :func:`complementary_parameters`,
  :func:`reconstruction_loss`; L_g is Eq. 10 on the θ_g block.
* Eq. 9–10 (s_d^m, L_d^m against the depth-d prototypes, δ = Euclidean distance):
  :func:`prototype_logits` (the exponent −δ) and :func:`score_and_loss`.
* Eq. 11 (L_d = Σ_m ρ_d^m L_d^m + ρ̃_d^m L̃_d^m): :func:`depth_loss`.
* Eq. 12 (ρ: softmax of −s over the original *and* auxiliary blocks of all modalities, fixed):
  :func:`participation_weights`.
* Eq. 13 (gradient of the auxiliary block back to θ through J_{F_pdm}): autograd — θ_b is computed
  from the live θ, so ``backward`` applies J^T exactly; no hand-written Jacobian.
* Eq. 14 (α_d: coefficient of variation of s_d^m over modalities): :func:`coefficient_of_variation`.
* Eq. 15 (L_mod = Σ_d α_d L_d): :func:`modulation_loss`.
* The paper's E is 0-based (Fig. 7: "E = 0 indicates that AIM is applied from the beginning"); mmtune's
  epochs are 1-based, so ``start_epoch`` = E + 1 (the default 3 is the paper's E = 2).
* Algorithm 1: epochs < ``start_epoch`` (E + 1) are the warm-up — the framework is trained by the
  cross-entropy (Eq. 2) and the decoupling maps by Eq. 8, then DAP by Eq. 5 with the framework
  frozen; epochs ≥ E add L_mod to the cross-entropy and keep updating DAP. After ``end_epoch``
  (if set) nothing is added: plain joint training.

Ablations (hyperparameters, so one sweep grids over them):
* ``pam=false`` — "w/o PAM" (Table III): no decoupling maps, no auxiliary blocks; L_d is the
  ρ-weighted sum over the original blocks only (ρ a softmax over the M originals).
* ``dam=false`` — "w/o DAM": α_d = 1 in Eq. 15 (α_d is still computed and traced).
* ``prototypes=label`` — "AIM-label" (Table V): no DAP; a block's output is scored by the
  classifier (s = probability of the true class, L = cross-entropy), see the readings below.

Readings and deviations (each with its reason):
1. *Decoupling maps are chunk-wise* (``pdm_chunk``, ``pdm_latent``). Read literally (§IV-A4), Φ_lat is
   one fully connected map from all of a layer's parameters to a 512-d latent: for a ResNet18 stage
   that is millions × 512 weights. We flatten the block's parameters (Eq. 7: "its parameters θ are
   first flattened"), cut them into chunks of ``pdm_chunk`` values (zero-padded at the end), and
   apply per block one shared Φ_lat: R^chunk → R^latent, Φ_mask: R^latent → R^latent and
   Ψ: R^latent → R^chunk to every chunk (a latent/mask per chunk). ``pdm_chunk=0`` is the literal
   map (one chunk = the whole block), allowed where it fits. Initialisation (the paper gives none):
   Φ_lat = Q^T, Ψ = Q with Q a random orthonormal chunk×latent basis (Ψ∘Φ_lat starts as an
   orthogonal projection of each chunk, not as noise), zero biases, Φ_mask zero (w = 1/2: no
   selection yet, θ_b = θ_g).
2. *L_re per chunk*: ‖θ − Ψ(Φ_lat(θ))‖_F² summed within a chunk and averaged over chunks. With one
   chunk this is Eq. 8 exactly; summing over all chunks instead would scale the gradient with the
   block size (8 M parameters for layer4) and diverge under the shared learning rate.
3. *What each loss trains.* Eq. 8 trains the decoupling maps only ("L_re further constrains the
   encoders and the decoder Ψ"): θ, the block input and the prototypes are constants there, so the
   warm-up leaves the framework on exactly the joint-training trajectory. In L_mod the maps are
   constants (Alg. 1 line 10 trains only the framework and DAP after E; Eq. 13 sends the auxiliary
   gradient to θ), so the decoupling maps are trained during the warm-up only. The prototypes P_d
   are targets (detached) in Eq. 8–10; ρ (stated "fixed") and α_d are detached weights.
4. *Block inputs are the model's own activations.* I_d^m and E_d^m(I_d^m) are read (forward hooks)
   from the training forward pass, not recomputed, so L_d^m costs no extra forward and its gradient
   flows, like any loss on an intermediate activation, into blocks 1..d (the paper never detaches).
   The auxiliary block runs on the same I_d^m, *detached*: Eq. 13 names one destination of its
   gradient, θ of its own block through J_{F_pdm}; this also spares a second backward pass into the
   earlier blocks.
5. *Cross-entropy after E*: the loop always adds CE (Eq. 2); after E the method adds L_mod. Alg. 1
   line 10 names only L_mod, but without CE nothing would train the fusion and classifier.
6. *Feature vectors for δ* (``depth_features``): ``pooled`` (default) compares the encoder's pooled
   depth-d feature (global average over space / tokens, then frames: ``pool_intermediate``), so a
   frame stack gives one vector per sample; ``flat`` compares the whole flattened block output
   (per sample, frames included). The paper says "feature vectors" without saying which.
7. *Prototype passes are in eval mode*: the frozen framework (Eq. 3) and Eq. 6 see K prototypes, too
   few for batch statistics; eval mode also leaves BatchNorm's running statistics untouched.
   Auxiliary, θ_g and AIM-label blocks run in train mode on *cloned* buffers, so they normalise by
   their own batch statistics like the original blocks, without moving the model's running stats.
8. *DAP*: K = number of classes, one prototype per class, of the input's per-sample shape (vector,
   C×H×W, or T×C×H×W), randomly initialised N(0, 1) (Alg. 1) from the method's generator on the
   first training step (the model does not record input shapes; see ``_ensure_dap``). Ψ_dap (never
   specified) is ``dap_decoder=affine``: an element-wise scale and shift initialised to identity —
   low capacity on purpose, since a full linear decoder could fit any K class means whatever the
   prototypes and would make L_r vacuous; ``identity`` is also offered. X̄^{m,k} are running class
   means of the training inputs, accumulated on the device from every training batch seen (on a
   fixed dataset, the exact class means after one epoch); classes not yet seen are left out of L_r.
   DAP has its own SGD (momentum 0.9, ``dap_lr``; torch.optim.SGD's update rule written as three
   foreach ops, without the optimizer's per-call overhead), stepped every training step of both
   phases; its momentum is in the method's state. ``dap_lr`` defaults to 0.1, ten times the
   framework's default rate (the paper gives one rate, for the models): Eq. 5 defines P_0 as an
   *argmin*, and at 0.01 the prototypes are far from it when modulation starts (synthetic default,
   epoch 3: L_r 2.23, and L_cls still 1.24 at epoch 6) while at 0.1 they track it (L_r 0.39 at epoch
   3; L_cls 0.71 at epoch 6). At 1.0 training diverges.
9. *AIM-label*: the classifier scores a depth-d output by finishing the forward pass through blocks
   d+1..D and taking the modality's uni-modal logits (``unimodal_logits``), with those later blocks
   and the classifier frozen (detached parameters) so that, as with DAP, L_d trains depth d. For an
   original block the rest of that pass is the model's own, so its s_d^m, and hence α_d, is the same
   at every depth (the uni-modal imbalance of the whole encoder); the auxiliary blocks' scores do
   differ by depth.
10. s_d^m, L_d^m are batch estimates of the expectations in Eq. 9–10 (ρ and α_d are per step).
11. *Auxiliary blocks on part of the batch* (``aux_fraction``, default 0.25; 1 is the literal reading).
   Ẽ_d^m and the θ_g blocks of Eq. 8 cost a second forward and backward of every depth block: read
   literally, AIM costs 2.4× a joint step on ResNet18 (measured, BENCHMARKS.md), while the paper
   reports costs comparable to other balancing methods, so its implementation cannot be doing that.
   With ``aux_fraction = f < 1`` the auxiliary (and θ_g) blocks see ⌈f·B⌉ samples drawn uniformly
   without replacement each step (one draw shared by all blocks and modalities, so inputs stay
   paired): s̃ and L̃ are unbiased estimates of the same expectations (Eq. 9–10) from fewer samples,
   at about f of that cost. The original blocks are always scored on the whole batch. On the
   synthetic default, f = 0.25 and f = 1 give the same accuracies within 0.002 (5 seeds).
12. *Each modality's prototypes are classified by its own share of the classifier* (``dap_cls``,
   default ``modality``). Eq. 3 writes L_cls = CE(Θ_M(P̃_0), Y): all modalities' prototypes through the
   framework *together* (``dap_cls=joint``). But §III-C defines each prototype (p_d^m)_k of modality m
   as "the optimal latent feature that would ultimately be classified into class k through the
   subsequent network layers" — a property of modality m's prototypes on their own. Under the
   joint reading the dominant modality's prototypes satisfy L_cls alone and the weak one's stay
   unanchored (measured: video's prototype scores near chance, 0.23–0.32 against 1/6 at the last
   depth), so s_d^m and L_d^m of the weak modality measure little. ``modality`` applies Eq. 3 to each
   modality's uni-modal logits (its logit component, OPM/OGM Eq. 2, or the zero-out rule) and averages
   over modalities. Measured on the synthetic default (5 seeds, BENCHMARKS.md): ``modality`` beats
   ``joint`` on video inside the model on every seed.

Traces (per epoch, means over steps, both phases): ``trace/alpha/<d>`` (α_d of Eq. 14, whether or
not DAM uses it), ``trace/s/<modality>/<d>``, ``trace/s_aux/<modality>/<d>`` (auxiliary blocks,
modulation epochs with PAM), ``trace/dap/cls`` and ``trace/dap/r`` (Eq. 3, 4).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mmtune.config import hp
from mmtune.data.base import Batch
from mmtune.engine.method import BalancingMethod, MethodConfig, StepContext
from mmtune.errors import ConfigError, Problem
from mmtune.models.multimodal import ModelOutput, MultimodalModel
from mmtune.engine.registry import register

__all__ = [
    "AIM",
    "AIMConfig",
    "DecouplingMaps",
    "coefficient_of_variation",
    "complementary_parameters",
    "dap_classification_loss",
    "dap_reconstruction_loss",
    "decoupled_parameters",
    "depth_loss",
    "latent_and_mask",
    "modulation_loss",
    "participation_weights",
    "prototype_logits",
    "reconstruction_loss",
    "score_and_loss",
]

# Largest literal (pdm_chunk=0) map we build: chunk × latent weights per map.
_LITERAL_LIMIT = 20_000_000


@dataclass(frozen=True)
class AIMConfig(MethodConfig):
    start_epoch: int = hp(3, low=1, doc="first epoch of modulation, 1-based: the paper's E + 1 (its E is 0-based, E = 0 "
                                        "modulates from the first epoch; Fig. 7); the epochs before it are the warm-up (Alg. 1)")
    pam: bool = hp(True, doc="parameter-adaptive modulation with auxiliary blocks (false: 'w/o PAM', Table III)")
    dam: bool = hp(True, doc="depth-adaptive modulation: weight L_d by α_d (false: α_d = 1, 'w/o DAM')")
    prototypes: str = hp("dap", choices=("dap", "label"),
                         doc="score blocks against DAP (Eq. 9–10) or through the classifier ('AIM-label', Table V)")
    depth_features: str = hp("pooled", choices=("pooled", "flat"),
                             doc="vectors compared by δ: pooled depth features or whole flattened block outputs")
    aux_fraction: float = hp(0.25, low=0.0, high=1.0, low_open=True,
                             doc="share of the batch the auxiliary and θ_g blocks see (1: all of it, the literal paper)")
    pdm_chunk: int = hp(256, low=0, doc="parameters per chunk of the decoupling maps (0: the whole block, the literal map)")
    pdm_latent: int = hp(16, low=1, doc="latent size of Φ_lat per chunk (the paper: 512 per layer)")
    dap_lr: float = hp(0.1, low=0.0, low_open=True, doc="learning rate of DAP's own SGD (momentum 0.9; reading 8)")
    dap_decoder: str = hp("affine", choices=("affine", "identity"), doc="Ψ_dap of Eq. 4: element-wise affine or identity")
    dap_cls: str = hp("modality", choices=("modality", "joint"),
                      doc="Eq. 3 on each modality's own logits of its prototypes (reading 12), or on the fused logits")


# ----------------------------------------------------------------------------------- equations


def prototype_logits(features: Tensor, prototypes: Tensor) -> Tensor:
    """The exponent of Eq. 9–10: −δ[feature_i, (p_d)_k], (..., B, C) × (..., K, C) → (..., B, K), δ Euclidean."""
    return -torch.cdist(features, prototypes)


def score_and_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 9 and 10 for P blocks at once: logits (P, B, K) → s (P,) = E[softmax_y], L (P,) = E[−log softmax_y]."""
    log_p = torch.log_softmax(logits, dim=-1)
    picked = log_p.gather(-1, labels.view(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(-1)
    return picked.exp().mean(-1), -picked.mean(-1)


def participation_weights(scores: Tensor, aux_scores: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Eq. 12: ρ_d^m = exp(−s_d^m) / Σ_m' [exp(−s_d^m') + exp(−s̃_d^m')] over (..., M) scores.

    Without auxiliary scores ('w/o PAM') the softmax runs over the M original blocks only.
    """
    if aux_scores is None:
        return torch.softmax(-scores, dim=-1), None
    rho = torch.softmax(-torch.cat([scores, aux_scores], dim=-1), dim=-1)
    m = scores.shape[-1]
    return rho[..., :m], rho[..., m:]


def depth_loss(losses: Tensor, rho: Tensor, aux_losses: Tensor | None = None, aux_rho: Tensor | None = None) -> Tensor:
    """Eq. 11: L_d = Σ_m ρ_d^m L_d^m + ρ̃_d^m L̃_d^m, over the last (modality) axis."""
    total = (rho * losses).sum(-1)
    if aux_losses is not None:
        total = total + (aux_rho * aux_losses).sum(-1)
    return total


def coefficient_of_variation(scores: Tensor, eps: float = 1e-12) -> Tensor:
    """Eq. 14: α_d = sqrt(1/M Σ_m (s_d^m − s̄_d)²) / s̄_d over the last (modality) axis."""
    mean = scores.mean(-1)
    return scores.var(-1, correction=0).sqrt() / mean.clamp_min(eps)


def modulation_loss(alpha: Tensor, depth_losses: Tensor) -> Tensor:
    """Eq. 15: L_mod = Σ_d α_d L_d."""
    return (alpha * depth_losses).sum()


class DecouplingMaps(NamedTuple):
    """The weights of Φ_lat, Φ_mask and Ψ of one block (Eq. 7)."""

    lat_weight: Tensor
    lat_bias: Tensor
    mask_weight: Tensor
    mask_bias: Tensor
    dec_weight: Tensor
    dec_bias: Tensor

    def detach(self) -> DecouplingMaps:
        return DecouplingMaps(*(t.detach() for t in self))


def latent_and_mask(theta: Tensor, maps: DecouplingMaps) -> tuple[Tensor, Tensor]:
    """Eq. 7, first half: θ_lat = Φ_lat(θ) and w = σ(Φ_mask(θ_lat)) for (n, chunk) parameter chunks."""
    theta_lat = F.linear(theta, maps.lat_weight, maps.lat_bias)
    return theta_lat, torch.sigmoid(F.linear(theta_lat, maps.mask_weight, maps.mask_bias))


def decoupled_parameters(theta: Tensor, maps: DecouplingMaps) -> Tensor:
    """Eq. 7: θ_b = Ψ(θ_lat ⊙ w), the under-optimised parameters that form the auxiliary block."""
    theta_lat, w = latent_and_mask(theta, maps)
    return F.linear(theta_lat * w, maps.dec_weight, maps.dec_bias)


def complementary_parameters(theta: Tensor, maps: DecouplingMaps) -> tuple[Tensor, Tensor]:
    """Eq. 8's branches: θ_g = Ψ(θ_lat ⊙ (1 − w)) and the reconstruction Ψ(θ_lat), decoded together."""
    theta_lat, w = latent_and_mask(theta, maps)
    decoded = F.linear(torch.stack([theta_lat * (1.0 - w), theta_lat]), maps.dec_weight, maps.dec_bias)
    return decoded[0], decoded[1]


def reconstruction_loss(theta: Tensor, reconstructed: Tensor, numel: int) -> Tensor:
    """Eq. 8's L_re = ‖θ − Ψ(Φ_lat(θ))‖_F² per chunk, averaged over chunks (reading 2).

    ``theta`` and ``reconstructed`` are (n, chunk); only the first ``numel`` values (the real
    parameters, not the zero padding of the last chunk) count.
    """
    residual = (theta.reshape(-1)[:numel] - reconstructed.reshape(-1)[:numel]).pow(2).sum()
    return residual / theta.shape[0]


def dap_classification_loss(logits: Tensor) -> Tensor:
    """Eq. 3: L_cls = CE(Θ_M(P̃_0), [0, …, K−1]) for the (K, K) logits of the K input prototypes;
    (..., K, K) logits (e.g. one (K, K) per modality) give the mean over the leading axes."""
    k = logits.shape[-1]
    targets = torch.arange(k, device=logits.device).repeat(logits.numel() // (k * k))
    return F.cross_entropy(logits.reshape(-1, k), targets)


def dap_reconstruction_loss(decoded: Sequence[Tensor], class_means: Sequence[Tensor], present: Sequence[Tensor]) -> Tensor:
    """Eq. 4: L_r = 1/(M·K) Σ_m Σ_k ‖Ψ_dap^m((p_0^m)_k) − X̄^{m,k}‖_F², over classes present (0/1 per k)."""
    m, k = len(decoded), decoded[0].shape[0]
    total = sum(((d - x).flatten(1).pow(2).sum(1) * p).sum() for d, x, p in zip(decoded, class_means, present, strict=True))
    return total / (m * k)


# ----------------------------------------------------------------------------------- modules


class _Decoupler(nn.Module):
    """Φ_lat, Φ_mask and Ψ of one depth block, applied chunk-wise to its flattened parameters."""

    def __init__(self, block: nn.Module, *, chunk: int, latent: int, where: str) -> None:
        super().__init__()
        named = list(block.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.numel = sum(self.sizes)
        self.chunk = self.numel if chunk == 0 else min(chunk, self.numel)
        self.num_chunks = -(-self.numel // self.chunk)
        width = min(latent, self.chunk)
        if chunk == 0 and self.chunk * width > _LITERAL_LIMIT:
            raise ConfigError([Problem("params.pdm_chunk", f"is 0 (one map over the whole block), but {where} has "
                                       f"{self.numel} parameters: Φ_lat and Ψ would need {self.chunk * width} weights "
                                       f"each. Use pdm_chunk > 0 (e.g. 256).")])
        self.encode = nn.Linear(self.chunk, width)  # Φ_lat
        self.mask = nn.Linear(width, width)  # Φ_mask
        self.decode = nn.Linear(width, self.chunk)  # Ψ
        q, _ = torch.linalg.qr(torch.randn(self.chunk, width))
        with torch.no_grad():
            self.encode.weight.copy_(q.T)
            self.decode.weight.copy_(q)
            for t in (self.encode.bias, self.decode.bias, self.mask.weight, self.mask.bias):
                t.zero_()

    def maps(self) -> DecouplingMaps:
        return DecouplingMaps(self.encode.weight, self.encode.bias, self.mask.weight, self.mask.bias,
                              self.decode.weight, self.decode.bias)

    def chunks(self, params: Sequence[Tensor]) -> Tensor:
        """θ flattened and cut into (num_chunks, chunk), the last chunk zero-padded (one copy)."""
        pad = self.num_chunks * self.chunk - self.numel
        flat = [p.reshape(-1) for p in params]
        if pad:
            flat.append(params[0].new_zeros(pad))
        return torch.cat(flat).view(self.num_chunks, self.chunk)

    def unchunk(self, chunks: Tensor) -> dict[str, Tensor]:
        """The block's parameter dict (name → tensor) from decoded chunks, for ``functional_call``."""
        flat = chunks.reshape(-1)[: self.numel]
        return {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.sizes), self.shapes, strict=True)}


class _Prototypes(nn.Module):
    """DAP of one modality: K input prototypes P̃_0^m, the decoder Ψ_dap^m and running class means."""

    def __init__(self, initial: Tensor, decoder: str) -> None:
        super().__init__()
        shape = initial.shape[1:]
        self.prototypes = nn.Parameter(initial.clone())
        self.affine = decoder == "affine"
        if self.affine:
            self.scale = nn.Parameter(initial.new_ones(shape))
            self.shift = nn.Parameter(initial.new_zeros(shape))
        self.register_buffer("class_sums", initial.new_zeros(initial.shape))
        self.register_buffer("class_counts", initial.new_zeros(initial.shape[0]))

    def decoded(self) -> Tensor:
        return self.prototypes * self.scale + self.shift if self.affine else self.prototypes

    def accumulate(self, x: Tensor, labels: Tensor) -> None:
        self.class_sums.index_add_(0, labels, x.to(self.class_sums.dtype))
        self.class_counts.index_add_(0, labels, torch.ones_like(labels, dtype=self.class_counts.dtype))

    def class_means(self) -> tuple[Tensor, Tensor]:
        counts = self.class_counts.clamp_min(1.0).view(-1, *([1] * (self.class_sums.dim() - 1)))
        return self.class_sums / counts, (self.class_counts > 0).to(self.class_sums.dtype)


class _Unimodal(nn.Module):
    """``model.unimodal_logits`` as a module's forward, so ``functional_call`` can freeze the classifier."""

    def __init__(self, model: MultimodalModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.model.unimodal_logits(features)


def _sample_rows(x: Tensor, subset: Tensor, n: int) -> Tensor:
    """The rows of the samples in ``subset`` from a block input of n samples, whose first axis may
    fold r = len(x) / n rows per sample, sample-major (frame stacks: B·T rows)."""
    r = x.shape[0] // n
    if r == 1:
        return x.index_select(0, subset)
    return x.index_select(0, (subset.unsqueeze(1) * r + torch.arange(r, device=subset.device)).reshape(-1))


@contextlib.contextmanager
def _eval_mode(modules: Sequence[nn.Module]) -> Iterator[None]:
    modes = [m.training for m in modules]
    for m in modules:
        m.training = False
    try:
        yield
    finally:
        for m, training in zip(modules, modes, strict=True):
            m.training = training


# ----------------------------------------------------------------------------------- strategy


@register
class AIM(BalancingMethod):
    name = "aim"
    Config = AIMConfig
    paper = "AIM — Shen, Chen, Zhang, Adaptive Intra-Network Modulation (reimplemented from the paper; no official code)"
    always_active = True  # warm-up before E, modulation from E (Alg. 1); ctx.modulating says which
    dap_momentum = 0.9

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._dap: nn.ModuleList | None = None  # built on the first step (input shapes), see _ensure_dap
        self._dap_params: list[nn.Parameter] = []
        self._dap_buffers: list[Tensor] = []  # DAP's SGD momentum
        self._dap_loss: Tensor | None = None
        self._capturing = False
        self._inverse: dict[tuple[int, ...], Tensor] = {}

    # -- set-up -----------------------------------------------------------------------------------
    def bind(self, model: MultimodalModel) -> None:
        cfg: AIMConfig = self.config
        if len(self.modalities) < 2:
            raise ConfigError([Problem("dataset.modalities", f"AIM needs two or more modalities, got {self.modalities}.")])
        blocks = [list(model.depth_blocks(m)) for m in self.modalities]
        depths = {m: len(b) for m, b in zip(self.modalities, blocks, strict=True)}
        if len(set(depths.values())) != 1:
            raise ConfigError([Problem("model", f"AIM needs the same number of depth blocks in every encoder "
                                       f"(§III-B), got {depths}. Match model.num_layers to the other encoders "
                                       "(resnet18 has 4).")])
        tokens = [m for m in self.modalities if getattr(model.encoders[m], "input_kind", "real") == "tokens"]
        if tokens and cfg.prototypes == "dap":
            raise ConfigError([Problem("params.prototypes", f"is 'dap', whose prototypes are synthesised in input space, "
                                       f"but {tokens} take token ids (bert). Use params.prototypes=label.")])
        self.model = model
        self._all_modules = list(model.modules())
        self.blocks = blocks
        self.depth = len(blocks[0])
        self.depth_names = [f"d{d + 1}" for d in range(self.depth)]
        self.encoders = [model.encoders[m] for m in self.modalities]
        self._order = [(i, d) for d in range(self.depth) for i in range(len(self.modalities))]  # (D, M) row-major
        self._shape = (self.depth, len(self.modalities))
        # Detached views share storage with the parameters, so they stay current through every
        # optimizer step and load_state_dict: built once, they freeze a block (or the classifier).
        self._params = [[[p for _, p in b.named_parameters()] for b in bs] for bs in blocks]
        self._frozen = [[{n: p.detach() for n, p in b.named_parameters()} for b in bs] for bs in blocks]
        self._tied = [[len(list(b.named_parameters(remove_duplicate=False))) != len(list(b.named_parameters()))
                       for b in bs] for bs in blocks]
        self._unimodal = _Unimodal(model)
        self._frozen_classifier = {f"model.fusion.{n}": p.detach() for n, p in model.fusion.named_parameters()}
        self._captured: list[list[tuple[Tensor, Tensor] | None]] = [[None] * self.depth for _ in self.modalities]
        self._hooks = [b.register_forward_hook(self._capture_hook(i, d))
                       for i, bs in enumerate(blocks) for d, b in enumerate(bs)]
        self._decouplers: nn.ModuleList | None = None
        if cfg.pam:
            self._decouplers = nn.ModuleList(
                nn.ModuleList(_Decoupler(b, chunk=cfg.pdm_chunk, latent=cfg.pdm_latent, where=f"block d{d + 1} of '{m}'")
                              for d, b in enumerate(bs))
                for m, bs in zip(self.modalities, blocks, strict=True)
            ).to(self.device)
            self._fixed_maps = [[dec.maps().detach() for dec in row] for row in self._decouplers]

    def extra_parameters(self) -> list[nn.Parameter]:
        # The decoupling maps train jointly with the framework (Alg. 1 line 2); DAP has its own SGD.
        return list(self._decouplers.parameters()) if self._decouplers is not None else []

    def _ensure_dap(self, inputs: Mapping[str, Tensor], generator: torch.Generator) -> None:
        """Build DAP for the inputs' per-sample shapes. Here, not in bind: the model does not know them."""
        if self._dap is not None or self.config.prototypes != "dap":
            return
        k = self.num_classes
        self._build_dap([torch.randn((k, *inputs[m].shape[1:]), generator=generator, device=self.device)
                         for m in self.modalities])

    def _build_dap(self, initial: Sequence[Tensor]) -> None:
        self._dap = nn.ModuleList(_Prototypes(t, self.config.dap_decoder) for t in initial)
        self._dap_params = list(self._dap.parameters())
        self._dap_buffers = [torch.zeros_like(p) for p in self._dap_params]

    # -- capturing the blocks' inputs and outputs ---------------------------------------------------
    def _capture_hook(self, i: int, d: int):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
            if self._capturing:
                self._captured[i][d] = tuple(t.float() if t.is_floating_point() else t for t in (args[0], output))  # fp32 under autocast

        return hook

    def _take_captured(self) -> list[list[tuple[Tensor, Tensor]]]:
        captured = self._captured
        self._captured = [[None] * self.depth for _ in self.modalities]
        if any(c is None for row in captured for c in row):
            raise RuntimeError("AIM did not see every depth block's forward pass; the model must run its "
                               "encoders block by block (Encoder.forward_blocks)")
        return captured  # type: ignore[return-value]

    # -- phases -------------------------------------------------------------------------------------
    def _phase(self, ctx: StepContext) -> str | None:
        if ctx.modulating:
            return "modulate"
        return "warmup" if ctx.epoch < self.config.start_epoch else None

    def begin_epoch(self, ctx: StepContext) -> None:
        super().begin_epoch(ctx)
        self._capturing = False
        self._dap_loss = None

    def before_forward(self, batch: Batch, ctx: StepContext) -> Batch:
        if self._phase(ctx) is not None:
            self._ensure_dap(batch.inputs, ctx.generator)
            self._capturing = True
        return batch

    # -- scoring blocks (Eq. 9–10) ------------------------------------------------------------------
    def _features(self, i: int, d: int, h: Tensor, n: int) -> Tensor:
        if self.config.depth_features == "flat":
            return h.reshape(n, -1)
        return self.encoders[i].pool_intermediate(h, d + 1)

    def _run_block(self, i: int, d: int, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """Block d of modality i with other parameters; its buffers are copies, so BN stats stay put."""
        block = self.blocks[i][d]
        buffers = {n: b.clone() for n, b in block.named_buffers()}
        # Re-tying costs a walk over the block per call; only blocks with shared tensors need it.
        return functional_call(block, (dict(params), buffers), (x,), tie_weights=self._tied[i][d])

    def _label_logits(self, i: int, d: int, h: Tensor, n: int) -> Tensor:
        """AIM-label: finish the pass through the frozen later blocks, then the frozen classifier's
        uni-modal logits of modality i (other modalities' features zero; exact for additive fusions)."""
        for j in range(d + 1, self.depth):
            h = self._run_block(i, j, self._frozen[i][j], h)
        feature = self.encoders[i].pool(h)
        features = {m: feature if k == i else feature.new_zeros(n, self.model.fusion.feature_dims[m])
                    for k, m in enumerate(self.modalities)}
        return functional_call(self._unimodal, self._frozen_classifier, (features,), tie_weights=False)[self.modalities[i]]

    def _pair_logits(self, pairs: Sequence[tuple[int, int, Tensor]], n: int, targets: list[list[Tensor]] | None) -> Tensor:
        """(P, B, K) logits of P depth outputs (modality i, depth d, h): −δ to P_d (batched per
        feature width) with DAP, or the classifier's logits with labels."""
        if targets is None:
            return torch.stack([self._label_logits(i, d, h, n) for i, d, h in pairs])
        features = [self._features(i, d, h, n) for i, d, h in pairs]
        groups: dict[int, list[int]] = {}
        for j, f in enumerate(features):
            groups.setdefault(f.shape[-1], []).append(j)
        parts, order = [], []
        for idx in groups.values():
            parts.append(prototype_logits(torch.stack([features[j] for j in idx]),
                                          torch.stack([targets[pairs[j][0]][pairs[j][1]] for j in idx])))
            order.extend(idx)
        if len(parts) == 1:
            return parts[0]
        key = tuple(order)
        if key not in self._inverse:  # built once per layout: no host-to-device copy per step
            self._inverse[key] = torch.tensor(sorted(range(len(order)), key=order.__getitem__), device=self.device)
        return torch.cat(parts).index_select(0, self._inverse[key])

    def _prototype_pass(self) -> list[list[Tensor]]:
        """Eq. 3–6: the prototypes through the frozen framework. Returns P_d features (targets) and
        keeps L_cls + L_r for the DAP update after backward."""
        assert self._dap is not None
        k = self.num_classes
        self._capturing = True
        try:
            with _eval_mode(self._all_modules):
                out = self.model({m: dap.prototypes for m, dap in zip(self.modalities, self._dap, strict=True)})
                # joint: Θ_M(P̃_0) of Eq. 3; modality: each modality's share of it (M, K, K), reading 12.
                logits = out.logits if self.config.dap_cls == "joint" else self.model.stacked_unimodal_logits(out.features)
        finally:
            self._capturing = False
        captured = self._take_captured()
        means = [dap.class_means() for dap in self._dap]
        l_cls = dap_classification_loss(logits)
        l_r = dap_reconstruction_loss([dap.decoded() for dap in self._dap], [x for x, _ in means], [p for _, p in means])
        self._dap_loss = l_cls + l_r
        self.traces.add_many("dap", torch.stack([l_cls, l_r]).detach(), ["cls", "r"])
        return [[self._features(i, d, h.detach(), k) for d, (_, h) in enumerate(row)] for i, row in enumerate(captured)]

    def _auxiliary_output(self, i: int, d: int, block_input: Tensor) -> Tensor:
        """Ẽ_d^m(I_d^m): block d with θ_b = F_pdm(θ) (Eq. 7) on the live θ. The maps are constants and
        the input is detached, so backward sends ρ̃ ∂L̃/∂θ_b to θ through J_{F_pdm}^T: Eq. 13, exactly."""
        dec = self._decouplers[i][d]
        theta_b = decoupled_parameters(dec.chunks(self._params[i][d]), self._fixed_maps[i][d])
        return self._run_block(i, d, dec.unchunk(theta_b), block_input.detach())

    def _trace_scores(self, scores: Tensor, aux_scores: Tensor | None) -> Tensor:
        """Trace s (D, M) and α_d; return α (Eq. 14)."""
        alpha = coefficient_of_variation(scores)
        names = [f"{m}/{d}" for m in self.modalities for d in self.depth_names]
        self.traces.add_many("alpha", alpha, self.depth_names)
        self.traces.add_many("s", scores.T.reshape(-1), names)
        if aux_scores is not None:
            self.traces.add_many("s_aux", aux_scores.T.reshape(-1), names)
        return alpha

    # -- per-batch hooks ----------------------------------------------------------------------------
    def extra_loss(self, out: ModelOutput, batch: Batch, ctx: StepContext) -> Tensor | None:
        phase = self._phase(ctx)
        if phase is None:
            return None
        self._capturing = False
        captured = self._take_captured()
        cfg: AIMConfig = self.config
        labels, n = batch.labels, len(batch)
        targets = None
        if cfg.prototypes == "dap":
            for m, dap in zip(self.modalities, self._dap, strict=True):
                dap.accumulate(batch.inputs[m], labels)
            targets = self._prototype_pass()
        # The original blocks' outputs E_d^m(I_d^m) come from the model's own forward pass.
        pairs = [(i, d, captured[i][d][1]) for i, d in self._order]
        if phase == "warmup":
            return self._warmup_loss(captured, pairs, labels, n, targets, ctx)
        subset, n_sub = self._subset(n, ctx)
        if cfg.pam and subset is None:  # originals and auxiliaries on the same samples: one scoring pass
            pairs += [(i, d, self._auxiliary_output(i, d, captured[i][d][0])) for i, d in self._order]
        scores, losses = score_and_loss(self._pair_logits(pairs, n, targets), labels)  # Eq. 9–10
        if cfg.pam and subset is not None:
            aux = [(i, d, self._auxiliary_output(i, d, _sample_rows(captured[i][d][0], subset, n))) for i, d in self._order]
            aux_scores, aux_losses = score_and_loss(self._pair_logits(aux, n_sub, targets), labels.index_select(0, subset))
            scores, losses = torch.cat([scores, aux_scores]), torch.cat([losses, aux_losses])
        p = len(self._order)
        s, l_orig = scores[:p].detach().view(self._shape), losses[:p].view(self._shape)
        s_aux = scores[p:].detach().view(self._shape) if cfg.pam else None
        l_aux = losses[p:].view(self._shape) if cfg.pam else None
        alpha = self._trace_scores(s, s_aux)  # Eq. 14
        rho, aux_rho = participation_weights(s, s_aux)  # Eq. 12, fixed weights
        weights = alpha if cfg.dam else torch.ones_like(alpha)
        return modulation_loss(weights, depth_loss(l_orig, rho, l_aux, aux_rho))  # Eq. 11, 15

    def _warmup_loss(self, captured, originals, labels: Tensor, n: int, targets, ctx: StepContext) -> Tensor | None:
        """Alg. 1 line 2: L_pdm (Eq. 8) for the decoupling maps; the framework gets only Eq. 2."""
        with torch.no_grad():
            scores, _ = score_and_loss(self._pair_logits(originals, n, targets), labels)
        self._trace_scores(scores.view(self._shape), None)
        if self._decouplers is None:
            return None
        subset, n_sub = self._subset(n, ctx)
        if subset is not None:
            labels = labels.index_select(0, subset)
        branches, l_re = [], []
        for i, d in self._order:
            dec = self._decouplers[i][d]
            theta = dec.chunks(list(self._frozen[i][d].values()))  # θ is data here: Eq. 8 trains the maps
            theta_g, reconstructed = complementary_parameters(theta, dec.maps())
            l_re.append(reconstruction_loss(theta, reconstructed, dec.numel))
            x = captured[i][d][0].detach()
            branches.append((i, d, self._run_block(i, d, dec.unchunk(theta_g), x if subset is None else _sample_rows(x, subset, n))))
        _, l_g = score_and_loss(self._pair_logits(branches, n_sub, targets), labels)
        return l_g.sum() + torch.stack(l_re).sum()

    def _subset(self, n: int, ctx: StepContext) -> tuple[Tensor | None, int]:
        """The samples the auxiliary / θ_g blocks see (reading 11): a uniform draw of
        ⌈aux_fraction·B⌉ without replacement from the method's generator, or None for all B."""
        size = math.ceil(self.config.aux_fraction * n)
        if size >= n:
            return None, n
        return torch.randperm(n, generator=ctx.generator, device=self.device)[:size], size

    def modulate_gradients(self, model: MultimodalModel, out: ModelOutput, batch: Batch, ctx: StepContext) -> None:
        # Eq. 5 with the framework frozen: autograd.grad fills no framework .grad, and only DAP moves.
        loss, self._dap_loss = self._dap_loss, None
        if loss is None:
            return
        grads = torch.autograd.grad(loss, self._dap_params)
        with torch.no_grad():  # SGD with momentum (torch.optim.SGD's rule), as three foreach ops
            torch._foreach_mul_(self._dap_buffers, self.dap_momentum)
            torch._foreach_add_(self._dap_buffers, grads)
            torch._foreach_add_(self._dap_params, self._dap_buffers, alpha=-self.config.dap_lr)

    # -- checkpointing ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # The Trial saves the model and the main optimizer (whose state covers the decoupling maps'
        # momentum); the values of the method's own modules and DAP's momentum are saved here.
        return {
            "decouplers": self._decouplers.state_dict() if self._decouplers is not None else None,
            "dap": self._dap.state_dict() if self._dap is not None else None,
            "dap_momentum": list(self._dap_buffers) if self._dap is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if (state["decouplers"] is None) != (self._decouplers is None):
            raise ValueError("AIM checkpoint and config disagree on pam")
        if self._decouplers is not None:
            self._decouplers.load_state_dict(state["decouplers"])
        if state["dap"] is None:  # saved before the first training step
            self._dap, self._dap_params, self._dap_buffers = None, [], []
            return
        if self._dap is None:
            k = self.num_classes
            self._build_dap([torch.zeros((k, *state["dap"][f"{i}.prototypes"].shape[1:]), device=self.device)
                             for i in range(len(self.modalities))])
        self._dap.load_state_dict(state["dap"])
        with torch.no_grad():
            torch._foreach_copy_(self._dap_buffers, [b.to(self.device) for b in state["dap_momentum"]])
