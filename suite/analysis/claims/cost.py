"""Claim 7, cost: seconds and FLOPs per image, cascaded over latent, at matched quality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from suite.analysis.claims.claim_file import ClaimConfig, load_claim
from suite.analysis.claims.common import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    ClaimsOptions,
    ci,
    claim_section,
    device_name,
    median_row,
    point_quality,
    preset_family,
    ratio_of_medians,
    run_claim_sweeps,
    timing_of,
)
from suite.analysis.claims.experiments import EXPERIMENTS, Experiment, Judgement
from suite.analysis.costs import ProfileSettings, profile_presets
from suite.analysis.report.render import Table, Text
from suite.run.config import parse_sweep, resolve
from suite.run.options import RunOptions
from suite.run.runner import load_pipelines, time_alternately


def matched_points(points: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    """The weaker family's best point, and per family the cheapest point whose exact-match interval overlaps it."""
    best = points.loc[points.groupby("family")["toy_correct"].idxmax()]
    target = best.sort_values("toy_correct").iloc[0]

    def overlaps(row) -> bool:
        return (
            row.toy_correct_ci95_low <= target.toy_correct_ci95_high
            and row.toy_correct_ci95_high >= target.toy_correct_ci95_low
        )

    chosen = {}
    for family, rows in points.groupby("family"):
        matching = rows[rows.apply(overlaps, axis=1)]
        chosen[family] = matching.sort_values("seconds_per_image_median").iloc[0]
    return target, chosen["latent"], chosen["cascaded"]


def measure_cost(config: ClaimConfig, runs: dict, options: ClaimsOptions) -> dict[str, pd.DataFrame]:
    settings = config.settings
    source = load_claim(options.claims_dir / f"{settings['quality_from']}.yaml")
    keys = ["family", "preset", "sampler", "num_inference_steps", "guidance_scale"]
    points = pd.concat(
        [point_quality(run, keys)[1] for run in run_claim_sweeps(source, options).values()], ignore_index=True
    )
    target, latent, cascaded = matched_points(points)

    timing = timing_of(config)
    batch, repeats = timing.batch, timing.repeats
    loaded = []
    for point in (latent, cascaded):
        sweep_data = next(data for data in source.sweeps.values() if point.sampler in data["samplers"])
        data = {
            **sweep_data,
            "name": f"{config.name}-{point.family}",
            "presets": [point.preset],
            "samplers": [point.sampler],
            "steps": [int(point.num_inference_steps)],
            "guidance": [float(point.guidance_scale)],
            "batch_size": batch,
            "prompts": {**sweep_data["prompts"], "limit": batch},
            "metrics": [],
            "stages": {key: value for key, value in sweep_data.get("stages", {}).items() if key == point.preset},
        }
        data.pop("evaluation", None)
        resolved = resolve(parse_sweep(data, config.name), options.claims_dir, config.name)
        loaded += list(load_pipelines(resolved, RunOptions(options.out / "runs", options.device, progress=False)))
    timed = time_alternately(loaded, batch, repeats)
    seconds = {preset_family(preset): values for preset, values in timed.items()}
    device = device_name(loaded[0][0].options.device)
    matched = [
        {
            "role": point.family,
            **{key: point[key] for key in keys},
            "toy_correct": point.toy_correct,
            "toy_correct_ci95_low": point.toy_correct_ci95_low,
            "toy_correct_ci95_high": point.toy_correct_ci95_high,
            "gflops_per_image": point.gflops_per_image,
            **median_row("seconds_per_image", seconds[point.family]),
            "timing_repeats": repeats,
            "timing_batch": batch,
            "device": device,
        }
        for point in (latent, cascaded)
    ]
    ratio = ratio_of_medians(np.asarray(seconds["cascaded"]), np.asarray(seconds["latent"]))
    ratios = [
        {
            "measure": "seconds per image, toy (measured)",
            **ratio,
            "note": f"matched at exact match {target.toy_correct:.3f} ({target.family} {target.sampler} {int(target.num_inference_steps)} steps)",
        },
        {
            "measure": "FLOPs per image, toy (counted)",
            "ratio": cascaded.gflops_per_image / latent.gflops_per_image,
            "ratio_ci95_low": cascaded.gflops_per_image / latent.gflops_per_image,
            "ratio_ci95_high": cascaded.gflops_per_image / latent.gflops_per_image,
            "note": "exact count: no interval",
        },
    ]
    profile_settings = ProfileSettings(**settings.get("profile_settings", {}))
    real = profile_presets(settings["profile_presets"], profile_settings).pipelines
    base_row, other_row = real.iloc[0], real.iloc[1]
    ratios.append(
        {
            "measure": f"FLOPs per image, {other_row.preset} / {base_row.preset} (counted from configs)",
            "ratio": other_row.tflops_per_image / base_row.tflops_per_image,
            "ratio_ci95_low": other_row.tflops_per_image / base_row.tflops_per_image,
            "ratio_ci95_high": other_row.tflops_per_image / base_row.tflops_per_image,
            "note": f"{profile_settings.sampler} {profile_settings.num_inference_steps} steps, guidance {profile_settings.guidance_scale:g}; "
            f"{base_row.image} vs {other_row.image}",
        }
    )
    real_table = real[["preset", "image", "parameters", "tflops_per_image"]]
    return {"points": points, "matched": pd.DataFrame(matched), "ratios": pd.DataFrame(ratios), "real": real_table}


def judge_cost(claim: dict, tables: dict, folder: Path, data: Path) -> Judgement:
    """Supported when the measured seconds ratio (cascaded / latent) at matched quality has its interval above 1
    and the counted FLOPs ratios (toy and real architectures) are above 1."""
    ratios, matched, real = tables["ratios"], tables["matched"], tables["real"]
    above = bool((ratios.ratio_ci95_low > 1).all())
    below = bool((ratios.ratio_ci95_high < 1).any())
    verdict = SUPPORTED if above else (NOT_SUPPORTED if below else INCONCLUSIVE)
    numbers = "; ".join(f"{row.measure}: {ci(row, 'ratio', '.2f')}" for row in ratios.itertuples())
    matched_table = matched.assign(
        exact_match=[ci(row, "toy_correct") for _, row in matched.iterrows()],
        seconds_per_image=[ci(row, "seconds_per_image", ".4f") for _, row in matched.iterrows()],
    )[
        [
            "role",
            "preset",
            "sampler",
            "num_inference_steps",
            "guidance_scale",
            "exact_match",
            "seconds_per_image",
            "gflops_per_image",
            "timing_repeats",
            "timing_batch",
            "device",
        ]
    ]
    blocks = [
        Text(
            "Matched quality: the weaker family's best point of claim 3's grid sets the exact-match level; each family "
            "contributes its cheapest point whose 95% interval overlaps that level. The two points are re-timed here, "
            "alternating, and seconds per image compared as a ratio of medians (bootstrap interval over repeats)."
        ),
        Table(matched_table, {"gflops_per_image": ".4g"}),
        Table(
            ratios.assign(ratio=[ci(row, "ratio", ".2f") for _, row in ratios.iterrows()])[["measure", "ratio", "note"]]
        ),
        Text("Real architectures, counted from their public configs (`suite profile`):"),
        Table(real, {"tflops_per_image": ".4g"}),
    ]
    return Judgement(verdict, numbers, claim_section(claim, blocks))


EXPERIMENTS.register(
    "cost",
    Experiment(
        measure_cost,
        judge_cost,
        "seconds and FLOPs per image, latent vs cascaded, at matched quality; real architectures from configs",
    ),
)
