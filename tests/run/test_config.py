"""Sweep validation: every kind of bad input is one line, exit code 2, and nothing written."""

from __future__ import annotations

import textwrap

import pytest

from suite.cli import main

VALID = """
name: check
presets: [tiny-latent]
samplers: [ddim]
steps: [2]
guidance: [1.0]
prompts: {list: ["a red circle"]}
"""


def write(tmp_path, text: str, name: str = "sweep.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    "replace, expected",
    [
        (
            ("presets: [tiny-latent]", "presets: [sd99]"),
            "unknown preset 'sd99'; valid: if-l, if-m, if-xl, karlo, pixart-1024, pixart-512",
        ),
        (("samplers: [ddim]", "samplers: [ddim, dpm++]"), "unknown sampler 'dpm++'; valid: ddim, ddim-raw-eps, ddpm"),
        (("name: check", "name: check\nmetrics: [frechet]"), "unknown metric 'frechet'"),
        (("name: check", "name: check\nbatchsize: 4"), "batchsize: Extra inputs are not permitted"),
        (("steps: [2]", "steps: [0]"), "steps"),
        (("guidance: [1.0]", "guidance: [-1.0]"), "guidance: every guidance scale must be a finite number >= 0"),
        (("guidance: [1.0]", "guidance: [.nan]"), "guidance: every guidance scale must be a finite number >= 0"),
        (("guidance: [1.0]", "guidance: [.inf]"), "guidance: every guidance scale must be a finite number >= 0"),
        (('prompts: {list: ["a red circle"]}', 'prompts: {list: ["  "]}'), "prompts.list[0] is blank"),
        (('prompts: {list: ["a red circle"]}', "prompts: {list: []}"), "prompts: the prompt set is empty"),
        (('prompts: {list: ["a red circle"]}', "prompts: {set: nope}"), "unknown prompt set 'nope'"),
        (("steps: [2]", "steps: [2, 2]"), "steps: values repeat"),
        (
            ("presets: [tiny-latent]", "presets: [tiny-latent]\nstages: {tiny-latent: {sr: {steps: 3}}}"),
            "preset 'tiny-latent' has no stage 'sr'",
        ),
    ],
)
def test_bad_sweep_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, replace, expected):
    path = write(tmp_path, VALID.replace(*replace))
    out = tmp_path / "run"
    code, err = run_cli(["sweep", str(path), "--out", str(out), "--quiet"], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1
    assert expected in err
    assert not out.exists()


def test_malformed_yaml(tmp_path, capsys):
    path = write(tmp_path, "presets: [tiny-latent\nsamplers: ddim\n")
    code, err = run_cli(["sweep", str(path), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "malformed YAML" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_missing_sweep_file(tmp_path, capsys):
    code, err = run_cli(["sweep", str(tmp_path / "absent.yaml")], capsys)
    assert code == 2 and err == f"suite: error: sweep file not found: {tmp_path / 'absent.yaml'}"


def test_missing_prompt_file(tmp_path, capsys):
    path = write(tmp_path, VALID.replace('prompts: {list: ["a red circle"]}', "prompts: {file: prompts.txt}"))
    code, err = run_cli(["sweep", str(path), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "prompt file not found" in err


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = write(tmp_path, VALID)
    code, err = run_cli(["sweep", str(path), "--out", str(blocker / "run"), "--quiet"], capsys)
    assert code == 2 and "is not writable" in err and len(err.splitlines()) == 1


def test_missing_local_model_folder(tmp_path, capsys):
    path = write(tmp_path, VALID)
    args = ["sweep", str(path), "--out", str(tmp_path / "run"), "--model-dir", f"tiny-latent={tmp_path / 'nowhere'}"]
    code, err = run_cli(args, capsys)
    assert code == 2 and "preset 'tiny-latent': no model folder at" in err and "hf download" in err
    assert not (tmp_path / "run").exists()


def test_hub_preset_offline_names_preset_id_and_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    path = write(tmp_path, VALID.replace("presets: [tiny-latent]", "presets: [sd15]"))
    code, err = run_cli(["sweep", str(path), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert (
        "preset 'sd15'" in err
        and "stable-diffusion-v1-5/stable-diffusion-v1-5" in err
        and "--model-dir sd15=PATH" in err
    )
    assert not (tmp_path / "run").exists()


def test_bad_shard(tmp_path, capsys):
    code, err = run_cli(["sweep", str(write(tmp_path, VALID)), "--shard", "2/2"], capsys)
    assert code == 2 and "--shard 2/2" in err


@pytest.mark.parametrize(
    "name, content",
    [
        ("p.txt", "a red circle\n\n  a blue square  \n"),
        ("p.csv", "prompt,category\na red circle,shape\na blue square,shape\n"),
        ("p.jsonl", '{"prompt": "a red circle"}\n{"prompt": "a blue square", "id": 2}\n'),
    ],
)
def test_prompt_files_are_read_relative_to_the_sweep(tmp_path, name, content):
    from suite.run.config import load_sweep

    (tmp_path / name).write_text(content)
    path = write(tmp_path, VALID.replace('prompts: {list: ["a red circle"]}', f"prompts: {{file: {name}}}"))
    assert load_sweep(path).prompt_texts == ("a red circle", "a blue square")


def test_resolved_config_hash_is_stable_and_sensitive(tmp_path):
    from suite.run.config import load_sweep

    first = load_sweep(write(tmp_path, VALID, "a.yaml"))
    again = load_sweep(write(tmp_path, VALID, "b.yaml"))
    other = load_sweep(write(tmp_path, VALID.replace("steps: [2]", "steps: [3]"), "c.yaml"))
    assert first.config_hash() == again.config_hash() != other.config_hash()


def test_every_shipped_sweep_file_validates():
    """experiments/*.yaml parse as sweeps (resolving them needs their data: COCO, real checkpoints)."""
    from pathlib import Path

    import yaml

    from suite.analysis.ablation.design import load_ablation
    from suite.analysis.registration import read_registry
    from suite.run.config import parse_sweep

    files = sorted((Path(__file__).resolve().parents[2] / "experiments").glob("*.yaml"))
    assert len(files) >= 6
    for path in files:
        if path.name == "ablation.yaml":  # an ablation file: a 2x2 design around one sweep
            load_ablation(path)
        elif path.name == "registry.yaml":  # the rules registry (suite claims/ablation --register), not a sweep
            assert read_registry(path)
        else:
            parse_sweep(yaml.safe_load(path.read_text()), str(path))


@pytest.mark.parametrize(
    ("metric", "setting"), [("geneval", "geneval"), ("pickscore", "pickscore"), ("hpsv2", "hpsv2")]
)
def test_a_metric_without_its_model_setting_is_one_line(metric, setting):
    from suite.core.errors import UserError
    from suite.run.config import parse_sweep

    sweep = {"presets": ["tiny-latent"], "samplers": ["ddim"], "steps": [2], "guidance": [1.0]}
    with pytest.raises(UserError, match=f"metric {metric} needs evaluation.{setting}: ") as error:
        parse_sweep({**sweep, "prompts": {"set": "tiny"}, "metrics": [metric]})
    assert "\n" not in str(error.value)
