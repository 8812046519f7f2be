"""The run folder: its file names and columns, atomic writes, the manifest, and the one reader of a run.

Each file has one writer: generation writes ``items/`` and ``samples``, evaluation writes
``scores`` (per image), ``metrics`` (per grid point) and ``costs`` (per preset and stage), the
report writes ``report/``. ``read_run`` reads them all back, and ``images`` joins the per-image
tables.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from suite.core.errors import UserError
from suite.core.files import atomic_write_text
from suite.metrics import former_name
from suite.model.devices import spelled
from suite.model.stages import StageSettings, StageTiming
from suite.run.config import ResolvedSweep, content_hash, parse_sweep, resolve
from suite.run.grid import stage_settings
from suite.run.integrity import damaged_tables

SAMPLES = "samples"  # one row per image, written by generation
SCORES = "scores"  # one row per image, written by evaluation: per-image metric values
METRICS_TABLE = "metrics"  # one row per grid point, written by evaluation
COSTS = "costs"  # one row per preset and stage: FLOPs per model evaluation, counted once by evaluation
ITEMS_DIR = "items"
GRID_COLUMNS = ("preset", "sampler", "num_inference_steps", "guidance_scale")  # what makes a grid point
IMAGE_KEY = ("item_id", "image_path")  # what identifies an image across samples and scores
STAGE_SETTINGS = ("name", "sampler", "num_inference_steps", "guidance_scale", "noise_level", "strength")
STAGE_TIMINGS = ("loop_s", "step_median_s", "model_evaluations", "decode_fp32_fallback")
CONFIG = "config.yaml"
HASH_KEY = "config_hash"


# Columns of the run itself renamed since earlier versions wrote them: (pattern, replacement). Tables and cached
# evaluation rows of run folders made before are read under today's names; each metric renames its own.
RENAMED_COLUMNS = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^(stage\d+)_step_s_median$", r"\1_step_median_s"),  # one name for the median step time
        # an interval is named after the column it belongs to: <column>_ci95_low / _ci95_high / _interval
        (r"^seconds_per_image_(ci95_low|ci95_high|interval)$", r"seconds_per_image_median_\1"),
        (r"^ci95_(low|high)$", r"difference_ci95_\1"),  # comparisons: the interval of the difference
    )
)


def upgraded(table: pd.DataFrame) -> pd.DataFrame:
    """A table an earlier version may have written, under today's column names and dtype spelling."""
    table = table.rename(columns=renamed_column)
    if "dtype" in table:
        table["dtype"] = table["dtype"].map(spelled)
    return table


def renamed_column(name: str) -> str:
    """Today's name of a column an earlier version wrote (unchanged if it was not renamed)."""
    for pattern, replacement in RENAMED_COLUMNS:
        name = pattern.sub(replacement, name)
    return former_name(name)


def stage_column(number: int, field: str) -> str:
    """The tidy column of stage ``number`` (from 1) for ``field``: ``stage2_guidance_scale``."""
    return f"stage{number}_{field}"


def stage_columns(count: int, fields: Iterable[str]) -> list[str]:
    """Every stage column of ``count`` stages, stage by stage, fields in the given order."""
    fields = list(fields)
    return [stage_column(number, field) for number in range(1, count + 1) for field in fields]


def recorded_stage_count(table: pd.DataFrame) -> int:
    """How many stages a samples or metrics table has columns for."""
    count = 0
    while stage_column(count + 1, "name") in table:
        count += 1
    return count


def stage_record(number: int, settings: StageSettings, timing: StageTiming) -> dict[str, Any]:
    """One stage's settings and measured timings as the samples table's ``stage<k>_*`` columns."""
    values = {
        "name": timing.stage,
        "sampler": settings.sampler,
        "num_inference_steps": settings.num_inference_steps,
        "guidance_scale": settings.guidance_scale,
        "noise_level": settings.noise_level,
        "strength": settings.strength,
        "loop_s": timing.loop_seconds,
        "step_median_s": timing.step_median_s,
        "model_evaluations": timing.model_evaluations,
        "decode_fp32_fallback": timing.decode_fp32_fallback,
    }
    return {stage_column(number, field): values[field] for field in (*STAGE_SETTINGS, *STAGE_TIMINGS)}


def _git_state() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return {"commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def versions() -> dict[str, str]:
    packages = [
        "diffusion-suite",
        "torch",
        "diffusers",
        "transformers",
        "numpy",
        "pandas",
        "open-clip-torch",
        "torchmetrics",
        "accelerate",
    ]
    return {"python": platform.python_version()} | {package: _version(package) for package in packages}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _hardware(device: torch.device) -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


MANIFEST = "manifest.json"


def read_manifest(run: Path) -> dict[str, Any] | None:
    """RUN/manifest.json, or None if it is missing or not a JSON object (damaged)."""
    try:
        manifest = json.loads((run / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def write_manifest(
    run: Path, device: torch.device, environment: Any, seeds: dict[str, Any], fresh: bool, rebuilt: bool = False
) -> None:
    """manifest.json: versions, git commit + dirty flag, hardware, dtypes, model sources, seeds.

    ``fresh``: a new run's manifest; otherwise the first process's manifest is kept and this
    invocation is appended to ``resumed_by``. ``rebuilt``: the first manifest was lost, and this one records the
    resuming process (checked against the items' device type and dtypes only).
    """
    path = run / MANIFEST
    manifest = None if fresh else read_manifest(run)
    if manifest is not None:
        invocation = {"argv": sys.argv, "device": str(device), "dtypes": dict(environment.dtypes)}
        manifest.setdefault("resumed_by", []).append(invocation)
    else:
        manifest = {
            "suite": "diffusion-suite",
            "command": " ".join(sys.argv),
            "git": _git_state(),
            "versions": versions(),
            "hardware": _hardware(device),
            "dtypes": dict(environment.dtypes),
            "models": dict(environment.models),
            "seeds": seeds,
        }
        if rebuilt:
            manifest["rebuilt"] = (
                "manifest.json was missing or damaged; rebuilt by this invocation after checking the items' device "
                "type and dtypes (git state, versions and model sources are this invocation's, not the first run's)"
            )
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def record_phases(run: Path, phases: dict[str, float]) -> None:
    """Append this invocation's wall time per phase (seconds) to the manifest's ``phases`` list."""
    manifest = read_manifest(run)
    if manifest is None:
        return
    entry = {"argv": sys.argv, "seconds": {name: round(seconds, 3) for name, seconds in phases.items()}}
    manifest.setdefault("phases", []).append(entry)
    atomic_write_text(run / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def phase_lines(phases: dict[str, float]) -> list[str]:
    """One line per phase: seconds and share of the total, then the total."""
    total = sum(phases.values()) or 1.0
    width = max(len(name) for name in [*phases, "total"])
    lines = [f"  {name:<{width}} {seconds:8.1f} s  {seconds / total:6.1%}" for name, seconds in phases.items()]
    return [*lines, f"  {'total':<{width}} {sum(phases.values()):8.1f} s"]


def item_path(run: Path, item_id: str) -> Path:
    return run / ITEMS_DIR / f"{item_id}.parquet"


def collect_samples(run: Path, item_ids: list[str], stage_count: int) -> pd.DataFrame | None:
    """Concatenate per-item rows in grid order once every item exists; None while some are missing.

    Stage columns come last, stage by stage; ``stage_count`` is the most stages any preset of the run has.
    """
    paths = [item_path(run, item_id) for item_id in item_ids]
    if not all(path.exists() for path in paths):
        return None
    samples = pd.concat([upgraded(pd.read_parquet(path)) for path in paths], ignore_index=True)
    stages = [column for column in stage_columns(stage_count, (*STAGE_SETTINGS, *STAGE_TIMINGS)) if column in samples]
    return samples[[column for column in samples.columns if column not in stages] + stages]


@dataclass(frozen=True)
class RunFolder:
    """Everything a run folder holds, read back: its sweep, manifest and tables (None until written)."""

    path: Path
    config: Mapping[str, Any]  # config.yaml as written, with its config_hash
    resolved: ResolvedSweep
    manifest: Mapping[str, Any]
    samples: pd.DataFrame
    scores: pd.DataFrame | None
    metrics: pd.DataFrame | None
    costs: pd.DataFrame | None
    unusable: pd.DataFrame | None = None  # rows recorded without an image (status non_finite): never measured
    damaged: tuple[str, ...] = ()  # recorded tables found missing or changed (read as None; evaluation rewrites them)

    def images(self) -> pd.DataFrame:
        """One row per image: the samples table joined with the per-image scores, if evaluated."""
        if self.scores is None:
            return self.samples
        scores = self.scores[
            [column for column in self.scores.columns if column not in self.samples or column in IMAGE_KEY]
        ]
        return self.samples.merge(scores, on=list(IMAGE_KEY), how="left", validate="one_to_one")

    def stage_settings(self, preset: str, sampler: str, num_inference_steps: int, guidance_scale: float):
        """The settings of every stage at one grid point, resolved from the run's sweep."""

        return stage_settings(self.resolved, preset, sampler, int(num_inference_steps), float(guidance_scale))


def _table(run: Path, name: str, damaged: list[str] = ()) -> pd.DataFrame | None:
    """A run table, None if absent or recorded as damaged; an unreadable one is a one-line error."""
    path = run / f"{name}.parquet"
    if path.name in damaged or not path.is_file():
        return None
    try:
        return upgraded(pd.read_parquet(path))
    except Exception as error:  # pyarrow's errors for a truncated or junk file have no common base
        raise UserError(
            f"{path} is damaged ({type(error).__name__}); `suite sweep` with the run's sweep writes it again"
        ) from None


def read_run(run: Path) -> RunFolder:
    """Read a finished run folder; one clear line if it is not one, or if its config.yaml was edited."""

    config_path = run / "config.yaml"
    if not config_path.is_file():
        raise UserError(f"{run} is not a run folder (no config.yaml)")
    damaged = damaged_tables(run)
    samples = _table(run, SAMPLES)
    if samples is None:
        raise UserError(f"{run} is not finished (no {SAMPLES}.parquet); re-run its sweep to complete it")
    config = read_config(run)
    sweep = parse_sweep({key: value for key, value in config.items() if key != HASH_KEY}, str(config_path))
    manifest = read_manifest(run) or {}
    unusable = None
    if "status" in samples:  # images that stayed non-finite have a row but no PNG: metrics leave them out
        missing = samples["status"] == "non_finite"
        samples, unusable = samples[~missing].reset_index(drop=True), samples[missing].reset_index(drop=True)
    return RunFolder(
        run,
        config,
        resolve(sweep, run, str(config_path)),
        manifest,
        samples,
        _table(run, SCORES, damaged),
        _table(run, METRICS_TABLE, damaged),
        _table(run, COSTS, damaged),
        unusable,
        tuple(damaged),
    )


def read_config(run: Path) -> dict[str, Any]:
    """RUN/config.yaml, checked against its stored hash: a hand-edited config is refused with one line."""

    path = run / CONFIG
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError):
        raise UserError(f"{path} is damaged (not readable YAML); restore it or choose another --out") from None
    stored = config.get(HASH_KEY) if isinstance(config, dict) else None
    body = {key: value for key, value in config.items() if key != HASH_KEY} if isinstance(config, dict) else {}
    if stored is None or stored != content_hash(body):
        raise UserError(
            f"{path} was edited (its content no longer matches its config_hash {stored}); "
            "restore it, or change the sweep file and run it into another --out"
        )
    return config
