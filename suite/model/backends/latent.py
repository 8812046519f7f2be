"""Latent diffusion: a text encoder -> a denoiser on latents -> VAE decoder.

Stable Diffusion (stage kind ``latent``): CLIP and a UNet. PixArt-alpha (``latent-dit``): T5 (120 tokens, its
mask passed to the denoiser) and a diffusion transformer (``transformer/``), through the same denoising loop.
The text encoder is whatever the folder holds, used as its family uses it, and the VAE may come from a second
source named ``vae`` (a swapped or shared VAE).
"""

from __future__ import annotations

from suite.core.errors import UserError
from suite.model.backends.components import STAGE_KINDS, text_encoder
from suite.model.loading import LoadOptions
from suite.model.pipeline import TextToImagePipeline
from suite.model.presets import Preset

DESCRIPTION = (
    "CLIP text encoder -> latent UNet -> VAE decoder (Stable Diffusion); T5 -> latent transformer -> VAE (PixArt-alpha)"
)
LATENT_KINDS = {"latent": 77, "latent-dit": 120}  # stage kind -> a T5 encoder's prompt tokens (PixArt-alpha: 120)


def load(preset: Preset, options: LoadOptions) -> TextToImagePipeline:
    """Load a Stable-Diffusion-layout folder (text_encoder/, tokenizer/, unet/, vae/, scheduler/)."""
    locations = preset.source_paths()
    spec = preset.stages[0] if preset.stages else None
    if len(preset.stages) != 1 or spec.kind not in LATENT_KINDS or set(locations) - {spec.source, "vae"}:
        raise UserError(
            f"preset {preset.name!r}: the latent backend takes one 'latent' or 'latent-dit' stage, "
            "its source and optionally a 'vae' source"
        )
    loader = options.loader(preset.name, spec.source, locations[spec.source])
    vae_loader = options.loader(preset.name, "vae", locations["vae"]) if "vae" in locations else None
    encoder = text_encoder(loader, options.text_encoder_dtype, default="clip", t5_tokens=LATENT_KINDS[spec.kind])
    stage = STAGE_KINDS.get(spec.kind)(spec, loader, options, encoder.name, vae_loader=vae_loader)
    return TextToImagePipeline(preset.name, "latent", {encoder.name: encoder}, [stage], options)
