"""Valuation: sample-level and modality-level modality valuation with re-sampling of low contributors.

Paper: Wei, Feng, Wang, Hu, "Enhancing Multimodal Cooperation via Sample-level Modality Valuation",
CVPR 2024, arXiv:2309.06255. Official code: github.com/GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation
(read at 7ed12b0: ``code/sample_level.py`` / ``code/modality_level.py`` ``execute_modulation``,
``code/datasets/dataloader.py`` ``AV_KS_Dataset_sample_level`` / ``AV_KS_Dataset_modality_level``,
``code/models/models.py`` ``exec_drop`` and the ``drop`` argument of ``forward``; "the code" below).
Re-implemented in GeWu-Lab/BalanceBenchmark (``balancemm/trainer/Sample_trainer.py``,
``balancemm/evaluation/modalitys.py`` ``Calculate_Shapley_Sample``, ``balancemm/datasets/__init__.py``
``create_dataset_sample_level`` / ``create_dataset_modality_level``; "BB" below).

Sources. Only the paper's abstract (and the official README) could be read here; its body was not
reachable, so no equation numbers are cited and nothing below quotes the paper: the quantities are
the abstract's (a per-sample, per-modality contribution by Shapley value; re-sampling that targets
the low-contributing modality, at sample level — "fine-grained" — or at modality level — "coarse but
efficient") made concrete by the official code, whose lines they follow.

The quantities:
* Value of a modality subset S for a sample x (the code): v(S) = w(S) · 1[argmax f(x_S) = y], v(∅) = 0,
  with f(x_S) the fused prediction when the modalities outside S are absent. The code's weights are
  w(full set) = 2 and w(single modality) = 1 for its two modalities, i.e. w(S) = |S| (``value: size``;
  |S| for M > 2 is our generalisation); BB uses w(S) = 1 (``value: correct``).
* Contribution (Shapley value) of modality m for sample x:
  φ_m(x) = Σ_{S ⊆ 𝓜∖{m}} |S|! (M − |S| − 1)! / M! · (v(S ∪ {m}) − v(S)).
  Two modalities with ``value: size`` (the code): φ_a = (v_a + 2·c_av − v_v) / 2 ∈ {−0.5, 0, 0.5, 1, 1.5};
  φ_a + φ_v = 2·c_av, so each modality's fair share of a correct prediction is 1.
* Sample-level re-sampling (the code's thresholds): each training sample x gets, for each modality m,
  n_m(x) copies in which every other modality is absent (only m is present), with
  n = 1 if high < φ_m < upper, 2 if low < φ_m < high, 3 if φ_m < low, else 0
  (upper, high, low) = (1, 0.4, −0.1); the bounds are strict, as in the code (φ = 1 or above: no copy).
* Modality-level re-sampling (the code): draw Z, ⌊part_ratio·N⌋ training samples (with replacement,
  as ``np.random.choice``); the modality's contribution φ̄_m = mean over Z of φ_m; its gap
  g_m = 1 − φ̄_m; the re-sample fraction p = h(|g_a − g_v| · 2/3) with h(d) = α·d (``func: linear``),
  tanh(α·d) (``tanh``), α·d^1.5 (``square``); ⌊p·N⌋ samples are drawn (with replacement) and each gets
  one copy in which only the modality with the larger gap (the low contributor) is present.

Equation → function:
* v(S): :func:`subset_values`; the Shapley weights as a matrix over the subsets: :func:`shapley_matrix`;
  φ: :func:`shapley_values`; the valuation pass over the training split: :meth:`Valuation.valuate`.
* n_m(x): :func:`sample_copies`; the copy plan from the counts: :func:`sample_plan`.
* g_m: :func:`modality_gaps`; p: :func:`resample_fraction`; which modalities a modality-level copy
  keeps: :func:`modality_copy_keep`.

How it runs (contract v3): the copy plan is a list of (training index, modalities kept) pairs.
:meth:`Valuation.epoch_indices` returns 0..N−1 followed by the copies' indices into ``ctx.train``;
the loop shuffles and batches them, and :meth:`Valuation.before_forward` reads ``Batch.index`` (a
row's position in that tensor: ≥ N is a copy) to make the absent modalities of each copy absent.

Interpretations and departures (offered as hyperparameters where cheap):
* Absent modality (``absent``): ``features`` (default, the code: ``exec_drop`` zeros the encoder
  output for the valuation and the ``drop`` argument zeros it for the copies; here
  ``model.subset_logits`` and ``Batch.drop``) or ``inputs`` (BB: the modality's input tensor is zeroed
  before the encoder, for the valuation — one forward pass per non-empty subset — and for the copies).
  v(∅) = 0 in both (the code and BB never evaluate the empty subset).
* Schedule: the code trains ``warmup`` = 5 plain epochs, then values the whole training split after
  every epoch and trains the next epoch on the re-sampled set. Here the valuation runs at the start
  of each epoch in the window (the same model state: after the previous epoch), every ``every`` epochs
  (default 1, the code), and ``start_epoch`` = 6 is the code's warm-up of 5 epochs (BB's
  ``modulation_starts: 1`` is start_epoch = 2). After ``end_epoch`` the epochs are plain.
* The valuation passes over the training samples only (``ctx.train``: never validation or test), in
  eval mode and without gradient, in order (the code passes with its training augmentation).
  Modality level: only Z is valued (the code values the whole split and averages over Z; the same
  estimate at a part_ratio of the cost — the efficiency the paper's modality level is for).
* M > 2 modalities, modality level: the gap difference is the mean over unordered pairs of |g_m − g_k|
  (``gap_sum: pairs``, equal to the code's |g_a − g_v| for two); BB's Σ over ordered pairs / (M − 1)
  is ``gap_sum: ordered`` (2·|g_a − g_v| for two modalities: twice the code's). Each drawn sample gets
  one copy keeping only the largest-gap modality (``copy_rule: weakest``, the code; on a tie the later
  modality, as the code's ``gap_a > gap_v``); BB's rule is ``copy_rule: ranked``: one copy per modality
  m keeping every modality whose gap is at least m's (for two modalities: a copy of the weak modality
  alone plus a plain copy).
* BB departures not offered: BB ignores α in the linear rule (its config's alpha = 0.5 is unused);
  BB re-samples only the first N − N mod 64 samples; BB's valuation cache is filled on the first
  batch only (``res_cache`` is never reset), which reuses that batch's correctness for every batch.
* Copies train with the same loss as the originals (cross-entropy of the fused logits); the loss is
  the mean over the epoch's re-sampled set, as in the code (one DataLoader over originals + copies).
* Not composable: the method is a data re-sampling scheme (its own epoch_indices, and per-copy
  absent modalities set in before_forward); a per-batch method composed with it would see copies in
  which all but one modality is absent, and an OPM-style drop mask would be silently multiplied in.

Traces: ``trace/contribution/<m>`` (mean φ_m over the valued samples, at each valuation),
``trace/resampled/<m>`` (fraction of the training samples with at least one copy for m),
``trace/copies/<m>`` (copies for m per training sample; the epoch has N·(1 + Σ_m copies/m) samples),
the last two every epoch in the window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import combinations
from typing import Any

import torch
from torch import Tensor

from mmtune.config import hp
from mmtune.data.base import Batch
from mmtune.engine.method import BalancingMethod, MethodConfig, StepContext
from mmtune.engine.registry import register
from mmtune.errors import ConfigError, Problem
from mmtune.models.multimodal import MultimodalModel

__all__ = [
    "Valuation", "ValuationConfig", "subset_values", "shapley_matrix", "shapley_values", "sample_copies",
    "sample_plan", "modality_gaps", "resample_fraction", "modality_copy_keep",
]


@dataclass(frozen=True)
class ValuationConfig(MethodConfig):
    start_epoch: int = hp(6, low=1, doc="first re-sampled epoch, 1-based: after the code's warm-up of 5 plain epochs")
    level: str = hp("sample", choices=("sample", "modality"),
                    doc="sample: copies per sample by its own φ; modality: a share of copies for the low-contributing modality")
    every: int = hp(1, low=1, doc="value and re-plan every this many epochs of the window (code: every epoch)")
    absent: str = hp("features", choices=("features", "inputs"),
                     doc="an absent modality's encoder feature (code) or its input tensor (BalanceBenchmark) is zeroed")
    value: str = hp("size", choices=("size", "correct"),
                    doc="v(S) = |S|·1[correct] (code: 2 for both, 1 for one) or 1[correct] (BalanceBenchmark)")
    upper: float = hp(1.0, doc="sample level: no copy when φ ≥ upper (code 1)")
    high: float = hp(0.4, doc="sample level: 1 copy when high < φ < upper, 2 when low < φ < high (code 0.4)")
    low: float = hp(-0.1, doc="sample level: 3 copies when φ < low (code −0.1)")
    part_ratio: float = hp(0.2, low=0.0, high=1.0, low_open=True, doc="modality level: |Z| / N, the valued share (code 0.2)")
    alpha: float = hp(1.0, low=0.0, doc="modality level: α of the re-sample fraction (code 1)")
    func: str = hp("linear", choices=("linear", "tanh", "square"), doc="modality level: p = α·d, tanh(α·d) or α·d^1.5 (code)")
    gap_sum: str = hp("pairs", choices=("pairs", "ordered"),
                      doc="modality level, M > 2: mean |g_m − g_k| over pairs (= code for 2) or BalanceBenchmark's ordered sum / (M−1)")
    copy_rule: str = hp("weakest", choices=("weakest", "ranked"),
                        doc="modality level: one copy of the largest-gap modality alone (code) or one per modality (BalanceBenchmark)")

    def extra_checks(self) -> list[Problem]:
        problems = super().extra_checks()
        if not self.low < self.high < self.upper:
            problems.append(Problem("high", f"the sample-level bounds need low < high < upper, got low={self.low}, "
                                            f"high={self.high}, upper={self.upper}."))
        return problems


# ----------------------------------------------------------------------------- pure functions

def subset_values(correct: Tensor, sizes: Tensor, value: str = "size") -> Tensor:
    """v(S) per subset and sample, (S, N): w(S)·1[correct], w = |S| (``size``) or 1 (``correct``); v(∅) = 0.

    ``correct`` (S, N) bool, ``sizes`` (S,) the subsets' sizes."""
    weight = sizes.float() if value == "size" else torch.ones(sizes.shape, device=sizes.device)
    weight = torch.where(sizes > 0, weight, torch.zeros_like(weight))
    return correct.float() * weight.unsqueeze(1)


def shapley_matrix(subsets: Sequence[Sequence[int]], m: int) -> Tensor:
    """W (M, S) with φ = W · v: W[i, S ∪ {i}] += ω(|S|), W[i, S] −= ω(|S|) for every S ∌ i,
    ω(s) = s! (M − s − 1)! / M!. ``subsets`` must hold every subset of range(m) (any order)."""
    position = {frozenset(s): j for j, s in enumerate(subsets)}
    if len(position) != 2 ** m:
        raise ValueError(f"need all {2 ** m} subsets of {m} modalities, got {len(position)}")
    w = torch.zeros(m, len(subsets))
    for s, j in position.items():
        for i in range(m):
            if i in s:
                continue
            omega = math.factorial(len(s)) * math.factorial(m - len(s) - 1) / math.factorial(m)
            w[i, position[s | {i}]] += omega
            w[i, j] -= omega
    return w


def shapley_values(values: Tensor, weights: Tensor) -> Tensor:
    """φ (M, N) = W (M, S) · v (S, N). With integer values v (both value rules) φ is a multiple of 1/M!:
    it is rounded to one, so that a fair share is exactly 1 (1/3 + 1/6 + 1/6 + 1/3 is not 1 in floats)
    and the strict bounds of :func:`sample_copies` see the exact value."""
    scale = float(math.factorial(weights.shape[0]))
    return torch.round((weights.to(values) @ values) * scale) / scale


def sample_copies(phi: Tensor, upper: float = 1.0, high: float = 0.4, low: float = -0.1) -> Tensor:
    """Copies per modality and sample (int64, φ's shape): 1 if high < φ < upper, 2 if low < φ < high,
    3 if φ < low, else 0 (the code's strict bounds)."""
    one = (phi > high) & (phi < upper)
    two = (phi > low) & (phi < high)
    three = phi < low
    return one.long() + 2 * two.long() + 3 * three.long()


def sample_plan(copies: Tensor) -> tuple[Tensor, Tensor]:
    """(index (K,), owner (K,)): the training index and the modality of each copy, from counts (M, N);
    modality-major, each sample's copies adjacent."""
    m, n = copies.shape
    flat = copies.reshape(-1)
    index = torch.arange(n, device=copies.device).repeat(m).repeat_interleave(flat)
    owner = torch.arange(m, device=copies.device).repeat_interleave(n).repeat_interleave(flat)
    return index, owner


def modality_gaps(phi_mean: Tensor) -> Tensor:
    """g_m = 1 − φ̄_m."""
    return 1.0 - phi_mean


def resample_fraction(gaps: Sequence[float], alpha: float = 1.0, func: str = "linear", gap_sum: str = "pairs") -> float:
    """p, the copies per training sample at modality level: d = (mean over pairs of |g_m − g_k|) · 2/3
    (``ordered``: Σ over ordered pairs / (M − 1), BalanceBenchmark); p = α·d, tanh(α·d) or α·d^1.5."""
    g = [float(x) for x in gaps]
    m = len(g)
    ordered = sum(abs(a - b) for i, a in enumerate(g) for j, b in enumerate(g) if i != j)
    spread = ordered / (m - 1) if gap_sum == "ordered" else ordered / (m * (m - 1))
    d = spread * 2.0 / 3.0
    if func == "linear":
        return alpha * d
    if func == "tanh":
        return math.tanh(alpha * d)
    if func == "square":
        return alpha * d ** 1.5
    raise ValueError(f"func must be linear, tanh or square, got {func!r}")


def modality_copy_keep(gaps: Sequence[float], rule: str = "weakest") -> tuple[list[int], list[list[bool]]]:
    """The copies each drawn sample gets at modality level: (owner modality per copy, modalities kept per copy).
    ``weakest``: one copy keeping only the largest-gap modality (the later one on a tie, as the code);
    ``ranked``: one copy per modality m keeping every k with g_k ≥ g_m (BalanceBenchmark)."""
    g = [float(x) for x in gaps]
    m = len(g)
    if rule == "weakest":
        top = max(range(m), key=lambda i: (g[i], i))
        return [top], [[k == top for k in range(m)]]
    return list(range(m)), [[g[k] >= g[i] for k in range(m)] for i in range(m)]


# ----------------------------------------------------------------------------- the strategy

@register
class Valuation(BalancingMethod):
    name = "valuation"
    Config = ValuationConfig
    paper = "Sample-/modality-level valuation — Wei et al., CVPR 2024, arXiv:2309.06255"
    state = ("plan_index", "plan_keep", "plan_owner", "planned_epoch")
    composable = ("a data re-sampling scheme (its own epoch_indices, copies with all but one modality absent set in "
                  "before_forward): another method's per-batch rule would act on those copies, and an OPM-style drop mask "
                  "would be multiplied into the copies' masks")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        m = len(self.modalities)
        self.plan_index: Tensor = torch.zeros(0, dtype=torch.long, device=self.device)  # training index of each copy
        self.plan_keep: Tensor = torch.zeros(0, m, dtype=torch.bool, device=self.device)  # modalities present in each copy
        self.plan_owner: Tensor = torch.zeros(0, dtype=torch.long, device=self.device)  # the modality each copy is for
        self.planned_epoch = 0  # the epoch the plan was made at (0: none yet)
        subsets = [tuple(self.modalities.index(x) for x in s)
                   for k in range(m + 1) for s in combinations(self.modalities, k)]
        self._subsets = subsets
        self._sizes = torch.tensor([len(s) for s in subsets], device=self.device)
        self._weights = shapley_matrix(subsets, m).to(self.device)

    def bind(self, model: MultimodalModel) -> None:
        if len(self.modalities) < 2:
            raise ConfigError([Problem("dataset.modalities", (
                f"valuation re-samples the low-contributing modality of two or more, got {self.modalities}; "
                "use method=joint or unimodal."))])

    # -- the valuation pass ---------------------------------------------------------------------
    def _absent(self, inputs: dict[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
        """Inputs with the rows' absent modalities zeroed; ``keep`` (B, M) bool."""
        out = {}
        for i, m in enumerate(self.modalities):
            x = inputs[m]
            mask = keep[:, i].view(-1, *([1] * (x.dim() - 1)))
            out[m] = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
        return out

    @torch.no_grad()
    def valuate(self, model: MultimodalModel, split: Any, batch_size: int) -> Tensor:
        """φ (M, N) of every sample of ``split`` (training samples only), eval mode, no gradient."""
        cfg: ValuationConfig = self.config
        names = [tuple(self.modalities[i] for i in s) for s in self._subsets]
        was_training = model.training
        model.eval()
        phis = []
        try:
            for batch in split.batches(batch_size):
                if cfg.absent == "features":
                    logits = model.subset_logits(model.encode(batch.inputs), names)
                    correct = logits.argmax(-1) == batch.labels.unsqueeze(0)
                else:  # one forward pass per non-empty subset, its absent inputs zeroed; v(∅) = 0 regardless
                    correct = torch.zeros(len(self._subsets), len(batch), dtype=torch.bool, device=batch.labels.device)
                    for j, s in enumerate(self._subsets):
                        if s:
                            keep = torch.tensor([i in s for i in range(len(self.modalities))], device=batch.labels.device)
                            logits = model(self._absent(batch.inputs, keep.expand(len(batch), -1))).logits
                            correct[j] = logits.argmax(-1) == batch.labels
                values = subset_values(correct, self._sizes, cfg.value)
                phis.append(shapley_values(values, self._weights))
        finally:
            model.train(was_training)
        return torch.cat(phis, dim=1)

    def _plan(self, ctx: StepContext) -> None:
        cfg: ValuationConfig = self.config
        n = len(ctx.train)
        batch_size = ctx.batch_size or 256
        m = len(self.modalities)
        if cfg.level == "sample":
            phi = self.valuate(ctx.model, ctx.train, batch_size)
            index, owner = sample_plan(sample_copies(phi, cfg.upper, cfg.high, cfg.low))
            keep = torch.nn.functional.one_hot(owner, m).bool()
        else:
            gen = ctx.generator
            z = torch.randint(n, (max(1, int(n * cfg.part_ratio)),), generator=gen, device=gen.device)
            phi = self.valuate(ctx.model, ctx.train.subset(z), batch_size)
            gaps = modality_gaps(phi.mean(1)).tolist()
            k = int(resample_fraction(gaps, cfg.alpha, cfg.func, cfg.gap_sum) * n)
            owners, kept = modality_copy_keep(gaps, cfg.copy_rule)
            chosen = torch.randint(n, (k,), generator=gen, device=gen.device).to(self.device)
            index = chosen.repeat_interleave(len(owners))
            owner = torch.tensor(owners, device=self.device).repeat(k)
            keep = torch.tensor(kept, dtype=torch.bool, device=self.device).repeat(k, 1)
        self.traces.add_many("contribution", phi.mean(1).float(), self.modalities)
        self.plan_index, self.plan_owner, self.plan_keep = index.to(self.device), owner.to(self.device), keep.to(self.device)
        self.planned_epoch = ctx.epoch

    # -- hooks ------------------------------------------------------------------------------------
    def begin_epoch(self, ctx: StepContext) -> None:
        super().begin_epoch(ctx)
        if not ctx.modulating or ctx.model is None or ctx.train is None:
            return
        cfg: ValuationConfig = self.config
        if self.planned_epoch == 0 or (ctx.epoch - cfg.start_epoch) % cfg.every == 0:
            self._plan(ctx)
        m, n = len(self.modalities), len(ctx.train)
        marked = torch.zeros(m, n, device=self.device)
        marked[self.plan_owner, self.plan_index] = 1.0
        self.traces.add_many("resampled", marked.mean(1), self.modalities)
        self.traces.add_many("copies", torch.bincount(self.plan_owner, minlength=m).float() / n, self.modalities)

    def epoch_indices(self, ctx: StepContext) -> Tensor | None:
        originals = torch.arange(len(ctx.train), device=self.device)
        return torch.cat([originals, self.plan_index]) if len(self.plan_index) else None

    def before_forward(self, batch: Batch, ctx: StepContext) -> Batch:
        if not len(self.plan_index) or batch.index is None:
            return batch
        n = len(ctx.train)
        pos = batch.index.to(self.device)
        copy = pos >= n
        keep = self.plan_keep.index_select(0, (pos - n).clamp(0, len(self.plan_index) - 1))
        keep = keep | ~copy.unsqueeze(1)  # originals keep every modality
        if self.config.absent == "inputs":
            return replace(batch, inputs=self._absent(batch.inputs, keep))
        drop = {m: keep[:, i].float() for i, m in enumerate(self.modalities)}
        if batch.drop:
            drop = {m: d * batch.drop[m].to(d) if m in batch.drop else d for m, d in drop.items()}
        return replace(batch, drop=drop)
