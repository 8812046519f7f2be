"""The grid: a resolved sweep expanded into work items with stable ids and per-image seeds."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from suite.model.presets import PRESETS, Preset
from suite.model.stages import StageSettings
from suite.run.config import ResolvedSweep


@dataclass(frozen=True)
class ImageSpec:
    prompt_index: int
    seed_index: int
    prompt: str
    seed: int


@dataclass(frozen=True)
class WorkItem:
    """One (preset, sampler, steps, guidance, block of prompts x seeds): the unit of execution."""

    preset: str
    sampler: str
    num_inference_steps: int
    guidance_scale: float
    stages: tuple[StageSettings, ...]
    images: tuple[ImageSpec, ...]

    @property
    def id(self) -> str:
        """A stable hash of every resolved field: same fields, same id, on any machine."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def image_seed(sweep_seed: int, prompt_index: int, seed_index: int) -> int:
    """Per-image seed from (sweep seed, prompt index, seed index), independent of batching and sharding."""
    digest = hashlib.sha256(f"{sweep_seed}/{prompt_index}/{seed_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def stage_settings(
    resolved: ResolvedSweep, preset_name: str, sampler: str, steps: int, guidance: float
) -> tuple[StageSettings, ...]:
    """Per-stage knobs of one grid point of a sweep (see ``preset_stage_settings``)."""
    overrides = resolved.sweep.stages.get(preset_name, {})
    return preset_stage_settings(PRESETS.get(preset_name), sampler, steps, guidance, overrides)


def preset_stage_settings(
    preset: Preset, sampler: str, steps: int, guidance: float, overrides: Mapping[str, Any] | None = None
) -> tuple[StageSettings, ...]:
    """The grid's sampler for every stage; its steps and guidance for every stage whose preset spec fixes none
    (the first stage of every built-in cascade, unCLIP's decoder), the preset's defaults for the others
    (super-resolution stages, unCLIP's prior and upsamplers); per-stage ``overrides`` (sweep ``stages:``) win."""
    overrides = overrides or {}
    settings = []
    for spec in preset.stages:
        override = overrides.get(spec.name)
        values = {
            "sampler": sampler,
            "num_inference_steps": steps if spec.num_inference_steps is None else spec.num_inference_steps,
            "guidance_scale": guidance if spec.guidance_scale is None else spec.guidance_scale,
            "noise_level": spec.noise_level,
            "strength": spec.strength,
        }
        if override is not None:
            values |= override.model_dump(by_alias=False, exclude_none=True)
        settings.append(StageSettings(**values))
    return tuple(settings)


def expand(resolved: ResolvedSweep) -> list[WorkItem]:
    """Every work item of the sweep, in a fixed order (preset, sampler, steps, guidance, block)."""
    sweep = resolved.sweep
    images = [
        ImageSpec(prompt_index, seed_index, prompt, image_seed(sweep.seed, prompt_index, seed_index))
        for prompt_index, prompt in enumerate(resolved.prompt_texts)
        for seed_index in range(sweep.seeds_per_prompt)
    ]
    blocks = [tuple(images[start : start + sweep.batch_size]) for start in range(0, len(images), sweep.batch_size)]
    items = []
    for preset, sampler, steps, guidance in itertools.product(
        sweep.presets, sweep.samplers, sweep.num_inference_steps, sweep.guidance_scale
    ):
        settings = stage_settings(resolved, preset, sampler, steps, float(guidance))
        items.extend(WorkItem(preset, sampler, steps, float(guidance), settings, block) for block in blocks)
    return items


def shard(items: list[WorkItem], rank: int, world_size: int) -> list[WorkItem]:
    """This process's share: items interleaved across ranks."""
    return items[rank::world_size]
