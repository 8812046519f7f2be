"""An exact compositional score for toy-world images: no learned model, GenEval-style questions.

The world's objects are flat colours on a plain background, so colour segmentation and simple
geometry recover them: each pixel takes the nearest palette colour (or none, if far from all);
connected regions of one colour are objects; the fill ratio of an object's bounding box names
its shape (square ~1, circle ~pi/4, triangle ~1/2); centroids give the relation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from suite.toy.world import BACKGROUND, COLOURS, Caption, parse_caption

PALETTE_NAMES = ("background", *COLOURS)
PALETTE = np.array([BACKGROUND, *COLOURS.values()], dtype=np.float32)
MAX_COLOUR_DISTANCE = 90.0  # RGB distance beyond which a pixel belongs to no palette colour
MIN_AREA = 16  # pixels at 64 px; smaller regions are specks, not objects
FILL_SQUARE = 0.89  # fill ratio above: square (1.0); between: circle (0.785); below: triangle (0.5)
FILL_CIRCLE = 0.64
QUESTIONS = ("count", "colour", "shape", "binding", "relation", "correct")


@dataclass(frozen=True)
class DetectedObject:
    colour: str
    shape: str
    area: int
    fill: float
    centre: tuple[float, float]  # x, y


def shape_from_fill(fill: float) -> str:
    if fill >= FILL_SQUARE:
        return "square"
    return "circle" if fill >= FILL_CIRCLE else "triangle"


def detect(image: np.ndarray) -> list[DetectedObject]:
    """Objects in an H x W x 3 uint8 image, largest first."""
    pixels = image.astype(np.float32)
    distances = np.linalg.norm(pixels[:, :, None, :] - PALETTE[None, None], axis=-1)
    labels = np.where(distances.min(axis=-1) <= MAX_COLOUR_DISTANCE, distances.argmin(axis=-1), -1)
    objects = []
    for index, colour in enumerate(PALETTE_NAMES[1:], start=1):
        regions, _ = ndimage.label(labels == index)
        for region, box in enumerate(ndimage.find_objects(regions), start=1):
            mask = regions[box] == region
            area = int(mask.sum())
            if area < MIN_AREA:
                continue
            rows, columns = np.nonzero(mask)
            fill = area / (mask.shape[0] * mask.shape[1])
            centre = (box[1].start + float(columns.mean()), box[0].start + float(rows.mean()))
            objects.append(DetectedObject(colour, shape_from_fill(fill), area, fill, centre))
    return sorted(objects, key=lambda detected: -detected.area)


def relation_between(first: DetectedObject, second: DetectedObject) -> str:
    """Where ``first`` is relative to ``second``, along the axis of larger offset (image y grows downwards)."""
    dx, dy = second.centre[0] - first.centre[0], second.centre[1] - first.centre[1]
    if abs(dy) >= abs(dx):
        return "above" if dy > 0 else "below"
    return "left of" if dx > 0 else "right of"


def score_image(image: np.ndarray, caption: Caption) -> dict[str, float]:
    """Answers (1.0 / 0.0; relation NaN for single objects) to the compositional questions for one image."""
    objects = detect(image)
    expected = caption.things
    count = len(objects) == len(expected)
    colours = sorted(found.colour for found in objects) == sorted(thing.colour for thing in expected)
    shapes = sorted(found.shape for found in objects) == sorted(thing.shape for thing in expected)
    binding = count and sorted((o.colour, o.shape) for o in objects) == sorted((t.colour, t.shape) for t in expected)
    relation = math.nan
    if caption.relation is not None:
        relation = 0.0
        if binding:
            by_thing = {(found.colour, found.shape): found for found in objects}
            first, second = (by_thing[(thing.colour, thing.shape)] for thing in expected)
            relation = float(relation_between(first, second) == caption.relation)
    correct = binding and (caption.relation is None or relation == 1.0)
    return {
        "count": float(count),
        "colour": float(colours),
        "shape": float(shapes),
        "binding": float(binding),
        "relation": relation,
        "correct": float(correct),
    }


def score_prompt_image(image: np.ndarray, prompt: str) -> dict[str, float]:
    """Like ``score_image`` for a prompt text; all NaN when the prompt is not in the world's grammar."""
    caption = parse_caption(prompt)
    if caption is None:
        return dict.fromkeys(QUESTIONS, math.nan)
    return score_image(image, caption)
