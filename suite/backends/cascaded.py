"""Cascaded pixel diffusion (Imagen, DeepFloyd IF): T5 -> pixel base -> x4 super-resolution stages.

Pixel stages share the T5 encoder loaded from the base stage's folder (as IF-II reuses IF-I's
embeddings); a latent x4 upscaler stage (DeepFloyd's third stage) brings its own CLIP encoder.
"""

from __future__ import annotations

from suite.backends.components import STAGE_KINDS, clip_text_encoder, t5_text_encoder
from suite.errors import UserError
from suite.loading import LoadOptions
from suite.pipeline import TextToImagePipeline
from suite.presets import Preset

DESCRIPTION = "T5 encoder -> pixel base -> x4 super-resolution stages, pixel or latent (Imagen / DeepFloyd IF)"


def load(preset: Preset, options: LoadOptions) -> TextToImagePipeline:
    """Load one folder per stage: IF-shaped (unet/, scheduler/, ...) or SD-x4-upscaler-shaped."""
    kinds = [spec.kind for spec in preset.stages]
    if not kinds or kinds[0] != "pixel-base" or any(kind not in ("pixel-sr", "latent-sr") for kind in kinds[1:]):
        raise UserError(
            f"preset {preset.name!r}: a cascade is one 'pixel-base' stage then 'pixel-sr'/'latent-sr' stages"
        )
    loaders = {key: options.loader(preset.name, key, location) for key, location in preset.source_paths().items()}
    base_loader = loaders[preset.stages[0].source]
    encoders = {"t5": t5_text_encoder(base_loader, "t5", options.text_encoder_dtype)}
    stages = []
    for spec in preset.stages:
        encoder_name = "t5"
        if spec.kind == "latent-sr":
            encoder_name = f"clip:{spec.source}"
            encoders[encoder_name] = clip_text_encoder(loaders[spec.source], encoder_name, options.text_encoder_dtype)
        stages.append(STAGE_KINDS.get(spec.kind)(spec, loaders[spec.source], options, encoder_name))
    return TextToImagePipeline(preset.name, "cascaded", encoders, stages, options)
