"""ReconBoost: alternating boosting of the modality learners, with a reconcilement regulariser.

Paper: Hua, Xu, Bao, Yang, Huang, "ReconBoost: Boosting Can Achieve Modality Reconcilement", ICML 2024,
arXiv:2405.09321. Official code: github.com/huacong/ReconBoost (``train.py``: CREMA-D / AVE /
ModelNet40; ``train_MSA.py``: the three-modality sets; ``models/dynamic_net.py``: the ensemble).
BalanceBenchmark (GeWu-Lab) re-runs it as ``balancemm/trainer/ReconBoost_trainer.py``.

**The paper body was not available to us** (only its abstract and summaries): every equation below is
read from the official code, and the mapping of code terms to the paper's names (the "reconcilement
regularisation", the "memory consolidation" and "global rectification" schemes of the abstract) is our
reading, not a quotation. What the abstract does say: one modality is updated at a time; its objective
is "dynamically adjusted with a reconcilement regularization against competition with the historical
models"; a KL-based reconcilement makes the update resemble Friedman's gradient boosting, except that
only the newest learner of each modality is kept; a memory-consolidation and a global-rectification
scheme are added.

The scheme (the code): learner m's logits z_m(x^m) (its encoder and its part of the head); the ensemble
is β · Σ_m z_m with a learnable scalar β (the code's ``boost_rate``). Training goes in stages; a stage
picks the next modality m in a fixed cyclic order and runs

1. **boosting** (code "phase 1", ``epochs_per_stage`` epochs): only learner m trains, against the
   others' ensemble F_{-m} = β · Σ_{j≠m} z_j, computed without gradient, with the per-sample loss
   (``boosting_loss`` in the code)

       ℓ_boost = −w1 · mean_c(y_c log σ(z_m)_c) + λ · mean_c(y_c σ(F_{-m})_c log σ(z_m)_c)
               = (w1 − λ σ(F_{-m})_y) / C · CE(z_m, y)

   (C classes, y one-hot; w1 the code's ``weight1``, λ its ``weight2``). The λ term is the
   reconcilement part: samples the other modalities already classify confidently weigh less, so
   learner m fits what the ensemble still gets wrong (the boosting residual). From the second stage
   on, + α · MSE(σ(z_m), σ(z_p)) with p the modality boosted in the previous stage (the code's
   ``ga_loss``, which we take to be the memory-consolidation term);
2. **global rectification** (code "phase 2", ``correct_epoch`` epochs): every learner and β train
   jointly on CE(β · Σ_m z_m, y).

Mapping onto the contract: the code alternates per epoch (whole passes over the data per phase), so
each phase is a :class:`Stage` (:meth:`ReconBoost.stages`): ``boost/<m>`` of ``boost_epochs`` epochs,
then ``rectify/<m>`` of ``rectify_epochs`` epochs, m cycling through the modalities in the model's
order, repeated until train.epochs is used up (the last stage is cut short if it does not fit). The
``substeps`` hook (per-batch alternation) would not be faithful to that granularity.

Equation → function:
* the stage plan: :func:`schedule`.
* F_{-m} = β Σ_{j≠m} z_j, and the prediction β Σ_m z_m: :func:`ensemble_logits`.
* per-sample weights (w1 − λ σ(F_{-m})_y) / C: :func:`boost_weights`; ℓ_boost: :func:`boosting_loss`
  (equal to the code's expression, tested); its λ part: :func:`reconcilement_term`.
* the consolidation term MSE(σ(z_m), σ(z_p)): :func:`consolidation_loss`.
* rectification CE(β Σ_m z_m, y): :meth:`ReconBoost.loss` in a ``rectify`` stage.
* prediction: :meth:`ReconBoost.predict` returns β Σ_m z_m and each learner's z_m, so the usual metric
  keys report ReconBoost's rule: ``val_acc``/``test_acc`` the ensemble's, ``val_acc/<m>`` learner m's
  (its own head under sum/late fusion, concat's exact split W^m φ^m + b/M).

Defaults and sources: w1 = ``ce_weight`` 5 and λ = ``lam`` 1 (official CREMA-D/AVE commands and
BalanceBenchmark; the code's three-modality script uses 1 and 0.25), α = ``alpha`` 0.5 (both codes),
β initialised to ``boost_rate`` 1 (official ``--boost_rate``; BalanceBenchmark initialises 0.01),
``boost_epochs`` = ``rectify_epochs`` = 1 (BalanceBenchmark's ``T_epochs``; the official commands use 4
and 4: set them for the official schedule — it needs 8 epochs per stage, 16 per round of two
modalities), a fresh optimizer for every phase (official: a new SGD per phase; ``fresh_optimizer``).

Departures of the code from (our reading of) the paper, and of BalanceBenchmark from the official code,
offered as hyperparameters:
* ``consolidation_grad`` (false = code): both codes compute the consolidation MSE on *detached* softmax
  outputs (``out_obj.detach()``, ``pre_out_obj.detach()``), so the term adds to the loss value but
  gives no gradient at all — in the official code it is inert. ``true`` (ours) lets its gradient
  reach learner m (the previous learner stays fixed), the reading under which it regularises.
* ``fresh_optimizer`` (true = official: new SGD for each phase; false = BalanceBenchmark: one optimizer
  throughout, momentum carried over). In the harness a fresh optimizer also restarts the LR schedule
  (train.lr_step) at every stage; the official code decays its LR globally (×0.1 every 30 stages on
  CREMA-D), so with a step schedule set ``fresh_optimizer=false``.
* ``boost_rate``: official 1.0, BalanceBenchmark 0.01 (β scales F_{-m}, i.e. it is the temperature of
  the others' confidence that weights the boosting loss, and of the rectification CE).
* ``boost_epochs`` / ``rectify_epochs``: official 4 / 4, BalanceBenchmark 1 / 1 (default: the harness
  trains in epochs, and 1 / 1 alternates several times within a 20-epoch trial). ``rectify_epochs=0``
  drops global rectification (its ablation); ``lam=0`` drops the reconcilement term; ``alpha=0`` the
  consolidation term.

Interpretations (ours):
* Learners: the model's encoders and each modality's part of the fusion head (``modality_logits``).
  The official code shares one MLP head between the modalities (``common_space``: Linear-ReLU-Linear on
  each φ^m), BalanceBenchmark one linear ``fc_out``; no harness fusion applies one head to each φ^m (the
  feature widths may differ), so member m is its own head under ``sum``/``late`` (recommended: exactly
  independent members) or concat's exact split W^m φ^m + b/M (the shared bias trains in every boosting
  stage, as the official shared head does). ``film``/``gated`` have no additive members and are refused.
* Round 0: the official code, without ``--use_pretrain``, starts from an empty ensemble (a constant, so
  the first boosting stage is plain weighted CE) and the first rectification sees only the learners
  added so far; with pretrained uni-modal learners (its recommended commands) every learner is in the
  ensemble from the start. Here every learner is in the ensemble from the start, at its initialisation
  (no pretraining), as in BalanceBenchmark.
* In a boosting stage the other encoders run without gradient but in training mode (the code's
  ``to_train()``): their BatchNorm statistics follow the batch, as in the code.
* The three-modality ``train_MSA.py`` picks a fixed cyclic order (text, visual, audio); here the order
  is the model's modality order, and "previous" is the one before in that cycle.
* The consolidation term starts with the second boosting stage (official: ``stage > 0``); BalanceBenchmark
  starts it with its second epoch, i.e. after every modality's first stage (moot by default: inert).
* Not offered: a consolidation target of learner m's own previous-round self (it would need a copy of
  the learner in the checkpoint; both codes compare against the previous stage's learner).
* No modulation window (``always_active``; the stages are the schedule): start_epoch/end_epoch other
  than the defaults are refused.

State: β (``boost_rate``) is a method parameter (:meth:`extra_parameters`, trained only in rectification
stages; its gradient is None while boosting) and is checkpointed through ``state``. The regulariser
needs nothing else: the previous stage's learner is the model's current learner of that modality.

Traces: ``trace/round/<m>`` (1.0 for the modality boosted this epoch, 0.0 otherwise; all 0 in a
rectification epoch), ``trace/rectify`` (1.0 in a rectification epoch), and in a boosting epoch of m:
``trace/boost_loss/<m>`` (mean ℓ_boost, the code's "Boosting Loss"), ``trace/recon/<m>`` (mean of its λ
part, ≤ 0), ``trace/ensemble_conf/<m>`` (mean σ(F_{-m})_y, the others' confidence that sets the weights),
``trace/consolidation/<m>`` (the MSE term, the code's "GA Loss"; from the second stage on);
``trace/boost_rate`` (β at the end of the epoch).
"""

from __future__ import annotations

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

__all__ = [
    "ReconBoost", "ReconBoostConfig", "boost_weights", "boosting_loss", "consolidation_loss", "ensemble_logits",
    "reconcilement_term", "schedule",
]


@dataclass(frozen=True)
class ReconBoostConfig(MethodConfig):
    ce_weight: float = hp(5.0, low=0.0, low_open=True,
                          doc="w1: weight of the learner's own CE in the boosting loss (code weight1; CREMA-D/AVE 5, MSA 1)")
    lam: float = hp(1.0, low=0.0, doc="λ: weight of the reconcilement term σ(F_-m)_y (code weight2; CREMA-D/AVE 1, MSA 0.25); "
                                      "0 drops it")
    alpha: float = hp(0.5, low=0.0, doc="α: weight of the consolidation MSE against the previous stage's learner (code 0.5)")
    consolidation_grad: bool = hp(False, doc="false (code): the MSE is on detached outputs and gives no gradient; "
                                             "true (ours): its gradient reaches the boosted learner")
    boost_epochs: int = hp(1, low=1, doc="epochs of each boosting stage (BalanceBenchmark 1; official epochs_per_stage 4)")
    rectify_epochs: int = hp(1, low=0, doc="epochs of global rectification after each boosting stage "
                                           "(BalanceBenchmark 1; official correct_epoch 4; 0: none)")
    boost_rate: float = hp(1.0, doc="initial β, the learnable scale of the ensemble (official 1.0; BalanceBenchmark 0.01)")
    fresh_optimizer: bool = hp(True, doc="a new optimizer (and LR schedule) for every stage (official); "
                                         "false: one optimizer throughout (BalanceBenchmark)")

    def extra_checks(self) -> list[Problem]:
        problems = super().extra_checks()
        if self.start_epoch != 1 or self.end_epoch is not None:
            problems.append(Problem("start_epoch" if self.start_epoch != 1 else "end_epoch", (
                "ReconBoost has no modulation window: its boosting and rectification stages are the whole "
                "schedule. Leave start_epoch/end_epoch unset; set boost_epochs/rectify_epochs.")))
        return problems


# ----------------------------------------------------------------------------- pure functions

def schedule(epochs: int, modalities: list[str], boost_epochs: int, rectify_epochs: int) -> list[tuple[str, str, int]]:
    """The stage plan as (phase, modality, epochs): boost m_1, rectify, boost m_2, rectify, … cycling through
    ``modalities`` until ``epochs`` are used; the last stage is cut to fit. ``rectify_epochs=0``: no
    rectification stages."""
    plan: list[tuple[str, str, int]] = []
    left, k = epochs, 0
    while left > 0:
        m = modalities[k % len(modalities)]
        for phase, n in (("boost", boost_epochs), ("rectify", rectify_epochs)):
            if n and left > 0:
                plan.append((phase, m, min(n, left)))
                left -= min(n, left)
        k += 1
    return plan


def ensemble_logits(member_logits: Tensor, boost_rate: Tensor | float, exclude: int | None = None) -> Tensor:
    """β · Σ_j z_j over the members (M, B, C), leaving out member ``exclude`` (F_{-m}) when given."""
    if exclude is not None:
        keep = [j for j in range(member_logits.shape[0]) if j != exclude]
        member_logits = member_logits[keep]
    return boost_rate * member_logits.sum(dim=0)


def boost_weights(ensemble: Tensor, labels: Tensor, ce_weight: float, lam: float) -> Tensor:
    """Per-sample weights (w1 − λ σ(F)_y) / C of the learner's CE; F is used without gradient."""
    p_true = ensemble.detach().softmax(dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
    return (ce_weight - lam * p_true) / ensemble.shape[1]


def boosting_loss(member: Tensor, ensemble: Tensor, labels: Tensor, ce_weight: float, lam: float) -> Tensor:
    """ℓ_boost per sample (B,): −w1 mean_c(y log σ(z)) + λ mean_c(y σ(F) log σ(z)) = weights · CE(z, y)."""
    ce = F.cross_entropy(member, labels, reduction="none")
    return boost_weights(ensemble, labels, ce_weight, lam) * ce


def reconcilement_term(member: Tensor, ensemble: Tensor, labels: Tensor, lam: float) -> Tensor:
    """The λ part of ℓ_boost per sample (B,): λ mean_c(y σ(F) log σ(z)) = −λ σ(F)_y CE(z, y) / C (≤ 0)."""
    return boosting_loss(member, ensemble, labels, 0.0, lam)


def consolidation_loss(member: Tensor, previous: Tensor, *, grad: bool = False) -> Tensor:
    """MSE(σ(z_m), σ(z_p)) averaged over samples and classes; z_p never gets a gradient, z_m only with
    ``grad`` (the code detaches both, so there the term has no gradient)."""
    current = member.softmax(dim=1) if grad else member.detach().softmax(dim=1)
    return F.mse_loss(current, previous.detach().softmax(dim=1))


# ----------------------------------------------------------------------------- the method

@register
class ReconBoost(BalancingMethod):
    name = "reconboost"
    Config = ReconBoostConfig
    paper = "ReconBoost — Hua et al., ICML 2024, arXiv:2405.09321"
    always_active = True  # the stages are the schedule; there is no window
    replaces_loss = True
    state = ("boost_rate",)
    composable = ("ReconBoost is a staged training scheme (one modality boosted at a time with its own loss, "
                  "then joint rectification of a learnable-scale ensemble); an in-loop balancing method has no "
                  "joint step to modulate in it")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        cfg: ReconBoostConfig = self.config
        self._beta = nn.Parameter(torch.tensor(float(cfg.boost_rate), device=self.device))
        self._onehot: dict[str, Tensor] = {}

    @property
    def boost_rate(self) -> Tensor:
        return self._beta.detach()

    @boost_rate.setter
    def boost_rate(self, value: Tensor) -> None:
        with torch.no_grad():
            self._beta.copy_(torch.as_tensor(value, dtype=self._beta.dtype))

    def bind(self, model: MultimodalModel) -> None:
        if len(self.modalities) < 2:
            raise ConfigError([Problem("dataset.modalities", (
                f"ReconBoost alternates between two or more modalities, got {self.modalities}; "
                "use method=unimodal for one."))])
        if not model.fusion.additive:
            raise ConfigError([Problem("model.fusion", (
                f"is '{model.fusion.name}', which mixes modalities multiplicatively: it has no per-modality "
                "learner whose logits add up to the prediction, so ReconBoost cannot boost it. Use "
                "model.fusion=sum (independent learners; recommended), late, or concat."))])
        eye = torch.eye(len(self.modalities), device=self.device)
        self._onehot = {m: eye[i] for i, m in enumerate(self.modalities)}
        self._zeros = torch.zeros(len(self.modalities), device=self.device)

    def extra_parameters(self) -> list[nn.Parameter]:
        return [self._beta]

    def stages(self, epochs: int) -> tuple[Stage, ...]:
        cfg: ReconBoostConfig = self.config
        plan = schedule(epochs, self.modalities, cfg.boost_epochs, cfg.rectify_epochs)
        return tuple(Stage(f"{phase}/{m}", n, fresh_optimizer=cfg.fresh_optimizer) for phase, m, n in plan)

    @staticmethod
    def _phase(ctx: StepContext) -> tuple[str, str]:
        phase, m = ctx.stage.name.split("/", 1)
        return phase, m

    def begin_epoch(self, ctx: StepContext) -> None:
        super().begin_epoch(ctx)
        phase, m = self._phase(ctx)
        boosting = phase == "boost"
        self.traces.add_many("round", self._onehot[m] if boosting else self._zeros, self.modalities)
        self.traces.add("rectify", torch.tensor(0.0 if boosting else 1.0, device=self.device))

    def end_epoch(self, ctx: StepContext) -> dict[str, float]:
        self.traces.add("boost_rate", self.boost_rate)
        return super().end_epoch(ctx)

    def before_forward(self, batch: Batch, ctx: StepContext) -> Batch:
        phase, m = self._phase(ctx)
        if phase != "boost":
            return batch
        # Only learner m trains: its feature with grad; the others' without (in training mode, as the code).
        features = {}
        for j in self.modalities:
            if j == m:
                features[j] = ctx.model.encoders[j](batch.inputs[j])
            else:
                with torch.no_grad():
                    features[j] = ctx.model.encoders[j](batch.inputs[j])
        batch.features = features
        return batch

    def _members(self, model: MultimodalModel, features: dict[str, Tensor]) -> Tensor:
        logits = model.modality_logits(features)
        return torch.stack([logits[m] for m in self.modalities])

    def loss(self, out: ModelOutput, batch: Batch, ctx: StepContext) -> Tensor:
        cfg: ReconBoostConfig = self.config
        phase, m = self._phase(ctx)
        if phase == "rectify":
            # Global rectification: every learner and β on CE(β Σ_m z_m, y).
            return F.cross_entropy(ensemble_logits(self._members(ctx.model, out.features), self._beta), batch.labels)
        i = self.modalities.index(m)
        own = ctx.model.modality_logits(out.features)  # the others' features carry no gradient (before_forward)
        member = own[m]
        with torch.no_grad():
            others = torch.stack([own[j] for j in self.modalities]).detach()
            rest = ensemble_logits(others, self._beta.detach(), exclude=i)
        per_sample = boosting_loss(member, rest, batch.labels, cfg.ce_weight, cfg.lam)
        loss = per_sample.mean()
        with torch.no_grad():
            self.traces.add(f"boost_loss/{m}", loss)
            self.traces.add(f"recon/{m}", reconcilement_term(member, rest, batch.labels, cfg.lam).mean())
            self.traces.add(f"ensemble_conf/{m}", rest.softmax(1).gather(1, batch.labels.view(-1, 1)).mean())
        if ctx.epoch > cfg.boost_epochs:  # from the second boosting stage on (the code: stage > 0)
            previous = own[self.modalities[(i - 1) % len(self.modalities)]]
            mse = consolidation_loss(member, previous, grad=cfg.consolidation_grad)
            self.traces.add(f"consolidation/{m}", mse)
            loss = loss + cfg.alpha * mse
        return loss

    def predict(self, model: MultimodalModel, out: ModelOutput) -> tuple[Tensor, dict[str, Tensor]]:
        members = self._members(model, out.features)
        return ensemble_logits(members, self.boost_rate), {m: members[i] for i, m in enumerate(self.modalities)}
