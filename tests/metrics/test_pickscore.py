"""PickScore through a tiny random CLIPModel saved and loaded like the real one: the score's formula, a sweep end
to end, and a missing model folder stopping the sweep before any image."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from suite.cli import main
from tests.conftest import tiny_metric_sweep


@pytest.fixture(scope="module")
def tiny_pickscore(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from suite.model.builders import word_level_clip_tokenizer
    from suite.toy.world import WORDS

    tokenizer = word_level_clip_tokenizer([*WORDS, "photo", "cat", "painting", "horse"])
    config = CLIPConfig(
        text_config={
            "vocab_size": tokenizer.vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("pickscore")
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_score_is_the_models_scaled_cosine(tiny_pickscore):
    from transformers import CLIPModel, CLIPProcessor

    from suite.metrics.pickscore import PickScoreModel, projected

    images = [(np.random.default_rng(seed).random((64, 64, 3)) * 255).astype(np.uint8) for seed in range(3)]
    prompts = ["a red circle", "a blue square", "a photo of a cat"]
    scores = PickScoreModel(tiny_pickscore, torch.device("cpu"))(images, prompts)
    model, processor = CLIPModel.from_pretrained(tiny_pickscore).eval(), CLIPProcessor.from_pretrained(tiny_pickscore)
    with torch.no_grad():  # the PickScore authors' formula, one image at a time
        for image, prompt, score in zip(images, prompts, scores):
            inputs = processor(images=[image], text=[prompt], return_tensors="pt", padding=True)
            image_embeds = projected(model.get_image_features(pixel_values=inputs["pixel_values"]))
            text_embeds = projected(
                model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            )
            image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
            text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
            expected = (model.logit_scale.exp() * (text_embeds @ image_embeds.T)).item()
            assert score == pytest.approx(expected, rel=1e-4, abs=1e-4)


def _sweep(tmp_path, folder) -> str:
    return tiny_metric_sweep(tmp_path, "pickscore", {"pickscore": str(folder)})


def test_a_sweep_scores_every_image_and_compares_points(tmp_path, tiny_pickscore):
    run = tmp_path / "run"
    assert main(["sweep", _sweep(tmp_path, tiny_pickscore), "--out", str(run), "--quiet", "--device", "cpu"]) == 0
    metrics = pd.read_csv(run / "metrics.csv")
    assert len(metrics) == 2 and metrics["pickscore_mean"].notna().all()
    assert (metrics["pickscore_mean_ci95_low"] <= metrics["pickscore_mean"]).all()
    assert pd.read_csv(run / "scores.csv")["pickscore"].notna().sum() == 8
    assert "pickscore_mean" in set(pd.read_csv(run / "comparisons.csv")["metric"])


def test_a_missing_model_folder_stops_the_sweep_before_any_image(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["sweep", _sweep(tmp_path, tmp_path / "nowhere"), "--out", str(run), "--quiet"]) == 2
    message = capsys.readouterr().err.strip()
    assert "evaluation.pickscore" in message and "save_pretrained" in message and "\n" not in message
    assert not (run / "images").exists()
