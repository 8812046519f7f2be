"""The geneval metric end to end: a tiny random Mask2Former saved and loaded like a real one, a sweep over GenEval's
prompts with tiny stand-in models, per-task columns; a missing detector stops the sweep before any image."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from suite.cli import main
from suite.prompts.sets import DATA, geneval_records
from tests.conftest import tiny_metric_sweep

# two prompts of each of three tasks, in GenEval's words (the metric looks their metadata up by text)
PROMPTS = [
    record["prompt"]
    for task in ("two_object", "color_attr", "position")
    for record in [r for r in geneval_records() if r["tag"] == task][:2]
]


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory):
    """Mask2Former with a 4-stage Swin of width 16, GenEval's 80 object names as labels, random weights."""
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    names = (DATA / "geneval" / "object_names.txt").read_text().split("\n")
    names = [name.strip() for name in names if name.strip()]
    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(
        backbone_config=backbone,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={name: index for index, name in enumerate(names)},
        hidden_dim=32,
        num_queries=8,
        encoder_layers=1,
        decoder_layers=2,
        feature_size=32,
        mask_feature_size=32,
        dim_feedforward=64,
        num_attention_heads=2,
        encoder_feedforward_dim=64,
        common_stride=4,
        use_timm_backbone=False,
        backbone=None,
        use_pretrained_backbone=False,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("mask2former")
    Mask2FormerForUniversalSegmentation(config).save_pretrained(folder)
    Mask2FormerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def _sweep(tmp_path, detector) -> str:
    evaluation = {"clip_model": "test-clip", "geneval": {"detector": str(detector), "threshold": 0.0}}
    return tiny_metric_sweep(tmp_path, "geneval", evaluation, batch_size=6, prompts={"list": PROMPTS})


def test_detector_loads_and_returns_detections_with_masks(tiny_detector):
    from suite.metrics.detector import Mask2FormerDetector

    detector = Mask2FormerDetector(tiny_detector, torch.device("cpu"))
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    (found,) = detector([image])
    assert found and all(d.mask.shape == (64, 64) and d.mask.any() for d in found)
    assert all(d.label in detector.labels.values() and 0 <= d.score <= 1 for d in found)
    assert all(d.box[0] <= d.box[2] and d.box[1] <= d.box[3] for d in found)


def test_a_geneval_sweep_writes_per_task_columns(tmp_path, tiny_detector, test_networks):
    run = tmp_path / "run"
    assert main(["sweep", _sweep(tmp_path, tiny_detector), "--out", str(run), "--quiet", "--device", "cpu"]) == 0
    metrics = pd.read_csv(run / "metrics.csv")
    assert len(metrics) == 2
    for column in ("geneval_overall", "geneval_two_object", "geneval_color_attr", "geneval_position"):
        assert column in metrics and metrics[column].between(0, 1).all()
    assert metrics["geneval_single_object"].isna().all()  # no single-object prompt was asked
    scores = pd.read_csv(run / "scores.csv")
    assert set(scores["geneval_task"]) == {"two_object", "color_attr", "position"}
    assert set(scores["geneval_correct"]) <= {0.0, 1.0}
    comparisons = pd.read_csv(run / "comparisons.csv")
    assert "geneval_overall" in set(comparisons["metric"])


def test_a_missing_detector_stops_the_sweep_before_any_image(tmp_path, test_networks, capsys):
    run = tmp_path / "run"
    assert main(["sweep", _sweep(tmp_path, tmp_path / "nowhere"), "--out", str(run), "--quiet"]) == 2
    message = capsys.readouterr().err.strip()
    assert "evaluation.geneval.detector" in message and "save_pretrained" in message and "\n" not in message
    assert not (run / "images").exists()
