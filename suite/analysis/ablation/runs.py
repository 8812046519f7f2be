"""The ablation over training runs: each cell trained several times, effects with both sources of variation.

Conditional effects (``measure.effect_table``) hold the four networks fixed and resample prompts. Effects
*over training runs* treat a cell's runs as a sample of what its recipe produces:

- each cell's value is the mean of its R runs' values (every run on the same prompts and seeds);
- the contrast's variance is the prompt bootstrap's variance of that run-averaged contrast plus the
  training-run term sum(w_c^2 s_c^2) / R, with s_c^2 cell c's between-run variance (R - 1 degrees of
  freedom each): a random training-run effect, estimated by moments, each cell with its own variance;
- the interval and p use Student's t with Welch-Satterthwaite degrees of freedom for the training-run
  term (the prompt term, from hundreds of prompts, counted as known): where the training-run term
  dominates, 4 (R - 1) when the four cells vary alike and as few as R - 1 when one cell's runs dominate;
  where the prompt term is a large part of the variance, more. With 3 runs a cell that is few degrees of
  freedom, and the intervals say so.

The between-run deviations are measured on the same prompts, so they also hold part of the per-image noise
the prompt term already counts: the interval is conservative by that much.

``run_values_table`` gives every run's value and each cell's between-run standard deviation (chi-square
interval), ``matched_table`` the space effect at matched images and at matched training FLOPs (the pixel runs
stopped where they had spent the latent runs' FLOPs), and ``budget_table`` what each cell cost to train,
shared parts included.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats as scipy_stats

from suite.analysis.ablation.design import (
    DATA,
    MEASURES,
    AblationConfig,
    all_presets,
    candidate,
    contrasts,
    ordered_cells,
    registry_key,
    training_path,
    training_runs,
)
from suite.analysis.ablation.measure import (
    PairedCells,
    cell_table,
    cost_tables,
    effect_table,
    measured_prompts,
    run_and_evaluate,
)
from suite.analysis.compare import load_records
from suite.analysis.registration import (
    MARKER,
    begin_measurement,
    history,
    read_measured,
    read_registry,
    registry_path,
    require_registered,
    write_measured,
)
from suite.core import stats
from suite.core.errors import UserError
from suite.core.files import atomic_write_bytes
from suite.run.folder import read_run
from suite.run.options import EvaluateOptions


def over_runs_table(config: AblationConfig, paired: PairedCells) -> pd.DataFrame:
    """Every contrast of every measure over training runs (module docstring), Holm within the file's families."""
    runs = training_runs(config)
    cells = ordered_cells(config)
    count = len(runs[cells[0]])
    if count < 2:
        return pd.DataFrame()
    presets = [preset for cell in cells for preset in runs[cell]]
    family_of = {kind: family for family, kinds in config.families.items() for kind in kinds}
    rng = np.random.default_rng(stats.SEED)
    draws = [rng.integers(0, paired.units.count, paired.units.count) for _ in range(config.resamples)]
    rows = []
    for measure in MEASURES:
        statistic = paired.statistic(measure, presets)
        values = statistic(np.arange(paired.units.count)).reshape(len(cells), count)
        means = values.mean(axis=1)
        spreads = values.var(axis=1, ddof=1)  # each cell's between-run variance
        resampled = np.stack([statistic(draw).reshape(len(cells), count).mean(axis=1) for draw in draws])
        for effect, kind, reads, weights in contrasts(config):
            weights = np.asarray(weights)
            prompt_variance = float(np.nanvar(resampled @ weights, ddof=1))
            terms = weights**2 * spreads / count
            run_variance = float(terms.sum())
            error = math.sqrt(prompt_variance + run_variance)
            # Welch-Satterthwaite: the prompt term's degrees of freedom are taken as infinite
            degrees = (prompt_variance + run_variance) ** 2 / max(float((terms**2).sum() / (count - 1)), 1e-300)
            degrees = float(min(degrees, 1e6))
            estimate = float(weights @ means)
            rows.append(
                {
                    "measure": measure.column,
                    "label": measure.label,
                    "higher_is_better": measure.higher_is_better,
                    "effect": effect,
                    "kind": kind,
                    "family": family_of[kind],
                    "reads": reads,
                    "estimate": estimate,
                    "standard_error": error,
                    "se_prompts": math.sqrt(prompt_variance),
                    "se_training_runs": math.sqrt(run_variance),
                    "degrees_of_freedom": degrees,
                    "p_value": float(2 * scipy_stats.t.sf(abs(estimate) / error, degrees)) if error > 0 else math.nan,
                    "runs_per_cell": count,
                    "n_prompts": measured_prompts(paired, measure),
                    "method": (
                        f"mean of {count} training runs per cell; variance = bootstrap over prompts "
                        f"({config.resamples}) + each cell's between-run variance / {count}; t, Welch-Satterthwaite df"
                    ),
                }
            )
    table = pd.DataFrame(rows)
    quantile = scipy_stats.t.ppf(1 - stats.ALPHA / 2, table["degrees_of_freedom"])
    table["estimate_ci95_low"] = table["estimate"] - quantile * table["standard_error"]
    table["estimate_ci95_high"] = table["estimate"] + quantile * table["standard_error"]
    table["p_resolution"] = 0.0
    return holm_over_runs(table)


def holm_over_runs(table: pd.DataFrame) -> pd.DataFrame:
    """Holm within each family across every row given (every measure, and every grid point when the rows of
    several are passed together), and each estimate's t interval at its family's Bonferroni width."""
    table = table.copy()
    table["p_holm"] = np.nan
    for _, family in table.groupby("family", sort=False):
        table.loc[family.index, "p_holm"] = stats.holm(family["p_value"].to_numpy())
        level = stats.family_confidence(len(family))
        wide = scipy_stats.t.ppf(1 - (1 - level) / 2, family["degrees_of_freedom"])
        table.loc[family.index, "estimate_family_ci95_low"] = family["estimate"] - wide * family["standard_error"]
        table.loc[family.index, "estimate_family_ci95_high"] = family["estimate"] + wide * family["standard_error"]
    return table


def run_values_table(config: AblationConfig, paired: PairedCells) -> pd.DataFrame:
    """Every training run's value of every measure (all images), and each cell's between-run standard deviation
    with its chi-square 95% interval (R - 1 degrees of freedom)."""
    runs = training_runs(config)
    rows = []
    for measure in MEASURES:
        for cell in ordered_cells(config):
            values = paired.statistic(measure, runs[cell])(np.arange(paired.units.count))
            count = len(values)
            spread = float(np.std(values, ddof=1)) if count > 1 else math.nan
            low = high = math.nan
            if count > 1:
                low = math.sqrt((count - 1) * spread**2 / scipy_stats.chi2.ppf(1 - stats.ALPHA / 2, count - 1))
                high = math.sqrt((count - 1) * spread**2 / scipy_stats.chi2.ppf(stats.ALPHA / 2, count - 1))
            for run, value in zip(runs[cell], values):
                rows.append(
                    {
                        "measure": measure.column,
                        "cell": cell,
                        **config.cells[cell],
                        "run": run,
                        "value": float(value),
                        "cell_mean": float(np.mean(values)),
                        "run_sd": spread,
                        "run_sd_ci95_low": low,
                        "run_sd_ci95_high": high,
                    }
                )
    return pd.DataFrame(rows)


def matched_table(config: AblationConfig, paired: PairedCells) -> pd.DataFrame:
    """The first factor's effects (main and simple) on one set of training runs, at matched images (the runs as
    trained) and at matched training FLOPs (``compute_matched`` snapshots in their place), conditional on these
    networks; each comparison its own Holm family."""
    if not config.compute_matched:
        return pd.DataFrame()
    runs, cells = training_runs(config), ordered_cells(config)
    index = next(i for i in range(len(runs[cells[0]])) if any(runs[c][i] in config.compute_matched for c in cells))
    trained = [runs[cell][index] for cell in cells]
    matched = [config.compute_matched.get(preset, preset) for preset in trained]
    factor = next(iter(config.factors))
    wanted = tuple(
        effect for effect, *_ in contrasts(config) if effect == factor or effect.startswith(f"{factor} within")
    )
    tables = []
    for name, presets in (("matched images", trained), ("matched training FLOPs", matched)):
        table = effect_table(config, paired, presets, wanted, family=name)
        tables.append(table.assign(comparison=name, presets=" / ".join(presets)))
    return pd.concat(tables, ignore_index=True)


def _training_key(config: AblationConfig, cell: str, preset: str) -> str:
    """A run's key in training.json: the cell's levels joined by "-", plus what the run's preset adds to the cell's."""
    levels = "-".join(config.cells[cell][factor] for factor in config.factors)
    return levels + preset.removeprefix(cell)


def check_training_records(config: AblationConfig, base_dir: Path) -> None:
    """Every run and snapshot the file names has its training record (before anything is sampled)."""
    summaries = json.loads(training_path(config, base_dir).read_text())
    for cell, presets in training_runs(config).items():
        for preset in [*presets, *(config.compute_matched[run] for run in presets if run in config.compute_matched)]:
            if _training_key(config, cell, preset) not in summaries:
                raise UserError(
                    f"{config.training}: no training record {_training_key(config, cell, preset)!r} for {preset!r}; "
                    "train it: suite train toy --ablation"
                )


def budget_table(config: AblationConfig, base_dir: Path) -> pd.DataFrame:
    """Every training run (and snapshot) with its recipe and budget, and per cell what the whole pipeline cost to
    train: the cell's denoiser and encoder plus the shared parts it runs (``shared_parts.json``)."""
    path = training_path(config, base_dir)
    summaries = json.loads(path.read_text())
    shared_path = path.parent / "shared_parts.json"
    shared = json.loads(shared_path.read_text()) if shared_path.is_file() else {}
    snapshots = {run: snapshot for run, snapshot in config.compute_matched.items()}
    rows = []
    for cell, presets in training_runs(config).items():
        space = next(iter(config.cells[cell].values()))
        parts = {name: part for name, part in shared.items() if part["used_by"] == space}
        for preset in [*presets, *(snapshots[run] for run in presets if run in snapshots)]:
            key = _training_key(config, cell, preset)
            if key not in summaries:
                raise UserError(f"{config.training}: no training record {key!r} for {preset!r}")
            summary, recipe = summaries[key], summaries[key]["recipe"]
            own = summary["training_flops"]
            rows.append(
                {
                    "cell": cell,
                    **config.cells[cell],
                    "run": preset,
                    "seed": recipe["seed"],
                    "iterations": recipe["iterations"],
                    "images_seen": summary["images_seen"],
                    "batch_size": recipe["batch_size"],
                    "learning_rate": recipe["learning_rate"],
                    "ema_decay": recipe["ema_decay"],
                    "caption_dropout": recipe["caption_dropout"],
                    "unet_parameters": summary["parameters"]["unet"],
                    "text_encoder_parameters": summary["parameters"]["text_encoder"],
                    "training_pflops": own / 1e15,
                    "shared_parts": " + ".join(parts) or "none",
                    "shared_pflops": sum(part["training_flops"] for part in parts.values()) / 1e15,
                    "pipeline_pflops": (own + sum(part["training_flops"] for part in parts.values())) / 1e15,
                    "pipeline_parameters": sum(summary["parameters"].values())
                    + sum(part["parameters"] for part in parts.values()),
                    "wall_minutes": summary["wall_seconds"] / 60,
                    "threads": summary["threads"],
                    "processor": summary["processor"],
                }
            )
    return pd.DataFrame(rows)


def measure(config: AblationConfig, base_dir: Path, out: Path, device: str = "auto", progress: bool = True) -> Path:
    """Write the ablation's tables to ``out/report/data`` (the ablation file last) unless they exist.

    Every table has one block per grid point (``guidance_scale``); timing uses the four cells at the first.
    """
    folder = out / "report" / DATA
    if (folder / "ablation.yaml").is_file():
        measured = read_measured(folder)
        latest = history(read_registry(registry_path(base_dir)), registry_key(config))
        if progress and latest and (measured is None or measured.rules_hash != latest[-1].hash):
            print(
                f"{folder}: measured under earlier rules than the file's; delete it to measure under the current ones"
            )
        return folder
    registration = require_registered(registry_path(base_dir), candidate(config))
    check_training_records(config, base_dir)
    # the measurement's time: after the checks, before any data; a resumed one keeps its first start
    began = begin_measurement(registry_path(base_dir), out / MARKER, registration)
    run = read_run(run_and_evaluate(config, base_dir, out, device, progress))
    loaded = load_records(run, EvaluateOptions(device, progress=False))
    presets = all_presets(config)
    blocks: dict[str, list[pd.DataFrame]] = {}
    for guidance in sorted({key[3] for key in loaded}):
        records = {key[0]: record for key, record in loaded.items() if key[3] == guidance}
        paired = PairedCells(config, records, presets)
        metrics = run.metrics[run.metrics["guidance_scale"] == guidance]
        for name, frame in {
            "cells": cell_table(config, paired, metrics),
            "effects": effect_table(config, paired),
            "effects_over_runs": over_runs_table(config, paired),
            "run_values": run_values_table(config, paired),
            "matched": matched_table(config, paired),
        }.items():
            if len(frame):
                blocks.setdefault(name, []).append(frame.assign(guidance_scale=guidance))
    first = sorted({key[3] for key in loaded})[0]
    timed = config.model_copy(
        update={"runs": {}, "compute_matched": {}, "sweep": {**config.sweep, "guidance": [first]}}
    )
    cost, cost_effects = cost_tables(timed, base_dir, out, run.metrics[run.metrics["guidance_scale"] == first], device)
    tables = {name: pd.concat(frames, ignore_index=True) for name, frames in blocks.items()}
    if "effects_over_runs" in tables:  # the headline: one Holm family across both grid points
        tables["effects_over_runs"] = holm_over_runs(tables["effects_over_runs"])
    tables |= {"cost": cost, "cost_effects": cost_effects, "training": budget_table(config, base_dir)}
    for name, frame in tables.items():
        atomic_write_bytes(folder / f"{name}.csv", frame.to_csv(index=False, float_format="%.6g").encode())
    write_measured(folder, registration, began)
    written = config.model_dump(exclude={"name"}, mode="json")
    atomic_write_bytes(folder / "ablation.yaml", yaml.safe_dump(written, sort_keys=False).encode())  # written last
    return folder
