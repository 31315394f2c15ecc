"""Statistics of a report: mean ± sample std over seeds, the paired t interval and tests.

Against a baseline, per variant, paired by seed: the t interval mean(d) ± t_{(1+c)/2}(n−1)·sd(d)/√n,
the two-sided paired t test and the Wilcoxon signed-rank test (non-parametric; with n pairs its
smallest p is 2/2ⁿ), and :func:`holm` to adjust one table's p-values for its number of comparisons.
Quantiles and tests are scipy's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from scipy.stats import t as _t

__all__ = [
    "Summary", "PairedDifference", "summarize", "paired_t_interval", "holm", "student_t_cdf", "t_quantile",
]


# -------------------------------------------------------------------------------- mean ± std (n)
@dataclass(frozen=True)
class Summary:
    """Mean ± sample standard deviation (ddof = 1) of ``n`` finite values; std is NaN for n < 2."""

    mean: float
    std: float
    n: int

    @property
    def empty(self) -> bool:
        return self.n == 0


def summarize(values: Iterable[float | None]) -> Summary:
    """Summary of the finite values (None and NaN are not counted in ``n``)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return Summary(math.nan, math.nan, 0)
    mean = math.fsum(xs) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n >= 2 else math.nan
    return Summary(mean, std, n)


# ------------------------------------------------------------------------------ Student t quantile
def student_t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom."""
    if not df > 0:
        raise ValueError(f"`df > 0` must hold, but got {df=}.")
    return float(_t.cdf(t, df))


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (t_{0.975}(2) = 4.3027)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"`0 < p < 1` must hold, but got {p=}.")
    if not df > 0:
        raise ValueError(f"`df > 0` must hold, but got {df=}.")
    return float(_t.ppf(p, df))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of the p-values of one family of comparisons (NaN ones are not
    counted in the family and stay NaN): p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j)), over the
    m finite p-values sorted ascending. It controls the family-wise error rate without assuming
    independence; reject where p̃ < α."""
    finite = sorted((p, i) for i, p in enumerate(p_values) if _finite(p))
    m = len(finite)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


# ------------------------------------------------------------------------------ paired t interval
@dataclass(frozen=True)
class PairedDifference:
    """Mean of the per-seed differences (variant − baseline) with its two-sided t interval."""

    mean: float
    std: float  # sample std of the differences (ddof = 1)
    n: int  # seeds paired
    low: float  # NaN when n < 2 (no interval from one pair)
    high: float
    t_crit: float  # t_{(1+confidence)/2}(n − 1); NaN when n < 2
    confidence: float
    seeds: tuple[int, ...] = field(default=())
    p_t: float = math.nan  # two-sided paired t test of mean(d) = 0; NaN when n < 2 or sd(d) = 0 with mean 0
    p_wilcoxon: float = math.nan  # two-sided Wilcoxon signed-rank test (exact for small n); NaN when n < 2 or d ≡ 0

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def excludes_zero(self) -> bool:
        return self.has_interval and (self.low > 0.0 or self.high < 0.0)


def paired_t_interval(variant: Mapping[int, float], baseline: Mapping[int, float], *,
                      confidence: float = 0.95) -> PairedDifference:
    """Pair ``{seed: value}`` maps by seed (finite values on both sides only) and return
    mean(d) ± t_{(1+c)/2}(n−1) · sd(d)/√n with d = variant − baseline."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`0 < confidence < 1` must hold, but got {confidence=}.")
    seeds = tuple(sorted(
        s for s in variant.keys() & baseline.keys()
        if _finite(variant[s]) and _finite(baseline[s])
    ))
    diffs = [float(variant[s]) - float(baseline[s]) for s in seeds]
    s = summarize(diffs)
    if s.n < 2:
        return PairedDifference(s.mean, s.std, s.n, math.nan, math.nan, math.nan, confidence, seeds)
    t_crit = t_quantile(0.5 + confidence / 2.0, s.n - 1)
    half = t_crit * s.std / math.sqrt(s.n)
    return PairedDifference(s.mean, s.std, s.n, s.mean - half, s.mean + half, t_crit, confidence, seeds,
                            _paired_t_p(s), _wilcoxon_p(diffs))


def _paired_t_p(s: Summary) -> float:
    if s.std == 0.0:
        return math.nan if s.mean == 0.0 else 0.0
    return float(2.0 * _t.sf(abs(s.mean) / (s.std / math.sqrt(s.n)), s.n - 1))


def _wilcoxon_p(diffs: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p (scipy; exact distribution for n ≤ 50 without ties or zeros).
    With n pairs the smallest possible p is 2 / 2**n: 0.0625 at n = 5, so it rejects at 0.05 only
    from n = 6 on."""
    if len(diffs) < 2 or all(d == 0.0 for d in diffs):
        return math.nan
    from scipy.stats import wilcoxon

    return float(wilcoxon(diffs, alternative="two-sided", zero_method="wilcox").pvalue)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(float(value))
