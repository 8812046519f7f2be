"""Reference sets and their features, computed once and cached on disk.

A cache entry is keyed by everything that changes the numbers (clean-fid's rule): which images
(built-in generator + count + seed, or a folder's listing), which network and weights, its resize
mode, and the images' resolution.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from suite.core.errors import UserError
from suite.core.files import atomic_write_bytes
from suite.metrics.networks import FeatureNetwork
from suite.prompts.coco import centre_square
from suite.toy import world

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BATCH = 256
DEFAULT_RESOLUTION = 256  # listed images of mixed sizes (COCO): the FID-30k protocol's 256 px


@dataclass(frozen=True)
class ReferenceFeatures:
    """Features of a reference set, or only its FID statistics (mean, covariance, count)."""

    key: str
    description: dict[str, Any]
    features: np.ndarray | None = None
    statistics: tuple[np.ndarray, np.ndarray, int] | None = None
    # what metrics derive from the set once per run (FID's square root of its covariance)
    derived: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def count(self) -> int:
        return len(self.features) if self.features is not None else self.statistics[2]


def _uint8_batches(arrays: list[np.ndarray]) -> Iterator[torch.Tensor]:
    for start in range(0, len(arrays), BATCH):
        yield torch.from_numpy(np.stack(arrays[start : start + BATCH])).permute(0, 3, 1, 2).contiguous()


def _builtin_images(spec) -> tuple[dict[str, Any], list[np.ndarray]]:
    images, _ = world.sample_batch(seed=spec.seed, count=spec.count, include_held_out=True)
    description = {"builtin": spec.builtin, "count": spec.count, "seed": spec.seed, "resolution": world.IMAGE_SIZE}
    return description, list(images)


def _folder_images(folder: Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    files = _image_files(folder)
    listing = hashlib.sha256("\n".join(f"{path.relative_to(folder)}:{path.stat().st_size}" for path in files).encode())
    images = [np.asarray(Image.open(path).convert("RGB")) for path in files]
    sizes = {image.shape[:2] for image in images}
    if len(sizes) != 1:
        raise UserError(
            f"reference folder {folder} mixes image sizes {sorted(sizes)[:3]}...; resize them to one size first"
        )
    description = {
        "folder": str(folder.resolve()),
        "count": len(files),
        "listing_sha256": listing.hexdigest()[:16],
        "resolution": int(images[0].shape[0]),
    }
    return description, images


def _listed_images(files: tuple[str, ...], resolution: int) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Listed real images (COCO's, for instance), each cropped to its centred square and resized to one size."""

    paths = [Path(file) for file in files]
    listing = hashlib.sha256("\n".join(f"{path}:{path.stat().st_size}" for path in paths).encode())
    description = {"files": len(paths), "listing_sha256": listing.hexdigest()[:16], "resolution": resolution}
    return description, [centre_square(path, resolution) for path in paths]


def extract(network: FeatureNetwork, images: list[np.ndarray]) -> np.ndarray:
    """Features of H x W x 3 uint8 images, in batches."""
    return np.concatenate([network(batch).numpy() for batch in _uint8_batches(images)])


def _reference_path(value: str, base_dir: Path) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base_dir / path


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"reference folder not found: {folder}")
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise UserError(f"reference folder {folder} holds {len(files)} images; need at least 2")
    return files


def check_reference(spec, base_dir: Path) -> None:
    """Fail with one line, before anything is generated, if a reference folder or statistics file is unusable."""
    if spec.statistics is not None:
        _statistics(_reference_path(spec.statistics, base_dir))
    elif spec.folder is not None:
        for path in _image_files(_reference_path(spec.folder, base_dir)):
            _check_image(path)
    elif spec.files:
        missing = [file for file in spec.files if not Path(file).is_file()]
        if missing:
            raise UserError(
                f"reference: {len(missing)} of {len(spec.files)} listed images are missing, e.g. {missing[0]}"
            )


def _check_image(path: Path) -> None:
    """A reference image that would fail when its features are extracted (truncated, not an image) fails now."""
    try:
        with Image.open(path) as image:
            if image.format == "PNG":
                image.verify()  # every chunk and its checksum, without decoding
            else:
                image.load()  # other formats' verify() checks nothing: decode
    except Exception as error:
        raise UserError(
            f"reference image {path} is not readable ({type(error).__name__}); remove or replace it"
        ) from None


def check_statistics_dimension(spec, base_dir: Path, network: FeatureNetwork) -> None:
    """FID statistics must have the feature network's dimension (inception: 2048)."""
    mean = _statistics(_reference_path(spec.statistics, base_dir)).statistics[0]
    if len(mean) != network.num_features:
        raise UserError(
            f"reference statistics {spec.statistics} have dimension {len(mean)}, but feature network "
            f"{network.name!r} gives {network.num_features}; compute them with that network"
        )


def load_reference(spec, network: FeatureNetwork, base_dir: Path, cache_dir: Path) -> ReferenceFeatures:
    """The reference set's features for ``network``: from the cache, else computed and cached."""
    if spec.statistics is not None:
        return _statistics(_reference_path(spec.statistics, base_dir))
    if spec.builtin is not None:
        description, images = _builtin_images(spec)
    elif spec.files:
        description, images = _listed_images(spec.files, spec.resolution or DEFAULT_RESOLUTION)
    else:
        description, images = _folder_images(_reference_path(spec.folder, base_dir))
    description = {**description, **network.describe()}
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir / "reference" / f"{key}.npz"
    if path.is_file():
        return ReferenceFeatures(key, description, features=np.load(path)["features"])
    features = extract(network, images)
    buffer = io.BytesIO()
    np.savez(buffer, features=features, description=json.dumps(description))
    atomic_write_bytes(path, buffer.getvalue())
    return ReferenceFeatures(key, description, features=features)


def _statistics(path: Path) -> ReferenceFeatures:
    """Precomputed FID statistics: an .npz with ``mu`` and ``sigma`` (and optionally the count ``n``)."""
    if not path.is_file():
        raise UserError(f"reference statistics file not found: {path}")
    try:
        data = np.load(path)
    except Exception:
        raise UserError(f"{path}: not a readable .npz of FID statistics") from None
    if not hasattr(data, "files") or "mu" not in data or "sigma" not in data:
        raise UserError(f"{path}: FID statistics need arrays 'mu' and 'sigma'")
    mean, covariance = data["mu"], data["sigma"]
    if mean.ndim != 1 or covariance.shape != (len(mean), len(mean)):
        raise UserError(
            f"{path}: 'mu' must be a vector and 'sigma' its square covariance, got {mean.shape} and {covariance.shape}"
        )
    count = int(data["n"]) if "n" in data else 50_000
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:20]
    description = {"statistics": str(path.resolve()), "sha256": digest, "count": count}
    return ReferenceFeatures(digest, description, statistics=(data["mu"], data["sigma"], count))
