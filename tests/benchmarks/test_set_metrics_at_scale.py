"""Set metrics at real scale: one grid point of 30,000 x 2,048 features (COCO-30K through InceptionV3) evaluated
against a 30,000-image reference, through the metrics' own ``evaluate`` as a sweep runs them.

FID with its interval, FID_inf with its interval, KID with its interval (the delta method, the default), on 2,048
synthetic features per image with Inception-like correlation (a 64-dimensional signal in 2,048 noisy dimensions),
30,000 images of one seed per prompt. Slow: run with

    pytest -m slow tests/benchmarks/test_set_metrics_at_scale.py --benchmark-enable

The old method's cost (the bootstrap, 200 resamples) is timed on a few resamples and scaled, in
``test_bootstrap_resample_cost_at_scale``; the README's Speed section records both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from suite.core import stats
from suite.metrics import METRICS
from suite.metrics.base import GridPoint
from suite.metrics.distribution import FrechetToReference
from suite.metrics.reference import ReferenceFeatures
from suite.metrics.settings import Evaluation

COUNT, DIMENSION, SIGNAL = 30_000, 2_048, 64


def inception_like(seed: int, shift: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(0).standard_normal((SIGNAL, DIMENSION)) / np.sqrt(SIGNAL)
    signal = rng.standard_normal((COUNT, SIGNAL)) + shift
    return np.abs(signal @ mixing + 0.3 * rng.standard_normal((COUNT, DIMENSION)))


@dataclass
class OnePointEvaluator:
    """What a metric asks of the evaluation, for one synthetic point: its network's name and the reference."""

    reference_features: np.ndarray
    evaluation: Evaluation

    def __post_init__(self):
        self.sweep = SimpleNamespace(evaluation=self.evaluation)
        self.cached = ReferenceFeatures("synthetic", {"synthetic": COUNT}, self.reference_features)

    def network(self, name: str):
        return SimpleNamespace(name=name, resize="none (synthetic features)")

    def reference(self, name: str) -> ReferenceFeatures:
        return self.cached


@pytest.fixture(scope="module")
def scale_point():
    evaluation = Evaluation(features="inception")
    evaluator = OnePointEvaluator(inception_like(1, 0.0), evaluation)
    rows = pd.DataFrame({"prompt": [f"caption {i}" for i in range(COUNT)], "prompt_index": np.arange(COUNT)})
    return evaluator, rows, inception_like(2, 0.1)


def evaluate_point(evaluator, rows, features) -> dict:
    """FID (interval, FID_inf and its interval) and KID (interval) of one fresh grid point."""
    evaluator.cached.derived.clear()  # the reference's square root is part of the first point's cost
    point = GridPoint(evaluator, rows, [], (), {"inception": features})
    row = {}
    for name in ("fid", "kid"):
        row |= METRICS.get(name).evaluate(point)[0]
    row["seconds"] = dict(point.seconds)
    return row


@pytest.mark.slow
def test_one_grid_point_of_30000_images_at_2048_dimensions(benchmark, scale_point):
    evaluator, rows, features = scale_point
    benchmark.group = "set metrics at 30,000 x 2,048"
    row = benchmark.pedantic(evaluate_point, args=(evaluator, rows, features), rounds=1, iterations=1)
    for column in ("fid", "fid_ci95_low", "fid_ci95_high", "fid_inf", "kid_mean", "kid_mean_ci95_low"):
        assert np.isfinite(row[column]), column
    assert row["fid_ci95_low"] < row["fid"] < row["fid_ci95_high"]
    assert row["kid_mean_ci95_low"] < row["kid_mean"] < row["kid_mean_ci95_high"]
    assert "delta method" in row["fid_interval"] and "30000 prompts" in row["fid_interval"]
    print("seconds per part:", {part: round(seconds, 1) for part, seconds in row["seconds"].items()})


@pytest.mark.slow
def test_bootstrap_resample_cost_at_scale(scale_point):
    """The old interval: one FID per bootstrap resample of prompts. Three resamples timed; 200 cost 200/3 of that."""
    evaluator, _, features = scale_point
    distance = FrechetToReference.of(evaluator.reference_features)
    units = stats.Units.each(COUNT)
    started = time.perf_counter()
    interval = stats.bootstrap_interval(lambda rows: distance(features[rows]), units, resamples=3)
    seconds = time.perf_counter() - started
    assert np.isfinite(interval.low)
    print(f"bootstrap: {seconds / 3:.1f} s per resample, {200 * seconds / 3:.0f} s for 200 resamples")
