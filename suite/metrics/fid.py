"""FID (Heusel et al. 2017) through torchmetrics, with a bootstrap interval and FID_inf (Chong & Forsyth 2020)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from suite.core import stats
from suite.metrics.base import GridPoint, Metric, PointRecord, comparison_row, interval_columns, paired_set_test
from suite.metrics.distribution import FrechetToReference, fid


def frechet_to(reference):
    """A fast FID function of feature sets against the reference's features or its (mu, sigma) statistics."""

    if reference.features is not None:
        return FrechetToReference.of(reference.features)
    mean, covariance, _ = reference.statistics
    return FrechetToReference(mean, covariance)


class Fid(Metric):
    name = "fid"
    description = "Frechet distance to the reference set (torchmetrics), bootstrap interval over prompts, FID_inf"
    headline = "fid"
    higher_is_better = False
    display = ".3f"
    needs_reference = True
    reference_statistics_suffice = True
    shown = {"fid": ".2f", "fid_inf": ".2f"}
    best_rank = 0
    flags = {"fid": "fid_rank_deficient"}  # from fewer images than feature dimensions: singular covariance

    def networks(self, evaluation) -> set[str]:
        return {evaluation.features}

    def evaluate(self, point: GridPoint) -> tuple[dict[str, Any], None]:
        evaluation = point.evaluation
        network, reference = (
            point.evaluator.network(evaluation.features),
            point.evaluator.reference(evaluation.features),
        )
        features = point.features(evaluation.features)
        distance = frechet_to(reference)
        count, dimension = features.shape
        row = {
            "features": network.name,
            "features_resize": network.resize,
            "reference": reference.key,
            "reference_count": reference.count,
            "fid": fid(features, reference.features, reference.statistics),
            "fid_n": count,
            "fid_feature_dim": dimension,
            "fid_rank_deficient": bool(count <= dimension),  # the generated covariance is singular: FID is biased
        }
        units = point.units
        interval = None
        if evaluation.set_resamples:
            with point.timed("fid: interval"):
                interval = stats.bootstrap_interval(
                    lambda rows: distance(features[rows]), units, evaluation.set_resamples
                )
            row |= interval_columns(
                "fid", replace(interval, method=f"FID at n = {count}, reference fixed: {interval.method}")
            )
        if evaluation.fid_inf:
            with point.timed("fid: fid_inf"):
                row |= self._fid_inf(distance, features, units, evaluation)
        return row, None

    @staticmethod
    def _fid_inf(distance, features: np.ndarray, units, evaluation) -> dict[str, Any]:
        """FID extrapolated to infinitely many images, and its interval where the settings ask for one."""
        count, dimension = features.shape
        extrapolated = stats.fid_infinity(lambda rows: distance(features[rows]), count, dimension)
        row = {
            "fid_inf": extrapolated.value,
            "fid_inf_slope": extrapolated.slope,
            "fid_inf_r2": extrapolated.r_squared,
            "fid_inf_sizes": " ".join(str(size) for size in extrapolated.sizes),
            "fid_inf_refused": extrapolated.refused,
        }
        if evaluation.fid_inf_resamples and not extrapolated.refused:
            spread = stats.fid_infinity_interval(
                lambda rows: distance(features[rows]),
                units,
                dimension,
                extrapolated.value,
                evaluation.fid_inf_resamples,
            )
            row |= interval_columns("fid_inf", spread)
        return row

    def compare(self, a: PointRecord, b: PointRecord) -> list[dict[str, Any]]:
        network = a.row["features"]
        distance = frechet_to(a.reference(network))
        test = paired_set_test(a, b, network, lambda features: lambda rows: distance(features[rows]))
        comparable = not (a.row.get("fid_rank_deficient", False) or b.row.get("fid_rank_deficient", False))
        return [
            comparison_row("fid", a.row["fid"], b.row["fid"], test, self.higher_is_better) | {"comparable": comparable}
        ]
