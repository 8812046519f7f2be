"""The report's tables, built from a run's samples and metrics tables only."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from suite.results import recorded_stage_count, stage_column

# Quality columns in order of preference for "best": (column, lower is better)
QUALITY = (("fid", True), ("toy_correct", False), ("clip_score_mean", False), ("cmmd", True), ("kid_mean", True))
SUMMARY_COLUMNS = [
    "preset",
    "sampler",
    "num_inference_steps",
    "guidance_scale",
    "n_images",
    "fid",
    "kid_mean",
    "cmmd",
    "clip_score_mean",
    "clip_score_ci95_low",
    "clip_score_ci95_high",
    "toy_correct",
    "toy_correct_single",
    "toy_correct_pair",
    "toy_correct_held_out_pair",
    "seconds_per_image_median",
    "gflops_per_image",
]


def quality_column(metrics: pd.DataFrame) -> tuple[str, bool] | None:
    """The first quality metric the run has: FID, else the toy score, else CLIP score, ..."""
    for column, lower_is_better in QUALITY:
        if column in metrics and metrics[column].notna().any():
            return column, lower_is_better
    return None


def metrics_summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per grid point with the columns a reader compares (those the run has)."""
    return metrics[[column for column in SUMMARY_COLUMNS if column in metrics]].reset_index(drop=True)


def _round_budget(seconds: float) -> float:
    """Budgets at 2 significant digits, so the table reads as round numbers."""
    if seconds <= 0:
        return seconds
    digits = 1 - math.floor(math.log10(seconds))
    return float(np.ceil(seconds * 10**digits) / 10**digits)


def best_at_budgets(metrics: pd.DataFrame, quantiles=(0.25, 0.5, 1.0)) -> pd.DataFrame:
    """Per preset and time budget (seconds per image), the grid point with the best quality within budget."""
    chosen = quality_column(metrics)
    if chosen is None:
        return pd.DataFrame()
    column, lower_is_better = chosen
    seconds = metrics["seconds_per_image_median"]
    budgets = sorted({_round_budget(float(seconds.quantile(q))) for q in quantiles})
    rows = []
    for budget in budgets:
        for preset, group in metrics.groupby("preset", sort=False):
            within = group[(group["seconds_per_image_median"] <= budget) & group[column].notna()]
            row = {"budget_s_per_image": budget, "preset": preset, "quality": column}
            if within.empty:
                rows.append(row | {"best": math.nan})
                continue
            best = within.sort_values([column, "seconds_per_image_median"], ascending=[lower_is_better, True]).iloc[0]
            rows.append(
                row
                | {
                    "best": best[column],
                    "sampler": best["sampler"],
                    "num_inference_steps": int(best["num_inference_steps"]),
                    "guidance_scale": best["guidance_scale"],
                    "seconds_per_image_median": best["seconds_per_image_median"],
                }
            )
    return pd.DataFrame(rows)


def time_per_stage(samples: pd.DataFrame) -> pd.DataFrame:
    """Per preset and part (text encoding, each stage's denoising loop, decoding): median seconds per image.

    Loop and decode times are measured per batch and divided by the batch size. Long format: one
    row per (preset, part), parts in pipeline order.
    """
    rows = []
    for preset, group in samples.groupby("preset", sort=False):
        rows.append(
            {"preset": preset, "part": "text encoding", "seconds_per_image": float(group["text_encode_s"].median())}
        )
        for number in range(1, recorded_stage_count(group) + 1):
            names = group[stage_column(number, "name")].dropna()
            if not names.empty:
                seconds = float((group[stage_column(number, "loop_s")] / group["batch_size"]).median())
                rows.append(
                    {"preset": preset, "part": f"stage {number}: {names.iloc[0]}", "seconds_per_image": seconds}
                )
        decode = float((group["decode_s"] / group["batch_size"]).median())
        rows.append({"preset": preset, "part": "decoding", "seconds_per_image": decode})
        rows.append(
            {
                "preset": preset,
                "part": "total (median image)",
                "seconds_per_image": float(group["seconds_per_image"].median()),
            }
        )
    return pd.DataFrame(rows)
