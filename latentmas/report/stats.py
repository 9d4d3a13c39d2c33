"""Confidence intervals for accuracies, with no dependency beyond the standard library.

Two intervals, both at a configurable two-sided level (95% by default):

* :func:`wilson_interval` -- the Wilson score interval for a binomial proportion ``k / n``. It treats the pooled test
  items as the random sample; it stays inside [0, 1] and behaves well at 0% and 100%, unlike the normal (Wald)
  interval.
* :func:`t_interval` -- the Student-t interval for the mean of a few per-seed accuracies. It treats the seeds as the
  random sample (test set held fixed), so it measures run-to-run variation only.

The t quantile is computed exactly (to float precision) from the closed-form CDF of Student's t for integer degrees
of freedom (the finite trigonometric series, Abramowitz & Stegun 26.7.3-26.7.4) inverted by bisection, so scipy is not
needed. Degrees of freedom here are always ``n_seeds - 1``, an integer.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence


def normal_quantile(p: float) -> float:
    """The standard normal quantile ``Phi^{-1}(p)``."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"normal_quantile: p must be in (0, 1), got {p!r}")
    return NormalDist().inv_cdf(p)


def t_central_prob(t: float, df: int) -> float:
    """``P(|T| <= t)`` for Student's t with integer ``df >= 1`` (t >= 0)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"t_central_prob: df must be a positive integer, got {df!r}")
    if t <= 0.0:
        return 0.0
    if math.isinf(t):
        return 1.0
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    c2 = c * c
    if df % 2 == 1:
        # A = (2/pi) * (theta + sin(theta) * [cos + (2/3) cos^3 + (2*4)/(3*5) cos^5 + ... up to cos^(df-2)])
        acc = 0.0
        if df > 1:
            term = c
            acc = term
            k = 3
            while k <= df - 2:
                term *= c2 * (k - 1) / k
                acc += term
                k += 2
        return min(1.0, (2.0 / math.pi) * (theta + s * acc))
    # df even: A = sin(theta) * [1 + (1/2) cos^2 + (1*3)/(2*4) cos^4 + ... up to cos^(df-2)]
    term = 1.0
    acc = 1.0
    k = 2
    while k <= df - 2:
        term *= c2 * (k - 1) / k
        acc += term
        k += 2
    return min(1.0, s * acc)


def t_quantile_two_sided(level: float, df: int) -> float:
    """The ``t`` with ``P(|T| <= t) = level``, i.e. the ``(1 + level) / 2`` quantile of Student's t(df)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"t_quantile_two_sided: level must be in (0, 1), got {level!r}")
    if df == 1:  # Cauchy: closed form
        return math.tan(math.pi * level / 2.0)
    if df == 2:  # closed form: A = t / sqrt(2 + t^2)
        return level * math.sqrt(2.0 / (1.0 - level * level))
    lo, hi = 0.0, 1.0
    while t_central_prob(hi, df) < level:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid == lo or mid == hi:
            break
        if t_central_prob(mid, df) < level:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n`` trials."""
    if n <= 0:
        raise ValueError(f"wilson_interval: n must be positive, got {n!r}")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval: need 0 <= k <= n, got k={k!r}, n={n!r}")
    z = normal_quantile(0.5 + level / 2.0)
    p = k / n
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = (z / (1.0 + z2n)) * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    lo, hi = centre - half, centre + half
    # exact at the edges (the formula gives them up to rounding)
    if k == 0:
        lo = 0.0
    if k == n:
        hi = 1.0
    return max(0.0, lo), min(1.0, hi)


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``ddof=1``; None for fewer than two values)."""
    if not values:
        raise ValueError("mean_sd: no values")
    n = len(values)
    if min(values) == max(values):  # exact: avoids a rounding-noise sd for identical values
        return float(values[0]), (0.0 if n >= 2 else None)
    m = math.fsum(values) / n
    if n < 2:
        return m, None
    var = math.fsum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean of ``values`` (needs at least two; not clipped to [0, 1])."""
    if len(values) < 2:
        raise ValueError(f"t_interval: needs at least two values, got {len(values)}")
    m, sd = mean_sd(values)
    assert sd is not None
    half = t_quantile_two_sided(level, len(values) - 1) * sd / math.sqrt(len(values))
    return m - half, m + half
