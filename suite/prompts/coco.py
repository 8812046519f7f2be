"""COCO captions as a prompt source, and the real images that belong to the sampled captions.

The literature's text-to-image FID on COCO ("FID-30k"): draw N images of COCO's validation set with a fixed
seed, take one of each image's captions as the prompt, generate one image per prompt, and compare against the
drawn real images. ``captions`` is a COCO captions file (``captions_val2014.json``: ``images`` with ``id`` and
``file_name``, ``annotations`` with ``image_id`` and ``caption``); ``images`` the folder holding the files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from suite.core.errors import UserError

LAYOUT = "a COCO captions JSON (images: id, file_name; annotations: image_id, caption) and the folder of its images"


@dataclass(frozen=True)
class CocoSample:
    prompts: tuple[str, ...]
    files: tuple[Path, ...]  # the real image behind each prompt, in the same order


@lru_cache(maxsize=4)
def sample_coco(captions: str, images: str, count: int, seed: int) -> CocoSample:
    """``count`` images drawn without replacement (numpy's default_rng(seed)), one caption each, drawn alike."""
    path, folder = Path(captions), Path(images)
    if not path.is_file():
        raise UserError(f"prompts.coco.captions: file not found: {path}; expected {LAYOUT}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = {int(entry["id"]): entry["file_name"] for entry in data["images"]}
        by_image: dict[int, list[tuple[int, str]]] = {}
        for annotation in data["annotations"]:
            by_image.setdefault(int(annotation["image_id"]), []).append(
                (int(annotation.get("id", 0)), str(annotation["caption"]).strip())
            )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"prompts.coco.captions: {path} is not a COCO captions file; expected {LAYOUT}") from None
    ids = sorted(image_id for image_id in by_image if image_id in files)
    if count > len(ids):
        raise UserError(f"prompts.coco.count: {count} images asked, {path} captions {len(ids)}")
    if not folder.is_dir():
        raise UserError(f"prompts.coco.images: folder not found: {folder}; expected {LAYOUT}")
    rng = np.random.default_rng(seed)
    chosen = [ids[index] for index in rng.choice(len(ids), size=count, replace=False)]
    prompts, paths = [], []
    for image_id in chosen:
        options = [caption for _, caption in sorted(by_image[image_id])]
        prompts.append(" ".join(options[int(rng.integers(len(options)))].split()))
        paths.append(folder / files[image_id])
    missing = [str(file) for file in paths if not file.is_file()]
    if missing:
        raise UserError(f"prompts.coco.images: {len(missing)} drawn images are missing, e.g. {missing[0]}")
    return CocoSample(tuple(prompts), tuple(paths))


def centre_square(path: Path, size: int) -> np.ndarray:
    """A real image as the generated ones are: the largest centred square, resized (PIL bicubic) to ``size``."""
    image = Image.open(path).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return np.asarray(image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC))
