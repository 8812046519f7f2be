"""What a killed, mistyped or damaged run does: one line and exit 2 before anything is written, refused
resumes that would mix settings, damaged files detected and regenerated, private modes avoided."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from suite.cli import main

SWEEP = """
name: reliability
presets: [tiny-latent]
samplers: [ddim]
steps: [2]
guidance: [1.0, 3.0]
batch_size: 2
prompts: {list: ["a red circle", "a blue square", "a green triangle"]}
"""
METRICS = """
metrics: [fid, clip_score]
evaluation: {features: test-net, cmmd_features: test-net, clip_model: test-clip, reference: REFERENCE}
"""


def sweep_file(tmp_path: Path, text: str = SWEEP, name: str = "sweep.yaml", **replace: str) -> Path:
    text = textwrap.dedent(text)
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def sweep(path: Path, out: Path, *extra: str) -> int:
    return main(["sweep", str(path), "--out", str(out), "--quiet", "--device", "cpu", *extra])


def one_line_exit_2(code: int, capsys) -> str:
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "Traceback" not in error, error
    return error


def sha(out: Path) -> pd.Series:
    return pd.read_parquet(out / "samples.parquet").set_index("image_path")["sha256"].sort_index()


@pytest.fixture
def finished(tmp_path) -> tuple[Path, Path]:
    """A finished 6-image run of tiny-latent (4 items of 2 or 1 images) and its sweep file."""
    path = sweep_file(tmp_path)
    out = tmp_path / "run"
    assert sweep(path, out) == 0
    return path, out


# 1. Evaluation resumes: tests/run/test_evaluate.py::test_a_finished_evaluation_is_read_back_not_recomputed


# 2. Evaluation inputs are checked before generation; a reference path is relative to the sweep file.
@pytest.mark.parametrize(
    "reference, expected",
    [
        ("{folder: no-such-folder}", "reference folder not found"),
        ("{statistics: no-such.npz}", "reference statistics file not found"),
        ("{statistics: junk.npz}", "not a readable .npz of FID statistics"),
    ],
)
def test_bad_reference_is_one_line_before_any_image(tmp_path, test_networks, capsys, reference, expected):
    (tmp_path / "junk.npz").write_bytes(b"not a numpy archive")
    path = sweep_file(tmp_path, SWEEP + METRICS, REFERENCE=reference)
    out = tmp_path / "run"
    assert expected in one_line_exit_2(sweep(path, out), capsys)
    assert not out.exists()


def test_junk_inception_weights_are_one_line_before_any_image(tmp_path, test_networks, capsys):
    junk = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    junk.write_bytes(b"\x00" * 1000)
    path = sweep_file(
        tmp_path,
        SWEEP + METRICS.replace("features: test-net,", "features: inception,"),
        REFERENCE="{builtin: toy, count: 8}",
    )
    out = tmp_path / "run"
    error = one_line_exit_2(sweep(path, out, "--inception-weights", str(junk)), capsys)
    assert "is not torch-fidelity's InceptionV3 weights" in error and not out.exists()


def test_reference_folder_is_relative_to_the_sweep_file_and_adding_metrics_resumes(
    tmp_path, test_networks, monkeypatch
):
    from suite.toy import world

    sweeps = tmp_path / "sweeps"
    (sweeps / "refs").mkdir(parents=True)
    images, _ = world.sample_batch(seed=1, count=6)
    for index, image in enumerate(images):
        Image.fromarray(image).save(sweeps / "refs" / f"{index}.png")
    out = tmp_path / "run"
    assert sweep(sweep_file(sweeps, SWEEP), out) == 0  # generated without metrics first
    before = sha(out)
    with_metrics = sweep_file(sweeps, SWEEP + METRICS, name="with-metrics.yaml", REFERENCE="{folder: refs}")
    monkeypatch.chdir(tmp_path)  # the reference must not be looked up from the working directory or the run folder
    assert sweep(with_metrics, out) == 0
    assert sha(out).equals(before)  # nothing regenerated
    assert pd.read_csv(out / "metrics.csv")["fid"].notna().all()
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["evaluation"]["reference"]["folder"] == str((sweeps / "refs").resolve())


# 3. A resume may not mix dtypes, device types or model sources.
def test_resume_with_another_dtype_is_refused(tmp_path, capsys):
    path = sweep_file(tmp_path)
    out = tmp_path / "run"
    assert sweep(path, out, "--shard", "0/2") == 0  # half the items, in float32
    items = sorted((out / "items").iterdir())
    error = one_line_exit_2(sweep(path, out, "--dtype", "bf16"), capsys)
    assert "denoiser dtype fp32 (now bf16)" in error
    assert sorted((out / "items").iterdir()) == items


def test_resume_on_another_device_type_is_refused(finished, capsys):
    path, out = finished
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["hardware"]["device"] = "cuda:0"  # as if the run had started on a GPU
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert "device type cuda (now cpu)" in one_line_exit_2(sweep(path, out), capsys)


def test_resume_with_another_model_folder_is_refused(tmp_path, latent_folder, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(latent_folder, copy)
    path = sweep_file(tmp_path, **{"presets: [tiny-latent]": "presets: [sd15]"})
    out = tmp_path / "run"
    assert sweep(path, out, "--model-dir", f"sd15={latent_folder}") == 0
    error = one_line_exit_2(sweep(path, out, "--model-dir", f"sd15={copy}"), capsys)
    assert "sd15 model sources" in error


# 4. A failed first attempt leaves nothing stale.
def test_failed_first_attempt_does_not_poison_the_run(tmp_path, latent_folder, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    path = sweep_file(tmp_path, **{"presets: [tiny-latent]": "presets: [sd15]"})
    out = tmp_path / "run"
    assert "preset 'sd15'" in one_line_exit_2(sweep(path, out, "--model-dir", f"sd15={empty}"), capsys)
    assert not out.exists()
    with_flops = sweep_file(tmp_path, SWEEP.replace("tiny-latent", "sd15") + "metrics: [flops]\n", name="flops.yaml")
    assert sweep(with_flops, out, "--model-dir", f"sd15={latent_folder}") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["sd15"]["local_dir"] == str(latent_folder.resolve())
    assert pd.read_csv(out / "metrics.csv")["gflops_per_image"].gt(0).all()


# 5. Step counts above the model's training timesteps.
@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver++"])
def test_more_steps_than_training_timesteps_is_one_line(tmp_path, capsys, sampler):
    path = sweep_file(tmp_path, **{"steps: [2]": "steps: [10000]", "samplers: [ddim]": f"samplers: [{sampler}]"})
    out = tmp_path / "run"
    error = one_line_exit_2(sweep(path, out), capsys)
    assert "10000 steps for tiny-latent stage 'latent' exceed its model's 1000 training timesteps" in error
    assert not out.exists()


# 6. Damaged run files are detected and regenerated.
@pytest.mark.parametrize("damage", ["truncate item", "empty item", "delete image", "truncate image", "replace image"])
def test_damaged_files_are_regenerated(finished, capsys, damage):
    path, out = finished
    before = sha(out)
    item = next(path for path in sorted((out / "items").glob("*.parquet")) if len(pd.read_parquet(path)) == 2)
    rows = pd.read_parquet(item)
    image, other = out / rows["image_path"].iloc[0], out / rows["image_path"].iloc[1]
    if damage == "truncate item":
        item.write_bytes(item.read_bytes()[:50])
    elif damage == "empty item":
        item.write_bytes(b"")
    elif damage == "delete image":
        image.unlink()
    elif damage == "truncate image":
        image.write_bytes(image.read_bytes()[:40])
    else:
        image.write_bytes(other.read_bytes())  # a valid PNG, the wrong one
    capsys.readouterr()
    assert main(["check", str(out)]) == 1
    assert item.stem in capsys.readouterr().out
    if damage.endswith("image"):
        error = one_line_exit_2(main(["evaluate", str(out), "--quiet", "--device", "cpu"]), capsys)
        assert rows["image_path"].iloc[0] in error
    assert sweep(path, out) == 0
    assert f"regenerated item {item.stem}" in capsys.readouterr().err
    assert sha(out).equals(before)
    assert main(["check", str(out)]) == 0


def test_atomic_writes_are_synced_to_disk(tmp_path, monkeypatch):
    from suite.core.files import atomic_write_bytes

    synced = []
    original = os.fsync
    monkeypatch.setattr(os, "fsync", lambda descriptor: synced.append(descriptor) or original(descriptor))
    atomic_write_bytes(tmp_path / "file.bin", b"data")
    assert len(synced) == 2  # the file, then its folder after the rename


# 7. Sharding from the environment is validated.
@pytest.mark.parametrize(
    "environment, expected",
    [
        ({"RANK": "1"}, "RANK and WORLD_SIZE must be set together"),
        ({"WORLD_SIZE": "2"}, "RANK and WORLD_SIZE must be set together"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "need 0 <= rank < world size"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "need 0 <= rank < world size"),
        ({"RANK": "a", "WORLD_SIZE": "2"}, "must be whole numbers"),
    ],
)
def test_bad_shard_environment_is_one_line(tmp_path, capsys, monkeypatch, environment, expected):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "run"
    assert expected in one_line_exit_2(sweep(sweep_file(tmp_path), out), capsys)
    assert not out.exists()


# 8. One line, not a traceback.
def test_sweep_file_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(SWEEP.replace("a red circle", "un cercle rouge é").encode("latin-1"))
    assert "not UTF-8" in one_line_exit_2(sweep(path, tmp_path / "run"), capsys)


def test_prompt_file_that_is_not_utf8(tmp_path, capsys):
    (tmp_path / "prompts.txt").write_bytes("un cercle rouge é\n".encode("latin-1"))
    path = sweep_file(
        tmp_path,
        **{'prompts: {list: ["a red circle", "a blue square", "a green triangle"]}': "prompts: {file: prompts.txt}"},
    )
    assert "prompts.txt: not UTF-8" in one_line_exit_2(sweep(path, tmp_path / "run"), capsys)


def test_csv_row_with_a_missing_field(tmp_path, capsys):
    (tmp_path / "prompts.csv").write_text("id,prompt\n1,a red circle\n2\n")
    path = sweep_file(
        tmp_path,
        **{'prompts: {list: ["a red circle", "a blue square", "a green triangle"]}': "prompts: {file: prompts.csv}"},
    )
    assert "prompts.csv:3: the row has no 'prompt' field" in one_line_exit_2(sweep(path, tmp_path / "run"), capsys)


def test_yaml_nested_thousands_deep(tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text(SWEEP + "stages: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested too deeply" in one_line_exit_2(sweep(path, tmp_path / "run"), capsys)


@pytest.mark.parametrize("out", ["/proc/suite-run", "/sys/suite-run"])
def test_out_under_proc_or_sys(tmp_path, capsys, out):
    if not Path(out).parent.is_dir():
        pytest.skip(f"no {Path(out).parent} here")
    assert "is not writable" in one_line_exit_2(sweep(sweep_file(tmp_path), Path(out)), capsys)


def test_report_to_a_bad_place(finished, capsys):
    _, out = finished
    (out.parent / "a-file").write_text("")
    code = main(["report", str(out), "--out", str(out.parent / "a-file" / "report")])
    assert "is not writable" in one_line_exit_2(code, capsys)


def test_guidance_values_that_name_the_same_folder(tmp_path, capsys):
    path = sweep_file(tmp_path, **{"guidance: [1.0, 3.0]": "guidance: [7.5, 7.5000001]"})
    assert "name the same image folder" in one_line_exit_2(sweep(path, tmp_path / "run"), capsys)


# 9. Run files get the umask's mode, not mkstemp's private 0600.
def test_run_files_are_readable_by_others_under_umask_022(tmp_path):
    previous = os.umask(0o022)
    try:
        code = subprocess.run(
            [
                sys.executable,
                "-m",
                "suite",
                "sweep",
                str(sweep_file(tmp_path)),
                "--out",
                str(tmp_path / "run"),
                "--quiet",
                "--device",
                "cpu",
            ],
            capture_output=True,
        ).returncode
    finally:
        os.umask(previous)
    assert code == 0
    files = [path for path in (tmp_path / "run").rglob("*") if path.is_file()]
    assert files and all(stat.S_IMODE(path.stat().st_mode) == 0o644 for path in files)


# 10. Smaller cases.
def test_a_runs_own_config_is_a_sweep_file_that_resumes_it(finished, capsys):
    _, out = finished
    capsys.readouterr()
    assert sweep(out / "config.yaml", out) == 0
    assert "0 images generated" in capsys.readouterr().out


def test_an_edited_run_config_is_refused(finished, capsys):
    path, out = finished
    config = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(config.replace("batch_size: 2", "batch_size: 3"))
    assert "config.yaml was edited" in one_line_exit_2(main(["evaluate", str(out), "--quiet"]), capsys)
    assert "config.yaml was edited" in one_line_exit_2(sweep(path, out), capsys)


def test_true_is_not_a_step_count(tmp_path, capsys):
    path = sweep_file(tmp_path, **{"steps: [2]": "steps: [true]"})
    assert "steps.0: Input should be a valid integer" in one_line_exit_2(sweep(path, tmp_path / "run"), capsys)


def test_csv_with_a_byte_order_mark(tmp_path):
    from suite.prompts.sets import read_prompt_file

    path = tmp_path / "prompts.csv"
    path.write_bytes("\ufeffprompt,category\na red circle,single\n".encode())
    assert read_prompt_file(path) == ["a red circle"]


def test_report_markdown_escapes_prompts(tmp_path):
    path = sweep_file(tmp_path, **{'"a red circle", ': '"a <b>red</b> [circle](x)\\n\\nbelow", '})
    out = tmp_path / "run"
    assert sweep(path, out) == 0
    markdown = (out / "report" / "report.md").read_text()
    assert "<b>" not in markdown and "&lt;b&gt;red&lt;/b&gt; \\[circle\\](x) below" in markdown
    for link in [line for line in markdown.splitlines() if line.startswith("![")]:
        assert link.endswith(".png)")


def test_profile_guidance_nan(tmp_path, capsys):
    code = main(["profile", "tiny-latent", "--guidance", "nan", "--out", str(tmp_path / "profile")])
    assert "--guidance must be a finite number" in one_line_exit_2(code, capsys)


def test_an_item_leased_by_a_live_process_is_left_to_it(tmp_path):
    from suite.run.config import load_sweep
    from suite.run.grid import expand
    from suite.run.options import RunOptions
    from suite.run.resume import lease
    from suite.run.runner import run_sweep

    path = sweep_file(tmp_path)
    out = tmp_path / "run"
    items = expand(load_sweep(path))
    (out / "items").mkdir(parents=True)
    (out / "items" / f"{items[0].id}.lease").write_text(json.dumps({"host": os.uname().nodename, "pid": os.getppid()}))
    (out / "items" / f"{items[1].id}.lease").write_text(json.dumps({"host": os.uname().nodename, "pid": 2**22 + 7}))
    summary = run_sweep(load_sweep(path), RunOptions(out, device="cpu", progress=False))
    assert summary.items_held_elsewhere == 1 and summary.items_generated == len(items) - 1  # the dead one taken over
    assert not summary.complete
    assert not lease(out, items[0].id)  # still held by the live process


def test_two_sweeps_on_one_folder_share_the_work(tmp_path):
    path = sweep_file(tmp_path, **{"steps: [2]": "steps: [2, 4, 6, 8]", "samplers: [ddim]": "samplers: [ddim, euler]"})
    out = tmp_path / "run"
    command = [sys.executable, "-m", "suite", "sweep", str(path), "--out", str(out), "--quiet", "--device", "cpu"]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes)
    lines = [next(line for line in output.splitlines() if " images generated " in line) for output in outputs]
    generated = [int(line.split(": ")[1].split(" images")[0]) for line in lines]
    assert sum(generated) == 2 * 4 * 2 * 3  # every image made once, by one of the two
    samples = pd.read_parquet(out / "samples.parquet")
    assert len(samples) == 48 and np.unique(samples["image_path"]).size == 48
