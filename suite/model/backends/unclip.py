"""unCLIP (DALL-E 2; Karlo, diffusers' UnCLIPPipeline): CLIP text -> prior -> 64 px decoder -> upsamplers.

One repository-shaped folder holds every part (``text_encoder/``, ``tokenizer/``, ``prior/``, ``text_proj/``,
``decoder/``, ``super_res_first/``, ``super_res_last/`` and a scheduler per stage), as ``kakaobrain/karlo-v1-alpha``
does. The stages are built by ``components.STAGE_KINDS`` and run by ``suite.model.unclip``.
"""

from __future__ import annotations

from suite.core.errors import UserError
from suite.model.backends.components import STAGE_KINDS, pooled_clip_text_encoder
from suite.model.loading import LoadOptions
from suite.model.pipeline import TextToImagePipeline
from suite.model.presets import Preset

DESCRIPTION = "CLIP text -> prior (CLIP image embedding) -> 64 px pixel decoder -> upsamplers (DALL-E 2 / Karlo)"
KINDS = ("prior", "unclip-decoder", "unclip-sr")


def load(preset: Preset, options: LoadOptions) -> TextToImagePipeline:
    """Load a Karlo-shaped folder: the prior, the decoder and the upsampler stage (its two networks)."""
    kinds = [spec.kind for spec in preset.stages]
    locations = preset.source_paths()
    if kinds != list(KINDS) or len(locations) != 1:
        raise UserError(
            f"preset {preset.name!r}: unCLIP is one source with a 'prior', an 'unclip-decoder' and an 'unclip-sr' stage"
        )
    ((key, location),) = locations.items()
    loader = options.loader(preset.name, key, location)
    encoder = pooled_clip_text_encoder(loader, "clip", options.text_encoder_dtype)
    stages = [STAGE_KINDS.get(spec.kind)(spec, loader, options, encoder.name) for spec in preset.stages]
    return TextToImagePipeline(preset.name, "unclip", {encoder.name: encoder}, stages, options)
