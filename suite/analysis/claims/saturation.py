"""Oversaturation, measured three ways on uint8 RGB images (H x W x 3), each with a known answer.

- ``mean_saturation``: mean HSV saturation, (max - min) / max per pixel (0 for black), in [0, 1];
- ``clipped_fraction``: share of pixels with at least one channel at 0 or 255 (the values guidance pushes to);
- ``palette_distance``: mean RGB distance from each pixel to the nearest colour of the toy world's palette
  (background and the four object colours), in 0-255 units: 0 for an image drawn in the palette alone.

The toy world draws flat palette colours, so its own images give the level a faithful image has.
"""

from __future__ import annotations

import numpy as np

from suite.toy.score import PALETTE

MEASURES = ("mean_saturation", "clipped_fraction", "palette_distance")


def mean_saturation(image: np.ndarray) -> float:
    pixels = image.astype(np.float64)
    high, low = pixels.max(axis=-1), pixels.min(axis=-1)
    saturation = np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)
    return float(saturation.mean())


def clipped_fraction(image: np.ndarray) -> float:
    return float(((image == 0) | (image == 255)).any(axis=-1).mean())


def palette_distance(image: np.ndarray, palette: np.ndarray = PALETTE) -> float:
    pixels = image.astype(np.float64).reshape(-1, 1, 3)
    return float(np.linalg.norm(pixels - palette.astype(np.float64)[None], axis=-1).min(axis=1).mean())


def saturation_scores(image: np.ndarray) -> dict[str, float]:
    return {
        "mean_saturation": mean_saturation(image),
        "clipped_fraction": clipped_fraction(image),
        "palette_distance": palette_distance(image),
    }
