"""The evaluation layer is verified like the images: a damaged point or table is found by `suite check`,
never trusted by `suite sweep`, and computed again (from the cached points where they are whole)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from suite.cli import main
from tests.run.test_reliability import METRICS, SWEEP, sweep, sweep_file


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, module_test_networks) -> tuple[Path, Path]:
    """A finished run of tiny-latent with FID, CMMD and CLIP score (so features are cached), and its sweep file."""
    folder = tmp_path_factory.mktemp("evaluated")
    with pytest.MonkeyPatch.context() as patch:  # the cache every test sees (conftest's _isolated_cache)
        patch.setenv("SUITE_CACHE", str(tmp_path_factory.getbasetemp() / "suite-cache"))
        return _evaluated(folder)


def _evaluated(folder: Path) -> tuple[Path, Path]:
    text = SWEEP + METRICS.replace("[fid, clip_score]", "[fid, cmmd, clip_score]")
    path = sweep_file(folder, text, REFERENCE="{builtin: toy, count: 8}")
    out = folder / "run"
    assert sweep(path, out) == 0
    return path, out


@pytest.fixture
def run(evaluated, tmp_path, module_test_networks) -> tuple[Path, Path]:
    path, out = evaluated
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    return path, copy


def point(out: Path) -> Path:
    return next(path for path in sorted((out / "evaluation").iterdir()) if path.is_dir())


def check(out: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["check", str(out)])
    return code, capsys.readouterr().out


DAMAGES = {  # each with the command that repairs it
    "truncated point scores": (lambda out: (point(out) / "scores.parquet").write_bytes(b"PAR1\x00"), "sweep"),
    "junk features": (lambda out: (point(out) / "features-test-net.npy").write_bytes(b"junk"), "report"),
    "deleted metrics.parquet": (lambda out: (out / "metrics.parquet").unlink(), "report"),
    "truncated metrics.parquet": (lambda out: (out / "metrics.parquet").write_bytes(b"PAR1"), "sweep"),
    "junk comparisons.parquet": (lambda out: (out / "comparisons.parquet").write_bytes(b"junk"), "report"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_evaluation_is_found_and_computed_again(run, capsys, damage):
    path, out = run
    before = pd.read_csv(out / "metrics.csv")
    harm, repair = DAMAGES[damage]
    harm(out)
    code, report = check(out, capsys)
    assert code == 1 and ("missing or damaged" in report or "is damaged" in report or "is missing" in report), report
    if repair == "sweep":
        assert sweep(path, out) == 0
        assert "already evaluated" not in capsys.readouterr().out
    else:
        assert main(["report", str(out)]) == 0
        assert "computing the evaluation again" in capsys.readouterr().err
    after = pd.read_parquet(out / "metrics.parquet")
    for column in ("fid", "cmmd", "clip_score_mean"):
        assert np.allclose(after[column], before[column]), column
    assert len(pd.read_parquet(out / "comparisons.parquet")) > 0
    assert "fid" in (out / "report" / "report.md").read_text().lower()
    assert check(out, capsys)[0] == 0


def test_compare_and_evaluate_recompute_a_damaged_point(run, capsys):
    _, out = run
    (point(out) / "features-test-net.npy").write_bytes(b"junk")
    assert main(["compare", str(out), "--quiet", "--device", "cpu"]) == 0
    assert "(1 computed by this process)" in capsys.readouterr().out
    (point(out) / "scores.parquet").write_bytes(b"")
    assert main(["evaluate", str(out), "--quiet", "--device", "cpu"]) == 0
    assert "(1 computed by this process)" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["junk", "deleted"])
def test_a_lost_manifest_is_reported_and_written_again(run, capsys, damage):
    path, out = run
    item = sorted((out / "items").glob("*.parquet"))[0]
    item.unlink()  # and an item to make again
    if damage == "junk":
        (out / "manifest.json").write_text("{not json")
    else:
        (out / "manifest.json").unlink()
    code, report = check(out, capsys)
    assert code == 1 and "manifest.json: missing or damaged" in report
    assert sweep(path, out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hardware"]["device"] == "cpu"
    assert check(out, capsys)[0] == 0
