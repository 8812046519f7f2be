"""pytest-benchmark timings of one denoising step and one whole image per backend (tiny models, CPU).

Run with ``pytest tests/benchmarks --benchmark-enable``; compare backends as ratios within one run.
With the default ``--benchmark-disable`` each benchmark runs once, as a smoke test.
"""

from __future__ import annotations

import pytest
import torch

from suite.model.denoise import GuidedUNet
from suite.model.samplers import make_scheduler
from suite.model.stages import StageSettings
from suite.model.timing import Clock

CLOCK = Clock(torch.device("cpu"))
PROMPTS = ["a red circle above a blue square"] * 4


def _one_step(pipeline, stage_index: int, low_res=None):
    stage = pipeline.stages[stage_index]
    cache = pipeline.caches[stage.text_encoder]
    pipeline.encode(PROMPTS[:1], PROMPTS[:1], CLOCK)
    size = stage.sample_size(low_res)
    sample = torch.randn(len(PROMPTS), stage.sample_channels, *size)
    conditioning = None
    labels = None
    if stage.conditioning is not None:
        conditioning = torch.randn(len(PROMPTS), 3, *size)
        labels = torch.full((len(PROMPTS),), 250)
    denoiser = GuidedUNet(
        stage.unet, cache.lookup(PROMPTS), cache.lookup([""] * len(PROMPTS)), 7.5, conditioning, labels
    )
    scheduler = make_scheduler("ddim", stage.scheduler_config)
    scheduler.set_timesteps(20)
    timestep = scheduler.timesteps[0]

    def step():
        with torch.no_grad():
            return scheduler.step(denoiser(sample, timestep)[:, : sample.shape[1]], timestep, sample).prev_sample

    return step


@pytest.mark.parametrize("backend", ["latent", "cascaded"])
def test_one_denoising_step(benchmark, backend, latent_pipeline, cascade_pipeline):
    """One guided step (batch 4, CFG batch 8) of the first stage: 8x8x4 latent vs 16x16x3 pixels."""
    pipeline = latent_pipeline if backend == "latent" else cascade_pipeline
    benchmark.group = "one denoising step"
    result = benchmark(_one_step(pipeline, 0))
    assert torch.isfinite(result).all()


def test_one_super_resolution_step(benchmark, cascade_pipeline):
    """One guided step of the pixel x4 super-resolution stage (16 -> 64 px)."""
    benchmark.group = "one denoising step"
    result = benchmark(_one_step(cascade_pipeline, 1))
    assert torch.isfinite(result).all()


@pytest.mark.parametrize("backend", ["latent", "cascaded"])
def test_one_whole_image(benchmark, backend, latent_pipeline, cascade_pipeline):
    """A whole 64 px image, 20 steps per stage, DPM-Solver++, guidance 7.5 (cascade: base + pixel SR)."""
    pipeline = latent_pipeline if backend == "latent" else cascade_pipeline
    if backend == "cascaded":
        pipeline.stages = pipeline.stages[:2]
    pipeline.encode(PROMPTS[:1], PROMPTS[:1], CLOCK)
    settings = [StageSettings("dpm-solver++", 20, 7.5)] + [StageSettings("dpm-solver++", 20, 4.0, 250)] * (
        len(pipeline.stages) - 1
    )
    benchmark.group = "one whole image"

    def image():
        return pipeline.generate(PROMPTS[:1], settings, [torch.Generator().manual_seed(0)], CLOCK)[0]

    result = benchmark.pedantic(image, rounds=3, warmup_rounds=1)
    assert result.shape == (1, 3, 64, 64)
