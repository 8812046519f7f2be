"""A second adversarial pass: inputs that once exhausted memory, changed silently, or ended in a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from suite.cli import main
from suite.core import files
from suite.run import leases
from suite.run.config import load_sweep
from suite.run.evaluate import seconds_interval
from suite.run.grid import expand
from suite.toy import world
from tests.run.test_reliability import METRICS, SWEEP, one_line_exit_2, sweep, sweep_file

LIST = 'prompts: {list: ["a red circle", "a blue square", "a green triangle"]}'


def laughs(levels: int) -> str:
    """A YAML alias chain: each level a list of ten aliases of the level below."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 10)}]" for level in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_a_billion_seeds_per_prompt_is_one_line_before_the_grid_is_built(tmp_path, capsys):
    path = sweep_file(tmp_path, **{"batch_size: 2": "batch_size: 2\nseeds_per_prompt: 1000000000"})
    error = one_line_exit_2(sweep(path, tmp_path / "run"), capsys)
    assert "3,000,000,000 images per grid point" in error and "at most 1,000,000" in error
    assert not (tmp_path / "run").exists()


def test_a_sweep_of_more_than_ten_million_images_is_refused(tmp_path, capsys):
    path = sweep_file(tmp_path, **{"batch_size: 2": "batch_size: 2\nseeds_per_prompt: 300000"})
    path.write_text(path.read_text().replace("steps: [2]", "steps: [1, 2, 3, 4, 5, 6]"))
    assert "split it into several" in one_line_exit_2(sweep(path, tmp_path / "run"), capsys)


def test_an_alias_chain_in_a_sweep_is_refused(tmp_path, capsys):
    path = sweep_file(tmp_path, SWEEP + "notes:\n" + "".join(f"  {line}\n" for line in laughs(10).splitlines()))
    assert "aliases expand to" in one_line_exit_2(sweep(path, tmp_path / "run"), capsys)


@pytest.mark.parametrize(
    "body, expected",
    [
        ("settings:\n" + "".join(f"  {line}\n" for line in laughs(6).splitlines()), "aliases expand to"),
        ("settings: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        (b"title: caf\xe9\n", "not UTF-8"),
    ],
    ids=["alias chain", "5000 deep", "latin-1"],
)
def test_a_hostile_claim_file_is_one_line(tmp_path, capsys, body, expected):
    claims = tmp_path / "claims"
    claims.mkdir()
    target = claims / "09-hostile.yaml"
    target.write_bytes(body if isinstance(body, bytes) else body.encode())
    code = main(["claims", "--claims-dir", str(claims), "--only", "09-hostile", "--out", str(tmp_path / "out")])
    assert expected in one_line_exit_2(code, capsys)
    assert not (tmp_path / "out").exists()
    assert target.stat().st_size == len(body if isinstance(body, bytes) else body.encode())


def test_a_repeated_key_is_refused_not_overwritten(tmp_path, capsys):
    path = sweep_file(tmp_path, SWEEP + "steps: [4]\n")
    assert "key 'steps' is given twice" in one_line_exit_2(sweep(path, tmp_path / "run"), capsys)


def test_a_nul_byte_in_a_sweep_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "nul.yaml"
    path.write_bytes(SWEEP.replace("a blue square", "a blue\x00square").encode())
    assert "U+0000" in one_line_exit_2(sweep(path, tmp_path / "run"), capsys)


def test_a_blank_prompt_in_a_list_is_refused_not_dropped(tmp_path, capsys):
    path = sweep_file(tmp_path, **{LIST: 'prompts: {list: ["a red circle", "  ", "a green triangle"]}'})
    assert "prompts.list[1] is blank" in one_line_exit_2(sweep(path, tmp_path / "run"), capsys)


def test_a_quoted_line_break_in_a_csv_prompt_is_kept(tmp_path):
    (tmp_path / "prompts.csv").write_text('id,prompt\n1,"a red\ncircle"\n2,a blue square\n')
    path = sweep_file(tmp_path, **{LIST: "prompts: {file: prompts.csv}"})
    assert load_sweep(path).prompt_texts == ("a red\ncircle", "a blue square")


def test_a_blank_jsonl_prompt_is_refused(tmp_path, capsys):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "a red circle"}\n{"prompt": "  "}\n')
    path = sweep_file(tmp_path, **{LIST: "prompts: {file: prompts.jsonl}"})
    assert "prompts.jsonl:2: the prompt is blank" in one_line_exit_2(sweep(path, tmp_path / "run"), capsys)


def test_a_hostile_ablation_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "ablation.yaml"
    path.write_text("cells:\n" + "".join(f"  {line}\n" for line in laughs(7).splitlines()))
    code = main(["ablation", str(path), "--out", str(tmp_path / "out")])
    assert "aliases expand to" in one_line_exit_2(code, capsys)
    assert not (tmp_path / "out").exists()


def test_a_self_referencing_alias_is_named(tmp_path, capsys):
    path = sweep_file(tmp_path, SWEEP + "notes: &a [1, *a]\n")
    assert "refers to a node that contains it" in one_line_exit_2(sweep(path, tmp_path / "run"), capsys)


def test_a_blank_csv_prompt_is_refused(tmp_path, capsys):
    (tmp_path / "prompts.csv").write_text("id,prompt\n1,a red circle\n2, \n3,a blue square\n")
    path = sweep_file(tmp_path, **{LIST: "prompts: {file: prompts.csv}"})
    assert "prompts.csv:3: the prompt is blank" in one_line_exit_2(sweep(path, tmp_path / "run"), capsys)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["sweep", "--bogus"], "unrecognized arguments: --bogus"),
        (["frob"], "invalid choice: 'frob'"),
        (["bench", "--steps", "many"], "invalid int value: 'many'"),
    ],
)
def test_a_usage_error_is_one_line(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and error.count("\n") == 1 and expected in error, error


@pytest.mark.parametrize(
    "argv",
    [["bench", "tiny-latent", "--steps", "1001", "--no-baseline"], ["profile", "tiny-latent", "--steps", "100000"]],
    ids=["bench", "profile"],
)
def test_more_steps_than_training_timesteps_is_one_line_in_bench_and_profile(tmp_path, capsys, argv):
    code = main([*argv, "--out", str(tmp_path / "out")])
    assert "exceed its model's 1000 training timesteps" in one_line_exit_2(code, capsys)
    assert not (tmp_path / "out").exists()


def test_train_into_an_unwritable_folder_is_one_line_before_training(tmp_path, capsys):
    code = main(["train", "toy", "--out", "/proc/nope", "--work", str(tmp_path / "work")])
    assert "/proc/nope is not writable" in one_line_exit_2(code, capsys)
    assert not (tmp_path / "work").exists()


def test_a_grid_point_whose_images_are_all_non_finite_keeps_its_row(tmp_path, test_networks):
    path = sweep_file(tmp_path, **{"guidance: [1.0, 3.0]": "guidance: [1.0, 1.0e+38]"})
    path.write_text(path.read_text() + "metrics: [clip_score]\nevaluation: {clip_model: test-clip}\n")
    out = tmp_path / "run"
    assert sweep(path, out) == 0
    metrics = pd.read_csv(out / "metrics.csv").set_index("guidance_scale")
    assert set(metrics.index) == {1.0, 1.0e38}
    lost = metrics.loc[1.0e38]
    assert lost["n_images"] == 0 and lost["n_non_finite"] == 3 and np.isnan(lost["clip_score_mean"])
    assert metrics.loc[1.0, "n_images"] == 3 and pd.notna(metrics.loc[1.0, "clip_score_mean"])
    assert "1e+38" in (out / "report" / "report.md").read_text()


def test_a_regenerated_item_refreshes_the_timings_in_metrics(tmp_path, capsys, test_networks):
    text = SWEEP.replace("batch_size: 2", "batch_size: 3")  # one item per grid point: all of its times change
    path = sweep_file(tmp_path, text + "metrics: [clip_score]\nevaluation: {clip_model: test-clip}\n")
    out = tmp_path / "run"
    assert sweep(path, out) == 0
    item = sorted((out / "items").glob("*.parquet"))[0]
    item.write_bytes(b"")  # damaged: made again, with new timings and the same image bytes
    assert sweep(path, out) == 0
    samples = pd.read_parquet(out / "samples.parquet")
    metrics = pd.read_parquet(out / "metrics.parquet").set_index("guidance_scale")
    for guidance, group in samples.groupby("guidance_scale"):
        assert metrics.loc[guidance, "seconds_per_image_median"] == group["seconds_per_image"].median()


def test_a_truncated_reference_image_is_one_line_before_any_image(tmp_path, test_networks, capsys):
    (tmp_path / "refs").mkdir()
    images, _ = world.sample_batch(seed=1, count=4)
    for index, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "refs" / f"{index}.png")
    whole = (tmp_path / "refs" / "2.png").read_bytes()
    (tmp_path / "refs" / "2.png").write_bytes(whole[: len(whole) // 2])
    path = sweep_file(tmp_path, SWEEP + METRICS, REFERENCE="{folder: refs}")
    assert "2.png is not readable" in one_line_exit_2(sweep(path, tmp_path / "run"), capsys)
    assert not (tmp_path / "run").exists()


def test_reference_statistics_of_another_dimension_are_one_line_before_any_image(tmp_path, test_networks, capsys):
    np.savez(tmp_path / "stats.npz", mu=np.zeros(5), sigma=np.eye(5))
    text = SWEEP + METRICS.replace("[fid, clip_score]", "[fid]")
    path = sweep_file(tmp_path, text, REFERENCE="{statistics: stats.npz}")
    error = one_line_exit_2(sweep(path, tmp_path / "run"), capsys)
    assert "have dimension 5" in error and "'test-net'" in error
    assert not (tmp_path / "run").exists()


@pytest.fixture
def finished(tmp_path) -> tuple[Path, Path]:
    path = sweep_file(tmp_path)
    out = tmp_path / "run"
    assert sweep(path, out) == 0
    return path, out


@pytest.mark.slow  # two sweeps in new processes
def test_a_file_size_limit_during_generation_is_one_line_and_resumes(tmp_path):
    """`ulimit -f` (EFBIG: Python ignores SIGXFSZ, so the write fails) ends the sweep with one line; once the
    limit is lifted the same command finishes the run."""
    path = sweep_file(tmp_path)
    out = tmp_path / "run"
    command = f"{sys.executable} -m suite sweep {path} --out {out} --quiet --device cpu"
    limited = subprocess.run(["bash", "-c", f"ulimit -f 4 && {command}"], capture_output=True, text=True)
    assert limited.returncode == 2 and limited.stderr.count("\n") == 1, limited.stderr
    assert "File too large" in limited.stderr and "re-run the same command" in limited.stderr
    assert subprocess.run(["bash", "-c", command], capture_output=True).returncode == 0
    assert main(["check", str(out)]) == 0


@pytest.mark.parametrize("lease", ["item", "evaluation"])
def test_a_two_day_old_lease_of_a_living_pid_does_not_block_the_sweep(tmp_path, capsys, lease):
    """pid 1 always lives; its lease, untouched for two days, was left by an earlier process with that pid."""
    path = sweep_file(tmp_path)
    out = tmp_path / "run"
    stale = {"host": os.uname().nodename, "pid": 1, "token": "earlier"}
    if lease == "item":
        first = expand(load_sweep(path))[0]
        target = out / "items" / f"{first.id}.lease"
    else:
        assert sweep(path, out) == 0
        (out / "evaluation.done").unlink()  # evaluate again, with the lease held
        target = out / "evaluation.lease"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(stale))
    two_days_ago = time.time() - 2 * 86400
    os.utime(target, (two_days_ago, two_days_ago))
    capsys.readouterr()
    assert sweep(path, out) == 0
    output = capsys.readouterr().out
    assert "pid 1" not in output and "report:" in output
    assert main(["check", str(out)]) == 0
    assert leases.read_owner(target) is None  # taken over, then released


def test_skewed_times_give_an_interval_inside_the_times(capsys):
    """The metrics' time interval (and the report's stage table, through the same function) stays positive."""
    group = pd.DataFrame({"item_id": list("abcde"), "seconds_per_image": [0.35, 0.36, 0.98, 4.1, 4.3]})
    interval = seconds_interval(group)
    assert 0.35 <= interval["seconds_per_image_median_ci95_low"] <= 0.98
    assert interval["seconds_per_image_median_ci95_high"] <= 4.3


def test_a_refused_write_during_evaluation_is_one_line(finished, capsys, monkeypatch):
    """A read-only run folder (simulated: the tests may run as root, whom permissions do not stop)."""
    _, out = finished

    def refused(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(files, "atomic_write_bytes", refused)
    monkeypatch.setattr("suite.run.evaluate.atomic_write_bytes", refused)
    code = main(["evaluate", str(out), "--quiet", "--device", "cpu", "--recompute"])
    assert "Permission denied" in one_line_exit_2(code, capsys)


@pytest.mark.parametrize("thing", ["file named items", "file named images", "dangling evaluation link"])
def test_a_run_sub_folder_that_is_not_a_folder_is_one_line_before_anything_is_written(tmp_path, capsys, thing):
    out = tmp_path / "run"
    out.mkdir()
    name = "evaluation" if thing == "dangling evaluation link" else thing.split()[-1]
    if thing == "dangling evaluation link":
        (out / name).symlink_to(tmp_path / "nowhere")
    else:
        (out / name).write_text("not a folder")
    error = one_line_exit_2(sweep(sweep_file(tmp_path), out), capsys)
    assert "remove it or choose another --out" in error
    assert [path.name for path in out.iterdir()] == [name]  # no config.yaml, manifest.json or items/


def test_an_out_name_longer_than_the_file_system_allows_is_one_line(tmp_path, capsys):
    assert "not usable" in one_line_exit_2(sweep(sweep_file(tmp_path), tmp_path / ("r" * 300)), capsys)


@pytest.mark.parametrize("command", ["evaluate", "report", "diff"])
def test_a_truncated_samples_table_is_one_line(finished, capsys, command):
    _, out = finished
    samples = out / "samples.parquet"
    samples.write_bytes(samples.read_bytes()[:100])
    argv = {
        "evaluate": ["evaluate", str(out), "--quiet"],
        "report": ["report", str(out)],
        "diff": ["diff", str(out), str(out)],
    }
    assert "samples.parquet is damaged" in one_line_exit_2(main(argv[command]), capsys)


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_damaged_png_in_a_report_grid_is_one_line(finished, capsys, damage):
    _, out = finished
    image = out / pd.read_parquet(out / "samples.parquet")["image_path"].iloc[0]
    if damage == "deleted":
        image.unlink()
    else:
        image.write_bytes(image.read_bytes()[:60])
    assert "is missing or damaged" in one_line_exit_2(main(["report", str(out)]), capsys)


def test_a_suite_cache_that_is_a_file_is_one_line(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    cache.write_text("a file, not a folder")
    monkeypatch.setenv("SUITE_CACHE", str(cache))
    assert "re-run the same command" in one_line_exit_2(sweep(sweep_file(tmp_path), tmp_path / "run"), capsys)


def test_a_truncated_safetensors_file_is_refused_before_the_run_folder_is_written(tmp_path, latent_folder, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(latent_folder, broken)
    weights = next(broken.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    path = sweep_file(tmp_path, **{"presets: [tiny-latent]": "presets: [sd15]"})
    out = tmp_path / "run"
    error = one_line_exit_2(sweep(path, out, "--model-dir", f"sd15={broken}"), capsys)
    assert "not a whole safetensors file" in error and not out.exists()


@pytest.mark.slow  # a new process under another locale
def test_a_non_ascii_out_under_a_true_c_locale_is_one_line_before_generation(tmp_path):
    path = sweep_file(tmp_path)
    out = bytes(tmp_path) + "/r\u00e9sultats".encode()
    environment = {**os.environ, "LANG": "C", "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    argv = [sys.executable, "-m", "suite", "sweep", str(path), "--out", out, "--quiet", "--device", "cpu"]
    result = subprocess.run(argv, capture_output=True, env=environment)
    error = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2 and error.count("\n") == 1 and "LANG=C.UTF-8" in error, error
    assert not os.path.exists(out)


def test_a_sweep_ends_with_where_the_time_went_and_records_it(tmp_path, capsys, test_networks):
    path = sweep_file(tmp_path, SWEEP + "metrics: [clip_score]\nevaluation: {clip_model: test-clip}\n")
    out = tmp_path / "run"
    assert sweep(path, out) == 0
    printed = capsys.readouterr().out
    lines = printed.split("where the time went")[1].splitlines()[1:]
    assert [line.split()[0] for line in lines] == ["load", "generate", "evaluate", "compare", "report", "total"]
    recorded = json.loads((out / "manifest.json").read_text())["phases"][-1]["seconds"]
    assert set(recorded) == {"load", "generate", "evaluate", "compare", "report"}
    assert all(seconds > 0 for seconds in recorded.values())
    assert sweep(path, out) == 0  # a rerun of a finished sweep: no generation, no evaluation
    again = json.loads((out / "manifest.json").read_text())["phases"][-1]["seconds"]
    assert set(again) == {"load", "generate"}


def test_suite_evaluate_says_where_its_time_went_per_metric_part(tmp_path, capsys, test_networks):
    text = SWEEP + METRICS.replace("[fid, clip_score]", "[fid, kid, clip_score]")
    path = sweep_file(tmp_path, text, REFERENCE="{builtin: toy, count: 8}")
    out = tmp_path / "run"
    assert sweep(path, out) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--quiet", "--device", "cpu", "--recompute"]) == 0
    printed = capsys.readouterr().out.split("evaluation time per metric part")[1]
    recorded = json.loads((out / "manifest.json").read_text())["phases"][-1]["seconds"]
    parts = {"features: test-net", "fid", "fid: interval", "kid", "kid: interval", "clip_score", "clip_score: interval"}
    assert parts <= set(recorded), recorded
    assert all(f"  {part} " in printed for part in parts)
