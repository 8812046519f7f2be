"""Intervals at the unit of the prompt: what a number would plausibly be with other seeds and other prompts.

Images of one prompt are not independent: they share the prompt's difficulty. Every interval here therefore
resamples *units* (prompts, with all of their seeds: a cluster bootstrap), never single images, and says
so in its method string, which the tables record next to the number. With one seed per prompt each unit is
one image and every function reduces to its familiar image-level form (tested):

- ``Units``: which unit (prompt, work item, timing round) each value belongs to;
- ``mean_interval``: BCa bootstrap (``scipy.stats.bootstrap``) of a mean, resampling units;
- ``share_interval``: Wilson score interval of a proportion at the effective sample size (n / design effect);
- ``bootstrap_interval``: bias-shifted percentile bootstrap of any statistic of a resampled set (FID, KID, CMMD);
- ``median_interval``: percentile bootstrap of a median time (unshifted, so it stays positive);
- ``fid_infinity``: Chong & Forsyth's extrapolation of FID to an infinite sample, refused where it cannot hold;
- ``holm``: Holm-Bonferroni adjusted p-values within one family;
- ``format_p``: a p-value as the resamples behind it can support it ("< 1/B" below that).

Paired tests between two grid points are in ``suite.core.paired``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

ALPHA = 0.05  # the significance level of every test and the coverage (1 - ALPHA) of every interval

CONFIDENCE = 1 - ALPHA  # 0.95
RESAMPLES = 2000  # means (BCa)
SET_RESAMPLES = 1000  # set statistics (FID, KID, CMMD): each resample recomputes the statistic
FID_INF_RESAMPLES = 200  # FID_inf: each resample refits the extrapolation
FID_INF_REFIT_REPEATS = 2  # subsets per size in each refit (the estimate uses 8): 9 FIDs per resample, not 33
PERMUTATIONS = 20000
SEED = 0


@dataclass(frozen=True)
class Units:
    """The resampling unit of each value: ``of_value[i]`` is the position (0 .. count - 1) of value i's unit."""

    of_value: np.ndarray
    count: int
    name: str = "prompts"

    @classmethod
    def of(cls, labels: Sequence | np.ndarray, name: str = "prompts") -> Units:
        """Units from any labels (prompt indices, item ids), numbered in sorted label order."""
        labels = np.asarray(labels)
        ids, inverse = np.unique(labels, return_inverse=True)
        return cls(inverse.reshape(-1), len(ids), name)

    @classmethod
    def each(cls, count: int, name: str = "prompts") -> Units:
        """Every value its own unit (one seed per prompt)."""
        return cls(np.arange(count), count, name)

    @property
    def n(self) -> int:
        return len(self.of_value)

    @property
    def singletons(self) -> bool:
        return self.count == self.n

    @cached_property
    def members(self) -> list[np.ndarray]:
        order = np.argsort(self.of_value, kind="stable")
        return np.split(order, np.cumsum(np.bincount(self.of_value, minlength=self.count))[:-1])

    def rows(self, chosen: np.ndarray) -> np.ndarray:
        """The values of the chosen units (with repeats), each unit's values together."""
        if self.singletons:
            return self.members_of_singletons[chosen]
        return np.concatenate([self.members[unit] for unit in chosen]) if len(chosen) else np.arange(0)

    @cached_property
    def members_of_singletons(self) -> np.ndarray:
        return np.concatenate(self.members) if self.count else np.arange(0)

    def sums(self, values: np.ndarray) -> np.ndarray:
        """Per unit, the sum of its values."""
        return np.bincount(self.of_value, weights=np.asarray(values, dtype=np.float64), minlength=self.count)

    def restricted(self, keep: np.ndarray) -> Units:
        """The units of the kept values only (units left without values are dropped)."""
        return Units.of(self.of_value[keep], self.name) if not np.all(keep) else self

    def describe(self) -> str:
        return f"{self.count} {self.name}" if self.singletons else f"{self.count} {self.name} ({self.n} values)"


def units_or_each(units: Units | None, count: int) -> Units:
    if units is None:
        return Units.each(count)
    if units.n != count:
        raise ValueError(f"{units.n} unit labels for {count} values")
    return units


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str
    at: Callable[[float], tuple[float, float]] | None = field(default=None, compare=False, repr=False)

    def at_confidence(self, confidence: float) -> tuple[float, float]:
        """The same interval at another confidence (a family's Bonferroni width), from the same resamples."""
        if self.at is None or not math.isfinite(self.low):
            return self.low, self.high
        return self.at(confidence)


def mean_interval(
    values: Sequence[float],
    units: Units | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> Interval:
    """BCa bootstrap interval (Efron 1987; scipy) of the mean of all values, resampling units; NaN values dropped.

    The statistic is the ratio of resampled sums to resampled counts, so units of unequal size weigh as
    their values do; BCa's acceleration comes from the jackknife over units.
    """
    values = np.asarray(values, dtype=np.float64)
    units = units_or_each(units, len(values))
    keep = ~np.isnan(values)
    values, units = values[keep], units.restricted(keep)
    method = f"bootstrap BCa over {units.describe()}, {resamples} resamples, seed {seed}"
    if units.count < 2:
        return Interval(math.nan, math.nan, method)
    if np.all(values == values[0]):  # no spread: every resample has the same mean
        return Interval(float(values[0]), float(values[0]), method)
    sums, counts = units.sums(values), units.sums(np.ones(len(values)))

    def of(level: float) -> tuple[float, float]:
        def statistic(chosen: np.ndarray, axis: int = -1) -> np.ndarray:
            return sums[chosen].sum(axis=axis) / counts[chosen].sum(axis=axis)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa warns on near-degenerate data; the interval is still usable
            result = stats.bootstrap(
                (np.arange(units.count),),
                statistic,
                confidence_level=level,
                n_resamples=resamples,
                method="BCa",
                random_state=np.random.default_rng(seed),
                vectorized=True,
            )
        low, high = result.confidence_interval
        if not (math.isfinite(low) and math.isfinite(high)):  # BCa undefined (one odd value): percentiles
            low, high = np.quantile(result.bootstrap_distribution, [(1 - level) / 2, (1 + level) / 2])
        return float(low), float(high)

    low, high = of(confidence)
    return Interval(low, high, method, of)


def design_effect(values: np.ndarray, units: Units) -> float:
    """Variance of the mean under resampling of units over its variance for independent values (Kish), at least 1.

    One value per unit: exactly 1. Linearised variance of the ratio mean (C / (C - 1) times the sum over the C units
    of (S_u - mean * m_u)^2 / n^2, the small-sample factor of few prompts included) over the independent-values
    variance (n / (n - 1) times the sum of (x - mean)^2 / n^2).
    """
    if units.singletons or len(values) < 2 or units.count < 2:
        return 1.0
    mean, n, count = values.mean(), len(values), units.count
    independent = np.sum((values - mean) ** 2) * n / (n - 1)
    if independent == 0:
        return 1.0
    clustered = np.sum((units.sums(values) - mean * units.sums(np.ones(n))) ** 2) * count / (count - 1)
    return max(1.0, float(clustered / independent))


def share_interval(answers: Sequence[float], units: Units | None = None, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval (Wilson 1927; statsmodels) of a share of 0/1 answers (NaN: not asked).

    Where a unit holds several answers, the interval is taken at the effective sample size n / design effect
    (Kish 1965; the Wilson interval for clustered data, Korn & Graubard 1998); with one answer per unit it is
    the plain Wilson interval.
    """
    answers = np.asarray(answers, dtype=np.float64)
    units = units_or_each(units, len(answers))
    keep = ~np.isnan(answers)
    answers, units = answers[keep], units.restricted(keep)
    if len(answers) == 0:
        return Interval(math.nan, math.nan, "Wilson score")
    deff = design_effect(answers, units)
    method = (
        "Wilson score" if deff == 1.0 else f"Wilson score at n / {deff:.2f} (design effect over {units.describe()})"
    )

    def of(level: float) -> tuple[float, float]:
        effective = len(answers) / deff
        low, high = proportion_confint(answers.mean() * effective, effective, alpha=1 - level, method="wilson")
        return float(low), float(high)

    low, high = of(confidence)
    return Interval(low, high, method, of)


def wilson_interval(successes: int, trials: int) -> Interval:
    """Wilson score interval of independent trials (statsmodels): ``share_interval`` of one answer per unit."""
    if trials == 0:
        return Interval(math.nan, math.nan, "Wilson score")
    return share_interval(np.r_[np.ones(int(successes)), np.zeros(int(trials) - int(successes))])


def counts_of(rows: list[np.ndarray], count: int) -> np.ndarray:
    """Resamples given as row indices, as counts per row (one resample per line)."""
    return np.stack([np.bincount(chosen, minlength=count) for chosen in rows]).astype(np.float64)


def in_chunks(weighted: Callable[[np.ndarray], np.ndarray], rows: list[np.ndarray], count: int, size: int = 100):
    """``weighted`` on the counts of every resample, ``size`` resamples at a time (memory stays B-independent)."""
    return np.concatenate(
        [weighted(counts_of(rows[start : start + size], count)) for start in range(0, len(rows), size)]
    )


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    units: Units | int,
    resamples: int = SET_RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
    weighted: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Interval:
    """Bias-shifted percentile interval of ``statistic(rows)``, resampling units (each with all of its rows).

    ``units`` is a ``Units`` or a count of independent units. A resample with replacement holds fewer distinct
    images, which moves set statistics such as FID (biased in 1/n); the percentiles are shifted by the
    bootstrap's bias estimate (mean of the resampled values minus the estimate), so the interval describes the
    spread of the statistic at this sample size around its value. ``weighted(counts)``, where given, computes
    the statistic of many resamples at once from their counts per row (``KernelToReference.weighted``).
    """
    units = Units.each(units, "units") if isinstance(units, int) else units
    point = statistic(np.arange(units.n))
    rng = np.random.default_rng(seed)
    rows = [units.rows(rng.integers(0, units.count, units.count)) for _ in range(resamples)]
    if weighted is None:
        values = np.array([statistic(chosen) for chosen in rows])
    else:
        values = in_chunks(weighted, rows, units.n)
    bias = float(np.nanmean(values)) - point

    def of(level: float) -> tuple[float, float]:
        low, high = np.nanquantile(values, [(1 - level) / 2, (1 + level) / 2]) - bias
        return float(low), float(high)

    low, high = of(confidence)
    method = f"bootstrap over {units.describe()}, bias-shifted percentiles, {resamples} resamples"
    return Interval(low, high, method, of)


def median_interval(values: Sequence[float], unit: str = "work items", resamples: int = RESAMPLES) -> Interval:
    """Percentile bootstrap interval of the median of positive values (times), one value per unit.

    A median is not biased as set metrics are, so the percentiles are not shifted: every resampled median is one of
    the values, and the interval stays inside their range (never below zero for a time).
    """
    values = np.asarray(values, dtype=np.float64)
    units = Units.each(len(values), unit)
    rng = np.random.default_rng(SEED)
    medians = np.median(values[rng.integers(0, len(values), (resamples, len(values)))], axis=1)

    def of(level: float) -> tuple[float, float]:
        low, high = np.quantile(medians, [(1 - level) / 2, (1 + level) / 2])
        return float(low), float(high)

    low, high = of(CONFIDENCE)
    return Interval(low, high, f"percentile bootstrap of the median over {units.describe()}, {resamples} resamples", of)


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


def family_confidence(size: int) -> float:
    """The confidence of each interval of a family of ``size`` whose intervals hold together at 95% (Bonferroni)."""
    return 1 - ALPHA / max(int(size), 1)


def format_p(p: float, resolution: float = 0.0, spec: str = ".2g") -> str:
    """A p-value for a report: ``< 1/B`` when it is below what B resamples can resolve (``resolution`` = 1/B)."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    if resolution and p <= resolution:
        return f"< {resolution:{spec}}"
    return f"{p:{spec}}"


@dataclass(frozen=True)
class FidInfinity:
    value: float  # the intercept: FID extrapolated to an infinite number of generated images (NaN: refused)
    slope: float
    r_squared: float
    sizes: tuple[int, ...]
    refused: str = ""  # why no extrapolation was made
    intercept_error: float = math.nan  # the fit's standard error of FID_inf (least squares, k - 2 df)


def fid_inf_sizes(count: int, dimension: int, points: int = 5) -> tuple[tuple[int, ...], str]:
    """Subset sizes for the FID_inf fit, or why there are none.

    The fit spans 1/n from the smallest subset to the whole set; the smallest is n/10 (as Chong & Forsyth's
    5,000-50,000) but always more images than feature dimensions (below that the covariance is singular and
    FID no longer linear in 1/n). The extrapolation (from 1/n to 0) must be at most half the span: smallest <= n/3.
    """
    if count <= dimension:
        return (), f"n = {count} <= feature dimension {dimension}: the covariance is singular"
    smallest = max(dimension + 1, math.ceil(count / 10))
    if 3 * smallest > count:
        return (
            (),
            f"n = {count} < {3 * smallest}: the fit from {smallest} images would extrapolate further than it spans",
        )
    inverse = np.linspace(1 / smallest, 1 / count, points)
    return tuple(sorted({round(1 / value) for value in inverse})), ""


def fid_infinity(
    fid_at: Callable[[np.ndarray], float],
    count: int,
    dimension: int,
    points: int = 5,
    repeats: int = 8,
    seed: int = SEED,
    rows: np.ndarray | None = None,
) -> FidInfinity:
    """FID_inf (Chong & Forsyth, CVPR 2020): FID is linear in 1/n, so fit FID(n) = FID_inf + k / n and keep FID_inf.

    FID is computed at ``points`` subset sizes evenly spaced in 1/n (``fid_inf_sizes``), each the mean of
    ``repeats`` subsets drawn without replacement from ``rows`` (default: all ``count`` rows; a bootstrap
    resample passes its own), the whole set once; then fitted by least squares against 1/n.
    """
    sizes, refused = fid_inf_sizes(count, dimension, points)
    if refused:
        return FidInfinity(math.nan, math.nan, math.nan, (), refused)
    rows = np.arange(count) if rows is None else rows
    rng = np.random.default_rng(seed)
    means = []
    for size in sizes:
        draws = 1 if size == count else repeats
        means.append(np.mean([fid_at(rows[rng.choice(count, size, replace=False)]) for _ in range(draws)]))
    inverse = 1.0 / np.asarray(sizes, dtype=np.float64)
    slope, intercept = np.polyfit(inverse, means, 1)
    predicted = intercept + slope * inverse
    total = np.sum((means - np.mean(means)) ** 2)
    residual = float(np.sum((means - predicted) ** 2))
    r_squared = 1.0 - residual / total if total > 0 else 1.0
    spread = np.sum((inverse - inverse.mean()) ** 2)
    error = (
        math.sqrt(residual / (len(sizes) - 2) * np.sum(inverse**2) / (len(sizes) * spread)) if len(sizes) > 2 else 0.0
    )
    return FidInfinity(float(intercept), float(slope), float(r_squared), sizes, "", error)


def fid_infinity_interval(
    fid_at: Callable[[np.ndarray], float],
    units: Units,
    dimension: int,
    estimate: float,
    resamples: int = FID_INF_RESAMPLES,
    seed: int = SEED,
) -> Interval:
    """FID_inf's interval: resample units, refit the extrapolation on each resample, bias-shifted percentiles.

    Refitting puts the fit's own error (subset draws, extrapolation) into the interval; each refit draws
    ``FID_INF_REFIT_REPEATS`` subsets per size, which adds subset noise and widens the interval slightly. A
    resample repeats images, so its smallest subset must hold more distinct images than feature dimensions;
    where more than a tenth of the resamples cannot meet that, the interval is refused (NaN, the reason in its
    method) rather than computed from singular covariances.
    """
    rng = np.random.default_rng(seed)
    values = []
    for repetition in range(resamples):
        rows = units.rows(rng.integers(0, units.count, units.count))
        # a resample repeats images: its subsets must hold more distinct images than dimensions, not just rows
        repeated = math.ceil((dimension + 1) * len(rows) / len(np.unique(rows))) - 1
        refit = fid_infinity(
            fid_at, len(rows), repeated, repeats=FID_INF_REFIT_REPEATS, seed=seed + 1 + repetition, rows=rows
        )
        values.append(refit.value)
    values = np.asarray(values)
    method = f"bootstrap over {units.describe()}, reference fixed, fit refitted on each of {resamples} resamples"
    if np.mean(np.isnan(values)) > 0.1:
        reason = "refused: resamples hold too few distinct images for a fit above the feature dimension"
        return Interval(math.nan, math.nan, f"{method}; {reason}")
    bias = float(np.nanmean(values)) - estimate

    def of(level: float) -> tuple[float, float]:
        low, high = np.nanquantile(values, [(1 - level) / 2, (1 + level) / 2]) - bias
        return float(low), float(high)

    low, high = of(CONFIDENCE)
    return Interval(low, high, f"{method}, bias-shifted", of)
