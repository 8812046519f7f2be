"""COCO captions as prompts with their real images as the FID reference, on a miniature COCO-format folder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from suite.cli import main
from suite.core.errors import UserError
from suite.metrics.networks import clean_resize
from suite.prompts.coco import centre_square, sample_coco
from suite.run.config import load_sweep


@pytest.fixture
def mini_coco(tmp_path):
    """10 images of mixed sizes, 2 captions each, in captions_val2014.json's format."""
    from suite.toy.world import sample_batch

    images, captions = sample_batch(seed=3, count=10)
    folder = tmp_path / "val2014"
    folder.mkdir()
    entries, annotations = [], []
    for index, (image, caption) in enumerate(zip(images, captions)):
        name = f"COCO_val2014_{index:012d}.jpg"
        width = 64 + 8 * (index % 3)  # landscape and square images, as COCO's vary
        Image.fromarray(image).resize((width, 64)).save(folder / name, quality=95)
        entries.append({"id": 100 + index, "file_name": name, "width": width, "height": 64})
        annotations += [
            {"id": 2 * index, "image_id": 100 + index, "caption": caption},
            {"id": 2 * index + 1, "image_id": 100 + index, "caption": f"  {caption}  (second) "},
        ]
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations}))
    return path, folder


def _sweep(tmp_path, mini_coco, **coco) -> str:
    captions, folder = mini_coco
    sweep = {
        "name": "coco-check",
        "presets": ["tiny-latent"],
        "samplers": ["ddim"],
        "steps": [2],
        "guidance": [3.0],
        "batch_size": 6,
        "prompts": {"coco": {"captions": captions.name, "images": folder.name, "count": 6, "seed": 0, **coco}},
        "metrics": ["fid"],
        "evaluation": {"features": "test-net", "reference": {"coco": True, "resolution": 64}, "set_resamples": 10},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return str(path)


def test_sampling_is_seeded_and_each_prompt_keeps_its_image(mini_coco):
    captions, folder = mini_coco
    first = sample_coco(str(captions), str(folder), 6, 0)
    assert first == sample_coco(str(captions), str(folder), 6, 0)
    assert first != sample_coco(str(captions), str(folder), 6, 1)
    assert len(set(first.files)) == 6  # without replacement
    data = json.loads(captions.read_text())
    by_file = {entry["file_name"]: entry["id"] for entry in data["images"]}
    for prompt, file in zip(first.prompts, first.files):
        options = [" ".join(a["caption"].split()) for a in data["annotations"] if a["image_id"] == by_file[file.name]]
        assert prompt in options


def test_a_coco_sweep_pairs_prompts_with_their_real_images(tmp_path, mini_coco, test_networks):
    sweep_file = _sweep(tmp_path, mini_coco)
    resolved = load_sweep(tmp_path / "sweep.yaml")
    sample = sample_coco(*(str(path.resolve()) for path in mini_coco), 6, 0)
    assert resolved.prompt_texts == sample.prompts
    assert resolved.sweep.evaluation.reference.files == tuple(str(path) for path in sample.files)
    run = tmp_path / "run"
    assert main(["sweep", sweep_file, "--out", str(run), "--quiet", "--device", "cpu"]) == 0
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["fid"].notna().all() and (metrics["reference_count"] == 6).all()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert len(config["evaluation"]["reference"]["files"]) == 6  # the run folder alone names its reference


@pytest.mark.parametrize(
    ("coco", "message"),
    [
        ({"count": 11}, "11 images asked"),
        ({"captions": "nope.json"}, "prompts.coco.captions: file not found"),
        ({"images": "nowhere"}, "prompts.coco.images: folder not found"),
    ],
)
def test_bad_coco_settings_are_one_line(tmp_path, mini_coco, test_networks, coco, message):
    _sweep(tmp_path, mini_coco, **coco)
    with pytest.raises(UserError, match=message):
        load_sweep(tmp_path / "sweep.yaml")


def test_centre_square_and_clean_resize():
    image = np.zeros((20, 40, 3), dtype=np.uint8)
    image[:, 10:30] = 200  # the centred 20 x 20 square
    path_image = Image.fromarray(image)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "wide.png"
        path_image.save(path)
        assert (centre_square(path, 10) == 200).all()
    flat = torch.full((2, 3, 64, 64), 77, dtype=torch.uint8)
    assert torch.equal(clean_resize(flat), torch.full((2, 3, 299, 299), 77, dtype=torch.uint8))
    ramp = (np.arange(64, dtype=np.float32)[None, :].repeat(64, 0) * 4).astype(np.uint8)
    batch = torch.from_numpy(np.stack([ramp] * 3, axis=-1)[None]).permute(0, 3, 1, 2).contiguous()
    expected = np.asarray(Image.fromarray(ramp.astype(np.float32), mode="F").resize((299, 299), Image.BICUBIC))
    assert np.abs(clean_resize(batch)[0, 0].numpy().astype(float) - np.clip(np.round(expected), 0, 255)).max() == 0
