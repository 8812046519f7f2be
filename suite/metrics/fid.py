"""FID (Heusel et al. 2017) through torchmetrics, with an interval over prompts and FID_inf (Chong & Forsyth 2020)."""

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
from suite.metrics.distribution import FrechetToReference, fid


def frechet_to(reference) -> FrechetToReference:
    """A fast FID function of feature sets against the reference's features or its (mu, sigma) statistics, built
    once per reference (its covariance's square root is the costly part at 2,048 dimensions)."""

    if "frechet" not in reference.derived:
        if reference.features is not None:
            reference.derived["frechet"] = FrechetToReference.of(reference.features)
        else:
            mean, covariance, count = reference.statistics
            reference.derived["frechet"] = FrechetToReference(mean, covariance, count)
    return reference.derived["frechet"]


class Fid(Metric):
    name = "fid"
    description = "Frechet distance to the reference set (torchmetrics), interval over prompts, FID_inf"
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
            "fid": fid(features, reference_statistics=distance.statistics),  # the reference's moments, once
            "fid_n": count,
            "fid_feature_dim": dimension,
            "fid_rank_deficient": bool(count <= dimension),  # the generated covariance is singular: FID is biased
        }
        units = point.units
        delta = evaluation.set_interval == "delta"
        influence = None
        of_rows = distance.rows_of(features)  # the features times the reference's root, once for every FID below
        if delta and (evaluation.set_resamples or (evaluation.fid_inf and evaluation.fid_inf_resamples)):
            with point.timed("fid: interval"):
                influence = of_rows.influence()
        if evaluation.set_resamples:
            with point.timed("fid: interval"):
                if delta:
                    interval = influence_interval(row["fid"], influence, units)
                else:
                    interval = stats.bootstrap_interval(of_rows, units, evaluation.set_resamples)
            row |= interval_columns(
                "fid", replace(interval, method=f"FID at n = {count}, reference fixed: {interval.method}")
            )
        if evaluation.fid_inf:
            with point.timed("fid: fid_inf"):
                row |= self._fid_inf(of_rows, features, units, evaluation, influence)
        return row, None

    @staticmethod
    def _fid_inf(of_rows, features: np.ndarray, units, evaluation, influence: np.ndarray | None) -> dict[str, Any]:
        """FID extrapolated to infinitely many images, and its interval where the settings ask for one: by the delta
        method, FID's influences (FID_inf moves with the sample as FID does, to first order) plus the fit's own
        standard error; or by refitting on each bootstrap resample."""
        count, dimension = features.shape
        extrapolated = stats.fid_infinity(of_rows, count, dimension)
        row = {
            "fid_inf": extrapolated.value,
            "fid_inf_slope": extrapolated.slope,
            "fid_inf_r2": extrapolated.r_squared,
            "fid_inf_sizes": " ".join(str(size) for size in extrapolated.sizes),
            "fid_inf_refused": extrapolated.refused,
        }
        if evaluation.fid_inf_resamples and not extrapolated.refused and influence is not None:
            spread = influence_interval(extrapolated.value, influence, units, extrapolated.intercept_error**2)
            method = (
                f"{spread.method}; plus the fit's standard error {extrapolated.intercept_error:.3g} "
                "(from 5 subset sizes, 3 df: an approximation where it dominates)"
            )
            row |= interval_columns("fid_inf", replace(spread, method=method))
        elif evaluation.fid_inf_resamples and not extrapolated.refused:
            spread = stats.fid_infinity_interval(
                of_rows,
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
        if a.set_interval == "delta":
            test = paired_influence_test(
                a, b, network, lambda features, units: _value_and_influence(distance, features)
            )
        else:
            test = paired_set_test(a, b, network, lambda features, units: distance.rows_of(features))
        comparable = not (a.row.get("fid_rank_deficient", False) or b.row.get("fid_rank_deficient", False))
        return [
            comparison_row("fid", a.row["fid"], b.row["fid"], test, self.higher_is_better) | {"comparable": comparable}
        ]


def _value_and_influence(distance: FrechetToReference, features: np.ndarray) -> tuple[float, np.ndarray]:
    of_rows = distance.rows_of(features)
    return of_rows(np.arange(len(features))), of_rows.influence()
