"""The delta-method intervals of FID, KID and CMMD, validated against the bootstrap they replace.

Influence functions are checked as derivatives (a finite difference of the statistic of a reweighted set), then the
intervals on clustered Gaussian data (prompts with several seeds each, so the prompt is the unit) for coverage and
width next to the full bootstrap, then their widths on toy-world images through the toy CLIP's features.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from suite.core import paired, stats
from suite.core.influence import influence_interval
from suite.metrics.distribution import (
    CMMD_SCALE,
    BlockedKernel,
    FrechetToReference,
    KernelToReference,
    gaussian_kernel,
    normalised,
    polynomial_kernel,
    prompt_blocks,
)
from suite.metrics.networks import FEATURE_NETWORKS, NetworkContext
from suite.metrics.reference import extract
from suite.toy import world

DIMENSION = 6


def clustered(seed: int, prompts: int = 60, seeds: int = 3, shift: float = 0.0) -> tuple[np.ndarray, stats.Units]:
    """Features of ``prompts`` prompts x ``seeds`` seeds: a prompt's images share its centre (correlated)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((prompts, DIMENSION)) * 0.6 + shift
    features = np.repeat(centres, seeds, axis=0) + rng.standard_normal((prompts * seeds, DIMENSION)) * 0.8
    return features, stats.Units.of(np.repeat(np.arange(prompts), seeds))


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((800, DIMENSION)) * 1.2 + 0.3


def kid_of(reference):
    return lambda features, units: BlockedKernel.of(features, reference, units, polynomial_kernel, unbiased=True)


def cmmd_of(reference):
    return lambda features, units: KernelToReference(
        normalised(features), normalised(reference), gaussian_kernel, unbiased=False, scale=CMMD_SCALE
    )


def test_fid_influence_is_the_derivative_of_fid_towards_one_image(reference):
    features, _ = clustered(0)
    count = len(features)
    distance = FrechetToReference.of(reference)

    def fid_of_weights(weights: np.ndarray) -> float:  # FID of the set with image i weighted w_i (sum 1)
        mean = weights @ features
        centred = features - mean
        covariance = (centred * weights[:, None]).T @ centred * count / (count - 1)
        cross = scipy.linalg.sqrtm(distance.root @ covariance @ distance.root).real
        return float(np.sum((mean - distance.mean) ** 2) + np.trace(covariance) + distance.trace - 2 * np.trace(cross))

    uniform = np.full(count, 1 / count)
    assert fid_of_weights(uniform) == pytest.approx(distance(features), rel=1e-9)
    influence, step = distance.influence(features), 1e-6
    for image in (0, 5, 77, 150):
        towards = np.eye(count)[image]
        derivative = (fid_of_weights((1 - step) * uniform + step * towards) - fid_of_weights(uniform)) / step
        assert influence[image] == pytest.approx(derivative, rel=0.02, abs=0.01 * np.abs(influence).mean())


@pytest.mark.parametrize("statistic", [kid_of, cmmd_of], ids=["kid", "cmmd"])
def test_kernel_influence_is_the_derivative_towards_one_image(reference, statistic):
    features, units = clustered(1)
    of = statistic(reference)(features, units)
    count = len(features)
    influence, step = of.influence(), 1e-4
    for image in (0, 9, 100):
        weights = np.ones((1, count))
        more = weights.copy()
        more[0, image] += step * count  # the image's weight grows by step, as a share of the set
        derivative = float((of.weighted(more) - of.weighted(weights))[0]) / step
        assert influence[image] == pytest.approx(derivative, rel=0.05, abs=0.02 * np.abs(influence).mean())


@pytest.mark.parametrize("name", ["fid", "kid", "cmmd"])
def test_delta_interval_covers_and_is_as_wide_as_the_bootstrap_on_clustered_gaussians(reference, name):
    """120 data sets of 60 prompts x 3 seeds: the delta interval's coverage of the statistic's mean at this size
    and its width are within 10% (absolute coverage, relative width) of the 200-resample bootstrap's."""
    distance = FrechetToReference.of(reference)
    values, delta, bootstrap = [], [], []
    for repetition in range(120):
        features, units = clustered(100 + repetition)
        if name == "fid":
            value, influence = distance(features), distance.influence(features)
            resampled = stats.bootstrap_interval(
                lambda rows, f=features: distance(f[rows]), units, 200, seed=repetition
            )
        else:
            of = (kid_of if name == "kid" else cmmd_of)(reference)(features, units)
            value, influence = of(np.arange(len(features))), of.influence()
            resampled = stats.bootstrap_interval(of, units, 200, seed=repetition, weighted=of.weighted)
        values.append(value)
        delta.append(influence_interval(value, influence, units))
        bootstrap.append(resampled)
    target = np.mean(values)  # the statistic's expectation at this sample size (both intervals describe it)
    covered_delta = np.mean([interval.low <= target <= interval.high for interval in delta])
    covered_bootstrap = np.mean([interval.low <= target <= interval.high for interval in bootstrap])
    widths = np.median([(d.high - d.low) / (b.high - b.low) for d, b in zip(delta, bootstrap)])
    assert covered_delta >= 0.85 and abs(covered_delta - covered_bootstrap) <= 0.10
    assert 0.9 <= widths <= 1.1
    # and the interval is the spread of the statistic over data sets: its half-width over t is their sd
    assert np.median([(d.high - d.low) / 2 / 2.0 for d in delta]) == pytest.approx(np.std(values), rel=0.15)


def test_paired_delta_test_agrees_with_the_paired_bootstrap(reference):
    """Two points on the same prompts and seeds, one shifted: the same difference, interval within 10% in width,
    both significant; and no difference between a point and itself."""
    distance = FrechetToReference.of(reference)
    a, units = clustered(3)
    b = 1.2 * a + 0.25 + 0.3 * np.random.default_rng(9).standard_normal(a.shape)  # another mean and covariance
    delta = paired.influence_difference_test(
        distance(a), distance(b), distance.influence(a), distance.influence(b), units
    )
    stacked = np.concatenate([a, b])
    bootstrap = paired.set_difference_test(lambda rows: distance(stacked[rows]), units, 1000)
    assert delta.difference == pytest.approx(bootstrap.difference)
    assert (delta.high - delta.low) == pytest.approx(bootstrap.high - bootstrap.low, rel=0.1)
    assert delta.p_value < 0.05 and bootstrap.p_value < 0.05
    same = paired.influence_difference_test(
        distance(a), distance(a), distance.influence(a), distance.influence(a), units
    )
    assert same.difference == 0 and same.p_value == 1.0


def test_kid_blocks_hold_whole_prompts_and_one_block_is_the_whole_set(reference):
    features, units = clustered(4, prompts=500, seeds=3)  # 1,500 images: two blocks
    blocks = prompt_blocks(units)
    assert len(blocks) == 2 and sorted(np.concatenate(blocks)) == list(range(len(features)))
    for rows in blocks:
        assert not set(units.of_value[rows]) & set(units.of_value[np.setdiff1d(np.arange(len(features)), rows)])
        assert abs(len(rows) - 750) <= 3
    few, few_units = clustered(5)
    whole = KernelToReference(few, reference, polynomial_kernel, unbiased=True)
    blocked = BlockedKernel.of(few, reference, few_units, polynomial_kernel, unbiased=True)
    assert blocked(np.arange(len(few))) == pytest.approx(whole(np.arange(len(few))), rel=1e-12)


@pytest.mark.slow  # about 35 s: 24 draws of 264 toy images, each with its bootstrap
def test_on_toy_world_features_the_delta_interval_is_the_spread_over_new_prompts_and_seeds():
    """On a toy run's scale (44 prompts x 6 seeds, the toy CLIP's 128 features, n about 2d), drawn 24 times with new
    prompts and seeds: the delta interval's standard error is within 0.7-1.6x the statistics' actual spread over
    the draws and it covers their mean at least 85% of the time, while the bootstrap is no narrower.

    Here the two methods part: the bootstrap's resamples repeat images, and with few images per feature dimension
    FID and the kernel statistics move with the count of distinct images, which widens it (measured: FID's bootstrap
    1.7x the actual spread, the delta method 1.2x; README, Metrics)."""
    network = FEATURE_NETWORKS.get("toy-clip")(NetworkContext())
    reference_images, _ = world.sample_batch(seed=0, count=1024, include_held_out=True)
    reference = extract(network, list(reference_images)).astype(np.float64)
    distance = FrechetToReference.of(reference)
    units = stats.Units.of(np.repeat(np.arange(44), 6))
    found = {name: [] for name in ("fid", "kid", "cmmd")}
    for draw in range(24):
        rng = np.random.default_rng(1000 + draw)
        captions = world.sample_captions(rng, 44)
        features = extract(network, [world.draw_caption(c, rng) for c in captions for _ in range(6)]).astype(np.float64)
        statistics = {
            "fid": (distance(features), distance.influence(features), lambda rows, f=features: distance(f[rows]))
        }
        for name, make in (("kid", kid_of), ("cmmd", cmmd_of)):
            of = make(reference)(features, units)
            statistics[name] = (of(np.arange(len(features))), of.influence(), of)
        for name, (value, influence, of) in statistics.items():
            weighted = getattr(of, "weighted", None)
            bootstrap = stats.bootstrap_interval(of, units, 200, seed=draw, weighted=weighted)
            found[name].append((value, influence_interval(value, influence, units), bootstrap))
    for name, draws in found.items():
        values = np.array([value for value, _, _ in draws])
        spread, mean = values.std(ddof=1), values.mean()
        errors = np.array([(delta.high - delta.low) / 2 / 2.017 for _, delta, _ in draws])  # t with 43 df
        bootstrap_errors = [(bootstrap.high - bootstrap.low) / 2 / 1.96 for _, _, bootstrap in draws]
        print(
            f"{name}: spread {spread:.4g}, delta {np.median(errors):.4g}, bootstrap {np.median(bootstrap_errors):.4g}"
        )
        covered = np.mean([delta.low <= mean <= delta.high for _, delta, _ in draws])
        assert 0.7 <= np.median(errors) / spread <= 1.6, (name, np.median(errors) / spread)
        assert covered >= 0.85, (name, covered)
        widths = [(delta.high - delta.low) / (bootstrap.high - bootstrap.low) for _, delta, bootstrap in draws]
        assert np.median(widths) <= 1.05, (name, np.median(widths))


def test_blocked_kid_influence_is_its_derivative_and_a_small_reference_is_whole_in_every_block(reference):
    """Past 1,000 images KID is a mean over blocks of prompts: its influences are still its derivatives; a reference
    too small to split (800 images for two blocks) serves every block whole."""
    features, units = clustered(6, prompts=500, seeds=3)
    blocked = BlockedKernel.of(features, reference, units, polynomial_kernel, unbiased=True)
    assert len(blocked.kernels) == 2
    assert all(len(kernel.cross_mean) > 700 for kernel in blocked.kernels)
    influence, step, count = blocked.influence(), 1e-4, len(features)
    for image in (0, 700, 1400):
        weights = np.ones((1, count))
        more = weights.copy()
        more[0, image] += step * count
        derivative = float((blocked.weighted(more) - blocked.weighted(weights))[0]) / step
        assert influence[image] == pytest.approx(derivative, rel=0.05, abs=0.02 * np.abs(influence).mean())
    large = np.random.default_rng(8).standard_normal((2000, DIMENSION))
    split = BlockedKernel.of(features, large, units, polynomial_kernel, unbiased=True)
    assert np.isfinite(split(np.arange(count)))
