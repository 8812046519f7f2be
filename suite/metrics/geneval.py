"""GenEval (Ghosh et al. 2023) on real images: object detection, counting, colours and positions, per prompt.

Prompts come from the ``geneval`` prompt set, whose metadata says what each image must show. Detection uses a
Mask2Former loaded through transformers from ``evaluation.geneval.detector``; colours use the run's CLIP model
(``evaluation.clip_model``; GenEval uses open_clip ViT-L-14 / openai, the default) as a zero-shot classifier
over GenEval's ten colours on each object's masked crop. The rules are ``suite.metrics.geneval_rules``.

Per image: ``geneval_correct`` (0/1; NaN for prompts outside GenEval) and ``geneval_task``. Per grid point:
each task's accuracy (BCa and Wilson intervals over prompts), and ``geneval_overall``, the mean of the task
accuracies, with a bootstrap interval over prompts. Compared between points with the prompt-level exact
sign-flip test (per task; McNemar's with one seed per prompt) and a bootstrap over prompts of both points
jointly (overall).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from suite.core import paired, stats
from suite.metrics.base import (
    GridPoint,
    Metric,
    PointRecord,
    comparison_row,
    interval_columns,
    paired_rows,
    paired_units,
)
from suite.metrics.composition import accuracy_columns, former_accuracy_name
from suite.metrics.detector import LAYOUT, Mask2FormerDetector, check_detector_folder
from suite.metrics.geneval_rules import COLOUR_TEMPLATES, COLOURS, TASKS, Detection, GenevalSettings, judge, select
from suite.prompts.sets import prompt_records

CROP_BACKGROUND = (153, 153, 153)  # GenEval's "#999" behind an object's mask


class ColourClassifier:
    """CLIP zero-shot colour of detected objects: GenEval's ten colours, three templates per class name."""

    def __init__(self, clip):
        self.clip = clip
        self._weights: dict[str, torch.Tensor] = {}

    def weights(self, classname: str) -> torch.Tensor:
        if classname not in self._weights:
            per_colour = []
            for colour in COLOURS:
                texts = [template.format(c=colour, classname=classname) for template in COLOUR_TEMPLATES]
                embedded = torch.nn.functional.normalize(self.clip.text_embeddings(texts)[0].float(), dim=-1)
                per_colour.append(torch.nn.functional.normalize(embedded.mean(dim=0), dim=-1))
            self._weights[classname] = torch.stack(per_colour)
        return self._weights[classname]

    def __call__(self, image: np.ndarray, objects: list[Detection], classname: str) -> list[str]:
        crops = []
        for detection in objects:
            masked = np.where(detection.mask[..., None], image, np.array(CROP_BACKGROUND, dtype=np.uint8))
            x0, y0, x1, y1 = (round(value) for value in detection.box)
            crop = Image.fromarray(masked[y0 : y1 + 1, x0 : x1 + 1])
            side = min(crop.size)  # CLIP's own transform: shortest side resized, centre cropped
            left, top = (crop.width - side) // 2, (crop.height - side) // 2
            square = crop.crop((left, top, left + side, top + side)).resize((image.shape[0], image.shape[0]))
            crops.append(np.asarray(square, dtype=np.uint8))
        batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
        embedded = torch.nn.functional.normalize(self.clip.image_embeddings(batch).float(), dim=-1)
        return [COLOURS[index] for index in (embedded @ self.weights(classname).T).argmax(dim=1).tolist()]


def settings_of(spec) -> GenevalSettings:
    return GenevalSettings(
        spec.threshold, spec.counting_threshold, spec.max_objects, spec.max_overlap, spec.position_margin
    )


def overall_interval(correct: np.ndarray, tasks: np.ndarray, units: stats.Units) -> stats.Interval:
    """Bootstrap interval of the mean of per-task accuracies, resampling prompts with all of their images."""

    def overall(chosen: np.ndarray) -> float:
        values, labels = correct[chosen], tasks[chosen]
        return float(np.mean([values[labels == task].mean() for task in np.unique(labels)]))

    return stats.bootstrap_interval(overall, units)


def overall_value(correct: np.ndarray, tasks: np.ndarray) -> float:
    return float(np.mean([correct[tasks == task].mean() for task in np.unique(tasks)])) if len(correct) else np.nan


class Geneval(Metric):
    name = "geneval"
    description = "GenEval: Mask2Former detection + CLIP colours; per-task accuracy and overall (mean of tasks)"
    headline = "geneval_overall"
    higher_is_better = True
    display = ".3f"
    uses_clip_model = True

    def former_name(self, column: str) -> str:
        return former_accuracy_name(column)

    needs_setting = "geneval"
    setting_layout = f"detector: {LAYOUT}"

    def check(self, evaluation) -> None:
        check_detector_folder(evaluation.geneval.detector)

    def evaluate(self, point: GridPoint) -> tuple[dict[str, Any], pd.DataFrame]:
        spec = point.evaluation.geneval
        settings = settings_of(spec)
        records = prompt_records("geneval")
        detector = point.evaluator.model(
            ("geneval", spec.detector), lambda device: Mask2FormerDetector(spec.detector, device)
        )
        colours = point.evaluator.model(("geneval-colours",), lambda device: ColourClassifier(point.evaluator.clip()))
        rows = []
        asked = [index for index, prompt in enumerate(point.prompts) if prompt in records]
        detections = detector([point.images[index] for index in asked]) if asked else []
        found_by_image = dict(zip(asked, detections))
        for index, (image, prompt) in enumerate(zip(point.images, point.prompts)):
            metadata = records.get(prompt)
            if metadata is None:
                rows.append({"geneval_correct": np.nan, "geneval_task": None})
                continue
            found = select(found_by_image[index], metadata["tag"], settings)
            correct, _ = judge(
                found, metadata, lambda objects, name, image=image: colours(image, objects, name), settings
            )
            rows.append({"geneval_correct": float(correct), "geneval_task": metadata["tag"]})
        scores = pd.DataFrame(rows)
        known = scores["geneval_correct"].notna().to_numpy()
        correct, tasks = scores["geneval_correct"].to_numpy()[known], scores["geneval_task"].to_numpy()[known]
        units = point.units
        row: dict[str, Any] = {"geneval_overall": overall_value(correct, tasks), "geneval_n": int(known.sum())}
        row["geneval_n_prompts"] = units.restricted(known).count
        if row["geneval_n_prompts"] > 1:
            row |= interval_columns("geneval_overall", overall_interval(correct, tasks, units.restricted(known)))
        for task in TASKS:
            values = np.where(scores["geneval_task"] == task, scores["geneval_correct"], np.nan).astype(np.float64)
            row |= accuracy_columns(f"geneval_{task}", values, units)
        row |= {
            "geneval_detector": spec.detector,
            "geneval_settings": repr(settings),
            "geneval_clip": point.evaluator.clip().model_id,
        }
        return row, scores

    def compare(self, a: PointRecord, b: PointRecord) -> list[dict[str, Any]]:
        rows_a, rows_b = paired_rows(a, b)
        left, right = a.scores.iloc[rows_a].reset_index(drop=True), b.scores.iloc[rows_b].reset_index(drop=True)
        keep = (left["geneval_correct"].notna() & right["geneval_correct"].notna()).to_numpy()
        units = paired_units(a, rows_a).restricted(keep)
        left, right = left[keep].reset_index(drop=True), right[keep].reset_index(drop=True)
        if left.empty:
            return []
        tasks = left["geneval_task"].to_numpy()
        values_a, values_b = left["geneval_correct"].to_numpy(), right["geneval_correct"].to_numpy()
        stacked_values, stacked_tasks = np.concatenate([values_a, values_b]), np.concatenate([tasks, tasks])
        test = paired.set_difference_test(
            lambda chosen: overall_value(stacked_values[chosen], stacked_tasks[chosen]), units
        )
        rows = [
            comparison_row(
                "geneval_overall", overall_value(values_a, tasks), overall_value(values_b, tasks), test, True
            )
        ]
        for task in TASKS:
            chosen = tasks == task
            if chosen.any():
                task_units = units.restricted(chosen)
                task_test = paired.paired_binary(values_a[chosen], values_b[chosen], task_units)
                rows.append(
                    comparison_row(f"geneval_{task}", values_a[chosen].mean(), values_b[chosen].mean(), task_test, True)
                )
        return rows
