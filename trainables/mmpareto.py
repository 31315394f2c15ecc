"""MMPareto: Pareto integration of the multimodal and unimodal gradients, with the magnitude rule.

Paper: Wei, Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance", ICML 2024,
arXiv:2405.17730. Official code: github.com/GeWu-Lab/MMPareto_ICML2024 (read at a339db3;
``code/MMPareto.py``, ``code/min_norm_solvers.py``, ``code/uniform_baseline.py``; "the code" below);
re-implemented in BalanceBenchmark (GeWu-Lab/BalanceBenchmark at 4c1482f, ``balancemm/trainer/MMPareto_trainer.py``).

Sources. Only the paper's abstract could be read here (no copy of its body was reachable), so no
equation numbers are cited. The rule is the abstract's ("a final gradient with direction that is
common to all learning objectives and enhanced magnitude"), spelled out as below and checked line by
line against the official code, whose departures are listed further down.

The setting (the paper's "multitask-like" framework, the code's ``uniform_baseline.py``): besides the
multimodal loss L_mm = CE(fused logits, y), each modality m has a unimodal loss L_u^m = CE(z_m(φ^m), y)
of its own classifier on its encoder feature φ^m, and L = L_mm + Σ_m L_u^m. The parameters θ^m of
encoder m receive two gradients, g_mm^m = ∇_θ^m L_mm and g_u^m = ∇_θ^m L_u^m (no other unimodal loss
reaches encoder m), which may conflict. For each encoder, with g1 = g_mm^m, g2 = g_u^m:

1. cos(g1, g2) ≥ 0 (no conflict): uniform weights α1 = α2 = 1/2.
2. cos(g1, g2) < 0 (conflict): the Pareto (MGDA) weights, the min-norm point of the convex hull,
   α1 = argmin_{α∈[0,1]} ‖α·g1 + (1−α)·g2‖² = clip((‖g2‖² − ⟨g1,g2⟩) / ‖g1 − g2‖², 0, 1), α2 = 1 − α1.
3. The integrated direction h = 2·(α1·g1 + α2·g2) (weights normalised to the number of objectives, 2,
   so that the no-conflict case is exactly the summed gradient g1 + g2 of the uniform baseline).
4. The magnitude rule: the final gradient is h rescaled to the magnitude of the plain sum,
   g^m = ‖g1 + g2‖ / ‖h‖ · h. In a conflict ‖h‖ ≤ ‖g1 + g2‖ (h/2 is the hull's min-norm point, the sum/2
   lies in the hull), so the rule never shrinks the update below the uniform baseline's, which the
   paper argues keeps the SGD noise, and so the generalisation, of the summed objective.

Every other parameter (the fusion head, the unimodal classifiers, anything shared) takes the plain
gradient of L, as the code (its ``head`` parameters are skipped by the integration).

Equation → function:
* the inner products ‖g1‖², ‖g2‖², ⟨g1,g2⟩ of one encoder, the whole encoder as one vector (as the
  code's ``concat``): :func:`encoder_gram`; per parameter tensor (the code's rescale): :func:`gradient_gram`.
* cos(g1, g2): :func:`gradient_cosine`.
* step 2's closed form (MGDA with two objectives): :func:`pareto_weight`.
* steps 1–2, and the ablations' uniform / always-Pareto rules: :func:`integration_weights`.
* ‖h‖² and ‖g1 + g2‖² from the inner products: :func:`integrated_norm_sq`, :func:`sum_norm_sq`.
* step 4 and the code's per-tensor variant: :func:`magnitude_scale`.
* steps 3–4 as per-tensor coefficients (g^m_p = c1_p·g1_p + c2_p·g2_p): :func:`encoder_coefficients`.
* the whole rule for one encoder, on lists of gradient tensors: :func:`mmpareto_gradients`.
* L = L_mm + Σ_m L_u^m and g_u^m: :meth:`MMPareto.extra_loss`; the integration:
  :meth:`MMPareto.modulate_gradients`.

Any number M ≥ 1 of modalities: each encoder has its own pair (L_mm, L_u^m), so the rule is applied
per encoder; every scalar function above works elementwise on (M,) tensors.

How it runs (one extra backward through the encoders, no extra forward). ``extra_loss`` computes
the unimodal losses twice from the same features: once attached, for ``torch.autograd.grad`` of
Σ_m L_u^m with respect to the encoder parameters (retain_graph: g_u^m for every m in one pass), and
once on detached features, which is what it returns, so the loop's backward gives the heads their
L_u gradient but the encoders only g_mm^m (exactly, no subtraction). ``modulate_gradients`` then
integrates per encoder. The code spends three extra backward passes (one per loss) on the same.

Interpretations (our reading where the paper, as far as we could check it, is silent):
* Unimodal classifier z_m (``heads``): default ``model``, ``model.modality_logits`` — each modality's
  own head under ``late``/``sum`` fusion, the fused head's exact column split W^m·φ^m + b/M under
  ``concat``, the zero-out rule under ``film``/``gated``; so with ``concat`` L_u^m also trains the
  fused head's block of modality m. ``separate``: a linear head per modality owned by the method, as
  the code's ``head_audio``/``head_video`` (a classifier independent of the fused head; trained with
  the model's optimizer and checkpointed with the method; it is not what ``val_acc/<m>`` reports).
* The conflict test is cos ≥ 0 → uniform (the brief's reading of the paper); a zero gradient has
  cosine 0 here and so takes the uniform weights. When g1 = g2 (‖g1 − g2‖ = 0) every α is optimal;
  α1 = 1/2.
* "Multimodal gradient" under composition: whatever the loop's loss puts on encoder m (L_mm plus any
  other part's extra loss), after the parts written before ``mmpareto`` in ``a+b`` modulated it.
* The window: outside ``start_epoch``..``end_epoch`` there are no unimodal losses (joint training);
  BalanceBenchmark's ``modulation_starts``/``modulation_ends``.
* All computed on the device with no host sync: the branch is a ``torch.where``.

Where the official code departs from the paper, as hyperparameters:
* ``grad_scale`` — the code multiplies every integrated encoder gradient by a constant γ = 1.5
  (hard-coded; BalanceBenchmark's ``alpha: 1.5``). The published abstract promises an *enhanced*
  magnitude (the withdrawn ICLR-2024 version said *preserved*): with γ = 1 a step without conflict is
  exactly g1 + g2, so γ > 1 may well belong to the published method — the paper's body could not be
  read to settle it. Default 1.0 (magnitude preserved: the smaller claim); γ = 1.5 is the code's, and
  ``search_spaces/mmpareto_ablation.yaml`` runs both.
* ``magnitude: code`` — the code rescales *per parameter tensor*, and only upwards: with the Pareto
  weights found on the whole encoder, each tensor p gets max(1, ‖g1_p + g2_p‖ / ‖h_p‖)·h_p. The paper
  rescales the whole encoder's h to ‖g1 + g2‖ (``paper``, default; that ratio is always ≥ 1).
  ``none`` drops the rule (the ablation "w/o magnitude": h itself).
* ``heads: separate`` — the code's independent unimodal heads (see above).
* Not offered, with no effect or only on measure-zero events: the code tests ``cos > 0`` (ours ≥ 0:
  only an exactly zero cosine differs); its two-objective solver returns α1 = 0.999 / 0.001 instead of
  1 / 0 at the hull's ends (reached only when ⟨g1,g2⟩ > 0, i.e. never in MMPareto's conflict branch,
  only with ``integration: pareto``); its dot products count every tensor twice (the gradient dict
  also holds the ``concat`` vector), which leaves α unchanged.
* BalanceBenchmark's trainer is not followed where it breaks: in the conflict branch it assigns the
  solver's result to the loop variable (``modality, min_norm = …``) so the weights stay [0, 0], h = 0
  and the rescale divides by zero (NaN gradients); its per-loss ``backward`` calls accumulate into
  ``.grad`` without zeroing, so its "multimodal" and "unimodal" gradients are running sums; it matches
  parameters to modalities by substring. Its γ (``alpha``) is ``grad_scale``.

Ablations (``integration``): ``mmpareto`` (default: steps 1–4), ``pareto`` (the conventional Pareto
integration: MGDA weights on every step, conflict or not; with ``magnitude: none`` and
``grad_scale: 0.5`` it is the textbook min-norm vector α1·g1 + α2·g2, Σα = 1, that the paper finds
worse than the uniform baseline), ``uniform`` (always 1/2, 1/2: the uniform baseline, L summed).

Traces (means over the epoch's modulated steps, per encoder):
* ``trace/cos/<m>`` — cos(g_mm^m, g_u^m); ``trace/conflict/<m>`` — the share of steps with cos < 0.
* ``trace/pareto_weight/<m>`` — α1, the weight on the multimodal gradient (1/2 on uniform steps).
* ``trace/pareto_norm/<m>`` — ‖h‖ / ‖g1 + g2‖ (≤ 1 in a conflict: how much the Pareto step shrinks).
* ``trace/magnitude_ratio/<m>`` — ‖final gradient‖ / ‖g1 + g2‖ (``paper``: grad_scale exactly).
* ``trace/norm_mm/<m>``, ``trace/norm_uni/<m>`` — ‖g_mm^m‖ and ‖g_u^m‖ (the paper's observation: the
  unimodal gradient is the larger); ``trace/uni_loss/<m>`` — L_u^m.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmtune.config import hp
from mmtune.data.base import Batch
from mmtune.engine.method import BalancingMethod, MethodConfig, StepContext
from mmtune.engine.registry import register
from mmtune.models.multimodal import ModelOutput, MultimodalModel

__all__ = [
    "MMPareto", "MMParetoConfig", "gradient_gram", "encoder_gram", "gradient_cosine", "pareto_weight",
    "integration_weights", "integrated_norm_sq", "sum_norm_sq", "magnitude_scale", "encoder_coefficients",
    "mmpareto_gradients",
]

INTEGRATIONS = ("mmpareto", "pareto", "uniform")
MAGNITUDES = ("paper", "code", "none")


@dataclass(frozen=True)
class MMParetoConfig(MethodConfig):
    integration: str = hp("mmpareto", choices=INTEGRATIONS,
                          doc="1/2-1/2 unless the gradients conflict, then Pareto (mmpareto); Pareto always; 1/2-1/2 always")
    magnitude: str = hp("paper", choices=MAGNITUDES,
                        doc="rescale the encoder's integrated gradient to ‖g_mm + g_u‖ (paper), per tensor, only up (code), or not")
    grad_scale: float = hp(1.0, low=0.0, low_open=True,
                           doc="constant factor γ on the integrated encoder gradients (1: magnitude preserved; official code 1.5)")
    heads: str = hp("model", choices=("model", "separate"),
                    doc="unimodal classifier: model.modality_logits (model) or a linear head per modality (code)")


# ----------------------------------------------------------------------------- pure functions

def gradient_gram(g_mm: Sequence[Tensor | None], g_uni: Sequence[Tensor | None]) -> Tensor:
    """(T, 3): for each of an encoder's T parameter tensors, [⟨g1,g1⟩, ⟨g2,g2⟩, ⟨g1,g2⟩] with g1 the
    multimodal and g2 the unimodal gradient of that tensor; None is a zero gradient. Summed over the
    rows: the whole encoder as one vector."""
    rows = []
    for a, b in zip(g_mm, g_uni, strict=True):
        ref = a if a is not None else b
        if ref is None:
            raise ValueError("gradient_gram: a tensor with neither gradient; leave it out")
        x = a.reshape(-1) if a is not None else ref.new_zeros(ref.numel())
        y = b.reshape(-1) if b is not None else ref.new_zeros(ref.numel())
        rows.append(torch.stack((torch.dot(x, x), torch.dot(y, y), torch.dot(x, y))))
    if not rows:
        return torch.zeros(0, 3)
    return torch.stack(rows)


def encoder_gram(g_mm: Sequence[Tensor], g_uni: Sequence[Tensor]) -> Tensor:
    """(3,): [‖g1‖², ‖g2‖², ⟨g1,g2⟩] of a whole encoder (its tensors concatenated), in one matmul;
    equals ``gradient_gram(g_mm, g_uni).sum(0)``. Both lists hold a tensor for every parameter."""
    g = torch.stack((torch.cat([a.reshape(-1) for a in g_mm]), torch.cat([b.reshape(-1) for b in g_uni])))
    gram = g @ g.T
    return torch.stack((gram[0, 0], gram[1, 1], gram[0, 1]))


def _quadratic(coeff: Tensor, gram: Tensor) -> Tensor:
    """‖c1·g1 + c2·g2‖² per row, from (…, 2) coefficients and (…, 3) inner products; never negative."""
    c1, c2 = coeff[..., 0], coeff[..., 1]
    return (c1 * c1 * gram[..., 0] + c2 * c2 * gram[..., 1] + 2.0 * c1 * c2 * gram[..., 2]).clamp_min(0.0)


def gradient_cosine(aa: Tensor, bb: Tensor, ab: Tensor) -> Tensor:
    """cos(g1, g2) = ⟨g1,g2⟩ / (‖g1‖·‖g2‖) from the inner products; 0 where either gradient is zero."""
    denom = (aa * bb).sqrt()
    return torch.where(denom > 0, ab / denom.clamp_min(torch.finfo(denom.dtype).tiny), torch.zeros_like(ab))


def pareto_weight(aa: Tensor, bb: Tensor, ab: Tensor) -> Tensor:
    """MGDA with two objectives in closed form: the weight α1 ∈ [0, 1] on g1 of the min-norm point
    α1·g1 + (1 − α1)·g2 of their convex hull, α1 = clip((‖g2‖² − ⟨g1,g2⟩) / ‖g1 − g2‖², 0, 1).

    ‖g1 − g2‖² = 0 (equal gradients: every α is optimal) gives 1/2. Elementwise over any shape.
    """
    denom = aa + bb - 2.0 * ab
    alpha = (bb - ab) / denom.clamp_min(torch.finfo(denom.dtype).tiny)
    return torch.where(denom > 0, alpha.clamp(0.0, 1.0), torch.full_like(alpha, 0.5))


def integration_weights(aa: Tensor, bb: Tensor, ab: Tensor, integration: str = "mmpareto") -> Tensor:
    """(..., 2): the weights (α1 on the multimodal, α2 on the unimodal gradient), α1 + α2 = 1.

    ``mmpareto``: 1/2, 1/2 where cos ≥ 0, the Pareto weights where the gradients conflict;
    ``pareto``: the Pareto weights everywhere (conventional Pareto integration); ``uniform``: 1/2, 1/2.
    """
    half = torch.full_like(ab, 0.5)
    if integration == "uniform":
        alpha = half
    elif integration == "pareto":
        alpha = pareto_weight(aa, bb, ab)
    elif integration == "mmpareto":
        alpha = torch.where(ab >= 0, half, pareto_weight(aa, bb, ab))  # cos ≥ 0 ⇔ ⟨g1,g2⟩ ≥ 0
    else:
        raise ValueError(f"integration must be one of {INTEGRATIONS}, got {integration!r}")
    return torch.stack((alpha, 1.0 - alpha), dim=-1)


def integrated_norm_sq(aa: Tensor, bb: Tensor, ab: Tensor, weights: Tensor) -> Tensor:
    """‖h‖² for h = 2·(α1·g1 + α2·g2): 4·(α1²‖g1‖² + 2α1α2⟨g1,g2⟩ + α2²‖g2‖²), never negative."""
    a1, a2 = weights[..., 0], weights[..., 1]
    return (4.0 * (a1 * a1 * aa + 2.0 * a1 * a2 * ab + a2 * a2 * bb)).clamp_min(0.0)


def sum_norm_sq(aa: Tensor, bb: Tensor, ab: Tensor) -> Tensor:
    """‖g1 + g2‖², the uniform baseline's squared magnitude, never negative."""
    return (aa + bb + 2.0 * ab).clamp_min(0.0)


def magnitude_scale(sum_sq: Tensor, h_sq: Tensor, magnitude: str = "paper") -> Tensor:
    """The factor on h: ‖g1 + g2‖ / ‖h‖ (``paper``), max(1, that) (``code``), 1 (``none``); 1 where h = 0."""
    if magnitude == "none":
        return torch.ones_like(h_sq)
    ratio = (sum_sq / h_sq.clamp_min(torch.finfo(h_sq.dtype).tiny)).sqrt()
    ratio = torch.where(h_sq > 0, ratio, torch.ones_like(ratio))
    if magnitude == "paper":
        return ratio
    if magnitude == "code":
        return ratio.clamp_min(1.0)
    raise ValueError(f"magnitude must be one of {MAGNITUDES}, got {magnitude!r}")


def encoder_coefficients(gram: Tensor, weights: Tensor, *, magnitude: str = "paper", grad_scale: float = 1.0) -> Tensor:
    """(T, 2): per tensor p of one encoder the coefficients (c1_p, c2_p) of its final gradient
    c1_p·g1_p + c2_p·g2_p, given its (T, 3) :func:`gradient_gram` and the encoder's weights (2,).

    h = 2·(α1·g1 + α2·g2); ``paper`` scales every tensor by the whole encoder's ‖g1 + g2‖ / ‖h‖, ``code``
    each tensor by its own max(1, ‖g1_p + g2_p‖ / ‖h_p‖), ``none`` by 1; then all by ``grad_scale``.
    """
    base = 2.0 * weights  # h's coefficients
    if magnitude in ("paper", "none"):
        total = gram.sum(dim=0)
        scale = magnitude_scale(sum_norm_sq(*total), integrated_norm_sq(*total, weights), magnitude)
        scale = scale.expand(gram.shape[0])
    elif magnitude == "code":
        aa, bb, ab = gram.unbind(-1)
        scale = magnitude_scale(sum_norm_sq(aa, bb, ab), integrated_norm_sq(aa, bb, ab, weights.expand(gram.shape[0], 2)), "code")
    else:
        raise ValueError(f"magnitude must be one of {MAGNITUDES}, got {magnitude!r}")
    return grad_scale * scale.unsqueeze(-1) * base


def mmpareto_gradients(g_mm: Sequence[Tensor], g_uni: Sequence[Tensor], *, integration: str = "mmpareto",
                       magnitude: str = "paper", grad_scale: float = 1.0) -> list[Tensor]:
    """The whole rule for one encoder: its final gradient tensors from its multimodal and unimodal ones."""
    gram = gradient_gram(g_mm, g_uni)
    weights = integration_weights(*gram.sum(dim=0), integration)
    coeff = encoder_coefficients(gram, weights, magnitude=magnitude, grad_scale=grad_scale)
    return [c[0] * a + c[1] * b for a, b, c in zip(g_mm, g_uni, coeff, strict=True)]


# ----------------------------------------------------------------------------- the strategy

@register
class MMPareto(BalancingMethod):
    name = "mmpareto"
    Config = MMParetoConfig
    paper = "MMPareto — Wei & Hu, ICML 2024, arXiv:2405.17730"
    # Nothing persists between steps except, with heads=separate, the heads' weights (state_dict below).

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.model: MultimodalModel | None = None
        self._heads: nn.ModuleDict | None = None
        self._params: dict[str, list[nn.Parameter]] = {}
        self._g_uni: dict[str, list[Tensor | None]] | None = None

    def bind(self, model: MultimodalModel) -> None:
        self.model = model
        groups = model.modality_parameters(heads=False)  # the encoders: what the rule integrates
        self._params = {m: [p for p in groups[m] if p.requires_grad] for m in self.modalities}
        if self.config.heads == "separate":
            dims = model.fusion.feature_dims
            self._heads = nn.ModuleDict({m: nn.Linear(dims[m], self.num_classes) for m in self.modalities}).to(self.device)

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self._heads.parameters()) if self._heads is not None else []

    def _unimodal_logits(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        if self._heads is not None:
            return {m: self._heads[m](features[m]) for m in self.modalities}
        return self.model.modality_logits(features)

    def _unimodal_losses(self, features: dict[str, Tensor], labels: Tensor) -> Tensor:
        logits = self._unimodal_logits(features)
        return torch.stack([F.cross_entropy(logits[m], labels) for m in self.modalities])

    def extra_loss(self, out: ModelOutput, batch: Batch, ctx: StepContext) -> Tensor:
        # g_u^m for every encoder in one backward of Σ_m L_u^m (L_u^m reaches encoder m only).
        attached = self._unimodal_losses(out.features, batch.labels)
        flat = [p for m in self.modalities for p in self._params[m]]
        grads = (torch.autograd.grad(attached.sum(), flat, retain_graph=True, allow_unused=True)
                 if flat and attached.requires_grad else [None] * len(flat))
        self._g_uni, i = {}, 0
        for m in self.modalities:
            n = len(self._params[m])
            self._g_uni[m] = list(grads[i:i + n])
            i += n
        self.traces.add_many("uni_loss", attached.detach(), self.modalities)
        # What the loop back-propagates: L_u on detached features, so the heads get their L_u gradient
        # and each encoder's .grad is exactly its multimodal gradient g_mm^m.
        return self._unimodal_losses({m: f.detach() for m, f in out.features.items()}, batch.labels).sum()

    def modulate_gradients(self, model: MultimodalModel, out: ModelOutput, batch: Batch, ctx: StepContext) -> None:
        cfg: MMParetoConfig = self.config
        if self._g_uni is None:
            raise RuntimeError("MMPareto.modulate_gradients without extra_loss in the same step")
        g_uni, self._g_uni = self._g_uni, None
        pairs: list[tuple[list[Tensor], list[Tensor]]] = []  # per encoder: (g_mm tensors = the .grad, g_u tensors)
        for m in self.modalities:
            g1, g2 = [], []
            for p, b in zip(self._params[m], g_uni[m], strict=True):
                if p.grad is None and b is None:
                    continue  # a tensor neither loss reaches
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                g1.append(p.grad)
                g2.append(b if b is not None else torch.zeros_like(p))
            pairs.append((g1, g2))
        zero = torch.zeros(3, device=self.device)
        if cfg.magnitude == "code":  # per-tensor inner products, for the per-tensor rescale
            grams = [gradient_gram(g1, g2) if g1 else None for g1, g2 in pairs]
            totals = torch.stack([g.sum(dim=0) if g is not None else zero for g in grams])
        else:
            totals = torch.stack([encoder_gram(g1, g2) if g1 else zero for g1, g2 in pairs])
        aa, bb, ab = totals.unbind(-1)  # (M,) each: the whole encoder as one vector
        weights = integration_weights(aa, bb, ab, cfg.integration)  # (M, 2)
        sum_sq, h_sq = sum_norm_sq(aa, bb, ab), integrated_norm_sq(aa, bb, ab, weights)
        if cfg.magnitude == "code":
            finals = []
            for (g1, g2), gram, w in zip(pairs, grams, weights, strict=True):
                if not g1:
                    finals.append(zero[0])
                    continue
                coeff = encoder_coefficients(gram, w, magnitude="code", grad_scale=cfg.grad_scale)  # (T, 2)
                for a, b, c in zip(g1, g2, coeff, strict=True):
                    a.mul_(c[0]).add_(b * c[1])
                finals.append(_quadratic(coeff, gram).sum())
            final_sq = torch.stack(finals)
        else:  # one factor per encoder: (M, 2) coefficients, two fused ops per encoder
            coeff = cfg.grad_scale * magnitude_scale(sum_sq, h_sq, cfg.magnitude).unsqueeze(-1) * 2.0 * weights
            for (g1, g2), c in zip(pairs, coeff, strict=True):
                if g1:
                    torch._foreach_mul_(g1, c[0])
                    torch._foreach_add_(g1, torch._foreach_mul(g2, c[1]))
            final_sq = _quadratic(coeff, totals)
        # Traces: all encoders at once, no host sync.
        positive = sum_sq > 0
        base = sum_sq.clamp_min(torch.finfo(sum_sq.dtype).tiny)
        one = torch.ones_like(sum_sq)
        cos = gradient_cosine(aa, bb, ab)
        for quantity, value in (
            ("cos", cos), ("conflict", (cos < 0).to(cos.dtype)), ("pareto_weight", weights[:, 0]),
            ("pareto_norm", torch.where(positive, (h_sq / base).sqrt(), one)),
            ("magnitude_ratio", torch.where(positive, (final_sq / base).sqrt(), one)),
            ("norm_mm", aa.sqrt()), ("norm_uni", bb.sqrt()),
        ):
            self.traces.add_many(quantity, value, self.modalities)

    # -- checkpointing: the separate heads' weights (their momentum is in the trial's optimizer) --------
    def state_dict(self) -> dict[str, Any]:
        return {"heads": {k: v.detach().cpu() for k, v in self._heads.state_dict().items()} if self._heads is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"heads"} or (state["heads"] is None) != (self._heads is None):
            raise ValueError("MMPareto checkpoint and config disagree on heads (model vs separate)")
        if self._heads is not None:
            self._heads.load_state_dict(state["heads"])
