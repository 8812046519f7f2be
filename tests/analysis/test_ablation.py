"""The 2x2 ablation: a matched training budget, four presets on the normal backend path, resumable training,
contrasts with known answers, one-line errors, and a report that rebuilds byte for byte."""

from __future__ import annotations

import copy
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from scipy import stats as scipy_stats
from torch.utils.flop_counter import FlopCounterMode

from suite.analysis.ablation import design, runs
from suite.analysis.ablation.design import all_presets, contrasts, load_ablation, ordered_cells
from suite.analysis.ablation.report import build_ablation_report
from suite.cli import main
from suite.core import paired, stats
from suite.core.errors import UserError
from suite.model import presets
from suite.model.backends import BACKENDS
from suite.model.loading import LoadOptions
from suite.model.presets import PRESETS, TOY_WEIGHTS
from suite.toy import models, train
from suite.toy.recipes import ABLATION_SEEDS, COMPUTE_MATCHED_SEED, COMPUTE_MATCHED_STEPS, snapshot_name
from suite.toy.world import WORDS

REPOSITORY = Path(__file__).resolve().parents[2]
ABLATION_FILE = REPOSITORY / "experiments" / "ablation.yaml"
COMMITTED = REPOSITORY / "results" / "ablation" / "report"
CELLS = ("toy-latent-clip", "toy-latent-t5", "toy-pixel-clip", "toy-pixel-t5")
CPU_FP32 = LoadOptions(torch.device("cpu"), torch.float32, torch.float32)


# -- the budget ------------------------------------------------------------------------------------------


def test_every_training_run_of_the_cells_has_one_budget():
    """Each cell's runs (and the four cells) share one recipe but for the training seed; snapshots stop earlier."""
    training = json.loads((TOY_WEIGHTS / "ablation" / "training.json").read_text())
    assert {"latent-clip", "latent-t5", "pixel-clip", "pixel-t5"} <= set(training)
    runs = {name: summary for name, summary in training.items() if "snapshot_of" not in summary}
    assert len({summary["images_seen"] for summary in runs.values()}) == 1
    ignored = ("name", "job", "seed", "snapshots")
    recipes = [{k: v for k, v in summary["recipe"].items() if k not in ignored} for summary in runs.values()]
    assert all(recipe == recipes[0] for recipe in recipes)  # optimiser, schedule, EMA, caption dropout
    for name, summary in runs.items():
        seed = summary["recipe"]["seed"]
        assert name.endswith(f"-seed{seed}") or (seed == 6 and "seed" not in name)
    unets = [summary["parameters"]["unet"] for summary in runs.values()]
    assert max(unets) <= 1.10 * min(unets)
    for summary in training.values():
        assert summary["training_flops"] > 0 and summary["wall_seconds"] > 0 and summary["threads"] >= 1
    for summary in training.values():
        if "snapshot_of" in summary:  # a compute-matched snapshot: its own images and FLOPs at its step
            parent = training[summary["snapshot_of"]]
            step = summary["recipe"]["iterations"]
            assert summary["images_seen"] == step * parent["recipe"]["batch_size"]
            assert summary["training_flops"] * parent["recipe"]["iterations"] == parent["training_flops"] * step


def test_training_flops_count_forward_and_backward(tmp_path):
    """One step's count is about 3x the forward pass (backward ~ 2x forward) and grows linearly with the batch."""
    recipe = replace(train.ABLATION_RECIPES["pixel-t5"], batch_size=2)
    job = train.JOBS[recipe.job](recipe, tmp_path)
    step = train.training_step_flops(job, 0)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        job.loss(0)
    assert 2.5 * counter.get_total_flops() < step < 3.5 * counter.get_total_flops()
    double = train.JOBS[recipe.job](replace(recipe, batch_size=4), tmp_path)
    assert train.training_step_flops(double, 0) == pytest.approx(2 * step, rel=0.01)
    assert all(parameter.grad is None for module in job.trained.values() for parameter in module.parameters())


@pytest.mark.parametrize("cell", ["latent-t5", "pixel-clip"])
def test_a_killed_ablation_cell_resumes_to_the_same_weights(tmp_path, cell):
    """Two steps, checkpoint, a fresh start, two more == four straight (T5-style and CLIP-style, both spaces)."""
    recipe = replace(
        train.ABLATION_RECIPES[cell], iterations=4, batch_size=2, checkpoint_every=2, log_every=2, warmup=2
    )
    train.run_recipe(recipe, tmp_path / "straight", log=lambda line: None)
    train.run_recipe(replace(recipe, iterations=2), tmp_path / "resumed", log=lambda line: None)
    (tmp_path / "resumed" / cell / "summary.json").unlink()  # as if killed after step 2
    torch.manual_seed(12345)  # a resumed process starts from another global generator state
    train.run_recipe(recipe, tmp_path / "resumed", log=lambda line: None)
    for part in ("unet", "text_encoder"):
        weights = [
            load_file(next((tmp_path / run / cell / "final" / part).glob("*.safetensors")))
            for run in ("straight", "resumed")
        ]
        assert weights[0].keys() == weights[1].keys()
        for name in weights[0]:
            assert torch.equal(weights[0][name], weights[1][name]), (part, name)


def test_exporting_a_snapshot_leaves_the_training_weights_as_they_were(tmp_path):
    """Export casts modules to fp16 in place; a snapshot exports copies, so the EMA weights training goes on with
    keep their dtype and values."""
    recipe = replace(train.ABLATION_RECIPES["pixel-clip-seed7"], batch_size=1)
    job = train.JOBS[recipe.job](recipe, tmp_path)
    ema = {name: copy.deepcopy(module) for name, module in job.trained.items()}
    before = {name: {k: v.clone() for k, v in module.state_dict().items()} for name, module in ema.items()}
    train._export_snapshot(job, ema, tmp_path, 7, 1.5)
    for name, module in ema.items():
        state = module.state_dict()
        assert all(state[k].dtype == v.dtype and torch.equal(state[k], v) for k, v in before[name].items()), name
    exported = load_file(next((tmp_path / "snapshot-7" / "unet").glob("*.safetensors")))
    assert all(tensor.dtype == torch.float16 for tensor in exported.values() if tensor.is_floating_point())
    assert json.loads((tmp_path / "snapshot-7.json").read_text()) == {"wall_seconds": 1.5}


@pytest.mark.slow
def test_a_snapshot_equals_the_same_recipe_trained_to_that_step(tmp_path):
    """The compute-matched pixel runs are EMA snapshots of longer runs: equal to training to that step, and the
    snapshot's export does not disturb the run that goes on (its final weights equal a run without snapshots).
    Three short trainings with FLOP counts: slow (pytest -m slow)."""
    recipe = replace(
        train.ABLATION_RECIPES["pixel-clip-seed7"],
        iterations=4,
        batch_size=1,
        checkpoint_every=2,
        log_every=2,
        warmup=2,
    )
    assert train.ABLATION_RECIPES["pixel-clip-seed7"].snapshots == (COMPUTE_MATCHED_STEPS["pixel-clip"],)
    train.run_recipe(replace(recipe, snapshots=(2,)), tmp_path / "long", log=lambda line: None)
    train.run_recipe(replace(recipe, iterations=2, snapshots=()), tmp_path / "short", log=lambda line: None)
    train.run_recipe(replace(recipe, snapshots=()), tmp_path / "plain", log=lambda line: None)
    folder = tmp_path / "long" / recipe.name
    for part in ("unet", "text_encoder"):
        pairs = [
            (folder / "snapshot-2", tmp_path / "short" / recipe.name / "final"),
            (folder / "final", tmp_path / "plain" / recipe.name / "final"),
        ]
        for first, second in pairs:
            a, b = (load_file(next((path / part).glob("*.safetensors"))) for path in (first, second))
            assert all(torch.equal(a[name], b[name]) for name in a), (part, first.name)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["snapshots"]["2"]["training_flops"] * 2 == summary["training_flops"]


def test_compute_matched_steps_spend_the_latent_cells_training_flops():
    """The registered matched step of each pixel cell: its latent twin's total FLOPs over its FLOPs per step."""
    training = json.loads((TOY_WEIGHTS / "ablation" / "training.json").read_text())
    for cell, step in COMPUTE_MATCHED_STEPS.items():
        twin = cell.replace("pixel", "latent")
        per_step = training[cell]["training_flops"] / training[cell]["recipe"]["iterations"]
        assert step == round(training[twin]["training_flops"] / per_step)


# -- the presets -----------------------------------------------------------------------------------------


def test_every_toy_word_is_one_clip_token():
    tokenizer = models.clip_tokenizer()
    assert [word for word in WORDS if len(tokenizer.tokenize(word)) != 1] == []
    assert tokenizer.tokenize("a green square") == ["a</w>", "green</w>", "square</w>"]


def test_the_four_presets_load_with_their_encoder_and_shared_parts():
    pipelines = {name: BACKENDS.get(PRESETS.get(name).backend).load(PRESETS.get(name), CPU_FP32) for name in CELLS}
    assert {name: pipeline.stages[0].text_encoder for name, pipeline in pipelines.items()} == {
        "toy-latent-clip": "clip",
        "toy-latent-t5": "t5",
        "toy-pixel-clip": "clip",
        "toy-pixel-t5": "t5",
    }
    assert pipelines["toy-latent-t5"].text_encoders["t5"].use_attention_mask  # T5 as IF uses it
    assert not pipelines["toy-latent-clip"].text_encoders["clip"].use_attention_mask  # CLIP as SD uses it
    shipped_vae = BACKENDS.get("latent").load(PRESETS.get("toy-latent"), CPU_FP32).stages[0].vae.state_dict()
    shipped_sr = BACKENDS.get("cascaded").load(PRESETS.get("toy-cascaded"), CPU_FP32).stages[1].unet.state_dict()
    for name in ("toy-latent-clip", "toy-latent-t5"):
        vae = pipelines[name].stages[0].vae.state_dict()
        assert all(torch.equal(vae[key], shipped_vae[key]) for key in shipped_vae)
    for name in ("toy-pixel-clip", "toy-pixel-t5"):
        stage = pipelines[name].stages[1]
        assert stage.text_encoder == "t5:sr_text"  # the SR reads the encoder it was trained with
        assert all(torch.equal(stage.unet.state_dict()[key], shipped_sr[key]) for key in shipped_sr)


def test_the_four_presets_sample_through_a_sweep(tmp_path):
    sweep = {
        "name": "ablation-smoke",
        "presets": list(CELLS),
        "samplers": ["dpm-solver++"],
        "steps": [3],
        "guidance": [3.0],
        "batch_size": 2,
        "prompts": {"list": ["a red circle", "a blue square above a green triangle"]},
        "stages": {
            name: {"super_resolution_1": {"steps": 2, "guidance": 1.0, "noise_level": 250, "strength": 0.5}}
            for name in CELLS[2:]
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert main(["sweep", str(path), "--out", str(tmp_path / "run"), "--quiet", "--device", "cpu"]) == 0
    samples = pd.read_parquet(tmp_path / "run" / "samples.parquet")
    assert sorted(samples.preset.unique()) == sorted(CELLS) and (samples.status == "ok").all()
    assert set(zip(samples.height, samples.width)) == {(64, 64)}


# -- contrasts: known answers ----------------------------------------------------------------------------


def _config(tmp_path: Path, **changes) -> Path:
    """The shipped ablation file with one network per cell at guidance 3 (the replicates' weights need training),
    edited by ``changes``."""
    data = yaml.safe_load(ABLATION_FILE.read_text())
    data["training"] = str(TOY_WEIGHTS / "ablation" / "training.json")
    data.pop("runs"), data.pop("compute_matched")
    data["sweep"]["guidance"] = [3.0]
    data["rules"]["grid_points"] = {3.0: "the shipped file's first grid point"}
    changes["sweep"] = {**data["sweep"], **changes.get("sweep", {})}  # a sweep change edits the shipped sweep
    data.update(changes)
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))  # the first factor is the first key
    return path


class _RunValues:
    """A stand-in for PairedCells: each preset's per-prompt values, one image per prompt."""

    def __init__(self, values: dict[str, np.ndarray]):
        self.data = values
        self.units = stats.Units.each(len(next(iter(values.values()))))

    def statistic(self, measure, presets=None):
        return lambda chosen: np.array([self.data[preset][chosen].mean() for preset in presets])

    def values(self, preset, measure):
        return self.data[preset]


def _three_runs_per_cell(tmp_path, monkeypatch):
    """An ablation config with two further runs per cell, read on one per-image measure, every prompt measured."""
    monkeypatch.setattr(runs, "MEASURES", (design.MEASURES[4],))
    monkeypatch.setattr(runs, "measured_prompts", lambda paired, measure: paired.units.count)
    runs_of = {cell: [f"{cell}-seed7", f"{cell}-seed8"] for cell in CELLS}
    return load_ablation(_config(tmp_path)).model_copy(update={"runs": runs_of, "resamples": 1000}), runs_of


def test_effects_over_runs_add_the_training_run_variance_to_the_prompt_variance(tmp_path, monkeypatch):
    """Three runs per cell whose levels differ by a known spread, on prompts with their own noise: the training-run
    term is sum(w^2 s_c^2) / R, the prompt term the bootstrap's (close to the per-prompt contrast's variance / n),
    and t has Welch-Satterthwaite degrees of freedom (8 when the cells vary alike and the prompt term is small)."""
    config, runs_of = _three_runs_per_cell(tmp_path, monkeypatch)
    rng = np.random.default_rng(0)
    prompts = rng.normal(0, 1, 400)
    levels = {"toy-latent-clip": 0.0, "toy-latent-t5": 0.0, "toy-pixel-clip": 1.0, "toy-pixel-t5": 1.0}
    offsets = (-0.3, 0.0, 0.3)  # every cell's three runs: between-run variance 0.09
    values = {
        preset: levels[cell] + offset + prompts + rng.normal(0, 0.2, len(prompts))
        for cell in CELLS
        for preset, offset in zip([cell, *runs_of[cell]], offsets)
    }
    table = runs.over_runs_table(config, _RunValues(values)).set_index("effect")
    space = table.loc["space"]
    weights = np.array([-0.5, -0.5, 0.5, 0.5])
    cell_means = np.stack([np.mean([values[p] for p in [cell, *runs_of[cell]]], axis=0) for cell in CELLS])
    per_prompt = weights @ cell_means
    assert space.estimate == pytest.approx(per_prompt.mean())
    assert space.se_prompts == pytest.approx(per_prompt.std(ddof=1) / math.sqrt(len(prompts)), rel=0.15)
    spreads = [np.var([values[p].mean() for p in [cell, *runs_of[cell]]], ddof=1) for cell in CELLS]
    assert space.se_training_runs == pytest.approx(math.sqrt(0.25 * sum(spreads) / 3))
    assert space.standard_error**2 == pytest.approx(space.se_prompts**2 + space.se_training_runs**2)
    assert 7 < space.degrees_of_freedom < 8.5
    half = space.estimate_ci95_high - space.estimate
    assert half == pytest.approx(scipy_stats.t.ppf(0.975, space.degrees_of_freedom) * space.standard_error)
    spread = runs.run_values_table(config, _RunValues(values))
    assert spread.run_sd.iloc[0] == pytest.approx(math.sqrt(spreads[0]))


def test_contrasts_recover_known_main_effects_and_interaction(tmp_path):
    """Cell values 10 (latent clip), 12 (latent t5), 15 (pixel clip), 21 (pixel t5) plus a per-prompt offset shared
    by all cells: space +7, encoder +4, interaction +4; the shared offset cancels, so every interval is a point."""
    config = load_ablation(_config(tmp_path))
    assert ordered_cells(config) == list(CELLS)
    base = np.array([10.0, 12.0, 15.0, 21.0])
    offsets = np.random.default_rng(0).normal(0, 3, 50)

    def statistic(chosen: np.ndarray) -> np.ndarray:
        return base + offsets[chosen].mean()

    expected = {"space": 7.0, "encoder": 4.0, "space x encoder": 4.0, "encoder within latent": 2.0}
    expected |= {"encoder within pixel": 6.0, "space within clip": 5.0, "space within t5": 9.0}
    for effect, _, _, weights in contrasts(config):
        test = paired.contrast_bootstrap(statistic, weights, 50, resamples=200)
        assert test.difference == pytest.approx(expected[effect])
        assert test.low == pytest.approx(expected[effect]) and test.high == pytest.approx(expected[effect])


def test_contrast_bootstrap_of_two_sets_brackets_the_difference_and_widens_for_a_family():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 40), rng.normal(0.5, 1, 40)
    contrast = paired.contrast_bootstrap(lambda chosen: np.array([a[chosen].mean(), b[chosen].mean()]), (-1, 1), 40)
    assert contrast.low < b.mean() - a.mean() < contrast.high
    low, high = contrast.interval_at(stats.family_confidence(7))
    assert low < contrast.low and high > contrast.high
    assert contrast.p_resolution == 1 / 1000


# -- the ablation file -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"factors": {"space": ["latent", "pixel", "other"], "encoder": ["clip", "t5"]}}, "two distinct levels"),
        ({"cells": {name: {"space": "latent", "encoder": "clip"} for name in CELLS}}, "one preset for each"),
        ({"sweep": {"presets": ["toy-latent"], "samplers": ["ddim"], "steps": [5], "guidance": [3.0]}}, "presets"),
        ({"sweep": {"samplers": ["ddim"], "steps": [5, 10], "guidance": [3.0]}}, "one sampler and one step count"),
        ({"sweep": {"guidance": [3.0, 5.0]}}, "rules.grid_points: give each guidance scale"),
        ({"runs": {"toy-latent-clip": ["toy-latent-clip-seed7"]}}, "runs: give every cell"),
        ({"compute_matched": {"toy-nope": "toy-pixel-t5"}}, "compute_matched: 'toy-nope'"),
        ({"training": "missing.json"}, "training: no file"),
        ({"resamples": 5}, "resamples"),
    ],
)
def test_a_bad_ablation_file_is_one_line_and_exit_2(tmp_path, capsys, changes, message):
    path = _config(tmp_path, **changes)
    with pytest.raises(UserError, match=message):
        load_ablation(path)
    assert main(["ablation", str(path), "--out", str(tmp_path / "out")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_small_ablation_writes_every_table_and_a_report_that_rebuilds(tmp_path):
    sweep = yaml.safe_load(ABLATION_FILE.read_text())["sweep"]
    sweep |= {
        "steps": [3],
        "guidance": [3.0],
        "seeds_per_prompt": 1,
        "batch_size": 8,
        "prompts": {"set": "toy", "limit": 16},
    }
    sweep["stages"] = {
        name: {"super_resolution_1": {**stage["super_resolution_1"], "steps": 2}}
        for name, stage in sweep["stages"].items()
    }
    sweep["evaluation"] |= {"reference": {"builtin": "toy", "count": 32, "seed": 0}, "set_resamples": 10}
    path = _config(tmp_path, sweep=sweep, timing={"batch": 2, "repeats": 2}, resamples=100)
    out = tmp_path / "out"
    assert main(["ablation", str(path), "--out", str(out), "--quiet", "--device", "cpu"]) == 2  # not registered
    assert not out.exists()
    assert main(["ablation", str(path), "--register"]) == 0
    assert main(["ablation", str(path), "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    data = out / "report" / "data"
    effects = pd.read_csv(data / "effects.csv")
    assert len(effects) == 7 * 7  # seven measures x (two main effects, interaction, four simple effects)
    cells = pd.read_csv(data / "cells.csv")
    single = cells[cells.measure == "exact_single"]
    assert (single.n == 12).all()  # the toy set's first 16 prompts: 12 single objects, then pairs
    value = cells.set_index(["measure", "cell"])["value"]
    for row in effects[effects.effect == "space within clip"].itertuples():  # pixel clip - latent clip, all prompts
        difference = value[(row.measure, "toy-pixel-clip")] - value[(row.measure, "toy-latent-clip")]
        if not np.isnan(difference):
            assert row.estimate == pytest.approx(difference, rel=1e-3, abs=1e-9), row.measure
    assert (pd.read_csv(data / "cost.csv").gflops_per_image > 0).all()
    assert json.loads((data / "measured.json").read_text())["rules_hash"].startswith("sha256:")
    budget = pd.read_csv(data / "training.csv").set_index("cell")
    assert budget.loc["toy-latent-clip", "shared_parts"] == "vae"
    assert budget.loc["toy-pixel-t5", "shared_parts"] == "super_resolution + sr_text_encoder"
    assert (budget.pipeline_pflops > budget.training_pflops).all()
    first = (out / "report" / "report.md").read_bytes()
    assert main(["ablation", str(path), "--out", str(out), "--report-only"]) == 0
    assert (out / "report" / "report.md").read_bytes() == first


@pytest.mark.skipif(not (COMMITTED / "data").is_dir(), reason="no committed ablation report")
def test_the_committed_ablation_report_rebuilds_byte_identically(tmp_path):
    report = tmp_path / "report"
    shutil.copytree(COMMITTED / "data", report / "data")
    build_ablation_report(report)
    for name in ("report.md", "index.html", "figures/interaction.png"):
        assert (report / name).read_bytes() == (COMMITTED / name).read_bytes(), name


@pytest.mark.skipif(not (COMMITTED / "data").is_dir(), reason="no committed ablation report")
def test_data_measured_before_the_interval_convention_rebuilds_the_same_report(tmp_path):
    """The committed data with the column names an earlier version wrote (bare low/high, <x>_low/_high)."""
    report = tmp_path / "report"
    shutil.copytree(COMMITTED / "data", report / "data")
    former = {
        "cells.csv": {"value_ci95_low": "low", "value_ci95_high": "high", "value_interval": "interval"},
        "effects.csv": {
            "estimate_ci95_low": "low",
            "estimate_ci95_high": "high",
            "estimate_family_ci95_low": "estimate_family_low",
            "estimate_family_ci95_high": "estimate_family_high",
        },
    }
    for path in (report / "data").glob("*.csv"):
        table = pd.read_csv(path)
        names = former.get(path.name) or {column: column.replace("_ci95_", "_") for column in table}
        table.rename(columns=names).to_csv(path, index=False)
        assert not any("ci95" in column for column in pd.read_csv(path).columns)
    build_ablation_report(report)
    assert (report / "report.md").read_bytes() == (COMMITTED / "report.md").read_bytes()


def test_the_replicate_presets_are_the_trained_runs():
    """The presets of the cells' further runs and snapshots name the recipes ``suite train toy --ablation`` trains."""
    assert ABLATION_SEEDS[1:] == presets.ABLATION_REPLICATE_SEEDS
    for cell, step in COMPUTE_MATCHED_STEPS.items():
        recipe = f"{cell}-seed{COMPUTE_MATCHED_SEED}"
        assert f"{cell}-{presets.ABLATION_MATCHED_RUNS[cell]}" == snapshot_name(recipe, step)
    config = load_ablation(ABLATION_FILE)
    for preset in all_presets(config):
        PRESETS.get(preset)  # every preset the shipped ablation runs exists


@pytest.mark.slow
def test_a_replicated_ablation_measures_effects_over_runs_end_to_end(tmp_path, monkeypatch):
    """Two training runs per cell at two grid points, with compute-matched snapshots: every table, a report that
    rebuilds byte for byte. The latent cells' second runs are the shipped seed-7 runs; the pixel cells' second runs
    and snapshots stand in with the first runs' weights (their own are trained separately)."""
    training = json.loads((TOY_WEIGHTS / "ablation" / "training.json").read_text())
    matched = {
        "toy-pixel-clip-seed7": "toy-pixel-clip-seed7-step2783",
        "toy-pixel-t5-seed7": "toy-pixel-t5-seed7-step2860",
    }
    for run, snapshot in matched.items():
        cell = run.removesuffix("-seed7")
        for name in (run, snapshot):
            monkeypatch.setitem(PRESETS._entries, name, replace(PRESETS.get(cell), name=name))
            key = name.removeprefix("toy-")
            stand_in = json.loads(json.dumps(training[cell.removeprefix("toy-")]))
            stand_in["recipe"] |= {"name": key, "seed": 7}
            if name == snapshot:
                stand_in |= {"snapshot_of": run.removeprefix("toy-"), "training_flops": stand_in["training_flops"] // 2}
            training.setdefault(key, stand_in)
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "training.json").write_text(json.dumps(training))
    shutil.copy(TOY_WEIGHTS / "ablation" / "shared_parts.json", folder)
    sweep = yaml.safe_load(ABLATION_FILE.read_text())["sweep"]
    sweep |= {
        "steps": [3],
        "guidance": [3.0, 7.5],
        "seeds_per_prompt": 1,
        "batch_size": 8,
        "prompts": {"set": "toy", "limit": 16},
    }
    sweep["stages"] = {
        name: {"super_resolution_1": {**stage["super_resolution_1"], "steps": 2}}
        for name, stage in sweep["stages"].items()
    }
    sweep["evaluation"] |= {"reference": {"builtin": "toy", "count": 32, "seed": 0}, "set_resamples": 10}
    rules = yaml.safe_load(ABLATION_FILE.read_text())["rules"]
    path = _config(
        tmp_path,
        sweep=sweep,
        timing={"batch": 2, "repeats": 2},
        resamples=100,
        training=str(folder / "training.json"),
        runs={cell: [f"{cell}-seed7"] for cell in CELLS},
        compute_matched=matched,
        rules=rules,
    )
    out = tmp_path / "out"
    assert main(["ablation", str(path), "--register"]) == 0
    assert main(["ablation", str(path), "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    data = out / "report" / "data"
    over = pd.read_csv(data / "effects_over_runs.csv")
    assert sorted(over.guidance_scale.unique()) == [3.0, 7.5] and (over.runs_per_cell == 2).all()
    total = over.se_prompts**2 + over.se_training_runs**2  # tables at 6 digits
    assert np.allclose(over.standard_error**2, total, rtol=1e-4, equal_nan=True)
    main_rows = over[over.kind.isin(["main", "interaction"])]
    assert (main_rows.groupby("family").size() == 2 * 3 * 7).all()  # one Holm family across both grid points
    runs_table = pd.read_csv(data / "run_values.csv")
    assert set(runs_table.run) == {*CELLS, *(f"{cell}-seed7" for cell in CELLS)}
    matched_table = pd.read_csv(data / "matched.csv")
    assert set(matched_table.comparison) == {"matched images", "matched training FLOPs"}
    budget = pd.read_csv(data / "training.csv")
    assert set(budget.run) == {*CELLS, *(f"{cell}-seed7" for cell in CELLS), *matched.values()}
    first = (out / "report" / "report.md").read_bytes()
    assert b"Effects over training runs" in first and b"matched training FLOPs" in first
    assert main(["ablation", str(path), "--out", str(out), "--report-only"]) == 0
    assert (out / "report" / "report.md").read_bytes() == first


def test_adding_a_seed_reuses_the_shipped_runs_and_assembles_what_has_finished(tmp_path):
    """`suite train toy --ablation --runs R` with runs already shipped: nothing shipped trains again, the assembly
    keeps every shipped run and its training.json entry as it was, and the seed's unfinished runs are named."""
    shipped = TOY_WEIGHTS / "ablation"
    out = tmp_path / "ablation"
    shutil.copytree(shipped, out)
    lines = []
    missing = train.train_ablation(tmp_path / "work", out, jobs=1, seeds=3, runs=("latent-clip",), log=lines.append)
    planned = [name for track in train.ablation_tracks(3) for name in track]
    finished = [name for name in planned if (shipped / name).is_dir()]
    assert missing == [name for name in planned if name not in finished]
    assert lines[0].startswith(f"reusing {len(finished)} trained runs")
    assert any("not trained yet" in line for line in lines) == bool(missing)
    assert json.loads((out / "training.json").read_text()) == json.loads((shipped / "training.json").read_text())
    for path in sorted(shipped.rglob("*.safetensors")):
        assert (out / path.relative_to(shipped)).read_bytes() == path.read_bytes(), path
    assert not any(path.name == "checkpoint.pt" for path in (tmp_path / "work").rglob("*"))


def test_train_refuses_an_unknown_run_in_one_line(tmp_path, capsys):
    code = main(
        [
            "train",
            "toy",
            "--ablation",
            "--runs",
            "latent-clip-seed9",
            "--work",
            str(tmp_path / "w"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "latent-clip-seed9" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not (COMMITTED / "data").is_dir(), reason="no committed ablation report")
def test_the_ablation_report_marks_a_rule_written_after_earlier_data_from_the_registry(tmp_path):
    report = tmp_path / "report"
    shutil.copytree(COMMITTED / "data", report / "data")
    build_ablation_report(report)
    text = (report / "report.md").read_text()
    assert "ablation/v2" in text and "Marked: rule changed after earlier data (2026-12-01)" in text
    (report / "data" / "registry.yaml").unlink()  # no registry beside the data: no rule can be confirmatory
    build_ablation_report(report)
    text = (report / "report.md").read_text()
    assert "no registry lies beside the data" in text and "Marked:" not in text


def test_effects_over_runs_take_each_cells_own_between_run_variance(tmp_path, monkeypatch):
    """One cell's runs spread widely and the others' hardly: Welch-Satterthwaite's df fall towards R - 1 = 2
    (a pooled between-run variance would give 4(R - 1) = 8), as the formula with each cell's own variance says."""
    config, runs_of = _three_runs_per_cell(tmp_path, monkeypatch)
    rng = np.random.default_rng(1)
    prompts = rng.normal(0, 1, 400)
    spread_of = {"toy-latent-clip": 1.0, "toy-latent-t5": 0.01, "toy-pixel-clip": 0.01, "toy-pixel-t5": 0.01}
    values = {
        preset: spread_of[cell] * offset + prompts + rng.normal(0, 0.2, len(prompts))
        for cell in CELLS
        for preset, offset in zip([cell, *runs_of[cell]], (-1.0, 0.0, 1.0))
    }
    space = runs.over_runs_table(config, _RunValues(values)).set_index("effect").loc["space"]
    terms = [
        0.25 * np.var([values[p].mean() for p in [cell, *runs_of[cell]]], ddof=1) / 3 for cell in CELLS
    ]  # w_c^2 s_c^2 / R
    expected = (space.se_prompts**2 + sum(terms)) ** 2 / sum(term**2 / 2 for term in terms)
    assert space.degrees_of_freedom == pytest.approx(expected, rel=1e-6)
    assert space.degrees_of_freedom < 3
