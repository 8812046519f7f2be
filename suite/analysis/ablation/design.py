"""The 2x2 ablation's design: its file (factors, levels, cells, one sweep), measures and contrasts, fixed before data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from suite.analysis.registration import Candidate
from suite.core.errors import UserError
from suite.run.config import ResolvedSweep, load_named_file, parse_sweep, resolve
from suite.run.options import TimingSettings

DEFAULT_FILE = Path("experiments/ablation.yaml")


DATA = "data"


class AblationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str
    factors: dict[str, list[str]]  # two factors of two levels; the first level of each is the baseline
    cells: dict[str, dict[str, str]]  # preset -> {factor: level}
    training: (
        str  # training.json of the cells, keyed by their levels joined by "-" ("latent-clip"); relative to the file
    )
    # each cell's further training runs of the same recipe (other training seeds), as presets: cell -> [presets]
    runs: dict[str, list[str]] = Field(default_factory=dict)
    # a training run stopped where it had spent another cell's training FLOPs: run preset -> snapshot preset
    compute_matched: dict[str, str] = Field(default_factory=dict)
    rules: dict[str, Any] = Field(default_factory=lambda: {"method": "ablation/v1", "alpha": 0.05})
    sweep: dict[str, Any]  # an ordinary sweep without ``presets`` (the cells are its presets)
    timing: TimingSettings = TimingSettings()
    resamples: int = Field(1000, ge=100)  # bootstrap resamples of every contrast
    # Holm families: name -> the kinds of contrast (main, interaction, simple) adjusted together, fixed here
    families: dict[str, list[str]] = Field(
        default_factory=lambda: {"main effects and interaction": ["main", "interaction"], "simple effects": ["simple"]}
    )
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


KINDS = ("main", "interaction", "simple")  # the kinds of contrast ``contrasts`` returns


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
    named = [kind for kinds in config.families.values() for kind in kinds]
    if sorted(named) != sorted(KINDS):
        raise UserError(f"{path}: families: name each kind of contrast {list(KINDS)} in exactly one family")
    if "presets" in config.sweep:
        raise UserError(f"{path}: sweep.presets: leave it out; the sweep runs the cells' presets")
    uneven = set(config.runs) != set(config.cells) or len({len(runs) for runs in config.runs.values()}) != 1
    if config.runs and uneven:
        raise UserError(f"{path}: runs: give every cell the same number of further training runs")
    every = [*config.cells, *(preset for runs in config.runs.values() for preset in runs)]
    if len(set(every)) != len(every):
        raise UserError(f"{path}: runs: a preset appears twice among the cells and their runs")
    unknown = sorted(set(config.compute_matched) - set(every))
    if unknown:
        raise UserError(f"{path}: compute_matched: {unknown[0]!r} is not a cell or one of its runs")
    resolved = ablation_sweep(config, path.parent)
    sweep = resolved.sweep
    if len(sweep.samplers) * len(sweep.num_inference_steps) != 1:
        raise UserError(f"{path}: sweep: one sampler and one step count (each guidance scale is one grid point)")
    reasons = {float(scale): reason for scale, reason in config.rules.get("grid_points", {}).items()}
    if config.rules.get("method") != "ablation/v1" and set(reasons) != set(sweep.guidance_scale):
        raise UserError(
            f"{path}: rules.grid_points: give each guidance scale of the sweep, with the reason it was chosen"
        )
    if not training_path(config, path.parent).is_file():
        raise UserError(f"{path}: training: no file at {training_path(config, path.parent)}")
    return config


def ablation_sweep(config: AblationConfig, base_dir: Path) -> ResolvedSweep:
    data = {"name": config.name, **config.sweep, "presets": all_presets(config)}
    return resolve(parse_sweep(data, f"{config.name}: sweep"), base_dir, config.name)


def all_presets(config: AblationConfig) -> list[str]:
    """The cells, their further training runs, and the compute-matched snapshots: every preset the sweep runs."""
    runs = [preset for cell in config.cells for preset in config.runs.get(cell, [])]
    return [*config.cells, *runs, *config.compute_matched.values()]


def training_runs(config: AblationConfig) -> dict[str, list[str]]:
    """Each cell's training runs as presets, the cell's own first (one run per cell without ``runs``)."""
    return {cell: [cell, *config.runs.get(cell, [])] for cell in config.cells}


def registered_rules(config: AblationConfig) -> dict[str, Any]:
    """The ablation's judging rules as registered: its ``rules:`` and its Holm families."""
    return {**config.rules, "families": config.families}


def registry_key(config: AblationConfig) -> str:
    return f"ablation/{config.name}"


def candidate(config: AblationConfig, data_exist: bool = False) -> Candidate:
    """What ``suite ablation --register`` records and measuring checks: the rules, and the design (factors, cells,
    training runs, compute-matched snapshots, the whole sweep, resamples), each hashed."""
    design = {
        "factors": config.factors,
        "cells": config.cells,
        "runs": config.runs,
        "compute_matched": config.compute_matched,
        "sweep": config.sweep,
        "resamples": config.resamples,
    }
    return Candidate(registry_key(config), registered_rules(config), design, data_exist)


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
