"""Runs: layout, resume after SIGKILL, sharding, batch-size independence, one encoding per prompt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from suite.model.text import TextEncoder
from suite.run.config import load_sweep
from suite.run.options import RunOptions
from suite.run.runner import run_sweep

SWEEP = """
name: {name}
seed: 7
presets: {presets}
samplers: [ddim, dpm-solver++, euler-ancestral]
steps: [2, 3]
guidance: [1.0, 7.5]
seeds_per_prompt: 1
batch_size: {batch_size}
prompts: {{list: ["a red circle", "a blue square above a green circle", "a photo of a cat", "a small house"]}}
"""
IDENTITY = ["preset", "sampler", "num_inference_steps", "guidance_scale", "prompt_index", "seed_index"]


def sweep_file(tmp_path: Path, name="runs", presets="[tiny-latent]", batch_size=4) -> Path:
    path = tmp_path / f"{name}-{batch_size}.yaml"
    path.write_text(textwrap.dedent(SWEEP.format(name=name, presets=presets, batch_size=batch_size)))
    return path


def run(path: Path, out: Path, **kwargs):
    return run_sweep(load_sweep(path), RunOptions(out, device="cpu", progress=False, **kwargs))


def hashes(out: Path) -> pd.Series:
    samples = pd.read_parquet(out / "samples.parquet")
    return samples.set_index(IDENTITY)["sha256"].sort_index()


def test_run_folder_layout(tmp_path):
    out = tmp_path / "run"
    summary = run(sweep_file(tmp_path), out)
    assert summary.complete and summary.images_generated == 3 * 2 * 2 * 4
    samples = pd.read_parquet(out / "samples.parquet")
    assert len(samples) == 48 and not samples.duplicated(IDENTITY).any()
    assert pd.read_csv(out / "samples.csv").shape == samples.shape
    for column in [
        "prompt",
        "seed",
        "image_path",
        "sha256",
        "text_encode_s",
        "stage1_loop_s",
        "stage1_step_median_s",
        "decode_s",
        "peak_memory_bytes",
    ]:
        assert samples[column].notna().all(), column
    assert all((out / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in samples.image_path)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["prompts"]["list"][0] == "a red circle" and config["batch_size"] == 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"git", "versions", "hardware", "dtypes", "models", "seeds"} <= set(manifest)
    assert manifest["seeds"]["sweep_seed"] == 7


def test_rerun_skips_finished_items(tmp_path):
    out = tmp_path / "run"
    path = sweep_file(tmp_path)
    run(path, out)
    before = hashes(out)
    again = run(path, out)
    assert again.items_generated == 0 and again.complete
    assert hashes(out).equals(before)


def test_initial_noise_does_not_depend_on_batch_size():
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    seeds = [5, 6, 7, 8]
    together = randn_tensor((4, 4, 8, 8), generator=[torch.Generator().manual_seed(s) for s in seeds])
    alone = torch.cat([randn_tensor((1, 4, 8, 8), generator=[torch.Generator().manual_seed(s)]) for s in seeds])
    assert torch.equal(together, alone)


def test_images_do_not_depend_on_batch_size(tmp_path):
    """Same seeds, same noise; batched float kernels may round differently, so pixels agree within one level."""
    run(sweep_file(tmp_path, batch_size=4), tmp_path / "batch4")
    run(sweep_file(tmp_path, batch_size=1), tmp_path / "batch1")
    four = pd.read_parquet(tmp_path / "batch4" / "samples.parquet").set_index(IDENTITY).sort_index()
    one = pd.read_parquet(tmp_path / "batch1" / "samples.parquet").set_index(IDENTITY).sort_index()
    assert four.index.equals(one.index)
    for path_four, path_one in zip(four.image_path, one.image_path):
        pixels_four = np.asarray(Image.open(tmp_path / "batch4" / path_four), dtype=int)
        pixels_one = np.asarray(Image.open(tmp_path / "batch1" / path_one), dtype=int)
        assert np.abs(pixels_four - pixels_one).max() <= 1


def test_shards_together_equal_one_run(tmp_path):
    path = sweep_file(tmp_path, batch_size=2)
    first = run(path, tmp_path / "sharded", rank=0, world_size=2)
    assert not first.complete and not (tmp_path / "sharded" / "samples.parquet").exists()
    second = run(path, tmp_path / "sharded", rank=1, world_size=2)
    assert second.complete and first.items_this_shard + second.items_this_shard == first.items_total
    run(path, tmp_path / "whole")
    assert hashes(tmp_path / "sharded").equals(hashes(tmp_path / "whole"))


def test_each_prompt_is_encoded_once_per_preset(tmp_path, monkeypatch):
    encoded: list[tuple[str, str]] = []
    original = TextEncoder.__call__

    def counting(self, prompts):
        encoded.extend((self.name, prompt) for prompt in prompts)
        return original(self, prompts)

    monkeypatch.setattr(TextEncoder, "__call__", counting)
    run(sweep_file(tmp_path, presets="[tiny-latent, tiny-cascaded]", batch_size=4), tmp_path / "run")
    # 12 grid points per preset, yet each prompt (and the empty negative prompt) is encoded once per encoder.
    assert sorted(encoded) == sorted(
        [
            (name, prompt)
            for name in ("clip", "t5")
            for prompt in [
                "",
                "a red circle",
                "a blue square above a green circle",
                "a photo of a cat",
                "a small house",
            ]
        ]
    )


def test_different_sweep_in_same_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    run(sweep_file(tmp_path), out)
    from suite.core.errors import UserError

    with pytest.raises(UserError, match="holds a different sweep"):
        run(sweep_file(tmp_path, batch_size=2), out)


def test_sigkill_half_way_then_resume_gives_the_same_rows(tmp_path):
    """2 presets x 3 samplers x 2 steps x 2 guidance x 4 prompts = 96 images; kill, resume, compare."""
    path = sweep_file(tmp_path, name="kill", presets="[tiny-latent, tiny-cascaded]", batch_size=2)
    reference = tmp_path / "reference"
    run(path, reference)
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "suite", "sweep", str(path), "--out", str(killed), "--device", "cpu", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    items = killed / "items"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if items.is_dir() and len(list(items.glob("*.parquet"))) >= 30:  # of 48 items
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 0 < len(list(items.glob("*.parquet"))) < 48, "the run should be killed half-way"
    assert not (killed / "samples.parquet").exists()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = pd.read_parquet(killed / "samples.parquet")
    assert len(samples) == 96 and not samples.duplicated(IDENTITY).any()
    assert hashes(killed).equals(hashes(reference))


def test_real_presets_run_from_local_folders(tmp_path, latent_folder, cascade_folder):
    """sd15 and if-xl, pointed at tiny folders of their hub layout, run through the CLI like any preset."""
    from suite.cli import main

    path = tmp_path / "real.yaml"
    path.write_text(
        textwrap.dedent("""
        name: real
        presets: [sd15, if-xl]
        samplers: [ddim]
        steps: [2]
        guidance: [7.5]
        prompts: {list: ["a red circle"]}
        stages: {if-xl: {super_resolution_2: {steps: 2}}}
    """)
    )
    out = tmp_path / "run"
    code = main(
        [
            "sweep",
            str(path),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--quiet",
            "--model-dir",
            f"sd15={latent_folder}",
            "--model-dir",
            f"if-xl={cascade_folder}",
        ]
    )
    assert code == 0
    samples = pd.read_parquet(out / "samples.parquet").set_index("preset")
    assert (samples.loc["sd15", "height"], samples.loc["if-xl", "height"]) == (64, 256)
    assert samples.loc["if-xl", "stage3_name"] == "super_resolution_2"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["if-xl"]["sources"]["stage_3"] == str((cascade_folder / "stage_3").resolve())


def test_model_offload_gives_the_same_images_and_leaves_models_on_cpu(latent_folder):
    from dataclasses import replace

    import torch

    from suite.model.backends import BACKENDS
    from suite.model.loading import LoadOptions
    from suite.model.presets import PRESETS
    from suite.model.stages import StageSettings
    from suite.model.timing import Clock

    preset = replace(PRESETS.get("sd15"), local_dir=latent_folder)
    clock = Clock(torch.device("cpu"))
    images = []
    for offload in (False, True):
        pipeline = BACKENDS.get("latent").load(
            preset, LoadOptions(torch.device("cpu"), torch.float32, torch.float32, offload)
        )
        pipeline.encode(["a red circle"], ["a red circle"], clock)
        image, _ = pipeline.generate(
            ["a red circle"], [StageSettings("ddim", 3, 7.5)], [torch.Generator().manual_seed(1)], clock
        )
        images.append(image)
        assert pipeline.stages[0].unet.device.type == "cpu"
        # with offload, accelerate's hooks move every model, in pipeline order
        assert all(hasattr(module, "_hf_hook") == offload for module in pipeline._modules())
    assert torch.equal(images[0], images[1])


SPEED_SWEEP = """
name: speed
seed: 3
presets: [toy-latent, toy-cascaded]
samplers: [dpm-solver++]
steps: [4]
guidance: [3.0]
seeds_per_prompt: 1
batch_size: 3
prompts: {set: toy, limit: 5}
"""


def _pixels(out: Path) -> dict[tuple, np.ndarray]:
    samples = pd.read_parquet(out / "samples.parquet").set_index(IDENTITY).sort_index()
    return {key: np.asarray(Image.open(out / path), dtype=int) for key, path in samples["image_path"].items()}


def _speed_run(tmp_path: Path, name: str, **options) -> Path:
    path = tmp_path / "speed.yaml"
    path.write_text(SPEED_SWEEP)
    run(path, tmp_path / name, **options)
    return tmp_path / name


def _assert_same_images(first: Path, second: Path) -> None:
    eager, other = _pixels(first), _pixels(second)
    assert eager.keys() == other.keys() and len(eager) == 10
    assert max(np.abs(eager[key] - other[key]).max() for key in eager) <= 1  # within 1/255


def test_channels_last_gives_the_eager_images(tmp_path):
    _assert_same_images(_speed_run(tmp_path, "eager"), _speed_run(tmp_path, "channels-last", channels_last=True))
    manifest = json.loads((tmp_path / "channels-last" / "manifest.json").read_text())
    assert manifest["dtypes"]["toy-latent"]["channels_last"] is True


@pytest.mark.slow
def test_compile_gives_the_eager_images_and_keeps_compile_time_apart(tmp_path):
    """torch.compile on CPU builds C++ kernels: minutes on two cores."""
    eager = _speed_run(tmp_path, "eager")
    compiled = _speed_run(tmp_path, "compiled", compile=True, channels_last=True)
    _assert_same_images(eager, compiled)
    samples = pd.read_parquet(compiled / "samples.parquet")
    per_item = samples.groupby("item_id")[["compile_s", "generate_s"]].first()
    assert per_item["compile_s"].sum() > 5  # the UNets were compiled ...
    assert (per_item["generate_s"] < per_item["compile_s"].max()).all()  # ... and no item's time includes it
