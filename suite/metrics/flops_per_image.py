"""FLOPs per image: counted on the meta device once per preset, an exact number (no sampling, no interval)."""

from __future__ import annotations

from typing import Any

from suite.metrics.base import GridPoint, Metric


class Flops(Metric):
    name = "flops"
    description = "FLOPs per image: text encoding, every model evaluation of every stage, decoding (exact count)"
    headline = "gflops_per_image"
    higher_is_better = None
    display = ",.2f"
    shown = {"gflops_per_image": ",.3g"}
    needs_costs = True

    def evaluate(self, point: GridPoint) -> tuple[dict[str, Any], None]:
        preset = point.rows["preset"].iloc[0]
        value = point.evaluator.cost(preset).flops_per_image(point.settings) / 1e9
        return {
            "gflops_per_image": value,
            "gflops_per_image_ci95_low": value,
            "gflops_per_image_ci95_high": value,
            "gflops_per_image_interval": "exact count (FlopCounterMode on the meta device)",
        }, None
