"""Confidence intervals for comparing two versions of a prompt (A/B tests).

- Difference of two means (mean quality): Welch's t interval,
  ``d +- t(1 - a/2, df) * sqrt(s1^2/n1 + s2^2/n2)`` with the Welch-Satterthwaite
  degrees of freedom ``df = (s1^2/n1 + s2^2/n2)^2 / ((s1^2/n1)^2/(n1-1) + (s2^2/n2)^2/(n2-1))``.
  The t quantile is Student's exact one (not a normal approximation): the t
  CDF from the regularised incomplete beta function (a continued fraction,
  evaluated by Lentz's method), inverted by Newton's method.
- Difference of two proportions (error rate): Newcombe's hybrid score
  interval (Newcombe 1998, method 10) from the two Wilson score intervals
  ``(l1, u1)``, ``(l2, u2)``: ``d - sqrt((p1-l1)^2 + (u2-p2)^2)`` to
  ``d + sqrt((u1-p1)^2 + (p2-l2)^2)``. Unlike the Wald interval it stays
  within [-1, 1] and is sound for rates near 0 or 1 and for small samples.

Pure arithmetic on a handful of numbers; nothing here touches the store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

# The continued fraction converges in a few dozen steps for the arguments a
# t distribution gives; the cap only guards against a pathological input.
_MAX_TERMS = 500
_TINY = 1e-300
_EPS = 1e-15
# Past this many degrees of freedom the t and normal quantiles agree to ~1e-7.
_NORMAL_DF = 1e7


@dataclass(frozen=True, slots=True)
class Interval:
    """An estimate of a difference and its confidence interval."""

    estimate: float
    low: float
    high: float
    degrees_of_freedom: float = 0.0

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly above or below 0."""
        return self.low > 0 or self.high < 0


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (Lentz's method)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_TERMS + 1):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + aa / c
            c = c if abs(c) > _TINY else _TINY
            step = d * c
            h *= step
        if abs(step - 1.0) < _EPS:
            break
    return h


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` (> 0, not necessarily whole) degrees of freedom."""
    if df <= 0 or not math.isfinite(df):
        raise ValueError("degrees of freedom must be positive and finite")
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t > 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, for 0 < p < 1 and ``df`` > 0."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be between 0 and 1")
    if df <= 0 or not math.isfinite(df):
        raise ValueError("degrees of freedom must be positive and finite")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    if df > _NORMAL_DF:
        return NormalDist().inv_cdf(p)
    # Newton's method from 0: the CDF is concave for t > 0, so every step lands
    # below the root and the steps increase monotonically to it.
    t = 0.0
    for _ in range(200):
        step = (p - student_t_cdf(t, df)) / student_t_pdf(t, df)
        t += step
        if step <= 1e-14 * max(t, 1.0):
            break
    return t


def student_t_pdf(t: float, df: float) -> float:
    """The density of Student's t with ``df`` degrees of freedom at ``t``."""
    log_density = (
        math.lgamma((df + 1.0) / 2.0)
        - math.lgamma(df / 2.0)
        - 0.5 * math.log(df * math.pi)
        - (df + 1.0) / 2.0 * math.log1p(t * t / df)
    )
    return math.exp(log_density)


def welch_interval(
    mean_a: float,
    var_a: float,
    n_a: int,
    mean_b: float,
    var_b: float,
    n_b: int,
    level: float = 0.95,
) -> Interval | None:
    """mean_a - mean_b with Welch's t interval; None unless both samples have 2+ values.

    ``var_a`` and ``var_b`` are sample variances (n - 1). When both are 0 the
    interval is the point estimate, with n_a + n_b - 2 degrees of freedom.
    """
    if n_a < 2 or n_b < 2:
        return None
    estimate = mean_a - mean_b
    share_a, share_b = var_a / n_a, var_b / n_b
    se2 = share_a + share_b
    if se2 <= 0.0:
        return Interval(estimate, estimate, estimate, float(n_a + n_b - 2))
    df = se2 * se2 / (share_a * share_a / (n_a - 1) + share_b * share_b / (n_b - 1))
    half = student_t_quantile(1.0 - (1.0 - level) / 2.0, df) * math.sqrt(se2)
    return Interval(estimate, estimate - half, estimate + half, df)


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of the proportion successes / n (n > 0)."""
    z = NormalDist().inv_cdf(1.0 - (1.0 - level) / 2.0)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n)) / (1.0 + z2n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(
    successes_a: int, n_a: int, successes_b: int, n_b: int, level: float = 0.95
) -> Interval | None:
    """p_a - p_b with Newcombe's hybrid score interval; None if either sample is empty."""
    if n_a <= 0 or n_b <= 0:
        return None
    p_a, p_b = successes_a / n_a, successes_b / n_b
    low_a, high_a = wilson_interval(successes_a, n_a, level)
    low_b, high_b = wilson_interval(successes_b, n_b, level)
    estimate = p_a - p_b
    return Interval(
        estimate,
        estimate - math.hypot(p_a - low_a, high_b - p_b),
        estimate + math.hypot(high_a - p_a, p_b - low_b),
    )
