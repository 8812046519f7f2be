"""Evaluate a finished run folder: one row per grid point in ``metrics``, one row per image in ``scores``.

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
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from suite.errors import UserError
from suite.flops import PipelineCost
from suite.metrics import distribution
from suite.metrics.networks import CLIP_MODELS, FEATURE_NETWORKS, ClipModel, FeatureNetwork, NetworkContext
from suite.metrics.reference import ReferenceFeatures, extract, load_reference
from suite.presets import cache_root
from suite.results import (
    COSTS,
    GRID_COLUMNS,
    IMAGE_KEY,
    METRICS,
    SCORES,
    RunFolder,
    atomic_write_table,
    read_run,
    sha256_bytes,
    stage_column,
    stage_columns,
)
from suite.stages import StageSettings
from suite.toy.score import QUESTIONS

EVALUATION_DIR = "evaluation"
EVALUATION_VERSION = 2  # part of each grid point's cache key: bump when a row's columns change
STAGE_METRIC_FIELDS = ("name", "num_inference_steps", "guidance_scale", "model_evaluations", "step_s_median")
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class EvaluateOptions:
    device: str = "auto"
    inception_weights: Path | None = None
    recompute: bool = False  # ignore finished grid points under evaluation/
    progress: bool = True


class Evaluator:
    """Builds each network, reference set and cost model once, on first use, for one run."""

    def __init__(self, run: RunFolder, options: EvaluateOptions):
        from suite.devices import resolve_device

        self.run, self.sweep = run, run.resolved.sweep
        self.context = NetworkContext(resolve_device(options.device), options.inception_weights)
        self._networks: dict[str, FeatureNetwork] = {}
        self._references: dict[str, ReferenceFeatures] = {}
        self._clip: ClipModel | None = None
        self._pipelines: dict[str, Any] = {}
        self._costs: dict[str, PipelineCost] = {}

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

    def cost(self, preset_name: str) -> PipelineCost:
        """The preset's FLOP counts, from its configs on the meta device (the run's local folder if it had one)."""
        if preset_name not in self._costs:
            from suite.flops import pipeline_cost
            from suite.loading import build_on_meta
            from suite.presets import PRESETS

            preset = PRESETS.get(preset_name)
            local_dir = self.run.manifest.get("models", {}).get(preset_name, {}).get("local_dir")
            if local_dir:
                preset = replace(preset, local_dir=Path(local_dir))
            self._pipelines[preset_name] = build_on_meta(preset)
            self._costs[preset_name] = pipeline_cost(self._pipelines[preset_name])
        return self._costs[preset_name]

    def cost_table(self) -> pd.DataFrame:
        """One row per preset and stage of the run: shapes, values per step and GFLOPs per model evaluation."""
        from suite.profile import architecture_costs

        rows = []
        for preset in dict.fromkeys(self.run.samples["preset"]):
            cost = self.cost(preset)
            rows += architecture_costs(self._pipelines[preset], cost)
        return pd.DataFrame(rows)

    def describe(self) -> dict[str, Any]:
        """Everything about the evaluation that changes its numbers (part of each grid point's cache key)."""
        evaluation = self.sweep.evaluation
        return {"metrics": list(self.sweep.metrics), "evaluation": evaluation.model_dump(mode="json")}


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
        "n_images": len(group),
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
            stage_column(number, "step_s_median"): float(group[stage_column(number, "step_median_s")].median()),
        }
    return row


def _distribution(evaluator: Evaluator, metrics: tuple[str, ...], images: list[np.ndarray]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    evaluation = evaluator.sweep.evaluation
    features: dict[str, np.ndarray] = {}  # one pass per network, shared by FID / KID and CMMD

    def features_of(name: str) -> np.ndarray:
        if name not in features:
            features[name] = extract(evaluator.network(name), images)
        return features[name]

    if "fid" in metrics or "kid" in metrics:
        network = evaluator.network(evaluation.features)
        reference = evaluator.reference(evaluation.features)
        row |= {
            "features": network.name,
            "features_resize": network.resize,
            "reference": reference.key,
            "reference_count": reference.count,
        }
        if "fid" in metrics:
            row["fid"] = distribution.fid(features_of(evaluation.features), reference.features, reference.statistics)
        if "kid" in metrics:
            row["kid_mean"], row["kid_std"] = distribution.kid(features_of(evaluation.features), reference.features)
    if "cmmd" in metrics:
        network = evaluator.network(evaluation.cmmd_features)
        reference = evaluator.reference(evaluation.cmmd_features)
        row |= {
            "cmmd": distribution.cmmd(features_of(evaluation.cmmd_features), reference.features),
            "cmmd_features": network.name,
            "cmmd_resize": network.resize,
        }
    return row


def clip_scores(clip: ClipModel, images: list[np.ndarray], prompts: list[str]) -> tuple[np.ndarray, int]:
    """Per image ``100 * max(cos(image, prompt), 0)``, and how many prompts the text tower truncated."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    image_embeddings = torch.nn.functional.normalize(clip.image_embeddings(batch), dim=-1)
    unique = list(dict.fromkeys(prompts))
    text, truncated = clip.text_embeddings(unique)
    text = torch.nn.functional.normalize(text, dim=-1)
    index = torch.tensor([unique.index(prompt) for prompt in prompts])
    cosine = (image_embeddings * text[index]).sum(dim=-1).double()
    return (100 * cosine.clamp(min=0)).numpy(), truncated


def mean_and_ci95(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and the normal-approximation 95% confidence interval of the mean."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = Z_95 * float(values.std(ddof=1)) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _composition(images: list[np.ndarray], prompts: list[str]) -> pd.DataFrame:
    from suite.toy.score import score_prompt_image
    from suite.toy.world import prompt_category

    rows = [
        {f"toy_{key}": value for key, value in score_prompt_image(image, prompt).items()}
        | {"toy_category": prompt_category(prompt)}
        for image, prompt in zip(images, prompts)
    ]
    return pd.DataFrame(rows)


def _composition_summary(scores: pd.DataFrame) -> dict[str, float]:
    """Accuracies per question, and exact-match accuracy per prompt category (GenEval-style)."""
    row = {f"toy_{question}": float(scores[f"toy_{question}"].mean()) for question in QUESTIONS}
    for category, column in (("single", "single"), ("pair", "pair"), ("held-out pair", "held_out_pair")):
        chosen = scores[scores["toy_category"] == category]
        row[f"toy_correct_{column}"] = float(chosen["toy_correct"].mean()) if len(chosen) else math.nan
    return row


def evaluate_grid_point(evaluator: Evaluator, group: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame]:
    """One grid point's metrics row, and its per-image scores (keyed by item and image)."""
    metrics = evaluator.sweep.metrics
    first = group.iloc[0]
    settings = evaluator.run.stage_settings(*(first[column] for column in GRID_COLUMNS))
    row = {column: first[column] for column in GRID_COLUMNS} | timing_columns(group, settings)
    images = load_images(evaluator.run.path, list(group["image_path"]), list(group["sha256"]))
    prompts = list(group["prompt"])
    per_image = group[[*IMAGE_KEY, "prompt_index", "seed_index"]].reset_index(drop=True)
    if "flops" in metrics:
        row["gflops_per_image"] = evaluator.cost(first["preset"]).flops_per_image(settings) / 1e9
    row |= _distribution(evaluator, metrics, images)
    if "clip_score" in metrics:
        clip = evaluator.clip()
        scores, truncated = clip_scores(clip, images, prompts)
        per_image["clip_score"] = scores
        mean, low, high = mean_and_ci95(scores)
        row |= {
            "clip_score_mean": mean,
            "clip_score_ci95_low": low,
            "clip_score_ci95_high": high,
            "clip_model": clip.model_id,
            "clip_resize": clip.resize,
            "clip_prompts_truncated": truncated,
        }
    if "composition" in metrics:
        scores = _composition(images, prompts)
        per_image = pd.concat([per_image, scores], axis=1)
        row |= _composition_summary(scores)
    return row, per_image


def _grid_key(evaluator: Evaluator, group: pd.DataFrame) -> str:
    first = group.iloc[0]
    content = {
        "grid": [str(first[column]) for column in GRID_COLUMNS],
        "evaluation": evaluator.describe(),
        "images": sorted(group["sha256"]),
        "version": EVALUATION_VERSION,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:20]


def _ordered(table: pd.DataFrame, stage_count: int) -> pd.DataFrame:
    """Grid and timing columns first, then each stage's columns in stage order, then the metrics."""
    stages = [column for column in stage_columns(stage_count, STAGE_METRIC_FIELDS) if column in table]
    rest = [column for column in table.columns if column not in stages]
    timing_end = rest.index("peak_memory_kind") + 1
    return table[rest[:timing_end] + stages + rest[timing_end:]]


def evaluate_run(run_path: Path, options: EvaluateOptions = EvaluateOptions()) -> pd.DataFrame:
    """Compute every metric the run's sweep names, per grid point; write metrics.*, scores.* and costs.*.

    Example:
        >>> evaluate_run(Path("results/toy"))[["preset", "sampler", "fid", "clip_score_mean"]]
    """
    from suite.preflight import check_evaluation

    run = read_run(run_path)
    check_evaluation(run.resolved.sweep, options, run.path)
    evaluator = Evaluator(run, options)
    groups = [group for _, group in run.samples.groupby(list(GRID_COLUMNS), sort=False)]
    rows, per_image, stage_count, evaluated = [], [], 0, 0
    for group in tqdm(groups, desc="evaluate", unit="grid point", disable=not options.progress):
        folder = run.path / EVALUATION_DIR / _grid_key(evaluator, group)
        row_path, scores_path = folder / "row.parquet", folder / "scores.parquet"
        if row_path.is_file() and scores_path.is_file() and not options.recompute:
            row, scores = pd.read_parquet(row_path), pd.read_parquet(scores_path)
        else:
            row, scores = evaluate_grid_point(evaluator, group)
            row, evaluated = pd.DataFrame([row]), evaluated + 1
            atomic_write_table(scores, scores_path.with_suffix(""), csv=False)
            atomic_write_table(row, row_path.with_suffix(""), csv=False)
        rows.append(row)
        per_image.append(scores)
        stage_count = max(stage_count, len(run.stage_settings(*(group.iloc[0][column] for column in GRID_COLUMNS))))
    table = _ordered(pd.concat(rows, ignore_index=True), stage_count)
    atomic_write_table(table, run.path / METRICS)
    atomic_write_table(pd.concat(per_image, ignore_index=True), run.path / SCORES)
    if "flops" in run.resolved.sweep.metrics and (run.costs is None or evaluated):
        atomic_write_table(evaluator.cost_table(), run.path / COSTS)
    return table
