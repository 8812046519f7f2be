"""The report's tables, built from a run's samples, metrics and comparisons tables (and, for the budget
table's tests, the per-image scores and features evaluation kept)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from suite.core import stats
from suite.core.stats import ALPHA
from suite.metrics import METRICS
from suite.run.folder import GRID_COLUMNS, recorded_stage_count, stage_column

TIMING = {"seconds_per_image_median": ".4f"}  # the evaluation's own timing column, between qualities and costs


def _metric_columns(costs: bool) -> dict[str, str]:
    """Every column the metrics declare for reports, qualities first (costs: those without a direction)."""
    return {
        column: spec
        for metric in METRICS.values()
        if (metric.higher_is_better is None) == costs
        for column, spec in metric.shown_columns().items()
    }


def summary_columns() -> dict[str, str]:
    """The numbers a reader compares, with the format they are shown in; each is shown with its 95% interval."""
    return _metric_columns(costs=False) | TIMING | _metric_columns(costs=True)


def _owner(column: str):
    return next((metric for metric in METRICS.values() if column in metric.shown_columns()), None)


def interval_of(column: str) -> tuple[str, str]:
    """The columns holding the 95% interval of ``column``."""
    metric = _owner(column)
    return metric.interval_of(column) if metric else (f"{column}_ci95_low", f"{column}_ci95_high")


def quality_order() -> list[tuple[str, bool]]:
    """Quality columns in order of preference for "best": (column, lower is better)."""
    ranked = sorted((metric for metric in METRICS.values() if metric.best_rank is not None), key=lambda m: m.best_rank)
    return [(metric.headline, not metric.higher_is_better) for metric in ranked]


def with_interval(value: float, low: float, high: float, spec: str) -> str:
    """``17.42 [15.10, 19.87]``; a number without an interval is shown alone."""
    if value is None or pd.isna(value):
        return ""
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return format(value, spec)
    return f"{format(value, spec)} [{format(low, spec)}, {format(high, spec)}]"


def quality_column(metrics: pd.DataFrame) -> tuple[str, bool] | None:
    """The first quality metric the run has: FID, else the toy score, else CLIP score, ..."""
    for column, lower_is_better in quality_order():
        if column in metrics and metrics[column].notna().any():
            return column, lower_is_better
    return None


def metrics_summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per grid point; every number the run has, with its 95% interval in brackets.

    A value a metric flags as unreliable (FID from no more images than feature dimensions) is marked with a dagger.
    """
    summary = metrics[[*GRID_COLUMNS, "n_images"]].reset_index(drop=True).copy()
    for column, spec in summary_columns().items():
        if column not in metrics or metrics[column].isna().all():
            continue
        low, high = interval_of(column)
        summary[f"{column} (95% CI)"] = [
            with_interval(row[column], row.get(low), row.get(high), spec) for _, row in metrics.iterrows()
        ]
    for metric in METRICS.values():
        for column, flag in metric.flags.items():
            if flag in metrics and f"{column} (95% CI)" in summary:
                flagged = metrics[flag].fillna(False).to_numpy(dtype=bool)
                summary.loc[flagged, f"{column} (95% CI)"] = summary.loc[flagged, f"{column} (95% CI)"] + " †"
    return summary


def _round_budget(seconds: float) -> float:
    """Budgets at 2 significant digits, so the table reads as round numbers."""
    if seconds <= 0:
        return seconds
    digits = 1 - math.floor(math.log10(seconds))
    return float(np.ceil(seconds * 10**digits) / 10**digits)


def _label(row: pd.Series) -> str:
    return f"{row['sampler']} / {int(row['num_inference_steps'])} steps / guidance {row['guidance_scale']:g}"


def best_at_budgets(
    metrics: pd.DataFrame, test: Callable[[pd.Series, pd.Series, str], float] | None = None, quantiles=(0.25, 0.5, 1.0)
) -> pd.DataFrame:
    """Per preset and time budget (seconds per image): the best grid point within budget, and every point the
    paired test ``test(best, other, column) -> p`` does not find significantly worse (Holm within the budget).

    Without a test only the best point is named, and the table says so.
    """
    chosen = quality_column(metrics)
    if chosen is None:
        return pd.DataFrame()
    column, lower_is_better = chosen
    low, high = interval_of(column)
    seconds = metrics["seconds_per_image_median"]
    budgets = sorted({_round_budget(float(seconds.quantile(q))) for q in quantiles})
    rows = []
    for budget in budgets:
        for preset, group in metrics.groupby("preset", sort=False):
            within = group[(group["seconds_per_image_median"] <= budget) & group[column].notna()]
            row = {"budget_s_per_image": budget, "preset": preset, "quality": column}
            if within.empty:
                rows.append(row | {"best": "", "not significantly worse": ""})
                continue
            ordered = within.sort_values([column, "seconds_per_image_median"], ascending=[lower_is_better, True])
            best, others = ordered.iloc[0], ordered.iloc[1:]
            ties = "(not tested)"
            if test is not None:
                adjusted = stats.holm([test(best, other, column) for _, other in others.iterrows()])
                ties = "; ".join(_label(other) for (_, other), p in zip(others.iterrows(), adjusted) if p >= ALPHA)
            rows.append(
                row
                | {
                    "best": f"{_label(best)}: {with_interval(best[column], best.get(low), best.get(high), '.3f')}",
                    "not significantly worse": ties or "none",
                }
            )
    return pd.DataFrame(rows)


def significance_paragraphs(comparisons: pd.DataFrame) -> list[str]:
    """One paragraph per preset (points against its baseline) and one per pair of presets, from the comparisons."""
    if comparisons is None or comparisons.empty:
        return []
    paragraphs = []
    within = comparisons[comparisons["kind"] == "within preset"]
    for preset, rows in within.groupby("a_preset", sort=False):
        first = rows.iloc[0]
        baseline = (
            f"{first['a_sampler']}, {int(first['a_num_inference_steps'])} steps, guidance {first['a_guidance_scale']:g}"
        )
        paragraphs.append(f"**{preset}** against its baseline ({baseline}): " + _findings(rows, "b"))
    across = comparisons[comparisons["kind"] == "across presets"]
    for (first, second), rows in across.groupby(["a_preset", "b_preset"], sort=False):
        paragraphs.append(f"**{second} against {first}** at equal sampler, steps and guidance: " + _findings(rows, "a"))
    return paragraphs


def _findings(rows: pd.DataFrame, vary: str) -> str:
    significant = rows[rows["p_holm"] < ALPHA]
    tested = f"{len(rows)} tests"
    if significant.empty:
        return f"no difference is significant after Holm correction ({tested})."
    parts = []
    for _, row in significant.iterrows():
        point = (
            f"{row['b_sampler']} {int(row['b_num_inference_steps'])} steps guidance {row['b_guidance_scale']:g}"
            if vary == "b"
            else f"{row['a_sampler']} {int(row['a_num_inference_steps'])} steps guidance {row['a_guidance_scale']:g}"
        )
        direction = {"b better": "better", "b worse": "worse"}.get(row["verdict"], "different")
        parts.append(
            f"{point}: {direction} on {row['metric']} ({row['difference']:+.3g} "
            f"[{row['difference_ci95_low']:+.3g}, {row['difference_ci95_high']:+.3g}], p_holm {row['p_holm']:.2g})"
        )
    return f"{len(significant)} of {tested} significant after Holm correction: " + "; ".join(parts) + "."


def comparisons_table(comparisons: pd.DataFrame) -> pd.DataFrame:
    """The comparisons as the report shows them: which points, which number, the difference with its interval,
    the family's (Bonferroni-wide) interval beside Holm's p, and p-values as far as their resamples resolve them."""
    rows = list(comparisons.iterrows())

    def family(row: pd.Series) -> str:
        if "difference_family_ci95_low" not in row or pd.isna(row["difference_family_ci95_low"]):
            return ""
        return with_interval(
            row["difference"], row["difference_family_ci95_low"], row["difference_family_ci95_high"], "+.3g"
        )

    def p(row: pd.Series, column: str) -> str:
        resolution = row.get("p_resolution", 0.0)
        resolution = 0.0 if pd.isna(resolution) else float(resolution)
        if column == "p_holm" and resolution:
            resolution *= row.get("family_size", 1) or 1
        return stats.format_p(row[column], min(resolution, 1.0), ".3g")

    shown = pd.DataFrame(
        {
            "kind": comparisons["kind"],
            "a": [f"{row['a_preset']} / {_label(_side(row, 'a'))}" for _, row in rows],
            "b": [f"{row['b_preset']} / {_label(_side(row, 'b'))}" for _, row in rows],
            "metric": comparisons["metric"],
            "b - a (95% CI)": [
                with_interval(row["difference"], row["difference_ci95_low"], row["difference_ci95_high"], "+.3g")
                for _, row in rows
            ],
            "p": [p(row, "p_value") for _, row in rows],
            "family CI (Bonferroni)": [family(row) for _, row in rows],
            "p_holm": [p(row, "p_holm") for _, row in rows],
            "prompts": comparisons.get("n_prompts", ""),
            "verdict": comparisons["verdict"],
        }
    )
    return shown


def _side(row: pd.Series, side: str) -> pd.Series:
    return pd.Series({field: row[f"{side}_{field}"] for field in ("sampler", "num_inference_steps", "guidance_scale")})


def time_per_stage(samples: pd.DataFrame) -> pd.DataFrame:
    """Per preset and part (text encoding, each stage's denoising loop, decoding): median seconds per image,
    with a percentile bootstrap interval over work items.

    Loop and decode times are measured per batch and divided by the batch size. Long format: one
    row per (preset, part), parts in pipeline order.
    """
    rows = []
    for preset, group in samples.groupby("preset", sort=False):
        parts = {"text encoding": group["text_encode_s"]}
        for number in range(1, recorded_stage_count(group) + 1):
            names = group[stage_column(number, "name")].dropna()
            if not names.empty:
                parts[f"stage {number}: {names.iloc[0]}"] = group[stage_column(number, "loop_s")] / group["batch_size"]
        parts["decoding"] = group["decode_s"] / group["batch_size"]
        parts["total (median image)"] = group["seconds_per_image"]
        for part, values in parts.items():
            per_item = values.groupby(group["item_id"], sort=False).median().to_numpy()
            interval = stats.median_interval(per_item, "work items")
            rows.append(
                {
                    "preset": preset,
                    "part": part,
                    "seconds_per_image": float(values.median()),
                    "seconds_per_image_ci95_low": interval.low,
                    "seconds_per_image_ci95_high": interval.high,
                }
            )
    return pd.DataFrame(rows)
