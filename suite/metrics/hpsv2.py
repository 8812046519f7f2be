"""HPS v2 (Wu et al. 2023, Human Preference Score v2): an open_clip ViT-H-14 fine-tuned on human preferences.

Loaded from local files (``evaluation.hpsv2``): the open_clip architecture (``ViT-H-14``, or any open_clip
model config given as a JSON file) and the HPS checkpoint (HPS_v2_compressed.pt or HPS_v2.1_compressed.pt,
a ``state_dict``), through ``open_clip.create_model`` as HPS's own scorer does. Per image, HPS's score: the
cosine of the image and prompt embeddings; per grid point the mean with a BCa interval, compared between points
with a paired permutation test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image

from suite.core.errors import UserError
from suite.metrics.base import PreferenceModel, PreferenceScore

LAYOUT = (
    "the HPS v2 checkpoint file (e.g. HPS_v2.1_compressed.pt, a state_dict) and an open_clip architecture (ViT-H-14)"
)


def check_hpsv2(spec, setting: str = "evaluation.hpsv2") -> None:
    if not Path(spec.checkpoint).is_file():
        raise UserError(f"{setting}.checkpoint: no file at {spec.checkpoint}; expected {LAYOUT}")
    if spec.architecture_config is not None and not Path(spec.architecture_config).is_file():
        raise UserError(f"{setting}.architecture_config: no open_clip model config at {spec.architecture_config}")


class HpsModel(PreferenceModel):
    def __init__(self, spec, device: torch.device):
        check_hpsv2(spec)
        if spec.architecture_config is not None:
            open_clip.add_model_config(spec.architecture_config)
        self.device = device
        self.model = open_clip.create_model(spec.architecture, pretrained=spec.checkpoint, device=device).eval()
        self.preprocess = open_clip.image_transform(self.model.visual.image_size, is_train=False)
        self.tokenizer = open_clip.get_tokenizer(spec.architecture)

    def embed(self, images: list[np.ndarray], prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = torch.stack([self.preprocess(Image.fromarray(image)) for image in images]).to(self.device)
        text = self.tokenizer(prompts).to(self.device)
        return self.model.encode_image(batch), self.model.encode_text(text)


class HpsV2(PreferenceScore):
    name = "hpsv2"
    description = "HPS v2: human-preference open_clip ViT-H-14 (local checkpoint), cosine per image; BCa interval"
    headline = "hpsv2_mean"
    column = "hpsv2"
    display = ".4f"
    needs_setting = "hpsv2"
    setting_layout = LAYOUT

    def check_setting(self, setting) -> None:
        check_hpsv2(setting)

    def load(self, setting, device) -> HpsModel:
        return HpsModel(setting, device)

    def describe(self, setting) -> dict[str, Any]:
        return {"hpsv2_checkpoint": setting.checkpoint, "hpsv2_architecture": setting.architecture}
