"""The shipped toy models: loaded through the preset code path, and as good as the toy world needs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from suite.cli import main
from suite.model.backends import BACKENDS
from suite.model.loading import LoadOptions
from suite.model.presets import PRESETS, TOY_WEIGHTS
from suite.toy import clip as toy_clip
from suite.toy import world
from suite.toy.jobs import images_to_tensor, psnr_db, retrieval_top1

CPU_FP32 = LoadOptions(torch.device("cpu"), torch.float32, torch.float32)


def test_shipped_weights_are_safetensors_under_100_mb_with_their_training_budget():
    files = list(TOY_WEIGHTS.rglob("*"))
    weights = [path for path in files if path.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")]
    assert weights and all(path.suffix == ".safetensors" for path in weights)
    assert (
        sum(path.stat().st_size for path in weights) < 100e6
    )  # toy presets (toy-unclip too), the ablation cells and replicates, toy CLIP
    training = json.loads((TOY_WEIGHTS / "training.json").read_text())
    assert set(training) == {"vae", "latent", "clip", "base", "super_resolution", "prior", "decoder"}
    for summary in training.values():
        assert summary["images_seen"] > 0 and summary["wall_seconds"] > 0 and summary["device"]


def test_vae_reconstructs_held_out_images_above_30_db():
    pipeline = BACKENDS.get("latent").load(PRESETS.get("toy-latent"), CPU_FP32)
    vae = pipeline.stages[0].vae
    assert vae.config.latent_channels == 4 and pipeline.stages[0].scale_factor == 8  # 8x8x4 latents, as SD's 64x64x4
    images = images_to_tensor(world.sample_batch(seed=31337, count=64, include_held_out=True)[0])
    with torch.no_grad():
        reconstruction = vae.decode(vae.encode(images).latent_dist.mode()).sample.clamp(-1, 1)
    assert psnr_db(reconstruction, images) >= 30.0


def test_toy_clip_retrieves_the_caption_of_held_out_images():
    """Image -> caption top-1 over all 540 captions, on freshly drawn images (one per caption)."""
    model = toy_clip.load(TOY_WEIGHTS / "toy-clip")
    assert retrieval_top1(model) >= 0.60


def test_toy_presets_load_like_hub_checkpoints():
    latent = BACKENDS.get("latent").load(PRESETS.get("toy-latent"), CPU_FP32)
    cascade = BACKENDS.get("cascaded").load(PRESETS.get("toy-cascaded"), CPU_FP32)
    assert [stage.name for stage in cascade.stages] == ["base", "super_resolution_1"]
    assert cascade.stages[0].unet.config.sample_size == 16 and cascade.stages[1].unet.config.out_channels == 6
    assert latent.stages[0].unet.config.sample_size == 8


def test_quick_toy_sweep_fills_every_metric(tmp_path):
    run = tmp_path / "toy-quick"
    assert main(["sweep", "experiments/toy-quick.yaml", "--out", str(run), "--quiet", "--device", "cpu"]) == 0
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.preset) == ["toy-latent", "toy-cascaded"]
    columns = ["fid", "kid_mean", "clip_score_mean", "cmmd", "gflops_per_image", "toy_correct", "toy_correct_single"]
    assert metrics[columns].notna().all().all()


@pytest.mark.slow
def test_single_objects_come_out_right_at_guidance_3(tmp_path):
    """The issue's bar: single-object colour and shape >= 80% (toy-latent) and >= 60% (toy-cascaded)."""
    import yaml

    singles = [caption.text for caption in world.all_captions() if caption.relation is None]
    sweep = {
        "name": "singles",
        "presets": ["toy-latent", "toy-cascaded"],
        "samplers": ["dpm-solver++"],
        "steps": [20],
        "guidance": [3.0],
        "seeds_per_prompt": 4,
        "batch_size": 16,
        "prompts": {"list": singles},
        "metrics": ["composition"],
        "stages": {"toy-cascaded": {"super_resolution_1": {"steps": 10}}},
    }
    path = tmp_path / "singles.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert main(["sweep", str(path), "--out", str(tmp_path / "run"), "--quiet", "--device", "cpu"]) == 0
    accuracy = pd.read_csv(tmp_path / "run" / "metrics.csv").set_index("preset")["toy_binding"]
    assert accuracy["toy-latent"] >= 0.8 and accuracy["toy-cascaded"] >= 0.6, accuracy.to_dict()
    assert np.isfinite(accuracy).all()


@pytest.mark.gpu
def test_toy_sweep_runs_on_cuda_in_half_precision(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    run = tmp_path / "toy-quick-cuda"
    assert (
        main(
            ["sweep", "experiments/toy-quick.yaml", "--out", str(run), "--quiet", "--device", "cuda", "--dtype", "fp16"]
        )
        == 0
    )
    samples = pd.read_parquet(run / "samples.parquet")
    assert (samples["device"].str.startswith("cuda")).all() and (samples["dtype"] == "fp16").all()
    assert (samples["peak_memory_kind"] == "cuda_max_allocated").all()


def _exact_match(pipeline, sampler: str, guidance: float, prompts: list[str]) -> float:
    from suite.model.timing import Clock
    from suite.run.grid import preset_stage_settings
    from suite.toy.score import score_prompt_image

    clock = Clock(torch.device("cpu"))
    pipeline.encode(prompts, prompts, clock)
    settings = preset_stage_settings(PRESETS.get("toy-cascaded"), sampler, 10, guidance)
    generators = [torch.Generator().manual_seed(index) for index in range(len(prompts))]
    images, _ = pipeline.generate(prompts, settings, generators, clock)
    arrays = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return float(np.mean([score_prompt_image(array, prompt)["correct"] for array, prompt in zip(arrays, prompts)]))


@pytest.mark.slow  # 33 s: 32 toy prompts through the trained cascade
def test_ddim_with_guidance_composes_on_the_thresholding_toy_cascade():
    """Regression: DDIM stepping along the raw eps beside the thresholded x0 collapsed to colour fields
    (0 of 44 toy prompts exact at guidance 7.5, against 0.32 with eps re-derived from the clipped x0)."""
    from suite.prompts.sets import PROMPT_SETS

    pipeline = BACKENDS.get("cascaded").load(PRESETS.get("toy-cascaded"), CPU_FP32)
    prompts = list(PROMPT_SETS.get("toy"))[:32]
    ddim = _exact_match(pipeline, "ddim", 7.5, prompts)
    dpm = _exact_match(pipeline, "dpm-solver++", 7.5, prompts)
    raw = _exact_match(pipeline, "ddim-raw-eps", 7.5, prompts)  # diffusers' default DDIM step: the collapse
    assert ddim >= 0.15 and ddim >= dpm - 0.2 and raw <= 0.05, (ddim, dpm, raw)
