"""Claim 3, steps and samplers: how many steps each sampler needs, from paired tests against a 1000-step reference."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from suite.analysis.claims.claim_file import ClaimConfig
from suite.analysis.claims.common import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    ClaimsOptions,
    ci,
    claim_section,
    overall,
    paired_tests,
    point_quality,
)
from suite.analysis.claims.experiments import EXPERIMENTS, Experiment, Judgement
from suite.analysis.claims.report import errorbar, save_figure
from suite.analysis.report.render import Figure, Table, Text
from suite.analysis.report.tables import with_interval

EQUIVALENT, DIFFERENT, NONZERO, UNRESOLVED = "equivalent", "different", "nonzero", "unresolved"
MEASURES = ("exact", "clip")


def measure_steps(config: ClaimConfig, runs: dict, options: ClaimsOptions) -> dict[str, pd.DataFrame]:
    keys = ["family", "sampler", "num_inference_steps"]
    images, points = [], []
    for run in runs.values():
        run_images, run_points = point_quality(run, keys)
        images.append(run_images)
        points.append(run_points)
    images, points = pd.concat(images), pd.concat(points).sort_values(keys).reset_index(drop=True)
    reference = config.settings["reference"]
    short, long = config.settings.get("compare_steps", [20, 50])
    versus_reference, short_long = [], []
    for family, rows in points.groupby("family", sort=True):
        candidates = [
            (family, row.sampler, row.num_inference_steps)
            for row in rows.itertuples()
            if (row.sampler, row.num_inference_steps) != (reference["sampler"], reference["steps"])
        ]
        versus_reference.append(
            paired_tests(images, (family, reference["sampler"], reference["steps"]), candidates, keys)
        )
        for sampler in sorted(rows["sampler"].unique()):
            available = set(rows.loc[rows["sampler"] == sampler, "num_inference_steps"])
            if {short, long} <= available:
                table = paired_tests(images, (family, sampler, long), [(family, sampler, short)], keys)
                short_long.append(table.assign(versus=f"{sampler} {long} steps"))
    return {
        "points": points,
        "versus_reference": pd.concat(versus_reference, ignore_index=True),
        "short_vs_long": pd.concat(short_long, ignore_index=True),
    }


def relation(row, margins: dict, alpha: float, method: str) -> str:
    """A paired comparison's reading: ``equivalent`` if both differences' 95% intervals lie inside the equivalence
    margins (a conservative two one-sided tests: a difference can be detectable and still too small to matter).

    Otherwise, under steps/v2: ``different`` if some measure's Holm-adjusted test rejects at ``alpha`` and its 95%
    interval lies wholly beyond its margin (shown larger than "indistinguishable" allows); ``nonzero`` if a test
    rejects but no such interval is beyond its margin (shown not zero, not shown to matter); else ``unresolved``.
    steps/v1, kept to judge the data measured under it, reads every rejection as ``different``."""
    low = {name: row[f"{name}_difference_ci95_low"] for name in MEASURES}
    high = {name: row[f"{name}_difference_ci95_high"] for name in MEASURES}
    if all(-margins[name] <= low[name] and high[name] <= margins[name] for name in MEASURES):
        return EQUIVALENT
    rejected = [name for name in MEASURES if row[f"{name}_p_holm"] < alpha]
    if not rejected:
        return UNRESOLVED
    if method not in READINGS:
        raise ValueError(f"no reading for rules method {method!r}; known: {', '.join(READINGS)}")
    if method == "steps/v1":
        return DIFFERENT
    beyond = any(low[name] > margins[name] or high[name] < -margins[name] for name in rejected)
    return DIFFERENT if beyond else NONZERO


READINGS = {
    "steps/v1": "different (a Holm-adjusted test rejects at 5%), else unresolved (too few images to tell either way; "
    "more seeds per prompt resolve it).",
    "steps/v2": "different (a Holm-adjusted test rejects and that difference's 95% interval lies wholly beyond its "
    "margin), else nonzero (a test rejects, but the interval crosses the margin: not zero, not shown to matter; it "
    "supports no sub-claim), else unresolved (too few images to tell).",
}


def _equivalent_from(rows: pd.DataFrame) -> float:
    """Smallest step count from which every larger count is equivalent to the reference (NaN if none)."""
    rows = rows.sort_values("num_inference_steps")
    equivalent = (rows.relation == EQUIVALENT).to_numpy()
    if not equivalent[-1]:
        return math.nan
    first = len(equivalent) - int(np.argmin(equivalent[::-1])) if not equivalent.all() else 0
    return float(rows.num_inference_steps.iloc[first])


def sub_verdict(found: str, supports: str) -> str:
    if found in (UNRESOLVED, NONZERO):
        return INCONCLUSIVE
    return SUPPORTED if found == supports else NOT_SUPPORTED


def _paired_table(comparisons: pd.DataFrame, against: str) -> pd.DataFrame:
    """Paired comparisons as shown: differences with their intervals, Holm p, and their reading."""
    shown = comparisons.assign(
        exact_difference=[ci(row, "exact_difference") for _, row in comparisons.iterrows()],
        clip_difference=[ci(row, "clip_difference") for _, row in comparisons.iterrows()],
    )
    columns = ["exact_difference", "exact_p_holm", "clip_difference", "clip_p_holm", "relation"]
    return shown[["family", against, "num_inference_steps", *columns]]


def judge_steps(claim: dict, rules: dict, tables: dict, folder: Path, data: Path) -> Judgement:
    """Sub-claims per family, each from paired comparisons read by ``relation``: (a) 20 and 50 steps are
    equivalent for each solver; (b) DPM-Solver++ at 20 steps is equivalent to the reference (DDPM, 1000 steps);
    (c) DDIM at 50 is; (d) DDPM needs ~1000: its 250-step point differs from the reference (supported) or is
    equivalent to it (not supported)."""
    points, versus, short_long = tables["points"], tables["versus_reference"], tables["short_vs_long"]
    reference, margins = claim["settings"]["reference"], rules["margins"]
    alpha, method = rules["alpha"], rules["method"]
    versus = versus.assign(relation=[relation(row, margins, alpha, method) for _, row in versus.iterrows()])
    short_long = short_long.assign(relation=[relation(row, margins, alpha, method) for _, row in short_long.iterrows()])
    verdicts, lines, onset_rows = [], [], []
    for family, rows in versus.groupby("family", sort=True):
        for sampler, group in rows.groupby("sampler", sort=True):
            onset_rows.append({"family": family, "sampler": sampler, "equivalent_from_steps": _equivalent_from(group)})

        def at(sampler: str, steps: int, rows=rows) -> str:
            found = rows[(rows.sampler == sampler) & (rows.num_inference_steps == steps)].relation
            return found.iloc[0] if len(found) else UNRESOLVED

        pairs = short_long[short_long.family == family]
        checks = {
            "20 ~ 50 steps": overall([sub_verdict(found, EQUIVALENT) for found in pairs.relation]),
            "DPM-Solver++ by 20": sub_verdict(at("dpm-solver++", 20), EQUIVALENT),
            "DDIM by 50": sub_verdict(at("ddim", 50), EQUIVALENT),
            "DDPM needs > 250": sub_verdict(at("ddpm", 250), DIFFERENT),
        }
        for name, found in checks.items():
            verdicts.append(found)
            lines.append(f"{family}: {name}: {found}")
    verdict = overall(verdicts)
    shown = points.assign(
        exact_match=[
            with_interval(r.toy_correct, r.toy_correct_ci95_low, r.toy_correct_ci95_high, ".3f")
            for r in points.itertuples()
        ],
        clip_score=[
            with_interval(r.clip_score_mean, r.clip_score_mean_ci95_low, r.clip_score_mean_ci95_high, ".3f")
            for r in points.itertuples()
        ],
        fid_toy_clip=[with_interval(r.fid, r.fid_ci95_low, r.fid_ci95_high, ".1f") for r in points.itertuples()],
    )[["family", "sampler", "num_inference_steps", "n_images", "exact_match", "clip_score", "fid_toy_clip"]]
    tests, pair_table = _paired_table(versus, "sampler"), _paired_table(short_long, "versus")
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    for axis, (family, rows) in zip(axes, points.groupby("family", sort=True)):
        for sampler, line in rows.groupby("sampler", sort=True):
            line = line.sort_values("num_inference_steps")
            errorbar(axis, line, "num_inference_steps", "toy_correct", sampler, ("_ci95_low", "_ci95_high"))
        axis.set_xscale("log")
        axis.set_title(family)
        axis.set_xlabel("steps")
    axes[0].set_ylabel("exact match (95% BCa)")
    axes[1].legend(fontsize=8)
    blocks = [
        Text(
            f"Reference: {reference['sampler']} at {reference['steps']} steps. Every point holds the same "
            f"{int(points.n_images.iloc[0])} prompts and seeds, so each is compared with the reference image by image: "
            "exact McNemar on exact match, sign-flip permutation on CLIP score, Holm-adjusted within a family. "
            f"Each comparison reads as: equivalent (both differences' 95% intervals inside the margins: exact "
            f"match +-{margins['exact']:g}, CLIP score +-{margins['clip']:g}), else {READINGS[method]} "
            "FID uses toy-CLIP features "
            "and has a large small-sample bias at this size: compare FIDs with each other, not with other tables."
        ),
        Table(shown),
        Text("Equivalent to the reference from this many steps on (blank: not at the largest count):"),
        Table(pd.DataFrame(onset_rows), {"equivalent_from_steps": ".0f"}),
        Text("Each point against the reference (difference = point - reference):"),
        Table(tests, {"exact_p_holm": ".3g", "clip_p_holm": ".3g"}),
        Text("20 steps against 50 steps, per sampler (difference = 20 - 50):"),
        Table(pair_table, {"exact_p_holm": ".3g", "clip_p_holm": ".3g"}),
        Figure(
            save_figure(figure, folder, "claim3-steps"), "Exact match against steps, per sampler (95% BCa intervals)"
        ),
        Text("Sub-claims: " + "; ".join(lines) + "."),
    ]
    return Judgement(verdict, "; ".join(lines), claim_section(claim, blocks))


EXPERIMENTS.register(
    "steps",
    Experiment(
        measure_steps,
        {"steps/v1": judge_steps, "steps/v2": judge_steps},
        "quality against steps per sampler, paired against a 1000-step DDPM reference and 20 vs 50",
    ),
)
