"""Tiny, randomly initialised models of both families, built from configs and saved like hub repos.

They exercise every code path (tokenizers, text encoders, UNets, VAEs, schedulers, folder
layout) in seconds on a CPU. Their images are not meant to look like anything: they test the
machinery. ``build_latent`` writes a Stable-Diffusion-shaped folder, ``build_cascade`` one
folder per stage shaped like DeepFloyd IF's repos (and optionally the SD x4 upscaler's).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

WORDS = (
    "a an the of and with on in above below left right to red green blue yellow orange purple "
    "black white circle square triangle small large big photo painting cat dog astronaut horse "
    "riding tree house car city street mountain lake sky sunset portrait"
).split()


def word_level_clip_tokenizer(words: list[str] = WORDS) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose merges rebuild each known word; unknown words fall back to letters."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    merges: list[tuple[str, str]] = []
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(letter, len(vocab))
        vocab.setdefault(letter + "</w>", len(vocab))
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            merged = pair[0] + pair[1]
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(merged, len(vocab))
            pieces = [merged] + pieces[2:]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def word_level_t5_tokenizer(words: list[str] = WORDS) -> T5Tokenizer:
    """A T5 (sentencepiece unigram) tokenizer with one piece per known word."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + word, -1.0) for word in words]
    pieces += [(letter, -10.0) for letter in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=77)


def _clip_text_encoder(tokenizer: CLIPTokenizer, hidden: int = 32) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    return CLIPTextModel(config)


def _t5_encoder(tokenizer: T5Tokenizer, d_model: int = 32) -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
    )
    return T5EncoderModel(config)


def _vae(block_out_channels: tuple[int, ...], scaling_factor: float) -> AutoencoderKL:
    depth = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=block_out_channels,
        down_block_types=("DownEncoderBlock2D",) * depth, up_block_types=("UpDecoderBlock2D",) * depth,
        layers_per_block=1, norm_num_groups=8, scaling_factor=scaling_factor,
    )


def _if_unet(sample_size: int, in_channels: int, text_dim: int, super_resolution: bool) -> UNet2DConditionModel:
    """An IF-style UNet: ResNet up/down blocks, simple cross-attention, text-pooled embedding, learned variance."""
    extra = {"class_embed_type": "timestep"} if super_resolution else {}
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=6, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        cross_attention_dim=32, encoder_hid_dim=text_dim, attention_head_dim=8, addition_embed_type="text",
        addition_embed_type_num_heads=2, cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift",
        act_fn="gelu", norm_num_groups=8, **extra,
    )


def _save_all(folder: Path, components: dict) -> None:
    for name, component in components.items():
        component.save_pretrained(folder / name)


def build_latent(folder: Path, seed: int = 0) -> None:
    """A Stable-Diffusion-shaped folder: 64 px images, VAE f=8, 8x8x4 latents, CLIP text encoder."""
    torch.manual_seed(seed)
    tokenizer = word_level_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
        set_alpha_to_one=False, steps_offset=1,
    )
    scheduler.register_to_config(clip_sample=False)  # as in SD's published scheduler config
    _save_all(folder, {
        "tokenizer": tokenizer, "text_encoder": _clip_text_encoder(tokenizer), "unet": unet,
        "vae": _vae((8, 16, 32, 32), 0.18215), "scheduler": scheduler,
    })


def _if_scheduler(sample_max_value: float) -> DDPMScheduler:
    return DDPMScheduler(
        beta_schedule="squaredcos_cap_v2", variance_type="learned_range", thresholding=True,
        dynamic_thresholding_ratio=0.95, sample_max_value=sample_max_value,
    )


def build_cascade(folder: Path, seed: int = 0, base_size: int = 16, latent_upscaler: bool = False) -> None:
    """IF-shaped stages: T5 + pixel base at ``base_size``, pixel x4 SR; optionally a latent x4 upscaler."""
    torch.manual_seed(seed)
    tokenizer = word_level_t5_tokenizer()
    text_encoder = _t5_encoder(tokenizer)
    text_dim = text_encoder.config.d_model
    _save_all(folder / "stage_1", {
        "tokenizer": tokenizer, "text_encoder": text_encoder,
        "unet": _if_unet(base_size, 3, text_dim, super_resolution=False), "scheduler": _if_scheduler(1.5),
    })
    _save_all(folder / "stage_2", {
        "unet": _if_unet(4 * base_size, 6, text_dim, super_resolution=True), "scheduler": _if_scheduler(1.0),
        "image_noising_scheduler": DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
    })
    if latent_upscaler:
        _build_latent_upscaler(folder / "stage_3")


def _build_latent_upscaler(folder: Path) -> None:
    """Shaped like stabilityai/stable-diffusion-x4-upscaler: 7-channel UNet, noise-level classes, VAE f=4."""
    clip_tokenizer = word_level_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=7, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8, num_class_embeds=1000,
    )
    scheduler = DDIMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear", prediction_type="v_prediction")
    low_res_scheduler = DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear")
    _save_all(folder, {
        "tokenizer": clip_tokenizer, "text_encoder": _clip_text_encoder(clip_tokenizer), "unet": unet,
        "vae": _vae((8, 16, 32), 0.08333), "scheduler": scheduler, "low_res_scheduler": low_res_scheduler,
    })
    (folder / "model_index.json").write_text(json.dumps({"max_noise_level": 350}))
