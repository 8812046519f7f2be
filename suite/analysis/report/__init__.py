"""``suite report RUN``: tables, plots, image grids and a self-contained HTML page from a run folder alone.

The report is built from the run's tables (``run.folder.read_run``) into sections of text, tables and
figures (``render``), written as ``report.md`` and ``index.html``.

Example:
    >>> build_report(Path("results/toy"))   # writes results/toy/report/
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from suite.analysis.compare import COMPARISONS, load_records, point_key
from suite.analysis.report import grids, interactive, plots, tables
from suite.analysis.report.render import Figure, Interactive, Section, Table, Text, to_html, to_markdown
from suite.core.files import atomic_write_text
from suite.core.stats import ALPHA
from suite.metrics import METRICS
from suite.run.folder import GRID_COLUMNS, RunFolder, read_run, upgraded
from suite.run.options import EvaluateOptions

REPORT_DIR = "report"


def _formats() -> dict[str, str]:
    """Display formats of every number in the report's tables: each metric's own, its interval's, the grid's."""
    formats = {}
    for column, spec in tables.summary_columns().items():
        formats |= dict.fromkeys((column, *tables.interval_of(column)), spec)
    return formats | {"guidance_scale": "g", "budget_s_per_image": "g"}


METRICS_NOTE = (
    "Each number is shown with its 95% interval in brackets; the method of each interval is in metrics.csv "
    "(`*_interval`). Every interval works at the unit of the prompt, so it covers the variation of both prompts "
    "and seeds: BCa bootstrap over prompts for per-image means (CLIP score, toy accuracies, which also get "
    "Wilson intervals at the effective sample size); for FID, KID and CMMD with the reference fixed (FID at this "
    "n, not at infinitely many images), by default the delta method (each image's influence on the statistic, "
    "summed per prompt, t with prompts - 1 degrees of freedom), or with `set_interval: bootstrap` the "
    "bias-shifted percentile bootstrap over prompts. KID and CMMD are unbiased estimates, so their intervals "
    "may reach below zero. fid_inf is FID extrapolated to infinitely many images (Chong & Forsyth 2020); its "
    "interval adds the fit's standard error (delta method) or refits on every resample (bootstrap). † marks "
    "FID, KID or CMMD from no more images than feature dimensions: not comparable with anything."
)
BUDGETS_NOTE = (
    "Budgets are quantiles of the measured median seconds per image. Within a budget, every point not "
    "significantly worse than the best (paired test of the quality metric, Holm-corrected within the budget) "
    "is listed: those are ties, not losers."
)
STAGE_FORMATS = {"seconds_per_image": ".4f", "seconds_per_image_ci95_low": ".4f", "seconds_per_image_ci95_high": ".4f"}
SHOWN_COMPARISONS = 120


def _budget_test(run: RunFolder):
    """The paired test of one grid point against another on a quality column: its p from comparisons.csv where
    ``suite compare`` tested that pair (either way round: the tests are two-sided), else tested from what
    evaluation kept."""

    records, known = {}, {}
    path = run.path / f"{COMPARISONS}.parquet"
    if path.is_file():
        for _, row in upgraded(pd.read_parquet(path)).iterrows():
            a, b = (tuple(row[f"{side}_{field}"] for field in GRID_COLUMNS) for side in ("a", "b"))
            known[(a, b, row["metric"])] = known[(b, a, row["metric"])] = row["p_value"]

    def test(best: pd.Series, other: pd.Series, column: str) -> float:
        found = known.get((point_key(best), point_key(other), column))
        if found is not None:
            return float(found)
        if not records:
            records.update(load_records(run, EvaluateOptions(device="cpu", progress=False)))
        metric = next(metric for metric in METRICS.values() if metric.headline == column)
        rows = metric.compare(records[point_key(best)], records[point_key(other)])
        return next(row["p_value"] for row in rows if row["metric"] == column)

    return test


def _comparisons_section(run: RunFolder) -> Section:
    path = run.path / f"{COMPARISONS}.parquet"
    if not path.is_file():
        return Section("What is significant", [Text("Not compared yet: run `suite compare RUN`.")])
    comparisons = upgraded(pd.read_parquet(path))
    if comparisons.empty:
        return Section("What is significant", [Text("No pairs of grid points to compare.")])
    blocks = [Text(paragraph) for paragraph in tables.significance_paragraphs(comparisons)]
    shown = comparisons[(comparisons["kind"] == "across presets") | (comparisons["p_holm"] < ALPHA)]
    note = (
        f"Paired tests (b - a) from comparisons.csv ({len(comparisons)} rows; shown: every cross-preset row and "
        f"every significant one, at most {SHOWN_COMPARISONS}). Every test works at the unit of the prompt: "
        "per-image scores, sign-flip test of whole prompts; exact match, exact sign-flip test of each prompt's "
        "discordant count (McNemar's with one seed per prompt) with Newcombe's score interval; FID / KID / CMMD, "
        "paired per-prompt influence differences (delta method, t test; or, with set_interval: bootstrap, the "
        "bootstrap over prompts of both points jointly, inverted for p). p_holm is Holm-Bonferroni "
        "within each family (kind of comparison x metric); the family interval is Bonferroni-wide at its size."
    )
    blocks += [
        Text(note),
        Table(tables.comparisons_table(shown.head(SHOWN_COMPARISONS)), {}),
    ]
    return Section("What is significant", blocks)


def _reproducibility(run: RunFolder) -> Section:
    config, manifest, samples = run.config, run.manifest, run.samples
    git = manifest.get("git", {})
    versions = manifest.get("versions", {})
    hardware = manifest.get("hardware", {})
    lines = [
        f"- command: `{manifest.get('command', '?')}`",
        f"- config hash: `{config.get('config_hash')}`; sweep seed {config.get('seed')}; "
        f"per-image seeds: {manifest.get('seeds', {}).get('rule', '?')}",
        f"- git commit: `{git.get('commit')}` (dirty: {git.get('dirty')})",
        f"- device: {hardware.get('device', '?')} ({hardware.get('gpu', hardware.get('machine', '?'))}); "
        f"dtypes: {', '.join(f'{name}: {value}' for name, value in sorted(manifest.get('dtypes', {}).items()))}",
        "- versions: " + ", ".join(f"{name} {version}" for name, version in sorted(versions.items())),
        f"- images: {len(samples)}; presets {', '.join(dict.fromkeys(samples['preset']))}",
    ]
    return Section("Reproducibility", [Text("\n".join(lines))])


def _cost_section(run: RunFolder) -> Section:
    """Values per step and GFLOPs per model evaluation of each preset's stages, as evaluation counted them."""
    if run.costs is None:
        return Section("Cost from the architectures", [Text("Not counted: add `flops` to the sweep's metrics.")])
    columns = [
        "preset",
        "stage",
        "sample",
        "values_per_step",
        "image",
        "gflops_per_evaluation",
        "gflops_per_guided_evaluation",
        "decode_gflops",
        "resident_weights_gb",
    ]
    per_image = [metric.headline for metric in METRICS.values() if metric.needs_costs]
    text = (
        "Counted once per preset on the meta device from the run's own model configs (torch FlopCounterMode, "
        "2 FLOPs per multiply-add); a guided evaluation runs the unconditional and conditional batch together. "
        f"FLOPs per image of each grid point are {', '.join(f'`{column}`' for column in per_image)} in the metrics table."
    )
    formats = {
        "values_per_step": ",d",
        "gflops_per_evaluation": ",.4g",
        "gflops_per_guided_evaluation": ",.4g",
        "decode_gflops": ",.4g",
        "resident_weights_gb": ".4f",
    }
    return Section("Cost from the architectures", [Text(text), Table(run.costs[columns], formats)])


def build_sections(run: Path, folder: Path) -> list[Section]:
    """Compute every table, plot and grid of the report into ``folder``; return the sections that show them."""
    run_folder = read_run(run)
    samples, metrics = run_folder.samples, run_folder.metrics
    sections = [
        Section(
            "Run",
            [
                Text(
                    f"Sweep `{run_folder.config.get('name')}`: {samples['preset'].nunique()} presets, "
                    f"{samples['sampler'].nunique()} samplers, steps "
                    f"{sorted(samples['num_inference_steps'].unique().tolist())}, guidance "
                    f"{sorted(samples['guidance_scale'].unique().tolist())}; {len(samples)} images."
                )
            ],
        )
    ]
    stage_times = tables.time_per_stage(samples)
    plot_folder = folder / "plots"
    figures, interactive_plots = [], []
    if metrics is not None:
        summary = tables.metrics_summary(metrics)
        budgets = tables.best_at_budgets(metrics, _budget_test(run_folder))
        _write_csv(summary, folder / "tables" / "metrics.csv")
        _write_csv(budgets, folder / "tables" / "best_at_budgets.csv")
        sections.append(Section("Metrics per grid point", [Text(METRICS_NOTE), Table(summary, _formats())]))
        sections.append(_comparisons_section(run_folder))
        if not budgets.empty:
            sections.append(
                Section(
                    "Best configuration per preset within a time budget",
                    [Text(BUDGETS_NOTE), Table(budgets, _formats())],
                )
            )
        for name, static, drawn in (
            ("quality_vs_cost", plots.quality_vs_cost, interactive.quality_vs_cost),
            ("quality_vs_guidance", plots.quality_vs_guidance, interactive.quality_vs_guidance),
        ):
            png = [path for path in static(metrics, plot_folder) if path.suffix == ".png"]
            item = drawn(run, samples, metrics) if png else None
            if item is not None:
                caption = f"{name.replace('_', ' ')} (hover a point for its numbers and first image)"
                interactive_plots.append(Interactive(name, item, Figure(png[0].relative_to(folder), caption)))
        figures += plots.quality_vs_clip(metrics, plot_folder) + plots.quality_vs_steps(metrics, plot_folder)
        figures += plots.seconds_vs_steps(metrics, plot_folder)
    _write_csv(stage_times, folder / "tables" / "time_per_stage.csv")
    sections.append(
        Section(
            "Time per stage",
            [
                Text("Median seconds per image; 95% percentile bootstrap over work items."),
                Table(stage_times, STAGE_FORMATS),
            ],
        )
    )
    figures += plots.time_per_stage_bars(stage_times, plot_folder)
    sections.append(
        Section(
            "Plots",
            interactive_plots
            + [
                Figure(path.relative_to(folder), path.stem.replace("_", " "))
                for path in figures
                if path.suffix == ".png"
            ],
        )
    )
    guidance = plots.reference_guidance(metrics if metrics is not None else samples)
    image_grids = grids.write_grids(run, samples, folder / "grids", guidance, metrics=metrics)
    sections.append(Section("Image grids", [Figure(grid.path.relative_to(folder), grid.title) for grid in image_grids]))
    sections.append(_cost_section(run_folder))
    sections.append(_reproducibility(run_folder))
    return sections


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


def build_report(run: Path, out: Path | None = None) -> Path:
    """Build ``run/report`` (or ``out``) from the run's tables and images alone; return the folder."""
    folder = out or run / REPORT_DIR
    sections = build_sections(run, folder)
    title = f"Report: {run.name}"
    atomic_write_text(folder / "report.md", to_markdown(title, sections))
    atomic_write_text(folder / "index.html", to_html(title, sections, folder))
    return folder
