"""Metrics per grid point: FID, KID, CLIP score, CMMD, FLOPs, and the toy world's compositional score.

This module only names them (for config validation and ``suite list``); ``evaluate`` computes them.
"""

from __future__ import annotations

from suite.registry import Registry

METRICS: Registry[str] = Registry("metric")
METRICS.register("fid", "Frechet distance of feature statistics to the reference set (torchmetrics)")
METRICS.register("kid", "kernel inception distance to the reference set, mean and std over subsets (torchmetrics)")
METRICS.register("clip_score", "100 * max(cos(image, prompt), 0) per image; mean and 95% CI per grid point")
METRICS.register("cmmd", "MMD with a Gaussian RBF kernel over CLIP image embeddings (Jayasumana et al. 2024)")
METRICS.register("flops", "FLOPs per image: text encoding, every model evaluation of every stage, decoding")
METRICS.register("composition", "toy world only: exact object count / colour / shape / binding / relation accuracy")
DISTRIBUTION_METRICS = ("fid", "kid", "cmmd")
