"""Running a sweep: load each preset once, encode each prompt once, generate every work item, resumably."""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from suite.core.files import atomic_write_bytes, atomic_write_table, sha256_bytes
from suite.model.backends import BACKENDS
from suite.model.devices import dtype_name, load_options
from suite.model.loading import describe_location
from suite.model.pipeline import TextToImagePipeline
from suite.model.presets import Preset
from suite.model.stages import StageTiming, apply_speed_options, compile_seconds
from suite.model.text import NEGATIVE_PROMPT
from suite.model.timing import Clock, peak_memory, reset_peak_memory
from suite.run.config import ResolvedSweep
from suite.run.folder import SAMPLES, collect_samples, item_path, stage_record
from suite.run.grid import WorkItem, expand, shard
from suite.run.options import RunOptions
from suite.run.preflight import check_generation
from suite.run.resume import Environment, lease, open_run, release, verify_items


@dataclass(frozen=True)
class RunSummary:
    run: Path
    items_total: int
    items_this_shard: int
    items_generated: int
    images_generated: int
    complete: bool
    repaired: dict[str, str] = field(default_factory=dict)  # item id -> why its files could not be trusted
    items_held_elsewhere: int = 0  # leased by another live process on this run folder
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds: load (checks, folder, models), generate


SEED_RULE = {
    "rule": "sha256(f'{sweep_seed}/{prompt_index}/{seed_index}')[:8] & (2**63-1)",
    "generator": "torch.Generator('cpu'), one per image",
}


def run_sweep(resolved: ResolvedSweep, options: RunOptions, hooks: tuple = ()) -> RunSummary:
    """Generate every image of this shard's work items that the run folder does not hold yet.

    Everything the run depends on is checked first (``preflight``); the folder is then opened or
    resumed (``resume.open_run``), finished items are verified against their recorded hashes and
    damaged ones regenerated, and each item is leased before it is generated.

    Args:
        resolved: the validated sweep with its prompts.
        options: output folder, device, dtype, shard and local model folders.
        hooks: per-step hooks passed to every denoising loop.
    Returns:
        What was done; ``complete`` once every shard's items exist and samples.parquet is written.
    Example:
        >>> run_sweep(load_sweep(Path("experiments/tiny.yaml")), RunOptions(Path("results/tiny")))
    """
    started = time.perf_counter()
    loading = 0.0  # checks, the run folder and model loading; the rest of the wall time is generation
    device, presets = check_generation(resolved, options)
    items = expand(resolved)
    mine = shard(items, options.rank, options.world_size)

    run = options.out
    environment = Environment(device.type, _dtypes(presets, device, options), _model_sources(presets))
    open_run(run, resolved, device, environment, {"sweep_seed": resolved.sweep.seed, **SEED_RULE})
    finished, damaged = verify_items(run, mine)
    for item_id in damaged:
        item_path(run, item_id).unlink(missing_ok=True)

    todo = [item for item in mine if item.id not in finished]
    loading += time.perf_counter() - started
    progress = tqdm(
        total=sum(len(item.images) for item in mine),
        initial=sum(len(item.images) for item in mine if item.id in finished),
        unit="img",
        disable=not options.progress,
        desc=resolved.sweep.name,
    )
    generated, held_elsewhere = [], 0
    for preset_name, members in itertools.groupby(todo, key=lambda item: item.preset):
        group, pipeline, clock = list(members), None, Clock(device)
        for item in group:
            if not lease(run, item.id):
                held_elsewhere += 1
                continue
            if item_path(run, item.id).exists():  # finished by another process since the list was made
                release(run, item.id)
                continue
            try:
                if pipeline is None:
                    load_started = time.perf_counter()
                    pipeline = _load(presets[preset_name], device, options, group, resolved, clock)
                    loading += time.perf_counter() - load_started
                rows = generate_item(pipeline, item, run, clock, hooks)
                atomic_write_table(pd.DataFrame(rows), item_path(run, item.id).with_suffix(""), csv=False)
            finally:
                release(run, item.id)
            generated.append(len(rows))
            progress.update(len(rows))
        del pipeline
    progress.close()

    samples = collect_samples(run, [item.id for item in items], max(len(item.stages) for item in items))
    if samples is not None:
        atomic_write_table(samples, run / SAMPLES)
    phases = {"load": loading, "generate": time.perf_counter() - started - loading}
    return RunSummary(
        run, len(items), len(mine), len(generated), sum(generated), samples is not None, damaged, held_elsewhere, phases
    )


def _load(
    preset: Preset,
    device: torch.device,
    options: RunOptions,
    group: list[WorkItem],
    resolved: ResolvedSweep,
    clock: Clock,
) -> TextToImagePipeline:
    """Load a preset, warm it up at the batch shape, and encode every prompt its items need, once."""
    pipeline = BACKENDS.get(preset.backend).load(preset, load_options(preset, device, options.dtype))
    for stage in pipeline.stages:
        apply_speed_options(stage, options.compile, options.channels_last)
    compiled = compile_seconds()
    _warm_up(pipeline, group[0], clock)
    pipeline.warmup_compile_seconds = compile_seconds() - compiled
    needed = sorted({image.prompt for item in group for image in item.images})
    pipeline.encode(needed, list(resolved.prompt_texts), clock)
    return pipeline


def load_pipelines(
    resolved: ResolvedSweep, options: RunOptions
) -> Iterator[tuple[TextToImagePipeline, list[WorkItem]]]:
    """Each preset of a sweep loaded, warmed up and with its prompts encoded, with its work items, one at a time.

    For experiments that sample a sweep's grid with their own step hooks (x0 predictions, attention maps)
    rather than through ``run_sweep``: ``pipeline.generate(prompts, item.stages, image_generators(item, ...))``
    makes exactly the images the sweep would.
    """
    device, presets = check_generation(resolved, options)
    for preset_name, members in itertools.groupby(expand(resolved), key=lambda item: item.preset):
        group = list(members)
        pipeline = _load(presets[preset_name], device, options, group, resolved, Clock(device))
        yield pipeline, group
        del pipeline


def _dtypes(presets: dict[str, Preset], device: torch.device, run_options: RunOptions) -> dict[str, Any]:
    """Each preset's dtypes and offload, and the speed options (recorded; they do not block a resume)."""
    dtypes = {}
    for name, preset in presets.items():
        options = load_options(preset, device, run_options.dtype)
        dtypes[name] = {
            "denoiser": dtype_name(options.denoiser_dtype),
            "text_encoder": dtype_name(options.text_encoder_dtype),
            "offload": options.offload,
            "compile": run_options.compile,
            "channels_last": run_options.channels_last,
        }
    return dtypes


def _model_sources(presets: dict[str, Preset]) -> dict[str, Any]:
    sources = {}
    for name, preset in presets.items():
        locations = preset.source_paths()
        sources[name] = {
            "backend": preset.backend,
            "stages": [spec.name for spec in preset.stages],
            "local_dir": str(preset.local_dir.resolve()) if preset.local_dir is not None else None,
            "sources": {key: describe_location(value) for key, value in locations.items()},
        }
    return sources


def _warm_up(pipeline: TextToImagePipeline, item: WorkItem, clock: Clock) -> None:
    """One short untimed generation at the item's batch shape, so timings exclude one-off costs."""
    pipeline.encode([], [], clock)
    settings = [replace(stage, num_inference_steps=min(2, stage.num_inference_steps)) for stage in item.stages]
    batch = len(item.images)
    generators = [torch.Generator().manual_seed(0) for _ in range(batch)]
    pipeline.generate([NEGATIVE_PROMPT] * batch, settings, generators, clock)


def image_relative_path(item: WorkItem, prompt_index: int, seed_index: int) -> Path:
    point = f"steps{item.num_inference_steps}_guidance{item.guidance_scale:g}"
    return Path("images") / item.preset / item.sampler / point / f"p{prompt_index:04d}_s{seed_index:02d}.png"


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[0,1] NCHW float (CPU) -> N x H x W x 3 uint8, quantised by rounding as diffusers' numpy_to_pil does."""
    return (images.float().permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def to_png(image: torch.Tensor) -> bytes:
    """[0,1] CHW float -> PNG bytes (``to_uint8``)."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image[None])[0]).save(buffer, format="PNG")
    return buffer.getvalue()


OUT_OF_MEMORY = (torch.OutOfMemoryError,)  # torch.cuda.OutOfMemoryError is a subclass


@dataclass
class Generated:
    """One item's images and how they were made: the batch that fitted, retries, and per-image status."""

    images: torch.Tensor
    timings: list[StageTiming]
    batch_size_used: int
    oom_retries: int
    status: list[str]  # per image: "ok", "fp32_retry" (regenerated in float32) or "non_finite" (no PNG)


def image_generators(item: WorkItem, indices: list[int]) -> list[torch.Generator]:
    """Fresh per-image generators: an image's noise depends on its seed alone, never on a failed attempt."""
    return [torch.Generator().manual_seed(item.images[index].seed) for index in indices]


def _merge_timings(parts: list[list[StageTiming]]) -> list[StageTiming]:
    """Stage timings of sub-batches as one: steps are pooled (times add up), decodes add up."""
    if len(parts) == 1:
        return parts[0]
    return [
        StageTiming(
            stage_parts[0].stage,
            stage_parts[0].model_evaluations,
            sum(timing.decode_seconds for timing in stage_parts),
            tuple(step for timing in stage_parts for step in timing.step_seconds),
            any(timing.decode_fp32_fallback for timing in stage_parts),
        )
        for stage_parts in zip(*parts)
    ]


def _generate_in_batches(
    pipeline: TextToImagePipeline, item: WorkItem, indices: list[int], clock: Clock, hooks: tuple
) -> tuple[torch.Tensor, list[StageTiming], int, int]:
    """Generate the images ``indices`` of ``item``; on out-of-memory halve the batch and start over, down to 1."""
    chunk, retries = len(indices), 0
    while True:
        try:
            images, timings = [], []
            for start in range(0, len(indices), chunk):
                part = indices[start : start + chunk]
                prompts = [item.images[index].prompt for index in part]
                batch_images, batch_timings = pipeline.generate(
                    prompts, item.stages, image_generators(item, part), clock, hooks
                )
                images.append(batch_images)
                timings.append(batch_timings)
            return torch.cat(images), _merge_timings(timings), chunk, retries
        except OUT_OF_MEMORY:  # noqa: PERF203 (a retry loop: the exception is the point)
            if chunk == 1:
                raise
            chunk, retries = max(1, chunk // 2), retries + 1
            pipeline.free_memory()


def generate_resilient(pipeline: TextToImagePipeline, item: WorkItem, clock: Clock, hooks: tuple = ()) -> Generated:
    """Generate an item, surviving out-of-memory (smaller batches) and non-finite images (once more in float32).

    Per-image generators make both retries exact: an image is the same whatever batch it is made in.
    An image still non-finite in float32 is reported as ``non_finite``: it gets no PNG and no metric.
    """
    everything = list(range(len(item.images)))
    images, timings, batch_used, retries = _generate_in_batches(pipeline, item, everything, clock, hooks)
    status = ["ok"] * len(everything)
    bad = [index for index in everything if not torch.isfinite(images[index]).all()]
    if bad and pipeline.options.denoiser_dtype != torch.float32:
        with pipeline.in_float32():
            again, _, _, more = _generate_in_batches(pipeline, item, bad, clock, hooks)
        retries += more
        for position, index in enumerate(bad):
            images[index] = again[position]
            status[index] = "fp32_retry"
    for index in everything:
        if not torch.isfinite(images[index]).all():
            status[index] = "non_finite"
    return Generated(images, timings, batch_used, retries, status)


def generate_item(
    pipeline: TextToImagePipeline, item: WorkItem, run: Path, clock: Clock, hooks: tuple = ()
) -> list[dict[str, Any]]:
    """Generate one work item's images, write them as PNG, and return one row per image."""
    device = pipeline.options.device
    reset_peak_memory(device)
    compiled = compile_seconds()
    began = clock()
    generated = generate_resilient(pipeline, item, clock, hooks)
    images, timings = generated.images, generated.timings
    compile_s = compile_seconds() - compiled  # a new batch shape compiles again: kept out of the timings
    generate_seconds = clock() - began - compile_s
    compile_s += pipeline.warmup_compile_seconds  # the first item after loading carries the warm-up's compile
    pipeline.warmup_compile_seconds = 0.0
    memory, memory_kind = peak_memory(device)
    batch = len(item.images)

    shared: dict[str, Any] = {
        "item_id": item.id,
        "preset": item.preset,
        "backend": pipeline.backend,
        "sampler": item.sampler,
        "num_inference_steps": item.num_inference_steps,
        "guidance_scale": item.guidance_scale,
        "batch_size": batch,
        "batch_size_used": generated.batch_size_used,  # smaller than batch_size after out-of-memory retries
        "oom_retries": generated.oom_retries,
        "generate_s": generate_seconds,
        "decode_s": sum(t.decode_seconds for t in timings),
        "compile_s": compile_s,
        "peak_memory_bytes": memory,
        "peak_memory_kind": memory_kind,
        "device": str(device),
        "dtype": dtype_name(pipeline.options.denoiser_dtype),
    }
    for number, (settings, timing) in enumerate(zip(item.stages, timings), start=1):
        shared |= stage_record(number, settings, timing)

    rows = []
    for spec, image, status in zip(item.images, images, generated.status):
        relative = image_relative_path(item, spec.prompt_index, spec.seed_index)
        digest = None
        if status != "non_finite":  # no black PNG for an image that could not be made
            png = to_png(image)
            atomic_write_bytes(run / relative, png)
            digest = sha256_bytes(png)
        text_seconds = pipeline.text_encode_seconds(spec.prompt)
        rows.append(
            {
                **shared,
                "prompt_index": spec.prompt_index,
                "seed_index": spec.seed_index,
                "prompt": spec.prompt,
                "seed": spec.seed,
                "image_path": relative.as_posix(),
                "sha256": digest,
                "status": status,
                "height": image.shape[1],
                "width": image.shape[2],
                "text_encode_s": text_seconds,
                "seconds_per_image": generate_seconds / batch + text_seconds,
            }
        )
    return rows


def time_alternately(loaded: list, batch: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per image of each loaded preset's first work item (``batch`` images), ``repeats`` rounds.

    ``loaded`` holds (pipeline, [item]) pairs from ``runner.load_pipelines``. Every round times each
    pipeline once, in turn, so drifts in machine speed hit all of them alike.
    """

    seconds: dict[str, list[float]] = {pipeline.preset: [] for pipeline, _ in loaded}
    for _ in range(repeats):
        for pipeline, (item, *_) in loaded:
            clock = Clock(pipeline.options.device)
            began = clock()
            prompts = [spec.prompt for spec in item.images[:batch]]
            pipeline.generate(prompts, item.stages, image_generators(item, list(range(batch))), clock)
            seconds[pipeline.preset].append((clock() - began) / batch)
    return seconds
