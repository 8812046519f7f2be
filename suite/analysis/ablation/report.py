"""The 2x2 ablation's report, built from ``report/data`` alone (``suite ablation --report-only``).

Reading rule, fixed before measuring: a factor *moves* a measure when its main effect's Holm-adjusted
p-value (across every main effect and interaction of every measure) is below 0.05; the interaction is
named when it passes the same test, and then the simple effects say at which level the factor acts.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import re

import matplotlib.pyplot as plt
import pandas as pd
import yaml

from suite.analysis.ablation.design import DATA, MEASURES
from suite.analysis.registration import REGISTRY_NAME, measurement_lines
from suite.analysis.report.render import Figure, Section, Table, Text, to_html, to_markdown
from suite.analysis.report.tables import with_interval
from suite.core.files import atomic_write_text
from suite.core.stats import ALPHA, format_p

FIGURE = Path("figures") / "interaction.png"
OVER_RUNS_METHOD = (
    "Over training runs: each cell's value is the mean of its {count} runs (every run on the same prompts and seeds); "
    "the contrast's variance is the bootstrap variance over prompts ({resamples} resamples) of that run-averaged "
    "contrast plus each cell's between-run variance / {count} (a random training-run effect, estimated by moments, "
    "each cell with its own variance); interval and p from Student's t with Welch-Satterthwaite degrees of freedom "
    "(df) for the training-run term, the prompt term counted as known. Where the training-run term dominates, df is "
    "near 4 x ({count} - 1) when the cells vary alike and falls toward {count} - 1 when one cell's runs dominate. "
    "se: prompts / runs gives the two parts of the standard error. Holm within each family across every measure "
    "and every grid point together (the conditional effects: within each grid point)."
)


def _read(report: Path) -> tuple[dict, dict[str, pd.DataFrame]]:
    folder = report / DATA
    config = yaml.safe_load((folder / "ablation.yaml").read_text(encoding="utf-8"))
    tables = {path.stem: pd.read_csv(path) for path in sorted(folder.glob("*.csv"))}
    # data measured before one interval convention: bare low/high (cells, effects) and <x>_low/_high (costs)
    former = {"cells": "value", "effects": "estimate"}
    for name, table in tables.items():
        if name in former and "low" in table:
            value = former[name]
            names = {"low": f"{value}_ci95_low", "high": f"{value}_ci95_high", "interval": f"{value}_interval"}
            table = table.rename(columns=names)
        tables[name] = table.rename(columns=lambda column: re.sub(r"(?<!_ci95)_(low|high)$", r"_ci95_\1", column))
    return config, tables


def _display(measure: str) -> str:
    return next(item.display for item in MEASURES if item.column == measure)


def _effect_text(row, spec: str) -> str:
    """``+0.12 [0.05, 0.19] (better, Holm p 0.001)``: the direction from the measure's orientation."""
    text = with_interval(row.estimate, row.estimate_ci95_low, row.estimate_ci95_high, spec)
    better = (row.estimate > 0) == bool(row.higher_is_better)
    holm = f"{row.p_holm:.2g}"
    if getattr(row, "p_resolution", 0) and row.p_holm <= row.p_resolution:  # below what the resamples resolve
        holm = format_p(row.p_holm, row.p_resolution)
    return f"{text} ({'better' if better else 'worse'}, Holm p {holm})"


def verdict_lines(config: dict, effects: pd.DataFrame, cost_effects: pd.DataFrame) -> list[str]:
    """One line per measure: which factors move it (significant main effects), and the interaction if significant;
    then cost."""
    lines = []
    tested = effects[effects["kind"].isin(["main", "interaction"])]
    for measure, rows in tested.groupby("measure", sort=False):
        spec = _display(measure)
        label = rows["label"].iloc[0]
        moving = [row for row in rows.itertuples() if row.kind == "main" and row.p_holm < ALPHA]
        interaction = next(row for row in rows.itertuples() if row.kind == "interaction")
        if moving:
            said = "; ".join(f"{row.effect} {_effect_text(row, spec)}" for row in moving)
            text = f"- {label} is moved by {said}"
        else:
            text = f"- {label}: neither factor moves it significantly"
        if interaction.p_holm < ALPHA:
            simple = effects[(effects["measure"] == measure) & (effects["kind"] == "simple")]
            parts = "; ".join(f"{row.effect} {_effect_text(row, spec)}" for row in simple.itertuples())
            text += f"; the factors interact ({_effect_text(interaction, spec)}): {parts}"
        else:
            text += "; no significant interaction"
        lines.append(text + ".")
    main_cost = cost_effects[cost_effects["kind"] == "main"]
    cost = "; ".join(
        f"{row.effect} x{with_interval(row.seconds_ratio, row.seconds_ratio_ci95_low, row.seconds_ratio_ci95_high, '.2f')} "
        f"seconds, x{row.flops_ratio:.2f} FLOPs"
        for row in main_cost.itertuples()
    )
    lines.append(f"- Cost per image (ratio, second level over first): {cost}.")
    return lines


def _two_by_two(config: dict, cells: pd.DataFrame, measure: str) -> pd.DataFrame:
    (a, levels_a), (b, levels_b) = config["factors"].items()
    spec = _display(measure)
    rows = cells[cells["measure"] == measure]
    table = []
    for level_a in levels_a:
        entry = {a: level_a}
        for level_b in levels_b:
            row = rows[(rows[a] == level_a) & (rows[b] == level_b)].iloc[0]
            entry[f"{b}: {level_b}"] = with_interval(row.value, row.value_ci95_low, row.value_ci95_high, spec)
        table.append(entry)
    return pd.DataFrame(table)


def _effects_for(effects: pd.DataFrame, measure: str) -> pd.DataFrame:
    """A measure's effects; data measured at the prompt unit also show the prompts, the family (Bonferroni-wide)
    interval beside Holm's p, and p-values below what the resamples resolve as "< 1/B"."""
    spec = _display(measure)
    rows = effects[effects["measure"] == measure]
    table = {
        "effect": rows["effect"],
        "reads": rows["reads"],
        "estimate [95% CI]": [
            with_interval(r.estimate, r.estimate_ci95_low, r.estimate_ci95_high, spec) for r in rows.itertuples()
        ],
        "p": rows["p_value"].map(lambda value: f"{value:.2g}"),
        "p (Holm)": rows["p_holm"].map(lambda value: f"{value:.2g}"),
    }
    if "estimate_family_ci95_low" in rows:
        family_sizes = effects.groupby("family")["family"].transform("size").loc[rows.index]
        table |= {
            "p": [format_p(r.p_value, r.p_resolution) for r in rows.itertuples()],
            "family": rows["family"],
            "family CI (Bonferroni)": [
                with_interval(r.estimate, r.estimate_family_ci95_low, r.estimate_family_ci95_high, spec)
                for r in rows.itertuples()
            ],
            "p (Holm)": [
                format_p(r.p_holm, min(1.0, r.p_resolution * size)) for r, size in zip(rows.itertuples(), family_sizes)
            ],
            "prompts": rows["n_prompts"],
        }
    return pd.DataFrame(table)


def _method_text(config: dict, cells: pd.DataFrame) -> str:
    if "n_prompts" not in cells:  # data measured before intervals resampled prompts
        return (
            "Cells: the evaluation's 95% intervals (BCa for shares and means, bootstrap for FID). Effects: "
            "contrasts over the four cells with a bootstrap interval that resamples prompts jointly for all "
            "cells (every seed of a prompt together); simple effects are Holm-adjusted as their own family."
        )
    families = "; ".join(f"{name}: {', '.join(kinds)}" for name, kinds in config["families"].items())
    return (
        "Every interval resamples prompts with all of their seeds. Cells: BCa bootstrap over prompts for shares "
        "and means, bootstrap over prompts with the reference fixed for FID (FID at this n). Effects: contrasts "
        "over the four cells, bootstrap over prompts jointly for all cells (bias-shifted percentiles); p from sign "
        "flips of each prompt's contribution to the contrast for per-image measures, and from the bootstrap "
        "standard error for FID (not a sum over prompts), shown as < 1/B where the resamples cannot resolve it. "
        "Holm families, fixed in "
        f"the ablation file, each across every measure: {families}; the family interval is Bonferroni-wide "
        "at the family's size."
    )


def interaction_figure(config: dict, cells: pd.DataFrame, report: Path) -> Path:
    """One panel per measure: the first factor's levels on x, one line per level of the second, 95% intervals."""
    (a, levels_a), (b, levels_b) = config["factors"].items()
    measures = list(dict.fromkeys(cells["measure"]))
    columns = 4
    rows_count = -(-len(measures) // columns)
    figure, axes = plt.subplots(rows_count, columns, figsize=(3.2 * columns, 2.7 * rows_count), squeeze=False)
    for axis, measure in zip(axes.flat, measures):
        rows = cells[cells["measure"] == measure]
        for offset, level_b in zip((-0.04, 0.04), levels_b):
            line = rows[rows[b] == level_b].set_index(a).loc[levels_a]
            x = [index + offset for index in range(len(levels_a))]
            errors = [line["value"] - line["value_ci95_low"], line["value_ci95_high"] - line["value"]]
            axis.errorbar(x, line["value"], yerr=errors, marker="o", capsize=3, label=f"{b}: {level_b}")
        axis.set_xticks(range(len(levels_a)), levels_a)
        axis.set_xlim(-0.5, len(levels_a) - 0.5)
        axis.set_title(rows["label"].iloc[0], fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in axes.flat[len(measures) :]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7)
    (report / FIGURE.parent).mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(report / FIGURE, dpi=80, metadata={"Software": None})
    plt.close(figure)
    return FIGURE


def _interval_column(frame: pd.DataFrame, column: str, spec: str) -> list[str]:
    return [
        with_interval(r[column], r[f"{column}_ci95_low"], r[f"{column}_ci95_high"], spec) for _, r in frame.iterrows()
    ]


def _cost_section(config: dict, cost: pd.DataFrame, cost_effects: pd.DataFrame) -> Section:
    (a, _), (b, _) = config["factors"].items()
    return Section(
        "Cost",
        [
            Text(
                f"Seconds per image: the four cells timed alternately ({int(cost['timing_repeats'].iloc[0])} "
                f"rounds of {int(cost['timing_batch'].iloc[0])} images) on {cost['device'].iloc[0]}, median with a "
                "bootstrap interval; FLOPs per image counted by the suite's counter (exact, no interval). Effects "
                "on cost are ratios: exp of the contrast of log median seconds, resampling rounds."
            ),
            Table(
                cost.assign(
                    seconds_per_image=[
                        with_interval(
                            r.seconds_per_image, r.seconds_per_image_ci95_low, r.seconds_per_image_ci95_high, ".4f"
                        )
                        for r in cost.itertuples()
                    ]
                )[["cell", a, b, "seconds_per_image", "gflops_per_image"]],
                {"gflops_per_image": ".4g"},
            ),
            Table(
                cost_effects.assign(
                    seconds_ratio=[
                        with_interval(r.seconds_ratio, r.seconds_ratio_ci95_low, r.seconds_ratio_ci95_high, ".3f")
                        for r in cost_effects.itertuples()
                    ]
                )[["effect", "reads", "seconds_ratio", "flops_ratio"]],
                {"flops_ratio": ".3f"},
            ),
        ],
    )


def replicated_sections(config: dict, tables: dict[str, pd.DataFrame], report: Path) -> list[Section]:
    """The report of an ablation measured with several training runs per cell, at one or more grid points."""
    (a, levels_a), (b, levels_b) = config["factors"].items()
    cells, effects, over_runs = tables["cells"], tables["effects"], tables["effects_over_runs"]
    runs, training, cost_effects = tables["run_values"], tables["training"], tables["cost_effects"]
    count = int(over_runs["runs_per_cell"].iloc[0])
    reasons = {float(scale): reason for scale, reason in config.get("rules", {}).get("grid_points", {}).items()}
    verdict = [
        Text(
            f"Factors: {a} ({levels_a[0]} -> {levels_a[1]}) and {b} ({levels_b[0]} -> {levels_b[1]}); an effect is the "
            f"second level minus the first. Each cell was trained {count} times (training seeds of one recipe). A "
            f"factor moves a measure when its main effect *over training runs* has Holm-adjusted p < {ALPHA} "
            "(the headline); the same effect conditional on one network per cell (the first run) is given beside it."
        )
    ]
    verdict += [Text(line) for line in measurement_lines(report / DATA, "ablation/")]
    sections = [Section("Verdict", verdict)]
    details = []
    for guidance, rows in over_runs.groupby("guidance_scale", sort=True):
        conditional = effects[effects["guidance_scale"] == guidance]
        verdict.append(Text(f"Guidance {guidance:g} ({reasons.get(float(guidance), 'no reason registered')}):"))
        verdict.append(Text("Over training runs:\n" + "\n".join(verdict_lines(config, rows, cost_effects)[:-1])))
        verdict.append(
            Text(
                "Conditional on the first run of each cell:\n"
                + "\n".join(verdict_lines(config, conditional, cost_effects)[:-1])
            )
        )
        details.append(Text(f"### Guidance {guidance:g}"))
        for measure in dict.fromkeys(rows["measure"]):
            spec = _display(measure)
            mine = rows[rows["measure"] == measure]
            shown = pd.DataFrame(
                {
                    "effect": mine["effect"],
                    "over training runs [95% CI]": _interval_column(mine, "estimate", spec),
                    "p (Holm)": [f"{value:.2g}" for value in mine["p_holm"]],
                    "se: prompts / runs": [
                        f"{r.se_prompts:{spec}} / {r.se_training_runs:{spec}}" for r in mine.itertuples()
                    ],
                    "df": [f"{value:.1f}" for value in mine["degrees_of_freedom"]],
                    "conditional [95% CI]": _interval_column(
                        conditional[conditional["measure"] == measure], "estimate", spec
                    ),
                    "conditional p (Holm)": [
                        f"{value:.2g}" for value in conditional.loc[conditional["measure"] == measure, "p_holm"]
                    ],
                }
            )
            details += [Text(f"{mine['label'].iloc[0]} (`{measure}`):"), Table(shown)]
    spread = runs[runs["measure"] == "exact_all"].drop_duplicates(["guidance_scale", "cell"])
    details += [
        Text(
            "Between training runs: each cell's runs on the same prompts and seeds, and their standard deviation "
            "(chi-square 95% interval, few runs give wide intervals). Exact match, all prompts:"
        ),
        Table(
            spread.assign(
                runs=[
                    ", ".join(
                        f"{v:.3f}"
                        for v in runs[
                            (runs.cell == r.cell)
                            & (runs.guidance_scale == r.guidance_scale)
                            & (runs.measure == "exact_all")
                        ].value
                    )
                    for r in spread.itertuples()
                ],
                run_sd=_interval_column(spread, "run_sd", ".3f"),
            )[["guidance_scale", "cell", "runs", "cell_mean", "run_sd"]],
            {"cell_mean": ".3f"},
        ),
    ]
    if "matched" in tables:
        matched = tables["matched"]
        shown = matched.assign(
            estimate=[
                with_interval(r.estimate, r.estimate_ci95_low, r.estimate_ci95_high, _display(r.measure))
                for r in matched.itertuples()
            ]
        )
        details += [
            Text(
                f"Matched images against matched compute: one training run per cell, the {a} effect as trained (equal "
                "images seen) and with the pixel runs stopped where they had spent the latent runs' training FLOPs "
                "(each cell's own denoiser and encoder; the shared parts, trained once, are not matched, and with them "
                "the pixel pipeline still cost more: the budget table's pipeline_pflops); conditional on these "
                "networks, bootstrap over prompts, Holm within each comparison."
            ),
            Table(
                shown[["guidance_scale", "comparison", "measure", "effect", "estimate", "p_holm", "presets"]],
                {"p_holm": ".2g"},
            ),
        ]
    budget = training.drop(columns=["processor"])
    sections += [
        Section(
            "Design and budget",
            [
                Text(
                    "Every training run with its budget. pipeline_pflops adds the shared parts each cell runs (latent: "
                    "the VAE; pixel: the x4 SR stage and the T5-style encoder it reads, trained with toy-cascaded's "
                    "base), counted on one training step x iterations; pipeline_parameters counts every network the "
                    "cell's pipeline runs."
                ),
                Table(
                    budget,
                    {
                        "training_pflops": ".3f",
                        "shared_pflops": ".3f",
                        "pipeline_pflops": ".3f",
                        "wall_minutes": ".1f",
                        "learning_rate": "g",
                    },
                ),
                *(Text(f"- {note}") for note in config.get("notes", [])),
            ],
        ),
        Section(
            "Effects over training runs and conditional on one network",
            [
                Text(_method_text(config, cells)),
                Text(OVER_RUNS_METHOD.format(count=count, resamples=config["resamples"])),
                Figure(
                    interaction_figure(config, cells[cells["guidance_scale"] == cells["guidance_scale"].min()], report),
                    "Each measure by cell (first run), 95% intervals",
                ),
                *details,
            ],
        ),
    ]
    return sections


def build_ablation_report(report: Path, registry: Path | None = None) -> Path:
    """Write ``report.md``, ``index.html`` and the figure from ``report/data``; return the folder. ``registry``,
    where given, is copied into ``report/data`` first, so a rebuild from the data alone reads the same rules."""
    if registry is not None and registry.is_file():
        atomic_write_text(report / DATA / REGISTRY_NAME, registry.read_text(encoding="utf-8"))
    config, tables = _read(report)
    cells, effects, cost, cost_effects, training = (
        tables[name] for name in ("cells", "effects", "cost", "cost_effects", "training")
    )
    (a, levels_a), (b, levels_b) = config["factors"].items()
    if "effects_over_runs" in tables:
        sections = replicated_sections(config, tables, report)
        sections.append(_cost_section(config, cost, cost_effects))
        title = config["title"]
        atomic_write_text(report / "report.md", to_markdown(title, sections))
        atomic_write_text(report / "index.html", to_html(title, sections, report))
        return report
    equal_images = training["images_seen"].nunique() == 1
    unets = training["unet_parameters"]
    spread = unets.max() / unets.min() - 1
    sweep = config["sweep"]
    point = (
        f"{sweep['samplers'][0]}, {sweep['steps'][0]} steps, guidance {sweep['guidance'][0]:g}, "
        f"{sweep.get('seeds_per_prompt', 1)} seeds per prompt"
    )
    budget = Table(
        training.drop(columns=["processor"]),
        {"training_pflops": ".3f", "wall_minutes": ".1f", "learning_rate": "g"},
    )
    sections = [
        Section(
            "Verdict",
            [
                Text(
                    f"Factors: {a} ({levels_a[0]} -> {levels_a[1]}) and {b} ({levels_b[0]} -> {levels_b[1]}). "
                    "An effect is the second level minus the first; a factor moves a measure when its main effect's "
                    f"Holm-adjusted p < {ALPHA} (one family: every main effect and interaction of every measure)."
                ),
                Text("\n".join(verdict_lines(config, effects, cost_effects))),
            ],
        ),
        Section(
            "Design and budget",
            [
                Text(
                    f"Each cell is trained from scratch to one budget (`training.json`): images seen "
                    f"{'equal' if equal_images else 'NOT equal'} across cells ({training['images_seen'].iloc[0]:,}); "
                    f"UNet parameters within {spread:.1%} of each other. Every cell is sampled at one grid point "
                    f"({point}) on the same prompts and seeds, so cells are compared image by image."
                ),
                budget,
                *(Text(f"- {note}") for note in config.get("notes", [])),
            ],
        ),
        Section(
            "2x2 tables and effects",
            [
                Text(_method_text(config, cells)),
                Figure(interaction_figure(config, cells, report), "Each measure by cell, 95% intervals"),
            ],
        ),
    ]
    for measure in dict.fromkeys(cells["measure"]):
        rows = cells.loc[cells["measure"] == measure]
        label, read = rows["label"].iloc[0], ""
        if "n_prompts" in rows:  # measured at the prompt unit: say how many prompts the measure reads
            read = f", {int(rows['n_prompts'].iloc[0])} prompts, {int(rows['n'].iloc[0])} images per cell"
        sections[-1].blocks += [
            Text(f"{label} (`{measure}`{read}):"),
            Table(_two_by_two(config, cells, measure)),
            Table(_effects_for(effects, measure)),
        ]
    sections.append(_cost_section(config, cost, cost_effects))
    title = config["title"]
    atomic_write_text(report / "report.md", to_markdown(title, sections))
    atomic_write_text(report / "index.html", to_html(title, sections, report))
    return report
