"""CLIP score (Hessel et al. 2021): 100 * max(cos(image, prompt), 0) per image; the mean with a BCa interval."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from suite import stats
from suite.metrics.base import GridPoint, Metric, PointRecord, comparison_row, interval_columns, paired_rows


def clip_scores(clip, images: list[np.ndarray], prompts: list[str]) -> tuple[np.ndarray, int]:
    """Per image ``100 * max(cos(image, prompt), 0)``, and how many prompts the text tower truncated."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    image_embeddings = torch.nn.functional.normalize(clip.image_embeddings(batch), dim=-1)
    unique = list(dict.fromkeys(prompts))
    text, truncated = clip.text_embeddings(unique)
    text = torch.nn.functional.normalize(text, dim=-1)
    index = torch.tensor([unique.index(prompt) for prompt in prompts])
    cosine = (image_embeddings * text[index]).sum(dim=-1).double()
    return (100 * cosine.clamp(min=0)).numpy(), truncated


class ClipScore(Metric):
    name = "clip_score"
    description = "100 * max(cos(image, prompt), 0) per image; mean with a BCa bootstrap interval"
    headline = "clip_score_mean"
    higher_is_better = True
    display = ".2f"

    def evaluate(self, point: GridPoint) -> tuple[dict[str, Any], pd.DataFrame]:
        clip = point.evaluator.clip()
        scores, truncated = clip_scores(clip, point.images, point.prompts)
        row = {"clip_score_mean": float(scores.mean())} | interval_columns("clip_score", stats.mean_interval(scores))
        row |= {"clip_model": clip.model_id, "clip_resize": clip.resize, "clip_prompts_truncated": truncated}
        return row, pd.DataFrame({"clip_score": scores})

    def compare(self, a: PointRecord, b: PointRecord) -> list[dict[str, Any]]:
        rows_a, rows_b = paired_rows(a, b)
        values_a = a.scores["clip_score"].to_numpy()[rows_a]
        values_b = b.scores["clip_score"].to_numpy()[rows_b]
        test = stats.paired_permutation(values_a, values_b)
        return [comparison_row("clip_score_mean", values_a.mean(), values_b.mean(), test, self.higher_is_better)]
