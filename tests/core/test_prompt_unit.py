"""Known answers on clustered data: prompts with a random effect, seeds within them, the true values known.

The designs are what a sweep produces: P prompts x m seeds, where a prompt's images share its difficulty
(intra-prompt correlation, ICC, 0 / 0.3 / 0.6). Intervals must cover the true value about 95% of the time
and tests must hold their level, at every ICC; image-level methods do not once ICC > 0 (the numbers are in
each docstring, measured with the same seeds).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from suite.core import paired, stats
from suite.metrics import distribution
from suite.metrics.distribution import FrechetToReference

PROMPTS, SEEDS, REPETITIONS = 30, 8, 400
LABELS = np.repeat(np.arange(PROMPTS), SEEDS)


def two_level(rng: np.random.Generator, icc: float) -> np.ndarray:
    """Unit-variance values with intra-prompt correlation ``icc``, mean 0, in prompt-major order."""
    prompt = rng.normal(0, math.sqrt(icc), PROMPTS)
    return (prompt[:, None] + rng.normal(0, math.sqrt(1 - icc), (PROMPTS, SEEDS))).ravel()


def coverage(intervals: list[tuple[float, float]], truth: float) -> float:
    return float(np.mean([low <= truth <= high for low, high in intervals]))


@pytest.mark.parametrize("icc", [0.0, 0.3, 0.6])
def test_intervals_over_prompts_cover_means_shares_and_paired_differences(icc):
    """Means, shares (latent value above 0.5: true share 1 - Phi(0.5)) and a paired difference (true 0.2).

    The same intervals over images (every image its own unit) covered the mean 93.8% / 74.0% / 56.5% of the
    time at ICC 0 / 0.3 / 0.6 in this design (400 repetitions): at ICC 0.6 they are about 2.3x too narrow
    (design effect 1 + 7 x 0.6 = 5.2).
    """
    rng = np.random.default_rng(int(icc * 10))
    units = stats.Units.of(LABELS)
    share_truth = float(scipy_stats.norm.sf(0.5))
    means, shares_bca, shares_wilson, differences = [], [], [], []
    for repetition in range(REPETITIONS):
        values = two_level(rng, icc)
        means.append(astuple(stats.mean_interval(values, units, resamples=499, seed=repetition)))
        answers = (two_level(rng, icc) > 0.5).astype(float)
        shares_bca.append(astuple(stats.mean_interval(answers, units, resamples=499, seed=repetition)))
        shares_wilson.append(astuple(stats.share_interval(answers, units)))
        a = two_level(rng, icc)
        b = a + 0.2 + two_level(rng, icc)
        test = paired.paired_permutation(a, b, units, permutations=199, seed=repetition)
        differences.append((test.low, test.high))
    assert 0.92 <= coverage(means, 0.0) <= 0.98
    assert 0.92 <= coverage(shares_bca, share_truth) <= 0.98
    assert 0.92 <= coverage(shares_wilson, share_truth) <= 0.98
    assert 0.92 <= coverage(differences, 0.2) <= 0.98


def astuple(interval: stats.Interval) -> tuple[float, float]:
    return interval.low, interval.high


def test_image_level_intervals_fail_at_icc_0_6():
    """The failure the prompt unit fixes: the same BCa interval treating each image as a unit undercovers."""
    rng = np.random.default_rng(6)
    intervals = [
        astuple(stats.mean_interval(two_level(rng, 0.6), resamples=999, seed=repetition)) for repetition in range(200)
    ]
    assert coverage(intervals, 0.0) < 0.8


def test_prompt_level_tests_hold_their_level_under_the_null_and_find_a_planted_prompt_effect():
    """Null: within each prompt the two points are exchangeable, but prompts differ (ICC 0.6 for scores; per
    prompt two success probabilities drawn from Beta(1, 1) and assigned at random for 0/1 answers).

    At this design the image-level sign-flip test rejected 47% of null cases at 0.05, and the exact McNemar
    test on images 27% (300 repetitions); the prompt-level tests reject about 5% or less.
    """
    rng = np.random.default_rng(7)
    units = stats.Units.of(LABELS)
    scores, binary = [], []
    for repetition in range(300):
        a = two_level(rng, 0.6)
        scores.append(paired.paired_permutation(a, a + two_level(rng, 0.6), units, 999, repetition).p_value)
        chances = rng.beta(1, 1, (PROMPTS, 2))
        swap = rng.random(PROMPTS) < 0.5
        first, second = np.where(swap, chances[:, 1], chances[:, 0]), np.where(swap, chances[:, 0], chances[:, 1])
        answers_a = rng.random((PROMPTS, SEEDS)) < first[:, None]
        answers_b = rng.random((PROMPTS, SEEDS)) < second[:, None]
        binary.append(paired.paired_binary(answers_a.ravel(), answers_b.ravel(), units).p_value)
    assert scipy_stats.kstest(scores, "uniform").pvalue > 0.01
    assert scipy_stats.kstest(binary, "uniform", alternative="greater").pvalue > 0.01
    assert np.mean(np.array(binary) <= 0.05) <= 0.05 + 0.03
    # a planted effect at the prompt level: b right 25 points more often on every prompt
    base = rng.beta(2, 2, PROMPTS) * 0.7
    answers_a = rng.random((PROMPTS, SEEDS)) < base[:, None]
    answers_b = rng.random((PROMPTS, SEEDS)) < base[:, None] + 0.25
    planted = paired.paired_binary(answers_a.ravel(), answers_b.ravel(), units)
    assert planted.p_value < 0.001 and planted.low > 0


def test_with_one_seed_per_prompt_every_method_is_its_image_level_form():
    """One seed per prompt: the BCa interval, the sign-flip test, McNemar's exact test, Wilson's interval and the
    set bootstrap are exactly the image-level computations (scipy's, on the values themselves)."""
    rng = np.random.default_rng(8)
    values = rng.exponential(size=50)
    units = stats.Units.of(np.arange(50) * 3 + 1000)  # labels in the order of the values, one value each
    direct = scipy_stats.bootstrap(
        (values,), np.mean, n_resamples=2000, method="BCa", random_state=np.random.default_rng(0)
    )
    interval = stats.mean_interval(values, units)
    assert (interval.low, interval.high) == pytest.approx(tuple(direct.confidence_interval), rel=1e-12)
    a, b = rng.normal(size=40), rng.normal(size=40) + 0.3
    flipped = scipy_stats.permutation_test(
        (b - a,), np.mean, permutation_type="samples", n_resamples=20000, random_state=np.random.default_rng(0)
    )
    assert paired.paired_permutation(a, b, stats.Units.each(40)).p_value == pytest.approx(flipped.pvalue)
    x, y = rng.random(80) < 0.5, rng.random(80) < 0.65
    discordant = int(np.sum(y & ~x)), int(np.sum(x & ~y))
    mcnemar = scipy_stats.binomtest(discordant[0], sum(discordant)).pvalue
    assert paired.paired_binary(x, y, stats.Units.each(80)).p_value == pytest.approx(mcnemar, rel=1e-12)
    wilson = scipy_stats.binomtest(int(x.sum()), 80).proportion_ci(0.95, method="wilson")
    share = stats.share_interval(x.astype(float), stats.Units.each(80))
    assert (share.low, share.high) == pytest.approx((wilson.low, wilson.high), rel=1e-12)
    generator = np.random.default_rng(0)
    manual = [np.median(values[generator.integers(0, 50, 50)]) for _ in range(300)]
    expected = np.quantile(manual, [0.025, 0.975]) - (np.mean(manual) - np.median(values))
    found = stats.bootstrap_interval(lambda rows: float(np.median(values[rows])), 50, resamples=300)
    assert (found.low, found.high) == pytest.approx(tuple(expected), rel=1e-12)


def test_the_exact_sign_flip_test_is_the_permutation_distribution():
    """Against full enumeration of the 2^6 sign patterns of integer per-prompt totals."""
    totals = np.array([3, -1, 2, 2, 0, 1])
    signs = np.array(np.meshgrid(*[[-1, 1]] * len(totals))).reshape(len(totals), -1).T
    enumerated = np.mean(np.abs(signs @ totals) >= abs(totals.sum()))
    assert paired.sign_flip_exact(totals) == pytest.approx(enumerated)
    assert paired.sign_flip_exact(np.zeros(5, dtype=int)) == 1.0


def test_paired_share_interval_is_a_score_interval_that_covers_and_never_collapses():
    """Newcombe's method 10: about 95% coverage of a paired difference of shares, and a real interval with no
    discordant pairs (the Wald interval there was [0, 0])."""
    rng = np.random.default_rng(9)
    intervals = []
    for _ in range(REPETITIONS):
        first = rng.random(60) < 0.6
        second = np.where(rng.random(60) < 0.8, first, rng.random(60) < 0.7)  # correlated, true shares 0.6 / 0.62
        test = paired.paired_binary(first, second)
        intervals.append((test.low, test.high))
    assert 0.92 <= coverage(intervals, 0.8 * 0.6 + 0.2 * 0.7 - 0.6) <= 0.98
    same = rng.random(50) < 0.5
    test = paired.paired_binary(same, same)
    assert test.difference == 0 and test.p_value == 1.0 and test.low < -0.01 and test.high > 0.01
    # Bentur et al. (2009) in Fagerland, Lydersen & Laake's tables: Newcombe's interval (-0.507, -0.026)
    assert paired.newcombe_interval(1, 7, 1, 12) == pytest.approx((-0.507, -0.026), abs=5e-4)


@pytest.mark.slow  # about 15 s each on 2 cores: `pytest -m slow`
def test_fid_interval_covers_the_expected_fid_at_n_and_fid_inf_is_refused_below_the_dimension():
    """FID at n images has a mean E[FID_n] above the true FID; the interval over prompts (reference fixed)
    must cover E[FID_n] for n > d. Generated features: 40 prompts x 3 seeds in 4 dimensions, a prompt effect
    holding half the variance; E[FID_n] from 2,000 independent draws."""
    rng = np.random.default_rng(10)
    dimension, prompts, seeds = 4, 40, 3
    reference = FrechetToReference(np.full(dimension, 0.3), np.eye(dimension))
    units = stats.Units.of(np.repeat(np.arange(prompts), seeds))

    def draw() -> np.ndarray:
        centres = rng.normal(0, math.sqrt(0.5), (prompts, 1, dimension))
        return (centres + rng.normal(0, math.sqrt(0.5), (prompts, seeds, dimension))).reshape(-1, dimension)

    expected = float(np.mean([reference(draw()) for _ in range(2000)]))
    intervals = []
    for repetition in range(250):
        features = draw()
        interval = stats.bootstrap_interval(
            lambda rows, f=features: reference(f[rows]), units, resamples=150, seed=repetition
        )
        intervals.append((interval.low, interval.high))
    assert 0.92 <= coverage(intervals, expected) <= 0.98
    refused = stats.fid_infinity(lambda rows: 0.0, 60, 64)
    assert math.isnan(refused.value) and "feature dimension" in refused.refused
    assert stats.fid_infinity(lambda rows: 0.0, 150, 64).refused  # fit from 65 images would span too little
    assert not stats.fid_infinity(lambda rows: float(len(rows)), 400, 64).refused


@pytest.mark.parametrize(("kernel", "unbiased"), [("polynomial", True), ("gaussian", False)])
def test_kernel_statistics_of_many_resamples_at_once_equal_one_at_a_time(kernel, unbiased):
    """KID's and CMMD's matrix form (counts per row) gives the numbers of the row-by-row form, copies included."""
    rng = np.random.default_rng(11)
    generated, reference = rng.normal(size=(60, 8)), rng.normal(size=(100, 8)) + 0.2
    function = distribution.polynomial_kernel if kernel == "polynomial" else distribution.gaussian_kernel
    units = stats.Units.of(np.repeat(np.arange(20), 3))
    statistic = distribution.KernelToReference(generated, reference, function, unbiased=unbiased)
    one, many = (stats.bootstrap_interval(statistic, units, 200, weighted=w) for w in (None, statistic.weighted))
    assert (one.low, one.high) == pytest.approx((many.low, many.high), rel=1e-9)
    stacked = np.concatenate([generated, generated + 0.1 * rng.normal(size=generated.shape)])
    both = distribution.KernelToReference(stacked, reference, function, unbiased=unbiased)
    one, many = (paired.set_difference_test(both, units, 200, weighted=w) for w in (None, both.weighted))
    assert one.p_value == many.p_value and (one.low, one.high) == pytest.approx((many.low, many.high), rel=1e-9)


@pytest.mark.slow  # about 15 s each on 2 cores: `pytest -m slow`
def test_fid_difference_test_holds_its_level_and_finds_a_planted_shift():
    """Two points that share prompts (the same prompt centres) and differ only in their seeds' noise: the
    bootstrap-over-prompts p of their FID difference rejects at most about 5% of the time; a shift of b's
    mean by 0.5 in every dimension is found."""
    rng = np.random.default_rng(12)
    dimension, prompts, seeds = 4, 40, 3
    reference = FrechetToReference(np.zeros(dimension), np.eye(dimension))
    units = stats.Units.of(np.repeat(np.arange(prompts), seeds))

    def pair(shift: float) -> np.ndarray:
        centres = np.repeat(rng.normal(0, math.sqrt(0.5), (prompts, dimension)), seeds, axis=0)
        a = centres + rng.normal(0, math.sqrt(0.5), centres.shape)
        return np.concatenate([a, centres + shift + rng.normal(0, math.sqrt(0.5), centres.shape)])

    p_values = []
    for repetition in range(200):
        stacked = pair(0.0)
        test = paired.set_difference_test(lambda rows, s=stacked: reference(s[rows]), units, 120, seed=repetition)
        p_values.append(test.p_value)
    assert np.mean(np.array(p_values) <= 0.05) <= 0.05 + 0.03
    stacked = pair(0.5)
    planted = paired.set_difference_test(lambda rows: reference(stacked[rows]), units, 200)
    assert planted.p_value < 0.05 and planted.low > 0


@pytest.mark.parametrize("icc", [0.0, 0.3, 0.6])
def test_paired_share_interval_over_prompts_covers_a_clustered_difference(icc):
    """Paired 0/1 answers from correlated latent values (a above 0.5, b above 0.3; true difference
    P(Z > 0.3) - P(Z > 0.5)): Newcombe's interval at the effective sample size covers at 92-98%."""
    rng = np.random.default_rng(20 + int(icc * 10))
    units = stats.Units.of(LABELS)
    truth = float(scipy_stats.norm.sf(0.3) - scipy_stats.norm.sf(0.5))
    intervals = []
    for _ in range(REPETITIONS):
        latent = two_level(rng, icc)
        other = math.sqrt(0.5) * latent + math.sqrt(0.5) * two_level(rng, icc)
        test = paired.paired_binary(latent > 0.5, other > 0.3, units)
        intervals.append((test.low, test.high))
    assert 0.92 <= coverage(intervals, truth) <= 0.98
