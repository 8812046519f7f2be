"""``suite ablation``: a 2x2 ablation at one training budget that separates two factors, e.g. where the
model denoises (latent vs pixel cascade) from which text encoder it reads (CLIP-style vs T5-style).

An ablation file (``experiments/ablation.yaml``) names the two factors and their levels, the preset of
each cell, and one ordinary sweep with one grid point per cell (same prompts, seeds, sampler, steps and
guidance for all four). ``suite ablation`` runs in two phases, like ``suite claims``:

1. **measure**: run and evaluate the sweep (a resumable run folder ``<out>/run``), time the four cells
   alternately, and write small tidy tables to ``<out>/report/data/``, the ablation file last:
   - ``cells.csv``: each measure of each cell with its interval from the evaluation;
   - ``effects.csv``: both main effects, the interaction (difference of differences) and the four simple
     effects of each measure, each a contrast over the four cells with a bootstrap interval that
     resamples prompts jointly for all cells (``stats.contrast_bootstrap``), Holm-adjusted;
   - ``cost.csv`` / ``cost_effects.csv``: seconds and FLOPs per image, and the factors' effects on them
     as ratios (contrasts of log seconds, resampling timing rounds);
   - ``training.csv``: the cells' training budget from their ``training.json``.
2. **report**: ``report.md``, ``index.html`` and a figure, from those tables alone (``--report-only``
   rebuilds them byte for byte).

Effects are differences of the second level minus the first (the baseline). With cells ordered
(a0 b0, a0 b1, a1 b0, a1 b1): main effect of A = mean over B of (a1 - a0), weights (-1/2, -1/2, 1/2, 1/2);
interaction = (a1 b1 - a1 b0) - (a0 b1 - a0 b0), weights (1, -1, -1, 1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field

from suite import stats
from suite.config import ResolvedSweep, load_named_file, parse_sweep, resolve
from suite.errors import UserError

DEFAULT_FILE = Path("experiments/ablation.yaml")
DATA = "data"
ALPHA = 0.05


class TimingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    batch: int = Field(16, ge=1)
    repeats: int = Field(10, ge=2)


class AblationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str
    factors: dict[str, list[str]]  # two factors of two levels; the first level of each is the baseline
    cells: dict[str, dict[str, str]]  # preset -> {factor: level}
    training: (
        str  # training.json of the cells, keyed by their levels joined by "-" ("latent-clip"); relative to the file
    )
    sweep: dict[str, Any]  # an ordinary sweep without ``presets`` (the cells are its presets)
    timing: TimingSettings = TimingSettings()
    resamples: int = Field(1000, ge=100)  # bootstrap resamples of every contrast
    notes: list[str] = Field(default_factory=list)  # what the report must say about the design (shared parts, ...)
    name: str = ""  # the file's stem, filled in by ``load_ablation``


@dataclass(frozen=True)
class Measure:
    """One compared number: the mean of per-image scores (0/1 answers or scores) over some prompt categories, or FID."""

    column: str  # its name in the tables
    label: str
    per_image: str  # the per-image column in scores.parquet; "" for FID (a set statistic, from the metrics table)
    categories: tuple[str, ...] = ()  # toy_category values the images must have; () for all
    higher_is_better: bool = True
    display: str = ".3f"


PAIRS = ("pair", "held-out pair")
MEASURES = (
    Measure("exact_single", "single-object exact match", "toy_correct", categories=("single",)),
    Measure("binding_pairs", "attribute binding, two-object prompts", "toy_binding", categories=PAIRS),
    Measure("relation_pairs", "spatial relation, two-object prompts", "toy_relation", categories=PAIRS),
    Measure("exact_held_out", "exact match, held-out pairs", "toy_correct", categories=("held-out pair",)),
    Measure("exact_all", "exact match, all prompts", "toy_correct"),
    Measure("clip_score", "CLIP score (toy CLIP)", "clip_score", display=".2f"),
    Measure("fid", "FID (toy-CLIP features)", "", higher_is_better=False, display=".2f"),
)
MAIN_EFFECTS = ("main", "interaction")  # kinds of contrast tested as one Holm family; simple effects are another


def load_ablation(path: Path) -> AblationConfig:
    """Read and validate an ablation file: a 2x2 design whose cells are presets, and its sweep as a sweep."""
    config = load_named_file(path, AblationConfig, "ablation file")
    factors = config.factors
    if len(factors) != 2 or any(len(levels) != 2 or len(set(levels)) != 2 for levels in factors.values()):
        raise UserError(f"{path}: factors: a 2x2 design needs two factors of two distinct levels each")
    combinations = {tuple(cell.get(factor) for factor in factors) for cell in config.cells.values()}
    wanted = {(a, b) for a in next(iter(factors.values())) for b in list(factors.values())[1]}
    if len(config.cells) != 4 or combinations != wanted:
        raise UserError(f"{path}: cells: give one preset for each of the 4 level combinations of {list(factors)}")
    if "presets" in config.sweep:
        raise UserError(f"{path}: sweep.presets: leave it out; the sweep runs the cells' presets")
    resolved = ablation_sweep(config, path.parent)
    sweep = resolved.sweep
    if len(sweep.samplers) * len(sweep.num_inference_steps) * len(sweep.guidance_scale) != 1:
        raise UserError(f"{path}: sweep: one sampler, one step count and one guidance scale (one point per cell)")
    if not training_path(config, path.parent).is_file():
        raise UserError(f"{path}: training: no file at {training_path(config, path.parent)}")
    return config


def ablation_sweep(config: AblationConfig, base_dir: Path) -> ResolvedSweep:
    data = {"name": config.name, **config.sweep, "presets": list(config.cells)}
    return resolve(parse_sweep(data, f"{config.name}: sweep"), base_dir, config.name)


def training_path(config: AblationConfig, base_dir: Path) -> Path:
    path = Path(config.training)
    return path if path.is_absolute() else base_dir / path


def ordered_cells(config: AblationConfig) -> list[str]:
    """The cells as (a0 b0, a0 b1, a1 b0, a1 b1), the order the contrast weights assume."""
    (first, levels_a), (second, levels_b) = config.factors.items()
    by_levels = {(cell[first], cell[second]): preset for preset, cell in config.cells.items()}
    return [by_levels[(a, b)] for a in levels_a for b in levels_b]


def contrasts(config: AblationConfig) -> list[tuple[str, str, str, tuple[float, ...]]]:
    """(effect, kind, what it reads, weights over ``ordered_cells``) for the main effects, interaction, simple effects."""
    (a, (a0, a1)), (b, (b0, b1)) = config.factors.items()
    return [
        (a, "main", f"{a1} - {a0}, averaged over {b}", (-0.5, -0.5, 0.5, 0.5)),
        (b, "main", f"{b1} - {b0}, averaged over {a}", (-0.5, 0.5, -0.5, 0.5)),
        (f"{a} x {b}", "interaction", f"({a1} {b1} - {a1} {b0}) - ({a0} {b1} - {a0} {b0})", (1.0, -1.0, -1.0, 1.0)),
        (f"{b} within {a0}", "simple", f"{a0} {b1} - {a0} {b0}", (-1.0, 1.0, 0.0, 0.0)),
        (f"{b} within {a1}", "simple", f"{a1} {b1} - {a1} {b0}", (0.0, 0.0, -1.0, 1.0)),
        (f"{a} within {b0}", "simple", f"{a1} {b0} - {a0} {b0}", (-1.0, 0.0, 1.0, 0.0)),
        (f"{a} within {b1}", "simple", f"{a1} {b1} - {a0} {b1}", (0.0, -1.0, 0.0, 1.0)),
    ]


# -- measure ------------------------------------------------------------------------------------------


def run_and_evaluate(config: AblationConfig, base_dir: Path, out: Path, device: str, progress: bool) -> Path:
    """Run (or resume) the ablation's sweep into ``out/run`` and evaluate it; returns the run folder."""
    from suite.metrics.evaluate import EvaluateOptions, evaluate_run
    from suite.runner import RunOptions, run_sweep

    folder = out / "run"
    summary = run_sweep(ablation_sweep(config, base_dir), RunOptions(folder, device, progress=progress))
    if not summary.complete:
        raise RuntimeError(f"{folder}: the sweep did not complete")
    evaluate_run(folder, EvaluateOptions(device=device, progress=progress))
    return folder


class PairedCells:
    """The four cells' per-image scores and features, row-aligned by (prompt, seed), with prompts as the units."""

    def __init__(self, config: AblationConfig, records: dict[str, Any]):
        self.cells = ordered_cells(config)
        keys = ["prompt_index", "seed_index"]
        common = None
        for cell in self.cells:
            index = pd.MultiIndex.from_frame(records[cell].scores[keys])
            common = index if common is None else common.intersection(index)
        common = common.sort_values()
        self.rows = {
            cell: pd.Series(
                range(len(records[cell].scores)), index=pd.MultiIndex.from_frame(records[cell].scores[keys])
            )
            .reindex(common)
            .to_numpy()
            for cell in self.cells
        }
        self.records = records
        prompts = common.get_level_values("prompt_index").to_numpy()
        self.units, self.unit_of_row = np.unique(prompts, return_inverse=True)
        self.members = [np.flatnonzero(self.unit_of_row == unit) for unit in range(len(self.units))]

    def scores(self, cell: str) -> pd.DataFrame:
        return self.records[cell].scores.iloc[self.rows[cell]].reset_index(drop=True)

    def values(self, cell: str, measure: Measure) -> np.ndarray:
        """The cell's per-image values of ``measure``: NaN where the image is outside its categories or not asked."""
        scores = self.scores(cell)
        column = scores[measure.per_image].to_numpy(dtype=np.float64)
        if measure.categories:
            column = np.where(scores["toy_category"].isin(measure.categories).to_numpy(), column, np.nan)
        return column

    def statistic(self, measure: Measure) -> Any:
        """``statistic(units) -> the four cells' values`` on the resampled prompts."""
        if not measure.per_image:
            return self._fid_statistic()
        values = np.stack([self.values(cell, measure) for cell in self.cells])
        asked = ~np.isnan(values)
        sums = np.stack(
            [
                np.bincount(self.unit_of_row, np.where(row_asked, row, 0.0), len(self.units))
                for row, row_asked in zip(values, asked)
            ]
        )
        counts = np.stack(
            [np.bincount(self.unit_of_row, row_asked.astype(np.float64), len(self.units)) for row_asked in asked]
        )

        def of(chosen: np.ndarray) -> np.ndarray:
            weights = np.bincount(chosen, minlength=len(self.units)).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                return (sums @ weights) / (counts @ weights)

        return of

    def _fid_statistic(self) -> Any:
        from suite.metrics.fid import frechet_to

        first = self.records[self.cells[0]]
        network = first.row["features"]
        distance = frechet_to(first.reference(network))
        features = [self.records[cell].features(network)[self.rows[cell]] for cell in self.cells]

        def of(chosen: np.ndarray) -> np.ndarray:
            picked = np.concatenate([self.members[unit] for unit in chosen])
            return np.asarray([distance(cell_features[picked]) for cell_features in features])

        return of


def cell_table(config: AblationConfig, paired: PairedCells, metrics: pd.DataFrame) -> pd.DataFrame:
    """Each measure of each cell with its 95% interval: BCa bootstrap of per-image means (``stats.mean_interval``),
    and FID's bootstrap interval from the evaluation."""
    rows = []
    for preset in paired.cells:
        point = metrics[metrics["preset"] == preset].iloc[0]
        for measure in MEASURES:
            if measure.per_image:
                values = paired.values(preset, measure)
                values = values[~np.isnan(values)]
                interval = stats.mean_interval(values)
                value, n = (float(values.mean()) if len(values) else np.nan), len(values)
                low, high, method = interval.low, interval.high, interval.method
            else:
                value, low, high = point["fid"], point.get("fid_ci95_low"), point.get("fid_ci95_high")
                n, method = point["fid_n"], point.get("fid_interval")
            rows.append(
                {
                    "cell": preset,
                    **config.cells[preset],
                    "measure": measure.column,
                    "label": measure.label,
                    "value": value,
                    "low": low,
                    "high": high,
                    "n": n,
                    "interval": method,
                }
            )
    return pd.DataFrame(rows)


def effect_table(config: AblationConfig, paired: PairedCells) -> pd.DataFrame:
    """Every contrast of every measure, with its bootstrap interval; Holm within main effects + interactions and
    within simple effects."""
    rows = []
    for measure in MEASURES:
        statistic = paired.statistic(measure)
        for effect, kind, reads, weights in contrasts(config):
            test = stats.contrast_bootstrap(statistic, weights, len(paired.units), config.resamples)
            rows.append(
                {
                    "measure": measure.column,
                    "label": measure.label,
                    "higher_is_better": measure.higher_is_better,
                    "effect": effect,
                    "kind": kind,
                    "reads": reads,
                    "estimate": test.difference,
                    "low": test.low,
                    "high": test.high,
                    "p_value": test.p_value,
                    "n_prompts": test.n_pairs,
                    "method": test.test,
                }
            )
    table = pd.DataFrame(rows)
    table["p_holm"] = np.nan
    for family in (table["kind"].isin(MAIN_EFFECTS), table["kind"] == "simple"):
        table.loc[family, "p_holm"] = stats.holm(table.loc[family, "p_value"].to_numpy())
    return table


def cost_tables(
    config: AblationConfig, base_dir: Path, out: Path, metrics: pd.DataFrame, device: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seconds per image (the cells timed alternately, ``timing.repeats`` rounds) and FLOPs per image per cell,
    and each contrast as a ratio: exp of the contrast of log median seconds, resampling rounds; FLOPs exact."""
    from suite.runner import RunOptions, load_pipelines
    from suite.timing import time_alternately
    from suite.verdicts.experiments import device_name, median_row

    batch, repeats = config.timing.batch, config.timing.repeats
    resolved = ablation_sweep(config.model_copy(update={"sweep": {**config.sweep, "metrics": []}}), base_dir)
    loaded = list(load_pipelines(resolved, RunOptions(out / "run", device, progress=False)))
    if any(len(item.images) < batch for _, (item, *_) in loaded):
        raise UserError(f"{config.name}: timing.batch {batch} is larger than the sweep's batch_size")
    seconds = time_alternately(loaded, batch, repeats)
    machine = device_name(loaded[0][0].options.device)
    cells = ordered_cells(config)
    flops = {preset: float(metrics.loc[metrics.preset == preset, "gflops_per_image"].iloc[0]) for preset in cells}
    cost = pd.DataFrame(
        [
            {
                "cell": preset,
                **config.cells[preset],
                "gflops_per_image": flops[preset],
                **median_row("seconds_per_image", seconds[preset]),
                "timing_batch": batch,
                "timing_repeats": repeats,
                "device": machine,
            }
            for preset in cells
        ]
    )
    logs = np.log(np.asarray([seconds[preset] for preset in cells]))  # cells x rounds

    def log_median(chosen: np.ndarray) -> np.ndarray:
        return np.median(logs[:, chosen], axis=1)

    rows = []
    for effect, kind, reads, weights in contrasts(config):
        test = stats.contrast_bootstrap(log_median, weights, repeats, config.resamples)
        flops_ratio = float(np.exp(np.dot(weights, np.log([flops[preset] for preset in cells]))))
        rows.append(
            {
                "effect": effect,
                "kind": kind,
                "reads": reads.replace(" - ", " / "),  # a contrast of logs is a ratio
                "seconds_ratio": float(np.exp(test.difference)),
                "seconds_ratio_low": float(np.exp(test.low)),
                "seconds_ratio_high": float(np.exp(test.high)),
                "seconds_p_value": test.p_value,
                "flops_ratio": flops_ratio,
                "method": f"log-median contrast, {test.test.replace('units', 'timing rounds')}; FLOPs counted",
            }
        )
    return cost, pd.DataFrame(rows)


def training_table(config: AblationConfig, base_dir: Path) -> pd.DataFrame:
    """The budget each cell was trained with, from its training.json (one entry per cell, keyed by cell)."""
    summaries = json.loads(training_path(config, base_dir).read_text())
    rows = []
    for preset in ordered_cells(config):
        key = "-".join(config.cells[preset][factor] for factor in config.factors)
        if key not in summaries:
            raise UserError(f"{config.training}: no training record {key!r} for cell {preset!r}")
        summary = summaries[key]
        recipe = summary["recipe"]
        rows.append(
            {
                "cell": preset,
                **config.cells[preset],
                "images_seen": summary["images_seen"],
                "iterations": recipe["iterations"],
                "batch_size": recipe["batch_size"],
                "learning_rate": recipe["learning_rate"],
                "ema_decay": recipe["ema_decay"],
                "caption_dropout": recipe["caption_dropout"],
                "seed": recipe["seed"],
                "unet_parameters": summary["parameters"]["unet"],
                "text_encoder_parameters": summary["parameters"]["text_encoder"],
                "training_pflops": summary["training_flops"] / 1e15,
                "wall_minutes": summary["wall_seconds"] / 60,
                "threads": summary["threads"],
                "processor": summary["processor"],
            }
        )
    return pd.DataFrame(rows)


def measure(config: AblationConfig, base_dir: Path, out: Path, device: str = "auto", progress: bool = True) -> Path:
    """Write the ablation's tables to ``out/report/data`` (the ablation file last) unless they exist."""
    from suite.compare import load_records
    from suite.metrics.evaluate import EvaluateOptions
    from suite.results import atomic_write_bytes, read_run

    folder = out / "report" / DATA
    if (folder / "ablation.yaml").is_file():
        return folder
    run = read_run(run_and_evaluate(config, base_dir, out, device, progress))
    records = {key[0]: record for key, record in load_records(run, EvaluateOptions(device, progress=False)).items()}
    paired = PairedCells(config, records)
    cost, cost_effects = cost_tables(config, base_dir, out, run.metrics, device)
    tables = {
        "cells": cell_table(config, paired, run.metrics),
        "effects": effect_table(config, paired),
        "cost": cost,
        "cost_effects": cost_effects,
        "training": training_table(config, base_dir),
    }
    for name, frame in tables.items():
        atomic_write_bytes(folder / f"{name}.csv", frame.to_csv(index=False, float_format="%.6g").encode())
    written = config.model_dump(exclude={"name"}, mode="json")
    atomic_write_bytes(folder / "ablation.yaml", yaml.safe_dump(written, sort_keys=False).encode())  # written last
    return folder


def run_ablation(path: Path, out: Path, device: str = "auto", progress: bool = True) -> Path:
    """Measure (unless measured) and build the report; returns the report folder."""
    from suite.ablation_report import build_ablation_report

    config = load_ablation(path)
    measure(config, path.parent, out, device, progress)
    return build_ablation_report(out / "report")
