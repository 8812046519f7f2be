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
from transformers import CLIPModel, CLIPProcessor

from suite.core.errors import UserError
from suite.metrics.base import PreferenceModel, PreferenceScore

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


class PickScoreModel(PreferenceModel):
    def __init__(self, folder: str | Path, device: torch.device):
        check_pickscore_folder(folder)
        self.folder, self.device = str(folder), device
        self.processor = CLIPProcessor.from_pretrained(folder)
        self.model = CLIPModel.from_pretrained(folder).to(device).eval()

    def embed(self, images: list[np.ndarray], prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        text = self.processor(text=prompts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        return projected(self.model.get_image_features(pixel_values=pixels)), projected(
            self.model.get_text_features(**text)
        )

    def scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()


class PickScore(PreferenceScore):
    name = "pickscore"
    description = "PickScore: human-preference CLIP (local folder), logit_scale * cos per image; mean with BCa interval"
    headline = "pickscore_mean"
    column = "pickscore"
    display = ".3f"
    needs_setting = "pickscore"
    setting_layout = LAYOUT

    def check_setting(self, setting) -> None:
        check_pickscore_folder(setting)

    def load(self, setting, device) -> PickScoreModel:
        return PickScoreModel(setting, device)

    def describe(self, setting) -> dict[str, Any]:
        return {"pickscore_model": setting}
