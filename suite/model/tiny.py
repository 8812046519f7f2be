"""Tiny, randomly initialised models of both families, built from configs and saved like hub repos.

They exercise every code path (tokenizers, text encoders, UNets, VAEs, schedulers, folder
layout) in seconds on a CPU. Their images are not meant to look like anything: they test the
machinery. ``build_latent`` writes a Stable-Diffusion-shaped folder, ``build_pixart`` a PixArt-alpha-shaped
one (T5 + diffusion transformer), ``build_unclip`` a Karlo-shaped one (unCLIP), ``build_cascade`` one folder per stage shaped like DeepFloyd IF's
repos (and optionally the SD x4 upscaler's).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    PixArtTransformer2DModel,
    PriorTransformer,
    UnCLIPPipeline,
    UnCLIPScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

from suite.model import builders

WORDS = [
    "a",
    "an",
    "the",
    "of",
    "and",
    "with",
    "on",
    "in",
    "above",
    "below",
    "left",
    "right",
    "to",
    "red",
    "green",
    "blue",
    "yellow",
    "orange",
    "purple",
    "black",
    "white",
    "circle",
    "square",
    "triangle",
    "small",
    "large",
    "big",
    "photo",
    "painting",
    "cat",
    "dog",
    "astronaut",
    "horse",
    "riding",
    "tree",
    "house",
    "car",
    "city",
    "street",
    "mountain",
    "lake",
    "sky",
    "sunset",
    "portrait",
]


def _if_unet(sample_size: int, in_channels: int, text_dim: int, super_resolution: bool) -> UNet2DConditionModel:
    """A two-level IF-style UNet; the super-resolution variant takes the noise level as a timestep class."""
    extra = {"class_embed_type": "timestep"} if super_resolution else {}
    return builders.if_unet(
        sample_size=sample_size,
        in_channels=in_channels,
        block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        cross_attention_dim=32,
        encoder_hid_dim=text_dim,
        attention_head_dim=8,
        norm_num_groups=8,
        **extra,
    )


def _clip_text_encoder(tokenizer) -> torch.nn.Module:
    return builders.clip_text_encoder(tokenizer, width=32, intermediate=64)


def _save_all(folder: Path, components: dict) -> None:
    for name, component in components.items():
        component.save_pretrained(folder / name)


def build_latent(folder: Path, seed: int = 0) -> None:
    """A Stable-Diffusion-shaped folder: 64 px images, VAE f=8, 8x8x4 latents, CLIP text encoder."""
    torch.manual_seed(seed)
    tokenizer = builders.word_level_clip_tokenizer(WORDS)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    _save_all(
        folder,
        {
            "tokenizer": tokenizer,
            "text_encoder": _clip_text_encoder(tokenizer),
            "unet": unet,
            "vae": builders.autoencoder((8, 16, 32, 32), scaling_factor=0.18215),
            "scheduler": builders.latent_scheduler(),
        },
    )


def build_pixart(folder: Path, seed: int = 0, sample_size: int = 8, vae_blocks: int = 4) -> None:
    """A PixArt-alpha-shaped folder: T5 (text_encoder/, tokenizer/), a diffusion transformer (transformer/) with
    learned sigma (8 output channels), SD's VAE layout and a scheduler. ``sample_size`` 128 makes the transformer
    take resolution and aspect-ratio conditions, as PixArt-XL-2-1024-MS does; ``vae_blocks`` sets f = 2**(n-1)."""
    torch.manual_seed(seed)
    tokenizer = builders.word_level_t5_tokenizer(WORDS)
    text_encoder = builders.t5_encoder(tokenizer, d_model=32, d_kv=8, d_ff=64)
    transformer = PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=12,  # an inner width of 24: divisible by 3, as the resolution/aspect embedding needs
        in_channels=4,
        out_channels=8,
        num_layers=2,
        cross_attention_dim=24,
        sample_size=sample_size,
        patch_size=2,
        caption_channels=text_encoder.config.d_model,
        norm_num_groups=8,
    )
    _save_all(
        folder,
        {
            "tokenizer": tokenizer,
            "text_encoder": text_encoder,
            "transformer": transformer,
            "vae": builders.autoencoder((8, 16, 32, 32)[:vae_blocks], scaling_factor=0.18215),
            "scheduler": builders.latent_scheduler(),
        },
    )


def build_unclip(folder: Path, seed: int = 0, decoder_size: int = 16) -> None:
    """A Karlo-shaped folder (``UnCLIPPipeline.save_pretrained``): CLIP with projection, a prior, text_proj, a pixel
    decoder at ``decoder_size`` with learned variance and two x4 upsamplers, each with unCLIP's scheduler."""
    torch.manual_seed(seed)
    tokenizer = builders.word_level_clip_tokenizer(WORDS)
    width, time_width = 32, 128  # CLIP embedding width; the decoder's time embedding (4 x its first block)
    text_encoder = builders.clip_text_encoder(tokenizer, width=width, intermediate=64, projection_dim=width)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=width, num_layers=1)
    with torch.no_grad():  # CLIP image-embedding statistics the prior's output is un-normalised by
        prior.clip_mean.normal_(0.0, 0.1)
        prior.clip_std.uniform_(0.5, 1.5)
    decoder = UNet2DConditionModel(
        sample_size=decoder_size,
        in_channels=3,
        out_channels=6,  # learned-range variance
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        cross_attention_dim=width,
        attention_head_dim=8,
        class_embed_type="identity",  # text_proj's time embedding is added as is
        resnet_time_scale_shift="scale_shift",
        norm_num_groups=8,
    )

    text_proj = UnCLIPTextProjModel(clip_embeddings_dim=width, time_embed_dim=time_width, cross_attention_dim=width)
    with torch.no_grad():  # the learned "no image" embedding of the unconditional half: not left at zero
        text_proj.learned_classifier_free_guidance_embeddings.normal_()

    def upsampler() -> UNet2DModel:
        return UNet2DModel(
            sample_size=4 * decoder_size,
            in_channels=6,  # the sample beside the upsampled image
            out_channels=3,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
            up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
            resnet_time_scale_shift="scale_shift",
            norm_num_groups=8,
        )

    UnCLIPPipeline(
        prior=prior,
        decoder=decoder,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_proj=text_proj,
        super_res_first=upsampler(),
        super_res_last=upsampler(),
        prior_scheduler=UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0
        ),
        decoder_scheduler=UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon"),
        super_res_scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon"),
    ).save_pretrained(folder)


def build_cascade(folder: Path, seed: int = 0, base_size: int = 16, latent_upscaler: bool = False) -> None:
    """IF-shaped stages: T5 + pixel base at ``base_size``, pixel x4 SR; optionally a latent x4 upscaler."""
    torch.manual_seed(seed)
    tokenizer = builders.word_level_t5_tokenizer(WORDS)
    text_encoder = builders.t5_encoder(tokenizer, d_model=32, d_kv=8, d_ff=64)
    text_dim = text_encoder.config.d_model
    _save_all(
        folder / "stage_1",
        {
            "tokenizer": tokenizer,
            "text_encoder": text_encoder,
            "unet": _if_unet(base_size, 3, text_dim, super_resolution=False),
            "scheduler": builders.if_scheduler(1.5),
        },
    )
    _save_all(
        folder / "stage_2",
        {
            "unet": _if_unet(4 * base_size, 6, text_dim, super_resolution=True),
            "scheduler": builders.if_scheduler(1.0),
            "image_noising_scheduler": builders.image_noising_scheduler(),
        },
    )
    if latent_upscaler:
        _build_latent_upscaler(folder / "stage_3")


def _build_latent_upscaler(folder: Path) -> None:
    """Shaped like stabilityai/stable-diffusion-x4-upscaler: 7-channel UNet, noise-level classes, VAE f=4."""
    clip_tokenizer = builders.word_level_clip_tokenizer(WORDS)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=7,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
        num_class_embeds=1000,
    )
    scheduler = DDIMScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear", prediction_type="v_prediction"
    )
    low_res_scheduler = DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear")
    _save_all(
        folder,
        {
            "tokenizer": clip_tokenizer,
            "text_encoder": _clip_text_encoder(clip_tokenizer),
            "unet": unet,
            "vae": builders.autoencoder((8, 16, 32), scaling_factor=0.08333),
            "scheduler": scheduler,
            "low_res_scheduler": low_res_scheduler,
        },
    )
    (folder / "model_index.json").write_text(json.dumps({"max_noise_level": 350}))
