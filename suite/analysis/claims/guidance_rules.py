"""Claim 4's judging rules, one function per registered version (``guidance/v1`` .. ``v3``), and the shape test.

- v1, registered before the first data: guidance 1 below the best scale; some scale in 7-12.5 not below the best;
  oversaturation at >= 15 against the reference scale.
- v2, changed with the first data: guidance 1 against guidance 0; CLIP score as well as exact match.
- v3, registered before the data on every caption of the toy grammar: rules that can fail (equivalence for "1
  ignores the prompt", every outside scale shown worse for "7-12 follows", a change of slope for "above ~15").
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from suite.analysis.claims.common import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, ci
from suite.analysis.claims.saturation import MEASURES
from suite.core import paired, stats


def _holm_within(tests: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Holm across ``columns`` (p-values) of every row of one family, per family; NaN stays NaN."""
    tests = tests.copy()
    for _, rows in tests.groupby("family"):
        values = rows[columns].to_numpy(dtype=float).ravel()
        adjusted = np.full(values.shape, np.nan)
        adjusted[~np.isnan(values)] = stats.holm(values[~np.isnan(values)])
        for position, column in enumerate(columns):
            tests.loc[rows.index, f"{column}_holm"] = adjusted.reshape(len(rows), len(columns))[:, position]
    return tests


def _significant(row, name: str, sign: int, alpha: float) -> bool:
    """Row's ``name`` difference significant (Holm) in the direction ``sign``."""
    p = row.get(f"{name}_p_holm", np.nan)
    return bool(not pd.isna(p) and p < alpha and np.sign(row[name]) == sign)


def _decide_v1(tests: pd.DataFrame, rules: dict) -> tuple[list[str], list[str]]:
    """The rules before the first data: (a) guidance 1 significantly below the best scale in exact match; (b) some
    scale in 7-12.5 not significantly below the best in exact match; (c) oversaturation at >= 15 (Holm)."""
    alpha = rules["alpha"]
    verdicts, lines = [], []
    for family, rows in tests.groupby("family", sort=True):
        rows = rows.sort_values("guidance_scale")
        at_one = rows[rows.guidance_scale == 1.0].iloc[0]
        ignores = _significant(at_one, "exact_vs_best", -1, alpha)
        scales = rows[rows.guidance_scale >= 1]
        good = scales[[not _significant(row, "exact_vs_best", -1, alpha) for _, row in scales.iterrows()]]
        low, high = rules["follows_range"]
        follows = bool(good.guidance_scale.between(low, high).any())
        saturates = _saturates(rows, rules)
        verdicts += [SUPPORTED if holds else NOT_SUPPORTED for holds in (ignores, follows, saturates)]
        lines.append(
            f"{family}: best {rows.best_guidance.iloc[0]:g}, not worse than best at "
            f"{', '.join(f'{g:g}' for g in good.guidance_scale)}; 1 worse than best: {'yes' if ignores else 'no'} "
            f"({ci(at_one, 'exact_vs_best')}); oversaturated at >= {rules['oversaturated_from']:g}: "
            f"{'yes' if saturates else 'no'}"
        )
    return verdicts, lines


def _saturates(rows: pd.DataFrame, rules: dict) -> bool:
    high = rows[rows.guidance_scale >= rules["oversaturated_from"]]
    return any(
        _significant(row, f"{name}_vs_reference", 1, rules["alpha"]) for _, row in high.iterrows() for name in MEASURES
    )


def _decide_v2(tests: pd.DataFrame, rules: dict) -> tuple[list[str], list[str]]:
    """The rules changed with the first data: (a) guidance 1 against guidance 0 (the model without its prompt): not
    supported if significantly better in exact match or CLIP score, else supported; (b) some scale in 7-12.5 not
    significantly below the best in either measure; (c) as before."""
    alpha = rules["alpha"]
    verdicts, lines = [], []
    for family, rows in tests.groupby("family", sort=True):
        rows = rows.sort_values("guidance_scale")
        at_one = rows[rows.guidance_scale == 1.0].iloc[0]
        if not pd.isna(at_one.get("exact_vs_unconditional_p_holm", np.nan)):
            better = _significant(at_one, "exact_vs_unconditional", 1, alpha) or _significant(
                at_one, "clip_vs_unconditional", 1, alpha
            )
            ignores = NOT_SUPPORTED if better else SUPPORTED
            ignore_text = (
                f"1 vs 0: exact {ci(at_one, 'exact_vs_unconditional')}, "
                f"CLIP {ci(at_one, 'clip_vs_unconditional', '.2f')}"
            )
        else:
            ignores, ignore_text = INCONCLUSIVE, "no guidance-0 baseline"
        scales = rows[rows.guidance_scale >= 1]
        worse = [
            _significant(row, "exact_vs_best", -1, alpha) or _significant(row, "clip_vs_best", -1, alpha)
            for _, row in scales.iterrows()
        ]
        good = scales[[not bad for bad in worse]].guidance_scale
        low, high = rules["follows_range"]
        follows = bool(good.between(low, high).any())
        saturates = _saturates(rows, rules)
        verdicts += [ignores, *(SUPPORTED if holds else NOT_SUPPORTED for holds in (follows, saturates))]
        lines.append(
            f"{family}: best scale {rows.best_guidance.iloc[0]:g}; not significantly below it: "
            f"{', '.join(f'{g:g}' for g in good)}; 1 ignores the prompt: {ignores} ({ignore_text}); "
            f"oversaturated at >= {rules['oversaturated_from']:g}: {'yes' if saturates else 'no'}"
        )
    return verdicts, lines


def slope_contrasts(scales: np.ndarray, at: float, ratio: float) -> dict[str, np.ndarray]:
    """Weights over the scales' means giving, by least squares on y = a + b g + c max(0, g - at): the slope below
    ``at`` (b), the slope above it (b + c), and the excess c - (ratio - 1) b (> 0: the slope above is more than
    ``ratio`` times the slope below). Each is linear in the means, so each prompt has its own value of it."""
    scales = np.asarray(scales, dtype=np.float64)
    design = np.column_stack([np.ones_like(scales), scales, np.maximum(0.0, scales - at)])
    solve = np.linalg.pinv(design)  # 3 x scales: coefficients = solve @ means
    below, change = solve[1], solve[2]
    return {"slope_below": below, "slope_above": below + change, "slope_excess": change - (ratio - 1) * below}


def threshold_table(prompt_saturation: pd.DataFrame, rules: dict) -> pd.DataFrame:
    """Per family: the slopes of the registered saturation measure below and above the threshold scale, and the
    excess slope above (mean over prompts of each prompt's contrast, BCa interval and sign-flip p over prompts)."""
    threshold = rules["threshold"]
    rows = []
    for family, frame in prompt_saturation.groupby("family", sort=True):
        frame = frame[frame.guidance_scale >= threshold["fit_from"]]
        wide = frame.pivot_table(index="prompt_index", columns="guidance_scale", values=threshold["measure"])
        wide = wide.dropna()
        weights = slope_contrasts(wide.columns.to_numpy(), threshold["at"], threshold["slope_ratio"])
        row = {"family": family, "measure": threshold["measure"], "scales": len(wide.columns), "n_prompts": len(wide)}
        for name, weight in weights.items():
            values = wide.to_numpy() @ weight
            units = stats.Units.each(len(values))
            test = paired.paired_permutation(np.zeros_like(values), values, units)
            row |= {
                name: test.difference,
                f"{name}_ci95_low": test.low,
                f"{name}_ci95_high": test.high,
                f"{name}_p": test.p_value,
            }
        rows.append(row)
    return pd.DataFrame(rows)


def _equivalent(row, name: str, margin: float) -> bool:
    return bool(-margin <= row[f"{name}_ci95_low"] and row[f"{name}_ci95_high"] <= margin)


def v3_tests(tests: pd.DataFrame, tables: dict, rules: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    """The tests guidance/v3 reads, each kept only where the rule reads it, Holm-adjusted within a family across
    them (``<test>_p_holm``); with the threshold table and the masks of the scales outside the range and at or
    above the oversaturation scale."""
    threshold = threshold_table(tables["prompt_saturation"], rules)
    tests = tests.merge(threshold[["family", "slope_excess_p"]], on="family", how="left")
    tests.loc[tests.guidance_scale != rules["oversaturated_from"], "slope_excess_p"] = np.nan  # one test per family
    columns = [
        "exact_vs_unconditional_p",
        "clip_vs_unconditional_p",
        "exact_vs_reference_p",
        "clip_vs_reference_p",
        *(f"{name}_vs_reference_p" for name in MEASURES),
        "slope_excess_p",
    ]
    low, high = rules["follows_range"]
    outside = ~tests.guidance_scale.between(low, high) & (tests.guidance_scale >= 1)
    for column in ("exact_vs_reference_p", "clip_vs_reference_p"):  # only the scales outside the range are tested
        tests.loc[~outside, column] = np.nan
    for column in ("exact_vs_unconditional_p", "clip_vs_unconditional_p"):
        tests.loc[tests.guidance_scale != 1.0, column] = np.nan
    high_scales = tests.guidance_scale >= rules["oversaturated_from"]
    for name in MEASURES:
        tests.loc[~high_scales, f"{name}_vs_reference_p"] = np.nan
    tests = _holm_within(tests, columns)
    return tests, threshold, outside, high_scales


def _decide_v3(tests: pd.DataFrame, tables: dict, rules: dict, reference: float) -> tuple[list[str], list[str]]:
    """Rules that can fail, registered before the data on the larger prompt set. Per family, Holm across this
    rule's tests: (a) "1 ignores the prompt": guidance 1 equivalent to guidance 0 (both differences' 95% intervals
    inside the margins) is supported, a significant difference either way not supported, else inconclusive;
    (b) "7-12 follows the prompt": every scale outside 7-12.5 significantly worse than the reference scale in exact
    match or CLIP score (and better in neither) is supported, any outside scale significantly better in one and
    worse in neither not supported, else inconclusive; (c) "above ~15 oversaturate": the saturation measure's slope
    above 15 significantly more than ``slope_ratio`` times the slope below, and saturation at >= 15 significantly
    above the reference, is supported; the excess slope's interval below 0 (no threshold: at most that steep)
    not supported; else inconclusive."""
    if "exact_vs_reference" not in tests or "prompt_saturation" not in tables:
        lines = ["the data predate this rule's measurements (vs-reference tests, per-prompt saturation)"]
        return [INCONCLUSIVE], lines
    alpha, margins = rules["alpha"], rules["margins"]
    tests, threshold, outside, high_scales = v3_tests(tests, tables, rules)
    verdicts, lines = [], []
    for family, rows in tests.groupby("family", sort=True):
        at_one = rows[rows.guidance_scale == 1.0].iloc[0]
        if _equivalent(at_one, "exact_vs_unconditional", margins["exact"]) and _equivalent(
            at_one, "clip_vs_unconditional", margins["clip"]
        ):
            ignores = SUPPORTED
        elif any(
            _significant(at_one, f"{name}_vs_unconditional", sign, alpha)
            for name in ("exact", "clip")
            for sign in (1, -1)
        ):
            ignores = NOT_SUPPORTED
        else:
            ignores = INCONCLUSIVE
        others = rows[outside.loc[rows.index]]
        worse = [
            (_significant(r, "exact_vs_reference", -1, alpha) or _significant(r, "clip_vs_reference", -1, alpha))
            and not (_significant(r, "exact_vs_reference", 1, alpha) or _significant(r, "clip_vs_reference", 1, alpha))
            for _, r in others.iterrows()
        ]
        better = [
            (_significant(r, "exact_vs_reference", 1, alpha) or _significant(r, "clip_vs_reference", 1, alpha))
            and not (
                _significant(r, "exact_vs_reference", -1, alpha) or _significant(r, "clip_vs_reference", -1, alpha)
            )
            for _, r in others.iterrows()
        ]
        follows = SUPPORTED if all(worse) and len(worse) else (NOT_SUPPORTED if any(better) else INCONCLUSIVE)
        shape = threshold[threshold.family == family].iloc[0]
        excess_p = rows.loc[rows.guidance_scale == rules["oversaturated_from"], "slope_excess_p_holm"]
        steeper = bool(len(excess_p) and excess_p.iloc[0] < alpha and shape.slope_excess > 0)
        above = any(
            _significant(r, f"{rules['threshold']['measure']}_vs_reference", 1, alpha)
            for _, r in rows[high_scales.loc[rows.index]].iterrows()
        )
        if steeper and above:
            saturates = SUPPORTED
        elif shape.slope_excess_ci95_high < 0:
            saturates = NOT_SUPPORTED
        else:
            saturates = INCONCLUSIVE
        verdicts += [ignores, follows, saturates]
        worse_at = [f"{g:g}" for g, bad in zip(others.guidance_scale, worse) if bad]
        lines.append(
            f"{family}: 1 ignores the prompt: {ignores} (1 - 0: exact {ci(at_one, 'exact_vs_unconditional')}, CLIP "
            f"{ci(at_one, 'clip_vs_unconditional', '.2f')}); 7-12.5 follows best: {follows} (outside scales shown "
            f"worse than {reference:g}: {', '.join(worse_at) or 'none'} of "
            f"{', '.join(f'{g:g}' for g in others.guidance_scale)}); threshold at {rules['threshold']['at']:g}: "
            f"{saturates} ({rules['threshold']['measure']} slope below {ci(shape, 'slope_below', '.4f')}, above "
            f"{ci(shape, 'slope_above', '.4f')} per unit of guidance)"
        )
    return verdicts, lines


def decide(tests: pd.DataFrame, tables: dict, rules: dict, reference: float) -> tuple[list[str], list[str]]:
    """Sub-verdicts and their lines under one registered version of the rules (``rules["method"]``)."""
    if rules["method"] == "guidance/v3":
        return _decide_v3(tests, tables, rules, reference)
    earlier = {"guidance/v1": _decide_v1, "guidance/v2": _decide_v2}[rules["method"]]
    return earlier(_holm_within(tests, [column for column in tests if column.endswith("_p")]), rules)


METHODS = ("guidance/v1", "guidance/v2", "guidance/v3")
