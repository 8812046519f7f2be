"""``suite diff A B``: two runs of one sweep compared image by image, and their per-image scores paired."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from suite.analysis.diff import diff_runs
from suite.cli import main
from suite.core.errors import UserError
from suite.core.files import sha256_bytes


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished toy run: toy-latent, DPM-Solver++ 3 steps, guidance 3, 6 toy prompts x 2 seeds, composition."""
    folder = tmp_path_factory.mktemp("diff")
    sweep = {
        "name": "diff-check",
        "presets": ["toy-latent"],
        "samplers": ["dpm-solver++"],
        "steps": [3],
        "guidance": [3.0],
        "seeds_per_prompt": 2,
        "batch_size": 12,
        "prompts": {"set": "toy", "limit": 6},
        "metrics": ["composition"],
    }
    (folder / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    out = folder / "run"
    assert main(["sweep", str(folder / "sweep.yaml"), "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    return out


def test_a_run_against_itself_is_identical_with_no_score_difference(run):
    table = diff_runs(run, run)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["images"] == 12 and row["sha256_match"] == 1.0
    assert row["max_pixel_difference"] == 0 and row["images_within_1"] == 1.0
    assert row["toy_correct_difference"] == 0 and row["toy_correct_p"] == 1.0
    assert row["sha256_match_ci95_low"] < 1.0 <= row["sha256_match_ci95_high"]  # Wilson: 12 of 12 is not certainty


def test_a_changed_image_is_found_and_measured(run, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(run, changed)
    samples = pd.read_parquet(changed / "samples.parquet")
    first = samples.iloc[0]
    pixels = np.asarray(Image.open(changed / first["image_path"]).convert("RGB")).copy()
    pixels[0, 0] = 255 - pixels[0, 0]  # one pixel inverted
    Image.fromarray(pixels).save(changed / first["image_path"])
    samples.loc[0, "sha256"] = sha256_bytes((changed / first["image_path"]).read_bytes())
    samples.to_parquet(changed / "samples.parquet", index=False)

    row = diff_runs(run, changed).iloc[0]
    assert row["sha256_match"] == pytest.approx(11 / 12)
    original = np.asarray(Image.open(run / first["image_path"]).convert("RGB"), dtype=int)
    expected = int(np.abs(2 * original[0, 0] - 255).max())
    assert row["max_pixel_difference"] == expected > 1
    assert row["images_within_1"] == pytest.approx(11 / 12)


def test_runs_that_share_no_images_are_one_line(run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    samples = pd.read_parquet(other / "samples.parquet")
    samples["prompt_index"] += 100
    samples.to_parquet(other / "samples.parquet", index=False)
    with pytest.raises(UserError, match="share no images"):
        diff_runs(run, other)


@pytest.mark.parametrize("damage", ["replaced by another PNG", "truncated", "deleted"])
def test_an_image_that_differs_from_its_recorded_hash_is_one_line(run, tmp_path, capsys, damage):
    """The recorded sha256 said 'same' while the pixels said 225 apart: the files are checked, not trusted."""
    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged)
    samples = pd.read_parquet(damaged / "samples.parquet")
    target, other = damaged / samples["image_path"].iloc[0], damaged / samples["image_path"].iloc[1]
    if damage == "replaced by another PNG":
        target.write_bytes(other.read_bytes())
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:40])
    else:
        target.unlink()
    code = main(["diff", str(run), str(damaged)])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and samples["image_path"].iloc[0] in error, error
