"""UME: the uni-modal ensemble — each modality's model trained alone, predictions summed.

Paper: Du, Teng, Li, Liu, Yuan, Wang, Yuan, Zhao, "On Uni-Modal Feature Learning in Supervised
Multi-Modal Learning", ICML 2023, arXiv:2305.01233 (UME and its sibling UMT; the predecessor is
"Modality Laziness", ICLR 2022 submission, and UMT v1 is arXiv:2106.11059). No official code was
found (no UME repository of the authors; GeWu-Lab/BalanceBenchmark ships UMT and a uni-modal trainer,
but no UME). The paper body was not available to us: section and equation numbers are not cited.

What UME is (verified from the abstracts): when the paired, cross-modal features add little, "one
may simply run independent training on each modality" and combine the uni-modal models' predictions.
No fusion layer is trained afterwards (fine-tuning the members jointly is the later UME-MMA/MMLoRA).

Schedule (multi-stage, :meth:`UME.stages`): one stage per modality, in the model's modality order,
named after it. In stage m the loss is the member's own cross-entropy,

    L_m = CE(z_m(x^m), y),   z_m = the modality's own classifier on its encoder's feature φ^m

(:meth:`UME.loss` on ``model.modality_logits``), so only modality m's parameters get gradients and the
optimizer leaves the others untouched (their ``.grad`` stays None). Every stage starts a fresh
optimizer and LR schedule (``Stage.fresh_optimizer``): each member is a new model trained from its
initialisation. Prediction: ŷ = argmax_k Σ_m z_m(x^m)_k — the fused logits of an additive fusion.

Equation → function:
* per-stage budgets (E_1, …, E_M), Σ E_m = train.epochs: :func:`stage_budgets`.
* L_m = CE(z_m, y): :meth:`UME.loss` (z_m from :meth:`MultimodalModel.modality_logits`).
* ensemble z = Σ_m z_m: :func:`ensemble_logits`; for the fusions UME accepts, the model's fused logits
  are exactly this sum (``concat``, ``sum``) or this sum / M (``late``: same argmax), so the usual
  evaluation reports the ensemble: ``val_acc``/``test_acc`` are the ensemble's, ``val_acc/<m>`` each
  member's (the fusion's exact additive split).

Interpretations (our reading where the paper, as far as we could check it, is silent):
* Combination by **logit sum** (the notes could not verify logits vs softmax probabilities; a
  third-party README averages probabilities). Both give the same prediction for equally calibrated
  members. ``combine: probs`` is not offered: the evaluation path computes the model's fused logits
  and a method has no hook there, so probability averaging would need a change to the evaluation,
  not to this file.
* Members: the model's own encoders and heads, initialised from the trial seed like the joint model
  (so member m starts from the joint model's initialisation of encoder m, not from the ``unimodal``
  baseline's, whose RNG draws differ).
* Epoch budget: ``stage_epochs`` (one entry per modality) or, when null, train.epochs split equally,
  the remainder going to the first stages (7 epochs, 3 modalities → 3, 2, 2). The default therefore
  matches joint training's total compute (each member gets E/M epochs); to give every member joint's
  E epochs (M× the compute, the research notes' reading of the paper), set train.epochs = M·E.
* Member selection: each member is its weights at the end of its stage (a method never sees
  validation data, so members cannot be selected on their own val accuracy). The trial's ``best_*``
  select the best validation epoch of the whole schedule as for every method; before the last stage
  the "ensemble" holds members still at their initialisation, so read ``best_epoch`` (it is normally
  in the last stage) or the last epoch's metrics for the complete ensemble.
* Fusions: the additive ones only. ``sum`` (recommended: its logits are exactly the sum of M
  independent members, each a linear head with its own bias) and ``late`` (one head per member,
  logits averaged) make the members fully independent. ``concat`` has one shared linear layer
  W·[φ^1; …; φ^M] + b: member m is its exact split W^m·φ^m + b/M, which couples the members a little —
  the shared bias b is trained in every stage (member 1 is evaluated with the b the last stage left),
  and SGD weight decay / momentum shrink the other members' column blocks W^j slightly, since they
  get a zero gradient block rather than none (≈ lr·wd/(1−momentum) relative per step). Their encoders
  stay bit-identical. ``film`` and ``gated`` mix modalities multiplicatively, have no member split, and
  are refused (ConfigError on model.fusion).
* Cost: in stage m only encoder m runs. ``before_forward`` encodes modality m (with grad) and hands
  the forward pass zeros for the other modalities' features (``batch.features``): the loss depends on
  φ^m alone, so the result is identical to encoding every modality (checked in the tests), the other
  encoders do no work, and their BatchNorm running statistics (CNN, ResNet-18) are not moved by a stage
  that does not train them. The fused logits the loop computes on these features are never used.
* The modulation window does not apply (``always_active``; the stages are the schedule):
  ``start_epoch``/``end_epoch`` other than the defaults are refused.
* Not composable: a multi-stage scheme whose loss trains one modality alone leaves nothing for an
  in-loop balancing method to balance.

Traces: ``trace/stage/<m>`` — 1.0 for the modality trained this epoch, 0.0 for the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmtune.config import hp
from mmtune.data.base import Batch
from mmtune.engine.method import BalancingMethod, MethodConfig, Stage, StepContext
from mmtune.engine.registry import register
from mmtune.errors import ConfigError, Problem
from mmtune.models.multimodal import ModelOutput, MultimodalModel

__all__ = ["UME", "UMEConfig", "ensemble_logits", "stage_budgets"]


@dataclass(frozen=True)
class UMEConfig(MethodConfig):
    stage_epochs: tuple[int, ...] | None = hp(
        None, doc="epochs of each modality's stage, in the model's modality order; they must add up to "
                  "train.epochs (null: train.epochs split equally, the remainder to the first stages)")

    def extra_checks(self) -> list[Problem]:
        problems = super().extra_checks()
        if self.start_epoch != 1 or self.end_epoch is not None:
            problems.append(Problem("start_epoch" if self.start_epoch != 1 else "end_epoch", (
                "UME has no modulation window: it trains one modality per stage for the whole trial. "
                "Leave start_epoch/end_epoch unset and give the stages' lengths in stage_epochs.")))
        if self.stage_epochs is not None and any(e < 1 for e in self.stage_epochs):
            problems.append(Problem("stage_epochs", f"every stage needs >= 1 epoch, got {list(self.stage_epochs)}."))
        return problems


def stage_budgets(epochs: int, modalities: list[str], stage_epochs: tuple[int, ...] | None = None) -> list[int]:
    """The epochs of each modality's stage: ``stage_epochs`` as given, or ``epochs`` split equally with
    the remainder going to the first stages. ConfigError when they cannot cover ``epochs``."""
    n = len(modalities)
    if stage_epochs is None:
        if epochs < n:
            raise ConfigError([Problem("train.epochs", (
                f"is {epochs}, but UME trains each of the {n} modalities {modalities} in a stage of its own "
                f"(>= 1 epoch each): set train.epochs >= {n}."))])
        base, extra = divmod(epochs, n)
        return [base + (i < extra) for i in range(n)]
    budgets = list(stage_epochs)
    if len(budgets) != n:
        raise ConfigError([Problem("params.stage_epochs", (
            f"needs one entry per modality {modalities} (in that order), got {len(budgets)}: {budgets}."))])
    if sum(budgets) != epochs:
        plan = " + ".join(f"{m} {e}" for m, e in zip(modalities, budgets, strict=True))
        raise ConfigError([Problem("params.stage_epochs", (
            f"schedules {plan} = {sum(budgets)} epochs, but train.epochs is {epochs}; they must be equal. "
            f"Set train.epochs={sum(budgets)}, or change stage_epochs (null splits train.epochs equally)."))])
    return budgets


def ensemble_logits(member_logits: Tensor) -> Tensor:
    """UME's prediction scores from the members' logits (M, B, C): z = Σ_m z_m, ŷ = argmax_k z_k."""
    return member_logits.sum(dim=0)


@register
class UME(BalancingMethod):
    name = "ume"
    Config = UMEConfig
    paper = "UME — Du et al., ICML 2023, arXiv:2305.01233 (uni-modal ensemble)"
    always_active = True  # the stages are the schedule; there is no window
    replaces_loss = True
    composable = ("UME is a multi-stage scheme that trains one modality alone per stage with its own loss; "
                  "an in-loop balancing method has nothing to balance in it")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._onehot: dict[str, Tensor] = {}

    def bind(self, model: MultimodalModel) -> None:
        if not model.fusion.additive:
            raise ConfigError([Problem("model.fusion", (
                f"is '{model.fusion.name}', which mixes modalities multiplicatively: it has no per-modality "
                "member whose logits add up to the prediction, so UME cannot ensemble it. Use model.fusion=sum "
                "(exactly independent members; recommended), late, or concat."))])
        self._dims = {m: model.fusion.feature_dims[m] for m in self.modalities}
        eye = torch.eye(len(self.modalities), device=self.device)
        self._onehot = {m: eye[i] for i, m in enumerate(self.modalities)}

    @classmethod
    def min_epochs(cls, config: UMEConfig, modalities: list[str]) -> int:
        return len(modalities) if config.stage_epochs is None else sum(config.stage_epochs)

    def stages(self, epochs: int) -> tuple[Stage, ...]:
        budgets = stage_budgets(epochs, self.modalities, self.config.stage_epochs)
        return tuple(Stage(m, e, fresh_optimizer=True) for m, e in zip(self.modalities, budgets, strict=True))

    def begin_epoch(self, ctx: StepContext) -> None:
        super().begin_epoch(ctx)
        self.traces.add_many("stage", self._onehot[ctx.stage.name], self.modalities)

    def before_forward(self, batch: Batch, ctx: StepContext) -> Batch:
        # Only the stage's member runs: its feature with grad, zeros for the rest (the loss never reads them).
        m = ctx.stage.name
        phi = ctx.model.encoders[m](batch.inputs[m])
        batch.features = {j: phi if j == m else phi.new_zeros((phi.shape[0], self._dims[j])) for j in self.modalities}
        return batch

    def loss(self, out: ModelOutput, batch: Batch, ctx: StepContext) -> Tensor:
        # L_m = CE(z_m(x^m), y): the stage's member alone, by its own classifier.
        return F.cross_entropy(ctx.model.modality_logits(out.features)[ctx.stage.name], batch.labels)
