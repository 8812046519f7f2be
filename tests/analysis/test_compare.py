"""suite compare: one row per pair of grid points and compared number, Holm-adjusted p, self-comparison null."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import yaml

from suite.analysis.compare import compare_points, load_records, pairs
from suite.cli import main
from suite.run.folder import read_run
from suite.run.options import EvaluateOptions

PROMPTS = [
    "a red circle",
    "a blue square",
    "a green triangle above a yellow circle",
    "a red square left of a blue circle",
]


@pytest.fixture(scope="module")
def compared(tmp_path_factory, module_test_networks) -> tuple:
    tmp_path = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as monkeypatch:  # the cache the function-scoped autouse fixture would set
        monkeypatch.setenv("SUITE_CACHE", str(tmp_path_factory.getbasetemp() / "suite-cache"))
        return _compared(tmp_path)


def _compared(tmp_path) -> tuple:
    sweep = {
        "name": "compare-check",
        "presets": ["tiny-latent", "tiny-cascaded"],
        "samplers": ["ddim"],
        "steps": [2],
        "guidance": [1.0, 3.0],
        "seeds_per_prompt": 3,
        "batch_size": 6,
        "prompts": {"list": PROMPTS},
        "metrics": ["fid", "kid", "clip_score", "cmmd", "flops", "composition"],
        "evaluation": {
            "features": "test-net",
            "cmmd_features": "test-net",
            "clip_model": "test-clip",
            "reference": {"builtin": "toy", "count": 24},
            "set_resamples": 50,
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    run = tmp_path / "run"
    assert main(["sweep", str(path), "--out", str(run), "--quiet", "--device", "cpu"]) == 0
    return run, pd.read_csv(run / "comparisons.csv")


def test_every_pair_of_points_and_number_is_one_row_with_holm_p_at_least_raw_p(compared):
    run, table = compared
    identity = ["kind", "a_preset", "a_guidance_scale", "b_preset", "b_guidance_scale", "metric"]
    assert not table.duplicated(identity).any()
    # within each preset: the other guidance against the baseline (the most expensive point, guidance 3);
    # across presets: tiny-cascaded against tiny-latent at guidance 1 and 3
    pairs_seen = table.drop_duplicates(identity[:-1])[identity[:-1]].values.tolist()
    assert pairs_seen == [
        ["within preset", "tiny-latent", 3.0, "tiny-latent", 1.0],
        ["within preset", "tiny-cascaded", 3.0, "tiny-cascaded", 1.0],
        ["across presets", "tiny-latent", 1.0, "tiny-cascaded", 1.0],
        ["across presets", "tiny-latent", 3.0, "tiny-cascaded", 3.0],
    ]
    assert set(table["metric"]) >= {"fid", "kid_mean", "cmmd", "clip_score_mean", "toy_correct", "toy_correct_single"}
    comparable = table[table["comparable"]]
    assert (comparable["p_holm"] >= comparable["p_value"] - 1e-12).all() and comparable["p_holm"].le(1).all()
    # the tiny runs have fewer images than feature dimensions: their set metrics compare with nothing
    excluded = table[~table["comparable"]]
    assert set(excluded["metric"]) == {"fid", "kid_mean", "cmmd"} and excluded["p_holm"].isna().all()
    assert (excluded["verdict"] == "not comparable (n <= feature dimension)").all()
    # Holm within each (kind, metric) family: two pairs per kind here; the family interval is Bonferroni-wide
    assert (comparable["family_size"] == 2).all()
    assert (comparable["difference_family_ci95_low"] <= comparable["difference_ci95_low"] + 1e-12).all()
    assert (comparable["difference_family_ci95_high"] >= comparable["difference_ci95_high"] - 1e-12).all()
    # the unit count: every prompt for whole-set numbers, a category's prompts for its accuracy
    prompts = table.set_index("metric")["n_prompts"]
    assert (prompts.loc[["fid", "clip_score_mean", "toy_correct"]] == len(read_run(run).resolved.prompt_texts)).all()
    assert (prompts.loc["toy_correct_single"] == 2).all()  # two of the four prompts name one object
    assert table["n_pairs"].eq(table["n_prompts"] * 3).all()  # three seeds per prompt
    assert (table["difference_ci95_low"] <= table["difference"] + 1e-9).all() and (
        table["difference"] <= table["difference_ci95_high"] + 1e-9
    ).all()
    metrics = pd.read_csv(run / "metrics.csv").set_index(["preset", "guidance_scale"])
    fid = table[(table.metric == "fid") & (table.kind == "across presets") & (table.a_guidance_scale == 1.0)].iloc[0]
    assert fid["value_a"] == pytest.approx(metrics.loc[("tiny-latent", 1.0), "fid"])
    assert fid["difference"] == pytest.approx(metrics.loc[("tiny-cascaded", 1.0), "fid"] - fid["value_a"], rel=1e-6)


def test_a_point_compared_with_itself_differs_by_zero_with_p_one(compared):
    run, _ = compared
    folder = read_run(run)
    records = load_records(folder, EvaluateOptions(device="cpu", progress=False))
    record = next(iter(records.values()))
    rows = compare_points(record, record, list(folder.resolved.sweep.metrics))
    assert rows and all(row["difference"] == 0 and row["p_value"] == 1 for row in rows)
    assert len(pairs(folder)) == 4


def test_the_report_shows_significance_and_intervals(compared):
    run, _ = compared
    markdown = (run / "report" / "report.md").read_text()
    assert "## What is significant" in markdown and "**tiny-latent** against its baseline" in markdown
    assert "fid (95% CI)" in markdown and "not significantly worse" in markdown
    metrics = pd.read_csv(run / "metrics.csv")
    for column in (
        "fid",
        "kid_mean",
        "cmmd",
        "clip_score_mean",
        "toy_correct",
        "toy_count",
        "gflops_per_image",
        "seconds_per_image_median",
    ):
        assert metrics[f"{column}_ci95_low"].notna().all() and metrics[f"{column}_interval"].notna().all(), column
    assert metrics["toy_correct_wilson_ci95_low"].notna().all() and metrics["fid_rank_deficient"].all()
    assert np.all(metrics["fid_ci95_low"] <= metrics["fid_ci95_high"])


def test_suite_compare_reproduces_the_table_from_the_folder_alone(compared):
    run, _ = compared
    before = (run / "comparisons.csv").read_bytes()
    assert main(["compare", str(run), "--quiet", "--device", "cpu"]) == 0
    assert (run / "comparisons.csv").read_bytes() == before


def test_set_metrics_compare_by_the_bootstrap_too_with_the_same_differences(compared):
    """``set_interval: bootstrap`` keeps the old paired bootstrap: the same differences as the delta method's, each
    inside its own interval, from resamples (p resolution 1/B) rather than from t."""
    run, _ = compared
    folder = read_run(run)
    records = list(load_records(folder, EvaluateOptions(device="cpu", progress=False)).values())
    a, b = records[0], records[-1]
    delta = compare_points(a, b, ["fid", "kid", "cmmd"])
    bootstrap = compare_points(replace(a, set_interval="bootstrap", set_resamples=200), b, ["fid", "kid", "cmmd"])
    assert [row["metric"] for row in delta] == [row["metric"] for row in bootstrap] == ["fid", "kid_mean", "cmmd"]
    for by_delta, by_bootstrap in zip(delta, bootstrap):
        assert by_bootstrap["difference"] == pytest.approx(by_delta["difference"], rel=1e-9, abs=1e-12)
        assert "delta method" in by_delta["test"] and "bootstrap" in by_bootstrap["test"]
        assert by_bootstrap["p_resolution"] == pytest.approx(2 / 201) and by_delta["p_resolution"] == 0
        for row in (by_delta, by_bootstrap):
            assert row["difference_ci95_low"] <= row["difference"] <= row["difference_ci95_high"]
