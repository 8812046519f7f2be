"""Every sampler works on every kind of stage, learned variance included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from suite.model.samplers import SAMPLERS, consumes_learned_variance, make_scheduler
from suite.model.stages import StageSettings
from suite.model.timing import Clock

CLOCK = Clock(torch.device("cpu"))
PROMPTS = ["a red circle"]

IF_CONFIG = {"beta_schedule": "squaredcos_cap_v2", "variance_type": "learned_range", "thresholding": True}


def test_registry_has_the_required_samplers():
    required = {
        "ddpm",
        "ddim",
        "pndm",
        "euler",
        "euler-ancestral",
        "heun",
        "dpm-solver++",
        "dpm-solver++-karras",
        "unipc",
        "deis",
    }
    assert required <= set(SAMPLERS.names())


@pytest.mark.parametrize("sampler", [name for name in SAMPLERS.names() if name != "unclip"])
def test_sampler_keeps_the_models_noise_schedule(sampler):
    scheduler = make_scheduler(
        sampler,
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction"},
    )
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.beta_schedule == "scaled_linear"


@pytest.mark.parametrize(
    "sampler, expected",
    [("ddpm", True), ("dpm-solver++", True), ("ddim", False), ("euler", False), ("unipc", False), ("heun", False)],
)
def test_learned_variance_is_kept_only_for_solvers_that_use_it(sampler, expected):
    assert consumes_learned_variance(make_scheduler(sampler, IF_CONFIG)) is expected
    assert not consumes_learned_variance(make_scheduler(sampler, {"beta_schedule": "linear"}))


@pytest.mark.parametrize("sampler", [name for name in SAMPLERS.names() if name != "unclip"])  # cosine betas only
def test_every_sampler_on_every_stage_kind(cascade_pipeline, latent_pipeline, sampler):
    """Latent loop; IF pixel base and pixel SR (learned_range); SD x4 latent upscaler (v-prediction)."""
    latent_pipeline.encode(PROMPTS, PROMPTS, CLOCK)
    images, _ = latent_pipeline.generate(
        PROMPTS, [StageSettings(sampler, 3, 5.0)], [torch.Generator().manual_seed(0)], CLOCK
    )
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()

    cascade_pipeline.encode(PROMPTS, PROMPTS, CLOCK)
    settings = [
        StageSettings(sampler, 3, 7.0),
        StageSettings(sampler, 2, 4.0, 250),
        StageSettings(sampler, 2, 9.0, 100),
    ]
    images, timings = cascade_pipeline.generate(PROMPTS, settings, [torch.Generator().manual_seed(0)], CLOCK)
    assert images.shape == (1, 3, 256, 256) and torch.isfinite(images).all()
    assert [timing.stage for timing in timings] == ["base", "super_resolution_1", "super_resolution_2"]
    assert all(timing.model_evaluations >= 2 for timing in timings)


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver++", "heun"])
def test_truncated_start_runs_the_requested_steps_from_partway_down(cascade_pipeline, sampler):
    """strength 0.5: the schedule is laid out for 2x the steps and its second half runs."""
    from suite.model.samplers import model_evaluations
    from suite.model.stages import StageSettings
    from suite.model.timing import Clock

    pipeline = cascade_pipeline
    pipeline.stages = pipeline.stages[:2]
    clock = Clock(torch.device("cpu"))
    pipeline.encode(["a red circle"], ["a red circle"], clock)
    events = []
    settings = [StageSettings("ddim", 3, 1.0), StageSettings(sampler, 4, 1.0, 250, strength=0.5)]
    image, timings = pipeline.generate(
        ["a red circle"],
        settings,
        [torch.Generator().manual_seed(0)],
        clock,
        hooks=[lambda event: events.append(event)],
    )
    sr_events = [event for event in events if event.stage == "super_resolution_1"]
    config = pipeline.stages[1].scheduler_config
    assert len(sr_events) == timings[1].model_evaluations == model_evaluations(sampler, 4, config, strength=0.5)
    assert int(sr_events[0].timestep) < 600 and torch.isfinite(image).all()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_as_many_steps_as_training_timesteps_runs_every_timestep_once(sampler):
    """SD's `leading` spacing with steps_offset=1 would lay out t = 1000 for 1000 steps (past the training range)."""
    from suite.model.builders import latent_scheduler
    from suite.model.samplers import make_scheduler, set_timesteps

    scheduler = make_scheduler(sampler, latent_scheduler().config)
    set_timesteps(scheduler, 1000)
    assert scheduler.timesteps.tolist() == list(range(999, -1, -1))
    scheduler = make_scheduler(sampler, latent_scheduler().config)
    set_timesteps(scheduler, 50)  # fewer steps keep the published spacing
    assert scheduler.config.timestep_spacing == "leading" and int(scheduler.timesteps[0]) == 981


REFERENCE_CONFIGS = Path(__file__).parents[2] / "suite" / "model" / "reference_configs"


def _reference(name: str) -> dict:
    return json.loads((REFERENCE_CONFIGS / name).read_text())


@pytest.mark.parametrize("sampler", ["dpm-solver++", "unipc", "deis"])
def test_a_model_that_clips_x0_to_one_is_clipped_by_samplers_that_can_only_threshold(sampler):
    """Karlo's decoder clips x0 to [-1, 1] (UnCLIPScheduler); DPM-Solver++, UniPC and DEIS cannot clip, and without
    it the cosine schedule's first step (alpha_bar ~2e-9) turns the toy decoder's images into noise. Dynamic
    thresholding at sample_max_value 1 is that clip: any x0 comes out clamped to [-1, 1], nothing rescaled."""
    scheduler = make_scheduler(sampler, _reference("karlo-decoder-scheduler.json"))
    assert scheduler.config.thresholding and scheduler.config.sample_max_value == 1.0
    x0 = torch.linspace(-30, 30, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    torch.testing.assert_close(scheduler._threshold_sample(x0), x0.clamp(-1, 1))
    prior = make_scheduler(sampler, _reference("karlo-prior-scheduler.json"))  # clips at 5: not translated
    assert not prior.config.thresholding
    stage_1 = make_scheduler(sampler, _reference("if-i-scheduler.json"))  # IF thresholds at 1.5: kept
    assert stage_1.config.thresholding and stage_1.config.sample_max_value == 1.5
    linear = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "clip_sample": True}
    assert not make_scheduler(sampler, linear).config.thresholding  # alpha_bar(T) ~ 5e-3: nothing to carry
    make_scheduler("euler", linear)  # and nothing refused there (the tiny SD x4 upscaler's config)
