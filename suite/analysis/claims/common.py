"""What the claim modules share: verdict words, options and folders, running sweeps, interval rows, paired tests."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import ValidationError

from suite.analysis.bench import processor_name
from suite.analysis.claims.claim_file import ClaimConfig, claim_sweep
from suite.analysis.report.render import Section
from suite.analysis.report.tables import with_interval
from suite.core import paired, stats
from suite.core.errors import UserError
from suite.core.stats import ALPHA
from suite.model.presets import PRESETS
from suite.model.timing import Clock
from suite.run.config import ResolvedSweep, parse_sweep, resolve
from suite.run.evaluate import evaluate_run
from suite.run.folder import read_run
from suite.run.options import EvaluateOptions, RunOptions, TimingSettings
from suite.run.runner import image_generators, load_pipelines, run_sweep, to_uint8

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_RUN = "supported", "not supported", "inconclusive", "not run here"
PARTLY = "partly supported"


@dataclass(frozen=True)
class ClaimsOptions:
    claims_dir: Path = Path("experiments/claims")
    out: Path = Path("results/claims")
    device: str = "auto"
    names: tuple[str, ...] = ()
    progress: bool = True
    compile: bool = False  # torch.compile the UNets of the claims' sweeps (not of hooked sampling, which stays eager)


# -- folders and sampling -----------------------------------------------------------------------------


def data_dir(out: Path, config: ClaimConfig) -> Path:
    return out / "report" / "data" / config.name


def runs_dir(out: Path, config: ClaimConfig) -> Path:
    return out / "runs" / config.name


def run_claim_sweeps(config: ClaimConfig, options: ClaimsOptions) -> dict[str, Path]:
    """Run (or resume) each of the claim's sweeps and evaluate it; returns the run folders by sweep name."""

    folders = {}
    for sweep_name in config.sweeps:
        resolved = claim_sweep(config, sweep_name, options.claims_dir)
        folder = runs_dir(options.out, config) / sweep_name
        run_options = RunOptions(folder, options.device, progress=options.progress, compile=options.compile)
        summary = run_sweep(resolved, run_options)
        if not summary.complete:
            raise RuntimeError(f"{folder}: the sweep did not complete")
        if resolved.sweep.metrics:
            evaluate_run(folder, EvaluateOptions(device=options.device, progress=options.progress))
        folders[sweep_name] = folder
    return folders


def grid_of(config: ClaimConfig, options: ClaimsOptions, key: str = "grid") -> ResolvedSweep:
    """The sweep in ``settings[key]`` (sampled here with step hooks rather than by ``run_sweep``)."""

    data = {"name": f"{config.name}-{key}", **config.settings[key]}
    return resolve(parse_sweep(data, f"{config.name}: settings.{key}"), options.claims_dir, config.name)


def hooked_samples(
    resolved: ResolvedSweep, options: ClaimsOptions, make_hooks: Callable
) -> Iterator[tuple[Any, Any, np.ndarray, list]]:
    """Sample every work item of ``resolved`` with fresh hooks from ``make_hooks(item, pipeline)``.

    Yields (pipeline, item, uint8 images, hooks); the images are those ``run_sweep`` would write.
    """

    run_options = RunOptions(options.out / "runs", options.device, progress=False)
    for pipeline, items in load_pipelines(resolved, run_options):
        for item in items:
            hooks = make_hooks(item, pipeline)
            indices = list(range(len(item.images)))
            prompts = [spec.prompt for spec in item.images]
            recorders = [hook for hook in hooks if hasattr(hook, "__enter__")]  # active around the whole sampling
            step_hooks = [hook for hook in hooks if not hasattr(hook, "__enter__")]  # called after every step
            with contextlib.ExitStack() as active:
                for recorder in recorders:
                    active.enter_context(recorder)
                images, _ = pipeline.generate(
                    prompts, item.stages, image_generators(item, indices), Clock(pipeline.options.device), step_hooks
                )
            yield pipeline, item, to_uint8(images), hooks


def preset_family(preset: str) -> str:
    """A preset's family, "latent", "cascaded" or "unclip": its backend."""
    return PRESETS.get(preset).backend


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)

    return f"{processor_name()}, {torch.get_num_threads()} threads"


# -- table rows with intervals, and paired tests --------------------------------------------------------


def timing_of(config: ClaimConfig) -> TimingSettings:
    """The claim file's ``timing:`` settings (batch, repeats), as ablation files spell them; one-line errors."""
    former = sorted({"repeats", "timing_batch", "timing_repeats"} & set(config.settings))
    if former:
        raise UserError(f"claim {config.name}: settings {former} are now settings.timing: {{batch: N, repeats: M}}")
    try:
        return TimingSettings.model_validate(config.settings.get("timing", {}))
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UserError(f"claim {config.name}: settings.timing.{where}: {first['msg']}") from None


def interval_row(prefix: str, interval: stats.Interval, value: float) -> dict[str, float]:
    return {prefix: value, f"{prefix}_ci95_low": interval.low, f"{prefix}_ci95_high": interval.high}


def proportion_row(prefix: str, values: np.ndarray, units: stats.Units | None = None) -> dict[str, float]:
    """A share of 0/1 answers with its Wilson interval (at the effective sample size when ``units`` group them)."""
    values = np.asarray(values, dtype=np.float64)
    interval = stats.share_interval(values, units)
    asked = values[~np.isnan(values)]
    return interval_row(prefix, interval, float(asked.mean()) if len(asked) else math.nan) | {f"{prefix}_n": len(asked)}


def mean_row(prefix: str, values: np.ndarray, units: stats.Units | None = None) -> dict[str, float]:
    """A mean with its BCa interval, resampling ``units`` (prompts) when given."""
    values = np.asarray(values, dtype=np.float64)
    return interval_row(prefix, stats.mean_interval(values, units), float(np.nanmean(values)))


def median_row(prefix: str, values) -> dict[str, float]:
    """Median with a (bias-shifted percentile) bootstrap interval: for timings, whose outliers are the machine's."""
    values = np.asarray(values, dtype=np.float64)
    interval = stats.bootstrap_interval(lambda chosen: float(np.median(values[chosen])), len(values), stats.RESAMPLES)
    return interval_row(prefix, interval, float(np.median(values)))


def ratio_of_medians(numerator: np.ndarray, denominator: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict:
    """Median(numerator) / median(denominator) with a percentile bootstrap interval, each side resampled on its own."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    rng = np.random.default_rng(seed)
    ratios = [
        np.median(rng.choice(numerator, len(numerator))) / np.median(rng.choice(denominator, len(denominator)))
        for _ in range(resamples)
    ]
    low, high = np.quantile(ratios, [ALPHA / 2, 1 - ALPHA / 2])
    return {
        "ratio": float(np.median(numerator) / np.median(denominator)),
        "ratio_ci95_low": float(low),
        "ratio_ci95_high": float(high),
    }


def paired_tests(images: pd.DataFrame, reference: tuple, candidates: list[tuple], keys: list[str]) -> pd.DataFrame:
    """Paired tests of each candidate grid point against ``reference`` on exact match and CLIP score, Holm-adjusted.

    ``images`` holds per-image rows with columns ``keys`` + prompt_index, seed_index, toy_correct, clip_score.
    """
    indexed = images.set_index([*keys, "prompt_index", "seed_index"]).sort_index()
    base = indexed.loc[reference]
    rows = []
    for candidate in candidates:
        other = indexed.loc[candidate].reindex(base.index)
        units = stats.Units.of(base.index.get_level_values("prompt_index"))
        exact = paired.paired_binary(base["toy_correct"], other["toy_correct"], units)
        clip = paired.paired_permutation(base["clip_score"], other["clip_score"], units)
        rows.append(
            dict(zip(keys, candidate))
            | {
                "exact_difference": exact.difference,
                "exact_difference_ci95_low": exact.low,
                "exact_difference_ci95_high": exact.high,
                "exact_p": exact.p_value,
                "clip_difference": clip.difference,
                "clip_difference_ci95_low": clip.low,
                "clip_difference_ci95_high": clip.high,
                "clip_p": clip.p_value,
                "n_pairs": exact.n_pairs,
                "n_prompts": exact.n_prompts,
            }
        )
    table = pd.DataFrame(rows)
    if len(table):
        adjusted = stats.holm([*table["exact_p"], *table["clip_p"]])
        table["exact_p_holm"], table["clip_p_holm"] = adjusted[: len(table)], adjusted[len(table) :]
    return table


def point_quality(run_path: Path, keys: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-image answers and per-point quality (exact match, CLIP score, FID, FLOPs, seconds) of an evaluated run."""

    run = read_run(run_path)
    images = run.images()
    images["family"] = images["preset"].map(preset_family)
    metrics = run.metrics.copy()
    metrics["family"] = metrics["preset"].map(preset_family)
    columns = [
        *keys,
        "n_images",
        "toy_correct",
        "toy_correct_ci95_low",
        "toy_correct_ci95_high",
        "clip_score_mean",
        "clip_score_mean_ci95_low",
        "clip_score_mean_ci95_high",
        "fid",
        "fid_ci95_low",
        "fid_ci95_high",
        "gflops_per_image",
        "seconds_per_image_median",
    ]
    return images, metrics[[column for column in columns if column in metrics.columns]]


# -- judging ----------------------------------------------------------------------------------------------


def ci(row, column: str, spec: str = ".3f") -> str:
    """``value [low, high]`` from ``column``, ``column_ci95_low`` and ``column_ci95_high``."""
    values = row._asdict() if hasattr(row, "_asdict") else row  # a row of itertuples() or of iterrows()
    return with_interval(values[column], values.get(f"{column}_ci95_low"), values.get(f"{column}_ci95_high"), spec)


def overall(verdicts: list[str]) -> str:
    """A claim's verdict from its sub-claims': all alike gives that; some supported gives partly supported (the
    others do not hold, or cannot be told); none supported but some not gives not supported; else inconclusive."""
    if len(set(verdicts)) == 1:
        return verdicts[0]
    if SUPPORTED in verdicts or PARTLY in verdicts:
        return PARTLY
    return NOT_SUPPORTED if NOT_SUPPORTED in verdicts else INCONCLUSIVE


def claim_section(claim: dict, blocks: list) -> Section:
    """A claim's report section, titled with its number and title."""
    return Section(f"Claim {claim['claim']}: {claim['title']}", blocks)
