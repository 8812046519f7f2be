"""Evaluate a finished run folder: one row per grid point in ``metrics``, one row per image in ``scores``.

Each metric of the sweep is a plug-in from ``suite.metrics.METRICS``; this module only loads the
images (checked against their hashes), calls each metric, and keeps what comparisons need.

Works from the run folder alone (config.yaml, manifest.json, samples.parquet, images/), so
``suite evaluate RUN`` reproduces what ``suite sweep`` wrote. Each grid point's results are
written atomically under ``evaluation/<key>/`` keyed by everything they depend on, so a killed
evaluation resumes and a changed image or setting is recomputed. FLOPs are counted once per
preset, on the meta device, and kept in ``costs`` for the report.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from suite.core import stats
from suite.core.errors import UserError
from suite.core.files import atomic_write_bytes, atomic_write_table, sha256_bytes
from suite.metrics import METRICS
from suite.metrics.base import GridPoint
from suite.metrics.networks import CLIP_MODELS, FEATURE_NETWORKS, ClipModel, FeatureNetwork, NetworkContext
from suite.metrics.reference import ReferenceFeatures, load_reference
from suite.metrics.settings import without_unset_added_keys
from suite.model.backends import build_on_meta
from suite.model.devices import resolve_device
from suite.model.flops import PipelineCost, pipeline_cost, stage_cost_rows
from suite.model.presets import PRESETS
from suite.model.sources import cache_root
from suite.model.stages import StageSettings
from suite.run import leases
from suite.run.folder import (
    COSTS,
    GRID_COLUMNS,
    IMAGE_KEY,
    METRICS_TABLE,
    SCORES,
    RunFolder,
    read_run,
    stage_column,
    stage_columns,
    upgraded,
)
from suite.run.integrity import point_problem, record_tables, seal_point
from suite.run.options import EvaluateOptions
from suite.run.preflight import check_evaluation
from suite.run.resume import process_owner

EVALUATION_DIR = "evaluation"
TIMED = ("seconds_per_image", "text_encode_s", "decode_s", "peak_memory_bytes", "batch_size")
EVALUATION_VERSION = 3  # part of each grid point's cache key: bump when a row's columns change
POLL_SECONDS = 2.0  # how often the assembling process looks at grid points other processes compute
STAGE_METRIC_FIELDS = ("name", "num_inference_steps", "guidance_scale", "model_evaluations", "step_median_s")


class Evaluator:
    """Builds each network, reference set and cost model once, on first use, for one run."""

    def __init__(self, run: RunFolder, options: EvaluateOptions):
        self.run, self.sweep = run, run.resolved.sweep
        self.context = NetworkContext(resolve_device(options.device), options.inception_weights)
        self._networks: dict[str, FeatureNetwork] = {}
        self._references: dict[str, ReferenceFeatures] = {}
        self._clip: ClipModel | None = None
        self._pipelines: dict[str, Any] = {}
        self._costs: dict[str, PipelineCost] = {}
        self._models: dict[tuple, Any] = {}  # metrics' own models (Evaluator.model)

    def network(self, name: str) -> FeatureNetwork:
        if name not in self._networks:
            self._networks[name] = FEATURE_NETWORKS.get(name)(self.context)
        return self._networks[name]

    def reference(self, name: str) -> ReferenceFeatures:
        if name not in self._references:
            spec = self.sweep.evaluation.reference
            self._references[name] = load_reference(spec, self.network(name), self.run.path, cache_root())
        return self._references[name]

    def clip(self) -> ClipModel:
        if self._clip is None:
            self._clip = CLIP_MODELS.get(self.sweep.evaluation.clip_model)(self.context)
        return self._clip

    def model(self, key: tuple, load: Callable[[torch.device], Any]) -> Any:
        """A metric's own model (GenEval's detector, a preference model, ...), loaded once per key on the device."""
        if key not in self._models:
            self._models[key] = load(self.context.device)
        return self._models[key]

    def cost(self, preset_name: str) -> PipelineCost:
        """The preset's FLOP counts, from its configs on the meta device (the run's local folder if it had one)."""
        if preset_name not in self._costs:
            preset = PRESETS.get(preset_name)
            local_dir = self.run.manifest.get("models", {}).get(preset_name, {}).get("local_dir")
            if local_dir:
                preset = replace(preset, local_dir=Path(local_dir))
            self._pipelines[preset_name] = build_on_meta(preset)
            self._costs[preset_name] = pipeline_cost(self._pipelines[preset_name])
        return self._costs[preset_name]

    def cost_table(self) -> pd.DataFrame:
        """One row per preset and stage of the run: shapes, values per step and GFLOPs per model evaluation."""

        rows = []
        for preset in dict.fromkeys(self.run.samples["preset"]):
            cost = self.cost(preset)
            rows += stage_cost_rows(self._pipelines[preset], cost)
        return pd.DataFrame(rows)

    def describe(self) -> dict[str, Any]:
        """Everything about the evaluation that changes its numbers (part of each grid point's cache key)."""

        evaluation = without_unset_added_keys(self.sweep.evaluation.model_dump(mode="json"))
        return {"metrics": list(self.sweep.metrics), "evaluation": evaluation}


def load_images(run: Path, paths: list[str], hashes: list[str]) -> list[np.ndarray]:
    """The images as H x W x 3 uint8, each checked against the sha256 generation recorded for it."""
    images = []
    for path, recorded in zip(paths, hashes):
        file = run / path
        data = file.read_bytes() if file.is_file() else None
        if data is None or sha256_bytes(data) != recorded:
            state = "is missing" if data is None else "does not match its recorded sha256"
            raise UserError(
                f"{file} {state}; run the sweep again to regenerate it (`suite check {run}` lists every problem)"
            )
        images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return images


def timing_columns(group: pd.DataFrame, settings: tuple[StageSettings, ...]) -> dict[str, Any]:
    """Medians of the measured timings, peak memory, and the generation settings of each stage."""
    first = group.iloc[0]
    row = {
        "backend": first["backend"],
        "n_images": len(group),  # images with a PNG; non-finite ones are counted in n_non_finite
        "n_prompts": int(group["prompt_index"].nunique()),  # the unit every interval resamples
        "batch_size": int(first["batch_size"]),
        "device": first["device"],
        "dtype": first["dtype"],
        "seconds_per_image_median": float(group["seconds_per_image"].median()),
        "text_encode_s_median": float(group["text_encode_s"].median()),
        "decode_s_per_image_median": float((group["decode_s"] / group["batch_size"]).median()),
        "peak_memory_bytes": int(group["peak_memory_bytes"].max()),
        "peak_memory_kind": first["peak_memory_kind"],
    }
    for number, stage in enumerate(settings, start=1):
        row |= {
            stage_column(number, "name"): first[stage_column(number, "name")],
            stage_column(number, "num_inference_steps"): stage.num_inference_steps,
            stage_column(number, "guidance_scale"): stage.guidance_scale,
            stage_column(number, "model_evaluations"): int(first[stage_column(number, "model_evaluations")]),
            stage_column(number, "step_median_s"): float(group[stage_column(number, "step_median_s")].median()),
        }
    return row


def seconds_interval(group: pd.DataFrame) -> dict[str, Any]:
    """A percentile bootstrap interval of the median seconds per image, resampling work items (batches).

    A clock measures a whole work item, so the item (not the prompt) is the unit a timing varies with.
    """
    per_item = group.groupby("item_id", sort=False)["seconds_per_image"].median().to_numpy()
    interval = stats.median_interval(per_item, "work items")
    return {
        "seconds_per_image_median_ci95_low": interval.low,
        "seconds_per_image_median_ci95_high": interval.high,
        "seconds_per_image_median_interval": interval.method,
    }


def _non_finite(unusable: pd.DataFrame | None, point: pd.Series) -> int:
    """Images of this grid point that stayed non-finite (recorded without a PNG, left out of every metric)."""
    if unusable is None or unusable.empty:
        return 0
    same = np.ones(len(unusable), dtype=bool)
    for column in GRID_COLUMNS:
        same &= (unusable[column] == point[column]).to_numpy()
    return int(same.sum())


def unmeasured_points(run: RunFolder, groups: list[pd.DataFrame]) -> list[dict[str, Any]]:
    """A metrics row for each grid point whose every image stayed non-finite: its timings, ``n_images`` 0 and
    ``n_non_finite``, no metric (the point stays in the tables, saying why it has no numbers)."""
    if run.unusable is None or run.unusable.empty:
        return []
    measured = {tuple(group.iloc[0][column] for column in GRID_COLUMNS) for group in groups}
    rows = []
    for key, lost in run.unusable.groupby(list(GRID_COLUMNS), sort=False):
        if tuple(key) in measured:
            continue
        settings = run.stage_settings(*key)
        row = dict(zip(GRID_COLUMNS, key)) | timing_columns(lost, settings)
        rows.append(row | {"n_images": 0, "n_prompts": 0, "n_non_finite": len(lost)})
    return rows


def evaluate_grid_point(evaluator: Evaluator, group: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame, GridPoint]:
    """One grid point's metrics row, its per-image scores (keyed by item and image) and its extracted features."""
    first = group.iloc[0]
    settings = evaluator.run.stage_settings(*(first[column] for column in GRID_COLUMNS))
    row = {column: first[column] for column in GRID_COLUMNS} | timing_columns(group, settings)
    row["n_non_finite"] = _non_finite(evaluator.run.unusable, first)
    row |= seconds_interval(group)
    images = load_images(evaluator.run.path, list(group["image_path"]), list(group["sha256"]))
    point = GridPoint(evaluator, group.reset_index(drop=True), images, settings)
    per_image = [group[[*IMAGE_KEY, "prompt_index", "seed_index"]].reset_index(drop=True)]
    for name in evaluator.sweep.metrics:
        inner, started = sum(point.seconds.values()), time.perf_counter()
        metric_row, scores = METRICS.get(name).evaluate(point)
        rest = time.perf_counter() - started - (sum(point.seconds.values()) - inner)  # its own parts timed apart
        point.seconds[name] = point.seconds.get(name, 0.0) + rest
        row |= metric_row
        if scores is not None:
            per_image.append(scores.reset_index(drop=True))
    return row, pd.concat(per_image, axis=1), point


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def grid_key(evaluator: Evaluator, group: pd.DataFrame) -> str:
    """The cache key of one grid point's evaluation: its grid values, the evaluation settings, its images and
    their timings (a regenerated item may give the same bytes in another time)."""
    first = group.iloc[0]
    timed = group.sort_values("image_path")
    timing_names = [name for name in timed.columns if name in TIMED or name.endswith(("_loop_s", "_step_median_s"))]
    content = {
        "grid": [str(first[column]) for column in GRID_COLUMNS],
        "evaluation": evaluator.describe(),
        "images": sorted(group["sha256"]),
        "timings": timed[["image_path", *timing_names]].astype(str).to_numpy().tolist(),
        "version": EVALUATION_VERSION,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:20]


def _ordered(table: pd.DataFrame, stage_count: int) -> pd.DataFrame:
    """Grid and timing columns first, then each stage's columns in stage order, then the metrics."""
    stages = [column for column in stage_columns(stage_count, STAGE_METRIC_FIELDS) if column in table]
    rest = [column for column in table.columns if column not in stages]
    timing_end = rest.index("peak_memory_kind") + 1
    return table[rest[:timing_end] + stages + rest[timing_end:]]


def _finished(folder: Path) -> bool:
    """The point's files are all there and match the hashes recorded when it was computed."""
    return point_problem(folder) is None


def _evaluate_points(
    run: RunFolder, evaluator: Evaluator, groups: list[pd.DataFrame], options: EvaluateOptions
) -> tuple[int, list[pd.DataFrame]]:
    """Compute the grid points not yet under ``evaluation/``; return how many, and those another process holds.

    Each point is leased (``evaluation/<key>.lease``) while it is computed, so several processes
    evaluating one run (``torchrun ... suite evaluate``) split the grid points between them.
    """

    computed, elsewhere, seconds = 0, [], {}
    for group in tqdm(groups, desc="evaluate", unit="grid point", disable=not options.progress):
        folder = run.path / EVALUATION_DIR / grid_key(evaluator, group)
        if _finished(folder) and not options.recompute:
            continue
        lease = folder.with_name(folder.name + ".lease")
        if leases.acquire(lease, process_owner()) is not None:
            elsewhere.append(group)
            continue
        try:
            if _finished(folder) and not options.recompute:  # finished by another process meanwhile
                continue
            if not computed:  # inputs are checked (one line on a problem) before the first point is computed
                check_evaluation(run.resolved.sweep, options, run.path)
            row, scores, point = evaluate_grid_point(evaluator, group)
            written = ["scores.parquet", "row.parquet"]
            for network, features in point.features_by_network.items():  # kept for paired comparisons
                atomic_write_bytes(folder / f"features-{network}.npy", _npy(features))
                written.append(f"features-{network}.npy")
            atomic_write_table(scores, folder / "scores", csv=False)
            atomic_write_table(pd.DataFrame([row]), folder / "row", csv=False)
            seal_point(folder, written)
            computed += 1
            for part, spent in point.seconds.items():
                seconds[part] = seconds.get(part, 0.0) + spent
        finally:
            leases.release(lease, process_owner())
    return computed, elsewhere, seconds


def evaluate_share(run_path: Path, options: EvaluateOptions = EvaluateOptions()) -> int:
    """Help another process evaluate a run: compute the grid points nobody holds; return how many."""
    run = read_run(run_path)
    evaluator = Evaluator(run, options)
    groups = [group for _, group in run.samples.groupby(list(GRID_COLUMNS), sort=False)]
    return _evaluate_points(run, evaluator, groups, options)[0]


def evaluate_run(run_path: Path, options: EvaluateOptions = EvaluateOptions()) -> pd.DataFrame:
    """Compute every metric the run's sweep names, per grid point; write metrics.*, scores.* and costs.*.

    Grid points that another process is computing are waited for (and taken over if it dies).
    ``table.attrs["computed_here"]`` says how many points this process computed.

    Example:
        >>> evaluate_run(Path("results/toy"))[["preset", "sampler", "fid", "clip_score_mean"]]
    """
    run = read_run(run_path)
    evaluator = Evaluator(run, options)
    groups = [group for _, group in run.samples.groupby(list(GRID_COLUMNS), sort=False)]
    computed, elsewhere, seconds = _evaluate_points(run, evaluator, groups, options)
    if elsewhere:
        print(
            f"{run.path}: waiting for {len(elsewhere)} grid points that another process is computing "
            "(taken over if it stops)",
            file=sys.stderr,
        )
    while elsewhere:
        time.sleep(POLL_SECONDS)
        more, elsewhere, spent = _evaluate_points(
            run, evaluator, elsewhere, replace(options, recompute=False, progress=False)
        )
        computed += more
        seconds = {part: seconds.get(part, 0.0) + spent.get(part, 0.0) for part in {*seconds, *spent}}
    rows, per_image, stage_count = [], [], 0
    for group in groups:
        folder = run.path / EVALUATION_DIR / grid_key(evaluator, group)
        rows.append(upgraded(pd.read_parquet(folder / "row.parquet")))
        per_image.append(pd.read_parquet(folder / "scores.parquet"))
        stage_count = max(stage_count, len(run.stage_settings(*(group.iloc[0][column] for column in GRID_COLUMNS))))
    rows.extend(pd.DataFrame([row]) for row in unmeasured_points(run, groups))
    table = _ordered(pd.concat(rows, ignore_index=True), stage_count)
    atomic_write_table(table, run.path / METRICS_TABLE)
    atomic_write_table(pd.concat(per_image, ignore_index=True), run.path / SCORES)
    written = [f"{METRICS_TABLE}.parquet", f"{METRICS_TABLE}.csv", f"{SCORES}.parquet"]
    needs_costs = any(METRICS.get(name).needs_costs for name in run.resolved.sweep.metrics)
    if needs_costs and (run.costs is None or computed or f"{COSTS}.parquet" in run.damaged):
        atomic_write_table(evaluator.cost_table(), run.path / COSTS)
        written += [f"{COSTS}.parquet", f"{COSTS}.csv"]
    record_tables(run.path, written, points=[grid_key(evaluator, group) for group in groups])
    table.attrs["computed_here"] = computed
    table.attrs["seconds"] = dict(sorted(seconds.items()))  # wall seconds per metric part, points computed here
    return table
