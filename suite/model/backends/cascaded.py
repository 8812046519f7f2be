"""Cascaded pixel diffusion (Imagen, DeepFloyd IF): T5 -> pixel base -> x4 super-resolution stages.

Pixel stages share the text encoder loaded from the base stage's folder (as IF-II reuses IF-I's
embeddings): T5 for IF, or whatever encoder the folder holds. A latent x4 upscaler stage (DeepFloyd's
third stage) brings its own CLIP encoder; any stage may instead read the encoder of the source its
spec names in ``text_source``.
"""

from __future__ import annotations

from suite.core.errors import UserError
from suite.model.backends.components import STAGE_KINDS, text_encoder
from suite.model.loading import LoadOptions
from suite.model.pipeline import TextToImagePipeline
from suite.model.presets import Preset

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
    base_encoder = text_encoder(base_loader, options.text_encoder_dtype, default="t5")
    encoders = {base_encoder.name: base_encoder}
    stages = []
    for spec in preset.stages:
        encoder_name = base_encoder.name
        source = spec.text_source or (spec.source if spec.kind == "latent-sr" else None)
        if source is not None:
            if source not in loaders:
                raise UserError(
                    f"preset {preset.name!r}: stage {spec.name!r} reads text from unknown source {source!r}"
                )
            encoder = text_encoder(loaders[source], options.text_encoder_dtype, default="clip", qualifier=f":{source}")
            encoder_name = encoder.name
            encoders.setdefault(encoder_name, encoder)
        stages.append(STAGE_KINDS.get(spec.kind)(spec, loaders[spec.source], options, encoder_name))
    return TextToImagePipeline(preset.name, "cascaded", encoders, stages, options)
