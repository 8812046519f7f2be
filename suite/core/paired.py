"""Paired tests between two grid points that share prompts and seeds, at the unit of the prompt.

Every test here sign-flips or resamples whole prompts (all of their seeds together), and every interval
resamples prompts:

- ``paired_permutation``: per-image scores; mean of b - a, BCa interval over prompts, sign-flip test of
  the prompts' summed differences;
- ``paired_binary``: 0/1 answers; difference of shares with Newcombe's score interval (method 10) at the
  effective sample size, and an exact sign-flip test of the prompts' discordant counts (a clustered McNemar
  test; with one seed per prompt it is the exact McNemar test);
- ``set_difference_test``: a set statistic (FID, KID, CMMD, GenEval overall); bootstrap over prompts for the
  interval and, inverted, for p;
- ``influence_difference_test``: the same difference by the delta method: each image's influence on its point's
  statistic, differences summed per prompt, a t test over prompts;
- ``contrast_sign_flip``: a contrast of per-image means over k paired sets, sign-flip test of each prompt's
  contrast (the ablation's main effects and interaction of per-image measures);
- ``contrast_bootstrap``: any contrast over k paired sets (a 2x2 design's main effects, interaction),
  resampling prompts jointly; p from the bootstrap standard error, where no permutation test exists;
- ``group_difference_within``: a per-image value in two groups of images (binding errors vs correct images),
  labels permuted within each prompt for p, prompts resampled for the interval.

Each ``PairedTest`` carries ``p_resolution``, the smallest p its resamples can support (0: exact), and can
give its interval at a family's Bonferroni confidence from the same resamples (``interval_at``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from suite.core.influence import clustered_standard_error
from suite.core.stats import (
    CONFIDENCE,
    PERMUTATIONS,
    SEED,
    SET_RESAMPLES,
    Units,
    bootstrap_interval,
    design_effect,
    in_chunks,
    mean_interval,
    units_or_each,
)


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison: difference (b - a), its interval, a two-sided p-value, and what it was computed over."""

    difference: float
    low: float
    high: float
    p_value: float
    n_pairs: int  # images compared in pairs
    test: str
    n_prompts: int = 0  # the units resampled and permuted
    p_resolution: float = 0.0  # smallest p the resamples can support (0: exact)
    at: Callable[[float], tuple[float, float]] | None = field(default=None, compare=False, repr=False)

    def interval_at(self, confidence: float) -> tuple[float, float]:
        """The interval at another confidence (a family's Bonferroni width), from the same resamples."""
        if self.at is None or not math.isfinite(self.low):
            return self.low, self.high
        return self.at(confidence)


def _kept(a, b, units: Units | None) -> tuple[np.ndarray, np.ndarray, Units]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    units = units_or_each(units, len(a))
    keep = ~(np.isnan(a) | np.isnan(b))
    return a[keep], b[keep], units.restricted(keep)


def paired_permutation(
    a: Sequence[float],
    b: Sequence[float],
    units: Units | None = None,
    permutations: int = PERMUTATIONS,
    seed: int = SEED,
) -> PairedTest:
    """Mean of ``b - a`` with a BCa interval over prompts, and a sign-flip permutation test that flips each prompt's
    summed difference as a whole (one seed per prompt: the usual paired sign-flip test)."""
    a, b, units = _kept(a, b, units)
    differences = b - a
    n = len(differences)
    name = f"paired sign-flip test over {units.describe()} ({permutations}), BCa interval over {units.name}"
    if units.count < 2:
        return PairedTest(math.nan, math.nan, math.nan, math.nan, n, name, units.count)
    interval = mean_interval(differences, units, seed=seed)
    if np.all(differences == 0):
        return PairedTest(0.0, 0.0, 0.0, 1.0, n, name, units.count, at=lambda level: (0.0, 0.0))
    result = stats.permutation_test(
        (units.sums(differences),),
        lambda sums, axis=-1: np.sum(sums, axis=axis) / n,
        permutation_type="samples",
        n_resamples=permutations,
        vectorized=True,
        alternative="two-sided",
        random_state=np.random.default_rng(seed),
    )
    exact = 2**units.count <= permutations
    return PairedTest(
        float(differences.mean()),
        interval.low,
        interval.high,
        float(result.pvalue),
        n,
        name,
        units.count,
        0.0 if exact else 2 / (permutations + 1),  # scipy's smallest two-sided Monte Carlo p
        interval.at_confidence,
    )


def sign_flip_exact(totals: np.ndarray) -> float:
    """Two-sided p of the exact sign-flip test of integer per-prompt totals: P(|sum of +-t_u| >= |sum of t_u|).

    With every |t_u| <= 1 this is the exact McNemar test (a binomial test of the discordant pairs);
    otherwise the permutation distribution is built exactly, one prompt at a time.
    """
    totals = np.asarray(totals, dtype=np.int64)
    totals = totals[totals != 0]
    observed = abs(int(totals.sum()))
    if len(totals) == 0:
        return 1.0
    if np.all(np.abs(totals) == 1):
        return float(stats.binomtest(int(np.sum(totals > 0)), len(totals)).pvalue)
    span = int(np.abs(totals).sum())
    distribution = np.zeros(2 * span + 1)
    distribution[span] = 1.0  # index = value + span
    for magnitude in np.abs(totals):
        shifted = np.zeros_like(distribution)
        shifted[magnitude:] += 0.5 * distribution[:-magnitude]
        shifted[:-magnitude] += 0.5 * distribution[magnitude:]
        distribution = shifted
    values = np.arange(-span, span + 1)
    return float(min(1.0, distribution[np.abs(values) >= observed].sum()))


def newcombe_interval(
    both: float, only_a: float, only_b: float, neither: float, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Newcombe's score interval (1998, method 10) of a difference of paired proportions, p_b - p_a.

    Wilson intervals of both marginal shares, combined by square-and-add with the (continuity-corrected) phi
    correlation of the paired answers; never degenerate at zero discordant pairs. Counts may be fractional (effective counts under clustering).
    """
    n = both + only_a + only_b + neither
    p_b, p_a = (both + only_b) / n, (both + only_a) / n
    low_b, high_b = proportion_confint(both + only_b, n, alpha=1 - confidence, method="wilson")
    low_a, high_a = proportion_confint(both + only_a, n, alpha=1 - confidence, method="wilson")
    margins = (both + only_b) * (only_a + neither) * (both + only_a) * (only_b + neither)
    # phi, continuity-corrected as Newcombe defines it: a positive cross-product shrinks by n/2, to no less than 0
    cross = both * neither - only_b * only_a
    corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
    phi = corrected / math.sqrt(margins) if margins > 0 else 0.0
    below = math.sqrt(max((p_b - low_b) ** 2 - 2 * phi * (p_b - low_b) * (high_a - p_a) + (high_a - p_a) ** 2, 0.0))
    above = math.sqrt(max((high_b - p_b) ** 2 - 2 * phi * (high_b - p_b) * (p_a - low_a) + (p_a - low_a) ** 2, 0.0))
    difference = p_b - p_a
    return float(difference - below), float(difference + above)


def paired_binary(a: Sequence[float], b: Sequence[float], units: Units | None = None) -> PairedTest:
    """Difference of paired shares of 0/1 answers (b - a): Newcombe's interval at n / design effect, and the exact
    sign-flip test of each prompt's discordant count (b right, a wrong minus a right, b wrong)."""
    a, b, units = _kept(a, b, units)
    a, b = a.astype(bool), b.astype(bool)
    n = len(a)
    test = "exact McNemar" if units.singletons else f"exact sign-flip test of discordant counts over {units.describe()}"
    if n == 0:
        return PairedTest(math.nan, math.nan, math.nan, math.nan, 0, test, 0)
    both, only_a, only_b = int(np.sum(a & b)), int(np.sum(a & ~b)), int(np.sum(b & ~a))
    neither = n - both - only_a - only_b
    differences = b.astype(np.float64) - a.astype(np.float64)
    deff = design_effect(differences, units)
    name = f"{test}; Newcombe score interval" + (f" at n / {deff:.2f} (design effect)" if deff != 1.0 else "")
    p_value = sign_flip_exact(np.rint(units.sums(differences)).astype(np.int64))

    def at(level: float) -> tuple[float, float]:
        return newcombe_interval(both / deff, only_a / deff, only_b / deff, neither / deff, level)

    low, high = at(CONFIDENCE)
    return PairedTest((only_b - only_a) / n, low, high, p_value, n, name, units.count, 0.0, at)


def set_difference_test(
    statistic: Callable[[np.ndarray], float],
    units: Units,
    resamples: int = SET_RESAMPLES,
    seed: int = SEED,
    weighted: Callable[[np.ndarray], np.ndarray] | None = None,
) -> PairedTest:
    """A set statistic of b minus the same of a, where ``statistic(rows)`` reads the two points' images stacked:
    rows 0..n-1 are a's, n..2n-1 b's, row i and n + i one pair (same prompt and seed); ``units`` labels the n pairs.

    Interval: bootstrap over prompts (both points resampled jointly), bias-shifted percentiles. p: the same
    resamples, inverted: twice the share of bias-shifted resampled differences on the far side of zero,
    (2 k + 2) / (resamples + 1), so p < 0.05 about where the 95% interval excludes zero (slightly
    conservative) and never below 2 / (resamples + 1). Not a permutation test that swaps whole prompts
    between the points: that tests a sharper null (the same image distribution on every one of these prompts)
    than a difference of FIDs over a population of prompts, and in a version of this suite that used it
    (commit c0caa88) it rejected where the FID interval spans zero. ``weighted(counts)`` computes many
    resamples at once from counts per stacked row.
    """
    n = units.n
    first, second = np.arange(n), n + np.arange(n)
    of_a, of_b = float(statistic(first)), float(statistic(second))
    estimate = of_b - of_a
    rng = np.random.default_rng(seed)
    rows = [units.rows(rng.integers(0, units.count, units.count)) for _ in range(resamples)]
    if weighted is None:
        resampled = np.asarray([statistic(n + chosen) - statistic(chosen) for chosen in rows], dtype=np.float64)
    else:
        resampled = in_chunks(weighted, [n + chosen for chosen in rows], 2 * n) - in_chunks(weighted, rows, 2 * n)
    # differences at rounding level (identical images summed in another order) are no difference
    resampled[np.abs(resampled) <= 1e-12 * (abs(of_a) + abs(of_b))] = 0.0
    if abs(estimate) <= 1e-12 * (abs(of_a) + abs(of_b)):
        estimate = 0.0
    bias = float(np.nanmean(resampled)) - estimate
    centred = resampled[~np.isnan(resampled)] - bias
    if np.all(centred == 0) and estimate == 0:
        p_value = 1.0
    else:
        beyond = min(int(np.sum(centred <= 0)), int(np.sum(centred >= 0)))
        p_value = min(1.0, (2 * beyond + 2) / (len(centred) + 1))

    def at(level: float) -> tuple[float, float]:
        low, high = np.nanquantile(resampled, [(1 - level) / 2, (1 + level) / 2]) - bias
        return float(low), float(high)

    low, high = at(CONFIDENCE)
    name = f"bootstrap over {units.describe()}, {resamples} resamples, bias-shifted; p from the same resamples"
    return PairedTest(estimate, low, high, float(p_value), n, name, units.count, 2 / (resamples + 1), at)


def influence_difference_test(
    value_a: float, value_b: float, influence_a: np.ndarray, influence_b: np.ndarray, units: Units
) -> PairedTest:
    """A set statistic of b minus the same of a by the delta method: each is its value plus the mean of its images'
    influences to first order, so the difference's error is that of the paired influence differences, summed per
    prompt (``clustered_standard_error``); interval and p from Student's t with C - 1 degrees of freedom.

    Row i of ``influence_a`` and ``influence_b`` is one pair (same prompt and seed); ``units`` labels the pairs.
    The same comparison as ``set_difference_test`` at the cost of the two points' influences, with no resamples.
    """
    estimate = float(value_b) - float(value_a)
    if abs(estimate) <= 1e-12 * (abs(value_a) + abs(value_b)):  # identical images summed in another order
        estimate = 0.0
    paired = np.asarray(influence_b, dtype=np.float64) - np.asarray(influence_a, dtype=np.float64)
    error = clustered_standard_error(paired, units)
    degrees = units.count - 1
    name = f"delta method: paired influence differences summed per prompt over {units.describe()}, t with {degrees} df"
    if not math.isfinite(error):
        return PairedTest(estimate, math.nan, math.nan, math.nan, units.n, name, units.count)
    if error == 0:
        p_value = 1.0 if estimate == 0 else 0.0
    else:
        p_value = float(2 * stats.t.sf(abs(estimate) / error, degrees))

    def at(level: float) -> tuple[float, float]:
        half = float(stats.t.ppf((1 + level) / 2, degrees)) * error
        return estimate - half, estimate + half

    low, high = at(CONFIDENCE)
    return PairedTest(estimate, low, high, p_value, units.n, name, units.count, 0.0, at)


def contrast_sign_flip(
    contributions: np.ndarray, permutations: int = PERMUTATIONS, seed: int = SEED
) -> tuple[float, float]:
    """Two-sided p of a contrast that is a sum over prompts, flipping the sign of each prompt's contribution.

    For a contrast of k paired sets' per-image means, prompt u contributes sum over sets c of
    w_c * S_cu / N_c (S_cu: the set's sum over the prompt's images, N_c: its number of images), and the
    contributions add up to the contrast; under the null each is symmetric about zero. Returns (p, its
    resolution: 0 when all sign patterns were enumerated, else 2 / (permutations + 1)).
    """
    contributions = np.asarray(contributions, dtype=np.float64)
    if np.all(contributions == 0):
        return 1.0, 0.0
    result = stats.permutation_test(
        (contributions,),
        lambda values, axis=-1: np.sum(values, axis=axis),
        permutation_type="samples",
        n_resamples=permutations,
        vectorized=True,
        alternative="two-sided",
        random_state=np.random.default_rng(seed),
    )
    exact = 2 ** len(contributions) <= permutations
    return float(result.pvalue), 0.0 if exact else 2 / (permutations + 1)


def contrast_bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    weights: Sequence[float],
    units: Units | int,
    resamples: int = SET_RESAMPLES,
    seed: int = SEED,
) -> PairedTest:
    """A contrast ``weights . values`` of a statistic over k paired sets, resampling units jointly for all k.

    ``statistic(units)`` returns the k sets' values restricted to the resampled unit positions (with repeats):
    with weights (-1, 1) it is a paired difference; over a 2x2 design's cells (-1/2, -1/2, 1/2, 1/2) a main
    effect and (1, -1, -1, 1) the interaction. Interval: bias-shifted percentiles of the resampled contrasts.
    p: two-sided normal approximation with the bootstrap standard error; it is not limited to multiples of
    1 / resamples, but its tail below 1 / resamples is not supported by them (``p_resolution``).
    """
    count = units if isinstance(units, int) else units.count
    name = "units" if isinstance(units, int) else units.name
    weights = np.asarray(weights, dtype=np.float64)
    estimate = float(weights @ statistic(np.arange(count)))
    rng = np.random.default_rng(seed)
    contrasts = np.asarray([weights @ statistic(rng.integers(0, count, count)) for _ in range(resamples)])
    contrasts = contrasts[~np.isnan(contrasts)]  # a resample without any prompt of a measure's categories
    method = f"bootstrap over {count} {name}, {resamples} resamples, normal p"
    if len(contrasts) < 2 or math.isnan(estimate):  # the measure has no values at all
        return PairedTest(math.nan, math.nan, math.nan, math.nan, count, method, count)
    bias = float(contrasts.mean()) - estimate
    error = float(contrasts.std(ddof=1))
    if error == 0:
        p_value = 1.0 if estimate == 0 else 0.0
    else:
        p_value = float(2 * stats.norm.sf(abs(estimate) / error))

    def at(level: float) -> tuple[float, float]:
        low, high = np.quantile(contrasts, [(1 - level) / 2, (1 + level) / 2]) - bias
        return float(low), float(high)

    low, high = at(CONFIDENCE)
    method = f"bootstrap over {count} {name}, {resamples} resamples, normal p"
    return PairedTest(estimate, low, high, p_value, count, method, count, 1 / resamples, at)


def group_difference_within(
    values: Sequence[float],
    in_group: Sequence[bool],
    units: Units,
    permutations: int = PERMUTATIONS,
    seed: int = SEED,
) -> PairedTest:
    """How much higher ``values`` are in the group's images than in the other images of the same prompt.

    The within-prompt (fixed-effects) estimate: with v and g (1 in the group, else 0) each centred on its prompt's
    mean, sum(v g) / sum(g g); prompts whose images all fall on one side contribute nothing, and prompts that
    differ in level and in how often they fall in the group cannot make a difference. Tested by permuting the
    labels within each prompt (a stratified permutation test); the interval resamples prompts (bias-shifted
    percentiles)."""
    values, labels = np.asarray(values, dtype=np.float64), np.asarray(in_group, dtype=np.float64)
    keep = ~np.isnan(values)
    values, labels, of_value = values[keep], labels[keep], units.of_value[keep]
    units = Units.of(of_value, units.name)
    name = f"within-prompt estimate, labels permuted within {units.describe()} ({permutations}), interval resampling {units.name}"

    def centred(chosen_values: np.ndarray, of: np.ndarray) -> np.ndarray:
        return chosen_values - (np.bincount(of, chosen_values) / np.bincount(of))[of]

    def within(chosen_values: np.ndarray, chosen_labels: np.ndarray, of: np.ndarray) -> float:
        g = centred(chosen_labels, of)
        spread = float(g @ g)
        return float(centred(chosen_values, of) @ g / spread) if spread > 1e-12 else math.nan

    estimate = within(values, labels, units.of_value)
    if math.isnan(estimate):
        return PairedTest(math.nan, math.nan, math.nan, math.nan, len(values), name, units.count)
    rng = np.random.default_rng(seed)
    order = np.argsort(units.of_value, kind="stable")  # images grouped by prompt, to shuffle within blocks
    sorted_units = units.of_value[order]
    sorted_values = centred(values, units.of_value)[order]
    sorted_labels = labels[order]
    g = centred(sorted_labels, sorted_units)
    spread = float(g @ g)
    permuted = np.empty(permutations)
    for index in range(permutations):
        keys = np.lexsort((rng.random(len(values)), sorted_units))  # a random order within each prompt
        permuted[index] = sorted_values[keys] @ g / spread
    extreme = np.sum(np.abs(permuted) >= abs(estimate) - 1e-12 * max(1.0, abs(estimate)))
    p_value = float((extreme + 1) / (permutations + 1))
    rows_of_unit = [np.flatnonzero(units.of_value == unit) for unit in range(units.count)]
    sizes = np.bincount(units.of_value, minlength=units.count)

    def resampled(rows: np.ndarray) -> float:
        # ``rows`` lists each drawn prompt's images, prompt after prompt; a prompt drawn twice counts twice
        draws = np.bincount(units.of_value[rows], minlength=units.count) // sizes  # images drawn / images per prompt
        drawn = np.repeat(np.arange(units.count), draws)
        copies = np.concatenate([np.full(len(rows_of_unit[unit]), copy) for copy, unit in enumerate(drawn)])
        chosen = np.concatenate([rows_of_unit[unit] for unit in drawn])
        return within(values[chosen], labels[chosen], copies)

    interval = bootstrap_interval(resampled, units, seed=seed)
    return PairedTest(
        estimate,
        interval.low,
        interval.high,
        p_value,
        len(values),
        name,
        units.count,
        1 / (permutations + 1),
        interval.at,
    )
