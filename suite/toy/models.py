"""Architectures of the toy models: Stable Diffusion, DeepFloyd IF and unCLIP (Karlo), scaled down to 64 px.

Every model is a stock diffusers / transformers class built from a config, so the toy presets
load through exactly the code path of the real checkpoints.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, PriorTransformer, UnCLIPScheduler, UNet2DConditionModel
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

from suite.model import builders
from suite.model.builders import if_scheduler, image_noising_scheduler, latent_scheduler
from suite.toy.world import WORDS

__all__ = [
    "base_unet",
    "clip_text_encoder",
    "clip_tokenizer",
    "decoder_scheduler",
    "decoder_unet",
    "if_scheduler",
    "image_noising_scheduler",
    "latent_scheduler",
    "latent_unet",
    "prior",
    "prior_scheduler",
    "super_resolution_unet",
    "t5_encoder",
    "t5_tokenizer",
    "text_proj",
    "vae",
]

TEXT_WIDTH = 64
BASE_SIZE = 16  # the cascade's base resolution; x4 super-resolution gives the world's 64 px
# The 2x2 ablation's denoisers: narrower than the shipped pair, so four of them train in 90 minutes
# on 2 cores and fit the weights budget. SD's UNet on latents has 2.21M parameters at these widths,
# IF's on 16 px pixels 2.33M (within 6%).
ABLATION_CHANNELS = (32, 64, 96)


def clip_tokenizer() -> CLIPTokenizer:
    return builders.word_level_clip_tokenizer(list(WORDS))


def t5_tokenizer() -> T5Tokenizer:
    return builders.word_level_t5_tokenizer(list(WORDS))


def clip_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A 2-layer CLIP text transformer (SD's text encoder, scaled down)."""
    return builders.clip_text_encoder(tokenizer, width=TEXT_WIDTH, intermediate=4 * TEXT_WIDTH)


def t5_encoder(tokenizer: T5Tokenizer, dropout_rate: float = 0.1) -> T5EncoderModel:
    """A 2-layer T5 v1.1-style encoder (gated GELU, relative positions; IF's T5-XXL, scaled down).

    T5's configs train with dropout 0.1; the ablation's cells use 0, as CLIP's text tower does.
    """
    return builders.t5_encoder(
        tokenizer,
        d_model=TEXT_WIDTH,
        d_kv=16,
        d_ff=4 * TEXT_WIDTH,
        tie_word_embeddings=False,
        dropout_rate=dropout_rate,
    )


def vae() -> AutoencoderKL:
    """SD's AutoencoderKL with f=8 and 4 latent channels: 64x64x3 -> 8x8x4 (48x fewer values, as SD)."""
    return builders.autoencoder((16, 32, 64, 64), sample_size=64)


def latent_unet(block_out_channels: tuple[int, ...] = (48, 96, 128)) -> UNet2DConditionModel:
    """SD's UNet on an 8x8x4 latent: cross-attention to the prompt at 8x8 and 4x4."""
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=block_out_channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4,
        norm_num_groups=16,
    )


def _if_unet(**config) -> UNet2DConditionModel:
    """IF's UNet family at the toy world's text width, skipping the time activation as IF's config does."""
    return builders.if_unet(encoder_hid_dim=TEXT_WIDTH, attention_head_dim=32, resnet_skip_time_act=True, **config)


def base_unet(block_out_channels: tuple[int, ...] = (48, 96, 128)) -> UNet2DConditionModel:
    """IF-I at 16 px: attention at 8x8 and 4x4."""
    return _if_unet(
        sample_size=BASE_SIZE,
        in_channels=3,
        block_out_channels=block_out_channels,
        cross_attention_dim=block_out_channels[-1],
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        norm_num_groups=16,
    )


def super_resolution_unet() -> UNet2DConditionModel:
    """IF-II, 16 -> 64 px: the noisy image next to the upsampled low-res image; noise level as a timestep class."""
    return _if_unet(
        sample_size=4 * BASE_SIZE,
        in_channels=6,
        block_out_channels=(24, 48, 96),
        cross_attention_dim=96,
        down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
        norm_num_groups=8,
        class_embed_type="timestep",
    )


# unCLIP's decoder: IF-I's 16 px resolution at the ablation's narrow widths with a narrower last block, so the
# toy-unclip family fits the weights budget; its conditioning is the toy CLIP's (128 wide) image embedding.
DECODER_CHANNELS = (32, 64, 64)
CLIP_WIDTH = 128  # the toy CLIP's text width and joint embedding width (suite.toy.clip.MODEL_CONFIG)
CLIP_TOKENS = 12  # the toy CLIP's context length


def prior() -> PriorTransformer:
    """Karlo's prior (a causal transformer over text tokens, the text embedding, the timestep, the noisy image
    embedding and a query token) at the toy CLIP's width: 2 layers, 4 heads of 32."""
    return PriorTransformer(
        num_attention_heads=4,
        attention_head_dim=32,
        num_layers=2,
        embedding_dim=CLIP_WIDTH,
        num_embeddings=CLIP_TOKENS,
    )


def text_proj() -> UnCLIPTextProjModel:
    """Karlo's text_proj: the image embedding as extra context tokens and as a vector added to the time embedding.

    Five extra tokens, not Karlo's four: 12 text tokens + 4 would equal the 16 positions of the 4x4 blocks, and
    diffusers' ``Attention.prepare_attention_mask`` pads the cross-attention mask for the added self-attention
    keys only when the two lengths differ, so equal lengths give a mask of the wrong shape.
    """
    return UnCLIPTextProjModel(
        clip_extra_context_tokens=5,
        clip_embeddings_dim=CLIP_WIDTH,
        time_embed_dim=4 * DECODER_CHANNELS[0],
        cross_attention_dim=DECODER_CHANNELS[-1],
    )


def decoder_unet() -> UNet2DConditionModel:
    """Karlo's decoder at 16 px: IF-like blocks, text_proj's vector added to the time embedding as is
    (``class_embed_type: identity``), cross-attention at 8x8 and 4x4, learned-range variance."""
    return UNet2DConditionModel(
        sample_size=BASE_SIZE,
        in_channels=3,
        out_channels=6,
        layers_per_block=1,
        block_out_channels=DECODER_CHANNELS,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        cross_attention_dim=DECODER_CHANNELS[-1],
        attention_head_dim=32,
        class_embed_type="identity",
        resnet_time_scale_shift="scale_shift",
        norm_num_groups=16,
        act_fn="gelu",
    )


def prior_scheduler() -> UnCLIPScheduler:
    """Karlo's prior scheduler: cosine betas, the clean embedding predicted, clipped to +-5 (in normalised units)."""
    return UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0)


def decoder_scheduler() -> UnCLIPScheduler:
    """Karlo's decoder scheduler: cosine betas, epsilon prediction, learned-range variance."""
    return UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon")
