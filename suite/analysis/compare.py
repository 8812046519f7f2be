"""``suite compare RUN``: paired tests between grid points that share prompts and seeds.

Two families of comparisons, each row a difference (b - a) with its 95% interval and p-value:

- within a preset, every grid point (b) against the preset's baseline point (a): the sweep's
  ``evaluation.baseline``, else the preset's most expensive point (FLOPs per image, else seconds);
- across presets, every pair of points with equal sampler, steps and guidance (a: the preset listed
  first in the sweep): the latent-vs-cascaded question, and with unCLIP in the sweep, each pair of families.

Each metric tests in its own way (``Metric.compare``), always at the unit of the prompt: per-image
scores with a sign-flip test of whole prompts, per-image correctness with the exact sign-flip test of each
prompt's discordant count (McNemar's with one seed per prompt), set metrics with a bootstrap over prompts
that resamples both points jointly (interval and p). A family is one kind of comparison and one compared number:
Holm-Bonferroni runs within it, and each row also gets its interval at the family's Bonferroni confidence
(``difference_family_ci95_low/_high``: all of a family's intervals hold together at 95%). Rows of set
metrics from no more images than feature dimensions are kept but marked not comparable and left out of
their family.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from suite.core import stats
from suite.core.errors import UserError
from suite.core.files import atomic_write_table
from suite.core.stats import ALPHA
from suite.metrics import METRICS
from suite.metrics.base import PointRecord
from suite.run.evaluate import EVALUATION_DIR, Evaluator, grid_key
from suite.run.folder import GRID_COLUMNS, RunFolder, read_run
from suite.run.integrity import point_problem, record_tables
from suite.run.options import EvaluateOptions

COMPARISONS = "comparisons"


def point_key(row: pd.Series | dict) -> tuple:
    return tuple(row[column] for column in GRID_COLUMNS)


def load_records(run: RunFolder, options) -> dict[tuple, PointRecord]:
    """Every evaluated grid point's row, per-image scores and features, as evaluation left them."""

    evaluator = Evaluator(run, options)
    rows = {point_key(row): row for _, row in run.metrics.iterrows()}
    records = {}
    for _, group in run.samples.groupby(list(GRID_COLUMNS), sort=False):
        folder = run.path / EVALUATION_DIR / grid_key(evaluator, group)
        key = point_key(group.iloc[0])
        problem = point_problem(folder)
        if problem is not None:
            raise UserError(f"{folder}: {problem}; `suite evaluate {run.path}` computes it again")

        def features(network: str, folder: Path = folder) -> np.ndarray:
            return np.load(folder / f"features-{network}.npy")

        resamples = run.resolved.sweep.evaluation.set_resamples or stats.SET_RESAMPLES  # 0: no interval in metrics
        scores = pd.read_parquet(folder / "scores.parquet")
        interval = run.resolved.sweep.evaluation.set_interval
        records[key] = PointRecord(rows[key], scores, features, evaluator.reference, resamples, interval)
    return records


def baseline_points(run: RunFolder) -> dict[str, tuple]:
    """Each preset's baseline grid point: the sweep's ``evaluation.baseline``, else its most expensive point."""
    metrics, baseline = run.metrics, run.resolved.sweep.evaluation.baseline
    costs = [metric.headline for metric in METRICS.values() if metric.higher_is_better is None]
    cost = next((column for column in costs if column in metrics), "seconds_per_image_median")
    chosen = {}
    for preset, points in metrics.groupby("preset", sort=False):
        if baseline is not None:
            match = points[
                (points.sampler == baseline.sampler)
                & (points.num_inference_steps == baseline.num_inference_steps)
                & (points.guidance_scale == baseline.guidance_scale)
            ]
            chosen[preset] = point_key(match.iloc[0])
        else:
            ordered = points.sort_values([cost, "num_inference_steps", "guidance_scale"], kind="stable")
            chosen[preset] = point_key(ordered.iloc[-1])
    return chosen


def pairs(run: RunFolder) -> list[tuple[str, tuple, tuple]]:
    """(kind, a, b) for every comparison of the run, in a stable order."""
    keys = [point_key(row) for _, row in run.metrics.iterrows()]
    found = []
    for preset, baseline in baseline_points(run).items():
        found += [("within preset", baseline, key) for key in keys if key[0] == preset and key != baseline]
    presets = list(dict.fromkeys(key[0] for key in keys))
    by_settings = {key: key for key in keys}
    for first, second in itertools.combinations(presets, 2):
        for key in keys:
            if key[0] == first and (second, *key[1:]) in by_settings:
                found.append(("across presets", key, (second, *key[1:])))
    return found


def compare_points(a: PointRecord, b: PointRecord, metrics: list[str]) -> list[dict[str, Any]]:
    """Every metric's paired tests of b against a."""
    rows = []
    for name in metrics:
        rows += METRICS.get(name).compare(a, b)
    return rows


def verdict(row: pd.Series) -> str:
    """What the adjusted test says about b against a, in words."""
    if not row["comparable"]:
        return "not comparable (n <= feature dimension)"
    if not row["p_holm"] < ALPHA:
        return "no significant difference"
    direction = row["higher_is_better"]
    if direction is None or pd.isna(direction):
        return "significant difference"
    return "b better" if (row["difference"] > 0) == bool(direction) else "b worse"


def compare_run(run_path: Path, options=None) -> pd.DataFrame:
    """Write RUN/comparisons.parquet and .csv: one row per (pair of grid points, compared number).

    Example:
        >>> compare_run(Path("results/toy"))[["kind", "metric", "difference", "difference_ci95_low", "difference_ci95_high", "p_holm"]]
    """

    options = options or EvaluateOptions(progress=False)
    run = read_run(run_path)
    if run.metrics is None:
        raise UserError(f"{run_path} is not evaluated yet; run `suite evaluate {run_path}` (or `suite compare`) first")
    records = load_records(run, options)
    metrics = list(run.resolved.sweep.metrics)
    rows = []
    for kind, a, b in pairs(run):
        if a == b or a not in records or b not in records:  # nothing to test against itself or without images
            continue
        identity = {"kind": kind} | {f"a_{field}": value for field, value in zip(GRID_COLUMNS, a)}
        identity |= {f"b_{field}": value for field, value in zip(GRID_COLUMNS, b)}
        rows += [
            identity | row | {"comparable": row.get("comparable", True)}
            for row in compare_points(records[a], records[b], metrics)
        ]
    table = adjusted_within_families(pd.DataFrame(rows))
    atomic_write_table(table, run.path / COMPARISONS)
    record_tables(run.path, [f"{COMPARISONS}.parquet", f"{COMPARISONS}.csv"])
    return table


def adjusted_within_families(table: pd.DataFrame) -> pd.DataFrame:
    """Holm's p and the Bonferroni-wide interval within each (kind, metric) family of comparable rows, and verdicts."""
    if table.empty:
        return table
    at = table.pop("interval_at")
    holm_p = np.full(len(table), np.nan)
    low, high = np.full(len(table), np.nan), np.full(len(table), np.nan)
    size = np.zeros(len(table), dtype=int)
    comparable = table["comparable"].astype(bool).to_numpy()
    for _, family in table[comparable].groupby(["kind", "metric"], sort=False):
        positions = table.index.get_indexer(family.index)
        holm_p[positions] = stats.holm(family["p_value"].to_numpy())
        size[positions] = len(family)
        for position in positions:
            low[position], high[position] = at.iloc[position](stats.family_confidence(len(family)))
    table.insert(table.columns.get_loc("p_value") + 1, "p_holm", holm_p)
    table.insert(table.columns.get_loc("difference_ci95_high") + 1, "difference_family_ci95_low", low)
    table.insert(table.columns.get_loc("difference_family_ci95_low") + 1, "difference_family_ci95_high", high)
    table.insert(table.columns.get_loc("p_holm") + 1, "family_size", size)
    table["verdict"] = table.apply(verdict, axis=1)
    return table
