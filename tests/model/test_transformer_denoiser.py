"""A diffusion transformer through the same loop: PixArt-alpha's pipeline, rebuilt from tiny from-config parts,
gives the suite's images for the same seeds (the 512 px layout, and the 1024 px one with resolution and aspect
ratio conditions)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import PixArtAlphaPipeline

from suite.model import tiny
from suite.model.backends import BACKENDS, build_on_meta
from suite.model.denoise import GuidedUNet, TextMasks
from suite.model.devices import DTYPES
from suite.model.flops import pipeline_cost
from suite.model.loading import LoadOptions
from suite.model.presets import PRESETS
from suite.model.samplers import make_scheduler
from suite.model.stages import StageSettings, micro_conditions
from suite.model.timing import Clock

PROMPTS = ["a red circle above a blue square", "a photo of a cat"]
SEEDS = [3, 11]
CLOCK = Clock(torch.device("cpu"))


def load(folder):
    preset = replace(PRESETS.get("tiny-pixart"), local_dir=folder, build=None)
    options = LoadOptions(torch.device("cpu"), DTYPES.get("fp32"), DTYPES.get("fp32"))
    return BACKENDS.get("latent").load(preset, options)


LAYOUTS = {"512": (8, 4), "1024-micro-conditions": (128, 2)}  # latent side, VAE blocks (f = 8 and f = 2)


@pytest.fixture(scope="module")
def pixarts(tmp_path_factory):
    """Each layout's tiny PixArt, built once when a test first asks for it."""
    built = {}

    def get(layout: str):
        if layout not in built:
            sample_size, vae_blocks = LAYOUTS[layout]
            folder = tmp_path_factory.mktemp(f"pixart{sample_size}")
            tiny.build_pixart(folder, sample_size=sample_size, vae_blocks=vae_blocks)
            built[layout] = load(folder)
        return built[layout]

    return get


@pytest.fixture
def pixart(pixarts):
    return pixarts("512")


@pytest.mark.parametrize(
    "layout, sampler, guidance",
    [
        ("512", "dpm-solver++", 4.5),
        ("512", "ddim", 1.0),
        ("512", "euler", 7.0),
        ("1024-micro-conditions", "dpm-solver++", 4.5),
    ],
)
def test_transformer_loop_matches_pixart_alpha_pipeline(pixarts, layout, sampler, guidance):
    pixart = pixarts(layout)
    stage = pixart.stages[0]
    encoder = pixart.text_encoders["t5"]
    assert stage.transformer and encoder.max_length == 120
    assert stage.unet.use_additional_conditions == (stage.unet.config.sample_size == 128)
    reference = PixArtAlphaPipeline(
        tokenizer=encoder.tokenizer,
        text_encoder=encoder.model,
        vae=stage.vae,
        transformer=stage.unet,
        scheduler=make_scheduler(sampler, stage.scheduler_config),
    )
    reference.set_progress_bar_config(disable=True)
    expected = reference(
        PROMPTS,
        num_inference_steps=5,
        guidance_scale=guidance,
        generator=[torch.Generator().manual_seed(seed) for seed in SEEDS],
        output_type="np",
        clean_caption=False,
        use_resolution_binning=False,
    ).images

    pixart.encode(PROMPTS, PROMPTS, CLOCK)
    images, timings = pixart.generate(
        PROMPTS,
        [StageSettings(sampler, 5, guidance)],
        [torch.Generator().manual_seed(seed) for seed in SEEDS],
        CLOCK,
    )
    actual = images.permute(0, 2, 3, 1).numpy()
    side = stage.unet.config.sample_size * stage.scale_factor
    assert actual.shape == expected.shape == (2, side, side, 3)
    assert np.abs(actual - expected).max() <= 1e-4
    assert timings[0].model_evaluations == 5


def test_the_loop_passes_the_text_mask_and_it_matters(pixart):
    """The transformer reads the T5 mask: the same sample and prompt with and without it give different outputs,
    so the equality above holds because the loop passes the mask as PixArtAlphaPipeline does, not by accident."""
    stage, encoder = pixart.stages[0], pixart.text_encoders["t5"]
    embeds = encoder(PROMPTS)
    masks = TextMasks(encoder.attention_mask(PROMPTS), encoder.attention_mask(["", ""]))
    assert masks.prompt.sum() < masks.prompt.numel()  # padding that the mask hides
    size = stage.unet.config.sample_size
    sample = torch.randn(2, 4, size, size, generator=torch.Generator().manual_seed(0))
    extra = micro_conditions(stage, (size, size), 2, torch.float32, torch.device("cpu"))

    def output(mask):
        guided = GuidedUNet(
            stage.unet, embeds, encoder(["", ""]), 4.5, transformer=True, masks=mask, added_cond_kwargs=extra
        )
        with torch.no_grad():
            return guided(sample, torch.tensor(500))

    assert not torch.allclose(output(masks), output(None), atol=1e-4)


def test_flops_of_a_transformer_stage_are_counted_on_meta(pixart):
    cost = pipeline_cost(pixart)
    (stage,) = cost.stages
    assert stage.flops_per_guided_evaluation == pytest.approx(2 * stage.flops_per_evaluation, rel=0.01)
    assert stage.decode_flops > 0 and cost.text_encoder_flops["t5"] > 0
    meta = build_on_meta(replace(PRESETS.get("tiny-pixart"), local_dir=None))
    assert meta.stages[0].transformer
