"""Statistics of a report: mean ± sample std over seeds, and the paired t interval.

Pure Python + math: no scipy (not a dependency of mmtune). The Student t quantile is the numeric
inverse (bisection) of the t CDF, which is written with the regularized incomplete beta function
(continued fraction, Lentz's method; Numerical Recipes §6.4):

    F(t; ν) = 1 − ½ · I_{ν/(ν+t²)}(ν/2, ½)          for t ≥ 0

Accurate to ~1e-10, far below the 3 decimals a report prints (t_{0.975}(2) = 4.302653).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "Summary", "PairedDifference", "summarize", "paired_t_interval",
    "regularized_incomplete_beta", "student_t_cdf", "t_quantile",
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
def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """Continued fraction of I_x(a, b) (modified Lentz); converges fast for x < (a+1)/(a+b+2)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) for 0 ≤ x ≤ 1, a, b > 0."""
    if not (a > 0 and b > 0):
        raise ValueError(f"`a > 0 and b > 0` must hold, but got ({a=}, {b=}).")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"`0 <= x <= 1` must hold, but got {x=}.")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(1.0 - x, b, a) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom."""
    if not df > 0:
        raise ValueError(f"`df > 0` must hold, but got {df=}.")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_incomplete_beta(df / (df + t * t), df / 2.0, 0.5)  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (t_{0.975}(2) = 4.3027)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"`0 < p < 1` must hold, but got {p=}.")
    if not df > 0:
        raise ValueError(f"`df > 0` must hold, but got {df=}.")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:  # bracket; t_{0.9995}(1) ≈ 636.6 needs ten doublings
        low, high = high, high * 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if student_t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


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
    return PairedDifference(s.mean, s.std, s.n, s.mean - half, s.mean + half, t_crit, confidence, seeds)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(float(value))
