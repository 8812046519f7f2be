"""Timing the real architectures without their weights: ``suite bench``.

Speed does not depend on weight values, so every stage of a preset is built from its configs
(the public ones in ``suite/reference_configs``) with random weights, directly on the target
device and in the preset's dtypes, and timed through the suite's own ``run_stage``: the same
loop, classifier-free guidance and scheduler as a sweep. In the same run, diffusers' own
pipelines (``StableDiffusionPipeline``; ``IFPipeline``, ``IFSuperResolutionPipeline`` and
``StableDiffusionUpscalePipeline``) are built from the same modules and run at the same batch,
steps and guidance, so the suite's time is reported as a ratio to diffusers'.

Per stage: ms per step (median and interquartile range over the timed steps), images/s, the
achieved TFLOP/s from the FLOPs ``suite profile`` counts, utilisation against the device's peak
(a large matrix product in the same dtype, measured in the same run), peak memory, and for
compiled runs the compile time, kept apart from the timings.

Example:
    >>> table = bench_presets(["sd15"], BenchSettings(device="cpu", num_inference_steps=2))
    >>> table[["preset", "stage", "step_median_s", "ratio_to_diffusers"]]
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pandas as pd
import torch

from suite.analysis.bench.baseline import diffusers_stage
from suite.analysis.bench.summary import console_lines, merge_results, pipeline_row, stage_row, write_bench
from suite.analysis.bench.timing import (
    ATTENTION,
    BenchSettings,
    achieved_tflops,
    attention_backend,
    build_random,
    device_slug,
    measure_peak_tflops,
    processor_name,
    quartiles,
    random_embeddings,
    ratio_summary,
    stage_attention_ops,
    time_stage,
    time_text_encoders,
    time_unclip,
    utilisation,
)
from suite.model.devices import dtype_name, resolve_device
from suite.model.flops import pipeline_cost
from suite.model.presets import PRESETS
from suite.model.stages import apply_speed_options
from suite.model.timing import Clock
from suite.run.grid import preset_stage_settings

__all__ = [
    "ATTENTION",
    "BenchSettings",
    "achieved_tflops",
    "bench_preset",
    "bench_presets",
    "build_random",
    "console_lines",
    "diffusers_stage",
    "merge_results",
    "pipeline_row",
    "processor_name",
    "quartiles",
    "random_embeddings",
    "ratio_summary",
    "utilisation",
    "write_bench",
]


@torch.no_grad()
def bench_preset(name: str, bench: BenchSettings, peaks: dict[torch.dtype, float] | None = None) -> list[dict]:
    """Time one preset stage by stage (random weights, the suite's loop and diffusers' pipelines)."""
    preset = PRESETS.get(name)
    sampler = bench.sampler or preset.bench_sampler
    device = resolve_device(bench.device)
    clock = Clock(device)
    began = time.perf_counter()
    pipeline = build_random(preset, device, bench.dtype)
    build_seconds = time.perf_counter() - began
    cost = pipeline_cost(pipeline)
    dtype = pipeline.options.denoiser_dtype
    peaks = peaks if peaks is not None else {}
    if dtype not in peaks:
        peaks[dtype] = measure_peak_tflops(device, dtype)
    peak = peaks[dtype]
    shared = {
        "preset": name,
        "device": str(device),
        "device_name": device_slug(device),
        "dtype": dtype_name(dtype),
        "text_encoder_dtype": dtype_name(pipeline.options.text_encoder_dtype),
        "batch_size": bench.batch_size,
        "sampler": sampler,
        "num_inference_steps": bench.num_inference_steps,
        "guidance_scale": bench.guidance_scale,
        "compile": bench.compile,
        "channels_last": bench.channels_last,
        "attention": bench.attention,
        "peak_tflops": peak,
        "build_s": build_seconds,
    }
    settings = preset_stage_settings(preset, sampler, bench.num_inference_steps, bench.guidance_scale)
    batch = bench.batch_size
    with attention_backend(bench.attention):
        rows = [shared | row for row in time_text_encoders(pipeline, cost, batch, bench.repeats, clock, peak)]
        embeddings = random_embeddings(pipeline, batch, seed=1)
        negatives = random_embeddings(pipeline, batch, seed=2)
        whole = None
        if preset.backend == "unclip":  # diffusers runs it only whole: timed whole, in alternation with the suite
            stage_rows, whole = _unclip_rows(pipeline, cost, settings, embeddings, negatives, bench, clock, peak)
            rows += [shared | row for row in stage_rows]
        else:
            low_res = None
            for spec, stage, stage_cost, knobs in zip(preset.stages, pipeline.stages, cost.stages, settings):
                embeds, negative = embeddings[stage.text_encoder], negatives[stage.text_encoder]
                ops = stage_attention_ops(stage, embeds, low_res, device, knobs)
                apply_speed_options(stage, bench.compile, bench.channels_last)
                encoder_model = pipeline.text_encoders[stage.text_encoder].model
                runs, low_res = time_stage(
                    stage, spec.kind, knobs, embeds, negative, encoder_model, low_res, bench, clock
                )
                rows.append(shared | {"attention_ops": ops} | stage_row(stage, stage_cost, knobs, runs, batch, peak))
    rows.append(shared | pipeline_row(rows, whole))
    del pipeline
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _unclip_rows(pipeline, cost, settings, embeddings, negatives, bench: BenchSettings, clock: Clock, peak: float):
    """unCLIP's stage rows, and the suite's and diffusers' seconds per repeat for the whole pipeline (diffusers runs
    it only whole; the two alternate)."""
    for stage in pipeline.stages:
        apply_speed_options(stage, bench.compile, bench.channels_last)
    runs, diffusers_seconds, ops = time_unclip(pipeline, settings, embeddings, negatives, bench, clock)
    rows = [
        {"attention_ops": ops} | stage_row(stage, stage_cost, knobs, stage_runs, bench.batch_size, peak)
        for stage, stage_cost, knobs, stage_runs in zip(pipeline.stages, cost.stages, settings, runs)
    ]
    suite_seconds = [sum(parts) for parts in zip(*(stage_runs.suite_seconds for stage_runs in runs))]
    return rows, (suite_seconds, diffusers_seconds) if diffusers_seconds else None


def bench_presets(names: Sequence[str], bench: BenchSettings) -> pd.DataFrame:
    """Every preset in ``names`` under one device peak measurement; one row per text encoder, stage and pipeline."""
    peaks: dict[torch.dtype, float] = {}
    rows = []
    for name in names:
        rows.extend(bench_preset(name, bench, peaks))
    return pd.DataFrame(rows)
