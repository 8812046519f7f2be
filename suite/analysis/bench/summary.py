"""The results of ``suite bench``: rows per stage and pipeline, merged tables on disk, and their Markdown."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from suite.analysis.bench.timing import (
    BenchSettings,
    StageRuns,
    achieved_tflops,
    quartiles,
    ratio_summary,
    utilisation,
)
from suite.core.files import atomic_write_table, atomic_write_text
from suite.core.formatting import format_cell, markdown_table
from suite.model.devices import spelled
from suite.model.flops import StageCost
from suite.model.stages import Stage, StageSettings
from suite.run.folder import versions

GB = 1e9
KEY_COLUMNS = (
    "preset",
    "stage",
    "dtype",
    "batch_size",
    "sampler",
    "num_inference_steps",
    "guidance_scale",
    "compile",
    "channels_last",
    "attention",
)


# -- rows -------------------------------------------------------------------------------------


def stage_row(
    stage: Stage, stage_cost: StageCost, settings: StageSettings, runs: StageRuns, batch: int, peak: float
) -> dict[str, Any]:
    median, q1, q3 = quartiles(runs.step_seconds)
    step_flops = stage_cost.flops_per_step(settings) * batch
    decode = statistics.median(runs.decode_seconds)
    stage_seconds = statistics.median(runs.suite_seconds)
    achieved = achieved_tflops(step_flops, median)
    row = {
        "stage": stage.name,
        "stage_guidance_scale": settings.guidance_scale,
        "steps_timed": len(runs.step_seconds),
        "step_median_s": median,
        "step_q1_s": q1,
        "step_q3_s": q3,
        "steps_per_s": 1 / median,
        "decode_s": decode,
        "stage_s": stage_seconds,
        "images_per_s": batch / stage_seconds,
        "gflops_per_step": step_flops / 1e9,
        "tflops_achieved": achieved,
        "utilisation": utilisation(achieved, peak),
        "decode_tflops_achieved": achieved_tflops(stage_cost.decode_flops * batch, decode) if decode else float("nan"),
        "peak_memory_gb": runs.peak_memory_bytes / GB,
        "peak_memory_kind": runs.memory_kind,
        "compile_s": runs.compile_s,
        "recompile_during_timing_s": runs.recompile_s,
        "decode_fp32_fallbacks": runs.decode_fp32_fallbacks,
    }
    if runs.diffusers_seconds:
        row["diffusers_stage_s"] = statistics.median(runs.diffusers_seconds)
        row |= ratio_summary(runs.suite_seconds, runs.diffusers_seconds)
    return row


def pipeline_row(rows: list[dict], whole: tuple[list[float], list[float]] | None = None) -> dict[str, Any]:
    """Whole-image totals: text encoding plus every stage; the ratio covers the stages diffusers ran.

    ``whole``: the suite's and diffusers' seconds per repeat for a pipeline diffusers runs only whole (unCLIP),
    timed in alternation: the ratio and its range are those of these pairs."""
    stages = [row for row in rows if "stage_s" in row]
    text = sum(row["call_median_s"] for row in rows if "call_median_s" in row)
    seconds = text + sum(row["stage_s"] for row in stages)
    batch = stages[0]["batch_size"]
    row = {"stage": "pipeline", "stage_s": seconds, "images_per_s": batch / seconds}
    if whole is not None:
        suite_seconds, diffusers_seconds = whole
        row |= {"diffusers_stage_s": statistics.median(diffusers_seconds)}
        row |= ratio_summary(suite_seconds, diffusers_seconds)
    elif all("diffusers_stage_s" in row for row in stages):
        suite = sum(row["stage_s"] for row in stages)
        diffusers = sum(row["diffusers_stage_s"] for row in stages)
        row |= {"diffusers_stage_s": diffusers, "ratio_to_diffusers": suite / diffusers}
    return row


def console_lines(table: pd.DataFrame) -> list[str]:
    """What ``suite bench`` prints: a line per preset (images/s, ratio to diffusers) and per stage (ms per step)."""
    lines = []
    for _, row in table.iterrows():
        if row["stage"] == "pipeline":
            ratio = row.get("ratio_to_diffusers")
            ratio_text = f", {ratio:.3f}x diffusers' pipelines" if ratio == ratio and ratio is not None else ""
            lines.append(f"{row['preset']}: {row['images_per_s']:.4g} images/s on {row['device_name']}{ratio_text}")
        elif "step_median_s" in row and row["step_median_s"] == row["step_median_s"]:
            median, q1, q3 = (1e3 * row[column] for column in ("step_median_s", "step_q1_s", "step_q3_s"))
            ratio = row.get("ratio_to_diffusers", float("nan"))
            lines.append(
                f"  {row['stage']}: {median:.1f} ms/step [IQR {q1:.1f}-{q3:.1f}], "
                f"{row['tflops_achieved']:.2f} TFLOP/s ({100 * row['utilisation']:.0f}% of {row['peak_tflops']:.1f}), "
                + (
                    f"ratio to diffusers {ratio:.3f}"
                    if ratio == ratio
                    else "diffusers runs it only within its pipeline"
                )
            )
    return lines


# -- tables -----------------------------------------------------------------------------------


# Bench tables before one column convention: milliseconds, and the ratio range as ratio_low/_high.
FORMER_MILLISECONDS = {
    "step_ms_median": "step_median_s",
    "step_ms_q1": "step_q1_s",
    "step_ms_q3": "step_q3_s",
    "call_ms_median": "call_median_s",
    "call_ms_q1": "call_q1_s",
    "call_ms_q3": "call_q3_s",
    "decode_ms": "decode_s",
}
FORMER_NAMES = {"ratio_low": "ratio_to_diffusers_min", "ratio_high": "ratio_to_diffusers_max"}


def upgraded(table: pd.DataFrame) -> pd.DataFrame:
    """A bench table an earlier version wrote, in today's columns (seconds) and dtype spelling."""
    former = [column for column in FORMER_MILLISECONDS if column in table]
    table = table.assign(**{column: table[column] / 1e3 for column in former})
    table = table.rename(columns={**FORMER_MILLISECONDS, **FORMER_NAMES})
    if "dtype" in table:
        table["dtype"] = table["dtype"].map(spelled)
    return table


def merge_results(old: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    """``new`` rows replace old rows with the same key (preset, stage and every setting); others stay."""
    if old is None or old.empty:
        return new.reset_index(drop=True)
    keys = [column for column in KEY_COLUMNS if column in old and column in new]
    new_keys = set(new[keys].astype(str).itertuples(index=False, name=None))
    kept = old[[key not in new_keys for key in old[keys].astype(str).itertuples(index=False, name=None)]]
    return pd.concat([kept, new], ignore_index=True)


def write_bench(table: pd.DataFrame, out: Path, bench: BenchSettings) -> Path:
    """Merge into ``out/<device>/bench.{parquet,csv,md}`` with a manifest; return that folder."""

    folder = out / table["device_name"].iloc[0]
    folder.mkdir(parents=True, exist_ok=True)
    previous = upgraded(pd.read_parquet(folder / "bench.parquet")) if (folder / "bench.parquet").is_file() else None
    merged = merge_results(previous, table)
    atomic_write_table(merged, folder / "bench")
    atomic_write_text(folder / "bench.md", bench_markdown(merged))
    device = torch.device(table["device"].iloc[0])
    manifest = {
        "device": table["device_name"].iloc[0],
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "versions": versions(),
        "last_settings": asdict(bench),
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "weights": "random, built from the public configs (speed does not depend on weight values)",
    }
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return folder


def _ms(seconds: float | None) -> str:
    """Seconds as a milliseconds cell (the tables store seconds; the markdown reads in ms)."""
    return format_cell(None if seconds is None or pd.isna(seconds) else float(seconds) * 1e3)


def bench_markdown(table: pd.DataFrame) -> str:
    """One table per preset: per stage ms/step (median [IQR]), images/s, TFLOP/s, utilisation, memory, ratio."""

    lines = [f"# Bench: {table['device_name'].iloc[0]}", ""]
    lines.append(
        "Random weights built from the public configs; the suite's `run_stage` timed against diffusers' own "
        "pipelines built from the same modules, in alternation. ms/step: median [IQR] over the timed steps; "
        "ratio: median suite time over median diffusers time [range of per-pair ratios]; utilisation: achieved "
        "TFLOP/s over a dense matrix product in the same dtype, measured in the same run."
    )
    for keys, group in table.groupby(["preset", "dtype", "batch_size", "compile", "channels_last", "attention"]):
        preset, dtype, batch, compiled, channels_last, attention = keys
        first = group.iloc[0]
        lines += [
            "",
            f"## {preset}: {dtype}, batch {batch}, {first['sampler']} {first['num_inference_steps']} steps, "
            f"guidance {first['guidance_scale']:g}, compile {compiled}, channels-last {channels_last}, "
            f"attention {attention}, peak {first['peak_tflops']:.1f} TFLOP/s",
            "",
        ]
        body = []
        for _, row in group.iterrows():
            if row["stage"].startswith("text_encoder"):
                timing = f"{_ms(row['call_median_s'])} [{_ms(row['call_q1_s'])}, {_ms(row['call_q3_s'])}] per call"
            elif row["stage"] == "pipeline":
                timing = ""
            else:
                timing = f"{_ms(row['step_median_s'])} [{_ms(row['step_q1_s'])}, {_ms(row['step_q3_s'])}]"
            ratio = format_cell(row.get("ratio_to_diffusers"), ".3f")
            if ratio and pd.notna(row.get("ratio_to_diffusers_min")):
                ratio += f" [{format_cell(row['ratio_to_diffusers_min'], '.3f')}, {format_cell(row['ratio_to_diffusers_max'], '.3f')}]"
            body.append(
                [
                    row["stage"],
                    timing,
                    _ms(row.get("decode_s")),
                    format_cell(row.get("images_per_s"), ".3f"),
                    format_cell(row.get("tflops_achieved")),
                    format_cell(100 * row["utilisation"] if row.get("utilisation") == row.get("utilisation") else None),
                    format_cell(row.get("peak_memory_gb"), ".2f"),
                    format_cell(row.get("compile_s")),
                    ratio,
                ]
            )
        header = ["stage", "ms/step", "decode ms", "img/s", "TFLOP/s", "util %", "peak GB", "compile s", "ratio"]
        lines.append(markdown_table(pd.DataFrame(body, columns=header)))
    return "\n".join(lines) + "\n"
