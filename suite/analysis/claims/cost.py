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
from suite.core.errors import UserError
from suite.run.config import parse_sweep, resolve
from suite.run.options import RunOptions
from suite.run.runner import load_pipelines, time_alternately


def matched_points(points: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    """The weaker family's best point, and per family the cheapest point whose exact-match interval overlaps it.

    The first registered rule (cost/v1), kept to re-judge its data: it compares exactly latent and cascaded."""
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
    keys = ["family", "preset", "sampler", "num_inference_steps", "guidance_scale"]
    if not runs:  # the grid of another claim (the first design: claim 3's)
        source = load_claim(options.claims_dir / f"{settings['quality_from']}.yaml")
        runs = run_claim_sweeps(source, options)
    measured = [point_quality(run, keys) for run in runs.values()]
    points = pd.concat([frame for _, frame in measured], ignore_index=True)
    images = pd.concat([frame for frame, _ in measured], ignore_index=True)
    prompt_quality = images.groupby([*keys, "prompt_index"], sort=True)["toy_correct"].mean().reset_index()
    profile_settings = ProfileSettings(**settings.get("profile_settings", {}))
    real = profile_presets(settings["profile_presets"], profile_settings).pipelines
    real_table = real[["preset", "image", "parameters", "tflops_per_image"]]
    if config.rules["method"] != "cost/v1":  # the frontier rules judge from the grid alone; nothing is re-timed
        return {"points": points, "prompt_quality": prompt_quality, "real": real_table}
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
    return {"points": points, "matched": pd.DataFrame(matched), "ratios": pd.DataFrame(ratios), "real": real_table}


def judge_cost(claim: dict, rules: dict, tables: dict, folder: Path, data: Path) -> Judgement:
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


REFERENCE_FAMILY = "latent"  # each other family's cost is stated as a ratio to the latent family's


def frontier_costs(points: pd.DataFrame, prompt_quality: pd.DataFrame, rules: dict) -> pd.DataFrame:
    """Per quality level and per family other than the latent one (the cascade; unCLIP, a pixel cascade too, when
    the grid has it): each family's cheapest grid point whose exact match reaches the level, and the cost ratio
    family / latent, with percentile intervals from resampling prompts (all points together: they share prompts).

    A resample in which either family reaches no point at the level has no ratio; the share of such resamples is kept.
    """
    cost = rules["cost"]
    keys = ["family", "preset", "sampler", "num_inference_steps", "guidance_scale"]
    wide = prompt_quality.pivot_table(index="prompt_index", columns=keys, values="toy_correct").dropna()
    columns = list(wide.columns)
    costs = points.set_index(keys).loc[columns, cost].to_numpy(dtype=float)
    family_of = np.array([column[0] for column in columns])
    families = sorted(set(family_of))
    if REFERENCE_FAMILY not in families:
        raise UserError(f"the cost frontier states each family against the latent one; the grid has {families}")
    compared = [family for family in families if family != REFERENCE_FAMILY]
    matrix = wide.to_numpy()
    rng = np.random.default_rng(rules.get("seed", 0))
    draws = [np.arange(len(matrix))] + [rng.integers(0, len(matrix), len(matrix)) for _ in range(rules["resamples"])]
    quality = np.stack([matrix[draw].mean(axis=0) for draw in draws])  # (1 + B) x points
    rows = []
    for level in rules["quality_levels"]:
        cheapest, first = {}, {}
        for family in families:
            reach = np.where((quality >= level) & (family_of == family)[None], costs[None], np.inf)
            cheapest[family] = reach.min(axis=1)
            first[family] = int(reach[0].argmin())  # the point itself on the full sample (ties: the first listed)

        described = {}  # family -> (its point on the full sample, that point's cost)
        for family in families:
            point, column = cheapest[family][0], columns[first[family]]
            described[family] = (f"{column[2]} {column[3]}", point) if np.isfinite(point) else ("not reached", np.nan)
        reference_point, reference_cost = described[REFERENCE_FAMILY]
        for family in compared:
            reached = np.isfinite(cheapest[family]) & np.isfinite(cheapest[REFERENCE_FAMILY])
            denominator = np.where(reached, cheapest[REFERENCE_FAMILY], 1.0)
            ratio = np.where(reached, cheapest[family] / denominator, np.nan)
            finite = np.isfinite(ratio[1:])
            low, high = np.quantile(ratio[1:][finite], [0.025, 0.975]) if finite.any() else (np.nan, np.nan)
            if not np.isfinite(ratio[0]):  # no ratio on the full sample: no interval beside it either
                low, high = np.nan, np.nan
            point, point_cost = described[family]
            rows.append(
                {
                    "level": level,
                    "measure": cost,
                    "family": family,
                    "point": point,
                    "cost": point_cost,
                    f"{REFERENCE_FAMILY}_point": reference_point,
                    f"{REFERENCE_FAMILY}_cost": reference_cost,
                    "ratio": ratio[0] if np.isfinite(ratio[0]) else np.nan,
                    "ratio_ci95_low": low,
                    "ratio_ci95_high": high,
                    "resamples_unreached": float(1 - finite.mean()),
                    "n_prompts": len(matrix),
                }
            )
    return pd.DataFrame(rows)


def judge_frontier(claim: dict, rules: dict, tables: dict, folder: Path, data: Path) -> Judgement:
    """Cost at equal quality along each family's frontier: at each registered exact-match level, the cheapest point
    of each family that reaches it (FLOPs per image, an exact count), compared as a ratio to the latent family's with
    its interval over prompts. Supported when every (level, family) pair that both reach has the ratio's interval
    above 1; not supported when some pair's interval lies below 1; else (or nothing reached by both) inconclusive. A
    level that a family misses in more than ``max_unreached`` of the resamples supports neither verdict. With two
    families (latent, cascaded) there is one ratio per level; a third (unCLIP) adds its own."""
    if "prompt_quality" not in tables:
        return Judgement(
            INCONCLUSIVE,
            "the data predate this rule's measurements (per-prompt quality)",
            claim_section(claim, [Text("Not measured under this rule.")]),
        )
    frontier = frontier_costs(tables["points"], tables["prompt_quality"], rules)
    both = frontier[frontier.ratio.notna()]
    if len(both) == 0:
        verdict = INCONCLUSIVE
    elif (both.ratio_ci95_low > 1).all() and (both.resamples_unreached <= rules["max_unreached"]).all():
        verdict = SUPPORTED
    elif ((both.ratio_ci95_high < 1) & (both.resamples_unreached <= rules["max_unreached"])).any():
        verdict = NOT_SUPPORTED
    else:
        verdict = INCONCLUSIVE

    def reading(row) -> str:
        if pd.isna(row.ratio):
            missing = [
                name
                for name, point in ((row.family, row.point), ("latent", row.latent_point))
                if point == "not reached"
            ]
            return f"exact match {row.level:g}, {row.family}: not reached by {' or '.join(missing)}"
        unreached = row.resamples_unreached > rules["max_unreached"]
        return (
            f"exact match {row.level:g}, {row.family}: {ci(row, 'ratio', '.2f')}x {rules['cost']} "
            f"({row.point} vs {row.latent_point}"
            + (
                f"; unreached in {row.resamples_unreached:.1%} of resamples, over {rules['max_unreached']:.0%}"
                if unreached
                else ""
            )
            + ")"
        )

    numbers = "; ".join(reading(row) for row in frontier.itertuples())
    points = tables["points"].sort_values(["family", "sampler", "num_inference_steps"])
    shown = points.assign(exact_match=[ci(row, "toy_correct") for _, row in points.iterrows()])[
        [
            "family",
            "sampler",
            "num_inference_steps",
            "guidance_scale",
            "exact_match",
            "gflops_per_image",
            "seconds_per_image_median",
        ]
    ]
    blocks = [
        Text(
            f"Each family's frontier: at each exact-match level ({', '.join(f'{q:g}' for q in rules['quality_levels'])}), "
            f"its cheapest grid point reaching it, by {rules['cost']} (counted, exact). The ratio family / latent "
            f"has a percentile interval from {rules['resamples']} resamples of prompts (all points resampled together; "
            "a resample can pick other points). resamples_unreached: the share of resamples in which either family "
            f"reached no point at that level (more than {rules['max_unreached']:g} withholds support)."
        ),
        Table(
            frontier.assign(ratio=[ci(row, "ratio", ".2f") for _, row in frontier.iterrows()]),
            {"latent_cost": ".4g", "cost": ".4g", "resamples_unreached": ".3f"},
        ),
        Text("The grid (exact match with its interval over prompts; seconds per image as measured while sampling):"),
        Table(shown, {"gflops_per_image": ".4g", "seconds_per_image_median": ".4f"}),
        Text("Real architectures, counted from their public configs (`suite profile`):"),
        Table(tables["real"], {"tflops_per_image": ".4g"}),
    ]
    return Judgement(verdict, numbers, claim_section(claim, blocks))


EXPERIMENTS.register(
    "cost",
    Experiment(
        measure_cost,
        {"cost/v1": judge_cost, "cost/v2": judge_frontier},
        "seconds and FLOPs per image, latent vs cascaded, at matched quality; real architectures from configs",
    ),
)
