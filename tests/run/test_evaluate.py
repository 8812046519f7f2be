"""Evaluating a run folder end to end: one metrics row per grid point, reproducible from the folder alone."""

from __future__ import annotations

import pandas as pd
import yaml

from suite.cli import main
from suite.run.folder import renamed_column, upgraded
from suite.run.resume import Environment

PROMPTS = ["a red circle", "a blue square above a green triangle", "a yellow circle left of a red square"]


def _sweep(tmp_path, **evaluation) -> str:
    sweep = {
        "name": "metrics-check",
        "presets": ["tiny-latent", "tiny-cascaded"],
        "samplers": ["ddim"],
        "steps": [2],
        "guidance": [1.0, 3.0],
        "seeds_per_prompt": 2,
        "batch_size": 3,
        "prompts": {"list": PROMPTS},
        "metrics": ["fid", "kid", "clip_score", "cmmd", "flops", "composition"],
        "evaluation": {
            "features": "test-net",
            "cmmd_features": "test-net",
            "clip_model": "test-clip",
            "reference": {"builtin": "toy", "count": 24},
            **evaluation,
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return str(path)


def test_sweep_writes_one_metrics_row_per_grid_point_and_evaluate_reproduces_it(tmp_path, test_networks):
    run = tmp_path / "run"
    assert main(["sweep", _sweep(tmp_path), "--out", str(run), "--quiet", "--device", "cpu"]) == 0
    metrics = pd.read_csv(run / "metrics.csv")
    assert len(metrics) == 4  # 2 presets x 1 sampler x 1 step count x 2 guidance values
    assert (metrics["n_images"] == len(PROMPTS) * 2).all() and (metrics["n_prompts"] == len(PROMPTS)).all()
    assert metrics["clip_score_mean_interval"].str.contains(f"over {len(PROMPTS)} prompts").all()
    columns = [
        "fid",
        "kid_mean",
        "kid_std",
        "clip_score_mean",
        "clip_score_mean_ci95_low",
        "clip_score_mean_ci95_high",
        "cmmd",
        "gflops_per_image",
        "seconds_per_image_median",
        "stage1_step_median_s",
        "peak_memory_bytes",
        "toy_count",
        "toy_binding",
        "toy_relation",
        "features_resize",
        "clip_model",
        "reference",
    ]
    assert metrics[columns].notna().all().all()
    cascade = metrics[metrics.preset == "tiny-cascaded"]
    assert cascade["stage2_step_median_s"].notna().all()
    guided = metrics.set_index(["preset", "guidance_scale"])["gflops_per_image"]
    assert guided[("tiny-latent", 3.0)] > guided[("tiny-latent", 1.0)]  # guidance doubles the UNet batch

    samples = pd.read_parquet(run / "samples.parquet")
    scores = pd.read_parquet(run / "scores.parquet")
    assert len(scores) == len(samples) and "clip_score" not in samples  # evaluation owns scores, not samples
    assert set(zip(scores.item_id, scores.image_path)) == set(zip(samples.item_id, samples.image_path))
    assert scores["clip_score"].between(0, 100).all() and scores["toy_correct"].notna().all()
    costs = pd.read_parquet(run / "costs.parquet")
    assert list(zip(costs.preset, costs.stage)) == [
        ("tiny-latent", "latent"),
        ("tiny-cascaded", "base"),
        ("tiny-cascaded", "super_resolution_1"),
    ]
    assert (costs.gflops_per_guided_evaluation > costs.gflops_per_evaluation).all()

    first, samples_bytes = (run / "metrics.csv").read_bytes(), (run / "samples.parquet").read_bytes()
    assert main(["evaluate", str(run), "--recompute", "--quiet", "--device", "cpu"]) == 0
    assert (run / "metrics.csv").read_bytes() == first
    assert (run / "samples.parquet").read_bytes() == samples_bytes


def test_a_finished_evaluation_is_read_back_not_recomputed(tmp_path, test_networks, monkeypatch):
    run = tmp_path / "run"
    assert main(["sweep", _sweep(tmp_path), "--out", str(run), "--quiet", "--device", "cpu"]) == 0
    metrics, scores = (run / "metrics.csv").read_bytes(), (run / "scores.csv").read_bytes()

    def fail(*args, **kwargs):
        raise AssertionError("a cached grid point was evaluated again")

    monkeypatch.setattr("suite.run.evaluate.evaluate_grid_point", fail)
    monkeypatch.setattr("suite.run.evaluate.Evaluator.cost", fail)
    assert main(["evaluate", str(run), "--quiet", "--device", "cpu"]) == 0
    assert main(["sweep", _sweep(tmp_path), "--out", str(run), "--quiet", "--device", "cpu"]) == 0
    assert (run / "metrics.csv").read_bytes() == metrics and (run / "scores.csv").read_bytes() == scores


def test_missing_inception_weights_is_one_line_before_anything_is_generated(
    tmp_path, test_networks, monkeypatch, capsys
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("SUITE_INCEPTION_WEIGHTS", raising=False)
    run = tmp_path / "run"
    code = main(["sweep", _sweep(tmp_path, features="inception"), "--out", str(run), "--quiet", "--device", "cpu"])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert "weights-inception-2015-12-05-6726825d.pth" in error and "github.com/toshas/torch-fidelity" in error
    assert not run.exists()


def test_evaluate_of_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_distribution_metrics_need_a_reference_set(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "presets": ["tiny-latent"],
                "samplers": ["ddim"],
                "steps": [2],
                "guidance": [1.0],
                "prompts": {"list": ["a red circle"]},
                "metrics": ["fid"],
            }
        )
    )
    assert main(["sweep", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "evaluation.reference" in capsys.readouterr().err


def test_columns_of_earlier_versions_are_read_under_todays_names():
    assert renamed_column("stage2_step_s_median") == "stage2_step_median_s"
    assert renamed_column("kid_ci95_low") == "kid_mean_ci95_low"
    assert renamed_column("clip_score_interval") == "clip_score_mean_interval"
    assert renamed_column("seconds_per_image_ci95_high") == "seconds_per_image_median_ci95_high"
    assert renamed_column("toy_correct_pair_wilson_high") == "toy_correct_pair_wilson_ci95_high"
    assert renamed_column("toy_count_wilson_low") == "toy_count_wilson_ci95_low"
    assert renamed_column("geneval_counting_wilson_low") == "geneval_counting_wilson_ci95_low"
    assert renamed_column("pickscore_interval") == "pickscore_mean_interval"
    assert renamed_column("ci95_low") == "difference_ci95_low"
    for today in ("clip_score", "fid_ci95_low", "clip_score_mean_ci95_low", "stage1_step_median_s", "kid_mean"):
        assert renamed_column(today) == today


def test_tables_and_manifests_of_earlier_versions_are_upgraded_on_read():
    before = pd.DataFrame({"dtype": ["float32", "float16"], "stage1_step_s_median": [0.1, 0.2], "kid_ci95_low": [1, 2]})
    after = upgraded(before)
    assert list(after.columns) == ["dtype", "stage1_step_median_s", "kid_mean_ci95_low"]
    assert list(after["dtype"]) == ["fp32", "fp16"]
    recorded = Environment("cpu", {"toy-latent": {"denoiser": "torch.float32", "text_encoder": "torch.float32"}}, {})
    now = Environment("cpu", {"toy-latent": {"denoiser": "fp32", "text_encoder": "fp32"}}, {})
    assert now.differences(recorded) == []
    changed = Environment("cpu", {"toy-latent": {"denoiser": "fp16", "text_encoder": "fp32"}}, {})
    assert changed.differences(recorded) == ["toy-latent denoiser dtype fp32 (now fp16)"]
