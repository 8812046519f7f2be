"""Measuring the 2x2 ablation: run and evaluate its sweep, time the cells, and write the tidy tables under report/data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from suite.analysis.ablation.design import (
    MEASURES,
    AblationConfig,
    Measure,
    ablation_sweep,
    contrasts,
    ordered_cells,
)
from suite.analysis.claims.common import device_name, median_row
from suite.core import paired as paired_tests
from suite.core import stats
from suite.core.errors import UserError
from suite.metrics.fid import frechet_to
from suite.run.evaluate import evaluate_run
from suite.run.options import EvaluateOptions, RunOptions
from suite.run.runner import load_pipelines, run_sweep, time_alternately


def run_and_evaluate(config: AblationConfig, base_dir: Path, out: Path, device: str, progress: bool) -> Path:
    """Run (or resume) the ablation's sweep into ``out/run`` and evaluate it; returns the run folder."""

    folder = out / "run"
    summary = run_sweep(ablation_sweep(config, base_dir), RunOptions(folder, device, progress=progress))
    if not summary.complete:
        raise RuntimeError(f"{folder}: the sweep did not complete")
    evaluate_run(folder, EvaluateOptions(device=device, progress=progress))
    return folder


class PairedCells:
    """Per-image scores and features of the four cells (and of any other presets given: their further training
    runs, compute-matched snapshots), row-aligned by (prompt, seed), with prompts as the units."""

    def __init__(self, config: AblationConfig, records: dict[str, Any], presets: list[str] | None = None):
        self.cells = ordered_cells(config)
        self.presets = list(dict.fromkeys([*self.cells, *(presets or [])]))
        keys = ["prompt_index", "seed_index"]
        common = None
        for cell in self.presets:
            index = pd.MultiIndex.from_frame(records[cell].scores[keys])
            common = index if common is None else common.intersection(index)
        common = common.sort_values()
        self.rows = {
            cell: pd.Series(
                range(len(records[cell].scores)), index=pd.MultiIndex.from_frame(records[cell].scores[keys])
            )
            .reindex(common)
            .to_numpy()
            for cell in self.presets
        }
        self.records = records
        self.units = stats.Units.of(common.get_level_values("prompt_index").to_numpy())

    def scores(self, cell: str) -> pd.DataFrame:
        return self.records[cell].scores.iloc[self.rows[cell]].reset_index(drop=True)

    def values(self, cell: str, measure: Measure) -> np.ndarray:
        """The cell's per-image values of ``measure``: NaN where the image is outside its categories or not asked."""
        scores = self.scores(cell)
        column = scores[measure.per_image].to_numpy(dtype=np.float64)
        if measure.categories:
            column = np.where(scores["toy_category"].isin(measure.categories).to_numpy(), column, np.nan)
        return column

    def unit_sums(self, measure: Measure, presets: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per preset (the four cells unless given) and prompt: the sum of the measure's per-image values and how
        many there are."""
        values = np.stack([self.values(cell, measure) for cell in presets or self.cells])
        asked = ~np.isnan(values)
        sums = np.stack([self.units.sums(np.where(row_asked, row, 0.0)) for row, row_asked in zip(values, asked)])
        return sums, np.stack([self.units.sums(row_asked.astype(np.float64)) for row_asked in asked])

    def statistic(self, measure: Measure, presets: list[str] | None = None) -> Any:
        """``statistic(units) -> the presets' values`` (the four cells unless given) on the resampled prompts."""
        if not measure.per_image:
            return self._fid_statistic(presets or self.cells)
        sums, counts = self.unit_sums(measure, presets)

        def of(chosen: np.ndarray) -> np.ndarray:
            weights = np.bincount(chosen, minlength=self.units.count).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                return (sums @ weights) / (counts @ weights)

        return of

    def _fid_statistic(self, presets: list[str]) -> Any:
        first = self.records[self.cells[0]]
        network = first.row["features"]
        distance = frechet_to(first.reference(network))
        features = [self.records[cell].features(network)[self.rows[cell]] for cell in presets]

        def of(chosen: np.ndarray) -> np.ndarray:
            picked = self.units.rows(chosen)
            return np.asarray([distance(cell_features[picked]) for cell_features in features])

        return of


def cell_table(config: AblationConfig, paired: PairedCells, metrics: pd.DataFrame) -> pd.DataFrame:
    """Each measure of each cell with its 95% interval over prompts: BCa bootstrap of per-image means
    (``stats.mean_interval``), and FID's interval from the evaluation (its method in ``value_interval``); ``n`` images, ``n_prompts`` prompts."""
    rows = []
    for preset in paired.cells:
        point = metrics[metrics["preset"] == preset].iloc[0]
        for measure in MEASURES:
            if measure.per_image:
                values = paired.values(preset, measure)
                asked = ~np.isnan(values)
                interval = stats.mean_interval(values, paired.units)
                value = float(values[asked].mean()) if asked.any() else np.nan
                n, n_prompts = int(asked.sum()), paired.units.restricted(asked).count
                low, high, method = interval.low, interval.high, interval.method
            else:
                value, low, high = point["fid"], point.get("fid_ci95_low"), point.get("fid_ci95_high")
                n, n_prompts, method = point["fid_n"], paired.units.count, point.get("fid_interval")
            rows.append(
                {
                    "cell": preset,
                    **config.cells[preset],
                    "measure": measure.column,
                    "label": measure.label,
                    "value": value,
                    "value_ci95_low": low,
                    "value_ci95_high": high,
                    "n": n,
                    "n_prompts": n_prompts,
                    "value_interval": method,
                }
            )
    return pd.DataFrame(rows)


def effect_table(
    config: AblationConfig,
    paired: PairedCells,
    presets: list[str] | None = None,
    effects: tuple[str, ...] = (),
    family: str = "",
) -> pd.DataFrame:
    """Every contrast of every measure, with its bootstrap interval over prompts, conditional on the networks
    compared; Holm within each family the ablation file names (``families``, each across every measure), and each
    estimate's interval at its family's Bonferroni width.

    ``presets`` (four, in the cells' order) replaces the cells (another training run, compute-matched snapshots);
    ``effects`` keeps only those contrasts, all in one Holm ``family``."""
    family_of = {kind: family or name for name, kinds in config.families.items() for kind in kinds}
    rows, widen = [], []
    for measure in MEASURES:
        statistic = paired.statistic(measure, presets)
        prompts = measured_prompts(paired, measure)
        sums, counts = paired.unit_sums(measure, presets) if measure.per_image else (None, None)
        for effect, kind, reads, weights in contrasts(config):
            if effects and effect not in effects:
                continue
            test = paired_tests.contrast_bootstrap(statistic, weights, paired.units.count, config.resamples)
            p_value, resolution, method = test.p_value, test.p_resolution, test.test
            method = method.replace("units", f"prompts ({prompts} read by this measure)")
            if measure.per_image and not np.isnan(test.difference):  # a sum over prompts: sign-flip each prompt
                contributions = np.asarray(weights) @ (sums / counts.sum(axis=1, keepdims=True))
                p_value, resolution = paired_tests.contrast_sign_flip(contributions)
                method = method.replace(
                    "normal p", f"p: sign flips of each prompt's contribution ({stats.PERMUTATIONS})"
                )
            widen.append(test.interval_at)
            rows.append(
                {
                    "measure": measure.column,
                    "label": measure.label,
                    "higher_is_better": measure.higher_is_better,
                    "effect": effect,
                    "kind": kind,
                    "family": family_of[kind],
                    "reads": reads,
                    "estimate": test.difference,
                    "estimate_ci95_low": test.low,
                    "estimate_ci95_high": test.high,
                    "p_value": p_value,
                    "p_resolution": resolution,
                    "n_prompts": prompts,
                    "method": method,
                }
            )
    table = pd.DataFrame(rows)
    table["p_holm"] = np.nan
    table["estimate_family_ci95_low"], table["estimate_family_ci95_high"] = np.nan, np.nan
    for _, family in table.groupby("family", sort=False):  # a family spans every measure
        table.loc[family.index, "p_holm"] = stats.holm(family["p_value"].to_numpy())
        confidence = stats.family_confidence(len(family))
        for index in family.index:
            low, high = widen[index](confidence)
            table.loc[index, ["estimate_family_ci95_low", "estimate_family_ci95_high"]] = low, high
    return table


def measured_prompts(paired: PairedCells, measure: Measure) -> int:
    """How many prompts a measure reads (its categories' prompts): the unit count behind its intervals."""
    if not measure.per_image:
        return paired.units.count
    asked = ~np.isnan(np.stack([paired.values(cell, measure) for cell in paired.cells])).all(axis=0)
    return paired.units.restricted(asked).count


def cost_tables(
    config: AblationConfig, base_dir: Path, out: Path, metrics: pd.DataFrame, device: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seconds per image (the cells timed alternately, ``timing.repeats`` rounds) and FLOPs per image per cell,
    and each contrast as a ratio: exp of the contrast of log median seconds, resampling rounds; FLOPs exact."""

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
        test = paired_tests.contrast_bootstrap(log_median, weights, repeats, config.resamples)
        flops_ratio = float(np.exp(np.dot(weights, np.log([flops[preset] for preset in cells]))))
        rows.append(
            {
                "effect": effect,
                "kind": kind,
                "reads": reads.replace(" - ", " / "),  # a contrast of logs is a ratio
                "seconds_ratio": float(np.exp(test.difference)),
                "seconds_ratio_ci95_low": float(np.exp(test.low)),
                "seconds_ratio_ci95_high": float(np.exp(test.high)),
                "seconds_p_value": test.p_value,
                "flops_ratio": flops_ratio,
                "method": f"log-median contrast, {test.test.replace('units', 'timing rounds')}; FLOPs counted",
            }
        )
    return cost, pd.DataFrame(rows)
