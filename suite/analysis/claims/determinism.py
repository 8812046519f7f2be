"""Claim 5, same seed same image: one sweep rerun, sharded, killed and resumed, at another batch size: sha256."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from suite.analysis.claims.claim_file import ClaimConfig
from suite.analysis.claims.common import (
    NOT_SUPPORTED,
    PARTLY,
    SUPPORTED,
    ClaimsOptions,
    ci,
    claim_section,
    device_name,
    grid_of,
    interval_row,
    runs_dir,
)
from suite.analysis.claims.experiments import EXPERIMENTS, Experiment, Judgement
from suite.analysis.diff import diff_runs
from suite.analysis.report.render import Table, Text
from suite.core import stats


def _suite_sweep(
    sweep_file: Path, out: Path, device: str, *extra: str, launcher: tuple[str, ...] = (), **environment: str
) -> subprocess.Popen:
    """``suite sweep`` in a new process as a user starts it: the caller's environment (plus ``environment``),
    optionally under a launcher (torchrun)."""
    command = [
        sys.executable,
        *(launcher or ("-m",)),
        "suite",
        "sweep",
        str(sweep_file),
        "--out",
        str(out),
        "--quiet",
        "--device",
        device,
    ]
    inherited = {key: value for key, value in os.environ.items() if key not in THREAD_VARIABLES}
    env = {**inherited, **environment}  # a plain run uses every core, whatever this process was started with
    return subprocess.Popen([*command, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
TORCHRUN = ("-m", "torch.distributed.run", "--nproc_per_node", "2", "-m")


def _finish(process: subprocess.Popen) -> None:
    _, errors = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(process.args)} failed: {errors.strip().splitlines()[-1:]}")


def _diff_summary(comparison: str, how: str, table: pd.DataFrame, device: str) -> dict[str, Any]:
    images = int(table["images"].sum())
    same = round(float((table["sha256_match"] * table["images"]).sum()))
    interval = stats.wilson_interval(same, images)
    within = float((table["images_within_1"] * table["images"]).sum() / images)
    return {
        "comparison": comparison,
        "how": how,
        "images": images,
        **interval_row("sha256_match", interval, same / images),
        "max_pixel_difference": int(table["max_pixel_difference"].max()),
        "images_within_1": within,
        "device": device,
    }


def measure_determinism(config: ClaimConfig, runs: dict, options: ClaimsOptions) -> dict[str, pd.DataFrame]:
    work = runs_dir(options.out, config)
    shutil.rmtree(work, ignore_errors=True)  # every variant starts from nothing
    work.mkdir(parents=True)
    resolved = grid_of(config, options)
    sweep = resolved.to_dict()
    sweep_file = work / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(sweep, sort_keys=False))
    other_batch = work / "sweep-batch.yaml"
    other_batch.write_text(
        yaml.safe_dump({**sweep, "batch_size": int(config.settings["other_batch_size"])}, sort_keys=False)
    )
    device = options.device

    _finish(_suite_sweep(sweep_file, work / "first", device))
    _finish(_suite_sweep(sweep_file, work / "again", device))  # a fresh process, same command
    shards = [_suite_sweep(sweep_file, work / "sharded", device, "--shard", f"{rank}/2") for rank in range(2)]
    for process in shards:  # two processes at once on one folder
        _finish(process)
    killed = _suite_sweep(sweep_file, work / "resumed", device)
    while not any((work / "resumed" / "items").glob("*.parquet")) and killed.poll() is None:
        time.sleep(0.05)
    killed.kill()  # SIGKILL after its first finished item: the next item is in flight
    killed.communicate()
    _finish(_suite_sweep(sweep_file, work / "resumed", device))
    _finish(_suite_sweep(other_batch, work / "batch", device))
    if config.rules.get("method") != "determinism/v1":  # v2: the thread count and the launcher as well
        _finish(_suite_sweep(sweep_file, work / "one-thread", device, OMP_NUM_THREADS="1"))
        _finish(_suite_sweep(sweep_file, work / "torchrun", device, launcher=TORCHRUN))

    here = device_name(torch.device("cuda" if device == "cuda" else "cpu"))
    variants = (
        ("rerun", "the same command in a new process", "again"),
        ("shards", "two processes at once, --shard 0/2 and 1/2, on one folder", "sharded"),
        ("resume", "killed (SIGKILL) after its first item, then the same command again", "resumed"),
        ("batch size", f"batch {sweep['batch_size']} vs {config.settings['other_batch_size']}", "batch"),
    )
    if (work / "torchrun").is_dir():
        variants += (
            ("thread count", f"OMP_NUM_THREADS=1 vs the default (every core: {os.cpu_count()} here)", "one-thread"),
            ("torchrun", "torchrun --nproc_per_node 2 (each rank OMP_NUM_THREADS=1) vs a plain run", "torchrun"),
        )
    rows = [_diff_summary(name, how, diff_runs(work / "first", work / folder), here) for name, how, folder in variants]
    if (work / "torchrun").is_dir():
        how = "torchrun's two ranks vs one process, both at OMP_NUM_THREADS=1"
        rows.append(
            _diff_summary("torchrun vs one thread", how, diff_runs(work / "one-thread", work / "torchrun"), here)
        )
    for entry in config.settings.get("device_diffs", []):  # measured elsewhere with `suite diff`, committed
        path = Path(entry["file"])
        if path.is_file():
            rows.append(_diff_summary(entry["comparison"], entry["how"], pd.read_csv(path), entry["device"]))
    return {"comparisons": pd.DataFrame(rows)}


def judge_determinism(claim: dict, rules: dict, tables: dict, folder: Path, data: Path) -> Judgement:
    """Supported on one machine when every rerun, shard and resume gives identical sha256 and another batch size
    stays within 1/255; the device rows (CPU vs GPU) are reported, and make it partly supported if they differ."""
    comparisons = tables["comparisons"]
    here = comparisons[~comparisons.comparison.str.startswith("CPU vs GPU")]
    exact = here[here.comparison != "batch size"]
    batch = here[here.comparison == "batch size"]
    tolerance = rules["batch_size_max_pixel_difference"]
    same_machine = bool((exact.sha256_match == 1).all() and (batch.max_pixel_difference <= tolerance).all())
    devices = comparisons[comparisons.comparison.str.startswith("CPU vs GPU")]
    verdict = SUPPORTED if same_machine else NOT_SUPPORTED
    if same_machine and len(devices) and (devices.max_pixel_difference > tolerance).any():
        verdict = PARTLY
    shown = comparisons.assign(sha256_match=[ci(row, "sha256_match") for _, row in comparisons.iterrows()])
    numbers = "; ".join(
        f"{row.comparison}: sha256 {ci(row, 'sha256_match')}, max pixel difference {row.max_pixel_difference}"
        for row in comparisons.itertuples()
    )
    blocks = [
        Text(
            "One small sweep (both toy families, a deterministic and a stochastic sampler) made several ways and "
            "compared image by image with the first run (`suite diff`). Seeds are per image on CPU generators, so "
            "the noise never depends on batch, shard or process; another batch size changes the order of floating-point "
            "sums, which may move a pixel by one level. Across devices the kernels themselves differ, and over many "
            "denoising steps small differences can grow into a different image (the CPU vs GPU rows were measured "
            "with `suite diff` on a lent GPU; see results/gpu-check.md)."
        ),
        Table(
            shown[["comparison", "how", "images", "sha256_match", "max_pixel_difference", "images_within_1", "device"]],
            {"images_within_1": ".3f"},
        ),
    ]
    return Judgement(verdict, numbers, claim_section(claim, blocks))


def judge_determinism_v2(claim: dict, rules: dict, tables: dict, folder: Path, data: Path) -> Judgement:
    """Exact (sha256) where only the process or the shard changes, at one thread count; within
    ``max_pixel_difference`` where the floating-point order may change (batch size, thread count, a launcher that
    sets the thread count); the device rows as in v1."""
    comparisons = tables["comparisons"]
    devices = comparisons[comparisons.comparison.str.startswith("CPU vs GPU")]
    here = comparisons[~comparisons.comparison.str.startswith("CPU vs GPU")]
    bounded = here[here.comparison.isin(rules["within_tolerance"])]
    exact = here[~here.comparison.isin(rules["within_tolerance"])]
    tolerance = rules["max_pixel_difference"]
    missing = set(rules["within_tolerance"]) - set(here.comparison)
    same_machine = bool(
        not missing and (exact.sha256_match == 1).all() and (bounded.max_pixel_difference <= tolerance).all()
    )
    verdict = SUPPORTED if same_machine else NOT_SUPPORTED
    if same_machine and len(devices) and (devices.max_pixel_difference > tolerance).any():
        verdict = PARTLY
    numbers = "; ".join(
        f"{row.comparison}: sha256 {ci(row, 'sha256_match')}, max pixel difference {row.max_pixel_difference}"
        for row in comparisons.itertuples()
    )
    shown = comparisons.assign(sha256_match=[ci(row, "sha256_match") for _, row in comparisons.iterrows()])
    blocks = [
        Text(
            "One small sweep (both toy families, a deterministic and a stochastic sampler) made several ways and "
            "compared image by image with the first run (`suite diff`). Byte-identical is expected where only the "
            "process, the shard or a resume changes at the same thread count: seeds are per image on CPU generators. "
            f"Within {tolerance}/255 is the bound where the order of floating-point sums may change: another batch "
            "size, another thread count, and so torchrun, which starts each rank with OMP_NUM_THREADS=1 while a "
            "plain run uses every core. Across devices the kernels themselves differ (measured with `suite diff` "
            "on a lent GPU; see results/gpu-check.md)."
        ),
        Table(
            shown[["comparison", "how", "images", "sha256_match", "max_pixel_difference", "images_within_1", "device"]],
            {"images_within_1": ".3f"},
        ),
    ]
    return Judgement(verdict, numbers, claim_section(claim, blocks))


EXPERIMENTS.register(
    "determinism",
    Experiment(
        measure_determinism,
        {"determinism/v1": judge_determinism, "determinism/v2": judge_determinism_v2},
        "the same sweep rerun, sharded, killed and resumed, and at another batch size: sha256 compared",
    ),
)
