"""unCLIP (DALL-E 2; Karlo, diffusers' UnCLIPPipeline): CLIP text -> prior -> 64 px decoder -> upsamplers.

One repository-shaped folder holds every part (``text_encoder/``, ``tokenizer/``, ``prior/``, ``text_proj/``,
``decoder/``, ``super_res_first/``, ``super_res_last/`` and a scheduler per stage), as ``kakaobrain/karlo-v1-alpha``
does. The stages are built by ``components.STAGE_KINDS`` and run by ``suite.model.unclip``.

Instead of unCLIP's own upsamplers, the decoder's image may go to IF-style ``pixel-sr`` stages from other sources
(the toy world's unCLIP reuses toy-cascaded's trained x4 stage): each reads the text encoder of the source its
spec names in ``text_source``, as in a cascade.
"""

from __future__ import annotations

from suite.core.errors import UserError
from suite.model.backends.components import STAGE_KINDS, pooled_clip_text_encoder, text_encoder
from suite.model.loading import LoadOptions
from suite.model.pipeline import TextToImagePipeline
from suite.model.presets import Preset

DESCRIPTION = "CLIP text -> prior (CLIP image embedding) -> 64 px pixel decoder -> upsamplers (DALL-E 2 / Karlo)"
KINDS = ("prior", "unclip-decoder", "unclip-sr")


def _check(preset: Preset) -> None:
    kinds = [spec.kind for spec in preset.stages]
    upsamplers = kinds[2:]
    own = upsamplers == ["unclip-sr"] and len({spec.source for spec in preset.stages}) == 1
    borrowed = bool(upsamplers) and all(kind == "pixel-sr" for kind in upsamplers)
    if (
        kinds[:2] != ["prior", "unclip-decoder"]
        or preset.stages[0].source != preset.stages[1].source
        or not (own or borrowed)
    ):
        raise UserError(
            f"preset {preset.name!r}: unCLIP is a 'prior' and an 'unclip-decoder' stage from one source, then one "
            "'unclip-sr' stage from that source or 'pixel-sr' stages"
        )
    for spec in preset.stages[2:]:
        if spec.kind == "pixel-sr" and spec.text_source is None:
            raise UserError(f"preset {preset.name!r}: pixel-sr stage {spec.name!r} needs a text_source")


def load(preset: Preset, options: LoadOptions) -> TextToImagePipeline:
    """Load a Karlo-shaped folder (the prior, the decoder and the upsampler stage with its two networks), or its
    prior and decoder followed by IF-style x4 stages from other folders."""
    _check(preset)
    loaders = {key: options.loader(preset.name, key, location) for key, location in preset.source_paths().items()}
    encoder = pooled_clip_text_encoder(loaders[preset.stages[0].source], "clip", options.text_encoder_dtype)
    encoders, stages = {encoder.name: encoder}, []
    for spec in preset.stages:
        encoder_name = encoder.name
        if spec.kind == "pixel-sr":
            if spec.text_source not in loaders:
                raise UserError(
                    f"preset {preset.name!r}: stage {spec.name!r} reads text from unknown source {spec.text_source!r}"
                )
            borrowed = text_encoder(
                loaders[spec.text_source], options.text_encoder_dtype, default="t5", qualifier=f":{spec.text_source}"
            )
            encoders.setdefault(borrowed.name, borrowed)
            encoder_name = borrowed.name
        stages.append(STAGE_KINDS.get(spec.kind)(spec, loaders[spec.source], options, encoder_name))
    return TextToImagePipeline(preset.name, "unclip", encoders, stages, options)
