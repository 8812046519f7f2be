"""KID (Binkowski et al. 2018) through torchmetrics, with a bootstrap interval over the generated set."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from suite.core import stats
from suite.metrics.base import GridPoint, Metric, PointRecord, comparison_row, interval_columns, paired_set_test
from suite.metrics.distribution import KernelToReference, kid, polynomial_kernel


def kernel_to(reference, features):
    return KernelToReference(features, reference.features, polynomial_kernel, unbiased=True)


class Kid(Metric):
    name = "kid"
    description = "kernel inception distance (unbiased MMD^2, cubic kernel), bootstrap interval over prompts"
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
        statistic = kernel_to(reference, features)
        subsets_mean, subsets_std = kid(features, reference.features)
        row = {
            "kid_mean": statistic(np.arange(len(features))),  # the estimator the interval resamples
            "kid_std": subsets_std,
            "kid_subsets_mean": subsets_mean,  # torchmetrics' mean over random subsets: the same in expectation
            "kid_rank_deficient": bool(len(features) <= features.shape[1]),
        }
        if evaluation.set_resamples:
            with point.timed("kid: interval"):
                interval = stats.bootstrap_interval(
                    statistic, point.units, evaluation.set_resamples, weighted=statistic.weighted
                )
            method = f"KID at n = {len(features)}, reference fixed: {interval.method}"
            row |= interval_columns("kid_mean", replace(interval, method=method))
        return row, None

    def compare(self, a: PointRecord, b: PointRecord) -> list[dict[str, Any]]:
        network = a.row["features"]
        reference = a.reference(network)
        test = paired_set_test(a, b, network, lambda features: kernel_to(reference, features))
        comparable = not (a.row.get("kid_rank_deficient", False) or b.row.get("kid_rank_deficient", False))
        row = comparison_row("kid_mean", a.row["kid_mean"], b.row["kid_mean"], test, self.higher_is_better)
        return [row | {"comparable": comparable}]
