"""GenEval's scoring rules (Ghosh et al. 2023, github.com/djghosh13/geneval, evaluation/evaluate_images.py),
written for detections from any instance-segmentation model.

An image is correct when every ``include`` clause of its prompt's metadata holds (AND) and no ``exclude``
clause does (OR):

- detections below a confidence threshold are dropped (0.3; 0.9 for the counting task), each class keeps its
  most confident ``max_objects`` (16), optionally thinned by box IoU (``max_overlap``, 1.0 = off);
- ``{class, count}``: at least ``count`` detections of the class; only the ``count`` most confident are
  examined further;
- ``color``: each examined object's colour (CLIP zero-shot on its masked crop, ``colour_of``) must be the
  asked colour, for at least ``count`` of them;
- ``position: [relation, group]``: every examined object must stand in ``relation`` to every object matched by
  include clause ``group``; offsets between box centres shorter than ``position_margin`` x (sum of box sizes) per
  axis do not count, and a relation holds when its axis carries more than half of the normalised offset.

The overall score is the mean of the six per-task accuracies (single_object, two_object, counting, colors,
position, color_attr), as GenEval's summary_scores.py computes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
COLOUR_TEMPLATES = ("a photo of a {c} {classname}", "a photo of a {c}-colored {classname}", "a photo of a {c} object")


@dataclass(frozen=True)
class GenevalSettings:
    """The reference evaluator's options, recorded with every score."""

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    max_overlap: float = 1.0  # NMS by box IoU within a class; 1.0 keeps every box
    position_margin: float = 0.1


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    mask: np.ndarray | None = field(default=None, compare=False)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union with GenEval's inclusive pixel areas (+1)."""

    def area(box):
        return max(box[2] - box[0] + 1, 0) * max(box[3] - box[1] + 1, 0)

    inner = area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    union = area(a) + area(b) - inner
    return inner / union if union else 0.0


def select(detections: Sequence[Detection], tag: str, settings: GenevalSettings) -> dict[str, list[Detection]]:
    """Per class, the detections the rules look at: confident enough, most confident first, at most max_objects."""
    threshold = settings.counting_threshold if tag == "counting" else settings.threshold
    kept: dict[str, list[Detection]] = {}
    for label in dict.fromkeys(detection.label for detection in detections):
        ordered = sorted((d for d in detections if d.label == label and d.score > threshold), key=lambda d: -d.score)[
            : settings.max_objects
        ]
        chosen: list[Detection] = []
        while ordered:
            best = ordered.pop(0)
            chosen.append(best)
            if settings.max_overlap < 1:
                ordered = [d for d in ordered if box_iou(best.box, d.box) < settings.max_overlap]
        if chosen:
            kept[label] = chosen
    return kept


def relative_position(a: Detection, b: Detection, margin: float) -> set[str]:
    """Where ``a`` is relative to ``b`` ("left of", "right of", "above", "below"; several or none)."""
    boxes = np.array([a.box, b.box], dtype=np.float64).reshape(2, 2, 2)
    centre_a, centre_b = boxes.mean(axis=-2)
    size_a, size_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = centre_a - centre_b
    revised = np.maximum(np.abs(offset) - margin * (size_a + size_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


ColourOf = Callable[[list[Detection], str], list[str]]  # (objects, class name) -> one colour name per object


def judge(
    found: dict[str, list[Detection]], metadata: dict, colour_of: ColourOf, settings: GenevalSettings
) -> tuple[bool, str]:
    """Whether an image's selected detections satisfy its prompt's metadata, and why not."""
    correct, reasons, groups = True, [], []
    for clause in metadata.get("include", []):
        name, count = clause["class"], clause["count"]
        objects = found.get(name, [])[:count]
        matched = True
        if len(objects) < count:
            matched = False
            reasons.append(f"expected {name}>={count}, found {len(objects)}")
        else:
            if "color" in clause:
                colours = colour_of(objects, name)
                if colours.count(clause["color"]) < count:
                    matched = False
                    reasons.append(f"expected {clause['color']} {name}>={count}, found colours {colours}")
            if "position" in clause and matched:
                relation, group = clause["position"]
                if groups[group] is None:
                    matched = False
                    reasons.append(f"no target for {name} to be {relation}")
                elif not all(
                    relation in relative_position(one, target, settings.position_margin)
                    for one in objects
                    for target in groups[group]
                ):
                    matched = False
                    reasons.append(f"expected {name} {relation} target")
        correct = correct and matched
        groups.append(objects if matched else None)
    for clause in metadata.get("exclude", []):
        name, count = clause["class"], clause["count"]
        if len(found.get(name, [])) >= count:
            correct = False
            reasons.append(f"expected {name}<{count}, found {len(found[name])}")
    return correct, "; ".join(reasons)


def overall_score(correct_by_task: dict[str, Sequence[float]]) -> float:
    """GenEval's overall score: the mean over tasks of each task's accuracy (tasks present only)."""
    accuracies = [float(np.mean(values)) for values in correct_by_task.values() if len(values)]
    return float(np.mean(accuracies)) if accuracies else float("nan")
