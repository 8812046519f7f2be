"""Evaluate a finished run folder: one row per grid point in metrics.parquet, per-image scores in samples.

Works from the run folder alone (config.yaml, manifest.json, samples.parquet, images/), so
``suite evaluate RUN`` reproduces what ``suite sweep`` wrote. Each grid point's results are
written atomically under ``evaluation/`` keyed by everything they depend on, so a killed
evaluation resumes and a changed image or setting is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image
from tqdm.auto import tqdm

from suite.config import Sweep, parse_sweep
from suite.errors import UserError
from suite.metrics import distribution
from suite.metrics.networks import CLIP_MODELS, FEATURE_NETWORKS, ClipModel, FeatureNetwork, NetworkContext
from suite.metrics.reference import ReferenceFeatures, extract, load_reference
from suite.presets import cache_root
from suite.results import SAMPLES, atomic_write_table

GRID = ["preset", "sampler", "num_inference_steps", "guidance_scale"]
METRICS_TABLE = "metrics"
EVALUATION_DIR = "evaluation"
COMPOSITION_QUESTIONS = ("count", "colour", "shape", "binding", "relation", "correct")
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class EvaluateOptions:
    device: str = "auto"
    inception_weights: Path | None = None
    recompute: bool = False  # ignore finished grid points under evaluation/
    progress: bool = True


def read_run(run: Path) -> tuple[Sweep, dict[str, Any], pd.DataFrame]:
    """The run's sweep, manifest and per-image table; one clear line if the folder is not a finished run."""
    config_path, samples_path = run / "config.yaml", run / f"{SAMPLES}.parquet"
    if not config_path.is_file():
        raise UserError(f"{run} is not a run folder (no config.yaml)")
    if not samples_path.is_file():
        raise UserError(f"{run} is not finished (no {SAMPLES}.parquet); re-run its sweep to complete it")
    config = yaml.safe_load(config_path.read_text())
    config.pop("config_hash", None)
    manifest_path = run / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    return parse_sweep(config, str(config_path)), manifest, pd.read_parquet(samples_path)


class Evaluator:
    """Builds each network, reference set and cost model once, on first use, for one run."""

    def __init__(self, run: Path, sweep: Sweep, manifest: dict[str, Any], options: EvaluateOptions):
        from suite.devices import resolve_device

        self.run, self.sweep, self.manifest = run, sweep, manifest
        self.context = NetworkContext(resolve_device(options.device), options.inception_weights)
        self._networks: dict[str, FeatureNetwork] = {}
        self._references: dict[str, ReferenceFeatures] = {}
        self._clip: ClipModel | None = None
        self._costs: dict[str, Any] = {}

    def network(self, name: str) -> FeatureNetwork:
        if name not in self._networks:
            self._networks[name] = FEATURE_NETWORKS.get(name)(self.context)
        return self._networks[name]

    def reference(self, name: str) -> ReferenceFeatures:
        if name not in self._references:
            spec = self.sweep.evaluation.reference
            self._references[name] = load_reference(spec, self.network(name), self.run, cache_root())
        return self._references[name]

    def clip(self) -> ClipModel:
        if self._clip is None:
            self._clip = CLIP_MODELS.get(self.sweep.evaluation.clip_model)(self.context)
        return self._clip

    def cost(self, preset_name: str):
        """The preset's FLOP counts, from its configs on the meta device (the run's local folder if it had one)."""
        if preset_name not in self._costs:
            from suite.flops import pipeline_cost
            from suite.presets import PRESETS
            from suite.profile import build_on_meta

            preset = PRESETS.get(preset_name)
            local_dir = self.manifest.get("models", {}).get(preset_name, {}).get("local_dir")
            if local_dir:
                preset = replace(preset, local_dir=Path(local_dir))
            self._costs[preset_name] = pipeline_cost(build_on_meta(preset))
        return self._costs[preset_name]

    def describe(self) -> dict[str, Any]:
        """Everything about the evaluation that changes its numbers (part of each grid point's cache key)."""
        evaluation = self.sweep.evaluation
        return {"metrics": list(self.sweep.metrics), "evaluation": evaluation.model_dump(mode="json")}


def load_images(run: Path, paths: list[str]) -> list[np.ndarray]:
    return [np.asarray(Image.open(run / path).convert("RGB")) for path in paths]


def _stage_numbers(samples: pd.DataFrame) -> list[int]:
    return sorted({int(column[5:].split("_")[0]) for column in samples.columns if column.endswith("_step_median_s")})


def timing_columns(group: pd.DataFrame) -> dict[str, Any]:
    """Medians of the measured timings, peak memory, and the generation settings of each stage."""
    first = group.iloc[0]
    row = {"backend": first["backend"], "n_images": len(group), "batch_size": int(first["batch_size"]),
           "device": first["device"], "dtype": first["dtype"],
           "seconds_per_image_median": float(group["seconds_per_image"].median()),
           "text_encode_s_median": float(group["text_encode_s"].median()),
           "decode_s_per_image_median": float((group["decode_s"] / group["batch_size"]).median()),
           "peak_memory_bytes": int(group["peak_memory_bytes"].max()), "peak_memory_kind": first["peak_memory_kind"]}
    for number in _stage_numbers(group):
        if pd.isna(first.get(f"stage{number}_name")):
            continue
        row |= {f"stage{number}_name": first[f"stage{number}_name"],
                f"stage{number}_steps": int(first[f"stage{number}_steps"]),
                f"stage{number}_guidance": float(first[f"stage{number}_guidance"]),
                f"stage{number}_model_evaluations": int(first[f"stage{number}_model_evaluations"]),
                f"stage{number}_step_s_median": float(group[f"stage{number}_step_median_s"].median())}
    return row


def _flops(evaluator: Evaluator, group: pd.DataFrame) -> dict[str, Any]:
    from suite.stages import StageSettings

    first = group.iloc[0]
    cost = evaluator.cost(first["preset"])
    settings = []
    for number in range(1, len(cost.stages) + 1):
        noise_level = first.get(f"stage{number}_noise_level")
        strength = first.get(f"stage{number}_strength", 1.0)
        settings.append(StageSettings(first[f"stage{number}_sampler"], int(first[f"stage{number}_steps"]),
                                      float(first[f"stage{number}_guidance"]),
                                      None if pd.isna(noise_level) else int(noise_level),
                                      1.0 if pd.isna(strength) else float(strength)))
    return {"gflops_per_image": cost.flops_per_image(settings) / 1e9}


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
        row |= {"features": network.name, "features_resize": network.resize, "reference": reference.key,
                "reference_count": reference.count}
        if "fid" in metrics:
            row["fid"] = distribution.fid(features_of(evaluation.features), reference.features, reference.statistics)
        if "kid" in metrics:
            row["kid_mean"], row["kid_std"] = distribution.kid(features_of(evaluation.features), reference.features)
    if "cmmd" in metrics:
        network = evaluator.network(evaluation.cmmd_features)
        reference = evaluator.reference(evaluation.cmmd_features)
        row |= {"cmmd": distribution.cmmd(features_of(evaluation.cmmd_features), reference.features),
                "cmmd_features": network.name, "cmmd_resize": network.resize}
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

    rows = [{f"toy_{key}": value for key, value in score_prompt_image(image, prompt).items()}
            | {"toy_category": prompt_category(prompt)} for image, prompt in zip(images, prompts)]
    return pd.DataFrame(rows)


def _composition_summary(scores: pd.DataFrame) -> dict[str, float]:
    """Accuracies per question, and exact-match accuracy per prompt category (GenEval-style)."""
    row = {f"toy_{question}": float(scores[f"toy_{question}"].mean()) for question in COMPOSITION_QUESTIONS}
    for category, column in (("single", "single"), ("pair", "pair"), ("held-out pair", "held_out_pair")):
        chosen = scores[scores["toy_category"] == category]
        row[f"toy_correct_{column}"] = float(chosen["toy_correct"].mean()) if len(chosen) else math.nan
    return row


def evaluate_grid_point(evaluator: Evaluator, group: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame]:
    """One grid point's metrics row, and its per-image scores (keyed by image_path)."""
    metrics = evaluator.sweep.metrics
    first = group.iloc[0]
    row = {column: first[column] for column in GRID} | timing_columns(group)
    images = load_images(evaluator.run, list(group["image_path"]))
    prompts = list(group["prompt"])
    per_image = pd.DataFrame({"image_path": list(group["image_path"])})
    if "flops" in metrics:
        row |= _flops(evaluator, group)
    row |= _distribution(evaluator, metrics, images)
    if "clip_score" in metrics:
        clip = evaluator.clip()
        scores, truncated = clip_scores(clip, images, prompts)
        per_image["clip_score"] = scores
        mean, low, high = mean_and_ci95(scores)
        row |= {"clip_score_mean": mean, "clip_score_ci95_low": low, "clip_score_ci95_high": high,
                "clip_model": clip.model_id, "clip_resize": clip.resize, "clip_prompts_truncated": truncated}
    if "composition" in metrics:
        scores = _composition(images, prompts)
        per_image = pd.concat([per_image, scores], axis=1)
        row |= _composition_summary(scores)
    return row, per_image


def _grid_key(evaluator: Evaluator, group: pd.DataFrame) -> str:
    first = group.iloc[0]
    content = {"grid": [str(first[column]) for column in GRID], "evaluation": evaluator.describe(),
               "images": sorted(group["sha256"]), "version": 1}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:20]


def check_evaluation_available(sweep: Sweep, options: EvaluateOptions) -> None:
    """Fail before generating anything if a metric's local weights are missing (Inception, the toy CLIP)."""
    from suite.metrics.networks import inception_weights_path

    evaluation, metrics = sweep.evaluation, set(sweep.metrics)
    networks = set()
    if metrics & {"fid", "kid"}:
        networks.add(evaluation.features)
    if "cmmd" in metrics:
        networks.add(evaluation.cmmd_features)
    context = NetworkContext(torch.device("cpu"), options.inception_weights)
    if "inception" in networks:
        inception_weights_path(context)
    if "toy-clip" in networks or ("clip_score" in metrics and evaluation.clip_model == "toy-clip"):
        CLIP_MODELS.get("toy-clip")(context)


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    """Grid and timing columns first, then each stage's columns in stage order, then the metrics."""
    stage_columns = sorted((column for column in table.columns if column.startswith("stage")),
                           key=lambda column: int(column[5:].split("_")[0]))
    timing_end = list(table.columns).index("peak_memory_kind") + 1
    leading = [column for column in table.columns[:timing_end] if column not in stage_columns]
    rest = [column for column in table.columns[timing_end:] if column not in stage_columns]
    return table[leading + stage_columns + rest]


def evaluate_run(run: Path, options: EvaluateOptions = EvaluateOptions()) -> pd.DataFrame:
    """Compute every metric the run's sweep names, per grid point; write metrics.* and update samples.*.

    Example:
        >>> evaluate_run(Path("results/toy"))[["preset", "sampler", "fid", "clip_score_mean"]]
    """
    sweep, manifest, samples = read_run(run)
    evaluator = Evaluator(run, sweep, manifest, options)
    groups = [group for _, group in samples.groupby(GRID, sort=False)]
    rows, per_image = [], []
    for group in tqdm(groups, desc="evaluate", unit="grid point", disable=not options.progress):
        stem = run / EVALUATION_DIR / _grid_key(evaluator, group)
        row_path, images_path = stem.with_suffix(".parquet"), stem.parent / f"{stem.name}.images.parquet"
        if row_path.is_file() and images_path.is_file() and not options.recompute:
            rows.append(pd.read_parquet(row_path))
            per_image.append(pd.read_parquet(images_path))
            continue
        row, scores = evaluate_grid_point(evaluator, group)
        atomic_write_table(scores, images_path.with_suffix(""), csv=False)
        atomic_write_table(pd.DataFrame([row]), row_path.with_suffix(""), csv=False)
        rows.append(pd.DataFrame([row]))
        per_image.append(scores)
    table = _ordered(pd.concat(rows, ignore_index=True))
    atomic_write_table(table, run / METRICS_TABLE)
    scores = pd.concat(per_image, ignore_index=True)
    generation_columns = [column for column in samples.columns if column == "image_path" or column not in scores.columns]
    merged = samples[generation_columns].merge(scores, on="image_path", how="left", validate="one_to_one")
    atomic_write_table(merged, run / SAMPLES)
    return table
