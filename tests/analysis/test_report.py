"""Reports: rebuilt from a run folder alone, byte-identical twice, self-contained HTML with escaped strings."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest
import yaml

from suite.analysis.report.interactive import embed, library_script
from suite.cli import main

PROMPTS = ["<script>alert('x')</script> a blue square", "a red circle", "a green triangle above a red circle"]


@pytest.fixture
def finished_run(tmp_path, test_networks):
    sweep = {
        "name": "report-check",
        "presets": ["tiny-latent", "tiny-cascaded"],
        "samplers": ["ddim", "euler"],
        "steps": [2, 3],
        "guidance": [1.0, 3.0],
        "batch_size": 3,
        "prompts": {"list": PROMPTS},
        "metrics": ["fid", "clip_score", "flops", "composition"],
        "evaluation": {"features": "test-net", "clip_model": "test-clip", "reference": {"builtin": "toy", "count": 16}},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    run = tmp_path / "run"
    assert main(["sweep", str(path), "--out", str(run), "--quiet", "--device", "cpu"]) == 0
    return run


def _snapshot(folder):
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
    }


def test_sweep_builds_the_report_and_rebuilding_it_gives_the_same_bytes(finished_run):
    report = finished_run / "report"
    first = _snapshot(report)
    assert {
        "report.md",
        "index.html",
        "tables/metrics.csv",
        "tables/best_at_budgets.csv",
        "tables/time_per_stage.csv",
    } <= set(first)
    assert any(name.startswith("plots/") and name.endswith(".svg") for name in first)
    assert any(name.startswith("grids/") for name in first)
    shutil.rmtree(report)
    assert main(["report", str(finished_run)]) == 0
    second = _snapshot(report)
    assert second.keys() == first.keys()
    for name in first:
        if name.endswith((".md", ".csv")):
            assert second[name] == first[name], name
    assert main(["report", str(finished_run)]) == 0
    assert _snapshot(report) == second  # same process state, same bytes, images included


def test_html_is_self_contained_and_escapes_prompts(finished_run):
    page = (finished_run / "report" / "index.html").read_text()
    # the page's only scripts: Bokeh's library, inlined once, and per interactive plot its JSON and one call
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.DOTALL)
    assert scripts[0] == ("", library_script())
    plots = scripts[1:]
    assert len(plots) == 4 and [kind for kind, _ in plots] == [
        ' type="application/json" id="quality_vs_cost-data"',
        "",
        ' type="application/json" id="quality_vs_guidance-data"',
        "",
    ]
    for _, data in plots[0::2]:
        assert json.loads(data)["doc"]["roots"] and "</" not in data
    assert all(code.startswith("Bokeh.embed.embed_item(JSON.parse(") for _, code in plots[1::2])
    outside = re.sub(r"<script[^>]*>.*?</script>", "", page, flags=re.DOTALL)
    assert "<script" not in outside and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in outside
    sources = re.findall(r'src="([^"]+)"', outside)
    assert sources and all(source.startswith("data:image/png;base64,") for source in sources)
    assert "http://" not in outside and "https://" not in outside.replace("https://github.com", "")
    markdown = (finished_run / "report" / "report.md").read_text()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (finished_run / "report" / link).is_file()
    assert len(sources) == len(re.findall(r"!\[", markdown)) - 2  # the two interactive plots: PNG in markdown only


def test_tables_hold_one_row_per_grid_point_and_the_stage_times(finished_run):
    metrics = pd.read_csv(finished_run / "report" / "tables" / "metrics.csv")
    assert len(metrics) == 2 * 2 * 2 * 2
    times = pd.read_csv(finished_run / "report" / "tables" / "time_per_stage.csv")
    assert set(times[times.preset == "tiny-cascaded"].part) >= {"stage 1: base", "stage 2: super_resolution_1"}
    markdown = (finished_run / "report" / "report.md").read_text()
    assert (
        "## Reproducibility" in markdown and "config hash" in markdown and "## Cost from the architectures" in markdown
    )


def test_report_of_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_side_by_side_headline_is_the_point_whose_worse_family_is_best():
    from suite.analysis.report.grids import headline_point

    samples = pd.DataFrame({"sampler": ["ddim", "ddpm"], "num_inference_steps": [10, 50]})
    metrics = pd.DataFrame(
        {
            "preset": ["latent", "cascaded"] * 3,
            "sampler": ["ddim", "ddim", "ddpm", "ddpm", "euler", "euler"],
            "num_inference_steps": [10] * 6,
            "guidance_scale": [7.5] * 6,
            # ddim: the cascade collapses (FID 190) though the latent model is best; euler is best for both at worst
            "fid": [10.0, 190.0, 30.0, 35.0, 20.0, 25.0],
        }
    )
    assert headline_point(samples, metrics, 7.5) == ("euler", 10)
    assert headline_point(samples, None, 7.5) == ("ddim", 50)  # no metrics: first sampler, most steps
    toy = metrics.drop(columns="fid").assign(toy_correct=[0.9, 0.1, 0.5, 0.6, 0.4, 0.4])
    assert headline_point(samples, toy, 7.5) == ("ddpm", 10)  # higher is better


def test_the_comparisons_table_of_nothing_shown_is_empty_not_an_error():
    from suite.analysis.report.tables import comparisons_table

    columns = [
        "kind",
        "a_preset",
        "b_preset",
        "metric",
        "difference",
        "difference_ci95_low",
        "difference_ci95_high",
        "p_value",
        "p_holm",
    ]
    sides = [f"{side}_{field}" for side in "ab" for field in ("sampler", "num_inference_steps", "guidance_scale")]
    empty = pd.DataFrame(columns=[*columns, *sides, "verdict"])
    assert comparisons_table(empty).empty  # one preset, nothing significant: no rows to show


def test_the_plot_json_cannot_end_its_script_or_open_a_comment():
    item = {"doc": {"roots": [{"name": "<!-- a preset </script><script>alert(1)</script> & more"}]}}
    block = embed("plot", item)
    data = re.search(r'<script type="application/json" id="plot-data">(.*?)</script>', block, re.DOTALL).group(1)
    assert "<" not in data and ">" not in data and "&" not in data
    assert json.loads(data) == item  # what JSON.parse gives the page
