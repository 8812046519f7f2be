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


class FrechetToReference:
    """FID of feature sets against one fixed reference, fast enough to recompute for every bootstrap resample.

    FID = |mu_g - mu_r|^2 + tr(S_g) + tr(S_r) - 2 tr((S_r^1/2 S_g S_r^1/2)^1/2) (Heusel et al. 2017). The
    reference's square root is computed once, so each call is one symmetric eigendecomposition. Agrees with
    torchmetrics' FrechetInceptionDistance (tested); ``fid`` stays the reported number.
    """

    def __init__(self, mean: np.ndarray, covariance: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float64)
        covariance = np.asarray(covariance, dtype=np.float64)
        values, vectors = np.linalg.eigh((covariance + covariance.T) / 2)
        self.root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
        self.trace = float(np.trace(covariance))

    @classmethod
    def of(cls, reference: np.ndarray) -> FrechetToReference:
        reference = np.asarray(reference, dtype=np.float64)
        return cls(reference.mean(axis=0), np.cov(reference, rowvar=False))

    def __call__(self, features: np.ndarray) -> float:
        features = np.asarray(features, dtype=np.float64)
        mean = features.mean(axis=0)
        centred = (features - mean) / np.sqrt(len(features) - 1)  # S_g = centred.T @ centred
        projected = centred @ self.root
        # S_r^1/2 S_g S_r^1/2 = projected.T @ projected shares its nonzero eigenvalues with projected @ projected.T:
        # take the smaller of the two (n x n when there are fewer images than features).
        gram = projected @ projected.T if len(features) < features.shape[1] else projected.T @ projected
        cross = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0, None)).sum()
        return float(np.sum((mean - self.mean) ** 2) + np.sum(centred**2) + self.trace - 2 * cross)


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


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018), as torchmetrics uses."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def gaussian_kernel(a: np.ndarray, b: np.ndarray, sigma: float = CMMD_SIGMA) -> np.ndarray:
    """CMMD's Gaussian RBF kernel on L2-normalised embeddings."""
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.exp(-squared / (2 * sigma**2))


def normalised(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    return features / np.linalg.norm(features, axis=1, keepdims=True)


class KernelToReference:
    """MMD^2 of resampled generated sets against one fixed reference, from kernel matrices computed once.

    ``unbiased``: KID's estimator (pairs of one image with itself, or with its own copy in a resample,
    excluded); otherwise the plug-in (V-statistic) estimator CMMD uses. Kernel means over the reference
    are computed in blocks, so large reference sets fit in memory.
    """

    def __init__(self, generated: np.ndarray, reference: np.ndarray, kernel, unbiased: bool, scale: float = 1.0):
        self.unbiased, self.scale = unbiased, scale
        self.generated_pairs = kernel(generated, generated)
        self.cross_mean = np.concatenate(
            [kernel(generated, reference[start : start + 4096]) for start in range(0, len(reference), 4096)], axis=1
        ).mean(axis=1)
        total, count = 0.0, len(reference)
        for start in range(0, count, 4096):
            block = kernel(reference[start : start + 4096], reference)
            total += block.sum() - (np.trace(block[:, start : start + 4096]) if unbiased else 0.0)
        self.reference_mean = total / (count * (count - 1) if unbiased else count * count)

    def weighted(self, weights: np.ndarray) -> np.ndarray:
        """The statistic of many resamples at once, each given as counts per generated row (B x n): a resample that
        holds row i w_i times. The same numbers as ``__call__`` on the rows, in matrix products."""
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        total = weights.sum(axis=1)
        pairs = np.einsum("bi,bi->b", weights @ self.generated_pairs, weights)
        if self.unbiased:  # pairs of a row with itself or its copies are left out
            squares = weights**2
            generated = (pairs - squares @ np.diag(self.generated_pairs)) / (total**2 - squares.sum(axis=1))
        else:
            generated = pairs / total**2
        return self.scale * (generated + self.reference_mean - 2 * (weights @ self.cross_mean) / total)

    def __call__(self, indices: np.ndarray) -> float:
        pairs = self.generated_pairs[np.ix_(indices, indices)]
        if self.unbiased:
            distinct = indices[:, None] != indices[None, :]
            generated_mean = pairs[distinct].mean()
        else:
            generated_mean = pairs.mean()
        return float(self.scale * (generated_mean + self.reference_mean - 2 * self.cross_mean[indices].mean()))


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
