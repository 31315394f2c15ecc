"""MMCosine: multi-modal cosine logits, s·Σ_m cos(W^m_k, φ^m).

Paper: Xu, Feng, Zhang, Hu, "MMCosine: Multi-Modal Cosine Loss Towards Balanced Audio-Visual
Fine-Grained Learning", ICASSP 2023, arXiv:2303.05338. Official code: github.com/GeWu-Lab/MMCosine_ICASSP23
(read at 00ba0a9; ``main_CD.py``, ``main_vox2.py``, ``models/fusion_modules.py``; "the code" below); also
re-implemented in BalanceBenchmark (GeWu-Lab/BalanceBenchmark, ``balancemm/trainer/MMCosine_trainer.py``,
"BB"). The paper's body could not be read here (only its abstract and introduction); the formulas
below are the code's, which the abstract's "modality-wise L2 normalization to features and weights"
describes, and equation numbers are not cited.

The method. The fusion head's logits are replaced, in training *and* evaluation, by cosine logits:
for each modality m, the rows W^m_k of the part of the head that acts on m (one row per class k) and
the modality's feature φ^m (``out.features``, the pooled encoder output) are L2-normalised, and

    f_k(x) = s · Σ_m cos θ^m_k,   cos θ^m_k = ⟨W^m_k, φ^m⟩ / (‖W^m_k‖·‖φ^m‖),

with no bias, trained with the ordinary cross-entropy of f. Each modality's logit is bounded by s,
whatever its weight norm ‖W^m_k‖ or feature norm: the dominant modality can no longer win by growing
its norms (the paper's weight-norm argument), and s alone sets the sharpness of the softmax.

Equation → function:
* W^m, the per-modality head: :func:`modality_weights` (concat: the column block W^m of the shared
  head, exactly the split ``unimodal_logits`` uses; sum: fc[m]; late: heads[m]).
* s·cos θ^m_k (one modality): :func:`cosine_logits`.
* f(x) = s·Σ_m cos θ^m_k: :func:`mmcosine_logits` (what the model's fused logits become).
* Traces: :func:`true_class_cosine`, :func:`angle_degrees`, :func:`row_norms`.

How the logits change without an engine hook. ``bind`` swaps the class of the model's fusion module
for a cosine subclass of it (:class:`CosineConcatFusion`, :class:`CosineSumFusion`,
:class:`CosineLateFusion`): same parameters, same state-dict keys, same ``name``, but ``forward``,
``components``/``stacked_components`` and ``own_logits`` return cosine logits. So every consumer of
the model sees the cosine classifier: the loop's loss, the evaluation (``val_acc``/``test_acc``; and
``val_acc/<m>`` is modality m's own cosine logit s·cos θ^m, the code's "approximate uni-modal
evaluation"), and other methods composed with this one (OGM's scores, AGM's and CML's subset logits:
a zero-padded feature normalises to 0, so an absent modality contributes exactly nothing).

Fusions: ``concat`` (the code's and BB's: the shared head's weight splits by columns per modality),
``sum`` and ``late`` (one linear head per modality: each head's weight is W^m). For all three the
cosine logits are the paper's sum s·Σ_m cos θ^m — for ``late`` *not* divided by M as the linear late
fusion averages (that would only rescale s to s/M). ``film`` and ``gated`` are refused (ConfigError on
model.fusion): here their output layer acts on a mixture of the modalities (FiLM: on the modulated
non-conditioning modalities only; gated: on a gated sum), so no part of it belongs to one modality.
The code runs FiLM/gated with its own symmetric variants whose output layer acts on
[x_new; y_new]; cosine logits there normalise the post-fusion branches, which these modules do not have.

Interpretations and defaults:
* ``scale`` s = 10: the code's default (``--scaling 10``, the README's command); BB uses 15. The paper
  sweeps s (``search_spaces/mmcosine_scale.yaml``); its values could not be read.
* Biases are not used (cosine classifiers have none; the code and BB drop them). The linear head's bias
  stays a parameter with no gradient (the optimizer skips it: no weight decay either).
* A feature (or weight row) of norm 0 normalises to 0 (``F.normalize``, ε = 1e-12), i.e. cos = 0.
* The window: inside [start_epoch, end_epoch] training uses the cosine logits; outside it the plain
  linear head (with its bias), as BB's ``modulation_starts``/``modulation_ends``. Evaluation always
  uses the cosine classifier (BB). The default window is the whole run (the paper, the code).

Departures of the official code / BB, as hyperparameters:
* ``eval_logits: linear`` — ``main_CD.py``'s ``valid()`` scores the *fused* prediction with the model's
  plain linear head W·[φ^a; φ^v] + b (its ``out``), which training with ``--mmcosine True`` never used
  (the bias keeps its initialisation); only its per-modality accuracies are cosine. Here: evaluation
  (eval mode) computes the fused logits with the linear head and the per-modality ones with the
  cosine heads, as there. ``cosine`` (default) is the paper's classifier, ``main_vox2.py`` and BB.
* The window above is BB's; the code has none (cosine for the whole run, our default).
Not offered: the code's auxiliary NCE loss (``--lam``, default 0, "used in supplementary material").

Traces (means over the epoch's modulated steps):
* ``trace/logit/<m>`` — the true-class cosine logit s·cos θ^m_y (the code's tensorboard ``data/logit_a``,
  ``data/logit_v``).
* ``trace/angle/<m>`` — the angle (degrees) between φ^m and its class row W^m_y (the project page's
  "angles between uni-modal features and ground-truth class centers").
* ``trace/weight_norm/<m>`` — the mean raw row norm ‖W^m_k‖ over classes (the paper's weight-norm view;
  the normalisation takes it out of the logits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from mmtune.config import hp
from mmtune.data.base import Batch
from mmtune.engine.method import BalancingMethod, MethodConfig, StepContext
from mmtune.engine.registry import register
from mmtune.errors import ConfigError, Problem
from mmtune.models.fusions import ConcatFusion, Fusion, LateFusion, SumFusion
from mmtune.models.multimodal import ModelOutput, MultimodalModel

__all__ = [
    "MMCosine", "MMCosineConfig", "CosineConcatFusion", "CosineSumFusion", "CosineLateFusion",
    "modality_weights", "cosine_logits", "mmcosine_logits", "true_class_cosine", "angle_degrees", "row_norms",
]

SUPPORTED_FUSIONS = ("concat", "sum", "late")


@dataclass(frozen=True)
class MMCosineConfig(MethodConfig):
    scale: float = hp(10.0, low=0.0, low_open=True, doc="scaling factor s of the cosine logits (code default 10; BalanceBenchmark 15)")
    eval_logits: str = hp("cosine", choices=("cosine", "linear"),
                          doc="fused prediction at evaluation: cosine classifier (paper, BB) or the linear head W·φ+b (main_CD.py)")


# ----------------------------------------------------------------------------- pure functions

def modality_weights(fusion: Fusion) -> dict[str, Tensor]:
    """W^m (C, d_m) for each modality: the rows of the head part acting on φ^m alone.

    concat: the column block of the shared head W = [W^1 … W^M] (as ``unimodal_logits`` splits it);
    sum: fc[m].weight; late: heads[m].weight. Other fusions have no such part (ConfigError).
    """
    if isinstance(fusion, ConcatFusion):
        blocks = fusion.fc.weight.split([fusion.feature_dims[m] for m in fusion.modalities], dim=1)
        return dict(zip(fusion.modalities, blocks, strict=True))
    if isinstance(fusion, SumFusion):
        return {m: fusion.fc[m].weight for m in fusion.modalities}
    if isinstance(fusion, LateFusion):
        return {m: fusion.heads[m].weight for m in fusion.modalities}
    raise ConfigError([_fusion_problem(fusion.name)])


def cosine_logits(feature: Tensor, weight: Tensor, scale: float) -> Tensor:
    """s·cos θ_k = s·⟨W_k, φ⟩/(‖W_k‖‖φ‖) for every class k: (B, d) × (C, d) → (B, C); zero norm → 0."""
    return scale * (F.normalize(feature, dim=1) @ F.normalize(weight, dim=1).T)


def mmcosine_logits(features: dict[str, Tensor], weights: dict[str, Tensor], scale: float) -> Tensor:
    """f_k(x) = s·Σ_m cos θ^m_k, (B, C): the fused MMCosine logits (no bias)."""
    return torch.stack([cosine_logits(features[m], weights[m], scale) for m in weights]).sum(dim=0)


def true_class_cosine(feature: Tensor, weight: Tensor, labels: Tensor) -> Tensor:
    """cos θ_y between each sample's φ and its class row W_y, (B,)."""
    cos = F.normalize(feature, dim=1) @ F.normalize(weight, dim=1).T
    return cos.gather(1, labels.view(-1, 1)).squeeze(1)


def angle_degrees(cos: Tensor) -> Tensor:
    """θ = arccos(cos θ) in degrees (cos clamped to [−1, 1])."""
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


def row_norms(weight: Tensor) -> Tensor:
    """‖W_k‖ for every class row, (C,)."""
    return weight.norm(dim=1)


# ----------------------------------------------------------------------------- cosine fusions

class _CosineHead:
    """Mixin over an additive fusion: cosine logits s·Σ_m cos θ^m instead of the linear head.

    ``mmcosine_scale`` is s; ``mmcosine_train`` whether train-mode logits are cosine (the window);
    ``mmcosine_eval`` the eval-mode fused prediction (``cosine``, or ``linear`` as main_CD.py).
    """

    mmcosine_scale: float = 10.0
    mmcosine_train: bool = True
    mmcosine_eval: str = "cosine"
    training: bool

    def _cosine(self, fused: bool) -> bool:
        if self.training:
            return self.mmcosine_train
        return not fused or self.mmcosine_eval == "cosine"

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        if not self._cosine(fused=True):
            return super().forward(features)  # type: ignore[misc]
        return mmcosine_logits(features, modality_weights(self), self.mmcosine_scale)  # type: ignore[arg-type]

    def components(self, features: dict[str, Tensor], bias_split: Any = None) -> dict[str, Tensor]:
        if not self._cosine(fused=False):
            return super().components(features, bias_split)  # type: ignore[misc]
        weights = modality_weights(self)  # type: ignore[arg-type]
        return {m: cosine_logits(features[m], w, self.mmcosine_scale) for m, w in weights.items()}

    def stacked_components(self, features: dict[str, Tensor], bias_split: Any = None) -> Tensor:
        if not self._cosine(fused=False):
            return super().stacked_components(features, bias_split)  # type: ignore[misc]
        return torch.stack(list(self.components(features, bias_split).values()))

    def own_logits(self, features: dict[str, Tensor]) -> dict[str, Tensor] | None:
        own = super().own_logits(features)  # type: ignore[misc]
        if own is None or not self._cosine(fused=False):
            return own
        return self.components(features)  # each head's own logits are its cosine logits


class CosineConcatFusion(_CosineHead, ConcatFusion):
    """``concat`` with MMCosine logits (the code's and BB's setting)."""


class CosineSumFusion(_CosineHead, SumFusion):
    """``sum`` with MMCosine logits: each modality's own head, cosine, summed."""


class CosineLateFusion(_CosineHead, LateFusion):
    """``late`` with MMCosine logits: each head's cosine logits, summed (not averaged)."""


_COSINE_CLASS: dict[type, type] = {
    ConcatFusion: CosineConcatFusion, SumFusion: CosineSumFusion, LateFusion: CosineLateFusion,
}


def _fusion_problem(name: str) -> Problem:
    return Problem("model.fusion", (
        f"is '{name}', whose output layer acts on a mixture of the modalities, so no part of it belongs to one "
        "modality and MMCosine has no per-modality weight W^m to normalise. Use model.fusion=concat (the paper's "
        f"and the code's), sum or late (supported: {', '.join(SUPPORTED_FUSIONS)})."))


# ----------------------------------------------------------------------------- the strategy

@register
class MMCosine(BalancingMethod):
    name = "mmcosine"
    Config = MMCosineConfig
    paper = "MMCosine — Xu et al., ICASSP 2023, arXiv:2303.05338 (cosine logits, scale s)"
    state: ClassVar[tuple[str, ...]] = ()  # the switch the window sets is re-set at every begin_epoch

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._fusion: Fusion | None = None

    def bind(self, model: MultimodalModel) -> None:
        fusion = model.fusion
        cosine_class = _COSINE_CLASS.get(type(fusion), type(fusion) if isinstance(fusion, _CosineHead) else None)
        if cosine_class is None:
            raise ConfigError([_fusion_problem(fusion.name)])
        fusion.__class__ = cosine_class  # same module, same parameters and state-dict keys: cosine logits
        fusion.mmcosine_scale = float(self.config.scale)
        fusion.mmcosine_eval = self.config.eval_logits
        fusion.mmcosine_train = self.in_window(1)
        self._fusion = fusion

    def begin_epoch(self, ctx: StepContext) -> None:
        super().begin_epoch(ctx)
        if self._fusion is not None:  # cosine training logits inside the window, the linear head outside (BB)
            self._fusion.mmcosine_train = ctx.modulating

    def extra_loss(self, out: ModelOutput, batch: Batch, ctx: StepContext) -> None:
        # Adds nothing to the loss (the logits themselves are cosine); records the traces.
        if self._fusion is None:
            raise RuntimeError("MMCosine.extra_loss before bind: the trial binds the model first")
        with torch.no_grad():
            weights = modality_weights(self._fusion)
            cos = torch.stack([true_class_cosine(out.features[m], weights[m], batch.labels) for m in self.modalities])
            norms = torch.stack([row_norms(weights[m]).mean() for m in self.modalities])
            self.traces.add_many("logit", self.config.scale * cos.mean(dim=1), self.modalities)
            self.traces.add_many("angle", angle_degrees(cos).mean(dim=1), self.modalities)
            self.traces.add_many("weight_norm", norms, self.modalities)
        return None
