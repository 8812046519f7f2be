"""Rules that can fail: the shape test, the frontier, within-prompt bleed and the power plan give known answers."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.power import NormalIndPower

from suite.analysis.claims.attention_bleed import judge_attention
from suite.analysis.claims.claim_file import load_claims
from suite.analysis.claims.common import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from suite.analysis.claims.cost import frontier_costs
from suite.analysis.claims.guidance_rules import decide, slope_contrasts, threshold_table
from suite.analysis.claims.plan import difference_prompts, equivalence_prompts, plan_claims
from suite.analysis.claims.report import build_claims_report, read_claim
from suite.analysis.claims.steps import relation, sub_verdict
from suite.analysis.report.render import Table
from suite.core.paired import group_difference_within
from suite.core.stats import Units

REPOSITORY = Path(__file__).resolve().parents[2]
COMMITTED = REPOSITORY / "results" / "claims" / "report"
SCALES = np.array([2.0, 3.0, 5.0, 7.5, 10.0, 12.5, 15.0, 17.5, 20.0, 25.0])


def test_slopes_below_and_above_the_threshold_are_recovered_exactly():
    curve = 0.1 + 0.01 * SCALES + 0.03 * np.maximum(0, SCALES - 15)
    weights = slope_contrasts(SCALES, at=15, ratio=1.5)
    assert weights["slope_below"] @ curve == pytest.approx(0.01)
    assert weights["slope_above"] @ curve == pytest.approx(0.04)
    assert weights["slope_excess"] @ curve == pytest.approx(0.04 - 1.5 * 0.01)
    straight = 0.1 + 0.01 * SCALES  # a steady rise: the excess is -(ratio - 1) x slope
    assert weights["slope_excess"] @ straight == pytest.approx(-0.005)


def _saturation(curve, prompts=60, noise=0.01, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        {
            "family": "latent",
            "guidance_scale": g,
            "prompt_index": p,
            "mean_saturation": value + level + rng.normal(0, noise),
        }
        for p, level in enumerate(rng.normal(0, 0.05, prompts))
        for g, value in zip(SCALES, curve)
    ]
    return pd.DataFrame(rows)


RULES = {"threshold": {"measure": "mean_saturation", "at": 15, "fit_from": 2, "slope_ratio": 1.5}}


def test_the_threshold_test_tells_a_knee_from_a_steady_rise():
    knee = threshold_table(_saturation(0.1 + 0.005 * SCALES + 0.02 * np.maximum(0, SCALES - 15)), RULES).iloc[0]
    assert knee.slope_excess_ci95_low > 0 and knee.slope_excess_p < 0.01
    steady = threshold_table(_saturation(0.1 + 0.005 * SCALES), RULES).iloc[0]
    assert steady.slope_excess_ci95_high < 0  # the rule reads this as "no threshold"
    assert steady.slope_below == pytest.approx(0.005, abs=0.001)


def test_the_frontier_picks_each_familys_cheapest_point_reaching_the_level():
    keys = ["family", "preset", "sampler", "num_inference_steps", "guidance_scale"]
    points = pd.DataFrame(
        [
            ("latent", "l", "s", 5, 7.5, 1.0),
            ("latent", "l", "s", 20, 7.5, 4.0),
            ("cascaded", "c", "s", 5, 7.5, 10.0),
            ("cascaded", "c", "s", 20, 7.5, 40.0),
        ],
        columns=[*keys, "gflops_per_image"],
    )
    share = {("latent", 5): 0.1, ("latent", 20): 0.5, ("cascaded", 5): 0.45, ("cascaded", 20): 0.6}
    rng = np.random.default_rng(0)
    rows = []
    for prompt in range(400):
        for (family, steps), p in share.items():
            preset = "l" if family == "latent" else "c"
            rows.append((family, preset, "s", steps, 7.5, prompt, float(rng.random() < p)))
    quality = pd.DataFrame(rows, columns=[*keys, "prompt_index", "toy_correct"])
    rules = {"cost": "gflops_per_image", "quality_levels": [0.3, 0.55, 0.9], "resamples": 300, "seed": 0}
    frontier = frontier_costs(points, quality, rules).set_index("level")
    assert frontier.loc[0.3, "ratio"] == pytest.approx(10.0 / 4.0)  # latent needs 20 steps, the cascade 5
    assert math.isnan(frontier.loc[0.55, "ratio"]) and frontier.loc[0.55, "latent_point"] == "not reached"
    assert frontier.loc[0.55, "point"] == "s 20" and set(frontier["family"]) == {"cascaded"}
    assert math.isnan(frontier.loc[0.9, "ratio"]) and frontier.loc[0.9, "latent_point"] == "not reached"


def test_the_frontier_states_every_other_family_against_the_latent_one():
    """Three families (latent, cascaded, unCLIP): one ratio per level and compared family, each to latent's cost."""
    keys = ["family", "preset", "sampler", "num_inference_steps", "guidance_scale"]
    costs = {("latent", 5): 1.0, ("latent", 20): 4.0, ("cascaded", 5): 10.0, ("unclip", 5): 3.0, ("unclip", 20): 12.0}
    share = {("latent", 5): 0.1, ("latent", 20): 0.5, ("cascaded", 5): 0.6, ("unclip", 5): 0.2, ("unclip", 20): 0.7}
    points = pd.DataFrame(
        [(family, family[0], "s", steps, 7.5, cost) for (family, steps), cost in costs.items()],
        columns=[*keys, "gflops_per_image"],
    )
    rng = np.random.default_rng(0)
    quality = pd.DataFrame(
        [
            (family, family[0], "s", steps, 7.5, prompt, float(rng.random() < p))
            for prompt in range(400)
            for (family, steps), p in share.items()
        ],
        columns=[*keys, "prompt_index", "toy_correct"],
    )
    rules = {"cost": "gflops_per_image", "quality_levels": [0.3], "resamples": 300, "seed": 0}
    frontier = frontier_costs(points, quality, rules).set_index("family")
    assert list(frontier.index) == ["cascaded", "unclip"]
    assert frontier.loc["cascaded", "ratio"] == pytest.approx(10.0 / 4.0)
    assert frontier.loc["unclip", "ratio"] == pytest.approx(12.0 / 4.0)  # unCLIP reaches 0.3 at 20 steps only
    assert (frontier["latent_point"] == "s 20").all()
    assert (frontier["ratio_ci95_low"] <= frontier["ratio"]).all() and (
        frontier["ratio"] <= frontier["ratio_ci95_high"]
    ).all()


def test_within_prompt_difference_ignores_what_differs_between_prompts():
    rng = np.random.default_rng(1)
    prompts = np.repeat(np.arange(150), 4)
    level = rng.normal(0, 1, 150)
    # prompts with a high level also fail more often: a pooled comparison would find a difference that is not there
    errors = rng.random(len(prompts)) < 1 / (1 + np.exp(-2 * level[prompts]))
    values = level[prompts] + rng.normal(0, 0.2, len(prompts))
    pooled = values[errors].mean() - values[~errors].mean()
    test = group_difference_within(values, errors, Units.of(prompts), permutations=2000)
    assert pooled > 0.5
    assert test.low < 0 < test.high and test.p_value > 0.05
    shifted = values + 0.15 * errors
    found = group_difference_within(shifted, errors, Units.of(prompts), permutations=2000)
    assert found.difference == pytest.approx(0.15, abs=0.05) and found.p_value < 0.01


def test_the_within_prompt_test_holds_its_level_under_the_null():
    rejections = 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        prompts = np.repeat(np.arange(30), 3)
        values = rng.normal(0, 1, 30)[prompts] + rng.normal(0, 0.5, len(prompts))
        labels = rng.random(len(prompts)) < 0.4
        rejections += group_difference_within(values, labels, Units.of(prompts), permutations=499).p_value < 0.05
    assert rejections <= 6  # 5% of 40 is 2; more than 6 has probability < 0.5% at the nominal level


def test_plan_sample_sizes_match_the_closed_forms():
    sigma, margin = 0.4, 0.1
    expected = math.ceil((sigma * (1.959964 + 1.281552) / margin) ** 2)  # difference 0: both one-sided tests at 0.9
    assert equivalence_prompts(0.0, sigma, margin) == pytest.approx(expected, abs=1)
    assert math.isinf(equivalence_prompts(0.12, sigma, margin))  # beyond the margin: never equivalent
    n = NormalIndPower().solve_power(effect_size=0.05 / sigma, alpha=0.05, power=0.8, ratio=0)
    assert difference_prompts(0.05, sigma) == math.ceil(n)
    # steps/v2: "different" also needs the 95% interval beyond the margin, which the excess over it sets ...
    assert difference_prompts(-0.15, sigma, beyond=margin) == math.ceil(n)
    assert math.isinf(difference_prompts(0.08, sigma, beyond=margin))
    # (the interval stays at 95% whatever the Holm level) ...
    assert difference_prompts(-0.15, sigma, alpha=0.005, beyond=margin) == math.ceil(n)
    # ... unless the Holm-level test against zero needs more (family of 10: z at 0.005), far beyond the margin
    test = ((2.807034 + 0.841621) * sigma / 0.5) ** 2  # 8.5, where the interval alone needs 7.9
    assert difference_prompts(-0.5, sigma, alpha=0.005, beyond=margin) == math.ceil(test)


def test_the_plan_reads_the_committed_pilot():
    configs = load_claims(REPOSITORY / "experiments" / "claims", ["03-steps", "04-guidance"])
    table = plan_claims(REPOSITORY / "results" / "claims" / "pilot", configs)
    steps = table[table.claim == "03-steps"]
    assert {"cascaded dpm-solver++ 20 vs reference", "latent ddim 50 vs reference"} <= set(steps.comparison)
    assert (table.pilot_sigma > 0).all() and (table.prompts_to_resolve.dropna() >= 1).all()
    # a comparison is equivalent only when both measures are, different when either is
    for _, rows in table.groupby(["claim", "comparison"]):
        expected = min(rows.prompts_equivalent.fillna(math.inf).max(), rows.prompts_different.fillna(math.inf).min())
        assert rows.comparison_prompts.fillna(math.inf).eq(expected).all()
    # under steps/v2 a pilot difference inside its margin can never be shown "different"
    inside = steps[steps.pilot_difference.abs() < steps.margin]
    assert len(inside) and inside.prompts_different.isna().all()


@pytest.mark.skipif(not (COMMITTED / "data").is_dir(), reason="no committed claims report")
def test_claims_4_and_6_measured_after_their_rules_changed_are_judged_under_them_and_still_marked(tmp_path):
    """Claims 4 and 6 were measured again (540 prompts) after guidance/v3 and attention/v3 were registered: those
    rules judge the data, and the row still says they were written after the first data had been seen."""
    report = tmp_path / "report"
    shutil.copytree(COMMITTED / "data", report / "data")
    build_claims_report(report)
    text = (report / "report.md").read_text()
    overview = text.split("## Claim 1")[0]
    for claim in ("| 4 |", "| 6 |"):
        row = next(line for line in overview.splitlines() if line.startswith(claim))
        assert "registered 2026-12-01, before the data; rule changed after earlier data (2026-12-01): " in row
        assert "exploratory" not in row


GUIDANCE_RULES = {
    "method": "guidance/v3",
    "alpha": 0.05,
    "margins": {"exact": 0.1, "clip": 5.0},
    "follows_range": [7, 12.5],
    "oversaturated_from": 15,
    "threshold": {"measure": "mean_saturation", "at": 15, "fit_from": 2, "slope_ratio": 1.5},
}


def _guidance_tests(one_vs_zero: tuple, outside: float, saturation: float) -> pd.DataFrame:
    """A tests table for one family: guidance 1 against 0, outside scales against 7.5, saturation against 7.5."""
    rows = []
    for scale in (0.0, *SCALES[:4], 1.0, 10.0, 12.5, *SCALES[6:]):
        difference, p = (outside, 1e-6) if not 7 <= scale <= 12.5 else (0.0, 1.0)
        row = {"family": "latent", "guidance_scale": scale}
        for name, (value, half, p_value) in {"exact": one_vs_zero[0], "clip": one_vs_zero[1]}.items():
            row |= {f"{name}_vs_unconditional": value, f"{name}_vs_unconditional_ci95_low": value - half}
            row |= {f"{name}_vs_unconditional_ci95_high": value + half, f"{name}_vs_unconditional_p": p_value}
            row |= {f"{name}_vs_reference": difference, f"{name}_vs_reference_p": p}
        for measure in ("mean_saturation", "clipped_fraction", "palette_distance"):
            high = scale >= 15
            row |= {
                f"{measure}_vs_reference": saturation if high else 0.0,
                f"{measure}_vs_reference_p": 1e-6 if high else 1.0,
            }
        rows.append(row)
    return pd.DataFrame(rows)


def test_guidance_rules_that_can_fail_read_each_sub_claim_both_ways():
    knee = _saturation(0.1 + 0.005 * SCALES + 0.02 * np.maximum(0, SCALES - 15))
    holds = _guidance_tests(((0.01, 0.04, 0.8), (1.0, 3.0, 0.6)), outside=-0.2, saturation=0.05)
    verdicts, _ = decide(holds, {"prompt_saturation": knee}, GUIDANCE_RULES, 7.5)
    assert verdicts == ["supported", "supported", "supported"]
    steady = _saturation(0.1 + 0.005 * SCALES)
    fails = _guidance_tests(((0.2, 0.05, 1e-6), (40.0, 5.0, 1e-6)), outside=0.2, saturation=0.05)
    verdicts, _ = decide(fails, {"prompt_saturation": steady}, GUIDANCE_RULES, 7.5)
    assert verdicts == ["not supported", "not supported", "not supported"]
    unclear = _guidance_tests(((0.05, 0.1, 0.3), (2.0, 6.0, 0.5)), outside=0.0, saturation=0.05)
    flat = _saturation(0.1 + 0.005 * SCALES + 0.0025 * np.maximum(0, SCALES - 15), noise=0.05)
    verdicts, _ = decide(unclear, {"prompt_saturation": flat}, GUIDANCE_RULES, 7.5)
    assert verdicts[:2] == ["inconclusive", "inconclusive"]


def test_within_prompt_interval_holds_with_prompts_of_unequal_size():
    rng = np.random.default_rng(3)
    sizes = np.where(np.arange(60) % 2 == 0, 2, 8)
    prompts = np.repeat(np.arange(60), sizes)
    errors = rng.random(len(prompts)) < 0.5
    values = rng.normal(0, 1, 60)[prompts] + rng.normal(0, 0.5, len(prompts)) - 0.8 * errors
    test = group_difference_within(values, errors, Units.of(prompts), permutations=999)
    assert test.low < test.difference < test.high
    assert test.difference == pytest.approx(-0.8, abs=0.15) and test.high < -0.5


def _comparison(exact: tuple, clip: tuple, exact_p: float = 1.0, clip_p: float = 1.0) -> dict:
    """One paired comparison's row as claim 3's measure writes it: (low, high) of each difference, Holm p."""
    return {
        "exact_difference_ci95_low": exact[0],
        "exact_difference_ci95_high": exact[1],
        "clip_difference_ci95_low": clip[0],
        "clip_difference_ci95_high": clip[1],
        "exact_p_holm": exact_p,
        "clip_p_holm": clip_p,
    }


@pytest.mark.parametrize(
    ("row", "v1", "v2"),
    [
        # both intervals inside the margins, even where a test rejects: equivalent under both rules
        (_comparison((-0.04, 0.04), (0.9, 4.5), clip_p=0.005), "equivalent", "equivalent"),
        # significant, and the interval crosses the CLIP margin: v1 calls it different, v2 only nonzero
        (_comparison((-0.05, 0.05), (-6.5, -1.5), clip_p=0.001), "different", "nonzero"),
        # significant, and the interval lies wholly beyond the margin on either side: different under both
        (_comparison((-0.05, 0.05), (-9.0, -5.5), clip_p=0.001), "different", "different"),
        (_comparison((0.12, 0.3), (-1.0, 1.0), exact_p=0.001), "different", "different"),
        # beyond the margin but not significant after Holm: unresolved under both
        (_comparison((0.12, 0.3), (-1.0, 1.0), exact_p=0.2), "unresolved", "unresolved"),
        # an interval beyond its margin counts only for the measure whose test rejected
        (_comparison((0.12, 0.3), (-6.0, -1.0), exact_p=0.2, clip_p=0.01), "different", "nonzero"),
        (_comparison((-0.2, 0.05), (-9.0, 2.0)), "unresolved", "unresolved"),
    ],
)
def test_claim_3_reads_each_comparison_under_its_rule(row, v1, v2):
    margins = {"exact": 0.1, "clip": 5.0}
    assert relation(row, margins, 0.05, "steps/v1") == v1
    assert relation(row, margins, 0.05, "steps/v2") == v2


def test_claim_3_sub_claims_take_nonzero_as_neither_reading():
    assert sub_verdict("equivalent", "equivalent") == SUPPORTED
    assert sub_verdict("different", "equivalent") == NOT_SUPPORTED
    assert sub_verdict("different", "different") == SUPPORTED
    assert sub_verdict("equivalent", "different") == NOT_SUPPORTED
    assert sub_verdict("nonzero", "equivalent") == INCONCLUSIVE
    assert sub_verdict("nonzero", "different") == INCONCLUSIVE
    assert sub_verdict("unresolved", "different") == INCONCLUSIVE


def test_the_plan_recovers_the_spread_per_prompt_from_a_multi_seed_pilot(tmp_path):
    """Two seeds per prompt: the interval is over prompts, so the spread comes from n_prompts, not image pairs."""
    pilot = tmp_path / "03-steps"
    shutil.copytree(REPOSITORY / "results" / "claims" / "pilot" / "03-steps", pilot)
    configs = load_claims(REPOSITORY / "experiments" / "claims", ["03-steps"])
    one_seed = plan_claims(tmp_path, configs)
    for name in ("versus_reference.csv", "short_vs_long.csv"):
        table = pd.read_csv(pilot / name)
        table.assign(n_prompts=table.n_pairs, n_pairs=2 * table.n_pairs).to_csv(pilot / name, index=False)
    two_seeds = plan_claims(tmp_path, configs)
    pd.testing.assert_series_equal(one_seed.pilot_sigma, two_seeds.pilot_sigma)


def test_claim_6s_report_section_shows_the_within_prompt_number_its_verdict_quotes(tmp_path):
    """attention/v3 judges "attributes can bleed" by the within-prompt estimate: the section prints that table, so the
    verdict's number can be read in the report, not only in the verdict line."""
    data = COMMITTED / "data" / "06-cross-attention"
    claim, tables = read_claim(data)
    judgement = judge_attention(claim, claim["rules"], tables, tmp_path, data)
    quoted = re.search(r"cascaded 8x8 (\S+ \[\S+, \S+\])", judgement.numbers).group(1)
    shown = [block.frame for block in judgement.section.blocks if isinstance(block, Table)]
    within = [frame for frame in shown if "errors_minus_correct_within" in frame]
    assert len(within) == 1
    row = within[0][(within[0].family == "cascaded") & (within[0].side == 8)]
    assert row["errors_minus_correct_within"].item() == quoted
    assert row["errors_minus_correct_within_p_holm"].item() < claim["rules"]["alpha"]
