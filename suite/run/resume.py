"""Resuming a run folder: whether it may be resumed, which work items are really finished, who makes the rest.

- ``open_run`` is the one place that decides whether an existing folder may be resumed: the same
  images-determining sweep (its generation hash), an unedited config.yaml, and the same dtypes,
  device type and model sources as the run that started it. A folder with no finished or leased
  item is not a run yet, so a failed first attempt leaves nothing stale behind.
- ``verify_items`` is the one reader that checks finished items against what they recorded: the
  item table must be readable and every image must exist with its recorded sha256. The runner
  regenerates what fails; ``suite check`` reports it.
- ``lease`` / ``release``: an item being generated holds ``items/<id>.lease`` (``suite.run.leases``),
  so two processes on one run folder never make the same item; a lease whose process has died
  (on this host), or that no heartbeat has touched for a while (from another host), is taken over.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from suite.core.errors import UserError
from suite.core.files import atomic_write_text, sha256_bytes
from suite.model.devices import spelled
from suite.run import leases
from suite.run.config import ResolvedSweep, content_hash, parse_sweep, resolve
from suite.run.folder import (
    CONFIG,
    HASH_KEY,
    ITEMS_DIR,
    MANIFEST,
    SAMPLES,
    item_path,
    read_config,
    read_manifest,
    write_manifest,
)
from suite.run.grid import WorkItem, expand
from suite.run.integrity import damaged_points, damaged_tables

EVALUATION_KEYS = ("metrics", "evaluation")  # change what is measured, never an image


@dataclass(frozen=True)
class Environment:
    """What decides a run's images besides its sweep: the device type, each preset's dtypes and model sources."""

    device_type: str
    dtypes: Mapping[str, Mapping[str, Any]]  # preset -> {"denoiser": "fp16", "text_encoder": ..., ...}
    models: Mapping[str, Any]  # preset -> backend, stages, local folder and sources, as the manifest records them

    def differences(self, recorded: Environment) -> list[str]:
        """What differs from the ``recorded`` environment, one phrase each."""
        found = []
        if self.device_type != recorded.device_type:
            found.append(f"device type {recorded.device_type} (now {self.device_type})")
        for preset, dtypes in self.dtypes.items():
            for part in ("denoiser", "text_encoder"):
                before = spelled(recorded.dtypes.get(preset, {}).get(part))
                if before != dtypes.get(part):
                    found.append(f"{preset} {part} dtype {before} (now {dtypes.get(part)})")
        for preset, models in self.models.items():
            if recorded.models.get(preset) != models:
                found.append(f"{preset} model sources {_sources(recorded.models.get(preset))} (now {_sources(models)})")
        return found

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> Environment:
        device = str(manifest.get("hardware", {}).get("device", "?"))
        return cls(device.split(":")[0], manifest.get("dtypes", {}), manifest.get("models", {}))


def _sources(models: Mapping[str, Any] | None) -> str:
    if not models:
        return "none"
    return models.get("local_dir") or ", ".join(str(value) for value in models.get("sources", {}).values())


def generation_part(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved sweep that determines its images: all but the metrics and how they are computed."""
    return {key: value for key, value in config.items() if key not in (*EVALUATION_KEYS, HASH_KEY)}


def has_started(run: Path) -> bool:
    """Whether any work item of the folder is finished or being generated."""
    items = run / ITEMS_DIR
    return items.is_dir() and any(path.suffix in (".parquet", ".lease", ".claim") for path in items.iterdir())


def open_run(
    run: Path, resolved: ResolvedSweep, device: torch.device, environment: Environment, seeds: Mapping[str, Any]
) -> None:
    """Write config.yaml and manifest.json for a new run, or decide that ``run`` may be resumed by this sweep.

    Refused with one line: a different sweep (generation hash), an edited config.yaml, or a different
    device type, dtype or model source than the run was started with. A changed ``metrics`` or
    ``evaluation`` block is accepted: config.yaml is rewritten with it, and evaluation is keyed by it.
    """

    config = resolved.to_dict()
    config_hash = resolved.config_hash()
    if (run / CONFIG).is_file() and has_started(run):
        stored = read_config(run)
        if content_hash(generation_part(stored)) != content_hash(generation_part(config)):
            raise UserError(
                f"{run} holds a different sweep (config hash {stored.get(HASH_KEY)}, this sweep {config_hash}); "
                "choose another --out"
            )
        manifest = read_manifest(run)
        if manifest is None:  # lost: the items still say which device type made them
            differences = _item_device_differences(run, environment)
        else:
            differences = environment.differences(Environment.from_manifest(manifest))
        if differences:
            raise UserError(
                f"{run} was generated with {'; '.join(differences)}; resume it with the same --device, --dtype and "
                "--model-dir, or choose another --out"
            )
        if stored.get(HASH_KEY) != config_hash:
            atomic_write_text(run / CONFIG, yaml.safe_dump({HASH_KEY: config_hash, **config}, sort_keys=False))
        write_manifest(run, device, environment, dict(seeds), fresh=manifest is None, rebuilt=manifest is None)
        return
    atomic_write_text(run / CONFIG, yaml.safe_dump({HASH_KEY: config_hash, **config}, sort_keys=False))
    write_manifest(run, device, environment, dict(seeds), fresh=True)


def _item_device_differences(run: Path, environment: Environment) -> list[str]:
    """With manifest.json lost: the device type and denoiser dtype each preset's finished items record, against
    this process's (model sources were recorded only in the manifest; the rebuilt one says it was rebuilt)."""
    found = []
    for path in sorted((run / ITEMS_DIR).glob("*.parquet")):
        try:
            row = pd.read_parquet(path, columns=["preset", "device", "dtype"]).iloc[0]
        except Exception:
            continue
        device_type = str(row["device"]).split(":")[0]
        if device_type != environment.device_type:
            found.append(f"device type {device_type} (now {environment.device_type})")
        now = environment.dtypes.get(row["preset"], {}).get("denoiser")
        if now is not None and row["dtype"] != now:
            found.append(f"{row['preset']} denoiser dtype {row['dtype']} (now {now})")
    return sorted(set(found))


def item_problem(run: Path, item: WorkItem) -> str | None:
    """Why a finished item cannot be trusted (unreadable table, missing or changed image), or None."""
    try:
        rows = pd.read_parquet(item_path(run, item.id))
    except Exception:
        return "its item table is unreadable (truncated or empty)"
    if len(rows) != len(item.images) or not {"image_path", "sha256"} <= set(rows.columns):
        return f"its item table has {len(rows)} rows for {len(item.images)} images"
    statuses = rows["status"] if "status" in rows else ["ok"] * len(rows)
    for image_path, recorded, status in zip(rows["image_path"], rows["sha256"], statuses):
        if status == "non_finite":  # recorded without an image on purpose
            continue
        path = run / image_path
        if not path.is_file():
            return f"{image_path} is missing"
        if sha256_bytes(path.read_bytes()) != recorded:
            return f"{image_path} does not match its recorded sha256"
    return None


def verify_items(run: Path, items: Iterable[WorkItem]) -> tuple[set[str], dict[str, str]]:
    """Ids of the items whose files are all present and intact, and a problem per damaged item."""
    finished, damaged = set(), {}
    for item in items:
        if not item_path(run, item.id).is_file():
            continue
        problem = item_problem(run, item)
        if problem is None:
            finished.add(item.id)
        else:
            damaged[item.id] = problem
    return finished, damaged


def _lease_path(run: Path, item_id: str) -> Path:
    return run / ITEMS_DIR / f"{item_id}.lease"


_OWNER: dict[str, Any] = {}


def process_owner() -> dict[str, Any]:
    """This process as its leases name it: host, pid, a random token, and its rank if a launcher set one."""
    if not _OWNER:
        _OWNER.update(leases.owner_record(rank=os.environ.get("RANK")))
    return _OWNER


def lease(run: Path, item_id: str) -> bool:
    """Take the item for this process; False if a live process holds it (a dead one's lease is taken over)."""
    return leases.acquire(_lease_path(run, item_id), process_owner()) is None


def release(run: Path, item_id: str) -> None:
    leases.release(_lease_path(run, item_id), process_owner())


EVALUATION_LEASE = "evaluation.lease"  # held by the one process that evaluates, compares and reports
EVALUATION_DONE = "evaluation.done"  # what was evaluated (samples and config), by whom


def evaluation_key(run: Path) -> str:
    """What an evaluation covers: the samples table and the config (metrics included), byte for byte."""
    return sha256_bytes((run / f"{SAMPLES}.parquet").read_bytes() + (run / CONFIG).read_bytes())


def _done(run: Path) -> dict[str, Any]:
    return leases.read_owner(run / EVALUATION_DONE) or {}


def elect_evaluator(run: Path, again: bool = False) -> tuple[str, dict[str, Any]]:
    """Decide whether this process evaluates a finished run: exactly one process does.

    Returns ``("elected", {})`` (this process holds ``evaluation.lease``; call
    ``evaluation_finished``), ``("elsewhere", owner)`` (a live process evaluates now) or
    ``("done", record)`` (these samples and this config were evaluated already; ``again`` ignores that).
    A lease whose process died is taken over, so a later ``suite sweep`` or ``suite evaluate`` finishes.
    """
    key = evaluation_key(run)
    if not again and _done(run).get("key") == key and evaluation_whole(run):
        return "done", _done(run)
    holder = leases.acquire(run / EVALUATION_LEASE, process_owner())
    if holder is not None:
        return "elsewhere", holder
    if not again and _done(run).get("key") == key and evaluation_whole(run):  # finished just before we won
        leases.release(run / EVALUATION_LEASE, process_owner())
        return "done", _done(run)
    return "elected", {}


def evaluation_whole(run: Path) -> bool:
    """No recorded table and no grid point of the evaluation is missing or damaged."""
    return not damaged_tables(run) and not damaged_points(run)


def evaluation_finished(run: Path, completed: bool) -> None:
    """Record a finished evaluation (if ``completed``) and give up ``evaluation.lease``."""
    if completed:
        record = {**process_owner(), "key": evaluation_key(run)}
        atomic_write_text(run / EVALUATION_DONE, json.dumps(record))
    leases.release(run / EVALUATION_LEASE, process_owner())


def check_run(run: Path) -> tuple[int, list[str]]:
    """``suite check``: every item, image and table of a run folder against what was recorded.

    Returns the number of images verified and one line per problem (missing, damaged or mismatched).
    """

    if not (run / CONFIG).is_file():
        raise UserError(f"{run} is not a run folder (no {CONFIG})")
    config = read_config(run)
    sweep = parse_sweep({key: value for key, value in config.items() if key != HASH_KEY}, str(run / CONFIG))
    items = expand(resolve(sweep, run, str(run / CONFIG)))
    finished, damaged = verify_items(run, items)
    problems = [f"item {item_id}: {problem}" for item_id, problem in damaged.items()]
    missing = [item for item in items if item.id not in finished and item.id not in damaged]
    problems += [
        f"item {item.id}: not generated ({item.preset} {item.sampler} steps {item.num_inference_steps} "
        f"guidance {item.guidance_scale:g})"
        for item in missing
    ]
    problems += [
        f"{path.relative_to(run)}: leased by a process that no longer runs"
        for path in sorted((run / ITEMS_DIR).glob("*.lease"))
        if leases.is_stale(path, leases.read_owner(path) or {})
    ]
    problems += _samples_problems(run, items, complete=not missing and not damaged)
    if has_started(run) and read_manifest(run) is None:
        problems.append(f"{MANIFEST}: missing or damaged (the next `suite sweep` writes it again)")
    problems += [
        f"{name}: missing or damaged (the next `suite sweep` computes it again)" for name in damaged_tables(run)
    ]
    problems += [
        f"evaluation/{point}: {problem} (the next `suite sweep` or `suite evaluate` computes it again)"
        for point, problem in damaged_points(run).items()
    ]
    verified = sum(_images_with_png(run, item) for item in items if item.id in finished)
    return verified, problems


def _images_with_png(run: Path, item: WorkItem) -> int:
    rows = pd.read_parquet(item_path(run, item.id))
    return int((rows["status"] != "non_finite").sum()) if "status" in rows else len(rows)


def _samples_problems(run: Path, items: list[WorkItem], complete: bool) -> list[str]:
    path = run / f"{SAMPLES}.parquet"
    if not path.is_file():
        return ["samples.parquet: missing (re-run the sweep to write it)"] if complete else []
    try:
        samples = pd.read_parquet(path)
    except Exception:
        return ["samples.parquet: unreadable (re-run the sweep to rewrite it)"]
    expected = sum(len(item.images) for item in items)
    if len(samples) != expected:
        return [f"samples.parquet: {len(samples)} rows for {expected} images (re-run the sweep to rewrite it)"]
    recorded = {}
    for item in items:
        if item_path(run, item.id).is_file():
            try:
                rows = pd.read_parquet(item_path(run, item.id))
            except Exception:
                continue
            recorded |= dict(zip(rows["image_path"], rows["sha256"]))
    stale = [
        image
        for image, sha in zip(samples["image_path"], samples["sha256"])
        if recorded.get(image, sha) != sha and not (pd.isna(sha) and pd.isna(recorded.get(image)))  # no PNG in both
    ]
    return [f"samples.parquet: {len(stale)} rows disagree with their item tables"] if stale else []
