"""HPS v2 through a tiny open_clip model saved as HPS ships its checkpoint (a state_dict in a .pt file)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from suite.cli import main
from tests.conftest import tiny_metric_sweep

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_hps(tmp_path_factory):
    import open_clip

    folder = tmp_path_factory.mktemp("hps")
    config = folder / "tiny-hps-clip.json"
    config.write_text(json.dumps(TINY))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-hps-clip")
    torch.save({"state_dict": model.state_dict()}, folder / "HPS_tiny_compressed.pt")
    return folder


def test_score_is_the_cosine_of_image_and_prompt(tiny_hps):
    import open_clip
    from PIL import Image

    from suite.metrics.hpsv2 import HpsModel
    from suite.metrics.settings import HpsSpec

    spec = HpsSpec(
        checkpoint=str(tiny_hps / "HPS_tiny_compressed.pt"),
        architecture="tiny-hps-clip",
        architecture_config=str(tiny_hps / "tiny-hps-clip.json"),
    )
    images = [(np.random.default_rng(seed).random((64, 64, 3)) * 255).astype(np.uint8) for seed in range(2)]
    prompts = ["a red circle", "a blue square above a red circle"]
    scores = HpsModel(spec, torch.device("cpu"))(images, prompts)
    model = open_clip.create_model("tiny-hps-clip", pretrained=spec.checkpoint).eval()
    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
    tokenizer = open_clip.get_tokenizer("tiny-hps-clip")
    with torch.no_grad():  # HPS v2's score.py, one image at a time
        for image, prompt, score in zip(images, prompts, scores):
            image_features = model.encode_image(preprocess(Image.fromarray(image))[None], normalize=True)
            text_features = model.encode_text(tokenizer([prompt]), normalize=True)
            assert score == pytest.approx((image_features @ text_features.T).item(), abs=1e-5)


def _sweep(tmp_path, folder) -> str:
    hps = {
        "checkpoint": str(folder / "HPS_tiny_compressed.pt"),
        "architecture": "tiny-hps-clip",
        "architecture_config": str(folder / "tiny-hps-clip.json"),
    }
    return tiny_metric_sweep(tmp_path, "hpsv2", {"hpsv2": hps}, name="hps-check")


def test_a_sweep_scores_every_image(tmp_path, tiny_hps):
    run = tmp_path / "run"
    assert main(["sweep", _sweep(tmp_path, tiny_hps), "--out", str(run), "--quiet", "--device", "cpu"]) == 0
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["hpsv2_mean"].between(-1, 1).all() and metrics["hpsv2_mean_ci95_high"].notna().all()
    assert "hpsv2_mean" in set(pd.read_csv(run / "comparisons.csv")["metric"])


def test_a_missing_checkpoint_stops_the_sweep_before_any_image(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["sweep", _sweep(tmp_path, tmp_path / "nowhere"), "--out", str(run), "--quiet"]) == 2
    message = capsys.readouterr().err.strip()
    assert "evaluation.hpsv2" in message and "\n" not in message
    assert not (run / "images").exists()
