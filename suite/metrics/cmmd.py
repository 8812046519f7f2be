"""CMMD (Jayasumana et al., CVPR 2024): MMD with a Gaussian RBF kernel over CLIP embeddings, interval over prompts."""

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
from suite.metrics.distribution import CMMD_SCALE, KernelToReference, cmmd, gaussian_kernel, normalised


def kernel_to(reference, features) -> KernelToReference:
    """CMMD's plug-in (V-statistic) estimate on all images at once, as the paper's reference code computes it."""
    return KernelToReference(
        normalised(features), normalised(reference.features), gaussian_kernel, unbiased=False, scale=CMMD_SCALE
    )


def _value_and_influence(reference, features) -> tuple[float, np.ndarray]:
    statistic = kernel_to(reference, features)
    return statistic(np.arange(len(features))), statistic.influence()


class Cmmd(Metric):
    name = "cmmd"
    description = (
        "MMD with a Gaussian RBF kernel over CLIP image embeddings (Jayasumana et al. 2024), interval over prompts"
    )
    headline = "cmmd"
    higher_is_better = False
    display = ".4f"
    needs_reference = True
    best_rank = 3
    flags = {"cmmd": "cmmd_rank_deficient"}  # from no more images than feature dimensions

    def networks(self, evaluation) -> set[str]:
        return {evaluation.cmmd_features}

    def evaluate(self, point: GridPoint) -> tuple[dict[str, Any], None]:
        evaluation = point.evaluation
        network = point.evaluator.network(evaluation.cmmd_features)
        reference = point.evaluator.reference(evaluation.cmmd_features)
        features = point.features(evaluation.cmmd_features)
        row = {
            "cmmd": cmmd(features, reference.features),
            "cmmd_features": network.name,
            "cmmd_resize": network.resize,
            "cmmd_rank_deficient": bool(len(features) <= features.shape[1]),
        }
        if evaluation.set_resamples:
            statistic = kernel_to(reference, features)
            with point.timed("cmmd: interval"):
                if evaluation.set_interval == "delta":
                    value = statistic(np.arange(len(features)))
                    interval = influence_interval(value, statistic.influence(), point.units)
                else:
                    interval = stats.bootstrap_interval(
                        statistic, point.units, evaluation.set_resamples, weighted=statistic.weighted
                    )
            method = f"CMMD at n = {len(features)}, reference fixed: {interval.method}"
            row |= interval_columns("cmmd", replace(interval, method=method))
        return row, None

    def compare(self, a: PointRecord, b: PointRecord) -> list[dict[str, Any]]:
        network = a.row["cmmd_features"]
        reference = a.reference(network)
        if a.set_interval == "delta":
            test = paired_influence_test(
                a, b, network, lambda features, units: _value_and_influence(reference, features)
            )
        else:
            test = paired_set_test(a, b, network, lambda features, units: kernel_to(reference, features))
        comparable = not (a.row.get("cmmd_rank_deficient", False) or b.row.get("cmmd_rank_deficient", False))
        return [
            comparison_row("cmmd", a.row["cmmd"], b.row["cmmd"], test, self.higher_is_better)
            | {"comparable": comparable}
        ]
