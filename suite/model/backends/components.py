"""Building Stage and TextEncoder objects from repository-shaped folders (shared by the backends)."""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    PixArtTransformer2DModel,
    PriorTransformer,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

from suite.core.registry import Registry
from suite.model.loading import ComponentLoader, LoadOptions
from suite.model.presets import StageSpec
from suite.model.sources import scheduler_folder
from suite.model.stages import LowResConditioning, Stage
from suite.model.text import TextEncoder
from suite.model.unclip import DecoderStage, PriorStage, SuperResolutionStage


def clip_text_encoder(loader: ComponentLoader, name: str, dtype: torch.dtype) -> TextEncoder:
    """CLIP text tower as Stable Diffusion uses it: 77 tokens, last hidden state, no attention mask."""
    model = loader.model(CLIPTextModel, "text_encoder", dtype)
    return TextEncoder(
        name, loader.tokenizer(), model, use_attention_mask=bool(getattr(model.config, "use_attention_mask", False))
    )


def pooled_clip_text_encoder(loader: ComponentLoader, name: str, dtype: torch.dtype) -> TextEncoder:
    """CLIP text tower as unCLIP uses it: the tokenizer's ``model_max_length`` tokens (77 for Karlo), no mask into
    CLIP, per-token states and the projected pooled embedding (``CLIPTextModelWithProjection``); the mask is read by
    the prior and the decoder."""
    model = loader.model(CLIPTextModelWithProjection, "text_encoder", dtype)
    tokenizer = loader.tokenizer()  # None when built from configs alone: the model's positions bound the prompt
    longest = tokenizer.model_max_length if tokenizer is not None else model.config.max_position_embeddings
    max_length = min(longest, 77)  # UnCLIPPipeline pads to the tokenizer's model_max_length
    return TextEncoder(name, tokenizer, model, max_length=max_length, pooled=True)


def t5_text_encoder(loader: ComponentLoader, name: str, dtype: torch.dtype, max_length: int = 77) -> TextEncoder:
    """T5 encoder as DeepFloyd IF uses it: lower-cased prompt, 77 tokens, attention mask (PixArt-alpha: 120)."""
    model = loader.model(T5EncoderModel, "text_encoder", dtype)
    return TextEncoder(name, loader.tokenizer(), model, max_length, lowercase=True, use_attention_mask=True)


def text_encoder(
    loader: ComponentLoader, dtype: torch.dtype, default: str, qualifier: str = "", t5_tokens: int = 77
) -> TextEncoder:
    """The folder's text encoder, used as its family uses it, named after its kind ("t5" or "clip") + qualifier.

    The kind comes from the encoder's config (``model_type``); ``default`` covers configs without one.
    ``t5_tokens``: a T5 encoder's prompt length (IF 77, PixArt-alpha's ``max_sequence_length`` 120).
    """
    kind = {"t5": "t5", "clip_text_model": "clip"}.get(loader.model_type("text_encoder"), default)
    if kind == "t5":
        return t5_text_encoder(loader, kind + qualifier, dtype, t5_tokens)
    return clip_text_encoder(loader, kind + qualifier, dtype)


def _vae(loader: ComponentLoader, options: LoadOptions) -> AutoencoderKL:
    """The VAE in the denoiser's dtype: half precision on accelerators. Where a half-precision decode
    overflows (the known SD fp16 VAE case), ``run_stage`` decodes that batch again in float32 and records it."""
    return loader.model(AutoencoderKL, "vae", options.denoiser_dtype)


def _unet(loader: ComponentLoader, options: LoadOptions) -> UNet2DConditionModel:
    return loader.model(UNet2DConditionModel, "unet", options.denoiser_dtype)


def latent_stage(
    spec: StageSpec,
    loader: ComponentLoader,
    options: LoadOptions,
    text_encoder: str,
    vae_loader: ComponentLoader | None = None,
) -> Stage:
    """Stable Diffusion's loop: a UNet on VAE latents, decoded by the VAE (from ``vae_loader`` if given)."""
    vae = _vae(vae_loader or loader, options)
    return Stage(spec.name, _unet(loader, options), loader.scheduler("scheduler").config, text_encoder, vae=vae)


def latent_transformer_stage(
    spec: StageSpec,
    loader: ComponentLoader,
    options: LoadOptions,
    text_encoder: str,
    vae_loader: ComponentLoader | None = None,
) -> Stage:
    """PixArt-alpha's loop: a diffusion transformer (``transformer/``) on VAE latents, reading the T5 mask."""
    transformer = loader.model(PixArtTransformer2DModel, "transformer", options.denoiser_dtype)
    vae = _vae(vae_loader or loader, options)
    return Stage(spec.name, transformer, loader.scheduler("scheduler").config, text_encoder, vae=vae, transformer=True)


def pixel_base_stage(spec: StageSpec, loader: ComponentLoader, options: LoadOptions, text_encoder: str) -> Stage:
    """IF stage I: a pixel-space UNet at low resolution."""
    return Stage(spec.name, _unet(loader, options), loader.scheduler("scheduler").config, text_encoder)


def pixel_sr_stage(spec: StageSpec, loader: ComponentLoader, options: LoadOptions, text_encoder: str) -> Stage:
    """IF stage II: pixel x4 super-resolution on the noise-augmented, upsampled low-res image."""
    conditioning = LowResConditioning(loader.scheduler("image_noising_scheduler"), upsample=True)
    return Stage(
        spec.name, _unet(loader, options), loader.scheduler("scheduler").config, text_encoder, conditioning=conditioning
    )


def latent_sr_stage(spec: StageSpec, loader: ComponentLoader, options: LoadOptions, text_encoder: str) -> Stage:
    """SD x4 upscaler: a latent next to the noise-augmented low-res image, decoded by a f=4 VAE."""
    conditioning = LowResConditioning(loader.scheduler("low_res_scheduler"), upsample=False, noise_first=True)
    return Stage(
        spec.name,
        _unet(loader, options),
        loader.scheduler("scheduler").config,
        text_encoder,
        vae=_vae(loader, options),
        conditioning=conditioning,
    )


def prior_stage(spec: StageSpec, loader: ComponentLoader, options: LoadOptions, text_encoder: str) -> PriorStage:
    """unCLIP's prior (``prior/``, ``prior_scheduler/``): text -> CLIP image embedding."""
    prior = loader.model(PriorTransformer, "prior", options.denoiser_dtype)
    return PriorStage(spec.name, prior, loader.scheduler(scheduler_folder(spec.kind)).config, text_encoder)


def decoder_stage(spec: StageSpec, loader: ComponentLoader, options: LoadOptions, text_encoder: str) -> DecoderStage:
    """unCLIP's decoder (``decoder/``, ``text_proj/``, ``decoder_scheduler/``): image embedding -> 64 px image."""
    return DecoderStage(
        spec.name,
        loader.model(UNet2DConditionModel, "decoder", options.denoiser_dtype),
        loader.model(UnCLIPTextProjModel, "text_proj", options.denoiser_dtype),
        loader.scheduler(scheduler_folder(spec.kind)).config,
        text_encoder,
    )


def upsampler_stage(
    spec: StageSpec, loader: ComponentLoader, options: LoadOptions, text_encoder: str
) -> SuperResolutionStage:
    """unCLIP's upsampler (``super_res_first/``, ``super_res_last/``, ``super_res_scheduler/``)."""
    return SuperResolutionStage(
        spec.name,
        loader.model(UNet2DModel, "super_res_first", options.denoiser_dtype),
        loader.model(UNet2DModel, "super_res_last", options.denoiser_dtype),
        loader.scheduler(scheduler_folder(spec.kind)).config,
        text_encoder,
    )


STAGE_KINDS = Registry("stage kind")
STAGE_KINDS.register("latent", latent_stage)
STAGE_KINDS.register("latent-dit", latent_transformer_stage)
STAGE_KINDS.register("pixel-base", pixel_base_stage)
STAGE_KINDS.register("pixel-sr", pixel_sr_stage)
STAGE_KINDS.register("latent-sr", latent_sr_stage)
STAGE_KINDS.register("prior", prior_stage)
STAGE_KINDS.register("unclip-decoder", decoder_stage)
STAGE_KINDS.register("unclip-sr", upsampler_stage)
