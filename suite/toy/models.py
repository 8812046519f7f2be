"""Architectures of the toy models: Stable Diffusion and DeepFloyd IF, scaled down to 64 px.

Every model is a stock diffusers / transformers class built from a config, so the toy presets
load through exactly the code path of the real checkpoints.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

from suite.tiny import word_level_clip_tokenizer, word_level_t5_tokenizer
from suite.toy.world import WORDS

TEXT_WIDTH = 64
BASE_SIZE = 16  # the cascade's base resolution; x4 super-resolution gives the world's 64 px


def clip_tokenizer() -> CLIPTokenizer:
    return word_level_clip_tokenizer(list(WORDS))


def t5_tokenizer() -> T5Tokenizer:
    return word_level_t5_tokenizer(list(WORDS))


def clip_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A 2-layer CLIP text transformer (SD's text encoder, scaled down)."""
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))


def t5_encoder(tokenizer: T5Tokenizer) -> T5EncoderModel:
    """A 2-layer T5 v1.1-style encoder (gated GELU, relative positions; IF's T5-XXL, scaled down)."""
    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=TEXT_WIDTH, d_kv=16, d_ff=4 * TEXT_WIDTH, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False,
    ))


def vae() -> AutoencoderKL:
    """SD's AutoencoderKL with f=8 and 4 latent channels: 64x64x3 -> 8x8x4 (48x fewer values, as SD)."""
    depth = 4
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * depth, up_block_types=("UpDecoderBlock2D",) * depth,
        layers_per_block=1, norm_num_groups=8, sample_size=64,
    )


def latent_unet() -> UNet2DConditionModel:
    """SD's UNet on an 8x8x4 latent: cross-attention to the prompt at 8x8 and 4x4."""
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(48, 96, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=4, norm_num_groups=16,
    )


def _if_unet(**config) -> UNet2DConditionModel:
    """IF's UNet family: ResNet up/down blocks, simple cross-attention on projected T5 states, pooled-text
    embedding added to the time embedding, scale-shift norms, learned-range variance (6 output channels)."""
    return UNet2DConditionModel(
        out_channels=6, layers_per_block=1, mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        encoder_hid_dim=TEXT_WIDTH, encoder_hid_dim_type="text_proj", attention_head_dim=32,
        addition_embed_type="text", addition_embed_type_num_heads=2, cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift", resnet_skip_time_act=True, act_fn="gelu", **config,
    )


def base_unet() -> UNet2DConditionModel:
    """IF-I at 16 px: attention at 8x8 and 4x4."""
    return _if_unet(
        sample_size=BASE_SIZE, in_channels=3, block_out_channels=(48, 96, 128), cross_attention_dim=128,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        norm_num_groups=16,
    )


def super_resolution_unet() -> UNet2DConditionModel:
    """IF-II, 16 -> 64 px: the noisy image next to the upsampled low-res image; noise level as a timestep class."""
    return _if_unet(
        sample_size=4 * BASE_SIZE, in_channels=6, block_out_channels=(24, 48, 96), cross_attention_dim=96,
        down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
        norm_num_groups=8, class_embed_type="timestep",
    )


def latent_scheduler() -> PNDMScheduler:
    """SD 1.5's published scheduler config: scaled-linear betas 0.00085 -> 0.012, epsilon prediction."""
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    scheduler.register_to_config(clip_sample=False)
    return scheduler


def if_scheduler(sample_max_value: float) -> DDPMScheduler:
    """IF's: cosine betas, learned-range variance, dynamic thresholding (1.5 for stage I, 1.0 for stage II)."""
    return DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range", thresholding=True,
                         dynamic_thresholding_ratio=0.95, sample_max_value=sample_max_value)


def image_noising_scheduler() -> DDPMScheduler:
    """IF-II's noise augmentation of the low-res image (Imagen's conditioning augmentation)."""
    return DDPMScheduler(beta_schedule="squaredcos_cap_v2")
