"""`suite bench`: random-weight architectures timed through the suite's loop against diffusers' pipelines."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from suite.analysis.bench import (
    BenchSettings,
    achieved_tflops,
    bench_presets,
    build_random,
    console_lines,
    diffusers_stage,
    merge_results,
    pipeline_row,
    quartiles,
    random_embeddings,
    ratio_summary,
    utilisation,
    write_bench,
)
from suite.analysis.bench.summary import upgraded
from suite.cli import main
from suite.model.backends import build_on_meta
from suite.model.flops import pipeline_cost
from suite.model.presets import PRESETS
from suite.model.stages import decode_latents
from suite.run.grid import preset_stage_settings

TINY = BenchSettings(device="cpu", num_inference_steps=2, repeats=1, warmup_steps=1)
TINY_TWICE = BenchSettings(device="cpu", num_inference_steps=2, repeats=2, warmup_steps=1)


def test_flop_and_utilisation_arithmetic():
    assert achieved_tflops(3e12, 1.5) == pytest.approx(2.0)
    assert utilisation(2.0, 8.0) == pytest.approx(0.25)
    assert math.isnan(achieved_tflops(1e12, 0.0)) and math.isnan(utilisation(1.0, 0.0))
    assert quartiles([5.0, 1.0, 3.0, 2.0, 4.0]) == (3.0, 2.0, 4.0)


def test_ratio_is_median_over_median_with_the_range_of_pairs():
    summary = ratio_summary([1.1, 1.0, 1.3], [1.0, 1.0, 1.0])
    assert summary["ratio_to_diffusers"] == pytest.approx(1.1)
    assert summary["ratio_to_diffusers_min"] == pytest.approx(1.0) and summary[
        "ratio_to_diffusers_max"
    ] == pytest.approx(1.3)


def test_pipeline_row_adds_text_encoding_and_every_stage():
    rows = [
        {"stage": "text_encoder:t5", "call_median_s": 0.1},
        {"stage": "base", "stage_s": 1.0, "diffusers_stage_s": 0.5, "batch_size": 2},
        {"stage": "super_resolution_1", "stage_s": 3.0, "diffusers_stage_s": 3.5, "batch_size": 2},
    ]
    row = pipeline_row(rows)
    assert row["stage_s"] == pytest.approx(4.1)
    assert row["images_per_s"] == pytest.approx(2 / 4.1)
    assert row["ratio_to_diffusers"] == pytest.approx(4.0 / 4.0)  # text encoding is outside diffusers' timed call


def test_merge_replaces_rows_with_the_same_key_and_keeps_the_rest():
    base = {"dtype": "fp16", "batch_size": 1, "sampler": "ddim", "num_inference_steps": 20, "guidance_scale": 7.5}
    old = pd.DataFrame(
        [
            base | {"preset": "sd15", "stage": "latent", "compile": False, "channels_last": False, "attention": "sdpa"},
            base | {"preset": "sd15", "stage": "latent", "compile": True, "channels_last": False, "attention": "sdpa"},
        ]
    ).assign(step_median_s=[0.010, 0.005])
    new = old.iloc[[1]].assign(step_median_s=[0.004])
    merged = merge_results(old, new)
    assert len(merged) == 2
    assert sorted(merged["step_median_s"]) == [0.004, 0.010]


def test_random_weights_are_built_on_the_requested_device_and_dtype():
    pipeline = build_random(PRESETS.get("tiny-latent"), torch.device("cpu"), "bf16")
    stage = pipeline.stages[0]
    for module in (stage.unet, stage.vae, pipeline.text_encoders["clip"].model):
        parameters = list(module.parameters())
        assert {parameter.dtype for parameter in parameters} == {torch.bfloat16}
        assert {parameter.device.type for parameter in parameters} == {"cpu"}
        assert all(torch.isfinite(parameter.float()).all() for parameter in parameters)
    assert pipeline.text_encoders["clip"].tokenizer is None  # timed on token ids; nothing but configs is read
    again = build_random(PRESETS.get("tiny-latent"), torch.device("cpu"), "bf16").stages[0].unet
    assert not torch.equal(next(stage.unet.parameters()), next(again.parameters()))  # random, not loaded


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    return bench_presets(["tiny-latent", "tiny-cascaded", "tiny-pixart"], TINY)


def test_tiny_presets_bench_every_stage_against_diffusers(tiny_table):
    stages = tiny_table.set_index(["preset", "stage"])
    expected = {
        ("tiny-latent", "text_encoder:clip"),
        ("tiny-latent", "latent"),
        ("tiny-latent", "pipeline"),
        ("tiny-cascaded", "text_encoder:t5"),
        ("tiny-cascaded", "base"),
        ("tiny-cascaded", "super_resolution_1"),
        ("tiny-cascaded", "pipeline"),
        ("tiny-pixart", "text_encoder:t5"),
        ("tiny-pixart", "latent"),
        ("tiny-pixart", "pipeline"),
    }
    assert set(stages.index) == expected
    denoising = tiny_table[tiny_table["steps_timed"].notna()]
    assert (denoising["steps_timed"] == TINY.num_inference_steps * TINY.repeats).all()
    for column in ("step_median_s", "images_per_s", "tflops_achieved", "utilisation", "ratio_to_diffusers"):
        assert (denoising[column] > 0).all() and np.isfinite(denoising[column]).all(), column
    assert (denoising["step_q1_s"] <= denoising["step_median_s"]).all()
    assert (denoising["step_median_s"] <= denoising["step_q3_s"]).all()
    assert denoising["attention_ops"].str.contains("scaled_dot_product").all()  # SDPA is the kernel in use


def test_unclip_is_timed_stage_by_stage_and_against_the_whole_unclip_pipeline(tmp_path):
    """diffusers runs unCLIP only whole: each stage is timed through the suite, the pipeline row has the ratio."""
    table = bench_presets(["tiny-unclip"], TINY_TWICE)
    rows = table.set_index("stage")
    assert list(rows.index) == ["text_encoder:clip", "prior", "decoder", "super_resolution", "pipeline"]
    assert (table["sampler"] == "unclip").all()  # the preset's own: UnCLIPPipeline steps only UnCLIPScheduler
    stages = rows.loc[["prior", "decoder", "super_resolution"]]
    assert list(stages["steps_timed"]) == [4, 4, 14]  # two repeats; the upsamplers keep their 7 steps
    assert stages["ratio_to_diffusers"].isna().all()
    assert (stages["step_median_s"] > 0).all() and stages["attention_ops"].str.contains("scaled_dot_product").all()
    pipeline = rows.loc["pipeline"]
    assert 0 < pipeline["ratio_to_diffusers_min"] <= pipeline["ratio_to_diffusers_max"] < 10
    assert pipeline["diffusers_stage_s"] > 0 and np.isfinite(pipeline["ratio_to_diffusers"])
    assert "tiny-unclip:" in "\n".join(console_lines(table))
    folder = write_bench(table, tmp_path, TINY)  # the markdown has the whole-pipeline ratio and its range
    assert "## tiny-unclip" in (folder / "bench.md").read_text()


def test_toy_unclip_with_a_borrowed_if_stage_is_timed_stage_by_stage_without_a_diffusers_ratio():
    """toy-unclip upsamples with toy-cascaded's IF-style stage, which reads T5 states: each stage gets its own
    encoder's embeddings, and there is no UnCLIPPipeline to compare with."""
    table = bench_presets(["toy-unclip"], TINY_TWICE)
    rows = table.set_index("stage")
    assert list(rows.index) == [
        "text_encoder:clip",
        "text_encoder:t5:sr_text",
        "prior",
        "decoder",
        "super_resolution_1",
        "pipeline",
    ]
    stages = rows.loc[["prior", "decoder", "super_resolution_1"]]
    assert (stages["step_median_s"] > 0).all()
    assert "ratio_to_diffusers" not in table or table["ratio_to_diffusers"].isna().all()


def test_bench_flops_are_the_profiled_flops(tiny_table):
    preset = PRESETS.get("tiny-cascaded")
    cost = pipeline_cost(build_on_meta(preset))
    settings = preset_stage_settings(preset, preset.bench_sampler, TINY.num_inference_steps, TINY.guidance_scale)
    rows = tiny_table[tiny_table["preset"] == "tiny-cascaded"].set_index("stage")
    for stage_cost, stage_settings in zip(cost.stages, settings):
        expected = stage_cost.flops_per_step(stage_settings) * TINY.batch_size / 1e9
        assert rows.loc[stage_cost.stage, "gflops_per_step"] == pytest.approx(expected)
        row = rows.loc[stage_cost.stage]
        assert row["tflops_achieved"] == pytest.approx(expected / 1e3 / row["step_median_s"])


def test_write_bench_merges_into_the_device_folder(tiny_table, tmp_path):
    folder = write_bench(tiny_table, tmp_path, TINY)
    assert folder.parent == tmp_path and folder.name.startswith("cpu")
    again = write_bench(tiny_table, tmp_path, TINY)
    assert len(pd.read_parquet(again / "bench.parquet")) == len(tiny_table)
    text = (folder / "bench.md").read_text()
    assert "## tiny-latent" in text and "ratio" in text
    assert (folder / "manifest.json").is_file() and (folder / "bench.csv").is_file()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["tiny-latent", "--steps", "0"], "--steps must be at least 1"),
        (["tiny-latent", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["tiny-latent", "--attention", "flash"], "--attention must be one of"),
        (["no-such-preset"], "no-such-preset"),
        (["if-l"], "not public"),
    ],
)
def test_bad_bench_input_is_one_line_and_exit_2(arguments, message, capsys, tmp_path):
    assert main(["bench", *arguments, "--device", "cpu", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_half_precision_decode_that_overflows_falls_back_to_float32(tiny_table):
    vae = build_random(PRESETS.get("tiny-latent"), torch.device("cpu"), "fp32").stages[0].vae
    with torch.no_grad():  # representable in float16, but their sum overflows it; float32 is fine
        vae.decoder.conv_out.weight.mul_(1000)
        vae.decoder.conv_out.bias.fill_(65000)
    vae = vae.to(torch.float16)
    latents = torch.randn(1, vae.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    image, fallback = decode_latents(vae, latents)
    assert fallback and torch.isfinite(image).all() and image.dtype == torch.float32
    assert vae.dtype == torch.float16  # cast back for the next batch
    _, no_fallback = decode_latents(vae.to(torch.float32), latents)
    assert not no_fallback


@pytest.mark.slow
def test_sd15_bench_runs_end_to_end_on_cpu(tmp_path, capsys):
    """The README example: one guided SD 1.5 step is 1.6 TFLOP, seconds on two cores."""
    assert main(["bench", "sd15", "--device", "cpu", "--steps", "2", "--batch-size", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "x diffusers' pipelines" in out
    table = pd.read_parquet(next(tmp_path.iterdir()) / "bench.parquet")
    latent = table[table["stage"] == "latent"].iloc[0]
    assert latent["gflops_per_step"] == pytest.approx(1607, rel=0.01)  # SD 1.5 CFG step, batch 1, as profiled
    assert 0.5 < latent["ratio_to_diffusers"] < 2.0


@pytest.mark.gpu
def test_tiny_bench_on_cuda_uses_events_and_fused_attention(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    table = bench_presets(["tiny-latent"], BenchSettings(device="cuda", num_inference_steps=3, repeats=2))
    latent = table[table["stage"] == "latent"].iloc[0]
    assert latent["peak_memory_kind"] == "cuda_max_allocated" and latent["dtype"] == "fp32"
    assert "scaled_dot_product" in latent["attention_ops"]
    assert latent["peak_tflops"] > 10


def test_diffusers_baseline_takes_the_unets_dtype_not_the_text_encoders():
    """On CUDA, if-xl's bf16 T5 made diffusers' IF pipeline run an fp16 UNet on bf16 inputs; CPU stand-in."""
    pipeline = build_random(PRESETS.get("tiny-cascaded"), torch.device("cpu"), "fp32")
    encoder = pipeline.text_encoders["t5"]
    encoder.model.to(torch.bfloat16)  # the text encoder in another dtype than the UNet, as if-xl on a GPU
    embeds, negative = random_embeddings(pipeline, 1, seed=1)["t5"], random_embeddings(pipeline, 1, seed=2)["t5"]
    assert embeds.dtype == torch.bfloat16 and pipeline.stages[0].unet.dtype == torch.float32
    settings = preset_stage_settings(PRESETS.get("tiny-cascaded"), "ddim", 2, 7.5)[0]
    run = diffusers_stage(pipeline.stages[0], "pixel-base", settings, encoder.model)
    image = run(embeds, negative, [torch.Generator().manual_seed(0)], None, 2)
    assert image.shape[0] == 1 and torch.isfinite(image).all()


def test_a_bench_table_of_an_earlier_version_is_read_in_seconds():
    before = pd.DataFrame(
        {"step_ms_median": [15.0], "call_ms_q1": [2.0], "decode_ms": [40.0], "ratio_low": [0.9], "dtype": ["float16"]}
    )
    after = upgraded(before)
    assert list(after.columns) == ["step_median_s", "call_q1_s", "decode_s", "ratio_to_diffusers_min", "dtype"]
    assert after.iloc[0, :4].tolist() == pytest.approx([0.015, 0.002, 0.04, 0.9]) and after["dtype"].item() == "fp16"
    assert upgraded(after).equals(after)  # a table in today's columns is left as it is
