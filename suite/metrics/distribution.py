"""Distances between the generated and the reference image distributions: FID, KID, CMMD.

FID and KID are torchmetrics' own metrics. Features are extracted once per image set by the
suite's feature networks and handed to torchmetrics through a pass-through "feature extractor",
so one pass of the network serves FID, KID and the on-disk reference cache alike.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

CMMD_SIGMA = 10.0  # Jayasumana et al. 2024, as in their reference implementation
CMMD_SCALE = 1000.0
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_BLOCK = 1000  # images per block of the suite's own KID estimate beyond this many (``prompt_blocks``)


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
    torchmetrics' FrechetInceptionDistance (tested); ``fid`` stays the reported number. ``count`` is the number of
    reference images behind the moments (torchmetrics' FID reads it with them).
    """

    def __init__(self, mean: np.ndarray, covariance: np.ndarray, count: int | None = None):
        self.mean = np.asarray(mean, dtype=np.float64)
        covariance = np.asarray(covariance, dtype=np.float64)
        self.covariance, self.count = covariance, count
        values, vectors = np.linalg.eigh((covariance + covariance.T) / 2)
        self.root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
        self.trace = float(np.trace(covariance))

    @classmethod
    def of(cls, reference: np.ndarray) -> FrechetToReference:
        reference = np.asarray(reference, dtype=np.float64)
        mean = reference.mean(axis=0)
        return cls(mean, centred_gram(reference, mean) / (len(reference) - 1), len(reference))

    @property
    def statistics(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(mean, covariance, count), as ``fid`` takes a reference it need not read again."""
        if self.count is None:
            raise ValueError("these reference moments were given without the number of images behind them")
        return self.mean, self.covariance, self.count

    def __call__(self, features: np.ndarray) -> float:
        return self.rows_of(features)(np.arange(len(features)))

    def influence(self, features: np.ndarray) -> np.ndarray:
        """Each feature row's influence on the FID of the set (``FrechetOfRows.influence``)."""
        return self.rows_of(features).influence()

    def rows_of(self, features: np.ndarray) -> FrechetOfRows:
        """FID of any rows of ``features``: for resamples, FID_inf's subsets and the influences of one point."""
        return FrechetOfRows(self, features)


def centred_gram(rows: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """(X - 1 mean')' (X - 1 mean') for the rows X, without a centred copy of them: X'X (numpy hands the transposed
    product of one array to BLAS syrk, half a matrix product's work) less the rank-one n mean mean'."""
    rows = np.asarray(rows, dtype=np.float64)
    return rows.T @ rows - len(rows) * np.outer(mean, mean)


class FrechetOfRows:
    """FID against one reference of any rows (subsets, resamples with repeats) of one feature set.

    The features are multiplied by the reference's square root R once; every FID of rows after that is a Gram
    matrix of those rows and one symmetric eigendecomposition: R S_g R is the covariance of the projected rows,
    and shares its nonzero eigenvalues with their n x n Gram matrix, the smaller of the two is taken. Means and
    tr(S_g) come from per-row sums computed once, so only the projected rows are gathered per call.
    """

    def __init__(self, distance: FrechetToReference, features: np.ndarray):
        self.distance = distance
        self.features = np.asarray(features, dtype=np.float64)
        self.projected = self.features @ distance.root
        self.squared = np.einsum("ij,ij->i", self.features, self.features)  # |x|^2 per row, for tr(S_g)
        self.whole: float | None = None  # the FID of all rows, once ``influence`` has its eigenvalues

    def __call__(self, rows: np.ndarray) -> float:
        """FID of the rows given as non-negative integer indices, repeats allowed (a bootstrap resample)."""
        rows = np.asarray(rows)
        count, dimension = len(rows), self.features.shape[1]
        weights = np.bincount(rows, minlength=len(self.features)).astype(np.float64)  # repeats count
        if self.whole is not None and count == len(self.features) and np.all(weights == 1):
            return self.whole  # every row once: the value ``influence`` computed on the way
        mean = weights @ self.features / count
        spread = (weights @ self.squared - count * mean @ mean) / (count - 1)  # tr(S_g)
        projected = self.projected[rows]
        if count < dimension:  # the n x n Gram of the centred rows has the same nonzero eigenvalues
            centred = projected - projected.mean(axis=0)
            gram = centred @ centred.T / (count - 1)
        else:
            gram = centred_gram(projected, mean @ self.distance.root) / (count - 1)
        cross = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0, None)).sum()
        return float(np.sum((mean - self.distance.mean) ** 2) + spread + self.distance.trace - 2 * cross)

    def influence(self) -> np.ndarray:
        """Each row's influence on the FID of all rows (the reference fixed), for the delta method.

        With mu, S the set's mean and covariance, R = S_r^1/2, M = R S R and A = R M^-1/2 R, the derivative of FID
        towards one more image x is 2 (mu - mu_r).(x - mu) + |x - mu|^2 - tr S - [(x - mu)' A (x - mu) - tr(A S)],
        the last term from d tr(M^1/2) = tr(M^-1/2 dM) / 2 (and tr(A S) = tr(M^1/2)). With M = V L V', the
        quadratic form is |(x - mu) R V L^-1/4|^2, read off the projected rows. M's zero eigenvalues (fewer
        images than dimensions) are left out of M^-1/2, where the derivative does not exist.
        """
        count = len(self.features)
        mean = self.features.mean(axis=0)
        projected_mean = self.projected.mean(axis=0)
        values, vectors = np.linalg.eigh(centred_gram(self.projected, projected_mean) / (count - 1))
        kept = values > max(values.max(), 0.0) * len(values) * np.finfo(np.float64).eps
        whitened = (self.projected - projected_mean) @ (vectors[:, kept] * values[kept] ** -0.25)
        quadratic = np.einsum("ij,ij->i", whitened, whitened)
        squared = self.squared - 2 * self.features @ mean + mean @ mean  # |x - mu|^2
        shift = mean - self.distance.mean
        influence = 2 * (self.features @ shift - mean @ shift) + squared - squared.sum() / (count - 1)
        influence += np.sqrt(values[kept]).sum() - quadratic
        if count > len(values):  # with fewer rows than dimensions ``__call__`` reads the n x n Gram instead
            cross = np.sqrt(np.clip(values, 0, None)).sum()
            spread = squared.sum() / (count - 1)
            self.whole = float(np.sum(shift**2) + spread + self.distance.trace - 2 * cross)
        return influence - influence.mean()


def kid(generated: np.ndarray, reference: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """torchmetrics' KernelInceptionDistance (cubic polynomial kernel): mean and std over random subsets.

    Subsets are as large as both sets allow (at most 1000); their draw is seeded, so the
    numbers are reproducible. It runs in float32, the feature networks' own precision: at 30,000 x 2,048 that takes
    7 s instead of 17 s in float64, and moves the mean by 3e-8 (1/16,000 of the spread between its subsets) and that
    spread (``kid_std``) by 4e-8 (1e-4 of it). The suite's own KID (``BlockedKernel``, the number with an
    interval) stays in float64.
    """
    generated = torch.as_tensor(np.asarray(generated), dtype=torch.float32)
    reference = torch.as_tensor(np.asarray(reference), dtype=torch.float32)
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

    def influence(self) -> np.ndarray:
        """Each generated row's influence on the statistic (Hoeffding's projection; reference fixed), for the delta
        method: 2 (its mean kernel to the other generated rows - their average) - 2 (its mean kernel to the
        reference - their average), times the scale."""
        count = len(self.cross_mean)
        if self.unbiased:
            within = (self.generated_pairs.sum(axis=1) - np.diag(self.generated_pairs)) / (count - 1)
        else:
            within = self.generated_pairs.mean(axis=1)
        return self.scale * 2 * ((within - within.mean()) - (self.cross_mean - self.cross_mean.mean()))

    def __call__(self, indices: np.ndarray) -> float:
        pairs = self.generated_pairs[np.ix_(indices, indices)]
        if self.unbiased:
            distinct = indices[:, None] != indices[None, :]
            generated_mean = pairs[distinct].mean()
        else:
            generated_mean = pairs.mean()
        return float(self.scale * (generated_mean + self.reference_mean - 2 * self.cross_mean[indices].mean()))


def prompt_blocks(units, size: int = KID_BLOCK, seed: int = 0) -> list[np.ndarray]:
    """The rows of ``units`` (``suite.core.stats.Units``) in disjoint blocks of whole prompts, about ``size`` rows
    each: one block when there are at most ``size`` rows, else ceil(n / size) blocks of prompts drawn in a seeded
    random order (so each block is a random share of the prompts, not a run of neighbouring ones)."""
    count = math.ceil(units.n / size)
    if count <= 1:
        return [np.arange(units.n)]
    order = np.random.default_rng(seed).permutation(units.count)
    sizes = np.bincount(units.of_value, minlength=units.count)[order]
    block_of_unit = np.empty(units.count, dtype=np.int64)
    block_of_unit[order] = np.minimum((np.cumsum(sizes) - sizes) * count // units.n, count - 1)
    block_of_row = block_of_unit[units.of_value]
    return [np.flatnonzero(block_of_row == block) for block in range(count)]


class BlockedKernel:
    """An MMD^2 statistic (``KernelToReference``) over disjoint blocks of generated rows, each against its own
    share of the reference: the blocks' values averaged, weighted by their rows.

    With one block this is ``KernelToReference`` on everything. With many, the unbiased (KID) estimate stays
    unbiased while its cost falls from (n + m)^2 d to (n + m) d times the block size: KID at 30,000 images in
    seconds, as torchmetrics and the KID paper estimate it on subsets. ``blocks`` and ``parts`` pair each block
    of generated rows with its rows of the reference.
    """

    def __init__(self, generated, reference, blocks, parts, kernel, unbiased: bool, scale: float = 1.0):
        self.blocks = [np.asarray(rows) for rows in blocks]
        self.kernels = [
            KernelToReference(generated[rows], reference[part], kernel, unbiased, scale)
            for rows, part in zip(self.blocks, parts)
        ]
        self.count = len(generated)
        self.block_of = np.empty(self.count, dtype=np.int64)
        self.position = np.empty(self.count, dtype=np.int64)
        for block, rows in enumerate(self.blocks):
            self.block_of[rows], self.position[rows] = block, np.arange(len(rows))

    @classmethod
    def of(cls, generated, reference, units, kernel, unbiased: bool, scale: float = 1.0, halves: int = 1):
        """Blocks of whole prompts (``prompt_blocks``) over ``halves`` stacked copies of the units' rows (2: two
        paired points, a's rows then b's), the reference split into as many shares as there are blocks where each
        share still holds a block's worth of images; a smaller reference is whole in every block."""
        blocks = prompt_blocks(units)
        parts = [np.arange(len(reference))] * len(blocks)
        if len(blocks) > 1 and len(reference) >= len(blocks) * KID_BLOCK:
            parts = np.array_split(np.random.default_rng(0).permutation(len(reference)), len(blocks))
        shifted = [rows + half * units.n for half in range(halves) for rows in blocks]
        return cls(generated, reference, shifted, list(parts) * halves, kernel, unbiased, scale)

    def __call__(self, indices: np.ndarray) -> float:
        indices = np.asarray(indices)
        total, weight = 0.0, 0
        for block, kernel in enumerate(self.kernels):
            chosen = self.position[indices[self.block_of[indices] == block]]
            if len(chosen) > 1:
                total, weight = total + len(chosen) * kernel(chosen), weight + len(chosen)
        return float(total / weight) if weight else math.nan

    def weighted(self, weights: np.ndarray) -> np.ndarray:
        """``__call__`` of many resamples given as counts per row (``KernelToReference.weighted``)."""
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        total, weight = np.zeros(len(weights)), np.zeros(len(weights))
        for rows, kernel in zip(self.blocks, self.kernels):
            counts = weights[:, rows]
            sizes = counts.sum(axis=1)
            present = sizes > 1
            if np.any(present):
                total[present] += sizes[present] * kernel.weighted(counts[present])
                weight[present] += sizes[present]
        with np.errstate(invalid="ignore", divide="ignore"):
            return total / weight

    def influence(self) -> np.ndarray:
        """Each row's influence on the blocked statistic: its influence within its block, plus its block's value less
        the statistic (a row's weight moves its block's share of the statistic too), so the statistic is
        T + (1/n) sum of these to first order."""
        influence = np.empty(self.count)
        overall = self(np.arange(self.count))
        for rows, kernel in zip(self.blocks, self.kernels):
            influence[rows] = kernel.influence() + kernel(np.arange(len(rows))) - overall
        return influence


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
