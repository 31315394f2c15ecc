"""UMT: Uni-Modal Teachers — uni-modal teachers first, then a multimodal student that distils their features.

Paper: Du, Li, Liu, Wen, Hua, Wang, Zhao, "Improving Multi-Modal Learning with Uni-Modal Teachers",
arXiv:2106.11059 (2021); revisited with UME in Du et al., "On Uni-Modal Feature Learning in
Supervised Multi-Modal Learning", ICML 2023, arXiv:2305.01233 (see ``trainables/ume.py``). No official
code was found. GeWu-Lab/BalanceBenchmark ships ``balancemm/trainer/UMT_trainer.py`` (read at its
mirror's HEAD 4c1482f) with ``configs/trainer_config.yaml`` ``UMT: scaling: 10, modulation_starts: 0,
modulation_ends: 80`` ("the code" below). **The paper body was not available to us** (only the
abstracts could be read): the equations below come from the code, and section or equation numbers
are not cited. Verified from the abstracts: UMT "combines the fusion objective and uni-modal
distillation" and "distills the pre-trained uni-modal features to the corresponding parts in
multi-modal models" (ICLR'22 abstract of the predecessor).

Schedule (multi-stage, :meth:`UMT.stages`): one teacher stage per modality, in the model's modality
order (``teacher_<m>``), then one ``student`` stage; every stage starts a fresh optimizer and LR
schedule (``Stage.fresh_optimizer``).

* Teacher stage m trains a uni-modal model from scratch: encoder m and a linear classifier of its own,
  h_m(φ) = W_m φ + b_m (owned by the method, :meth:`UMT.extra_parameters`), with
  L^T_m = CE(h_m(φ^m(x^m)), y) (:meth:`UMT.loss`). The code's teacher is a separate uni-modal model,
  the same encoder with its fusion's ``fc_out`` on one modality: a linear head, as here. Only encoder m
  runs (``before_forward`` hands the forward zeros for the other features, as UME does): the other
  encoders get no gradient, no weight decay, no momentum, and their BatchNorm statistics do not move.
* At the start of the student stage each encoder m is snapshotted as teacher m (it is untouched after
  its own stage, so this is its state at the end of its stage), kept frozen in the method's
  checkpointed ``state`` (``teachers``: tensors), and the whole model (encoders and fusion) is
  re-initialised to the trial's initial weights (copied at :meth:`UMT.bind`; the same config rebuilds
  the same weights, so they are not checkpointed). The student is the ordinary multimodal model with
  the trial's fusion (any of them: the teachers never see the fusion).
* Student objective (the code's ``training_step``):

      L = CE(z(x), y) + λ Σ_m d(φ^m(x^m), φ̄^m(x^m)),   d = MSE (mean over the batch and feature dims)

  φ^m the student's pooled encoder feature (the input of the fusion), φ̄^m teacher m's, computed
  without gradient (the code: ``nn.MSELoss()(teacher.encoder_result[m], model.encoder_result[m])``,
  ``loss += scaling * ...``, ``scaling`` = λ = 10). BalanceBenchmark loads each teacher from the newest
  ``unimodalTrainer_<m>`` checkpoint *file* of an earlier run; a trial here cannot read another trial's
  files, so it trains its teachers itself, in its own teacher stages (same optimizer and schedule
  settings as the student; the code's uni-modal runs also share every setting with the other methods).

Equation → function:
* the stages' budgets (E_1, …, E_M, E_student): :func:`stage_budgets`.
* L^T_m = CE(h_m(φ^m), y): :meth:`UMT.loss` in a teacher stage.
* d(φ, φ̄) per modality: :func:`feature_distance` (``reduction: mean`` = nn.MSELoss, the code;
  ``sum`` = ‖φ − φ̄‖² summed over the feature dims, averaged over the batch = D × ``mean``).
* L = CE + λ Σ_m d_m: :func:`student_objective` (CE from the loop's default fused logits,
  :meth:`UMT.loss`; λ Σ_m d_m from :meth:`UMT.extra_loss`).
* the distillation window: :func:`distills` (the code's ``modulation_starts <= current_epoch <=
  modulation_ends``, 0-based; here ``distill_start``/``distill_end``, 1-based epochs of the student
  stage; the code's defaults 0 and 80 cover every epoch of its 30, as the defaults here do).

Departures of the code from what one would expect, offered as hyperparameters:
* ``teacher_mode: eval | train``. The code never calls ``.eval()`` on its loaded teachers, so their
  BatchNorm layers normalise each batch by its own statistics (``train``). The default is ``eval``
  (our reading of a *frozen* teacher: its feature is a fixed function of the input, the running
  statistics of the end of its stage). Identical for encoders without BatchNorm (the MLP default).
* ``reduction: mean | sum``: see :func:`feature_distance`; ``mean`` (the code) by default.
* The distillation target: the code distils only the pooled encoder features (``encoder_result[m]``),
  and so does this module (no other target is offered: neither the code nor the abstracts name one).

Interpretations (ours where the paper, as far as we could read it, is silent):
* Budgets: ``teacher_epochs`` (one entry per modality; the student gets the rest of train.epochs), or,
  when null, train.epochs split equally over the M + 1 stages with the leftover epochs going first to
  the student, then to the teachers in modality order (20 epochs, 2 modalities → teachers 7, 6,
  student 7). The code trains each teacher and the student for the same 30 epochs (M + 1 runs): the
  default matches that ratio at joint training's total compute.
* Initialisation: teacher m starts from the trial's initial encoder m — the same initialisation the
  student's encoder m gets, and joint training's with the same seed.
* The method's teacher heads are created at :meth:`UMT.bind` (after the model, from the same seeded
  global RNG) and checkpointed with the method; they are used only in the teacher stages.
* Evaluation (:meth:`UMT.predict`): in a teacher stage there is no multimodal model yet, so the fused
  prediction reported as ``val_acc``/``test_acc`` is a constant (all-zero logits: chance level) and
  the trial's ``best_*`` (best validation epoch) cannot select a teacher epoch unless the student never
  beats a constant prediction; ``val_acc/<m>`` reports teacher m by its own head (modalities whose
  stage has not come yet: their untrained encoder and head). In the student stage the model's usual
  metrics apply (fused logits, ``val_acc/<m>`` the fusion's uni-modal split).
* The modulation window does not apply (``always_active``: the stages are the schedule):
  ``start_epoch``/``end_epoch`` other than the defaults are refused; the distillation window is
  ``distill_start``/``distill_end``.
* Not composable: a multi-stage scheme whose first stages train one modality alone with the method's
  own heads and loss, and whose student stage re-initialises the model; an in-loop balancing method
  would act on the teachers' stages too and would be reset with the model.

Traces: ``trace/stage/<m>`` — 1.0 for the modality whose teacher trains this epoch, 0.0 for the others
(all 0.0 in the student stage); ``trace/distill/<m>`` — the epoch's mean of d(φ^m, φ̄^m) (unweighted
by λ) in the student stage's distillation epochs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmtune.config import hp
from mmtune.data.base import Batch
from mmtune.engine.method import BalancingMethod, MethodConfig, Stage, StepContext
from mmtune.engine.registry import register
from mmtune.errors import ConfigError, Problem
from mmtune.models.multimodal import ModelOutput, MultimodalModel

__all__ = ["UMT", "UMTConfig", "distills", "feature_distance", "stage_budgets", "student_objective"]

STUDENT = "student"


def teacher_stage(modality: str) -> str:
    return f"teacher_{modality}"


@dataclass(frozen=True)
class UMTConfig(MethodConfig):
    lam: float = hp(10.0, low=0.0, doc="λ, the weight of the feature distillation (BalanceBenchmark's scaling: 10)")
    teacher_epochs: tuple[int, ...] | None = hp(
        None, doc="epochs of each modality's teacher stage, in the model's modality order; the student gets the "
                  "rest of train.epochs (null: train.epochs split equally over the M teachers and the student, "
                  "leftover epochs to the student first)")
    reduction: str = hp("mean", choices=("mean", "sum"),
                        doc="d(φ, φ̄): mean = MSE over batch and feature dims (the code's nn.MSELoss); "
                            "sum = squared L2 norm over the feature dims, averaged over the batch")
    teacher_mode: str = hp("eval", choices=("eval", "train"),
                           doc="the frozen teachers' mode: eval (running BatchNorm statistics) or train "
                               "(each batch's own statistics, as the code's never-eval'd teachers)")
    distill_start: int = hp(1, low=1, doc="first epoch of the student stage (1-based) with the distillation term")
    distill_end: int | None = hp(None, low=1, doc="last epoch of the student stage with it, inclusive (null: to the end)")

    def extra_checks(self) -> list[Problem]:
        problems = super().extra_checks()
        if self.start_epoch != 1 or self.end_epoch is not None:
            problems.append(Problem("start_epoch" if self.start_epoch != 1 else "end_epoch", (
                "UMT has no modulation window: it trains its teachers, then the student, for the whole trial. "
                "Leave start_epoch/end_epoch unset; the stages' lengths are teacher_epochs, and the "
                "distillation window is distill_start/distill_end (epochs of the student stage).")))
        if self.teacher_epochs is not None and any(e < 1 for e in self.teacher_epochs):
            problems.append(Problem("teacher_epochs", f"every teacher stage needs >= 1 epoch, got {list(self.teacher_epochs)}."))
        if self.distill_end is not None and self.distill_end < self.distill_start:
            problems.append(Problem("distill_end", f"must be >= distill_start ({self.distill_start}), got {self.distill_end}."))
        return problems


def stage_budgets(epochs: int, modalities: list[str],
                  teacher_epochs: tuple[int, ...] | None = None) -> tuple[list[int], int]:
    """(each modality's teacher epochs, the student's epochs), adding up to ``epochs``: ``teacher_epochs``
    as given with the rest for the student, or ``epochs`` split equally over the M + 1 stages with the
    leftover epochs going first to the student, then to the teachers in order. ConfigError when the
    student would get no epoch."""
    n = len(modalities)
    if teacher_epochs is None:
        if epochs < n + 1:
            raise ConfigError([Problem("train.epochs", (
                f"is {epochs}, but UMT trains a teacher for each of the {n} modalities {modalities} and then the "
                f"student, each in a stage of its own (>= 1 epoch each): set train.epochs >= {n + 1}."))])
        base, extra = divmod(epochs, n + 1)
        return [base + (i < extra - 1) for i in range(n)], base + (extra > 0)
    budgets = list(teacher_epochs)
    if len(budgets) != n:
        raise ConfigError([Problem("params.teacher_epochs", (
            f"needs one entry per modality {modalities} (in that order), got {len(budgets)}: {budgets}."))])
    student = epochs - sum(budgets)
    if student < 1:
        plan = " + ".join(f"{m} {e}" for m, e in zip(modalities, budgets, strict=True))
        raise ConfigError([Problem("params.teacher_epochs", (
            f"schedules teachers {plan} = {sum(budgets)} epochs, leaving {student} of train.epochs {epochs} for the "
            f"student (>= 1 needed). Set train.epochs >= {sum(budgets) + 1}, or shorten teacher_epochs "
            "(null splits train.epochs equally)."))])
    return budgets, student


def feature_distance(student: Tensor, teacher: Tensor, reduction: str = "mean") -> Tensor:
    """d(φ, φ̄) for features (B, D): ``mean`` = mean over B·D of (φ − φ̄)² (nn.MSELoss, the code);
    ``sum`` = (1/B) Σ_b ‖φ_b − φ̄_b‖² (D × ``mean``). The teacher's feature is taken as a constant."""
    sq = (student - teacher.detach()).pow(2)
    if reduction == "mean":
        return sq.mean()
    if reduction == "sum":
        return sq.flatten(1).sum(1).mean()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def student_objective(ce: Tensor, distances: Tensor, lam: float) -> Tensor:
    """L = CE + λ Σ_m d_m, with ``distances`` the (M,) per-modality feature distances."""
    return ce + lam * distances.sum()


def distills(stage_epoch: int, start: int = 1, end: int | None = None) -> bool:
    """Whether the student's ``stage_epoch`` (1-based) is inside the distillation window [start, end]."""
    return start <= stage_epoch and (end is None or stage_epoch <= end)


@register
class UMT(BalancingMethod):
    name = "umt"
    Config = UMTConfig
    paper = "UMT — Du et al., arXiv:2106.11059 (uni-modal teachers; with UME in ICML 2023, arXiv:2305.01233)"
    always_active = True  # the stages are the schedule; there is no window
    replaces_loss = True  # the teacher stages' loss is a teacher's own CE
    state = ("teachers",)  # + the teacher heads' weights (state_dict below)
    composable = ("UMT is a multi-stage scheme: uni-modal teacher stages with the method's own heads and loss, "
                  "then a student re-initialised to the trial's initial weights; an in-loop balancing method "
                  "would act on the teachers' stages too and be reset with the model")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.teachers: dict[str, dict[str, Tensor]] | None = None  # frozen encoder weights, from the student stage on
        self._teacher_nets: dict[str, nn.Module] = {}  # built from ``teachers`` when first needed
        self._stage: str | None = None
        self._onehot: dict[str, Tensor] = {}

    def bind(self, model: MultimodalModel) -> None:
        self._model = model
        self._initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._dims = {m: model.fusion.feature_dims[m] for m in self.modalities}
        self._heads = nn.ModuleDict({m: nn.Linear(d, self.num_classes) for m, d in self._dims.items()}).to(self.device)
        eye = torch.eye(len(self.modalities), device=self.device)
        self._onehot = {teacher_stage(m): eye[i] for i, m in enumerate(self.modalities)}
        self._onehot[STUDENT] = torch.zeros(len(self.modalities), device=self.device)
        self._modality_of = {teacher_stage(m): m for m in self.modalities}

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self._heads.parameters())

    @classmethod
    def min_epochs(cls, config: UMTConfig, modalities: list[str]) -> int:
        teachers = config.teacher_epochs
        return (len(modalities) if teachers is None else sum(teachers)) + 1

    def stages(self, epochs: int) -> tuple[Stage, ...]:
        teachers, student = stage_budgets(epochs, self.modalities, self.config.teacher_epochs)
        return (*(Stage(teacher_stage(m), e, fresh_optimizer=True) for m, e in zip(self.modalities, teachers, strict=True)),
                Stage(STUDENT, student, fresh_optimizer=True))

    # -- the schedule ----------------------------------------------------------------------------------
    def begin_epoch(self, ctx: StepContext) -> None:
        super().begin_epoch(ctx)
        self._stage = ctx.stage.name
        if self._stage == STUDENT and ctx.stage_epoch == 1:
            # Each encoder is as its teacher stage left it: freeze it as teacher m, then start the student
            # from the trial's initial weights (in place: the fresh optimizer holds these parameters).
            self.teachers = {m: {k: v.detach().clone() for k, v in ctx.model.encoders[m].state_dict().items()}
                             for m in self.modalities}
            self._teacher_nets = {}
            ctx.model.load_state_dict(self._initial)
        self.traces.add_many("stage", self._onehot[self._stage], self.modalities)

    def _teacher(self, m: str) -> nn.Module:
        net = self._teacher_nets.get(m)
        if net is None:
            net = copy.deepcopy(self._model.encoders[m])
            net.load_state_dict(self.teachers[m])
            net.requires_grad_(False)
            self._teacher_nets[m] = net
        return net.train(self.config.teacher_mode == "train")

    # -- per-batch hooks -----------------------------------------------------------------------------
    def before_forward(self, batch: Batch, ctx: StepContext) -> Batch:
        m = self._modality_of.get(ctx.stage.name)
        if m is not None:
            # A teacher stage: only its encoder runs (with grad); zeros for the rest (the loss never reads them).
            phi = ctx.model.encoders[m](batch.inputs[m])
            batch.features = {j: phi if j == m else phi.new_zeros((phi.shape[0], self._dims[j])) for j in self.modalities}
        return batch

    def loss(self, out: ModelOutput, batch: Batch, ctx: StepContext) -> Tensor:
        m = self._modality_of.get(ctx.stage.name)
        if m is not None:
            return F.cross_entropy(self._heads[m](out.features[m]), batch.labels)  # L^T_m: teacher m alone
        return F.cross_entropy(out.logits, batch.labels)  # the student's fusion objective

    def extra_loss(self, out: ModelOutput, batch: Batch, ctx: StepContext) -> Tensor | None:
        c = self.config
        if ctx.stage.name != STUDENT or not distills(ctx.stage_epoch, c.distill_start, c.distill_end):
            return None
        with torch.no_grad():
            target = {m: self._teacher(m)(batch.inputs[m]) for m in self.modalities}
        d = torch.stack([feature_distance(out.features[m], target[m], c.reduction) for m in self.modalities])
        self.traces.add_many("distill", d, self.modalities)
        return student_objective(torch.zeros((), device=d.device), d, c.lam)  # λ Σ_m d_m; the CE is loss()

    # -- evaluation -------------------------------------------------------------------------------
    def predict(self, model: MultimodalModel, out: ModelOutput) -> tuple[Tensor, dict[str, Tensor]] | None:
        if self._stage is None or self._stage == STUDENT:
            return None
        per_modality = {m: self._heads[m](out.features[m]) for m in self.modalities}
        # No multimodal model yet: a constant fused prediction (chance), so best_* never picks a teacher epoch.
        return torch.zeros_like(per_modality[self.modalities[0]]), per_modality

    # -- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["heads"] = {k: v.detach().cpu() for k, v in self._heads.state_dict().items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        state = dict(state)
        heads = state.pop("heads")
        super().load_state_dict(state)
        self._heads.load_state_dict(heads)
        self._teacher_nets = {}
