"""The toy world's exact compositional score: per image 0/1 answers, accuracies with BCa and Wilson intervals over prompts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from suite.core import paired, stats
from suite.metrics.base import (
    GridPoint,
    Metric,
    PointRecord,
    comparison_row,
    interval_columns,
    paired_rows,
    paired_units,
)
from suite.toy.score import QUESTIONS, score_prompt_image
from suite.toy.world import prompt_category

CATEGORIES = (("single", "single"), ("pair", "pair"), ("held-out pair", "held_out_pair"))


def former_accuracy_name(column: str) -> str:
    """Wilson interval columns were ``<x>_wilson_low/_high`` before every interval became ``_ci95_low/_high``."""
    for side in ("low", "high"):
        if column.endswith(f"_wilson_{side}"):
            return column.removesuffix(f"_wilson_{side}") + f"_wilson_ci95_{side}"
    return column


def accuracy_columns(column: str, values: np.ndarray, units: stats.Units) -> dict[str, Any]:
    """Mean of 0/1 answers (NaN: not asked) with its BCa interval over prompts and its Wilson interval at the
    effective sample size; ``_n`` images asked, ``_n_prompts`` prompts they came from."""
    asked = ~np.isnan(values)
    if not asked.any():
        return {column: np.nan}
    wilson = stats.share_interval(values, units)
    return (
        {column: float(values[asked].mean()), f"{column}_n": int(asked.sum())}
        | {f"{column}_n_prompts": units.restricted(asked).count}
        | interval_columns(column, stats.mean_interval(values, units))
        | {f"{column}_wilson_ci95_low": wilson.low, f"{column}_wilson_ci95_high": wilson.high}
    )


def exact_match_subsets(scores: pd.DataFrame) -> dict[str, np.ndarray]:
    """Exact-match answers overall and per prompt category (NaN outside the category)."""
    correct = scores["toy_correct"].to_numpy(dtype=np.float64)
    subsets = {"toy_correct": correct}
    for category, suffix in CATEGORIES:
        subsets[f"toy_correct_{suffix}"] = np.where(scores["toy_category"] == category, correct, np.nan)
    return subsets


class Composition(Metric):
    name = "composition"
    description = "toy world only: exact object count / colour / shape / binding / relation accuracy, per category"
    headline = "toy_correct"
    higher_is_better = True
    display = ".3f"
    shown = {
        column: ".3f"
        for column in ("toy_correct", "toy_correct_single", "toy_correct_pair", "toy_correct_held_out_pair")
    }
    best_rank = 1

    def owns_image_score(self, column: str) -> bool:
        return column.startswith("toy_")

    def main_image_score(self) -> str | None:
        return "toy_correct"

    def former_name(self, column: str) -> str:
        return former_accuracy_name(column)

    def image_score_is_binary(self, column: str) -> bool:
        return column in {f"toy_{question}" for question in QUESTIONS}

    def evaluate(self, point: GridPoint) -> tuple[dict[str, Any], pd.DataFrame]:
        scores = pd.DataFrame(
            [
                {f"toy_{key}": value for key, value in score_prompt_image(image, prompt).items()}
                | {"toy_category": prompt_category(prompt)}
                for image, prompt in zip(point.images, point.prompts)
            ]
        )
        row: dict[str, Any] = {}
        units = point.units
        for question in QUESTIONS:
            row |= accuracy_columns(f"toy_{question}", scores[f"toy_{question}"].to_numpy(dtype=np.float64), units)
        for column, values in exact_match_subsets(scores).items():
            if column != "toy_correct":
                row |= accuracy_columns(column, values, units)
        return row, scores

    def compare(self, a: PointRecord, b: PointRecord) -> list[dict[str, Any]]:
        rows_a, rows_b = paired_rows(a, b)
        units = paired_units(a, rows_a)
        subsets_a = exact_match_subsets(a.scores.iloc[rows_a].reset_index(drop=True))
        subsets_b = exact_match_subsets(b.scores.iloc[rows_b].reset_index(drop=True))
        rows = []
        for column, values_a in subsets_a.items():
            values_b = subsets_b[column]
            if np.all(np.isnan(values_a)):
                continue
            test = paired.paired_binary(values_a, values_b, units)
            rows.append(comparison_row(column, np.nanmean(values_a), np.nanmean(values_b), test, self.higher_is_better))
        return rows
