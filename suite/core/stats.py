"""Intervals and paired tests: what makes a difference between two grid points a result rather than noise.

Every function is seeded and says which method it is, so the tables can record it next to the number:

- ``mean_interval``: bootstrap (BCa, scipy.stats.bootstrap) interval of a per-image mean;
- ``wilson_interval``: Wilson score interval of a proportion (per-image 0/1 answers);
- ``bootstrap_interval``: percentile bootstrap of any statistic of a resampled set (FID, KID, CMMD);
- ``paired_permutation``: paired differences of per-image scores, sign-flip permutation test;
- ``mcnemar_exact``: paired 0/1 answers, exact McNemar test (binomial on the discordant pairs);
- ``paired_bootstrap``: difference of a set statistic between two paired sets, resampling units jointly;
- ``contrast_bootstrap``: the same for any contrast over k paired sets (a 2x2 design's main effects, interaction);
- ``holm``: Holm-Bonferroni adjusted p-values across a table;
- ``fid_infinity``: Chong & Forsyth's extrapolation of FID to an infinite sample (CVPR 2020).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05  # the significance level of every test and the coverage (1 - ALPHA) of every interval

CONFIDENCE = 1 - ALPHA  # 0.95
RESAMPLES = 2000  # per-image means (BCa)
SET_RESAMPLES = 200  # set statistics (FID, KID, CMMD): each resample recomputes the statistic
PERMUTATIONS = 20000
SEED = 0


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str


def mean_interval(values: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """BCa bootstrap interval of the mean (Efron 1987), scipy's implementation; NaN values are dropped."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    method = f"bootstrap BCa, {resamples} resamples, seed {seed}"
    if len(values) < 2:
        return Interval(math.nan, math.nan, method)
    if np.all(values == values[0]):  # no spread: every resample has the same mean
        return Interval(float(values[0]), float(values[0]), method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa warns on near-degenerate data; the interval is still usable
        result = stats.bootstrap(
            (values,),
            np.mean,
            confidence_level=CONFIDENCE,
            n_resamples=resamples,
            method="BCa",
            random_state=np.random.default_rng(seed),
            vectorized=True,
        )
    low, high = result.confidence_interval
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa undefined (e.g. one odd value): percentile instead
        quantiles = np.quantile(result.bootstrap_distribution, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
        return Interval(float(quantiles[0]), float(quantiles[1]), f"bootstrap percentile, {resamples} resamples")
    return Interval(float(low), float(high), method)


def wilson_interval(successes: int, trials: int) -> Interval:
    """Wilson score interval of a proportion (Wilson 1927), scipy's binomtest."""
    if trials == 0:
        return Interval(math.nan, math.nan, "Wilson score")
    interval = stats.binomtest(int(successes), int(trials)).proportion_ci(CONFIDENCE, method="wilson")
    return Interval(float(interval.low), float(interval.high), "Wilson score")


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float], count: int, resamples: int = SET_RESAMPLES, seed: int = SEED
) -> Interval:
    """Bias-shifted percentile interval of ``statistic(indices)`` over resamples (with replacement) of ``count`` units.

    A resample with replacement holds fewer distinct images, which moves set statistics such as FID
    (biased in 1/n); the percentiles are shifted by the bootstrap's bias estimate (mean of the resampled
    values minus the estimate), so the interval describes the spread of the statistic around its value.
    """
    point = statistic(np.arange(count))
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, count, count)) for _ in range(resamples)])
    bias = float(np.nanmean(values)) - point
    low, high = np.nanquantile(values, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2]) - bias
    return Interval(float(low), float(high), f"bootstrap percentile, bias-shifted, {resamples} resamples")


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison: mean difference (b - a), its interval, and a two-sided p-value."""

    difference: float
    low: float
    high: float
    p_value: float
    n_pairs: int
    test: str


def paired_permutation(
    a: Sequence[float], b: Sequence[float], permutations: int = PERMUTATIONS, seed: int = SEED
) -> PairedTest:
    """Mean of ``b - a`` with a BCa interval, and a sign-flip permutation test of a zero mean difference."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = ~(np.isnan(a) | np.isnan(b))
    differences = b[keep] - a[keep]
    name = f"paired permutation (sign flips, {permutations}), BCa interval"
    if len(differences) < 2:
        return PairedTest(math.nan, math.nan, math.nan, math.nan, len(differences), name)
    interval = mean_interval(differences, seed=seed)
    if np.all(differences == 0):
        return PairedTest(0.0, 0.0, 0.0, 1.0, len(differences), name)
    result = stats.permutation_test(
        (differences,),
        np.mean,
        permutation_type="samples",
        n_resamples=permutations,
        vectorized=True,
        alternative="two-sided",
        random_state=np.random.default_rng(seed),
    )
    return PairedTest(
        float(differences.mean()), interval.low, interval.high, float(result.pvalue), len(differences), name
    )


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Difference of paired proportions (b - a) with a Newcombe-style Wald interval, and the exact McNemar test.

    The exact test is a two-sided binomial test of the discordant pairs (McNemar 1947; Fagerland et al. 2013).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep].astype(bool), b[keep].astype(bool)
    n = len(a)
    name = "exact McNemar; Wald interval of paired proportions"
    if n == 0:
        return PairedTest(math.nan, math.nan, math.nan, math.nan, 0, name)
    only_b, only_a = int(np.sum(b & ~a)), int(np.sum(a & ~b))
    difference = (only_b - only_a) / n
    p_value = 1.0 if only_a + only_b == 0 else float(stats.binomtest(only_b, only_a + only_b).pvalue)
    variance = ((only_a + only_b) / n - difference**2) / n
    half = stats.norm.ppf((1 + CONFIDENCE) / 2) * math.sqrt(max(variance, 0.0))
    return PairedTest(difference, difference - half, difference + half, p_value, n, name)


def paired_bootstrap(
    statistic: Callable[[np.ndarray, np.ndarray], tuple[float, float]],
    units: int,
    resamples: int = SET_RESAMPLES,
    seed: int = SEED,
) -> PairedTest:
    """Difference of a set statistic between two paired sets, resampling ``units`` (prompts) jointly for both.

    ``statistic(indices_a, indices_b)`` returns the statistic of each set restricted to the resampled units.
    The contrast (-1, +1) of ``contrast_bootstrap``: see there for the interval and the p-value.
    """
    test = contrast_bootstrap(
        lambda chosen: np.asarray(statistic(chosen, chosen), dtype=np.float64), (-1.0, 1.0), units, resamples, seed
    )
    return PairedTest(
        test.difference,
        test.low,
        test.high,
        test.p_value,
        units,
        f"paired bootstrap over prompts, {resamples} resamples, normal p",
    )


def contrast_bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    weights: Sequence[float],
    units: int,
    resamples: int = SET_RESAMPLES,
    seed: int = SEED,
) -> PairedTest:
    """A contrast ``weights . values`` of a statistic over k paired sets, resampling ``units`` jointly for all k.

    ``statistic(indices)`` returns the k sets' values restricted to the resampled units (prompts): with
    weights (-1, 1) it is a paired difference; over a 2x2 design's cells (-1/2, -1/2, 1/2, 1/2) a main
    effect and (1, -1, -1, 1) the interaction, the difference of differences. Interval: bias-shifted
    percentiles of the resampled contrasts. p-value: two-sided normal approximation with the bootstrap
    standard error, which, unlike counting resamples beyond zero, is not limited to multiples of
    1 / resamples (that limit would hide every effect after Holm).
    """
    weights = np.asarray(weights, dtype=np.float64)
    everything = np.arange(units)
    estimate = float(weights @ statistic(everything))
    rng = np.random.default_rng(seed)
    contrasts = np.asarray([weights @ statistic(rng.integers(0, units, units)) for _ in range(resamples)])
    bias = float(contrasts.mean()) - estimate
    low, high = np.quantile(contrasts, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2]) - bias
    error = float(contrasts.std(ddof=1))
    if error == 0:
        p_value = 1.0 if estimate == 0 else 0.0
    else:
        p_value = float(2 * stats.norm.sf(abs(estimate) / error))
    method = f"bootstrap over {units} units, {resamples} resamples, normal p"
    return PairedTest(estimate, float(low), float(high), p_value, units, method)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (Holm 1979): step-down, monotone, never below the raw p; NaN kept."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, (len(order) - rank) * p[index])
        adjusted[index] = min(1.0, running)
    return adjusted


@dataclass(frozen=True)
class FidInfinity:
    value: float  # the intercept: FID extrapolated to an infinite number of generated images
    slope: float
    r_squared: float
    sizes: tuple[int, ...]


def fid_infinity(
    fid_at: Callable[[np.ndarray], float], count: int, points: int = 5, repeats: int = 8, seed: int = SEED
) -> FidInfinity:
    """FID_inf (Chong & Forsyth, CVPR 2020): FID is linear in 1/n, so fit FID(n) = FID_inf + k / n and keep FID_inf.

    FID is computed at ``points`` subset sizes from n/2 to n (each the mean of ``repeats`` random subsets drawn
    without replacement; the whole set once at n), then fitted by least squares against 1/n.
    """
    rng = np.random.default_rng(seed)
    sizes = sorted({round(float(size)) for size in np.linspace(count / 2, count, points)})
    means = []
    for size in sizes:
        draws = 1 if size == count else repeats
        means.append(np.mean([fid_at(rng.choice(count, size, replace=False)) for _ in range(draws)]))
    inverse = 1.0 / np.asarray(sizes, dtype=np.float64)
    slope, intercept = np.polyfit(inverse, means, 1)
    predicted = intercept + slope * inverse
    total = np.sum((means - np.mean(means)) ** 2)
    r_squared = 1.0 - np.sum((means - predicted) ** 2) / total if total > 0 else 1.0
    return FidInfinity(float(intercept), float(slope), float(r_squared), tuple(sizes))
