"""KID (Binkowski et al. 2018): the unbiased MMD^2 over blocks of prompts, torchmetrics' subset estimate beside it,
an interval over prompts."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from suite.core import stats
from suite.core.influence import influence_interval
from suite.metrics.base import (
    GridPoint,
    Metric,
    PointRecord,
    comparison_row,
    interval_columns,
    paired_influence_test,
    paired_set_test,
)
from suite.metrics.distribution import BlockedKernel, kid, polynomial_kernel


def kernel_to(reference, features, units, halves: int = 1) -> BlockedKernel:
    """The unbiased MMD^2 with KID's cubic kernel: on all images at once up to 1,000, else over blocks of prompts."""
    return BlockedKernel.of(features, reference.features, units, polynomial_kernel, unbiased=True, halves=halves)


class Kid(Metric):
    name = "kid"
    description = "kernel inception distance (unbiased MMD^2, cubic kernel; blocks of prompts past 1,000 images), interval over prompts"
    headline = "kid_mean"
    higher_is_better = False
    display = ".4f"
    needs_reference = True
    best_rank = 4
    flags = {"kid_mean": "kid_rank_deficient"}  # from no more images than feature dimensions

    def former_name(self, column: str) -> str:
        # its interval was named after the metric, not the mean it belongs to
        parts = ("ci95_low", "ci95_high", "interval")
        return next((f"kid_mean_{part}" for part in parts if column == f"kid_{part}"), column)

    def networks(self, evaluation) -> set[str]:
        return {evaluation.features}

    def evaluate(self, point: GridPoint) -> tuple[dict[str, Any], None]:
        evaluation = point.evaluation
        reference = point.evaluator.reference(evaluation.features)
        features = point.features(evaluation.features)
        units = point.units
        statistic = kernel_to(reference, features, units)
        subsets_mean, subsets_std = kid(features, reference.features)
        value = statistic(np.arange(len(features)))
        row = {
            "kid_mean": value,  # the estimator the interval describes
            "kid_std": subsets_std,
            "kid_subsets_mean": subsets_mean,  # torchmetrics' mean over random subsets: the same in expectation
            "kid_rank_deficient": bool(len(features) <= features.shape[1]),
        }
        if evaluation.set_resamples:
            with point.timed("kid: interval"):
                if evaluation.set_interval == "delta":
                    interval = influence_interval(value, statistic.influence(), units)
                else:
                    interval = stats.bootstrap_interval(
                        statistic, units, evaluation.set_resamples, weighted=statistic.weighted
                    )
            method = f"KID at n = {len(features)}, reference fixed: {interval.method}"
            row |= interval_columns("kid_mean", replace(interval, method=method))
        return row, None

    def compare(self, a: PointRecord, b: PointRecord) -> list[dict[str, Any]]:
        network = a.row["features"]
        reference = a.reference(network)
        if a.set_interval == "delta":
            test = paired_influence_test(
                a, b, network, lambda features, units: _value_and_influence(reference, features, units)
            )
        else:
            test = paired_set_test(
                a, b, network, lambda features, units: kernel_to(reference, features, units, halves=2)
            )
        comparable = not (a.row.get("kid_rank_deficient", False) or b.row.get("kid_rank_deficient", False))
        row = comparison_row("kid_mean", a.row["kid_mean"], b.row["kid_mean"], test, self.higher_is_better)
        return [row | {"comparable": comparable}]


def _value_and_influence(reference, features, units) -> tuple[float, np.ndarray]:
    statistic = kernel_to(reference, features, units)
    return statistic(np.arange(len(features))), statistic.influence()
