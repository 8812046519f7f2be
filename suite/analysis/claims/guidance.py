"""Claim 4, guidance: prompt following and oversaturation against the guidance scale, paired image by image."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from suite.analysis.claims.claim_file import ClaimConfig
from suite.analysis.claims.common import (
    ClaimsOptions,
    ci,
    claim_section,
    data_dir,
    mean_row,
    overall,
    point_quality,
)
from suite.analysis.claims.experiments import EXPERIMENTS, Experiment, Judgement
from suite.analysis.claims.guidance_rules import METHODS, decide, threshold_table, v3_tests
from suite.analysis.claims.report import copy_image, errorbar, save_figure
from suite.analysis.claims.saturation import MEASURES, saturation_scores
from suite.analysis.report.render import Figure, Table, Text
from suite.analysis.report.tables import with_interval
from suite.core import paired, stats
from suite.toy.world import sample_batch


def measure_guidance(config: ClaimConfig, runs: dict, options: ClaimsOptions) -> dict[str, pd.DataFrame]:
    keys = ["family", "guidance_scale"]
    images, points = [], []
    for run in runs.values():  # the guidance scales, and guidance 0 (the unconditional model) as a baseline
        run_images, run_points = point_quality(run, [*keys, "preset"])
        images.append(run_images.assign(image_file=[str(run / path) for path in run_images["image_path"]]))
        points.append(run_points)
    images, points = pd.concat(images, ignore_index=True), pd.concat(points, ignore_index=True)
    saturation = pd.DataFrame(
        [saturation_scores(np.asarray(Image.open(path).convert("RGB"))) for path in images["image_file"]],
        index=images.index,
    )
    images = pd.concat([images, saturation], axis=1)
    for measure_name in MEASURES:
        summary = images.groupby(keys)[measure_name].apply(
            lambda values, name=measure_name: pd.Series(mean_row(name, values.to_numpy()))
        )
        points = points.merge(summary.unstack().reset_index(), on=keys, how="left")
    world, _ = sample_batch(seed=0, count=256)
    world_level = pd.DataFrame([saturation_scores(image) for image in world]).agg(["mean"]).T.reset_index()
    world_level.columns = ["measure", "toy_world_mean"]
    reference = float(config.settings.get("reference_guidance", 7.5))
    indexed = images.set_index([*keys, "prompt_index", "seed_index"]).sort_index()
    tests = []

    def prompt_following(name: str, base: pd.DataFrame, other: pd.DataFrame) -> dict[str, float]:
        other = other.reindex(base.index)
        units = stats.Units.of(base.index.get_level_values("prompt_index"))
        exact = paired.paired_binary(base["toy_correct"], other["toy_correct"], units)
        clip = paired.paired_permutation(base["clip_score"], other["clip_score"], units)
        return {
            f"exact_vs_{name}": exact.difference,
            f"exact_vs_{name}_ci95_low": exact.low,
            f"exact_vs_{name}_ci95_high": exact.high,
            f"exact_vs_{name}_p": exact.p_value,
            f"clip_vs_{name}": clip.difference,
            f"clip_vs_{name}_ci95_low": clip.low,
            f"clip_vs_{name}_ci95_high": clip.high,
            f"clip_vs_{name}_p": clip.p_value,
        }

    for family, rows in points.groupby("family", sort=True):
        scales = rows[rows["guidance_scale"] >= 1]  # guidance 0 is the unconditional baseline, not a candidate
        best = scales.sort_values(["toy_correct", "clip_score_mean"], ascending=False).iloc[0]["guidance_scale"]
        base_best = indexed.loc[(family, best)]
        base_reference = indexed.loc[(family, reference)]
        unconditional = indexed.loc[(family, 0.0)] if (rows["guidance_scale"] == 0).any() else None
        for guidance in sorted(rows["guidance_scale"]):
            other = indexed.loc[(family, guidance)]
            row = {"family": family, "guidance_scale": guidance, "best_guidance": best}
            row |= prompt_following("best", base_best, other)
            row |= prompt_following("reference", base_reference, other)
            if unconditional is not None and guidance == 1.0:
                row |= prompt_following("unconditional", unconditional, other)
            for measure_name in MEASURES:
                test = paired.paired_permutation(
                    base_reference[measure_name],
                    other.reindex(base_reference.index)[measure_name],
                    stats.Units.of(base_reference.index.get_level_values("prompt_index")),
                )
                row |= {
                    f"{measure_name}_vs_reference": test.difference,
                    f"{measure_name}_vs_reference_ci95_low": test.low,
                    f"{measure_name}_vs_reference_ci95_high": test.high,
                    f"{measure_name}_vs_reference_p": test.p_value,
                }
            tests.append(row)
    tests = pd.DataFrame(tests)
    p_columns = [column for column in tests.columns if column.endswith("_p")]
    for _, rows in tests.groupby("family"):  # Holm across every test of a family (untested cells stay NaN)
        values = rows[p_columns].to_numpy(dtype=float).ravel()
        adjusted = np.full(values.shape, np.nan)
        adjusted[~np.isnan(values)] = stats.holm(values[~np.isnan(values)])
        adjusted = adjusted.reshape(len(rows), len(p_columns))
        for position, column in enumerate(p_columns):
            tests.loc[rows.index, f"{column}_holm"] = adjusted[:, position]
    # each prompt's mean of every saturation measure at each scale (over its seeds): what a rule on the shape of
    # the saturation curve (a change of slope) is judged from, resampling prompts
    prompt_saturation = images.groupby([*keys, "prompt_index"], sort=True)[list(MEASURES)].mean().reset_index()
    examples = images[images["prompt_index"] == int(config.settings.get("example_prompt", 0))]
    data = data_dir(options.out, config)
    data.mkdir(parents=True, exist_ok=True)
    for family, rows in examples.groupby("family"):
        strip = np.concatenate(
            [
                np.asarray(Image.open(row.image_file).convert("RGB"))
                for row in rows.sort_values("guidance_scale").itertuples()
            ],
            axis=1,
        )
        Image.fromarray(strip).save(data / f"guidance-strip-{family}.png")
    return {"points": points, "tests": tests, "world_level": world_level, "prompt_saturation": prompt_saturation}


def _judge(claim: dict, rules: dict, tables: dict, folder: Path, data: Path) -> Judgement:
    verdicts, lines = decide(tables["tests"], tables, rules, float(claim["settings"]["reference_guidance"]))
    verdict = overall(verdicts)
    return Judgement(verdict, "; ".join(lines), _section(claim, rules, tables, folder, data, lines))


def _section(claim: dict, rules: dict, tables: dict, folder: Path, data: Path, lines: list[str]):
    points, tests, world = tables["points"], tables["tests"], tables["world_level"]
    shown = points.sort_values(["family", "guidance_scale"]).assign(
        exact_match=[
            with_interval(r.toy_correct, r.toy_correct_ci95_low, r.toy_correct_ci95_high, ".3f")
            for r in points.sort_values(["family", "guidance_scale"]).itertuples()
        ],
    )
    shown = shown.assign(
        clip_score=[
            with_interval(r.clip_score_mean, r.clip_score_mean_ci95_low, r.clip_score_mean_ci95_high, ".3f")
            for r in shown.itertuples()
        ],
        saturation=[ci(row, "mean_saturation") for _, row in shown.iterrows()],
        clipped=[ci(row, "clipped_fraction", ".4f") for _, row in shown.iterrows()],
        palette_distance=[ci(row, "palette_distance", ".2f") for _, row in shown.iterrows()],
    )[["family", "guidance_scale", "exact_match", "clip_score", "saturation", "clipped", "palette_distance"]]
    test_table = tests.assign(
        exact_vs_best=[ci(row, "exact_vs_best") for _, row in tests.iterrows()],
        clip_vs_best=[ci(row, "clip_vs_best", ".2f") for _, row in tests.iterrows()],
        saturation_vs_ref=[ci(row, "mean_saturation_vs_reference", ".4f") for _, row in tests.iterrows()],
        clipped_vs_ref=[ci(row, "clipped_fraction_vs_reference", ".4f") for _, row in tests.iterrows()],
        palette_vs_ref=[ci(row, "palette_distance_vs_reference", ".2f") for _, row in tests.iterrows()],
    )[
        [
            "family",
            "guidance_scale",
            "exact_vs_best",
            "exact_vs_best_p_holm",
            "clip_vs_best",
            "clip_vs_best_p_holm",
            "saturation_vs_ref",
            "mean_saturation_vs_reference_p_holm",
            "clipped_vs_ref",
            "clipped_fraction_vs_reference_p_holm",
            "palette_vs_ref",
            "palette_distance_vs_reference_p_holm",
        ]
    ]
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for family, rows in points.sort_values("guidance_scale").groupby("family", sort=True):
        errorbar(axes[0], rows, "guidance_scale", "toy_correct", family, ("_ci95_low", "_ci95_high"))
        errorbar(axes[1], rows, "guidance_scale", "mean_saturation", family)
        errorbar(axes[2], rows, "guidance_scale", "palette_distance", family)
    world_levels = dict(zip(world.measure, world.toy_world_mean))
    axes[1].axhline(world_levels["mean_saturation"], color="grey", linewidth=0.8, label="toy world")
    axes[2].axhline(world_levels["palette_distance"], color="grey", linewidth=0.8, label="toy world")
    for axis, label in zip(axes, ("exact match", "mean HSV saturation", "distance to palette (RGB)")):
        axis.set_xlabel("guidance scale")
        axis.set_ylabel(label)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    blocks = [
        Text(
            "Saturation measures (`suite/analysis/claims/saturation.py`): mean HSV saturation, share of pixels with a "
            "channel at 0 or 255, mean RGB distance to the nearest palette colour. The toy world's own images: "
            + ", ".join(f"{name} {value:.4g}" for name, value in world_levels.items())
            + f". Saturation is compared with guidance {claim['settings']['reference_guidance']:g} image by image "
            "(paired permutation), prompt following with each family's best scale (exact McNemar on exact match, "
            "paired permutation on CLIP score); Holm within a family. Guidance 0 is the model without its prompt "
            "(for the cascade: its base stage, which lays out the image; the x4 stage keeps its text)."
        ),
        Table(shown),
        Text(
            "Tests of the first rules (guidance/v1-v2): prompt following against each family's best scale, "
            f"saturation against {claim['settings']['reference_guidance']:g}, Holm across every test of a family:"
        ),
        Table(test_table, {column: ".3g" for column in test_table.columns if column.endswith("_holm")}),
        Figure(
            save_figure(figure, folder, "claim4-guidance"),
            "Exact match, saturation and distance to the palette against guidance (95% intervals)",
        ),
    ]
    for path in sorted(data.glob("guidance-strip-*.png")):
        scales = ", ".join(f"{g:g}" for g in sorted(points.guidance_scale.unique()))
        blocks.append(
            Figure(
                copy_image(path, folder, f"claim4-{path.name}"),
                f"{path.stem.removeprefix('guidance-strip-')}: one prompt at guidance {scales}",
            )
        )
    if rules["method"] == "guidance/v3" and "exact_vs_reference" in tests and "prompt_saturation" in tables:
        blocks += _v3_blocks(tests, tables, rules, claim["settings"]["reference_guidance"])
    if "prompt_saturation" in tables and "threshold" in rules:
        threshold = threshold_table(tables["prompt_saturation"], rules)
        blocks.append(
            Text(
                f"Shape of the saturation curve ({rules['threshold']['measure']}, scales >= "
                f"{rules['threshold']['fit_from']:g}): least squares on each scale's mean with a change of slope at "
                f"{rules['threshold']['at']:g}; slopes per unit of guidance, and the excess of the slope above over "
                f"{rules['threshold']['slope_ratio']:g}x the slope below, each a mean over prompts of that prompt's "
                "own contrast (BCa interval, sign-flip p over prompts)."
            )
        )
        blocks.append(
            Table(
                threshold.assign(
                    **{
                        name: [ci(row, name, ".4f") for _, row in threshold.iterrows()]
                        for name in ("slope_below", "slope_above", "slope_excess")
                    }
                )[
                    [
                        "family",
                        "measure",
                        "scales",
                        "n_prompts",
                        "slope_below",
                        "slope_above",
                        "slope_excess",
                        "slope_excess_p",
                    ]
                ],
                {"slope_excess_p": ".3g"},
            )
        )
    blocks.append(Text("Sub-claims: " + "; ".join(lines) + "."))
    return claim_section(claim, blocks)


def _v3_blocks(tests: pd.DataFrame, tables: dict, rules: dict, reference: float) -> list:
    """The tests guidance/v3's verdict reads, with the Holm adjustment it applies (within a family, across them)."""
    adjusted, _, outside, _ = v3_tests(tests, tables, rules)
    read = adjusted[outside | (adjusted.guidance_scale == 1.0)].sort_values(["family", "guidance_scale"])
    columns = {}
    for name, digits in (("exact", ".3f"), ("clip", ".2f")):
        for against in ("unconditional", "reference"):
            test = f"{name}_vs_{against}"
            columns[test] = [
                ci(row, test, digits) if not pd.isna(row[f"{test}_p"]) else "" for _, row in read.iterrows()
            ]
            columns[f"{test}_p_holm"] = read[f"{test}_p_holm"]
    saturation = f"{rules['threshold']['measure']}_vs_reference"
    columns[saturation] = [
        ci(row, saturation, ".4f") if not pd.isna(row[f"{saturation}_p"]) else "" for _, row in read.iterrows()
    ]
    columns[f"{saturation}_p_holm"] = read[f"{saturation}_p_holm"]
    columns["slope_excess_p_holm"] = read["slope_excess_p_holm"]
    table = pd.DataFrame({"family": read.family, "guidance_scale": read.guidance_scale, **columns})
    low, high = rules["follows_range"]
    return [
        Text(
            f"The tests {rules['method']} reads, Holm-adjusted within a family across all of them (the table above "
            "is adjusted within the earlier rules' family): guidance 1 against 0 (equivalence within exact match "
            f"+-{rules['margins']['exact']:g}, CLIP score +-{rules['margins']['clip']:g}), each scale outside "
            f"{low:g}-{high:g} against {reference:g} (difference = scale - other), saturation at "
            f"{rules['oversaturated_from']:g} and above against {reference:g}, and the change of slope at "
            f"{rules['threshold']['at']:g} (its estimate in the shape table below)."
        ),
        Table(table, {column: ".3g" for column in table.columns if column.endswith("_holm")}),
    ]


EXPERIMENTS.register(
    "guidance",
    Experiment(
        measure_guidance,
        {method: _judge for method in METHODS},
        "prompt following and oversaturation against the guidance scale, paired per image",
    ),
)
