"""The delta method for set statistics (FID, KID, CMMD) at the unit of the prompt.

A set statistic of n images is, to first order, its value plus the mean of each image's influence on it; the
images of one prompt are correlated, so the influences are summed per prompt before their variance is taken.
One pass over the images instead of one statistic per bootstrap resample (``suite.core.stats.bootstrap_interval``).
Paired comparisons by the same method are ``suite.core.paired.influence_difference_test``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from suite.core.stats import CONFIDENCE, Interval, Units, units_or_each


def clustered_standard_error(influence: Sequence[float], units: Units | None = None) -> float:
    """Standard error of a statistic whose first-order expansion is the mean of per-value influences.

    A set statistic T (FID, KID, CMMD) of n values is T + (1/n) sum_i IF_i to first order (the delta method); the
    values of one unit are correlated, so the influences are summed per unit and the variance is that of a sum of
    C independent unit totals: C / (C - 1) * sum_u (S_u / n)^2, with the influences centred (the sandwich or
    linearisation variance of survey statistics, clustered by unit). One value per unit: the usual sd / sqrt(n).
    """
    influence = np.asarray(influence, dtype=np.float64)
    units = units_or_each(units, len(influence))
    if units.count < 2:
        return math.nan
    totals = units.sums(influence - influence.mean()) / len(influence)
    return float(math.sqrt(units.count / (units.count - 1) * np.sum(totals**2)))


def influence_interval(
    value: float, influence: Sequence[float], units: Units | None = None, extra_variance: float = 0.0
) -> Interval:
    """Delta-method interval of a set statistic: value +- t * standard error, the error from per-value influences
    summed per unit (``clustered_standard_error``), Student's t with C - 1 degrees of freedom (C units).

    Like ``bootstrap_interval`` it describes the statistic's spread at this sample size around its value (the
    reference set fixed), at the cost of one pass over the values instead of one statistic per resample.
    ``extra_variance`` adds a variance the influences do not carry (FID_inf's fit).
    """
    influence = np.asarray(influence, dtype=np.float64)
    units = units_or_each(units, len(influence))
    error = math.sqrt(clustered_standard_error(influence, units) ** 2 + extra_variance)
    method = f"delta method: influence functions summed per prompt over {units.describe()}, t with {units.count - 1} df"
    if not (math.isfinite(error) and math.isfinite(value)):
        return Interval(math.nan, math.nan, method)

    def of(level: float) -> tuple[float, float]:
        half = float(stats.t.ppf((1 + level) / 2, units.count - 1)) * error
        return value - half, value + half

    low, high = of(CONFIDENCE)
    return Interval(low, high, method, of)
