"""Component builders shared by the tiny test models (``suite.model.tiny``) and the toy world's models (``suite.toy.models``).

Each builder makes one stock diffusers / transformers component from a few sizes, so both sets
of small models are Stable Diffusion and DeepFloyd IF scaled down, and load through the very code
path of the real checkpoints. Word-level tokenizers keep a small vocabulary exact: every known
word is one token.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, UNet2DConditionModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def word_level_clip_tokenizer(words: list[str]) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose merges rebuild each known word; unknown words fall back to letters.

    BPE applies the lowest-ranked merge anywhere in a word, so one word's merge (r, e from "red")
    can pre-empt another's ("green" would become g / re / e / n). Words whose merges are pre-empted
    get their chains moved to the front until every known word is a single token.
    """
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in LETTERS:
        vocab.setdefault(letter, len(vocab))
        vocab.setdefault(letter + "</w>", len(vocab))
    chains: dict[str, list[tuple[str, str]]] = {}
    for word in dict.fromkeys(words):
        pieces, chain = [*list(word[:-1]), word[-1] + "</w>"], []
        while len(pieces) > 1:
            chain.append((pieces[0], pieces[1]))
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
        chains[word] = chain
    order = list(chains)
    for _ in range(len(order) + 1):
        merges = list(dict.fromkeys(pair for word in order for pair in chains[word]))
        tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
        split = [word for word in order if len(tokenizer.tokenize(word)) != 1]
        if not split:
            return tokenizer
        order = split + [word for word in order if word not in split]
    raise ValueError(f"no merge order makes these words single tokens: {split}")


def word_level_t5_tokenizer(words: list[str]) -> T5Tokenizer:
    """A T5 (sentencepiece unigram) tokenizer with one piece per known word."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + word, -1.0) for word in words]
    pieces += [(letter, -10.0) for letter in LETTERS]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=77)


def clip_text_encoder(
    tokenizer: CLIPTokenizer, width: int, intermediate: int, projection_dim: int | None = None
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """A 2-layer CLIP text transformer, 4 heads, 77 positions (SD's text encoder, scaled down); with
    ``projection_dim``, with its projection to the joint embedding, as unCLIP reads it."""
    model_class = CLIPTextModel if projection_dim is None else CLIPTextModelWithProjection
    extra = {} if projection_dim is None else {"projection_dim": projection_dim}
    return model_class(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=intermediate,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            **extra,
        )
    )


def t5_encoder(tokenizer: T5Tokenizer, d_model: int, d_kv: int, d_ff: int, **config) -> T5EncoderModel:
    """A 2-layer T5 v1.1-style encoder: gated GELU, relative positions, 4 heads (IF's T5-XXL, scaled down)."""
    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=d_kv,
            d_ff=d_ff,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
            **config,
        )
    )


def autoencoder(block_out_channels: tuple[int, ...], **config) -> AutoencoderKL:
    """SD's AutoencoderKL with 4 latent channels; f = 2 ** (len(block_out_channels) - 1)."""
    depth = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=block_out_channels,
        down_block_types=("DownEncoderBlock2D",) * depth,
        up_block_types=("UpDecoderBlock2D",) * depth,
        layers_per_block=1,
        norm_num_groups=8,
        **config,
    )


def if_unet(**config) -> UNet2DConditionModel:
    """IF's UNet family: ResNet up/down blocks, simple cross-attention on projected T5 states, pooled-text
    embedding added to the time embedding, scale-shift norms, learned-range variance (6 output channels)."""
    return UNet2DConditionModel(
        out_channels=6,
        layers_per_block=1,
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        encoder_hid_dim_type="text_proj",
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
        **config,
    )


def latent_scheduler() -> PNDMScheduler:
    """SD 1.5's published scheduler config: scaled-linear betas 0.00085 -> 0.012, epsilon prediction."""
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    scheduler.register_to_config(clip_sample=False)  # as in SD's published scheduler config
    return scheduler


def if_scheduler(sample_max_value: float) -> DDPMScheduler:
    """IF's: cosine betas, learned-range variance, dynamic thresholding (1.5 for stage I, 1.0 for stage II)."""
    return DDPMScheduler(
        beta_schedule="squaredcos_cap_v2",
        variance_type="learned_range",
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=sample_max_value,
    )


def image_noising_scheduler() -> DDPMScheduler:
    """IF-II's noise augmentation of the low-res image (Imagen's conditioning augmentation)."""
    return DDPMScheduler(beta_schedule="squaredcos_cap_v2")
