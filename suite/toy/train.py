"""``suite train toy``: the recipes that rebuild every shipped toy model, resumable, from the world alone.

Recipes run in two independent tracks (VAE -> latent UNet -> CLIP evaluator; base -> super-
resolution), one process each, then unCLIP's prior and decoder (which read the toy CLIP) in two more. Every step's batch and noise are drawn from (recipe seed, step),
and a checkpoint is written every ``checkpoint_every`` steps, so a killed run resumes where it
stopped without repeating or skipping data. Finished recipes leave a ``final/`` folder; the
shipped layout (presets + evaluator + training.json) is assembled from those.
"""

from __future__ import annotations

import copy
import json
import math
import multiprocessing
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from suite.model.presets import TOY_WEIGHTS
from suite.toy.jobs import JOBS as BASE_JOBS
from suite.toy.jobs import Job
from suite.toy.recipes import (
    ABLATION_RECIPES,
    RECIPES,
    TRACKS,
    UNCLIP_RECIPES,
    UNCLIP_TRACKS,
    Recipe,
    ablation_tracks,
    snapshot_name,
)
from suite.toy.unclip_jobs import UNCLIP_JOBS

JOBS = {**BASE_JOBS, **UNCLIP_JOBS}


def _learning_rate(recipe: Recipe, step: int) -> float:
    rate = recipe.learning_rate * min(1.0, (step + 1) / recipe.warmup)
    if recipe.cosine_decay and step >= recipe.warmup:
        progress = (step - recipe.warmup) / max(1, recipe.iterations - recipe.warmup)
        rate *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    return rate


def _save_checkpoint(path: Path, job: Job, ema: dict, optimizer, step: int, seconds: float) -> None:
    state = {
        "step": step,
        "seconds": seconds,
        "rng": torch.get_rng_state(),  # dropout draws from the global generator
        "optimizer": optimizer.state_dict(),
        "trained": {name: module.state_dict() for name, module in job.trained.items()},
        "ema": {name: module.state_dict() for name, module in ema.items()},
    }
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def run_recipe(recipe: Recipe, work: Path, log: Callable[[str], None] = print) -> dict:
    """Train one recipe to completion (resuming from its checkpoint) and export ``work/<name>/final``."""
    folder = work / recipe.name
    final, summary_path = folder / "final", folder / "summary.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)  # initial weights; every batch then draws from (seed, step)
    job = JOBS[recipe.job or recipe.name](recipe, work)
    parameters = [parameter for module in job.trained.values() for parameter in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=recipe.learning_rate, weight_decay=0.0)
    ema = {name: copy.deepcopy(module).requires_grad_(False) for name, module in job.trained.items()}
    checkpoint, start, seconds = folder / "checkpoint.pt", 0, 0.0
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        for name, module in job.trained.items():
            module.load_state_dict(state["trained"][name])
            ema[name].load_state_dict(state["ema"][name])
        optimizer.load_state_dict(state["optimizer"])
        start, seconds = state["step"], state["seconds"]
        if "rng" in state:
            torch.set_rng_state(state["rng"])
        log(f"[{recipe.name}] resuming at step {start}/{recipe.iterations}")
    for module in job.trained.values():
        module.train()
    began, losses = time.perf_counter() - seconds, []
    for step in range(start, recipe.iterations):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(recipe, step)
        loss = job.loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        _update_ema(ema, job.trained, recipe.ema_decay, step)
        losses.append(loss.item())
        done = step + 1
        if done in recipe.snapshots:
            _export_snapshot(job, ema, folder, done, time.perf_counter() - began)
        if done % recipe.log_every == 0 or done == recipe.iterations:
            elapsed = time.perf_counter() - began
            rate = (done - start) / max(elapsed - seconds, 1e-9)
            log(
                f"[{recipe.name}] {done}/{recipe.iterations} loss {np.mean(losses[-recipe.log_every :]):.4f} "
                f"{rate * recipe.batch_size:.0f} img/s, {elapsed / 60:.1f} min, eta {(recipe.iterations - done) / rate / 60:.1f} min"
            )
        if done % recipe.checkpoint_every == 0 or done == recipe.iterations:
            _save_checkpoint(checkpoint, job, ema, optimizer, done, time.perf_counter() - began)
    seconds = time.perf_counter() - began
    flops_per_iteration = training_step_flops(job, recipe.iterations)
    staging = folder / "final.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    evaluation = job.export(ema, staging)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    snapshots = {
        str(step): {
            "images_seen": step * recipe.batch_size,
            "training_flops": flops_per_iteration * step,
            "wall_seconds": json.loads((folder / f"snapshot-{step}.json").read_text())["wall_seconds"],
        }
        for step in recipe.snapshots
    }
    summary = {
        "recipe": asdict(recipe),
        "images_seen": recipe.iterations * recipe.batch_size,
        "training_flops": flops_per_iteration * recipe.iterations,
        "wall_seconds": round(seconds, 1),
        "parameters": {name: sum(p.numel() for p in module.parameters()) for name, module in ema.items()},
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        **({"snapshots": snapshots} if snapshots else {}),
        **evaluation,
    }
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    log(f"[{recipe.name}] done in {seconds / 60:.1f} min: {json.dumps(evaluation)}")
    return summary


def _export_snapshot(job: Job, ema: dict, folder: Path, step: int, seconds: float) -> None:
    """Export a copy of the EMA weights at ``step`` (export casts modules in place; training goes on)."""
    staging, target = folder / f"snapshot-{step}.tmp", folder / f"snapshot-{step}"
    shutil.rmtree(staging, ignore_errors=True)
    job.export({name: copy.deepcopy(module) for name, module in ema.items()}, staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    (folder / f"snapshot-{step}.json").write_text(json.dumps({"wall_seconds": round(seconds, 1)}) + "\n")


def training_step_flops(job: Job, step: int) -> int:
    """FLOPs of one training step (forward and backward, frozen parts included), by the suite's counter.

    The step is run on a batch past the last one trained; its gradients are discarded.
    """
    with FlopCounterMode(display=False) as counter:
        job.loss(step).backward()
    for module in job.trained.values():
        module.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


@torch.no_grad()
def _update_ema(ema: dict, trained: dict, decay: float, step: int) -> None:
    """Exponential moving average with the usual warm-up (decay grows as (1 + n) / (10 + n)); decay 0 copies."""
    effective = min(decay, (1 + step) / (10 + step))
    for name, module in trained.items():
        for averaged, current in zip(ema[name].parameters(), module.parameters()):
            averaged.lerp_(current.detach(), 1 - effective)
        for averaged, current in zip(ema[name].buffers(), module.buffers()):
            averaged.copy_(current)


def run_track(names: tuple[str, ...], work: str, threads: int) -> list[dict]:
    """One process's share: its recipes in order, with ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    recipes = {**RECIPES, **UNCLIP_RECIPES, **ABLATION_RECIPES}
    return [run_recipe(recipes[name], Path(work), lambda line: print(line, flush=True)) for name in names]


def assemble(work: Path, out: Path) -> None:
    """Lay the finished models out as the shipped presets + evaluator, with training.json."""
    layout = {
        "toy-latent": {
            "vae": "vae/final/vae",
            "unet": "latent/final/unet",
            "text_encoder": "latent/final/text_encoder",
            "tokenizer": "latent/final/tokenizer",
            "scheduler": "latent/final/scheduler",
        },
        "toy-cascaded/stage_1": {
            name: f"base/final/{name}" for name in ("unet", "text_encoder", "tokenizer", "scheduler")
        },
        "toy-cascaded/stage_2": {
            name: f"super_resolution/final/{name}" for name in ("unet", "scheduler", "image_noising_scheduler")
        },
        "toy-clip": {"": "clip/final"},
        "toy-unclip": UNCLIP_LAYOUT,
    }
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    for target, parts in layout.items():
        for name, source in parts.items():
            shutil.copytree(work / source, staging / target / name)
    summaries = {name: json.loads((work / name / "summary.json").read_text()) for name in {**RECIPES, **UNCLIP_RECIPES}}
    (staging / "training.json").write_text(json.dumps(summaries, indent=2) + "\n")
    if (out / "ablation").is_dir():  # the ablation's cells are trained and assembled on their own
        shutil.copytree(out / "ablation", staging / "ablation")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)


# toy-unclip's folder, Karlo-shaped; its x4 super-resolution is toy-cascaded's stage_2 (see the preset)
UNCLIP_LAYOUT = {
    **{name: f"prior/final/{name}" for name in ("prior", "prior_scheduler", "text_encoder", "tokenizer")},
    **{name: f"decoder/final/{name}" for name in ("decoder", "text_proj", "decoder_scheduler")},
}


def train_unclip(work: Path, out: Path, jobs: int = 2) -> None:
    """Train unCLIP's prior and decoder alone (on the shipped toy CLIP unless ``work`` trained one) and lay them
    out as ``out/toy-unclip`` with their entries in ``out/training.json``; the other shipped models stay."""
    _run_tracks(UNCLIP_TRACKS, work, jobs)
    staging = out / "toy-unclip.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    for name, source in UNCLIP_LAYOUT.items():
        shutil.copytree(work / source, staging / name)
    training_path = out / "training.json"
    training = json.loads(training_path.read_text()) if training_path.is_file() else {}
    for name in UNCLIP_RECIPES:
        training[name] = json.loads((work / name / "summary.json").read_text())
    shutil.rmtree(out / "toy-unclip", ignore_errors=True)
    staging.rename(out / "toy-unclip")
    temporary = training_path.with_suffix(".tmp")
    temporary.write_text(json.dumps(training, indent=2) + "\n")
    os.replace(temporary, training_path)


def _run_tracks(tracks: tuple[tuple[str, ...], ...], work: Path, jobs: int) -> None:
    """Run the tracks one after another (``jobs`` <= 1) or in parallel processes sharing the cores."""
    work.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    if jobs <= 1:
        for track in tracks:
            run_track(track, str(work), cores)
        return
    threads = max(1, cores // len(tracks))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(tracks), mp_context=context) as pool:
        for future in [pool.submit(run_track, track, str(work), threads) for track in tracks]:
            future.result()


def train_toy(work: Path, out: Path, jobs: int = 2) -> None:
    """Run every recipe (tracks in parallel when ``jobs`` > 1), then assemble the shipped folder."""
    _run_tracks(TRACKS, work, jobs)
    _run_tracks(UNCLIP_TRACKS, work, jobs)
    assemble(work, out)


SHARED_PARTS = {  # what the ablation's cells share: latent cells decode with the VAE; pixel cells upsample with the
    # x4 SR stage, which reads the T5-style encoder trained jointly with toy-cascaded's base
    "vae": {"recipe": "vae", "used_by": "latent", "parameters": ("vae",)},
    "super_resolution": {"recipe": "super_resolution", "used_by": "pixel", "parameters": ("unet",)},
    "sr_text_encoder": {"recipe": "base", "used_by": "pixel", "parameters": ("text_encoder",)},
}


def shared_part_budgets(shipped: Path = TOY_WEIGHTS) -> dict:
    """Images seen, training FLOPs and parameters of the shipped parts the ablation's cells share.

    Those models were trained before training FLOPs were recorded: one training step of each recipe is counted
    (forward and backward, as for the cells) and multiplied by its iterations. The T5-style encoder the SR stage
    reads was trained jointly with toy-cascaded's whole base, so its FLOPs are that whole recipe's.
    """
    summaries = json.loads((shipped / "training.json").read_text())
    budgets = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        shutil.copytree(shipped / "toy-cascaded" / "stage_1" / "text_encoder", work / "base" / "final" / "text_encoder")
        for part, spec in SHARED_PARTS.items():
            recipe = RECIPES[spec["recipe"]]
            job = JOBS[recipe.job or recipe.name](recipe, work)
            summary = summaries[recipe.name]
            budgets[part] = {
                "recipe": recipe.name,
                "used_by": spec["used_by"],
                "images_seen": summary["images_seen"],
                "training_flops": training_step_flops(job, recipe.iterations) * recipe.iterations,
                "parameters": sum(summary["parameters"][name] for name in spec["parameters"]),
                "wall_seconds": summary["wall_seconds"],
                "flops_counted": "one training step x iterations (trained before FLOPs were recorded)",
            }
    return budgets


def assemble_ablation(work: Path, out: Path, seeds: int = 3) -> list[str]:
    """Lay the cells' finished training runs out as ``out/<run>/`` (shared VAE and SR stay where they ship) + training.json.

    Snapshots (the compute-matched pixel runs) are laid out as ``out/<run>-step<step>/`` with their own entry.
    Runs of the first ``seeds`` seeds that have not finished in ``work`` are left out; their names are returned.
    """
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    summaries = {}
    names = [name for track in ablation_tracks(seeds) for name in track]
    missing = [name for name in names if not (work / name / "summary.json").is_file()]
    for name in [name for name in names if name not in missing]:
        shutil.copytree(work / name / "final", staging / name)
        summary = json.loads((work / name / "summary.json").read_text())
        summaries[name] = summary
        for step, numbers in summary.get("snapshots", {}).items():
            shutil.copytree(work / name / f"snapshot-{step}", staging / snapshot_name(name, int(step)))
            recipe = {**summary["recipe"], "name": snapshot_name(name, int(step)), "iterations": int(step)}
            summaries[snapshot_name(name, int(step))] = {
                **{key: value for key, value in summary.items() if key != "snapshots"},
                "recipe": recipe,
                **numbers,
                "snapshot_of": name,
            }
    ordered = {name: summaries[name] for name in sorted(summaries, key=_run_order)}
    (staging / "training.json").write_text(json.dumps(ordered, indent=2) + "\n")
    (staging / "shared_parts.json").write_text(json.dumps(shared_part_budgets(), indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return missing


def _run_order(name: str) -> tuple[int, str]:
    recipe = ABLATION_RECIPES.get(name)
    return (recipe.seed if recipe else 99, name)


def restore_shipped_runs(work: Path, out: Path, names: list[str]) -> list[str]:
    """Put runs already assembled in ``out`` back into ``work`` as finished, so only missing runs train.

    A finished run in ``work`` is its ``final`` folder, its snapshots and its ``summary.json`` (written last, so a
    restore cut short is redone). ``training.json`` in ``out`` holds each run's summary as training wrote it.
    """
    shipped_path = out / "training.json"
    shipped = json.loads(shipped_path.read_text()) if shipped_path.is_file() else {}
    restored = []
    for name in names:
        folder = work / name
        if (folder / "summary.json").is_file() or name not in shipped or not (out / name).is_dir():
            continue
        summary = shipped[name]
        snapshots = {int(step): out / snapshot_name(name, int(step)) for step in summary.get("snapshots", {})}
        if not all(source.is_dir() for source in snapshots.values()):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder / "final", ignore_errors=True)
        shutil.copytree(out / name, folder / "final")
        for step, source in snapshots.items():
            shutil.rmtree(folder / f"snapshot-{step}", ignore_errors=True)
            shutil.copytree(source, folder / f"snapshot-{step}")
        (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        restored.append(name)
    return restored


def train_ablation(
    work: Path,
    out: Path,
    jobs: int = 2,
    seeds: int = 3,
    reuse: bool = True,
    runs: tuple[str, ...] = (),
    log: Callable[[str], None] = print,
) -> list[str]:
    """Train the 2x2 ablation's cells to one budget, ``seeds`` training runs each (two balanced tracks), then assemble.

    With ``reuse`` the runs already in ``out`` are taken as trained (they were built by this same code, and their
    summaries say how), so adding a seed trains only that seed's runs; ``reuse=False`` trains every run again.
    ``runs`` names a subset to train now (training split across sessions or machines); the assembly then holds the
    runs finished so far, and the names still missing are returned.
    """
    tracks = ablation_tracks(seeds)
    if reuse:
        restored = restore_shipped_runs(work, out, [name for track in tracks for name in track])
        if restored:
            log(f"reusing {len(restored)} trained runs from {out}: {', '.join(restored)}")
    if runs:
        tracks = tuple(track for track in (tuple(name for name in track if name in runs) for track in tracks) if track)
    _run_tracks(tracks, work, jobs)
    missing = assemble_ablation(work, out, seeds)
    if missing:
        log(f"not trained yet (left out of {out}): {', '.join(missing)}")
    return missing
