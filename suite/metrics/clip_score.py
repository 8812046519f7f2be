"""CLIP score (Hessel et al. 2021): 100 * max(cos(image, prompt), 0) per image; the mean with a BCa interval."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from suite.metrics.base import GridPoint, PerImageScore


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


class ClipScore(PerImageScore):
    name = "clip_score"
    description = "100 * max(cos(image, prompt), 0) per image; mean with a BCa bootstrap interval"
    headline = "clip_score_mean"
    column = "clip_score"
    higher_is_better = True
    display = ".2f"
    uses_clip_model = True
    alignment = True
    label = "CLIP score"
    best_rank = 2

    def score(self, point: GridPoint) -> tuple[np.ndarray, dict[str, Any]]:
        clip = point.evaluator.clip()
        scores, truncated = clip_scores(clip, point.images, point.prompts)
        return scores, {"clip_model": clip.model_id, "clip_resize": clip.resize, "clip_prompts_truncated": truncated}
