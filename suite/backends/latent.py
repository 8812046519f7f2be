"""Latent diffusion (Stable Diffusion): CLIP text encoder -> UNet on latents -> VAE decoder."""

from __future__ import annotations

from suite.backends.components import STAGE_KINDS, clip_text_encoder
from suite.errors import UserError
from suite.loading import LoadOptions
from suite.pipeline import TextToImagePipeline
from suite.presets import Preset

DESCRIPTION = "CLIP text encoder -> latent UNet -> VAE decoder (Stable Diffusion)"


def load(preset: Preset, options: LoadOptions) -> TextToImagePipeline:
    """Load a Stable-Diffusion-layout folder (text_encoder/, tokenizer/, unet/, vae/, scheduler/)."""
    locations = preset.source_paths()
    if len(locations) != 1 or len(preset.stages) != 1 or preset.stages[0].kind != "latent":
        raise UserError(f"preset {preset.name!r}: the latent backend takes one source and one 'latent' stage")
    ((key, location),) = locations.items()
    loader = options.loader(preset.name, key, location)
    encoder = clip_text_encoder(loader, "clip", options.text_encoder_dtype)
    stage = STAGE_KINDS.get("latent")(preset.stages[0], loader, options, encoder.name)
    return TextToImagePipeline(preset.name, "latent", {encoder.name: encoder}, [stage], options)
