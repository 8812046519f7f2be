"""Judge each claim from its measured tables and write the claims report (report.md + index.html + figures).

Everything here reads ``report/data/<claim>/`` alone, so rebuilding gives the same bytes. Each judge
returns a ``Judgement``: the verdict, one line with the numbers that decide it, and the claim's section.
The rules are written next to each judge and repeated in the report, so a reader can disagree with a rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml

from suite.analysis.claims import INCONCLUSIVE, NOT_RUN, NOT_SUPPORTED, SUPPORTED
from suite.analysis.report.render import Figure, Section, Table, Text, to_html, to_markdown
from suite.analysis.report.tables import with_interval
from suite.core import stats
from suite.core.files import atomic_write_text
from suite.core.stats import ALPHA

PARTLY = "partly supported"
FIGURES = "figures"


@dataclass(frozen=True)
class Judgement:
    verdict: str
    numbers: str
    section: Section


def ci(row, column: str, spec: str = ".3f") -> str:
    """``value [low, high]`` from ``column``, ``column_low`` and ``column_high``."""
    values = row._asdict() if hasattr(row, "_asdict") else row  # a row of itertuples() or of iterrows()
    return with_interval(values[column], values.get(f"{column}_low"), values.get(f"{column}_high"), spec)


def overall(verdicts: list[str]) -> str:
    """A claim's verdict from its sub-claims': all alike gives that; some supported gives partly supported (the
    others do not hold, or cannot be told); none supported but some not gives not supported; else inconclusive."""
    if len(set(verdicts)) == 1:
        return verdicts[0]
    if SUPPORTED in verdicts or PARTLY in verdicts:
        return PARTLY
    return NOT_SUPPORTED if NOT_SUPPORTED in verdicts else INCONCLUSIVE


def save_figure(figure, folder: Path, name: str) -> Path:
    path = Path(FIGURES) / f"{name}.png"
    (folder / FIGURES).mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(folder / path, dpi=90, metadata={"Software": None})
    plt.close(figure)
    return path


def copy_image(source: Path, folder: Path, name: str) -> Path:
    path = Path(FIGURES) / name
    (folder / FIGURES).mkdir(parents=True, exist_ok=True)
    (folder / path).write_bytes(source.read_bytes())
    return path


# -- claim 1 ------------------------------------------------------------------------------------------


def judge_values(claim: dict, tables: dict, folder: Path, data: Path) -> Judgement:
    """Supported when the configs give 48x at SD's 512 px (an exact count, no interval)."""
    profile, times, ratio = tables["profile"], tables["step_times"], tables["time_ratio"].iloc[0]
    sd = profile[(profile.preset == "sd15") & (profile.kind == "latent")].iloc[0]
    pixel_values = 512 * 512 * 3
    factor = pixel_values / sd.values_per_step
    verdict = SUPPORTED if sd.values_per_step == 64 * 64 * 4 and factor == 48 else NOT_SUPPORTED
    numbers = (
        f"SD 1.5 latent {sd.values_per_step:,} values/step vs {pixel_values:,} pixel values at 512 px: {factor:g}x; "
        f"toy pixel/latent time per step {ci(ratio, 'ratio', '.2f')} for {ratio.values_ratio:g}x the values"
    )
    section = Section(
        f"Claim {claim['claim']}: {claim['title']}",
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
                times.assign(ms_per_step=[ci(row, "ms_per_step", ".1f") for _, row in times.iterrows()])[
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


# -- claim 2 ------------------------------------------------------------------------------------------


def judge_trajectories(claim: dict, tables: dict, folder: Path, data: Path) -> Judgement:
    """Per family and sampler: supported if colour, count and position settle (interval's upper end) by
    structure_by_step + tolerance; not supported if any settles (interval's lower end) after it."""
    settings = claim["settings"]
    limit = settings["structure_by_step"] + settings["tolerance_steps"]
    settled, per_step = tables["settled"], tables["per_step"]
    structure = settled[settled.attribute.isin(["count", "colour", "position"])]
    verdicts, lines = [], []
    for (family, sampler), rows in structure.groupby(["family", "sampler"], sort=True):
        if (rows.settled_step_high <= limit).all():
            verdicts.append(SUPPORTED)
        elif (rows.settled_step_low > limit).any():
            verdicts.append(NOT_SUPPORTED)
        else:
            verdicts.append(INCONCLUSIVE)
        latest = rows.sort_values("settled_step").iloc[-1]
        lines.append(f"{family} {sampler}: {latest.attribute} by step {ci(latest, 'settled_step', '.0f')}")
    verdict = overall(verdicts)
    by = settings["structure_by_step"]
    similarity = per_step[per_step.step.isin([5, by, 2 * by])].assign(
        cosine=lambda frame: [ci(row, "clip_to_final") for _, row in frame.iterrows()]
    )
    similarity = similarity.pivot_table(index=["family", "sampler"], columns="step", values="cosine", aggfunc="first")
    similarity.columns = [f"step {step}" for step in similarity.columns]
    at_by = per_step[per_step.step == by]
    for family, rows in at_by.groupby("family", sort=True):
        lines.append(
            f"{family}: toy-CLIP cosine of step {by}'s x0 to the final image "
            f"{rows.clip_to_final.min():.2f}-{rows.clip_to_final.max():.2f} across samplers"
        )
    table = settled.assign(settled=[ci(row, "settled_step", ".1f") for _, row in settled.iterrows()])
    table = table.pivot_table(index=["family", "sampler"], columns="attribute", values="settled", aggfunc="first")
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    for axis, (family, rows) in zip(axes, per_step.groupby("family", sort=True)):
        for sampler, line in rows.groupby("sampler", sort=True):
            axis.plot(line.step, line.colour_final, label=f"{sampler}: colour final")
            axis.plot(line.step, line.exact_match, linestyle="--", label=f"{sampler}: exact match")
            axis.fill_between(line.step, line.colour_final_low, line.colour_final_high, alpha=0.15)
        axis.axvline(settings["structure_by_step"], color="grey", linewidth=0.8)
        axis.set_title(f"{family}: decoded x0 per step")
        axis.set_xlabel("step (of 50)")
    axes[0].set_ylabel("share of images")
    axes[1].legend(fontsize=7)
    blocks = [
        Text(
            f"Rule: an attribute settles at the first step from which at least {settings['settled_share']:.0%} of "
            f"images show their final value at every later step (bootstrap interval over images). The claim is "
            f"supported for a family and sampler when object count, colours and positions all settle by step "
            f"{limit} (the claim's {settings['structure_by_step']}, plus {settings['tolerance_steps']} for its '~'); "
            "shape is reported but not required (it needs sharp edges, which come late)."
        ),
        Table(table.reset_index()),
        Text(
            "A softer reading of 'recognisable': the toy-CLIP cosine similarity of each step's decoded x0 to the final "
            "image (1 at the last step), mean over images with its BCa interval. It is reported, not judged: the "
            "rule above was fixed before measuring."
        ),
        Table(similarity.reset_index()),
        Figure(
            save_figure(figure, folder, "claim2-settling"),
            "Share of images whose decoded x0 already shows its final colours (band: Wilson 95%), and exact match to the prompt, per step",
        ),
    ]
    for path in sorted(data.glob("x0-strip-*.png")):
        label = path.stem.removeprefix("x0-strip-")
        steps = ", ".join(str(step) for step in settings["strip_steps"])
        blocks.append(Figure(copy_image(path, folder, f"claim2-{path.name}"), f"{label}: decoded x0 at steps {steps}"))
    return Judgement(verdict, "; ".join(lines), Section(f"Claim {claim['claim']}: {claim['title']}", blocks))


# -- claim 3 ------------------------------------------------------------------------------------------


EQUIVALENT, DIFFERENT, UNRESOLVED = "equivalent", "different", "unresolved"


def relation(row, margins: dict) -> str:
    """A paired comparison's reading: ``equivalent`` if both differences' 95% intervals lie inside the equivalence
    margins (a conservative two one-sided tests: a difference can be detectable and still too small to matter);
    else ``different`` if a Holm-adjusted test rejects at 5%; else ``unresolved`` (too few images to tell)."""
    inside = all(
        -margin <= row[f"{name}_difference_low"] and row[f"{name}_difference_high"] <= margin
        for name, margin in (("exact", margins["exact"]), ("clip", margins["clip"]))
    )
    if inside:
        return EQUIVALENT
    return DIFFERENT if row["exact_p_holm"] < ALPHA or row["clip_p_holm"] < ALPHA else UNRESOLVED


def _equivalent_from(rows: pd.DataFrame) -> float:
    """Smallest step count from which every larger count is equivalent to the reference (NaN if none)."""
    rows = rows.sort_values("num_inference_steps")
    equivalent = (rows.relation == EQUIVALENT).to_numpy()
    if not equivalent[-1]:
        return math.nan
    first = len(equivalent) - int(np.argmin(equivalent[::-1])) if not equivalent.all() else 0
    return float(rows.num_inference_steps.iloc[first])


def _sub_verdict(found: str, supports: str) -> str:
    if found == UNRESOLVED:
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


def judge_steps(claim: dict, tables: dict, folder: Path, data: Path) -> Judgement:
    """Sub-claims per family, each from paired comparisons read by ``relation``: (a) 20 and 50 steps are
    equivalent for each solver; (b) DPM-Solver++ at 20 steps is equivalent to the reference (DDPM, 1000 steps);
    (c) DDIM at 50 is; (d) DDPM needs ~1000: its 250-step point differs from the reference (supported) or is
    equivalent to it (not supported)."""
    points, versus, short_long = tables["points"], tables["versus_reference"], tables["short_vs_long"]
    reference, margins = claim["settings"]["reference"], claim["settings"]["equivalence_margins"]
    versus = versus.assign(relation=[relation(row, margins) for _, row in versus.iterrows()])
    short_long = short_long.assign(relation=[relation(row, margins) for _, row in short_long.iterrows()])
    verdicts, lines, onset_rows = [], [], []
    for family, rows in versus.groupby("family", sort=True):
        for sampler, group in rows.groupby("sampler", sort=True):
            onset_rows.append({"family": family, "sampler": sampler, "equivalent_from_steps": _equivalent_from(group)})

        def at(sampler: str, steps: int, rows=rows) -> str:
            found = rows[(rows.sampler == sampler) & (rows.num_inference_steps == steps)].relation
            return found.iloc[0] if len(found) else UNRESOLVED

        pairs = short_long[short_long.family == family]
        checks = {
            "20 ~ 50 steps": overall([_sub_verdict(found, EQUIVALENT) for found in pairs.relation]),
            "DPM-Solver++ by 20": _sub_verdict(at("dpm-solver++", 20), EQUIVALENT),
            "DDIM by 50": _sub_verdict(at("ddim", 50), EQUIVALENT),
            "DDPM needs > 250": _sub_verdict(at("ddpm", 250), DIFFERENT),
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
            with_interval(r.clip_score_mean, r.clip_score_ci95_low, r.clip_score_ci95_high, ".3f")
            for r in points.itertuples()
        ],
        fid_toy_clip=[with_interval(r.fid, r.fid_ci95_low, r.fid_ci95_high, ".1f") for r in points.itertuples()],
    )[["family", "sampler", "num_inference_steps", "n_images", "exact_match", "clip_score", "fid_toy_clip"]]
    tests, pair_table = _paired_table(versus, "sampler"), _paired_table(short_long, "versus")
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    for axis, (family, rows) in zip(axes, points.groupby("family", sort=True)):
        for sampler, line in rows.groupby("sampler", sort=True):
            line = line.sort_values("num_inference_steps")
            axis.errorbar(
                line.num_inference_steps,
                line.toy_correct,
                yerr=[line.toy_correct - line.toy_correct_ci95_low, line.toy_correct_ci95_high - line.toy_correct],
                marker="o",
                capsize=2,
                label=sampler,
            )
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
            f"match +-{margins['exact']:g}, CLIP score +-{margins['clip']:g}), else different (a Holm-adjusted test "
            "rejects at 5%), else unresolved (too few images to tell either way; more seeds per prompt resolve it). "
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
    return Judgement(verdict, "; ".join(lines), Section(f"Claim {claim['claim']}: {claim['title']}", blocks))


# -- claim 4 ------------------------------------------------------------------------------------------


def judge_guidance(claim: dict, tables: dict, folder: Path, data: Path) -> Judgement:
    """Per family, Holm-adjusted within the family: (a) "1 ignores the prompt": guidance 1 follows the prompt no
    better than guidance 0 (the model without its prompt) in exact match and CLIP score; not supported if it is
    significantly better in either; (b) "7-12 follows the prompt": some scale in 7-12.5 is not significantly below
    the best scale in either measure; (c) "above ~15 oversaturate": at 15 or more, some saturation measure is
    significantly above its level at the reference scale."""
    points, tests, world = tables["points"], tables["tests"], tables["world_level"]
    verdicts, lines = [], []
    for family, rows in tests.groupby("family", sort=True):
        rows = rows.sort_values("guidance_scale")
        at_one = rows[rows.guidance_scale == 1.0].iloc[0]
        if "exact_vs_unconditional_p_holm" in rows and not pd.isna(at_one.exact_vs_unconditional_p_holm):
            better = (at_one.exact_vs_unconditional_p_holm < ALPHA and at_one.exact_vs_unconditional > 0) or (
                at_one.clip_vs_unconditional_p_holm < ALPHA and at_one.clip_vs_unconditional > 0
            )
            ignores = NOT_SUPPORTED if better else SUPPORTED
            ignore_text = f"1 vs 0: exact {ci(at_one, 'exact_vs_unconditional')}, CLIP {ci(at_one, 'clip_vs_unconditional', '.2f')}"
        else:
            ignores, ignore_text = INCONCLUSIVE, "no guidance-0 baseline"
        scales = rows[rows.guidance_scale >= 1]
        worse = ((scales.exact_vs_best_p_holm < ALPHA) & (scales.exact_vs_best < 0)) | (
            (scales.clip_vs_best_p_holm < ALPHA) & (scales.clip_vs_best < 0)
        )
        good = scales[~worse].guidance_scale
        follows = bool(((good >= 7) & (good <= 12.5)).any())
        high = rows[rows.guidance_scale >= 15]
        saturates = bool(
            (
                ((high.mean_saturation_vs_reference_p_holm < ALPHA) & (high.mean_saturation_vs_reference > 0))
                | ((high.clipped_fraction_vs_reference_p_holm < ALPHA) & (high.clipped_fraction_vs_reference > 0))
                | ((high.palette_distance_vs_reference_p_holm < ALPHA) & (high.palette_distance_vs_reference > 0))
            ).any()
        )
        verdicts += [ignores, *(SUPPORTED if holds else NOT_SUPPORTED for holds in (follows, saturates))]
        best = rows.best_guidance.iloc[0]
        lines.append(
            f"{family}: best scale {best:g}; not significantly below it: {', '.join(f'{g:g}' for g in good)}; "
            f"1 ignores the prompt: {ignores} ({ignore_text}); oversaturated at >= 15: {'yes' if saturates else 'no'}"
        )
    verdict = overall(verdicts)
    shown = points.sort_values(["family", "guidance_scale"]).assign(
        exact_match=[
            with_interval(r.toy_correct, r.toy_correct_ci95_low, r.toy_correct_ci95_high, ".3f")
            for r in points.sort_values(["family", "guidance_scale"]).itertuples()
        ],
    )
    shown = shown.assign(
        clip_score=[
            with_interval(r.clip_score_mean, r.clip_score_ci95_low, r.clip_score_ci95_high, ".3f")
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
        axes[0].errorbar(
            rows.guidance_scale,
            rows.toy_correct,
            yerr=[rows.toy_correct - rows.toy_correct_ci95_low, rows.toy_correct_ci95_high - rows.toy_correct],
            marker="o",
            capsize=2,
            label=family,
        )
        axes[1].errorbar(
            rows.guidance_scale,
            rows.mean_saturation,
            yerr=[rows.mean_saturation - rows.mean_saturation_low, rows.mean_saturation_high - rows.mean_saturation],
            marker="o",
            capsize=2,
            label=family,
        )
        axes[2].errorbar(
            rows.guidance_scale,
            rows.palette_distance,
            yerr=[
                rows.palette_distance - rows.palette_distance_low,
                rows.palette_distance_high - rows.palette_distance,
            ],
            marker="o",
            capsize=2,
            label=family,
        )
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
            "Saturation measures (`suite/verdicts/saturation.py`): mean HSV saturation, share of pixels with a "
            "channel at 0 or 255, mean RGB distance to the nearest palette colour. The toy world's own images: "
            + ", ".join(f"{name} {value:.4g}" for name, value in world_levels.items())
            + f". Saturation is compared with guidance {claim['settings']['reference_guidance']:g} image by image "
            "(paired permutation), prompt following with each family's best scale (exact McNemar on exact match, "
            "paired permutation on CLIP score); Holm within a family. Guidance 0 is the model without its prompt "
            "(for the cascade: its base stage, which lays out the image; the x4 stage keeps its text)."
        ),
        Table(shown),
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
    blocks.append(Text("Sub-claims: " + "; ".join(lines) + "."))
    return Judgement(verdict, "; ".join(lines), Section(f"Claim {claim['claim']}: {claim['title']}", blocks))


# -- claim 5 ------------------------------------------------------------------------------------------


def judge_determinism(claim: dict, tables: dict, folder: Path, data: Path) -> Judgement:
    """Supported on one machine when every rerun, shard and resume gives identical sha256 and another batch size
    stays within 1/255; the device rows (CPU vs GPU) are reported, and make it partly supported if they differ."""
    comparisons = tables["comparisons"]
    here = comparisons[~comparisons.comparison.str.startswith("CPU vs GPU")]
    exact = here[here.comparison != "batch size"]
    batch = here[here.comparison == "batch size"]
    same_machine = bool((exact.sha256_match == 1).all() and (batch.max_pixel_difference <= 1).all())
    devices = comparisons[comparisons.comparison.str.startswith("CPU vs GPU")]
    verdict = SUPPORTED if same_machine else NOT_SUPPORTED
    if same_machine and len(devices) and (devices.max_pixel_difference > 1).any():
        verdict = PARTLY
    shown = comparisons.assign(sha256_match=[ci(row, "sha256_match") for _, row in comparisons.iterrows()])
    numbers = "; ".join(
        f"{row.comparison}: sha256 {ci(row, 'sha256_match')}, max pixel difference {row.max_pixel_difference}"
        for row in comparisons.itertuples()
    )
    blocks = [
        Text(
            "One small sweep (both toy families, a deterministic and a stochastic sampler) made several ways and "
            "compared image by image with the first run (`suite diff`). Seeds are per image on CPU generators, so "
            "the noise never depends on batch, shard or process; another batch size changes the order of floating-point "
            "sums, which may move a pixel by one level. Across devices the kernels themselves differ, and over many "
            "denoising steps small differences can grow into a different image (the CPU vs GPU rows were measured "
            "with `suite diff` on a lent GPU; see results/gpu-check.md)."
        ),
        Table(
            shown[["comparison", "how", "images", "sha256_match", "max_pixel_difference", "images_within_1", "device"]],
            {"images_within_1": ".3f"},
        ),
    ]
    return Judgement(verdict, numbers, Section(f"Claim {claim['claim']}: {claim['title']}", blocks))


# -- claim 6 ------------------------------------------------------------------------------------------


def judge_attention(claim: dict, tables: dict, folder: Path, data: Path) -> Judgement:
    """(a) "Works at several resolutions": per family, at two or more UNet resolutions the colour words' attention
    lands on their own object more than uniform attention would (bleed significantly below chance, Holm across
    the table). (b) "Attributes can bleed": pair images with a colour on the wrong object (binding errors) occur,
    the binding accuracy's Wilson interval staying below 1. Whether attention bleed is higher in those images
    (Holm) is reported as the mechanism, not judged."""
    summary, maps = tables["summary"], tables["example_maps"]
    summary = summary.assign(bleed_minus_chance_p_holm=stats.holm(summary.bleed_minus_chance_p.to_numpy()))
    if "bleed_errors_minus_correct_p" in summary:
        tested = summary.bleed_errors_minus_correct_p.notna().to_numpy()
        adjusted = np.full(len(summary), np.nan)
        adjusted[tested] = stats.holm(summary.bleed_errors_minus_correct_p.to_numpy()[tested])
        summary = summary.assign(bleed_errors_minus_correct_p_holm=adjusted)
    verdicts, lines = [], []
    for family, rows in summary.groupby("family", sort=True):
        localised = rows[(rows.bleed_minus_chance_p_holm < ALPHA) & (rows.bleed_minus_chance < 0)]
        verdicts.append(SUPPORTED if len(localised) >= 2 else NOT_SUPPORTED)
        lines.append(f"{family}: localised at {', '.join(f'{s}x{s}' for s in localised.side) or 'no resolution'}")
    binding = summary.drop_duplicates("family")
    bleeds = bool((binding.binding_high < 1).all())
    verdicts.append(SUPPORTED if bleeds else NOT_SUPPORTED)
    lines.append(
        "binding accuracy on pair prompts "
        + ", ".join(f"{row.family} {ci(row, 'binding')}" for row in binding.itertuples())
    )
    if "bleed_errors_minus_correct_p_holm" in summary:
        related = summary[
            (summary.bleed_errors_minus_correct_p_holm < ALPHA) & (summary.bleed_errors_minus_correct > 0)
        ]
        lines.append(
            "more attention bleed in binding errors (Holm) at "
            + (", ".join(f"{r.family} {r.side}x{r.side}" for r in related.itertuples()) or "no resolution")
        )
    verdict = overall(verdicts)
    shown = summary.assign(
        bleed=[ci(row, "bleed") for _, row in summary.iterrows()],
        bleed_minus_chance=[ci(row, "bleed_minus_chance") for _, row in summary.iterrows()],
        binding=[ci(row, "binding") for _, row in summary.iterrows()],
        errors_minus_correct=[
            ci(row, "bleed_errors_minus_correct")
            if "bleed_errors_minus_correct" in row and not pd.isna(row["bleed_errors_minus_correct"])
            else ""
            for _, row in summary.iterrows()
        ],
    )
    columns = [
        "family",
        "side",
        "images",
        "bleed",
        "bleed_minus_chance",
        "bleed_minus_chance_p_holm",
        "text_mass",
        "binding",
        "binding_errors",
        "errors_minus_correct",
    ]
    if "bleed_errors_minus_correct_p_holm" in shown:
        columns.append("bleed_errors_minus_correct_p_holm")
    blocks = [
        Text(
            "Bleed of a colour word: the share of its on-object attention that falls on the other object (0: all on "
            "its own object; chance is what uniform attention would give: 0.5 when averaged over the two colour words). Objects are the final image's "
            "pixels of each colour. Maps are averaged over heads, layers of one resolution and the 20 steps, for the "
            "conditional half of the guided batch. text_mass: share of attention on text tokens (1 for SD-style "
            "cross-attention; IF's layers attend to text and image tokens together). Bleed vs chance: paired "
            "permutation; errors vs correct: two-sample permutation, bootstrap interval."
        ),
        Table(
            shown[columns],
            {"bleed_minus_chance_p_holm": ".3g", "bleed_errors_minus_correct_p_holm": ".3g", "text_mass": ".3f"},
        ),
    ]
    for family, rows in maps.groupby("family", sort=True):
        sides = sorted(rows.side.unique())
        words = list(dict.fromkeys(rows.word))
        example = data / f"attention-example-{family}.png"
        figure, axes = plt.subplots(
            len(words), len(sides) + 1, figsize=(2.2 * (len(sides) + 1), 2.2 * len(words)), squeeze=False
        )
        for row_index, word in enumerate(words):
            axes[row_index, 0].imshow(plt.imread(example))
            axes[row_index, 0].set_title("image" if row_index == 0 else "")
            for column, side in enumerate(sides, start=1):
                cells = rows[(rows.word == word) & (rows.side == side)]
                grid = np.zeros((side, side))
                grid[cells.y, cells.x] = cells.attention
                axes[row_index, column].imshow(grid, cmap="magma")
                axes[row_index, column].set_title(f"'{word}' {side}x{side}")
        for axis in axes.ravel():
            axis.axis("off")
        blocks.append(
            Figure(
                save_figure(figure, folder, f"claim6-maps-{family}"),
                f"{family}: cross-attention of each colour word per UNet resolution ('{claim['settings']['example_prompt']}')",
            )
        )
    return Judgement(verdict, "; ".join(lines), Section(f"Claim {claim['claim']}: {claim['title']}", blocks))


# -- claim 7 ------------------------------------------------------------------------------------------


def judge_cost(claim: dict, tables: dict, folder: Path, data: Path) -> Judgement:
    """Supported when the measured seconds ratio (cascaded / latent) at matched quality has its interval above 1
    and the counted FLOPs ratios (toy and real architectures) are above 1."""
    ratios, matched, real = tables["ratios"], tables["matched"], tables["real"]
    above = bool((ratios.ratio_low > 1).all())
    below = bool((ratios.ratio_high < 1).any())
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
    return Judgement(verdict, numbers, Section(f"Claim {claim['claim']}: {claim['title']}", blocks))


# -- claim 8 ------------------------------------------------------------------------------------------


def judge_step_time(claim: dict, tables: dict, folder: Path, data: Path) -> Judgement:
    """Judged only from a consumer GPU's bench table: supported if its median ms/step lies in the claimed range."""
    bench = tables["bench"]
    low, high = claim["settings"]["claimed_ms"]
    consumer = bench[bench.consumer_gpu.astype(bool)] if len(bench) else bench
    if len(consumer) == 0:
        verdict = NOT_RUN
    else:
        inside = consumer.step_ms_median.between(low, high)
        verdict = SUPPORTED if inside.all() else (NOT_SUPPORTED if not inside.any() else PARTLY)
    numbers = (
        "; ".join(
            f"{row.device_name} {row.dtype}{' compiled' if row.compile else ''}: {row.step_ms_median:.1f} ms/step [IQR {row.step_ms_q1:.1f}, {row.step_ms_q3:.1f}]"
            for row in bench.itertuples()
        )
        or "no bench table"
    )
    blocks = [
        Text(
            "The claim is about consumer GPUs; no consumer GPU was measured, so the verdict waits for one "
            "(the claim file gives the command). What was measured, SD 1.5's UNet at 512 px, batch 1, guided "
            "(two evaluations per step), median and interquartile range of the steps:"
            if verdict == NOT_RUN
            else f"SD 1.5's UNet at 512 px, batch 1, guided; the claim's range is {low}-{high} ms per step."
        ),
        Table(
            bench.drop(columns=["consumer_gpu"]), {"step_ms_median": ".1f", "step_ms_q1": ".1f", "step_ms_q3": ".1f"}
        ),
    ]
    return Judgement(verdict, numbers, Section(f"Claim {claim['claim']}: {claim['title']}", blocks))


JUDGES: dict[str, Callable[..., Judgement]] = {
    "values": judge_values,
    "trajectories": judge_trajectories,
    "steps": judge_steps,
    "guidance": judge_guidance,
    "determinism": judge_determinism,
    "attention": judge_attention,
    "cost": judge_cost,
    "step-time": judge_step_time,
}


def read_claim(folder: Path) -> tuple[dict, dict[str, pd.DataFrame]]:
    claim = yaml.safe_load((folder / "claim.yaml").read_text(encoding="utf-8"))
    tables = {path.stem: pd.read_csv(path) for path in sorted(folder.glob("*.csv"))}
    return claim, tables


def judge_all(report: Path) -> list[tuple[dict, Judgement]]:
    judged = []
    for folder in sorted((report / "data").iterdir()):
        if not (folder / "claim.yaml").is_file():
            continue
        claim, tables = read_claim(folder)
        judged.append((claim, JUDGES[claim["measure"]](claim, tables, report, folder)))
    return sorted(judged, key=lambda pair: pair[0]["claim"])


def build_claims_report(report: Path) -> Path:
    """Write ``report.md`` and ``index.html`` from ``report/data`` alone; return the folder."""
    judged = judge_all(report)
    overview = pd.DataFrame(
        [
            {
                "claim": claim["claim"],
                "statement": claim["statement"],
                "verdict": judgement.verdict,
                "numbers": judgement.numbers,
            }
            for claim, judgement in judged
        ]
    )
    sections = [
        Section(
            "Verdicts",
            [
                Text(
                    "Each claim of the background article, measured on the toy world (CPU) unless said otherwise. "
                    "Verdicts: supported, partly supported (some sub-claims hold; the others do not, or cannot be told "
                    "yet), not supported, "
                    "inconclusive (the tests cannot tell), not run here (needs hardware this build did not have). "
                    "Every number carries its 95% interval; rules are stated in each section. Rebuild with "
                    "`suite claims --report-only`; remeasure with `suite claims` after deleting a claim's data folder."
                ),
                Table(overview),
            ],
        ),
        *(judgement.section for _, judgement in judged),
        Section(
            "Also: the DDIM collapse on the toy cascade",
            [
                Text(
                    "DDIM on a model that thresholds its x0 prediction (IF, the toy cascade) must step along the "
                    "thresholded x0 (`use_clipped_model_output`); diffusers' pipelines do not, and at guidance >= 3 "
                    "the toy cascade then collapsed to colour fields. Cause, per-step evidence and paired tests: "
                    "results/claims/ddim-collapse.md. Every DDIM number above uses the fixed step (the sampler "
                    "`ddim`); `ddim-raw-eps` keeps diffusers' step for comparison."
                )
            ],
        ),
    ]
    title = "The article's claims, measured"
    atomic_write_text(report / "report.md", to_markdown(title, sections))
    atomic_write_text(report / "index.html", to_html(title, sections, report))
    return report
