"""Claim 1, values per step: a latent step denoises 48x fewer values than pixels at 512 px; the time it saves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from suite.analysis.claims.claim_file import ClaimConfig
from suite.analysis.claims.common import (
    NOT_SUPPORTED,
    SUPPORTED,
    ClaimsOptions,
    ci,
    claim_section,
    device_name,
    grid_of,
    median_row,
    ratio_of_medians,
    timing_of,
)
from suite.analysis.claims.experiments import EXPERIMENTS, Experiment, Judgement
from suite.analysis.costs import ProfileSettings, profile_presets
from suite.analysis.report.render import Table, Text
from suite.core.errors import UserError
from suite.model.timing import Clock
from suite.run.options import RunOptions
from suite.run.runner import image_generators, load_pipelines


def measure_values(config: ClaimConfig, runs: dict, options: ClaimsOptions) -> dict[str, pd.DataFrame]:
    settings = config.settings
    profile = profile_presets(settings["profile_presets"], ProfileSettings())
    stages = profile.stages[["preset", "stage", "kind", "values_per_step", "tflops_per_step", "image"]].copy()
    resolved = grid_of(config, options)
    steps: dict[tuple[str, str], list[float]] = {}
    timing = timing_of(config)
    batch = resolved.sweep.batch_size
    if "batch" in timing.model_fields_set and timing.batch != batch:
        raise UserError(
            f"claim {config.name}: settings.timing.batch {timing.batch} is not the grid's batch_size {batch}"
        )

    loaded = list(load_pipelines(resolved, RunOptions(options.out / "runs", options.device, progress=False)))
    for _ in range(timing.repeats):  # alternate the families so drifts in machine speed hit both alike
        for pipeline, items in loaded:
            for item in items:
                indices = list(range(len(item.images)))
                _, timings = pipeline.generate(
                    [spec.prompt for spec in item.images],
                    item.stages,
                    image_generators(item, indices),
                    Clock(pipeline.options.device),
                )
                for stage, timing in zip(pipeline.stages, timings):
                    key = (pipeline.preset, stage.name)
                    steps.setdefault(key, []).extend(timing.step_seconds)
    values = {(row.preset, row.stage): int(row.values_per_step) for row in stages.itertuples()}
    device = device_name(loaded[0][0].options.device)
    batch = len(loaded[0][1][0].images)
    timing_rows = [
        {
            "preset": preset,
            "stage": stage,
            "values_per_image": values[(preset, stage)],
            "batch": batch,
            "steps_timed": len(seconds),
            **median_row("step_median_s", np.asarray(seconds)),
            "device": device,
        }
        for (preset, stage), seconds in steps.items()
    ]
    latent_key, pixel_key = (tuple(pair) for pair in settings["time_ratio"])  # pixel stage over latent stage
    ratio = ratio_of_medians(np.asarray(steps[pixel_key]), np.asarray(steps[latent_key]))
    ratio_row = {
        "numerator": "/".join(pixel_key),
        "denominator": "/".join(latent_key),
        "values_ratio": values[pixel_key] / values[latent_key],
        **ratio,
        "device": device,
    }
    return {"profile": stages, "step_times": pd.DataFrame(timing_rows), "time_ratio": pd.DataFrame([ratio_row])}


def judge_values(claim: dict, rules: dict, tables: dict, folder: Path, data: Path) -> Judgement:
    """Supported when the configs give SD 1.5 ``latent_values_per_step`` (64x64x4) and ``factor`` (48x) fewer values
    than 512 px pixels (exact counts, no interval)."""
    profile, times, ratio = tables["profile"], tables["step_times"], tables["time_ratio"].iloc[0]
    sd = profile[(profile.preset == "sd15") & (profile.kind == "latent")].iloc[0]
    pixel_values = 512 * 512 * 3
    factor = pixel_values / sd.values_per_step
    expected = sd.values_per_step == rules["latent_values_per_step"] and factor == rules["factor"]
    verdict = SUPPORTED if expected else NOT_SUPPORTED
    numbers = (
        f"SD 1.5 latent {sd.values_per_step:,} values/step vs {pixel_values:,} pixel values at 512 px: {factor:g}x; "
        f"toy pixel/latent time per step {ci(ratio, 'ratio', '.2f')} for {ratio.values_ratio:g}x the values"
    )
    section = claim_section(
        claim,
        [
            Text(
                f"Values per step are counted from the public configs (`suite profile`, meta device). At 512 px SD 1.5 "
                f"denoises {sd.values_per_step:,} values per step; the same image in pixels has {pixel_values:,}: "
                f"{factor:g}x. The cascade never denoises 512 px directly: its stages denoise 64 px, 256 px and 1024 px."
            ),
            Table(profile, {"tflops_per_step": ".4g"}),
            Text(
                f"Measured on the toy models ({times.device.iloc[0]}), batch {int(times.batch.iloc[0])}, guidance 1 "
                "(one model evaluation per step), median ms per step with its bootstrap interval:"
            ),
            Table(
                times.assign(ms_per_step=[ci(row, "ms_per_step", ".1f") for _, row in _in_ms(times).iterrows()])[
                    ["preset", "stage", "values_per_image", "ms_per_step", "steps_timed"]
                ]
            ),
            Text(
                f"{ratio.numerator} over {ratio.denominator}: {ci(ratio, 'ratio', '.2f')} times the time per step for "
                f"{ratio.values_ratio:g}x the values (ratio of median step times, bootstrap interval). Time does not "
                "scale with values alone: the two UNets differ in width and depth, and small tensors leave the CPU idle."
            ),
        ],
    )
    return Judgement(verdict, numbers, section)


EXPERIMENTS.register(
    "values",
    Experiment(
        measure_values,
        {"values/v1": judge_values},
        "values per step and FLOPs from configs (suite profile), and measured time per step on the toy models",
    ),
)


def _in_ms(times: pd.DataFrame) -> pd.DataFrame:
    """The step-time table's seconds as the milliseconds the report reads (``ms_per_step`` and its interval)."""
    suffixes = ("", "_ci95_low", "_ci95_high")
    return times.assign(**{f"ms_per_step{suffix}": 1e3 * times[f"step_median_s{suffix}"] for suffix in suffixes})
