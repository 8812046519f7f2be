"""Everything a run depends on, checked before its first image: one line and exit code 2 on any problem.

``check_generation`` covers what generation needs (device, output folder, model folders, step
counts the models can take); ``check_evaluation`` what the sweep's metrics need (reference
images or statistics, feature-network weights). Both run before the run folder is written, so a
mistake costs seconds, not a generated sweep.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import torch

from suite.core.errors import UserError
from suite.core.files import ensure_writable
from suite.metrics import METRICS
from suite.metrics.networks import FEATURE_NETWORKS, NetworkContext, check_local_networks
from suite.metrics.reference import check_reference, check_statistics_dimension
from suite.model.devices import resolve_device
from suite.model.loading import ComponentLoader, check_available
from suite.model.presets import PRESETS, Preset, materialise
from suite.model.samplers import SAMPLERS, make_scheduler
from suite.model.sources import scheduler_folder
from suite.model.stages import StageSettings
from suite.run.config import ResolvedSweep, Sweep
from suite.run.grid import preset_stage_settings, stage_settings
from suite.run.options import EvaluateOptions, RunOptions

DEFAULT_TRAIN_TIMESTEPS = 1000  # diffusers' schedulers' default num_train_timesteps


def prepare_presets(resolved: ResolvedSweep, model_dirs: dict[str, Path]) -> dict[str, Preset]:
    """Each preset of the sweep, pointed at its local folder if given, checked to be loadable."""
    unknown = sorted(set(model_dirs) - set(resolved.sweep.presets))
    if unknown:
        raise UserError(
            f"--model-dir names {unknown[0]!r}, which is not a preset of this sweep: {', '.join(resolved.sweep.presets)}"
        )
    presets = {}
    for name in resolved.sweep.presets:
        preset = PRESETS.get(name)
        if name in model_dirs:
            preset = replace(preset, local_dir=Path(model_dirs[name]))
        preset = materialise(preset)
        check_available(preset)
        presets[name] = preset
    return presets


def stage_schedulers(preset: Preset) -> dict[str, dict]:
    """Each stage's scheduler config, as its model folder holds it."""
    locations = preset.source_paths()
    return {
        spec.name: dict(
            ComponentLoader(preset.name, spec.source, locations[spec.source])
            .scheduler(scheduler_folder(spec.kind))
            .config
        )
        for spec in preset.stages
    }


def train_timesteps(preset: Preset, configs: dict[str, dict] | None = None) -> dict[str, int]:
    """Each stage's number of training timesteps, from its scheduler config."""
    configs = stage_schedulers(preset) if configs is None else configs
    return {name: int(config.get("num_train_timesteps", DEFAULT_TRAIN_TIMESTEPS)) for name, config in configs.items()}


def check_samplers(preset: Preset, settings: tuple[StageSettings, ...], configs: dict[str, dict]) -> None:
    """The sampler each stage runs (the grid's, or its ``stages:`` override) can be built on that stage's noise
    schedule and step its prediction type (unCLIP's sampler takes cosine betas only; PNDM cannot step a prior that
    predicts the sample)."""
    for spec, stage in zip(preset.stages, settings):
        problem = _unbuildable(stage.sampler, configs[spec.name])
        if problem:
            raise UserError(f"sampler {stage.sampler!r} cannot sample {preset.name} stage {spec.name!r}: {problem}")


@functools.cache
def _unbuildable_cached(sampler: str, config: str) -> str:
    try:
        make_scheduler(sampler, json.loads(config))
    except ValueError as error:
        return str(error)
    return ""


def _unbuildable(sampler: str, config: dict) -> str:
    """Why ``sampler`` cannot be built from ``config`` ("" if it can); each pair is built once."""
    return _unbuildable_cached(sampler, json.dumps(config, sort_keys=True, default=str))


def check_steps(resolved: ResolvedSweep, presets: dict[str, Preset]) -> None:
    """Every grid point's stages: a sampler that can step the stage's model, and no more steps than the model has
    training timesteps (a truncated start counts the steps of its whole schedule)."""
    sweep = resolved.sweep
    for name, preset in presets.items():
        configs = stage_schedulers(preset)
        limits = train_timesteps(preset, configs)
        for sampler, steps, guidance in itertools.product(
            sweep.samplers, sweep.num_inference_steps, sweep.guidance_scale
        ):
            settings = stage_settings(resolved, name, sampler, steps, guidance)
            check_samplers(preset, settings, configs)
            check_stage_steps(preset, settings, limits)


def check_point_steps(preset: Preset, sampler: str, steps: int, guidance: float, option: str = "--steps") -> None:
    """One grid point of ``preset`` (as ``suite bench`` and ``suite profile`` take it): its samplers and steps."""
    configs = stage_schedulers(preset)
    settings = preset_stage_settings(preset, sampler, steps, guidance)
    check_samplers(preset, settings, configs)
    check_stage_steps(preset, settings, train_timesteps(preset, configs), option=option)


def check_stage_steps(
    preset: Preset, settings: tuple[StageSettings, ...], limits: dict[str, int] | None = None, option: str = "steps"
) -> None:
    """One grid point's stages against their models' training timesteps (read from the schedulers if not given)."""
    limits = train_timesteps(preset) if limits is None else limits
    for spec, stage in zip(preset.stages, settings):
        fewest = SAMPLERS.get(stage.sampler).min_steps
        if stage.num_inference_steps < fewest:
            raise UserError(
                f"{option}: sampler {stage.sampler!r} takes at least {fewest} steps; {preset.name} stage {spec.name!r} "
                f"was given {stage.num_inference_steps}"
            )
        schedule = math.ceil(stage.num_inference_steps / stage.strength - 1e-9)
        if schedule > limits[spec.name]:
            raise UserError(
                f"{option}: {stage.num_inference_steps} steps for {preset.name} stage {spec.name!r} exceed "
                f"its model's {limits[spec.name]} training timesteps"
            )


RUN_FOLDERS = ("items", "images", "evaluation", "report")


def check_layout(out: Path) -> None:
    """The run's own sub-folders, where they exist already, are folders (not files or dangling links)."""
    for name in RUN_FOLDERS:
        path = out / name
        if path.is_symlink() and not path.exists():
            raise UserError(f"{path} is a symbolic link to nothing; remove it or choose another --out")
        if path.exists() and not path.is_dir():
            raise UserError(
                f"{path} is a file where the run keeps its {name} folder; remove it or choose another --out"
            )


def check_generation(resolved: ResolvedSweep, options: RunOptions) -> tuple[torch.device, dict[str, Preset]]:
    """The device, a writable output folder, loadable presets and step counts they can take."""

    device = resolve_device(options.device)
    ensure_writable(options.out)
    check_layout(options.out)
    presets = prepare_presets(resolved, options.model_dirs)
    check_steps(resolved, presets)
    return device, presets


def check_evaluation(sweep: Sweep, options: EvaluateOptions, base_dir: Path = Path()) -> None:
    """Reference images or statistics, and the local weights of every network the sweep's metrics use."""

    evaluation = sweep.evaluation
    metrics = [METRICS.get(name) for name in sorted(set(sweep.metrics))]
    if evaluation.reference is not None and any(metric.needs_reference for metric in metrics):
        check_reference(evaluation.reference, base_dir)
    networks = set().union(*(metric.networks(evaluation) for metric in metrics))
    context = NetworkContext(torch.device("cpu"), options.inception_weights)
    reads_clip_model = any(metric.uses_clip_model for metric in metrics)
    check_local_networks(networks | ({evaluation.clip_model} if reads_clip_model else set()), context)
    reference = evaluation.reference
    if reference is not None and reference.statistics is not None and any(m.needs_reference for m in metrics):
        check_statistics_dimension(reference, base_dir, FEATURE_NETWORKS.get(evaluation.features)(context))
    for metric in metrics:
        metric.check(evaluation)
