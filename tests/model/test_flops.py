"""FLOP counting: hand counts on small modules, meta counts equal real counts, per-image arithmetic."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention

from suite.model.flops import count_flops, on_meta, pipeline_cost
from suite.model.stages import StageSettings


def test_conv_flops_match_the_formula():
    """2 * (output elements) * (input channels * kernel area): one multiply-add per weight per output."""
    batch, c_in, c_out, size, kernel = 2, 3, 8, 16, 3
    conv = torch.nn.Conv2d(c_in, c_out, kernel, padding=1)
    flops = count_flops(conv, torch.randn(batch, c_in, size, size))
    assert flops == 2 * batch * c_out * size * size * c_in * kernel * kernel


def test_linear_flops_match_the_formula():
    linear = torch.nn.Linear(32, 48)
    assert count_flops(linear, torch.randn(5, 7, 32)) == 2 * 5 * 7 * 32 * 48


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("context_length", [None, 11])
def test_attention_block_flops_match_a_hand_count(context_length, device):
    """Projections q, k, v, out plus Q K^T and A V (each 2 * B * heads * N * M * d), on CPU and on meta."""
    batch, tokens, channels, heads, head_dim, context_dim = 2, 64, 32, 4, 8, 24
    inner = heads * head_dim
    with torch.device(device):
        attention = Attention(
            query_dim=channels,
            cross_attention_dim=context_dim if context_length else None,
            heads=heads,
            dim_head=head_dim,
        )
        hidden = torch.randn(batch, tokens, channels)
        context = torch.randn(batch, context_length, context_dim) if context_length else None
    keys, key_dim = (context_length, context_dim) if context_length else (tokens, channels)
    expected = (
        2 * batch * tokens * channels * inner  # to_q
        + 2 * 2 * batch * keys * key_dim * inner  # to_k, to_v
        + 2 * batch * tokens * inner * channels  # to_out
        + 2 * 2 * batch * heads * tokens * keys * head_dim  # scores and weighted sum
    )
    assert count_flops(attention, hidden, encoder_hidden_states=context) == expected


def test_meta_twin_counts_what_the_real_model_computes(latent_pipeline):
    unet = latent_pipeline.stages[0].unet
    twin = on_meta(unet)
    assert all(parameter.is_meta for parameter in twin.parameters())
    assert sum(p.numel() for p in twin.parameters()) == sum(p.numel() for p in unet.parameters())
    shape = (2, 4, 8, 8)
    embeds = torch.randn(2, 77, unet.config.cross_attention_dim)
    real = count_flops(unet, torch.randn(shape), torch.tensor(10), encoder_hidden_states=embeds)
    meta = count_flops(
        twin,
        torch.empty(shape, device="meta"),
        torch.tensor(10, device="meta"),
        encoder_hidden_states=embeds.to("meta"),
    )
    assert real == meta > 0


def test_flops_per_image_is_text_plus_evaluations_plus_decode(latent_pipeline):
    cost = pipeline_cost(latent_pipeline)
    stage = cost.stages[0]
    text = sum(cost.text_encoder_flops.values())
    guided = [StageSettings("ddim", 20, 7.5)]
    assert stage.flops_per_guided_evaluation == 2 * stage.flops_per_evaluation
    assert cost.flops_per_image(guided) == text + 20 * stage.flops_per_guided_evaluation + stage.decode_flops
    unguided = [StageSettings("ddim", 20, 1.0)]
    assert cost.flops_per_image(unguided) == text + 20 * stage.flops_per_evaluation + stage.decode_flops
    heun = [StageSettings("heun", 20, 7.5)]  # 2nd order: two model calls per step but the last
    assert cost.flops_per_image(heun) == text + 39 * stage.flops_per_guided_evaluation + stage.decode_flops


def test_cascade_stages_are_counted_at_the_size_the_previous_stage_gives(cascade_pipeline):
    cost = pipeline_cost(cascade_pipeline)
    base, pixel_sr, latent_sr = cost.stages
    assert base.sample_shape == (3, 16, 16) and base.decode_flops == 0
    assert pixel_sr.sample_shape == (3, 64, 64) and pixel_sr.image_shape == (3, 64, 64)
    assert latent_sr.sample_shape == (4, 64, 64)  # the x4 upscaler's latent is the low-res image's size
    assert latent_sr.image_shape == (3, 256, 256) and latent_sr.decode_flops > 0
    assert set(cost.text_encoder_flops) == {"t5", "clip:stage_3"}
