"""Paired statistics of `hsd compare`: differences over (warm start, seed) pairs with
Student-t intervals, and the slope of a difference over k.

Runs of one pair share their prompts, held-out problems and sampling seed, so the
differences between arms are taken within a pair and the pairs are the sample:

- difference   d_p = b_p − a_p; mean d̄, SE = s_d / √n, 95% CI d̄ ± t(0.975, n − 1)·SE
- slope        per pair, the least-squares slope β_p of d_p(k) on k (the pair's own
               regression line over the chain lengths it was evaluated at); then β̄ with the
               same one-sample interval over pairs. The pair's noise stays inside β_p, so
               the interval does not treat the k's of one run as independent runs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Paired:
    """A mean over pairs with its standard error and 95% t interval."""

    n: int
    mean: float
    se: float
    low: float
    high: float

    def text(self) -> str:
        return f"{self.mean:+.3f} ± {self.se:.3f} (95% CI {self.low:+.3f} … {self.high:+.3f}, n = {self.n})"

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile t(p, df)."""
    return float(stats.t.ppf(p, df))


def one_sample(values: Sequence[float]) -> Paired | None:
    """Mean of ``values`` with SE = sd/√n (sample sd) and mean ± t(0.975, n−1)·SE; None
    below two values (no spread to estimate)."""
    if len(values) < 2:
        return None
    se = statistics.stdev(values) / math.sqrt(len(values))
    half = t_quantile(0.975, len(values) - 1) * se
    mean = statistics.fmean(values)
    return Paired(len(values), mean, se, mean - half, mean + half)


def paired(a: Sequence[float], b: Sequence[float]) -> Paired | None:
    """b − a over pairs (a and b in pair order)."""
    return one_sample([y - x for x, y in zip(a, b, strict=True)])


def slope(a: Sequence[Mapping[int, float]], b: Sequence[Mapping[int, float]]) -> Paired | None:
    """The slope over k of b − a: each pair's least-squares slope of d(k) = b(k) − a(k) on
    k (over the k's both runs of the pair were evaluated at, at least two), then their mean
    with its one-sample interval. a, b: per pair, accuracy by k."""
    slopes = []
    for x, y in zip(a, b, strict=True):
        ks = sorted(set(x) & set(y))
        if len(ks) < 2:
            return None
        fit = stats.linregress(ks, [y[k] - x[k] for k in ks])
        slopes.append(float(fit.slope))
    return one_sample(slopes)


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)
