"""The suite's one denoising loop reproduces diffusers' own pipelines for the same seeds."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from diffusers import IFPipeline, IFSuperResolutionPipeline, StableDiffusionPipeline

from suite.model.samplers import clips_x0, consumes_learned_variance, make_scheduler
from suite.model.stages import StageSettings
from suite.model.timing import Clock

PROMPTS = ["a red circle above a blue square", "a photo of a cat"]
SEEDS = [3, 11]
CLOCK = Clock(torch.device("cpu"))


def generators() -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in SEEDS]


def reference_scheduler(sampler: str, model_config):
    """The same scheduler the suite builds, made palatable to diffusers' IF pipelines.

    IF pipelines read ``scheduler.config.variance_type`` and keep the variance channels whenever
    it says learned_range, which a DDIM/Euler built from IF's config still says; record the
    truth so the reference pipeline can run those samplers at all.
    """
    scheduler = make_scheduler(sampler, model_config)
    if not consumes_learned_variance(scheduler):
        scheduler.register_to_config(variance_type="fixed_small")
    return scheduler


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver++", "euler"])
def test_latent_loop_matches_stable_diffusion_pipeline(latent_pipeline, sampler):
    stage = latent_pipeline.stages[0]
    encoder = latent_pipeline.text_encoders["clip"]
    reference = StableDiffusionPipeline(
        vae=stage.vae,
        text_encoder=encoder.model,
        tokenizer=encoder.tokenizer,
        unet=stage.unet,
        scheduler=make_scheduler(sampler, stage.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    expected = reference(
        PROMPTS,
        num_inference_steps=6,
        guidance_scale=7.5,
        generator=generators(),
        output_type="np",
        height=64,
        width=64,
    ).images

    latent_pipeline.encode(PROMPTS, PROMPTS, CLOCK)
    images, _ = latent_pipeline.generate(PROMPTS, [StageSettings(sampler, 6, 7.5)], generators(), CLOCK)
    actual = images.permute(0, 2, 3, 1).numpy()
    assert actual.shape == expected.shape == (2, 64, 64, 3)
    assert np.abs(actual - expected).max() <= 1e-4


def _if_reference(
    cascade_pipeline, sampler: str, steps: tuple[int, int], guidance: tuple[float, float], noise_level: int
):
    base, super_resolution = cascade_pipeline.stages[:2]
    encoder = cascade_pipeline.text_encoders["t5"]
    stage_1 = IFPipeline(
        tokenizer=encoder.tokenizer,
        text_encoder=encoder.model,
        unet=base.unet,
        scheduler=reference_scheduler(sampler, base.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )
    stage_2 = IFSuperResolutionPipeline(
        tokenizer=encoder.tokenizer,
        text_encoder=encoder.model,
        unet=super_resolution.unet,
        scheduler=reference_scheduler(sampler, super_resolution.scheduler_config),
        image_noising_scheduler=super_resolution.conditioning.noising_scheduler,
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )
    for pipe in (stage_1, stage_2):
        _step_along_the_clipped_x0(pipe.scheduler)
    if sampler == "euler":
        # IFSuperResolutionPipeline scales [sample, low-res image] together with the sample's
        # sigma; the suite scales only the noisy sample (as the SD x4 upscaler pipeline does).
        _scale_only_the_sample(stage_2.scheduler, channels=3)
    for pipe in (stage_1, stage_2):
        pipe.set_progress_bar_config(disable=True)
    shared = generators()
    low_res = stage_1(
        PROMPTS,
        num_inference_steps=steps[0],
        guidance_scale=guidance[0],
        generator=shared,
        output_type="pt",
        clean_caption=False,
    ).images
    return stage_2(
        PROMPTS,
        image=low_res,
        num_inference_steps=steps[1],
        guidance_scale=guidance[1],
        noise_level=noise_level,
        generator=shared,
        output_type="np",
        clean_caption=False,
    ).images


def _step_along_the_clipped_x0(scheduler) -> None:
    """The suite's one deliberate DDIM difference: eps re-derived from the thresholded x0 (see samplers.step_kwargs)."""
    if "use_clipped_model_output" not in inspect.signature(scheduler.step).parameters or not clips_x0(scheduler):
        return
    original = scheduler.step
    scheduler.step = lambda *args, **kwargs: original(*args, **{**kwargs, "use_clipped_model_output": True})


def _scale_only_the_sample(scheduler, channels: int) -> None:
    original = scheduler.scale_model_input

    def scale_model_input(model_input, timestep):
        sample, conditioning = model_input[:, :channels], model_input[:, channels:]
        return torch.cat([original(sample, timestep), conditioning], dim=1)

    scheduler.scale_model_input = scale_model_input


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver++", "euler"])
def test_cascade_loop_matches_if_pipelines(cascade_pipeline, sampler):
    expected = _if_reference(cascade_pipeline, sampler, steps=(5, 4), guidance=(7.0, 4.0), noise_level=250)

    cascade_pipeline.stages = cascade_pipeline.stages[:2]  # the IF pipelines stop at 64 px
    cascade_pipeline.encode(PROMPTS, PROMPTS, CLOCK)
    settings = [StageSettings(sampler, 5, 7.0), StageSettings(sampler, 4, 4.0, noise_level=250)]
    images, _ = cascade_pipeline.generate(PROMPTS, settings, generators(), CLOCK)
    actual = images.permute(0, 2, 3, 1).numpy()
    assert actual.shape == expected.shape == (2, 64, 64, 3)
    assert np.abs(actual - expected).max() <= 1e-4


def test_if_pipeline_with_ddim_and_learned_variance_needs_the_suite_fix(cascade_pipeline):
    """Naively, DDIM built from IF's config keeps 6 output channels and cannot step a 3-channel sample."""
    base = cascade_pipeline.stages[0]
    encoder = cascade_pipeline.text_encoders["t5"]
    naive = IFPipeline(
        tokenizer=encoder.tokenizer,
        text_encoder=encoder.model,
        unet=base.unet,
        scheduler=make_scheduler("ddim", base.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )
    naive.set_progress_bar_config(disable=True)
    with pytest.raises(RuntimeError):
        naive(PROMPTS[:1], num_inference_steps=2, generator=generators()[:1], output_type="pt", clean_caption=False)


def test_ddim_on_a_thresholding_model_steps_along_the_clipped_x0(cascade_pipeline):
    """Without the suite's choice, diffusers' DDIM mixes the clipped x0 with the raw eps: different images."""
    base = cascade_pipeline.stages[0]
    encoder = cascade_pipeline.text_encoders["t5"]
    naive = IFPipeline(
        tokenizer=encoder.tokenizer,
        text_encoder=encoder.model,
        unet=base.unet,
        scheduler=reference_scheduler("ddim", base.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )
    naive.set_progress_bar_config(disable=True)
    arguments = {"num_inference_steps": 5, "guidance_scale": 7.0, "output_type": "pt", "clean_caption": False}
    plain = naive(PROMPTS, generator=generators(), **arguments).images
    _step_along_the_clipped_x0(naive.scheduler)
    consistent = naive(PROMPTS, generator=generators(), **arguments).images
    cascade_pipeline.stages = cascade_pipeline.stages[:1]
    cascade_pipeline.encode(PROMPTS, PROMPTS, CLOCK)
    images, _ = cascade_pipeline.generate(PROMPTS, [StageSettings("ddim", 5, 7.0)], generators(), CLOCK)
    assert torch.allclose(images, (consistent / 2 + 0.5).clamp(0, 1), atol=1e-4)
    assert not torch.allclose(plain, consistent, atol=1e-3)
