"""PickScore (Kirstain et al. 2023): a CLIP-H fine-tuned on human preferences, as a per-image score.

Loaded through transformers from a local folder (``evaluation.pickscore``): a ``CLIPModel`` and its
``CLIPProcessor``, e.g. yuvalkirstain/PickScore_v1 (model) with laion/CLIP-ViT-H-14-laion2B-s32B-b79K
(processor) saved together with ``save_pretrained``. Per image, the model's own scale:
``logit_scale.exp() * cos(image, prompt)``, as the PickScore authors compute it; per grid point the mean
with a BCa interval, compared between points with a paired permutation test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from suite.core.errors import UserError
from suite.metrics.base import GridPoint, PerImageScore

LAYOUT = (
    "a transformers CLIPModel folder with its processor (config.json, model.safetensors, "
    "preprocessor_config.json or processor_config.json, tokenizer files), e.g. yuvalkirstain/PickScore_v1 and its processor saved with save_pretrained"
)


def check_pickscore_folder(folder: str | Path, setting: str = "evaluation.pickscore") -> None:
    path = Path(folder)
    missing = [] if (path / "config.json").is_file() else ["config.json"]
    if not any((path / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
        missing.append("preprocessor_config.json")  # transformers 5 saves a processor as processor_config.json
    if not path.is_dir() or missing:
        raise UserError(
            f"{setting}: no preference model at {path} (missing {', '.join(missing) or 'folder'}); expected {LAYOUT}"
        )


def projected(output) -> torch.Tensor:
    """CLIPModel.get_*_features' result: a tensor up to transformers 4, an output whose pooler_output is the
    projected embedding from transformers 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class PickScoreModel:
    def __init__(self, folder: str | Path, device: torch.device):
        from transformers import CLIPModel, CLIPProcessor

        check_pickscore_folder(folder)
        self.folder, self.device = str(folder), device
        self.processor = CLIPProcessor.from_pretrained(folder)
        self.model = CLIPModel.from_pretrained(folder).to(device).eval()

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray], prompts: list[str]) -> np.ndarray:
        scores = []
        for start in range(0, len(images), 32):
            batch_images, batch_prompts = images[start : start + 32], prompts[start : start + 32]
            pixels = self.processor(images=batch_images, return_tensors="pt")["pixel_values"].to(self.device)
            text = self.processor(text=batch_prompts, padding=True, truncation=True, return_tensors="pt").to(
                self.device
            )
            image_embeds = projected(self.model.get_image_features(pixel_values=pixels))
            text_embeds = projected(self.model.get_text_features(**text))
            image_embeds = torch.nn.functional.normalize(image_embeds, dim=-1)
            text_embeds = torch.nn.functional.normalize(text_embeds, dim=-1)
            cosine = (image_embeds * text_embeds).sum(dim=-1)
            scores.append((self.model.logit_scale.exp() * cosine).double().cpu().numpy())
        return np.concatenate(scores)


class PickScore(PerImageScore):
    name = "pickscore"
    description = "PickScore: human-preference CLIP (local folder), logit_scale * cos per image; mean with BCa interval"
    headline = "pickscore_mean"
    column = "pickscore"
    higher_is_better = True
    display = ".3f"
    needs_setting = "pickscore"
    setting_layout = LAYOUT

    def check(self, evaluation) -> None:
        check_pickscore_folder(evaluation.pickscore)

    def score(self, point: GridPoint) -> tuple[np.ndarray, dict[str, Any]]:
        folder = point.evaluation.pickscore
        model = point.evaluator.model(("pickscore", folder), lambda device: PickScoreModel(folder, device))
        return model(point.images, point.prompts), {"pickscore_model": folder}
