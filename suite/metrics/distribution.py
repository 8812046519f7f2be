"""Distances between the generated and the reference image distributions: FID, KID, CMMD.

FID and KID are torchmetrics' own metrics. Features are extracted once per image set by the
suite's feature networks and handed to torchmetrics through a pass-through "feature extractor",
so one pass of the network serves FID, KID and the on-disk reference cache alike.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

CMMD_SIGMA = 10.0  # Jayasumana et al. 2024, as in their reference implementation
CMMD_SCALE = 1000.0
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


class Passthrough(torch.nn.Module):
    """A torchmetrics "custom feature extractor" for inputs that already are features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _as_double(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(features), dtype=torch.float64)


def fid(
    generated: np.ndarray,
    reference: np.ndarray | None = None,
    reference_statistics: tuple[np.ndarray, np.ndarray, int] | None = None,
) -> float:
    """torchmetrics' FrechetInceptionDistance between feature sets (or against (mu, sigma, n) statistics)."""
    generated = _as_double(generated)
    metric = FrechetInceptionDistance(feature=Passthrough(generated.shape[1]), reset_real_features=False)
    if reference is not None:
        metric.update(_as_double(reference), real=True)
    else:
        mean, covariance, count = reference_statistics
        mean, covariance = _as_double(mean), _as_double(covariance)
        metric.real_features_sum = mean * count  # the states torchmetrics accumulates, from mu and sigma
        metric.real_features_cov_sum = covariance * (count - 1) + count * torch.outer(mean, mean)
        metric.real_features_num_samples = torch.tensor(count)
    metric.update(generated, real=False)
    return float(metric.compute())


def kid(generated: np.ndarray, reference: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """torchmetrics' KernelInceptionDistance (cubic polynomial kernel): mean and std over random subsets.

    Subsets are as large as both sets allow (at most 1000); their draw is seeded, so the
    numbers are reproducible.
    """
    generated, reference = _as_double(generated), _as_double(reference)
    subset_size = min(KID_SUBSET_SIZE, len(generated), len(reference))
    with warnings.catch_warnings():  # it warns that it keeps every feature in memory: here, by design
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(
            feature=Passthrough(generated.shape[1]), subsets=KID_SUBSETS, subset_size=subset_size
        )
    metric.update(reference, real=True)
    metric.update(generated, real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def cmmd(generated: np.ndarray, reference: np.ndarray, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE) -> float:
    """CMMD: squared MMD with a Gaussian RBF kernel over L2-normalised CLIP embeddings, times 1000.

    Jayasumana et al., "Rethinking FID: Towards a Better Evaluation Metric for Image Generation"
    (CVPR 2024); the estimator of their reference code (kernel means over all pairs).
    """
    x, y = _as_double(generated), _as_double(reference)
    x = x / x.norm(dim=1, keepdim=True)
    y = y / y.norm(dim=1, keepdim=True)
    gamma = 1.0 / (2 * sigma**2)

    def kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return torch.exp(-gamma * squared).mean()

    return float(scale * (kernel_mean(x, x) + kernel_mean(y, y) - 2 * kernel_mean(x, y)))
