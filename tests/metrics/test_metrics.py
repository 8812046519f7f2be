"""Known-answer tests for the metrics: FID, KID, CMMD, CLIP score; tiny networks built here, nothing downloads."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from suite.metrics import distribution
from suite.metrics.clip_score import clip_scores
from suite.metrics.networks import ClipModel, resize_and_normalise
from suite.toy import clip as toy_clip


def _with_moments(rng: np.random.Generator, count: int, mean: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """Samples whose sample mean and (n-1) covariance are exactly ``mean`` and ``covariance``."""
    noise = rng.standard_normal((count, len(mean)))
    noise -= noise.mean(axis=0)
    whitening = np.linalg.inv(np.linalg.cholesky(np.cov(noise, rowvar=False)))
    return mean + noise @ whitening.T @ np.linalg.cholesky(covariance).T


def _scipy_fid(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook formula (Heusel et al. 2017) with scipy's matrix square root, as pytorch-fid computes it."""
    mu_x, mu_y = x.mean(axis=0), y.mean(axis=0)
    sigma_x, sigma_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(sigma_x @ sigma_y).real
    return float(((mu_x - mu_y) ** 2).sum() + np.trace(sigma_x + sigma_y - 2 * root))


def test_fid_of_a_set_against_itself_is_zero():
    features = np.random.default_rng(0).standard_normal((300, 16))
    assert abs(distribution.fid(features, features)) < 1e-6


def test_fid_between_gaussian_feature_sets_equals_the_closed_form():
    """For diagonal covariances: |mu1 - mu2|^2 + sum_i (sqrt(s1_i) - sqrt(s2_i))^2."""
    rng = np.random.default_rng(1)
    mean_a, mean_b = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
    variance_a, variance_b = np.array([1.0, 4.0, 0.25, 2.0]), np.array([2.0, 1.0, 1.0, 0.5])
    a = _with_moments(rng, 500, mean_a, np.diag(variance_a))
    b = _with_moments(rng, 700, mean_b, np.diag(variance_b))
    closed_form = ((mean_a - mean_b) ** 2).sum() + ((np.sqrt(variance_a) - np.sqrt(variance_b)) ** 2).sum()
    assert distribution.fid(a, b) == pytest.approx(closed_form, rel=1e-9)


def test_fid_equals_an_independent_scipy_implementation():
    rng = np.random.default_rng(2)
    mixing = rng.standard_normal((12, 12))
    x = rng.standard_normal((400, 12)) @ mixing
    y = rng.standard_normal((350, 12)) @ mixing * 1.3 + 0.4
    assert distribution.fid(x, y) == pytest.approx(_scipy_fid(x, y), rel=1e-6)


def test_fid_from_statistics_equals_fid_from_features():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((200, 6)), rng.standard_normal((250, 6)) + 1
    statistics = (y.mean(axis=0), np.cov(y, rowvar=False), len(y))
    assert distribution.fid(x, reference_statistics=statistics) == pytest.approx(distribution.fid(x, y), rel=1e-9)


def test_kid_of_identical_sets_is_near_zero_and_positive_for_different_sets():
    """KID is an unbiased MMD^2 estimate: ~0 (either sign) for one set against itself, relative to a real shift."""
    rng = np.random.default_rng(4)
    features = rng.standard_normal((400, 8))
    mean, std = distribution.kid(features, features)
    shifted = distribution.kid(features + 1.0, features)
    assert shifted[0] > 0 and abs(mean) < 0.01 * shifted[0] and std >= 0
    assert distribution.kid(features + 1.0, features) == shifted  # seeded subsets: reproducible


def _numpy_cmmd(x: np.ndarray, y: np.ndarray, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """google-research/cmmd's distance.py, transcribed to numpy."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    gamma = 1 / (2 * sigma**2)
    x_norms, y_norms = (x * x).sum(1), (y * y).sum(1)
    k_xx = np.exp(-gamma * (-2 * x @ x.T + x_norms[:, None] + x_norms[None, :])).mean()
    k_yy = np.exp(-gamma * (-2 * y @ y.T + y_norms[:, None] + y_norms[None, :])).mean()
    k_xy = np.exp(-gamma * (-2 * x @ y.T + x_norms[:, None] + y_norms[None, :])).mean()
    return float(scale * (k_xx + k_yy - 2 * k_xy))


def test_cmmd_matches_the_reference_formula_and_is_zero_for_identical_sets():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((120, 32)), rng.standard_normal((90, 32)) + 0.3
    assert distribution.cmmd(x, y) == pytest.approx(_numpy_cmmd(x, y), rel=1e-9)
    assert distribution.cmmd(x, x) == pytest.approx(0.0, abs=1e-9)
    assert distribution.cmmd(x, y) > 0


@pytest.fixture(scope="module")
def tiny_clip() -> ClipModel:
    torch.manual_seed(0)
    model = toy_clip.build().eval()
    return ClipModel(
        "test",
        "random toy CLIP",
        model,
        toy_clip.tokenize,
        resize_and_normalise(64, (0.5,) * 3, (0.5,) * 3, mode="bilinear"),
        "bilinear-64-antialias",
    )


class _TorchmetricsAdapter(torch.nn.Module):
    """Presents an open_clip model with the transformers-CLIP interface torchmetrics' CLIPScore calls."""

    class _Config:
        pass

    def __init__(self, clip: ClipModel):
        super().__init__()
        self.clip, self.config = clip, self._Config()

    def get_image_features(self, pixel_values):
        return self.clip.model.encode_image(pixel_values)

    def get_text_features(self, input_ids, attention_mask=None):
        return self.clip.model.encode_text(input_ids)


class _Processor:
    def __init__(self, clip: ClipModel):
        self.clip = clip

    def __call__(self, images=None, text=None, return_tensors="pt", padding=True):
        if images is not None:
            return {"pixel_values": self.clip.preprocess(torch.stack(images))}
        ids, _ = self.clip.tokenize(text)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_clip_score_equals_torchmetrics_clipscore_with_the_same_model(tiny_clip):
    from torchmetrics.multimodal.clip_score import CLIPScore

    rng = np.random.default_rng(6)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    prompts = [
        "a red circle",
        "a blue square",
        "a green triangle above a red circle",
        "a red circle",
        "a yellow square left of a blue circle",
        "a blue triangle",
    ]
    ours, truncated = clip_scores(tiny_clip, images, prompts)
    reference = CLIPScore(model_name_or_path=lambda: (_TorchmetricsAdapter(tiny_clip), _Processor(tiny_clip)))
    per_image = []
    for image, prompt in zip(images, prompts):
        reference.reset()
        reference.update(torch.from_numpy(image).permute(2, 0, 1), [prompt])
        per_image.append(float(reference.compute()))  # torchmetrics: max(mean score, 0) = max(cos, 0) per image
    assert ours == pytest.approx(np.array(per_image), abs=1e-4)
    assert truncated == 0


def test_long_prompts_are_truncated_and_counted(tiny_clip):
    image = [np.zeros((64, 64, 3), dtype=np.uint8)]
    long_prompt = " ".join(["a red circle above"] * 5)
    _, truncated = clip_scores(tiny_clip, image, [long_prompt])
    assert truncated == 1


def test_fast_fid_core_agrees_with_torchmetrics_with_more_or_fewer_images_than_features():
    rng = np.random.default_rng(7)
    reference = rng.standard_normal((300, 24)) + 0.2
    for count in (16, 200):  # fewer images than features uses the n x n Gram matrix
        x = rng.standard_normal((count, 24)) * 1.3
        fast = distribution.FrechetToReference.of(reference)(x)
        assert fast == pytest.approx(distribution.fid(x, reference), rel=1e-6)


def test_fid_of_rows_with_repeats_equals_torchmetrics_on_the_gathered_rows():
    """Subsets and resamples (rows repeated) take their means and tr(S_g) from per-row sums and their Gram matrix
    from syrk on the uncentred rows: the same FID as torchmetrics on the rows gathered, in both regimes, with
    features far from zero (the rank-one centring is where precision would go)."""
    rng = np.random.default_rng(11)
    reference = np.abs(rng.standard_normal((400, 24))) + 3.0
    features = np.abs(rng.standard_normal((300, 24))) * 1.2 + 3.1
    rows_of = distribution.FrechetToReference.of(reference).rows_of(features)
    for count in (18, 150, 300):
        rows = rng.integers(0, len(features), count)  # with repeats, as a bootstrap resample draws them
        assert len(np.unique(rows)) < count
        assert rows_of(rows) == pytest.approx(distribution.fid(features[rows], reference), rel=1e-7)
    rows_of.influence()  # keeps the FID of every row once, which FID_inf's whole-set point reads back
    assert rows_of.whole == pytest.approx(distribution.fid(features, reference), rel=1e-7)
    assert rows_of(rng.permutation(len(features))) == rows_of.whole
    # only every row exactly once reads it back: not a resample of as many rows, nor all rows but one
    for rows in (rng.integers(0, len(features), len(features)), rng.permutation(len(features))[:-1]):
        assert rows_of(rows) == pytest.approx(distribution.fid(features[rows], reference), rel=1e-7)
        assert rows_of(rows) != rows_of.whole


def test_kernel_cores_agree_with_kid_and_cmmd_on_the_whole_sets():
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((150, 12)), rng.standard_normal((220, 12)) + 0.3
    every = np.arange(len(x))
    cmmd = distribution.KernelToReference(
        distribution.normalised(x), distribution.normalised(y), distribution.gaussian_kernel, False, 1000.0
    )
    assert cmmd(every) == pytest.approx(distribution.cmmd(x, y), rel=1e-9)
    kid = distribution.KernelToReference(x, y, distribution.polynomial_kernel, True)(every)
    kxx, kyy, kxy = (distribution.polynomial_kernel(a, b) for a, b in ((x, x), (y, y), (x, y)))
    unbiased = (kxx.sum() - np.trace(kxx)) / (150 * 149) + (kyy.sum() - np.trace(kyy)) / (220 * 219) - 2 * kxy.mean()
    assert kid == pytest.approx(unbiased, rel=1e-9)
    assert kid == pytest.approx(distribution.kid(x, y)[0], abs=3 * distribution.kid(x, y)[1])
