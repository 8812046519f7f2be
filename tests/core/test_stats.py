"""Known answers for the statistics behind every interval and comparison: coverage, uniform p under the null,
power against a planted difference, Holm's adjustment, and FID_inf against FID at a small sample."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg
from scipy import stats as scipy_stats

from suite.core import paired, stats
from suite.metrics.distribution import FrechetToReference


def test_bootstrap_interval_of_a_mean_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = 0
    for repetition in range(400):
        values = rng.exponential(2.0, size=60)  # skewed, true mean 2
        interval = stats.mean_interval(values, resamples=1000, seed=repetition)
        covered += interval.low <= 2.0 <= interval.high
    assert 0.92 <= covered / 400 <= 0.98


def test_wilson_interval_covers_a_known_proportion():
    rng = np.random.default_rng(1)
    covered = sum(
        (interval := stats.wilson_interval(int(rng.binomial(48, 0.8)), 48)).low <= 0.8 <= interval.high
        for _ in range(400)
    )
    assert 0.92 <= covered / 400 <= 0.98


def test_interval_of_a_constant_is_the_constant_and_of_too_little_data_is_nan():
    constant = stats.mean_interval([1.0] * 10)
    assert (constant.low, constant.high) == (1.0, 1.0)
    assert np.isnan(stats.mean_interval([1.0]).low)


def test_permutation_and_mcnemar_p_values_are_uniform_under_the_null():
    rng = np.random.default_rng(2)
    permutation, mcnemar = [], []
    for repetition in range(200):
        a = rng.normal(size=40)
        permutation.append(
            paired.paired_permutation(a, a + rng.normal(size=40), permutations=999, seed=repetition).p_value
        )
        x, y = rng.random(80) < 0.5, rng.random(80) < 0.5
        mcnemar.append(paired.paired_binary(x, y).p_value)
    assert scipy_stats.kstest(permutation, "uniform").pvalue > 0.01
    # The exact test is discrete (many p = 1), so its p-values cannot be exactly uniform; they must not be
    # anti-conservative: the one-sided KS test of "P(p <= x) > x somewhere" must not reject.
    assert scipy_stats.kstest(mcnemar, "uniform", alternative="greater").pvalue > 0.01
    assert np.mean(np.array(mcnemar) <= 0.05) <= 0.05 + 0.03


def test_a_planted_difference_is_rejected():
    rng = np.random.default_rng(3)
    a = rng.normal(size=60)
    shifted = paired.paired_permutation(a, a + 0.5 + 0.5 * rng.normal(size=60))
    assert shifted.p_value < 0.001 and shifted.low > 0
    worse, better = rng.random(100) < 0.5, rng.random(100) < 0.9
    test = paired.paired_binary(worse, better)
    assert test.p_value < 0.001 and test.low > 0 and test.difference == pytest.approx(better.mean() - worse.mean())
    stacked = np.concatenate([a, a + 0.5 + 0.5 * rng.normal(size=60)])
    test = paired.set_difference_test(lambda rows: float(stacked[rows].mean()), stats.Units.each(60), resamples=500)
    assert test.p_value <= 2 / 501 and test.low > 0 and test.p_resolution == 2 / 501


def test_a_point_compared_with_itself_differs_by_zero_with_p_one():
    values = np.random.default_rng(4).normal(size=30)
    assert (
        paired.paired_permutation(values, values).difference,
        paired.paired_permutation(values, values).p_value,
    ) == (
        0.0,
        1.0,
    )
    answers = values > 0
    assert (paired.paired_binary(answers, answers).difference, paired.paired_binary(answers, answers).p_value) == (0, 1)
    stacked = np.concatenate([values, values])
    test = paired.set_difference_test(lambda rows: float(stacked[rows].mean()), stats.Units.each(30), resamples=200)
    assert (test.difference, test.p_value, test.low, test.high) == (0.0, 1.0, 0.0, 0.0)


def test_holm_matches_the_step_down_definition():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    adjusted = stats.holm(p)
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, made monotone
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(adjusted[4]) and np.all(adjusted[:4] >= p[:4])


def test_fid_inf_on_gaussians_is_closer_to_the_true_fid_than_fid_at_64_images():
    """Chong & Forsyth: FID at n images is biased by about k / n; extrapolating to 1/n = 0 removes most of it.

    With 16 dimensions the fit runs from 17 to 64 images (n / 10 would be below the dimension), 3.8x apart."""
    rng = np.random.default_rng(5)
    dimension = 16
    a, b = rng.normal(size=(2, dimension, dimension))
    covariance_g, covariance_r = (
        a @ a.T / dimension + 0.5 * np.eye(dimension),
        b @ b.T / dimension + 0.5 * np.eye(dimension),
    )
    mean_g, mean_r = np.zeros(dimension), np.full(dimension, 0.3)
    true = float(
        np.sum((mean_g - mean_r) ** 2)
        + np.trace(covariance_g)
        + np.trace(covariance_r)
        - 2 * np.trace(linalg.sqrtm(covariance_g @ covariance_r)).real
    )
    distance = FrechetToReference(mean_r, covariance_r)  # the reference's true moments
    errors_64, errors_inf = [], []
    for repetition in range(30):
        generated = rng.multivariate_normal(mean_g, covariance_g, size=64)
        errors_64.append(abs(distance(generated) - true))
        errors_inf.append(
            abs(
                stats.fid_infinity(
                    lambda rows, sample=generated: distance(sample[rows]), 64, dimension, seed=repetition
                ).value
                - true
            )
        )
    assert np.mean(errors_64) >= 3 * np.mean(errors_inf)


def test_a_median_time_interval_stays_positive_where_the_shifted_bootstrap_went_below_zero():
    """Skewed times (a slow first batch): the bias-shifted bootstrap gave a low bound below zero."""
    times = np.array([0.35, 0.36, 0.98, 4.1, 4.3])
    shifted = stats.bootstrap_interval(lambda rows: float(np.median(times[rows])), len(times))
    interval = stats.median_interval(times)
    assert shifted.low < 0  # what the report printed before
    assert times.min() <= interval.low <= np.median(times) <= interval.high <= times.max()
