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
    >>> table[["preset", "stage", "step_ms_median", "ratio_to_diffusers"]]
"""

from __future__ import annotations

import contextlib
import json
import platform
import re
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from suite.core.files import atomic_write_table, atomic_write_text
from suite.core.formatting import format_cell, markdown_table
from suite.model.backends import BACKENDS
from suite.model.devices import dtype_name, load_options, resolve_device
from suite.model.flops import PipelineCost, StageCost, pipeline_cost
from suite.model.pipeline import TextToImagePipeline
from suite.model.presets import PRESETS, Preset, materialise
from suite.model.samplers import consumes_learned_variance, make_scheduler
from suite.model.stages import Stage, StageSettings, apply_speed_options, compile_seconds, run_stage
from suite.model.timing import Clock, peak_memory, reset_peak_memory
from suite.run.folder import versions
from suite.run.grid import preset_stage_settings

TERA = 1e12
GB = 1e9
ATTENTION = ("sdpa", "math")
KEY_COLUMNS = (
    "preset",
    "stage",
    "dtype",
    "batch_size",
    "sampler",
    "num_inference_steps",
    "guidance_scale",
    "compile",
    "channels_last",
    "attention",
)


@dataclass(frozen=True)
class BenchSettings:
    device: str = "auto"
    dtype: str = "auto"  # auto: the preset's dtypes on accelerators, fp32 on CPU
    batch_size: int = 1
    num_inference_steps: int = 20  # timed steps per stage, after a warm-up of ``warmup_steps``
    guidance_scale: float = 7.5  # the first stage's; super-resolution stages keep their defaults
    sampler: str = "ddim"
    compile: bool = False
    channels_last: bool = False
    attention: str = "sdpa"  # "math": the reference kernel, for comparison
    repeats: int = 3  # timed runs of each stage, alternating suite and diffusers
    warmup_steps: int = 2
    baseline: bool = True  # also time diffusers' own pipelines


# -- arithmetic -------------------------------------------------------------------------------


def achieved_tflops(flops: float, seconds: float) -> float:
    """TFLOP/s of ``flops`` done in ``seconds``."""
    return flops / seconds / TERA if seconds > 0 else float("nan")


def utilisation(achieved: float, peak: float) -> float:
    """Fraction of the device's measured peak that ``achieved`` (both TFLOP/s) reaches."""
    return achieved / peak if peak > 0 else float("nan")


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """Median, first and third quartile (linear interpolation, as numpy's default)."""
    series = pd.Series(list(values), dtype=float)
    return float(series.median()), float(series.quantile(0.25)), float(series.quantile(0.75))


def ratio_summary(suite_seconds: Sequence[float], diffusers_seconds: Sequence[float]) -> dict[str, float]:
    """The suite's time over diffusers' from runs made in alternation: median over median, and the
    range of the per-pair ratios (how much one pair of runs can differ)."""
    pairs = [mine / theirs for mine, theirs in zip(suite_seconds, diffusers_seconds)]
    return {
        "ratio_to_diffusers": statistics.median(suite_seconds) / statistics.median(diffusers_seconds),
        "ratio_low": min(pairs),
        "ratio_high": max(pairs),
    }


# -- the device --------------------------------------------------------------------------------


def device_slug(device: torch.device) -> str:
    """A folder name for the hardware: the GPU's name, or ``cpu-`` and the processor's model."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{device.type}-{processor_name()}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def processor_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def measure_peak_tflops(device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 10) -> float:
    """The device's dense matrix-product rate in ``dtype``: the best of ``repeats`` square products.

    8192² on accelerators (big enough to saturate an H100), 1024² on CPUs.
    """
    size = size or (8192 if device.type == "cuda" else 1024)
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    clock = Clock(device)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        began = clock()
        a @ b
        best = min(best, clock() - began)
    return achieved_tflops(2 * size**3, best)


# -- building ----------------------------------------------------------------------------------


def build_random(preset: Preset, device: torch.device, dtype: str) -> TextToImagePipeline:
    """The preset's pipeline from its configs with random weights on ``device``: everything resident."""

    preset = materialise(preset).architecture_only()
    options = replace(load_options(preset, device, dtype), offload=False, random_weights=True)
    return BACKENDS.get(preset.backend).load(preset, options)


def random_embeddings(pipeline: TextToImagePipeline, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Each text encoder's output for random token ids (no tokenizer is needed to time an encoder)."""
    embeddings = {}
    for name, encoder in pipeline.text_encoders.items():
        embeddings[name] = _encode_ids(encoder, _random_ids(encoder, batch, seed))
    return embeddings


def _random_ids(encoder, batch: int, seed: int) -> torch.Tensor:
    model = encoder.model
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, encoder.max_length), generator=generator)
    return ids.to(model.device)


@torch.no_grad()
def _encode_ids(encoder, ids: torch.Tensor) -> torch.Tensor:
    mask = torch.ones_like(ids) if encoder.use_attention_mask else None
    return encoder.model(ids, attention_mask=mask)[0]


# -- the diffusers baseline -------------------------------------------------------------------


def diffusers_scheduler(sampler: str, config) -> Any:
    """The suite's scheduler for ``sampler``, made palatable to diffusers' IF pipelines.

    IF pipelines keep the UNet's variance channels whenever the scheduler's config says
    ``learned_range``, which a DDIM or DPM-Solver built from IF's config still says; record the
    truth so the pipeline splits them off as the suite does.
    """
    scheduler = make_scheduler(sampler, config)
    if not consumes_learned_variance(scheduler):
        scheduler.register_to_config(variance_type="fixed_small")
    return scheduler


def diffusers_stage(
    stage: Stage, kind: str, settings: StageSettings, encoder_model: torch.nn.Module
) -> Callable[..., torch.Tensor]:
    """A call of diffusers' own pipeline for one stage, built from the same modules.

    Returns ``run(prompt_embeds, negative_prompt_embeds, generators, low_res, steps)`` giving the
    stage's output in the form the next stage takes.
    """
    import diffusers

    scheduler = diffusers_scheduler(settings.sampler, stage.scheduler_config)
    common = {"safety_checker": None, "feature_extractor": None}
    if kind == "latent":
        pipe = diffusers.StableDiffusionPipeline(
            vae=stage.vae,
            text_encoder=None,  # embeddings are given; the pipeline then casts them to the UNet's dtype, as the suite does
            tokenizer=None,
            unet=stage.unet,
            scheduler=scheduler,
            requires_safety_checker=False,
            **common,
        )
    elif kind == "pixel-base":
        pipe = diffusers.IFPipeline(
            tokenizer=None,
            text_encoder=None,  # embeddings are given; the pipeline then casts them to the UNet's dtype, as the suite does
            unet=stage.unet,
            scheduler=scheduler,
            watermarker=None,
            requires_safety_checker=False,
            **common,
        )
    elif kind == "pixel-sr":
        pipe = diffusers.IFSuperResolutionPipeline(
            tokenizer=None,
            text_encoder=None,  # embeddings are given; the pipeline then casts them to the UNet's dtype, as the suite does
            unet=stage.unet,
            scheduler=scheduler,
            image_noising_scheduler=stage.conditioning.noising_scheduler,
            watermarker=None,
            requires_safety_checker=False,
            **common,
        )
    elif kind == "latent-sr":
        pipe = diffusers.StableDiffusionUpscalePipeline(
            vae=stage.vae,
            text_encoder=None,  # embeddings are given; the pipeline then casts them to the UNet's dtype, as the suite does
            tokenizer=None,
            unet=stage.unet,
            low_res_scheduler=stage.conditioning.noising_scheduler,
            scheduler=scheduler,
            watermarker=None,
            **common,
        )
    else:
        raise ValueError(f"no diffusers pipeline for a {kind!r} stage")
    pipe.set_progress_bar_config(disable=True)

    def run(prompt_embeds, negative_prompt_embeds, generators, low_res, steps: int) -> torch.Tensor:
        kwargs: dict[str, Any] = {
            "prompt_embeds": prompt_embeds,
            "negative_prompt_embeds": negative_prompt_embeds,
            "num_inference_steps": steps,
            "guidance_scale": settings.guidance_scale,
            "generator": generators,
            "output_type": "pt",
        }
        if kind == "pixel-sr":
            kwargs |= {"image": low_res, "noise_level": settings.noise_level}
        elif kind == "latent-sr":  # the x4 upscaler pipeline takes images in [0, 1] and normalises them itself
            kwargs |= {"image": low_res / 2 + 0.5, "noise_level": settings.noise_level}
        return pipe(**kwargs).images

    return run


# -- timing ------------------------------------------------------------------------------------


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """``sdpa``: PyTorch picks its fastest fused kernel; ``math``: only the unfused reference kernel."""
    if name == "sdpa":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


def attention_ops(function: Callable[[], Any]) -> str:
    """The attention operators one call dispatches to (e.g. ``aten._scaled_dot_product_flash_attention``)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: set[str] = set()

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func.overloadpacket)
            if "attention" in name or "scaled_dot" in name:
                seen.add(name)
            return func(*args, **(kwargs or {}))

    with Recorder():
        function()
    return ", ".join(sorted(seen))


def _generators(batch: int, seed: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + index) for index in range(batch)]


@dataclass
class _StageRuns:
    suite_seconds: list[float]
    diffusers_seconds: list[float]
    step_seconds: list[float]
    decode_seconds: list[float]
    peak_memory_bytes: int
    memory_kind: str
    compile_s: float
    recompile_s: float
    decode_fp32_fallbacks: int


def _time_stage(
    stage: Stage,
    kind: str,
    settings: StageSettings,
    embeds: torch.Tensor,
    negative: torch.Tensor,
    encoder_model: torch.nn.Module,
    low_res: torch.Tensor | None,
    bench: BenchSettings,
    clock: Clock,
) -> tuple[_StageRuns, torch.Tensor]:
    device = clock.device
    batch = embeds.shape[0]
    baseline = diffusers_stage(stage, kind, settings, encoder_model) if bench.baseline else None

    def suite_run(steps: int):
        return run_stage(
            stage,
            replace(settings, num_inference_steps=steps),
            embeds,
            negative,
            _generators(batch, 0),
            clock,
            low_res,
            device=device,
        )

    def diffusers_run(steps: int):
        return baseline(embeds, negative, _generators(batch, 0), low_res, steps)

    compiled_before = compile_seconds()
    suite_run(bench.warmup_steps)
    if baseline is not None:
        diffusers_run(bench.warmup_steps)
    compiled = compile_seconds()

    runs = _StageRuns([], [], [], [], 0, "", compiled - compiled_before, 0.0, 0)
    reset_peak_memory(device)
    output = None
    for _ in range(bench.repeats):
        began = clock()
        output, timing = suite_run(settings.num_inference_steps)
        runs.suite_seconds.append(clock() - began)
        runs.step_seconds.extend(timing.step_seconds)
        runs.decode_seconds.append(timing.decode_seconds)
        runs.decode_fp32_fallbacks += timing.decode_fp32_fallback
        if baseline is not None:
            began = clock()
            diffusers_run(settings.num_inference_steps)
            runs.diffusers_seconds.append(clock() - began)
    runs.peak_memory_bytes, runs.memory_kind = peak_memory(device)
    runs.recompile_s = compile_seconds() - compiled
    return runs, output.clamp(-1, 1)


def _stage_row(
    stage: Stage, stage_cost: StageCost, settings: StageSettings, runs: _StageRuns, batch: int, peak: float
) -> dict[str, Any]:
    median, q1, q3 = quartiles(runs.step_seconds)
    step_flops = stage_cost.flops_per_step(settings) * batch
    decode = statistics.median(runs.decode_seconds)
    stage_seconds = statistics.median(runs.suite_seconds)
    achieved = achieved_tflops(step_flops, median)
    row = {
        "stage": stage.name,
        "stage_guidance_scale": settings.guidance_scale,
        "steps_timed": len(runs.step_seconds),
        "step_ms_median": median * 1e3,
        "step_ms_q1": q1 * 1e3,
        "step_ms_q3": q3 * 1e3,
        "steps_per_s": 1 / median,
        "decode_ms": decode * 1e3,
        "stage_s": stage_seconds,
        "images_per_s": batch / stage_seconds,
        "gflops_per_step": step_flops / 1e9,
        "tflops_achieved": achieved,
        "utilisation": utilisation(achieved, peak),
        "decode_tflops_achieved": achieved_tflops(stage_cost.decode_flops * batch, decode) if decode else float("nan"),
        "peak_memory_gb": runs.peak_memory_bytes / GB,
        "peak_memory_kind": runs.memory_kind,
        "compile_s": runs.compile_s,
        "recompile_during_timing_s": runs.recompile_s,
        "decode_fp32_fallbacks": runs.decode_fp32_fallbacks,
    }
    if runs.diffusers_seconds:
        row["diffusers_stage_s"] = statistics.median(runs.diffusers_seconds)
        row |= ratio_summary(runs.suite_seconds, runs.diffusers_seconds)
    return row


def _time_text_encoders(
    pipeline: TextToImagePipeline, cost: PipelineCost, batch: int, repeats: int, clock: Clock, peak: float
) -> list[dict[str, Any]]:
    rows = []
    for name, encoder in pipeline.text_encoders.items():
        ids = _random_ids(encoder, batch, seed=1)
        _encode_ids(encoder, ids)
        seconds = []
        for _ in range(max(repeats, 3)):
            began = clock()
            _encode_ids(encoder, ids)
            seconds.append(clock() - began)
        median, q1, q3 = quartiles(seconds)
        achieved = achieved_tflops(cost.text_encoder_flops[name] * batch, median)
        rows.append(
            {
                "stage": f"text_encoder:{name}",
                "call_ms_median": median * 1e3,
                "call_ms_q1": q1 * 1e3,
                "call_ms_q3": q3 * 1e3,
                "gflops_per_call": cost.text_encoder_flops[name] * batch / 1e9,
                "tflops_achieved": achieved,
                "utilisation": utilisation(achieved, peak),
            }
        )
    return rows


@torch.no_grad()
def bench_preset(name: str, bench: BenchSettings, peaks: dict[torch.dtype, float] | None = None) -> list[dict]:
    """Time one preset stage by stage (random weights, the suite's loop and diffusers' pipelines)."""
    preset = PRESETS.get(name)
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
        "sampler": bench.sampler,
        "num_inference_steps": bench.num_inference_steps,
        "guidance_scale": bench.guidance_scale,
        "compile": bench.compile,
        "channels_last": bench.channels_last,
        "attention": bench.attention,
        "peak_tflops": peak,
        "build_s": build_seconds,
    }
    settings = preset_stage_settings(preset, bench.sampler, bench.num_inference_steps, bench.guidance_scale)
    batch = bench.batch_size
    with attention_backend(bench.attention):
        rows = [shared | row for row in _time_text_encoders(pipeline, cost, batch, bench.repeats, clock, peak)]
        embeddings = random_embeddings(pipeline, batch, seed=1)
        negatives = random_embeddings(pipeline, batch, seed=2)
        low_res = None
        for spec, stage, stage_cost, stage_settings in zip(preset.stages, pipeline.stages, cost.stages, settings):
            embeds, negative = embeddings[stage.text_encoder], negatives[stage.text_encoder]
            ops = _stage_attention_ops(stage, embeds, low_res, device)
            apply_speed_options(stage, bench.compile, bench.channels_last)
            encoder_model = pipeline.text_encoders[stage.text_encoder].model
            runs, low_res = _time_stage(
                stage, spec.kind, stage_settings, embeds, negative, encoder_model, low_res, bench, clock
            )
            rows.append(
                shared | {"attention_ops": ops} | _stage_row(stage, stage_cost, stage_settings, runs, batch, peak)
            )
    rows.append(shared | _pipeline_row(rows))
    del pipeline
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _stage_attention_ops(stage: Stage, embeds: torch.Tensor, low_res: torch.Tensor | None, device) -> str:
    """Which attention kernel one guided evaluation of the stage's UNet dispatches to."""
    sample = torch.zeros(2, stage.sample_channels, *stage.sample_size(low_res), device=device, dtype=stage.unet.dtype)
    kwargs = {}
    if stage.conditioning is not None:
        sample = torch.cat([sample, torch.zeros_like(sample[:, :3])], dim=1)
        kwargs["class_labels"] = torch.zeros(2, dtype=torch.long, device=device)
    context = torch.cat([embeds[:1], embeds[:1]]).to(stage.unet.dtype)
    return attention_ops(lambda: stage.unet(sample, torch.tensor(500, device=device), context, **kwargs))


def _pipeline_row(rows: list[dict]) -> dict[str, Any]:
    """Whole-image totals: text encoding plus every stage; the ratio covers the stages diffusers ran."""
    stages = [row for row in rows if "stage_s" in row]
    text = sum(row["call_ms_median"] for row in rows if "call_ms_median" in row) / 1e3
    seconds = text + sum(row["stage_s"] for row in stages)
    batch = stages[0]["batch_size"]
    row = {"stage": "pipeline", "stage_s": seconds, "images_per_s": batch / seconds}
    if all("diffusers_stage_s" in row for row in stages):
        suite = sum(row["stage_s"] for row in stages)
        diffusers = sum(row["diffusers_stage_s"] for row in stages)
        row |= {"diffusers_stage_s": diffusers, "ratio_to_diffusers": suite / diffusers}
    return row


def bench_presets(names: Sequence[str], bench: BenchSettings) -> pd.DataFrame:
    """Every preset in ``names`` under one device peak measurement; one row per text encoder, stage and pipeline."""
    peaks: dict[torch.dtype, float] = {}
    rows = []
    for name in names:
        rows.extend(bench_preset(name, bench, peaks))
    return pd.DataFrame(rows)


# -- results -----------------------------------------------------------------------------------


def merge_results(old: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    """``new`` rows replace old rows with the same key (preset, stage and every setting); others stay."""
    if old is None or old.empty:
        return new.reset_index(drop=True)
    keys = [column for column in KEY_COLUMNS if column in old and column in new]
    new_keys = set(new[keys].astype(str).itertuples(index=False, name=None))
    kept = old[[key not in new_keys for key in old[keys].astype(str).itertuples(index=False, name=None)]]
    return pd.concat([kept, new], ignore_index=True)


def write_bench(table: pd.DataFrame, out: Path, bench: BenchSettings) -> Path:
    """Merge into ``out/<device>/bench.{parquet,csv,md}`` with a manifest; return that folder."""

    folder = out / table["device_name"].iloc[0]
    folder.mkdir(parents=True, exist_ok=True)
    previous = pd.read_parquet(folder / "bench.parquet") if (folder / "bench.parquet").is_file() else None
    merged = merge_results(previous, table)
    atomic_write_table(merged, folder / "bench")
    atomic_write_text(folder / "bench.md", bench_markdown(merged))
    device = torch.device(table["device"].iloc[0])
    manifest = {
        "device": table["device_name"].iloc[0],
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "versions": versions(),
        "last_settings": asdict(bench),
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "weights": "random, built from the public configs (speed does not depend on weight values)",
    }
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return folder


def bench_markdown(table: pd.DataFrame) -> str:
    """One table per preset: per stage ms/step (median [IQR]), images/s, TFLOP/s, utilisation, memory, ratio."""

    lines = [f"# Bench: {table['device_name'].iloc[0]}", ""]
    lines.append(
        "Random weights built from the public configs; the suite's `run_stage` timed against diffusers' own "
        "pipelines built from the same modules, in alternation. ms/step: median [IQR] over the timed steps; "
        "ratio: median suite time over median diffusers time [range of per-pair ratios]; utilisation: achieved "
        "TFLOP/s over a dense matrix product in the same dtype, measured in the same run."
    )
    for keys, group in table.groupby(["preset", "dtype", "batch_size", "compile", "channels_last", "attention"]):
        preset, dtype, batch, compiled, channels_last, attention = keys
        first = group.iloc[0]
        lines += [
            "",
            f"## {preset}: {dtype}, batch {batch}, {first['sampler']} {first['num_inference_steps']} steps, "
            f"guidance {first['guidance_scale']:g}, compile {compiled}, channels-last {channels_last}, "
            f"attention {attention}, peak {first['peak_tflops']:.1f} TFLOP/s",
            "",
        ]
        body = []
        for _, row in group.iterrows():
            if row["stage"].startswith("text_encoder"):
                timing = f"{format_cell(row['call_ms_median'])} [{format_cell(row['call_ms_q1'])}, {format_cell(row['call_ms_q3'])}] per call"
            elif row["stage"] == "pipeline":
                timing = ""
            else:
                timing = f"{format_cell(row['step_ms_median'])} [{format_cell(row['step_ms_q1'])}, {format_cell(row['step_ms_q3'])}]"
            ratio = format_cell(row.get("ratio_to_diffusers"), ".3f")
            if ratio and row.get("ratio_low") == row.get("ratio_low"):
                ratio += f" [{format_cell(row['ratio_low'], '.3f')}, {format_cell(row['ratio_high'], '.3f')}]"
            body.append(
                [
                    row["stage"],
                    timing,
                    format_cell(row.get("decode_ms")),
                    format_cell(row.get("images_per_s"), ".3f"),
                    format_cell(row.get("tflops_achieved")),
                    format_cell(100 * row["utilisation"] if row.get("utilisation") == row.get("utilisation") else None),
                    format_cell(row.get("peak_memory_gb"), ".2f"),
                    format_cell(row.get("compile_s")),
                    ratio,
                ]
            )
        header = ["stage", "ms/step", "decode ms", "img/s", "TFLOP/s", "util %", "peak GB", "compile s", "ratio"]
        lines.append(markdown_table(pd.DataFrame(body, columns=header)))
    return "\n".join(lines) + "\n"
