"""``suite report RUN``: tables, plots, image grids and a self-contained HTML page from a run folder alone.

The report is a list of sections made of three kinds of block (text, table, figure), rendered
twice: to ``report.md`` (figures as relative links) and to ``index.html`` (figures embedded as
data URIs, every string HTML-escaped), so the page opens from disk with no server or network.

Example:
    >>> build_report(Path("results/toy"))   # writes results/toy/report/
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import yaml

from suite.errors import UserError
from suite.report import grids, plots, tables
from suite.results import atomic_write_text
from suite.tables import markdown_table

REPORT_DIR = "report"
FORMATS = {"fid": ".3f", "kid_mean": ".4f", "cmmd": ".4f", "clip_score_mean": ".2f", "clip_score_ci95_low": ".2f",
           "clip_score_ci95_high": ".2f", "toy_correct": ".3f", "toy_correct_single": ".3f", "toy_correct_pair": ".3f",
           "toy_correct_held_out_pair": ".3f", "seconds_per_image_median": ".4f", "gflops_per_image": ",.2f",
           "guidance_scale": "g", "best": ".4g", "budget_s_per_image": "g"}


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame
    formats: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Figure:
    path: Path  # inside the report folder
    caption: str


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)


def _read(run: Path) -> tuple[dict[str, Any], dict[str, Any], pd.DataFrame, pd.DataFrame | None]:
    if not (run / "samples.parquet").is_file():
        raise UserError(f"{run} is not a finished run folder (no samples.parquet)")
    config = yaml.safe_load((run / "config.yaml").read_text())
    manifest_path = run / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    samples = pd.read_parquet(run / "samples.parquet")
    metrics_path = run / "metrics.parquet"
    return config, manifest, samples, pd.read_parquet(metrics_path) if metrics_path.is_file() else None


def _reproducibility(config: dict[str, Any], manifest: dict[str, Any], samples: pd.DataFrame) -> Section:
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


def _cost_section(presets: list[str], metrics: pd.DataFrame | None, samples: pd.DataFrame) -> Section:
    """Parameters, values per step and FLOPs per image of each preset, from configs (``suite profile``)."""
    from suite.profile import ProfileSettings, profile_presets

    guidance = plots.reference_guidance(metrics if metrics is not None else samples)
    settings = ProfileSettings(str(samples["sampler"].iloc[0]), int(samples["num_inference_steps"].max()), guidance)
    try:
        profile = profile_presets(presets, settings)
    except UserError as error:
        return Section("Cost from the architectures", [Text(f"Not available: {error}")])
    columns = ["preset", "stage", "sample", "values_per_step", "image", "tflops_per_step", "tflops_per_image",
               "resident_weights_gb"]
    text = (f"Counted on the meta device from each preset's configs (`suite profile`): {settings.sampler}, "
            f"{settings.steps} steps, first-stage guidance {settings.guidance_scale:g}.")
    formats = {"values_per_step": ",d", "tflops_per_step": ".4g", "tflops_per_image": ".4g", "resident_weights_gb": ".4f"}
    return Section("Cost from the architectures", [Text(text), Table(profile.stages[columns], formats)])


def build_sections(run: Path, folder: Path) -> list[Section]:
    """Compute every table, plot and grid of the report into ``folder``; return the sections that show them."""
    config, manifest, samples, metrics = _read(run)
    sections = [Section("Run", [Text(f"Sweep `{config.get('name')}`: {samples['preset'].nunique()} presets, "
                                     f"{samples['sampler'].nunique()} samplers, steps "
                                     f"{sorted(samples['num_inference_steps'].unique().tolist())}, guidance "
                                     f"{sorted(samples['guidance_scale'].unique().tolist())}; {len(samples)} images.")])]
    stage_times = tables.time_per_stage(samples)
    plot_folder = folder / "plots"
    figures = []
    if metrics is not None:
        summary = tables.metrics_summary(metrics)
        budgets = tables.best_at_budgets(metrics)
        _write_csv(summary, folder / "tables" / "metrics.csv")
        _write_csv(budgets, folder / "tables" / "best_at_budgets.csv")
        sections.append(Section("Metrics per grid point", [Table(summary, FORMATS)]))
        if not budgets.empty:
            sections.append(Section("Best configuration per preset within a time budget",
                                    [Text("Budgets are quantiles of the measured median seconds per image."),
                                     Table(budgets, FORMATS)]))
        figures += plots.quality_vs_clip(metrics, plot_folder) + plots.quality_vs_steps(metrics, plot_folder)
        figures += plots.seconds_vs_steps(metrics, plot_folder)
    _write_csv(stage_times, folder / "tables" / "time_per_stage.csv")
    sections.append(Section("Time per stage", [Table(stage_times, {"seconds_per_image": ".4f"})]))
    figures += plots.time_per_stage_bars(stage_times, plot_folder)
    sections.append(Section("Plots", [Figure(path.relative_to(folder), path.stem.replace("_", " "))
                                      for path in figures if path.suffix == ".png"]))
    guidance = plots.reference_guidance(metrics if metrics is not None else samples)
    image_grids = grids.write_grids(run, samples, folder / "grids", guidance)
    sections.append(Section("Image grids", [Figure(grid.path.relative_to(folder), grid.title) for grid in image_grids]))
    sections.append(_cost_section(list(dict.fromkeys(samples["preset"])), metrics, samples))
    sections.append(_reproducibility(config, manifest, samples))
    return sections


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


def to_markdown(title: str, sections: list[Section]) -> str:
    parts = [f"# {title}\n"]
    for section in sections:
        parts.append(f"## {section.title}\n")
        for block in section.blocks:
            if isinstance(block, Text):
                parts.append(block.text + "\n")
            elif isinstance(block, Table):
                parts.append(markdown_table(block.frame, block.formats))
            else:
                parts.append(f"![{block.caption}]({block.path.as_posix()})\n\n*{block.caption}*\n")
    return "\n".join(parts)


def _html_table(block: Table) -> str:
    header = "".join(f"<th>{html.escape(str(column))}</th>" for column in block.frame.columns)
    rows = []
    for row in block.frame.itertuples(index=False):
        cells = []
        for column, value in zip(block.frame.columns, row):
            spec = block.formats.get(column)
            text = "" if pd.isna(value) else (format(value, spec) if spec else str(value))
            cells.append(f"<td>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def to_html(title: str, sections: list[Section], folder: Path) -> str:
    """One self-contained page: figures inlined as base64 PNG, every user string escaped."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Text):
                lines = "".join(f"<li>{html.escape(line.removeprefix('- '))}</li>" for line in block.text.splitlines())
                body.append(f"<ul>{lines}</ul>" if block.text.startswith("- ") else f"<p>{html.escape(block.text)}</p>")
            elif isinstance(block, Table):
                body.append(_html_table(block))
            else:
                data = base64.b64encode((folder / block.path).read_bytes()).decode("ascii")
                body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.caption)}">'
                            f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
             "th{background:#f3f3f3}figure{display:inline-block;margin:1em}img{max-width:100%}"
             "figcaption{font-size:12px;max-width:520px}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def build_report(run: Path, out: Path | None = None) -> Path:
    """Build ``run/report`` (or ``out``) from the run's tables and images alone; return the folder."""
    folder = out or run / REPORT_DIR
    sections = build_sections(run, folder)
    title = f"Report: {run.name}"
    atomic_write_text(folder / "report.md", to_markdown(title, sections))
    atomic_write_text(folder / "index.html", to_html(title, sections, folder))
    return folder
