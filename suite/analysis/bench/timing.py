"""How a preset's stages are timed: random-weight builds, the device's peak, and the suite's loop against diffusers'."""

from __future__ import annotations

import contextlib
import platform
import re
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

from suite.analysis.bench.baseline import diffusers_stage, diffusers_unclip
from suite.model.backends import BACKENDS
from suite.model.denoise import GuidedUNet, TextMasks
from suite.model.devices import load_options
from suite.model.flops import PipelineCost
from suite.model.pipeline import TextToImagePipeline
from suite.model.presets import Preset, materialise
from suite.model.samplers import SAMPLERS
from suite.model.stages import Stage, StageSettings, StageTiming, compile_seconds, micro_conditions
from suite.model.timing import Clock, peak_memory, reset_peak_memory
from suite.model.unclip import SuperResolutionStage

TERA = 1e12
ATTENTION = ("sdpa", "math")


@dataclass(frozen=True)
class BenchSettings:
    device: str = "auto"
    dtype: str = "auto"  # auto: the preset's dtypes on accelerators, fp32 on CPU
    batch_size: int = 1
    num_inference_steps: int = 20  # timed steps per stage, after a warm-up of ``warmup_steps``
    guidance_scale: float = 7.5  # every stage whose preset fixes none; the others keep their defaults
    sampler: str | None = None  # None: each preset's own (``Preset.bench_sampler``)
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
        "ratio_to_diffusers_min": min(pairs),
        "ratio_to_diffusers_max": max(pairs),
    }


# -- the device -------------------------------------------------------------------------------


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


# -- building ---------------------------------------------------------------------------------


def build_random(preset: Preset, device: torch.device, dtype: str) -> TextToImagePipeline:
    """The preset's pipeline from its configs with random weights on ``device``: everything resident."""

    preset = materialise(preset).without_weights()
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
def _encode_ids(encoder, ids: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    mask = torch.ones_like(ids) if encoder.use_attention_mask else None
    output = encoder.model(ids, attention_mask=mask)
    return (output.last_hidden_state, output.text_embeds) if encoder.pooled else output[0]


# -- timing -----------------------------------------------------------------------------------


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """``sdpa``: PyTorch picks its fastest fused kernel; ``math``: only the unfused reference kernel."""
    if name == "sdpa":
        yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield


def attention_ops(function: Callable[[], Any]) -> str:
    """The attention operators one call dispatches to (e.g. ``aten._scaled_dot_product_flash_attention``)."""
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


def stage_attention_ops(
    stage: Stage, embeds: torch.Tensor, low_res: torch.Tensor | None, device, settings: StageSettings
) -> str:
    """Which attention kernel one guided evaluation of the stage's UNet dispatches to (unCLIP's stages are timed
    whole by ``time_unclip``, which records the kernels of its warm-up pass)."""
    size = stage.sample_size(low_res)
    sample = torch.zeros(1, stage.sample_channels, *size, device=device, dtype=stage.unet.dtype)
    conditioning = labels = None
    if stage.conditioning is not None:
        conditioning = torch.zeros(1, 3, *size, device=device, dtype=stage.unet.dtype)
        labels = torch.zeros(1, dtype=torch.long, device=device)
    context = embeds[:1].to(stage.unet.dtype)
    extra = micro_conditions(stage, size, 1, stage.unet.dtype, device) if stage.transformer else None
    guided = GuidedUNet(stage.unet, context, context, 2.0, conditioning, labels, stage.transformer, None, extra)
    return attention_ops(lambda: guided(sample, torch.tensor(500, device=device)))


def _generators(batch: int, seed: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + index) for index in range(batch)]


@dataclass
class StageRuns:
    suite_seconds: list[float]
    diffusers_seconds: list[float]
    step_seconds: list[float]
    decode_seconds: list[float]
    peak_memory_bytes: int
    memory_kind: str
    compile_s: float
    recompile_s: float
    decode_fp32_fallbacks: int


def time_stage(
    stage: Stage,
    kind: str,
    settings: StageSettings,
    embeds: torch.Tensor,
    negative: torch.Tensor,
    encoder_model: torch.nn.Module,
    low_res: torch.Tensor | None,
    bench: BenchSettings,
    clock: Clock,
) -> tuple[StageRuns, torch.Tensor]:
    device = clock.device
    batch = embeds.shape[0]
    baseline = diffusers_stage(stage, kind, settings, encoder_model) if bench.baseline else None

    ones = torch.ones(embeds.shape[:2], dtype=torch.long)  # the random token ids are all real tokens
    masks = TextMasks(ones, ones) if stage.reads_text_mask else None

    def suite_run(steps: int):
        return stage.run(
            replace(settings, num_inference_steps=steps),
            embeds,
            negative,
            _generators(batch, 0),
            clock,
            low_res,
            device=device,
            masks=masks,
        )

    def diffusers_run(steps: int):
        return baseline(embeds, negative, _generators(batch, 0), low_res, steps)

    compiled_before = compile_seconds()
    warmup = max(bench.warmup_steps, SAMPLERS.get(settings.sampler).min_steps)
    suite_run(warmup)
    if baseline is not None:
        diffusers_run(warmup)
    compiled = compile_seconds()

    runs = StageRuns([], [], [], [], 0, "", compiled - compiled_before, 0.0, 0)
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
    return runs, output.clamp(-1, 1) if output.dim() == 4 else output  # unCLIP's prior gives an embedding


def time_unclip(
    pipeline: TextToImagePipeline,
    settings: Sequence[StageSettings],
    embeddings: dict[str, Any],
    negatives: dict[str, Any],
    bench: BenchSettings,
    clock: Clock,
) -> tuple[list[StageRuns], list[float], str]:
    """unCLIP, whose diffusers pipeline runs only whole: each repeat runs the suite's stages one after another (each
    timed, one set of generators through all three, as a sweep does), then diffusers' ``UnCLIPPipeline`` at the same
    stage settings, so the two alternate as the other families' stages do. Returns each stage's runs and diffusers'
    seconds per repeat (none without a baseline, with a sampler ``UnCLIPPipeline`` cannot step, or for a preset whose
    upsampling is not unCLIP's own, as toy-unclip's borrowed IF-style stage), and the attention kernels the warm-up
    pass dispatched to. ``embeddings``/``negatives``: each text encoder's, by name; each stage reads its own.

    Left in diffusers' time: its one CLIP encode of the empty negative prompt per call, and its conversion of the
    images to numpy; left out of the suite's: nothing between stages.
    """
    device = clock.device
    embeds = embeddings[pipeline.stages[0].text_encoder]
    batch = embeds[0].shape[0]
    karlo_shaped = isinstance(pipeline.stages[-1], SuperResolutionStage)
    whole = settings[0].sampler == "unclip" and bench.baseline and karlo_shaped
    run = diffusers_unclip(pipeline, settings) if whole else None
    fewest = max(SAMPLERS.get(knobs.sampler).min_steps for knobs in settings)

    def suite_pass(steps: int | None) -> list[tuple[float, StageTiming]]:
        output, generators, timed = None, _generators(batch, 0), []
        for stage, knobs in zip(pipeline.stages, settings):
            knobs = knobs if steps is None else replace(knobs, num_inference_steps=steps)
            text, negative = embeddings[stage.text_encoder], negatives[stage.text_encoder]
            states = text[0] if isinstance(text, tuple) else text  # unCLIP's CLIP gives (states, pooled)
            ones = torch.ones(states.shape[:2], dtype=torch.long)
            masks = TextMasks(ones, ones) if stage.reads_text_mask else None
            began = clock()
            output, timing = stage.run(knobs, text, negative, generators, clock, output, device=device, masks=masks)
            timed.append((clock() - began, timing))
        return timed

    compiled_before = compile_seconds()
    warmup = max(bench.warmup_steps, fewest)
    ops = attention_ops(lambda: suite_pass(warmup))
    if run is not None:
        run(embeds, _generators(batch, 0), warmup)
    compiled = compile_seconds()
    runs = [StageRuns([], [], [], [], 0, "", compiled - compiled_before, 0.0, 0) for _ in pipeline.stages]
    diffusers_seconds = []
    reset_peak_memory(device)
    for _ in range(bench.repeats):
        for stage_runs, (seconds, timing) in zip(runs, suite_pass(None)):
            stage_runs.suite_seconds.append(seconds)
            stage_runs.step_seconds.extend(timing.step_seconds)
            stage_runs.decode_seconds.append(timing.decode_seconds)
        if run is not None:
            began = clock()
            run(embeds, _generators(batch, 0), None)
            diffusers_seconds.append(clock() - began)
    memory = peak_memory(device)
    for stage_runs in runs:
        stage_runs.peak_memory_bytes, stage_runs.memory_kind = memory
        stage_runs.recompile_s = compile_seconds() - compiled
    return runs, diffusers_seconds, ops


def time_text_encoders(
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
                "call_median_s": median,
                "call_q1_s": q1,
                "call_q3_s": q3,
                "gflops_per_call": cost.text_encoder_flops[name] * batch / 1e9,
                "tflops_achieved": achieved,
                "utilisation": utilisation(achieved, peak),
            }
        )
    return rows
