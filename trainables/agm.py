"""AGM: Adaptive Gradient Modulation.

Paper: Li, Li, Hu, Lei, Li, Zhou, "Boosting Multi-modal Model Performance with Adaptive Gradient
Modulation", ICCV 2023, arXiv:2308.07686. Official code: github.com/lihong2303/AGM_ICCV2023 (read at
5a65542; ``run/CREMAD_main.py``, ``model/CREMAD_net.py``, ``run/URFunny_main.py``, ``model/URFunny_net.py``).

Each step AGM splits the fused prediction into Shapley mono-modal responses ψ_m, scores each with a
cross-entropy s_m, compares the modalities' relative standing in this batch (r_m) with their standing
averaged over all iterations so far (r̄_m), and scales the gradient of modality m by
κ_m = exp(α·(r̄_m − r_m)): a modality that currently does better than its running standing is slowed
down (κ < 1), one that lags is *amplified* (κ > 1; unlike OGM, κ is not capped at 1).

Sources. The paper's body could not be read here (only its abstract); Eq. 1 and Eq. 3 are checked
against the authors' answers in the code's issues #9/#14, everything after the responses is rebuilt
from the official code, whose line numbers are cited below.

Equation → function:
* Eq. 1 (Shapley response ψ_m(x) = Σ_{S ⊆ 𝓜∖{m}} |S|!(M−|S|−1)!/M!·[V(S∪{m}) − V(S)]) and Eq. 3 (its
  M = 2 form ½[f(x1,x2) − f(0,x2)] + ½f(x1,0)): :func:`shapley_weights` (the (M, S) coefficients of
  the subset values, once per trial) and :func:`shapley_responses` (one contraction of the (S, B, C)
  subset logits), for any M. M = 3 reproduces ``URFunny_net.py:13-31``.
* Mono-modal score s_m = −(1/B)·Σ_i log softmax(ψ_m(x_i))_{y_i}, p floored at 1e-8 (CREMAD_main.py:130-143):
  :func:`response_score`.
* Ratio r_m = exp(M/(M−1)·(s̄ − s_m)), s̄ the mean over modalities (CREMAD_main.py:145-146 for M = 2,
  URFunny_main.py:117-121 for M = 3): :func:`modality_ratio`. r_m > 1: m currently fits better than
  the others on average.
* Running average S_m(t) = S_m(t−1)·(t−1)/t + s_m(t)/t, S(0) = 0 — a cumulative arithmetic mean, not an
  EMA (CREMAD_main.py:154-155): :func:`running_mean`. The target ratio r̄_m is :func:`modality_ratio`
  of S(t−1), i.e. of the average *before* this batch (CREMAD_main.py:148-149).
* Coefficient κ_m = exp(α·min(r̄_m − r_m, cap)) (CREMAD_main.py:151-152; cap 10 there, 7 in
  URFunny_main.py:128-130, none for AV-MNIST, AVE, MOSEI): :func:`modulation_coefficient`.

Sign, checked against the official code: r_a = exp(s_v − s_a) and κ_a = exp(α·(r̄_a − r_a)), so with
s a loss a modality that beats its running standing gets κ < 1. BalanceBenchmark's re-implementation
(``balancemm/trainer/AGM_trainer.py:571-572``) computes exp(M/(M−1)·(s_m − s̄)), the inverse ratio,
which boosts the modality that is currently ahead; we follow the official code.

Where it acts (a departure from the official mechanism, stated). The official code returns Σ_m ψ_m
(≡ f(x)) and multiplies the gradient flowing back into each ψ_m by κ_m with a backward hook
(CREMAD_net.py:42-72). Here ``modulate_gradients`` runs after ``loss.backward()`` and multiplies the
gradients of modality m's encoder (``model.modality_parameters(heads=False)``) by κ_m, before the
optimizer step. Compared with that backward rule applied to our responses:
* the encoder gradients are exact for additive fusions (concat, sum, late: logits = Σ_m c_m(φ^m),
  each c_m linear in its own encoder output φ^m): ψ_m then depends on φ^m only through c_m(φ^m) and
  no other ψ_k depends on φ^m, so ∂L/∂φ^m is multiplied by κ_m and nothing else. For FiLM and gated
  fusion every ψ_k depends on every φ^m (the official rule would give encoder m the mixture
  Σ_k κ_k·∂ψ_k/∂φ^m), so scaling by κ_m is an approximation there;
* the fusion head is left unmodulated, where the official rule also scales modality m's block of the
  head by κ_m and a shared bias by the mean of κ;
* with ``padding: inputs`` the official padded passes (eval mode, with grad) also send gradients into
  encoder m through f(0^m, ·) whenever encoder m maps a zero input to a non-zero feature (ReLU/BN
  biases); those cross terms are absent here (our padded passes run under no_grad, κ only).
The loss is the ordinary CE of the fused logits, as in the code (CREMAD_main.py:69).

Choices, as hyperparameters:
* ``padding: features`` (default, mmtune's rule): V(S) is the fusion of the encoder features with the
  absent modalities' features set to zero, ``model.subset_logits`` — one fusion call on S·B rows, no
  extra encoder pass. For additive fusions ψ_m is then the modality's own component with the biases
  shared out equally (concat: exactly W^m·φ^m + b/M, OPM/OGM's Eq. 6 split). ``padding: inputs`` is the official code: the absent
  modalities' *raw inputs* are zeroed (``torch.zeros_like``, token id 0 for token inputs) and the
  whole model, encoders included, is re-run per subset — here all subsets in one batched call, under
  no_grad and in eval mode as the code's padded passes (BN on running statistics, dropout off), while
  V(𝓜) is the fusion of this step's train-mode features (the code's train-mode full pass). Under
  ``inputs`` an encoder that does not map 0 to 0 shifts every response; the two rules differ.
* ``empty: zero`` (default, the official code): V(∅) := 0, so the S = ∅ term of Eq. 1 contributes
  V({m}) and nothing is subtracted; then Σ_m ψ_m = f(x) exactly (efficiency). ``empty: fusion``
  subtracts the prediction with every modality absent, V(∅) = f(0,…,0) (features: the fusion of
  all-zero features, i.e. its biases; inputs: the model on all-zero inputs), i.e. ψ_m − f(∅)/M — the
  code's ``m_a_mc`` "true baseline", which the code computes for analysis only.
* ``alpha`` α: 1.0 is the code's default (``--alpha``); the authors' per-dataset values (issues #3, #5,
  #10; README) are AV-MNIST 2.5, CREMA-D 1.5, UR-Funny 4.0. BalanceBenchmark uses 0.1.
* ``cap``: the clamp of r̄ − r before the exponential; null (default) = none, as AV-MNIST, AVE and
  MOSEI; 10 on CREMA-D, 7 on UR-Funny.
* ``history: all`` (default, the code): the running average counts every training iteration from the
  first epoch, also those before ``start_epoch`` (the code updates it on every iteration; here the
  hook runs before the window, scoring only — with ``padding: inputs`` that costs the padded passes
  there too). ``history: window``: only the modulated iterations count, and nothing runs before.
  Either way t is the number of iterations averaged so far (the code's global
  (epoch−1)·n_batches + step + 1 when ``history: all``). The average is carried across epochs and
  checkpointed.

Departures from the official code, stated:
* κ = 1 outside ``[start_epoch, end_epoch]``. The official hooks stay registered after the window but
  ``update_scale`` is only called inside it, so the last in-window κ keeps scaling every later step
  (a bug; the authors modulate over the whole run, issues #3, #10, so it rarely shows).
* Scores come from ``log_softmax`` (the code takes ``log(softmax)``; same value, fewer overflows),
  floored like CREMA-D at p = 1e-8 (UR-Funny has no floor).
* Gradient clipping is not part of the method: the code clips to norm 1 only when some fc weight
  gradient leaves [−1, 1] (5 on UR-Funny); use ``train.grad_clip`` for an unconditional clip.
* Not offered: AV-MNIST's off-by-one average (S·t/(t+1) + s/(t+1)), MOSEI's summed loss and
  after-backward update, the analysis-only quantities (cooperation term, competition strength).

Traces (means over the epoch's modulated steps): ``trace/kappa/<m>`` (κ_m), ``trace/ratio/<m>``
(r_m), ``trace/score/<m>`` (s_m).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmtune.config import hp
from mmtune.data.base import Batch
from mmtune.engine.method import BalancingMethod, MethodConfig, StepContext
from mmtune.engine.registry import register
from mmtune.errors import ConfigError, Problem
from mmtune.models.multimodal import ModelOutput, MultimodalModel

__all__ = [
    "AGM", "AGMConfig", "shapley_weights", "shapley_responses", "response_score", "modality_ratio",
    "running_mean", "modulation_coefficient",
]

# The code floors p(y | ψ_m) at 1e-8 (CREMAD_main.py:133-141), i.e. caps each sample's score here.
MAX_SAMPLE_SCORE = -math.log(1e-8)


@dataclass(frozen=True)
class AGMConfig(MethodConfig):
    alpha: float = hp(1.0, low=0.0, doc="modulation strength α (code default 1.0; AV-MNIST 2.5, CREMA-D 1.5, UR-Funny 4.0)")
    cap: float | None = hp(None, doc="clamp of r̄ − r before exp (null: none; CREMA-D code 10, UR-Funny 7)")
    padding: str = hp("features", choices=("features", "inputs"),
                      doc="absent modality = zero feature before fusion (mmtune) or zero raw input, re-encoded (code)")
    empty: str = hp("zero", choices=("zero", "fusion"), doc="V(∅) = 0 (code) or the prediction with no modality present")
    history: str = hp("all", choices=("all", "window"),
                      doc="running average over every iteration (code) or only the modulated ones")


# -- Eq. 1 / Eq. 3 ------------------------------------------------------------------------------
def shapley_weights(subsets: Sequence[Sequence[str]], modalities: Sequence[str], *, empty: str = "zero") -> Tensor:
    """The (M, S) float64 matrix W with ψ_m = Σ_j W[m, j]·V(subsets[j]) (Eq. 1).

    Every coalition S ⊆ 𝓜∖{m} adds w(|S|) = |S|!(M−|S|−1)!/M! to V(S ∪ {m}) and subtracts it from V(S).
    ``empty: zero`` (the code) takes V(∅) = 0, so nothing is subtracted for S = ∅ and the empty subset
    need not be among ``subsets``; ``empty: fusion`` needs it.
    """
    m_count = len(modalities)
    index = {frozenset(s): j for j, s in enumerate(subsets)}
    weights = torch.zeros(m_count, len(subsets), dtype=torch.float64)
    for i, m in enumerate(modalities):
        others = [k for k in modalities if k != m]
        for size in range(m_count):
            w = math.factorial(size) * math.factorial(m_count - size - 1) / math.factorial(m_count)
            for coalition in map(frozenset, combinations(others, size)):
                weights[i, _column(index, coalition | {m})] += w
                if coalition or empty == "fusion":
                    weights[i, _column(index, coalition)] -= w
    return weights


def _column(index: dict[frozenset[str], int], subset: frozenset[str]) -> int:
    if subset not in index:
        raise ValueError(f"the subset values lack the coalition {sorted(subset) or '∅'}")
    return index[subset]


def shapley_responses(subset_logits: Tensor, weights: Tensor) -> Tensor:
    """ψ (M, B, C) from the subset values V (S, B, C) and :func:`shapley_weights` (M, S): one contraction."""
    return torch.einsum("ms,sbc->mbc", weights.to(subset_logits.dtype), subset_logits)


# -- scores, ratios, coefficient ------------------------------------------------------------------
def response_score(responses: Tensor, labels: Tensor) -> Tensor:
    """s_m = batch mean of −log softmax(ψ_m)_y, p floored at 1e-8 as the code: (M, B, C) → (M,)."""
    log_p = F.log_softmax(responses.float(), dim=-1)
    picked = log_p.gather(2, labels.view(1, -1, 1).expand(log_p.shape[0], -1, 1)).squeeze(2)
    return (-picked).clamp(max=MAX_SAMPLE_SCORE).mean(dim=1)


def modality_ratio(scores: Tensor) -> Tensor:
    """r_m = exp(M/(M−1)·(mean_k s_k − s_m)) (M = 2: r_a = exp(s_v − s_a)); > 1 where m fits better."""
    m_count = scores.shape[0]
    return torch.exp(m_count / (m_count - 1) * (scores.mean() - scores))


def running_mean(previous: Tensor, scores: Tensor, t: int) -> Tensor:
    """S(t) = S(t−1)·(t−1)/t + s(t)/t for the t-th averaged iteration (t >= 1), as the code writes it."""
    return previous * ((t - 1) / t) + scores / t


def modulation_coefficient(target_ratio: Tensor, ratio: Tensor, alpha: float, cap: float | None = None) -> Tensor:
    """κ_m = exp(α·min(r̄_m − r_m, cap)); no clamp when ``cap`` is None."""
    gap = target_ratio - ratio
    if cap is not None:
        gap = gap.clamp(max=cap)
    return torch.exp(alpha * gap)


# -- the strategy ---------------------------------------------------------------------------------
@register
class AGM(BalancingMethod):
    name = "agm"
    Config = AGMConfig
    paper = "AGM — Li et al., ICCV 2023, arXiv:2308.07686"
    # Before the window the running average still counts iterations (history: all, as the code);
    # modulate_gradients checks ctx.modulating itself and leaves gradients alone outside the window.
    always_active = True
    state = ("score_mean", "count")  # S(t) of the running average and t, carried across epochs

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.score_mean: Tensor = torch.zeros(len(self.modalities), device=self.device)
        self.count = 0

    def bind(self, model: MultimodalModel) -> None:
        cfg: AGMConfig = self.config
        if len(self.modalities) < 2:
            raise ConfigError([Problem("dataset.modalities", (
                f"AGM balances two or more modalities, got {self.modalities}; use method=joint or unimodal."))])
        # V(∅) = 0 under empty: zero, so the empty subset is never evaluated.
        self.subsets = [s for s in model.all_subsets() if s or cfg.empty == "fusion"]
        self.weights = shapley_weights(self.subsets, self.modalities, empty=cfg.empty).to(self.device, torch.float32)
        self.groups = model.modality_parameters(heads=False)

    @torch.no_grad()
    def subset_values(self, model: MultimodalModel, out: ModelOutput, batch: Batch) -> Tensor:
        """V(S) for every evaluated subset, (S, B, C), by the ``padding`` rule; nothing joins the graph."""
        if self.config.padding == "features":
            return model.subset_logits(out.features, self.subsets)
        full = tuple(self.modalities)
        padded = [s for s in self.subsets if s != full]
        inputs = {m: torch.cat([x if m in s else torch.zeros_like(x) for s in padded]) for m, x in batch.inputs.items()}
        was_training = model.training
        model.eval()  # the code's padded passes: BN on running statistics, dropout off
        try:
            logits = model(inputs).logits.view(len(padded), len(batch), -1)
        finally:
            model.train(was_training)
        values = list(logits.unbind(0))
        values.insert(self.subsets.index(full), model.subset_logits(out.features, [full])[0])
        return torch.stack(values)

    def modulate_gradients(self, model: MultimodalModel, out: ModelOutput, batch: Batch, ctx: StepContext) -> None:
        cfg: AGMConfig = self.config
        if not ctx.modulating and (cfg.history == "window" or ctx.epoch >= cfg.start_epoch):
            return  # after the window, or before it when only the window is averaged: κ = 1, nothing to update
        with torch.no_grad():
            psi = shapley_responses(self.subset_values(model, out, batch), self.weights)
            scores = response_score(psi, batch.labels)
            target = modality_ratio(self.score_mean)  # r̄ from S(t−1): before this batch
            self.count += 1
            self.score_mean = running_mean(self.score_mean, scores, self.count)
            if not ctx.modulating:
                return
            ratio = modality_ratio(scores)
            kappa = modulation_coefficient(target, ratio, cfg.alpha, cfg.cap)
        for i, m in enumerate(self.modalities):
            grads = [p.grad for p in self.groups[m] if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, kappa[i])
        self.traces.add_many("kappa", kappa, self.modalities)
        self.traces.add_many("ratio", ratio, self.modalities)
        self.traces.add_many("score", scores, self.modalities)
