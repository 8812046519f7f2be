"""The report's plots (matplotlib, PNG and SVG), drawn from the metrics and samples tables only.

Files are written without timestamps (fixed SVG hash salt, no PNG software tag), so building a
report twice gives the same bytes with the same matplotlib version.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from suite.analysis.report.tables import interval_of, quality_column
from suite.metrics import METRICS

matplotlib.rcParams["svg.hashsalt"] = "diffusion-suite"


def _save(figure, folder: Path, name: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    figure.tight_layout()
    figure.savefig(paths[0], dpi=110, metadata={"Software": None})
    figure.savefig(paths[1], metadata={"Date": None, "Creator": None})
    plt.close(figure)
    return paths


def reference_guidance(metrics: pd.DataFrame) -> float:
    """The guidance scale step and time plots are drawn at: the largest one up to 7.5 (SD's default)."""
    values = sorted(metrics["guidance_scale"].unique())
    usable = [value for value in values if value <= 7.5]
    return usable[-1] if usable else values[0]


def _error(frame: pd.DataFrame, column: str):
    """Error bar lengths (below, above) from a column's 95% interval; None where the run has none."""
    low, high = interval_of(column)
    if low not in frame or high not in frame:
        return None
    return [(frame[column] - frame[low]).clip(lower=0).fillna(0), (frame[high] - frame[column]).clip(lower=0).fillna(0)]


def quality_vs_clip(metrics: pd.DataFrame, folder: Path) -> list[Path]:
    """Imagen's trade-off figure: quality against prompt alignment (CLIP score) over guidance, one curve per preset x sampler,
    with 95% intervals on both axes."""
    chosen = quality_column(metrics)
    aligned = [metric for metric in METRICS.values() if metric.alignment and metric.headline in metrics]
    if chosen is None or not aligned or chosen[0] == aligned[0].headline:
        return []
    column, alignment, label = chosen[0], aligned[0].headline, aligned[0].label or aligned[0].headline
    steps = metrics["num_inference_steps"].max()
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    at_steps = metrics[metrics["num_inference_steps"] == steps]
    for (preset, sampler), group in at_steps.groupby(["preset", "sampler"], sort=False):
        group = group.sort_values("guidance_scale")
        axes.errorbar(
            group[alignment],
            group[column],
            xerr=_error(group, alignment),
            yerr=_error(group, column),
            marker="o",
            capsize=2,
            label=f"{preset} / {sampler}",
        )
        for row in group.itertuples():
            axes.annotate(
                f"{row.guidance_scale:g}",
                (getattr(row, alignment), getattr(row, column)),
                fontsize=7,
                textcoords="offset points",
                xytext=(3, 3),
            )
    axes.set(
        xlabel=f"{label} (mean, 95% CI)",
        ylabel=f"{column} (95% CI)",
        title=f"{column} against {label} over guidance ({steps} steps)",
    )
    axes.legend(fontsize=7)
    return _save(figure, folder, "quality_vs_clip_score")


def _per_preset_lines(metrics: pd.DataFrame, column: str, ylabel: str, title: str) -> plt.Figure:
    guidance = reference_guidance(metrics)
    chosen = metrics[metrics["guidance_scale"] == guidance]
    presets = list(dict.fromkeys(chosen["preset"]))
    figure, axes = plt.subplots(1, len(presets), figsize=(4.2 * len(presets), 3.6), squeeze=False)
    for axis, preset in zip(axes[0], presets):
        for sampler, group in chosen[chosen["preset"] == preset].groupby("sampler", sort=False):
            group = group.sort_values("num_inference_steps")
            axis.errorbar(
                group["num_inference_steps"],
                group[column],
                yerr=_error(group, column),
                marker="o",
                capsize=2,
                label=sampler,
            )
        axis.set(xlabel="steps", ylabel=f"{ylabel} (95% CI)", title=f"{preset} (guidance {guidance:g})")
        axis.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    return figure


def quality_vs_steps(metrics: pd.DataFrame, folder: Path) -> list[Path]:
    chosen = quality_column(metrics)
    if chosen is None:
        return []
    figure = _per_preset_lines(metrics, chosen[0], chosen[0], f"{chosen[0]} against steps, one line per sampler")
    return _save(figure, folder, "quality_vs_steps")


def seconds_vs_steps(metrics: pd.DataFrame, folder: Path) -> list[Path]:
    figure = _per_preset_lines(
        metrics, "seconds_per_image_median", "seconds per image (median)", "seconds per image against steps"
    )
    return _save(figure, folder, "seconds_vs_steps")


def time_per_stage_bars(stage_times: pd.DataFrame, folder: Path) -> list[Path]:
    """Stacked median seconds per image: text encoding, each denoising stage, decoding."""
    parts = stage_times[~stage_times["part"].str.startswith("total")]
    wide = parts.pivot_table(index="preset", columns="part", values="seconds_per_image", sort=False).fillna(0.0)
    wide = wide.loc[list(dict.fromkeys(parts["preset"]))]
    order = list(dict.fromkeys(parts["part"]))
    figure, axes = plt.subplots(figsize=(6.4, 3.6))
    low = (
        parts.pivot_table(index="preset", columns="part", values="seconds_per_image_ci95_low", sort=False)
        .fillna(0.0)
        .loc[wide.index]
    )
    high = (
        parts.pivot_table(index="preset", columns="part", values="seconds_per_image_ci95_high", sort=False)
        .fillna(0.0)
        .loc[wide.index]
    )
    bottom = pd.Series(0.0, index=wide.index)
    for part in order:
        error = [(wide[part] - low[part]).clip(lower=0), (high[part] - wide[part]).clip(lower=0)]
        axes.bar(wide.index, wide[part], bottom=bottom, label=part, yerr=error, capsize=3)
        bottom = bottom + wide[part]
    axes.set(ylabel="seconds per image (median, 95% CI)", title="where the time goes, per preset")
    axes.legend(fontsize=7)
    return _save(figure, folder, "time_per_stage")


def _quality_lines(metrics: pd.DataFrame, x: str, x_label: str, title: str, name: str, folder: Path) -> list[Path]:
    """The static twin of an interactive plot: quality (95% CI) against ``x``, one line per preset x sampler."""
    chosen = quality_column(metrics)
    if chosen is None:
        return []
    column = chosen[0]
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    for (preset, sampler), group in metrics.groupby(["preset", "sampler"], sort=False):
        group = group[group[column].notna() & group[x].notna()].sort_values(x)
        if group.empty:
            continue
        x_error = _error(group, x) if x == "seconds_per_image_median" else None
        axes.errorbar(
            group[x],
            group[column],
            xerr=x_error,
            yerr=_error(group, column),
            marker="o",
            capsize=2,
            label=f"{preset} / {sampler}",
        )
    if x == "seconds_per_image_median":
        axes.set_xscale("log")
    axes.set(xlabel=x_label, ylabel=f"{column} (95% CI)", title=title)
    axes.legend(fontsize=7)
    return _save(figure, folder, name)


def quality_vs_cost(metrics: pd.DataFrame, folder: Path) -> list[Path]:
    """Quality against measured seconds per image, every grid point (the interactive report's first plot)."""
    return _quality_lines(
        metrics,
        "seconds_per_image_median",
        "seconds per image (median, 95% CI, log)",
        "quality against cost, every grid point",
        "quality_vs_cost",
        folder,
    )


def quality_vs_guidance(metrics: pd.DataFrame, folder: Path) -> list[Path]:
    """Quality against guidance at the largest step count (the interactive report's second plot)."""
    steps = metrics["num_inference_steps"].max()
    return _quality_lines(
        metrics[metrics["num_inference_steps"] == steps],
        "guidance_scale",
        f"guidance scale ({steps} steps)",
        f"quality against guidance ({steps} steps)",
        "quality_vs_guidance",
        folder,
    )
