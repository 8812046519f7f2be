"""unCLIP through the one loop: diffusers' UnCLIPPipeline, rebuilt from the parts of a tiny Karlo-shaped folder,
gives the suite's images for the same seeds; the prior, the decoder's conditioning and both upsampler networks
each change the image; FLOPs count every stage."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import PriorTransformer, UnCLIPPipeline, UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from suite.core.errors import UserError
from suite.model import tiny
from suite.model.backends import BACKENDS, build_on_meta
from suite.model.flops import pipeline_cost
from suite.model.loading import LoadOptions
from suite.model.presets import PRESETS
from suite.model.samplers import SAMPLERS, make_scheduler
from suite.model.sources import ReferenceConfigs
from suite.model.stages import StageSettings
from suite.model.timing import Clock
from suite.model.unclip import DecoderStage, PriorStage, SuperResolutionStage
from suite.run.grid import preset_stage_settings
from suite.run.preflight import check_samplers, stage_schedulers
from tests.run.test_reliability import one_line_exit_2, sweep, sweep_file

PROMPTS = ["a red circle above a blue square", "a photo of a cat"]
SEEDS = [3, 11]
CLOCK = Clock(torch.device("cpu"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("karlo")
    tiny.build_unclip(path)
    return path


FLOATS = {"fp32": torch.float32, "fp64": torch.float64}


def load(folder, dtype: str):
    preset = replace(PRESETS.get("tiny-unclip"), local_dir=folder, build=None)
    options = LoadOptions(torch.device("cpu"), FLOATS[dtype], FLOATS[dtype])
    pipeline = BACKENDS.get("unclip").load(preset, options)
    pipeline.encode(PROMPTS, PROMPTS, CLOCK)
    return pipeline


@pytest.fixture(scope="module")
def unclip(folder):
    return load(folder, "fp32")


def reference_pipeline(folder) -> UnCLIPPipeline:
    """diffusers' own pipeline, each part loaded from the folder by its own class (not through the suite)."""
    pipeline = UnCLIPPipeline(
        prior=PriorTransformer.from_pretrained(folder / "prior"),
        decoder=UNet2DConditionModel.from_pretrained(folder / "decoder"),
        text_encoder=CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        text_proj=UnCLIPTextProjModel.from_pretrained(folder / "text_proj"),
        super_res_first=UNet2DModel.from_pretrained(folder / "super_res_first"),
        super_res_last=UNet2DModel.from_pretrained(folder / "super_res_last"),
        prior_scheduler=UnCLIPScheduler.from_pretrained(folder / "prior_scheduler"),
        decoder_scheduler=UnCLIPScheduler.from_pretrained(folder / "decoder_scheduler"),
        super_res_scheduler=UnCLIPScheduler.from_pretrained(folder / "super_res_scheduler"),
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def generators() -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in SEEDS]


def suite_images(unclip, settings) -> np.ndarray:
    images, timings = unclip.generate(PROMPTS, settings, generators(), CLOCK)
    assert [timing.model_evaluations for timing in timings] == [stage.num_inference_steps for stage in settings]
    return images.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize(
    "prior_guidance, decoder_guidance, steps",
    [(4.0, 8.0, 5), (4.0, 1.0, 3), (1.0, 1.0, 2)],  # Karlo's defaults; an unguided decoder; no guidance at all
)
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_unclip_loop_matches_the_unclip_pipeline(folder, unclip, dtype, prior_guidance, decoder_guidance, steps):
    """In float64 the suite's images equal the pipeline's to float32 output rounding (the math is the same). In float32
    both round differently (batch layouts differ), and unCLIP's x0 clipping and decoder clamp turn that into up to a
    few 1e-4 at a handful of pixels after 5 guided steps: there the bound is 1/255, with 99.9% of values within 1e-4."""
    pipeline = unclip if dtype == "fp32" else load(folder, "fp64")
    preset = PRESETS.get("tiny-unclip")
    settings = preset_stage_settings(preset, "unclip", steps, decoder_guidance)
    settings = (replace(settings[0], guidance_scale=prior_guidance), *settings[1:])
    assert [stage.num_inference_steps for stage in settings] == [steps, steps, 7]
    expected = (
        reference_pipeline(folder)
        .to(FLOATS[dtype])(
            PROMPTS,
            prior_num_inference_steps=steps,
            decoder_num_inference_steps=steps,
            super_res_num_inference_steps=7,
            prior_guidance_scale=prior_guidance,
            decoder_guidance_scale=decoder_guidance,
            generator=generators(),
            output_type="np",
        )
        .images
    )
    ours = suite_images(pipeline, settings)
    assert ours.shape == expected.shape == (2, 64, 64, 3)
    assert expected.std() > 0.05  # the images are not flat: the comparison can fail
    difference = np.abs(ours - expected)
    if dtype == "fp64":
        assert difference.max() <= 1e-6
    else:
        assert difference.max() <= 1 / 255 and (difference <= 1e-4).mean() >= 0.999


def test_every_unclip_stage_changes_the_image(unclip):
    """The prior's guidance reaches the image through the embedding, and the last upsampler network runs (swapping
    it for the first changes the image)."""
    settings = preset_stage_settings(PRESETS.get("tiny-unclip"), "unclip", 3, 8.0)
    base = suite_images(unclip, settings)
    prior_changed = suite_images(unclip, (replace(settings[0], guidance_scale=1.0), *settings[1:]))
    assert np.abs(prior_changed - base).max() > 1e-3
    upsampler = unclip.stages[2]
    last = upsampler.last_unet
    try:
        upsampler.last_unet = upsampler.unet
        assert np.abs(suite_images(unclip, settings) - base).max() > 1e-3
    finally:
        upsampler.last_unet = last


def test_a_grid_point_reaches_the_unclip_stages_by_the_written_rule():
    """The grid's sampler reaches every stage; its steps and guidance the decoder (and the prior's steps); the prior
    keeps Karlo's guidance 4 and the upsamplers their 7 unguided steps, unless the sweep's stages: say otherwise."""
    prior, decoder, upsampler = preset_stage_settings(PRESETS.get("tiny-unclip"), "ddim", 12, 6.0)
    assert prior == StageSettings("ddim", 12, 4.0)
    assert decoder == StageSettings("ddim", 12, 6.0)
    assert upsampler == StageSettings("ddim", 7, 1.0)


def test_flops_count_the_prior_decoder_and_upsamplers(unclip):
    loaded = pipeline_cost(unclip)
    on_meta = pipeline_cost(build_on_meta(PRESETS.get("tiny-unclip")))
    assert loaded == on_meta
    prior, decoder, upsampler = loaded.stages
    assert isinstance(unclip.stages[0], PriorStage) and isinstance(unclip.stages[1], DecoderStage)
    assert isinstance(unclip.stages[2], SuperResolutionStage)
    assert (
        prior.sample_shape == (32, 1, 1) and decoder.image_shape == (3, 16, 16) and upsampler.image_shape == (3, 64, 64)
    )
    for stage in (prior, decoder):
        assert stage.flops_per_guided_evaluation == 2 * stage.flops_per_evaluation > 0
    assert upsampler.flops_per_guided_evaluation == upsampler.flops_per_evaluation > decoder.flops_per_evaluation


def test_the_unclip_sampler_on_another_noise_schedule_is_one_line_before_any_image(tmp_path, capsys):
    path = sweep_file(tmp_path, **{"samplers: [ddim]": "samplers: [unclip]"})
    error = one_line_exit_2(sweep(path, tmp_path / "run"), capsys)
    assert "sampler 'unclip' cannot sample tiny-latent stage 'latent'" in error and "squaredcos_cap_v2" in error
    assert not (tmp_path / "run" / "items").exists()


@pytest.mark.parametrize("sampler", SAMPLERS.names())
def test_every_sampler_runs_unclip_or_is_refused_before_any_image(folder, unclip, sampler):
    """The prior predicts the clean embedding (prediction_type sample): a sampler whose step cannot take that is
    refused by the preflight check with one reason, as is one that cannot honour the decoder's x0 clip; every other
    one gives finite images through all three stages."""
    preset = replace(PRESETS.get("tiny-unclip"), local_dir=folder, build=None)
    settings = preset_stage_settings(preset, sampler, 3, 5.0)
    try:
        check_samplers(preset, settings, stage_schedulers(preset))
    except UserError as error:
        if sampler in ("pndm", "euler-ancestral"):
            assert "stage 'prior'" in str(error) and "not 'sample'" in str(error)
        else:
            assert sampler in ("euler", "heun")
            assert "stage 'decoder'" in str(error) and "clips each x0 prediction" in str(error)
        return
    images, timings = unclip.generate(PROMPTS, settings, generators(), CLOCK)
    assert torch.isfinite(images).all() and images.shape == (2, 3, 64, 64)
    assert [timing.stage for timing in timings] == ["prior", "decoder", "super_resolution"]


def test_a_sweep_of_tiny_unclip_records_every_stage_and_resumes(tmp_path):
    """The runner, its tables and resuming know nothing of the family: three stages, one of them an embedding."""
    path = sweep_file(
        tmp_path,
        **{
            "presets: [tiny-latent]": "presets: [tiny-unclip]",
            "guidance: [1.0, 3.0]": "guidance: [5.0]",
            "steps: [2]": "steps: [3]",
        },
    )
    out = tmp_path / "run"
    assert sweep(path, out) == 0
    samples = pd.read_parquet(out / "samples.parquet")
    assert len(samples) == 3 and (samples["stage1_name"] == "prior").all()
    assert list(samples.iloc[0][["stage1_guidance_scale", "stage2_guidance_scale", "stage3_guidance_scale"]]) == [
        4.0,
        5.0,
        1.0,
    ]
    assert list(
        samples.iloc[0][["stage1_model_evaluations", "stage2_model_evaluations", "stage3_model_evaluations"]]
    ) == [
        3,
        3,
        7,
    ]
    before = samples.set_index("image_path")["sha256"].sort_index()
    assert sweep(path, out) == 0
    after = pd.read_parquet(out / "samples.parquet").set_index("image_path")["sha256"].sort_index()
    assert after.equals(before)


def test_a_stage_override_is_checked_with_the_sampler_it_sets(tmp_path, capsys):
    """The preflight checks the sampler each stage runs: a grid sampler the prior cannot take is fine when the prior
    is overridden, and an override the prior cannot take is one line before any image."""
    fine = sweep_file(
        tmp_path,
        name="fine.yaml",
        **{
            "presets: [tiny-latent]": "presets: [tiny-unclip]\nstages: {tiny-unclip: {prior: {sampler: ddim}}}",
            "samplers: [ddim]": "samplers: [pndm]",
            "guidance: [1.0, 3.0]": "guidance: [3.0]",
            "steps: [2]": "steps: [3]",
        },
    )
    assert sweep(fine, tmp_path / "fine") == 0
    capsys.readouterr()
    refused = sweep_file(
        tmp_path,
        name="refused.yaml",
        **{"presets: [tiny-latent]": "presets: [tiny-unclip]\nstages: {tiny-unclip: {prior: {sampler: pndm}}}"},
    )
    error = one_line_exit_2(sweep(refused, tmp_path / "refused"), capsys)
    assert "sampler 'pndm' cannot sample tiny-unclip stage 'prior'" in error
    assert not (tmp_path / "refused" / "items").exists()


@pytest.mark.parametrize("sampler", [name for name in SAMPLERS.names() if name not in ("pndm", "euler-ancestral")])
def test_every_sampler_keeps_karlos_cosine_schedule(sampler):
    """Karlo's scheduler configs predate UnCLIPScheduler's beta_schedule key (its default: cosine); a sampler built
    from them takes the model's cosine betas, not its own linear default."""
    for part in ("prior", "decoder", "super_res"):
        config = ReferenceConfigs({"scheduler": f"karlo-{part.replace('_', '-')}-scheduler.json"}).read("scheduler")
        assert "beta_schedule" not in config
        expected = UnCLIPScheduler.from_config(config).alphas_cumprod
        if part != "prior" and not SAMPLERS.get(sampler).honours_clipping:  # the x0 clip: refused (test_samplers)
            with pytest.raises(ValueError, match="clips each x0 prediction"):
                make_scheduler(sampler, config)
            continue
        torch.testing.assert_close(make_scheduler(sampler, config).alphas_cumprod, expected)
