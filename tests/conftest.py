"""Shared fixtures: tiny models of both families, built from configs and saved like hub repos."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from suite.model import tiny
from suite.model.backends import BACKENDS
from suite.model.loading import LoadOptions
from suite.model.presets import PRESETS

CPU_FP32 = LoadOptions(torch.device("cpu"), torch.float32, torch.float32)


REGISTRY = Path(__file__).resolve().parents[1] / "experiments" / "registry.yaml"


@pytest.fixture(autouse=True)
def _committed_registry_untouched():
    """No test may register rules or record a measurement in the committed registry (measuring records its start
    in the registry beside the claim files: a test measures from copies)."""
    before = REGISTRY.read_bytes()
    yield
    assert REGISTRY.read_bytes() == before, "a test wrote to experiments/registry.yaml"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SUITE_CACHE", str(tmp_path_factory.getbasetemp() / "suite-cache"))


@pytest.fixture(scope="session")
def latent_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-latent")
    tiny.build_latent(folder)
    return folder


@pytest.fixture(scope="session")
def cascade_folder(tmp_path_factory) -> Path:
    """Three stages shaped like if-xl: pixel base, pixel x4 SR, latent x4 upscaler."""
    folder = tmp_path_factory.mktemp("tiny-cascade")
    tiny.build_cascade(folder, latent_upscaler=True)
    return folder


@pytest.fixture
def latent_pipeline(latent_folder):
    preset = replace(PRESETS.get("sd15"), local_dir=latent_folder, denoiser_dtype="fp32", text_encoder_dtype="fp32")
    return BACKENDS.get("latent").load(preset, CPU_FP32)


@pytest.fixture
def cascade_pipeline(cascade_folder):
    preset = replace(PRESETS.get("if-xl"), local_dir=cascade_folder, offload="none")
    return BACKENDS.get("cascaded").load(preset, CPU_FP32)


@pytest.fixture
def test_networks(monkeypatch):
    """A randomly initialised toy CLIP registered as CLIP model 'test-clip' and feature network 'test-net'."""
    register_test_networks(monkeypatch)


@pytest.fixture(scope="module")
def module_test_networks():
    """``test_networks`` for a whole test module (for fixtures that build one run and share it)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        register_test_networks(monkeypatch)
        yield


def register_test_networks(monkeypatch) -> None:
    from suite.metrics.networks import CLIP_MODELS, FEATURE_NETWORKS, ClipModel, resize_and_normalise
    from suite.toy import clip as toy_clip

    torch.manual_seed(0)
    model = toy_clip.build().eval()

    def clip(context) -> ClipModel:
        return ClipModel(
            "test-clip",
            "random toy CLIP",
            model,
            toy_clip.tokenize,
            resize_and_normalise(64, (0.5,) * 3, (0.5,) * 3, mode="bilinear"),
            "bilinear-64-antialias",
        )

    monkeypatch.setitem(CLIP_MODELS._entries, "test-clip", clip)
    monkeypatch.setitem(
        FEATURE_NETWORKS._entries, "test-net", lambda context: clip(context).feature_network("test-net")
    )


def tiny_metric_sweep(tmp_path: Path, metric: str, evaluation: dict, **changes) -> str:
    """A sweep file on tiny-latent (DDIM 2 and 3 steps, guidance 3, 4 tiny prompts) evaluating one metric."""
    import yaml

    sweep = {
        "name": f"{metric}-check",
        "presets": ["tiny-latent"],
        "samplers": ["ddim"],
        "steps": [2, 3],
        "guidance": [3.0],
        "batch_size": 4,
        "prompts": {"set": "tiny", "limit": 4},
        "metrics": [metric],
        "evaluation": evaluation,
        **changes,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return str(path)
