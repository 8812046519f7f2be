"""``suite claims --plan``: how many prompts each comparison needs for 80% power at its margin, from a pilot.

The pilot is an earlier measurement's tables (``results/claims/pilot/<claim>/``, the 64-prompt toy set with one
seed per prompt). For each comparison a claim's rule reads, the spread of per-prompt differences is recovered
from the pilot's 95% interval (sigma = half-width x sqrt(prompts) / 1.96) and its difference is taken as the
true one. Then, normal approximations with one seed per prompt:

- **equivalent** (both 95% interval ends inside +-margin, two one-sided tests at 2.5%): the n at which
  P(|d| + 1.96 sigma / sqrt(n) < margin) reaches 80%; impossible when the pilot difference is beyond the margin;
- **different** (a two-sided test at alpha / family size, Holm's first step): n = sigma^2 (z + z_0.8)^2 / d^2;
  under claim 3's steps/v2 also the 95% interval wholly beyond the margin, n = sigma^2 (1.96 + z_0.8)^2 / e^2
  with e = |d| - margin (impossible when the pilot difference is inside the margin): the larger of the two.

Per measure, the smaller n is the outcome the pilot points to. A comparison reads both measures: it is equivalent
when both are, different when either is, so it resolves at min(max of the equivalence n, min of the difference n)
(``comparison_prompts``). The toy grammar has 540 distinct prompts, so a comparison needing more cannot resolve
with one seed per prompt; the table says so.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize
from scipy.stats import norm

from suite.analysis.claims.claim_file import ClaimConfig
from suite.core.errors import UserError
from suite.core.stats import ALPHA
from suite.prompts.sets import PROMPT_SETS

POWER = 0.8
Z = norm.ppf(1 - ALPHA / 2)


def spread(low: float, high: float, prompts: int) -> float:
    """Standard deviation of per-prompt differences implied by a 95% interval over ``prompts`` prompts."""
    return (high - low) / (2 * Z) * math.sqrt(prompts)


def equivalence_prompts(difference: float, sigma: float, margin: float, power: float = POWER) -> float:
    """Prompts for both 95% interval ends to fall inside +-margin with probability ``power`` (inf if never)."""
    if abs(difference) >= margin or sigma <= 0:
        return math.inf if sigma > 0 else 1.0

    def achieved(n: float) -> float:
        half = Z * sigma / math.sqrt(n)
        return norm.cdf((margin - half - difference) / (sigma / math.sqrt(n))) - norm.cdf(
            (-margin + half - difference) / (sigma / math.sqrt(n))
        )

    if achieved(1e7) < power:
        return math.inf
    return float(math.ceil(optimize.brentq(lambda n: achieved(n) - power, 1.0, 1e7)))


def difference_prompts(
    difference: float, sigma: float, alpha: float = ALPHA, power: float = POWER, beyond: float = 0.0
) -> float:
    """Prompts for a two-sided test at ``alpha`` to reject no difference with probability ``power``; with
    ``beyond`` > 0, also for the difference's 95% interval to lie wholly beyond +-beyond (the larger n)."""
    if difference == 0 or abs(difference) <= beyond:
        return math.inf
    test = ((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * sigma / difference) ** 2
    interval = ((Z + norm.ppf(power)) * sigma / (abs(difference) - beyond)) ** 2 if beyond > 0 else 0.0
    return float(math.ceil(max(test, interval)))


def _row(
    claim: str, comparison: str, measure: str, difference, low, high, prompts, margin, family_size, beyond=0.0
) -> dict:
    sigma = spread(low, high, prompts)
    return {
        "claim": claim,
        "comparison": comparison,
        "measure": measure,
        "pilot_difference": difference,
        "pilot_sigma": sigma,
        "margin": margin,
        "different_beyond": beyond,
        "family_size": family_size,
    }


def _planned(row: dict) -> dict:
    """The prompts a comparison needs (``row`` from ``_row``, its spread filled in where the pilot had none)."""
    difference, sigma, margin = row["pilot_difference"], row["pilot_sigma"], row["margin"]
    equivalent = equivalence_prompts(difference, sigma, margin)
    different = difference_prompts(difference, sigma, ALPHA / row["family_size"], beyond=row["different_beyond"])
    needed = min(equivalent, different)
    available = len(PROMPT_SETS.get("toy-all"))
    return {
        **{key: value for key, value in row.items() if key != "family_size"},
        "prompts_equivalent": equivalent,
        "prompts_different": different,
        "prompts_to_resolve": needed,
        "resolves_in_toy_grammar": bool(needed <= available),
    }


def _prompts(row) -> int:
    """The prompts behind a paired comparison (its resampling unit): ``n_prompts`` where the table has it; a table
    written before that column had one seed per prompt, so its image pairs are its prompts. With several seeds per
    prompt the spread recovered is that of a prompt's mean over its seeds, and the plan counts such prompts."""
    prompts = getattr(row, "n_prompts", 0)
    return int(prompts) if prompts and not pd.isna(prompts) else int(row.n_pairs)


def plan_steps(folder: Path, config: ClaimConfig) -> list[dict]:
    """Claim 3: the points its sub-claims read against the reference, and 20 against 50 steps per solver. The Holm
    family is the registered design's: every exact and CLIP p of one family's points against the reference (each 20
    against 50 comparison is a family of its own two tests). Under steps/v2 a difference counts as "different" only
    when shown beyond its margin."""
    versus = pd.read_csv(folder / "versus_reference.csv")
    short = pd.read_csv(folder / "short_vs_long.csv")
    margins, rows = config.rules["margins"], []
    wanted = {("dpm-solver++", 20), ("ddim", 50), ("ddpm", 250)}
    reference = config.settings["reference"]
    points = {
        (sampler, steps)
        for sweep in config.sweeps.values()
        for sampler in sweep["samplers"]
        for steps in sweep["steps"]
    }
    family_size = 2 * len(points - {(reference["sampler"], reference["steps"])})
    beyond = margins if config.rules["method"] != "steps/v1" else {"exact": 0.0, "clip": 0.0}
    for row in versus.itertuples():
        if (row.sampler, row.num_inference_steps) not in wanted:
            continue
        rows.extend(
            _row(
                "03-steps",
                f"{row.family} {row.sampler} {row.num_inference_steps} vs reference",
                measure,
                getattr(row, f"{measure}_difference"),
                getattr(row, f"{measure}_difference_ci95_low"),
                getattr(row, f"{measure}_difference_ci95_high"),
                _prompts(row),
                margins[measure],
                family_size,
                beyond[measure],
            )
            for measure in ("exact", "clip")
        )
    for row in short.itertuples():
        if row.sampler == "ddpm":
            continue
        rows.extend(
            _row(
                "03-steps",
                f"{row.family} {row.sampler} 20 vs 50",
                measure,
                getattr(row, f"{measure}_difference"),
                getattr(row, f"{measure}_difference_ci95_low"),
                getattr(row, f"{measure}_difference_ci95_high"),
                _prompts(row),
                margins[measure],
                2,  # each 20-vs-50 comparison is its own Holm family: its exact and CLIP tests
                beyond[measure],
            )
            for measure in ("exact", "clip")
        )
    return rows


def plan_guidance(folder: Path, config: ClaimConfig) -> list[dict]:
    """Guidance 1 against 0 (equivalence), and each scale outside the range against the reference scale; the
    pilot has no vs-reference tests, so its spread comes from the same scale's test against the best scale and
    its difference from the two points' exact match. The Holm family is guidance/v3's over the registered
    scales: 1 vs 0 (2 tests), each outside scale against the reference (2 each), each saturation measure at
    the high scales (3 each) and the change of slope (1)."""
    tests = pd.read_csv(folder / "tests.csv")
    points = pd.read_csv(folder / "points.csv").set_index(["family", "guidance_scale"])
    rules = config.rules
    margins, rows = rules["margins"], []
    low, high = rules["follows_range"]
    reference = float(config.settings["reference_guidance"])
    scales = {scale for sweep in config.sweeps.values() for scale in sweep["guidance"] if scale >= 1}
    outside = [scale for scale in scales if not low <= scale <= high]
    at_high = [scale for scale in scales if scale >= rules["oversaturated_from"]]
    family_size = 2 + 2 * len(outside) + 3 * len(at_high) + 1
    prompts = int(points["n_images"].iloc[0])
    for row in tests.itertuples():
        if row.guidance_scale == 1.0 and not pd.isna(row.exact_vs_unconditional):
            rows.extend(
                _row(
                    "04-guidance",
                    f"{row.family} guidance 1 vs 0",
                    measure,
                    getattr(row, f"{measure}_vs_unconditional"),
                    getattr(row, f"{measure}_vs_unconditional_ci95_low"),
                    getattr(row, f"{measure}_vs_unconditional_ci95_high"),
                    prompts,
                    margins[measure],
                    family_size,
                )
                for measure in ("exact", "clip")
            )
        if low <= row.guidance_scale <= high or row.guidance_scale < 1:
            continue
        column = {"exact": "toy_correct", "clip": "clip_score_mean"}
        for measure in ("exact", "clip"):
            difference = (
                points.loc[(row.family, row.guidance_scale), column[measure]]
                - points.loc[(row.family, reference), column[measure]]
            )
            rows.append(
                _row(
                    "04-guidance",
                    f"{row.family} guidance {row.guidance_scale:g} vs {reference:g}",
                    measure,
                    difference,
                    getattr(row, f"{measure}_vs_best_ci95_low"),
                    getattr(row, f"{measure}_vs_best_ci95_high"),
                    prompts,
                    margins[measure],
                    family_size,
                )
            )
    return rows


PLANS = {"03-steps": plan_steps, "04-guidance": plan_guidance}


def plan_claims(pilot: Path, configs: list[ClaimConfig]) -> pd.DataFrame:
    """The plan for every claim given with a pilot in ``pilot/<claim>/`` and a planner in ``PLANS``."""
    if not pilot.is_dir():
        raise UserError(f"no pilot data in {pilot}: the plan reads an earlier measurement's tables there")
    rows = []
    for config in configs:
        if (pilot / config.name).is_dir() and config.name in PLANS:
            rows += PLANS[config.name](pilot / config.name, config)
    table = pd.DataFrame(rows)
    if len(table):  # a pilot interval of zero width (a point compared with itself, no discordant pair) has no
        # spread to plan from: it takes the median spread of the same claim and measure, and says so
        median = table[table.pilot_sigma > 0].groupby(["claim", "measure"]).pilot_sigma.median()
        zero = table.pilot_sigma <= 0
        table["sigma_from"] = np.where(zero, "median of the claim's other comparisons", "pilot interval")
        table.loc[zero, "pilot_sigma"] = [median[(c, m)] for c, m in zip(table.claim[zero], table.measure[zero])]
        table = pd.DataFrame([_planned(row) for row in table.to_dict("records")])
        by = table.groupby(["claim", "comparison"], sort=False)
        both_equivalent = by.prompts_equivalent.transform("max")
        either_different = by.prompts_different.transform("min")
        table["comparison_prompts"] = np.minimum(both_equivalent, either_different)
        table["comparison_resolves"] = table.comparison_prompts <= len(PROMPT_SETS.get("toy-all"))
    return table.replace({np.inf: np.nan}) if len(table) else table
