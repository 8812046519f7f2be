"""The run folder: atomic writes, the manifest, and the per-image table."""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from suite.errors import UserError

SAMPLES = "samples"
ITEMS_DIR = "items"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_table(frame: pd.DataFrame, stem: Path, csv: bool = True) -> None:
    """``stem.parquet`` (and ``stem.csv``), each written atomically."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(stem.with_suffix(".parquet"), buffer.getvalue())
    if csv:
        atomic_write_text(stem.with_suffix(".csv"), frame.to_csv(index=False))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ensure_writable(folder: Path) -> None:
    """Fail with one line, before anything is written, if ``folder`` cannot be created or written."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"output folder {folder} is not writable: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"output folder {folder} is not writable: no write permission on {probe}")


def write_config(run: Path, config: dict[str, Any], config_hash: str) -> None:
    """Write config.yaml, or check that a resumed run folder holds the same sweep."""
    path = run / "config.yaml"
    if path.exists():
        existing = yaml.safe_load(path.read_text()) or {}
        if existing.get("config_hash") != config_hash:
            raise UserError(
                f"{run} holds a different sweep (config hash {existing.get('config_hash')} != {config_hash}); "
                "choose another --out"
            )
        return
    atomic_write_text(path, yaml.safe_dump({"config_hash": config_hash, **config}, sort_keys=False))


def _git_state() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=True).stdout
        return {"commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def _versions() -> dict[str, str]:
    packages = ["diffusion-suite", "torch", "diffusers", "transformers", "numpy", "pandas", "open-clip-torch",
                "torchmetrics", "accelerate"]
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _hardware(device: torch.device) -> dict[str, Any]:
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def write_manifest(run: Path, device: torch.device, dtypes: dict[str, Any], models: dict[str, Any],
                   seeds: dict[str, Any]) -> None:
    """manifest.json: versions, git commit + dirty flag, hardware, dtypes, model sources, seeds.

    A resumed run keeps the manifest of its first process and records later invocations.
    """
    path = run / "manifest.json"
    invocation = {"argv": sys.argv, "device": str(device), "dtypes": dtypes}
    if path.exists():
        manifest = json.loads(path.read_text())
        manifest.setdefault("resumed_by", []).append(invocation)
    else:
        manifest = {
            "suite": "diffusion-suite", "command": " ".join(sys.argv), "git": _git_state(), "versions": _versions(),
            "hardware": _hardware(device), "dtypes": dtypes, "models": models, "seeds": seeds,
        }
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def item_path(run: Path, item_id: str) -> Path:
    return run / ITEMS_DIR / f"{item_id}.parquet"


def collect_samples(run: Path, item_ids: list[str]) -> pd.DataFrame | None:
    """Concatenate per-item rows in grid order once every item exists; None while some are missing."""
    paths = [item_path(run, item_id) for item_id in item_ids]
    if not all(path.exists() for path in paths):
        return None
    frames = [pd.read_parquet(path) for path in paths]
    samples = pd.concat(frames, ignore_index=True)
    stage_columns = sorted((column for column in samples.columns if column.startswith("stage")),
                           key=lambda column: (int(column[5:].split("_")[0]), column))
    other_columns = [column for column in samples.columns if column not in stage_columns]
    return samples[other_columns + stage_columns]
