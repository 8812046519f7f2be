"""Many processes on one run folder: topology from launchers, one evaluation, leases taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from suite.core.errors import UserError
from suite.run.topology import Topology, device_for, topology

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, Topology()),
        ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, Topology(3, 8, 1, "torchrun/accelerate")),
        (
            {"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0"},
            Topology(2, 4, 0, "Open MPI"),
        ),
        ({"PMI_RANK": "1", "PMI_SIZE": "2"}, Topology(1, 2, 0, "MPI (PMI)")),
        # srun tasks are read inside a job step only, not in the batch script
        (
            {"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0"},
            Topology(1, 4, 1, "srun"),
        ),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, Topology()),
        # a job array: elements 10..13, this one the third
        (
            {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "4"},
            Topology(2, 4, 0, "Slurm array"),
        ),
        # an array of 3 elements, each a 2-process torchrun: 6 shards
        (
            {
                "SLURM_ARRAY_TASK_ID": "2",
                "SLURM_ARRAY_TASK_COUNT": "3",
                "RANK": "1",
                "WORLD_SIZE": "2",
                "LOCAL_RANK": "1",
            },
            Topology(5, 6, 1, "Slurm array x torchrun/accelerate"),
        ),
    ],
)
def test_topology_from_the_launcher(environ, expected):
    assert topology(None, environ) == expected


def test_shard_option_overrides_the_launcher_and_keeps_the_local_rank():
    assert topology("1/3", {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == Topology(1, 3, 1, "--shard")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SLURM_ARRAY_TASK_ID": "1"}, "without SLURM_ARRAY_TASK_COUNT"),
        ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4"}, "contiguous array"),
        ({"OMPI_COMM_WORLD_RANK": "x", "OMPI_COMM_WORLD_SIZE": "2"}, "whole numbers"),
    ],
)
def test_bad_launcher_variables_are_user_errors(environ, message):
    with pytest.raises(UserError, match=message):
        topology(None, environ)


def test_each_local_rank_takes_its_own_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [device_for("auto", Topology(rank, 16, rank % 8)) for rank in range(8)] == [
        "cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1", "cuda:2", "cuda:3"
    ]  # fmt: skip
    assert device_for("cuda:2", Topology(0, 2, 1)) == "cuda:2"  # an explicit GPU is kept
    assert device_for("cpu", Topology(0, 2, 1)) == "cpu"


# -- several processes on one run folder -----------------------------------------------------

SWEEP = """
name: scale
seed: 5
presets: [toy-latent, toy-cascaded]
samplers: [dpm-solver++]
steps: [3]
guidance: [3.0]
seeds_per_prompt: 1
batch_size: 2
prompts: {set: toy, limit: 8}
stages:
  toy-cascaded:
    super_resolution_1: {steps: 2, guidance: 1.0, noise_level: 250, strength: 0.5}
metrics: [clip_score, composition]
evaluation: {clip_model: toy-clip}
"""


def _environment(**extra: str) -> dict[str, str]:
    environ = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    path = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))
    return environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": path} | extra


def _sweep(path: Path, out: Path, **environ: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "suite", "sweep", str(path), "--out", str(out), "--quiet", "--device", "cpu"]
    return subprocess.Popen(
        command, env=_environment(**environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _hashes(out: Path) -> pd.Series:
    samples = pd.read_parquet(out / "samples.parquet")
    return samples.set_index(["preset", "prompt_index", "seed_index"])["sha256"].sort_index()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("scale")
    path = folder / "scale.yaml"
    path.write_text(textwrap.dedent(SWEEP))
    process = _sweep(path, folder / "single")
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return path, folder / "single"


def _evaluations(outputs: list[str]) -> int:
    return sum("metrics for" in output for output in outputs)


def _as_a_user_starts_it() -> dict[str, str]:
    """The environment of a shell that set no thread count: a plain run uses every core."""
    unset = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    environ = {key: value for key, value in os.environ.items() if key not in unset}
    return environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))}


def test_two_rank_torchrun_sweep_evaluates_once_and_is_within_one_level_of_a_plain_run(reference, tmp_path):
    """torchrun sets OMP_NUM_THREADS=1 in every rank; a plain run uses every core, and CPU kernels then sum in
    another order. Both started as a user starts them: byte-identical to a one-thread process, and within 1/255
    of the plain run (the bound the README and claim 5 state)."""
    path, one_thread = reference
    out = tmp_path / "torchrun"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "suite", "sweep"]
    command += [str(path), "--out", str(out), "--quiet", "--device", "cpu"]
    result = subprocess.run(command, env=_as_a_user_starts_it(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _evaluations([result.stdout]) == 1
    assert "shard 0/2 (torchrun/accelerate)" in result.stdout and "shard 1/2 (torchrun/accelerate)" in result.stdout
    assert json.loads((out / "evaluation.done").read_text())["key"]
    assert not (out / "evaluation.lease").exists()
    assert _hashes(out).equals(_hashes(one_thread))  # shards of one launcher at one thread count: the same bytes

    plain = tmp_path / "plain"
    command = [sys.executable, "-m", "suite", "sweep", str(path), "--out", str(plain), "--quiet", "--device", "cpu"]
    assert subprocess.run(command, env=_as_a_user_starts_it(), capture_output=True, timeout=600).returncode == 0

    from suite.analysis.diff import diff_runs

    table = diff_runs(plain, out)  # `suite diff`, the documented way to check
    assert (table["images"] == 8).all()
    assert (table["max_pixel_difference"] <= 1).all(), table[["preset", "sha256_match", "max_pixel_difference"]]


def test_concurrent_sweeps_into_one_folder_generate_each_item_once(reference, tmp_path):
    path, single = reference
    out = tmp_path / "together"
    processes = [_sweep(path, out) for _ in range(2)]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    assert _hashes(out).equals(_hashes(single))
    generated = [int(output.split(" images generated")[0].split()[-1]) for output in outputs]
    assert sum(generated) == len(_hashes(single))  # no image was made twice
    assert _evaluations(outputs) <= 1 and (out / "evaluation.done").is_file()


@pytest.mark.slow  # 41 s; a killed single process resuming is in the default run (test_runner)
def test_a_killed_rank_is_finished_by_rerunning_that_rank(reference, tmp_path):
    path, single = reference
    out = tmp_path / "killed"
    victim = _sweep(path, out, RANK="1", WORLD_SIZE="2")
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "items").glob("*.lease")):
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)  # mid-item: its lease stays behind
    victim.wait()
    survivor = _sweep(path, out, RANK="0", WORLD_SIZE="2")
    output, _ = survivor.communicate(timeout=600)
    assert survivor.returncode == 0 and "run waiting for other shards" in output, output
    rerun = _sweep(path, out, RANK="1", WORLD_SIZE="2")
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0 and "run complete" in output and _evaluations([output]) == 1, output
    assert _hashes(out).equals(_hashes(single))


# -- faults survived and recorded ----------------------------------------------------------------


def _run_in_process(path: Path, out: Path, monkeypatch, wrap=None, dtype: str = "auto"):
    """run_sweep in this process; ``wrap(unet)`` replaces each UNet's forward after loading and warm-up."""
    import suite.run.runner as runner
    from suite.run.config import load_sweep
    from suite.run.options import RunOptions
    from suite.run.runner import run_sweep

    if wrap is not None:
        original = runner._load

        def load(*args, **kwargs):
            pipeline = original(*args, **kwargs)
            for stage in pipeline.stages:
                stage.unet.forward = wrap(stage.unet, stage.unet.forward)
            return pipeline

        monkeypatch.setattr(runner, "_load", load)
    summary = run_sweep(load_sweep(path), RunOptions(out, device="cpu", dtype=dtype, progress=False))
    monkeypatch.undo()
    return summary


@pytest.fixture
def sweep_path(tmp_path) -> Path:
    path = tmp_path / "faults.yaml"
    path.write_text(textwrap.dedent(SWEEP).replace("batch_size: 2", "batch_size: 4"))
    return path


def test_out_of_memory_halves_the_batch_and_keeps_every_image(sweep_path, tmp_path, monkeypatch):
    import torch

    _run_in_process(sweep_path, tmp_path / "plain", monkeypatch)

    def at_most_one_image(unet, forward):  # a UNet that "runs out of memory" above one guided image
        def limited(sample, *args, **kwargs):
            if sample.shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return forward(sample, *args, **kwargs)

        return limited

    summary = _run_in_process(sweep_path, tmp_path / "oom", monkeypatch, at_most_one_image)
    assert summary.complete
    from suite.analysis.diff import diff_runs

    # the same noise per image; batched float kernels may round differently, so within one level
    assert (diff_runs(tmp_path / "plain", tmp_path / "oom")["max_pixel_difference"] <= 1).all()
    samples = pd.read_parquet(tmp_path / "oom" / "samples.parquet")
    assert (samples["batch_size"] == 4).all() and (samples["batch_size_used"] == 1).all()
    assert (samples["oom_retries"] == 2).all()  # 4 -> 2 -> 1
    assert (samples["status"] == "ok").all()


def _nan_in_first_image(unet, forward):
    """A UNet whose output for the first image of every batch (both guidance halves) is NaN."""

    def poisoned(sample, *args, **kwargs):
        output = forward(sample, *args, **kwargs)
        tensor = output[0] if isinstance(output, tuple) else output.sample
        half = sample.shape[0] // 2 if sample.shape[0] > 1 else 0
        tensor[0] = float("nan")
        tensor[half] = float("nan")
        return output

    return poisoned


def test_an_image_that_stays_non_finite_gets_a_status_no_png_and_no_metric(sweep_path, tmp_path, monkeypatch):
    from suite.cli import main

    out = tmp_path / "nan"
    summary = _run_in_process(sweep_path, out, monkeypatch, _nan_in_first_image)
    assert summary.complete
    samples = pd.read_parquet(out / "samples.parquet")
    bad = samples[samples["status"] == "non_finite"]
    assert set(bad["item_id"]) == set(samples["item_id"])  # at least the first image of each item
    assert len(bad) < len(samples)
    assert bad["sha256"].isna().all() and not any((out / path).exists() for path in bad["image_path"])
    assert (samples.loc[samples["status"] != "non_finite", "status"] == "ok").all()  # fp32 already: no retry
    assert main(["check", str(out)]) == 0
    assert main(["evaluate", str(out), "--quiet", "--device", "cpu"]) == 0
    metrics = pd.read_parquet(out / "metrics.parquet").set_index("preset")
    per_point = samples.groupby("preset")["status"].agg(lambda status: int((status == "non_finite").sum()))
    assert metrics["n_non_finite"].sort_index().tolist() == per_point.sort_index().tolist()
    totals = (metrics["n_images"] + metrics["n_non_finite"]).sort_index().tolist()
    assert totals == samples.groupby("preset").size().sort_index().tolist()


def test_a_half_precision_nan_is_regenerated_in_float32(sweep_path, tmp_path, monkeypatch):
    import torch

    def nan_in_half_precision(unet, forward):
        poisoned = _nan_in_first_image(unet, forward)
        return lambda sample, *args, **kwargs: (poisoned if unet.dtype != torch.float32 else forward)(
            sample, *args, **kwargs
        )

    out = tmp_path / "half"
    assert _run_in_process(sweep_path, out, monkeypatch, nan_in_half_precision, dtype="bf16").complete
    samples = pd.read_parquet(out / "samples.parquet")
    retried = samples[samples["status"] == "fp32_retry"]
    assert set(retried["item_id"]) == set(samples["item_id"])
    assert all((out / path).is_file() for path in retried["image_path"])
    assert (samples["status"] != "non_finite").all()


def test_two_evaluate_processes_split_the_grid_points(reference, tmp_path):
    import re
    import shutil

    _, single = reference
    run = tmp_path / "run"
    shutil.copytree(single, run, ignore=shutil.ignore_patterns("evaluation*", "metrics.*", "scores.*", "report"))
    command = [sys.executable, "-m", "suite", "evaluate", str(run), "--quiet", "--device", "cpu"]
    processes = [
        subprocess.Popen(command, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    counts = [int(re.search(r"(\d+) (?:grid points )?computed by this process", output).group(1)) for output in outputs]
    assert sum(counts) == 2  # each grid point once, whoever computed it
    writers = [count for count, output in zip(counts, outputs) if "metrics for" in output]
    # the elected process writes the tables; a process that started after it finished (imports take seconds) is
    # elected again and only reads the finished points back, computing none
    assert len(writers) == 1 or sorted(writers) == [0, 2], outputs
    columns = ["preset", "n_images", "clip_score_mean", "toy_correct"]
    expected = pd.read_parquet(single / "metrics.parquet")[columns].sort_values("preset").reset_index(drop=True)
    actual = pd.read_parquet(run / "metrics.parquet")[columns].sort_values("preset").reset_index(drop=True)
    pd.testing.assert_frame_equal(actual, expected)
