"""The measurements behind each claim: ``measure(config, runs, options) -> {table name: DataFrame}``.

Every table already carries its intervals and test results, so the report (``suite.analysis.claims.report``)
only reads, judges and formats. Seeds, prompts and settings come from the claim file; nothing here
depends on the clock except the timings, which are recorded as measured, with the device.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from suite.analysis.bench import processor_name
from suite.analysis.claims import data_dir, run_claim_sweeps
from suite.analysis.claims.attention import AttentionRecorder, bleed, colour_masks, downsample, token_positions
from suite.analysis.claims.claim_file import ClaimConfig, load_claim
from suite.analysis.claims.saturation import MEASURES, saturation_scores
from suite.analysis.costs import ProfileSettings, profile_presets
from suite.analysis.diff import diff_runs
from suite.core import stats
from suite.core.registry import Registry
from suite.metrics.networks import CLIP_MODELS, NetworkContext
from suite.model.denoise import KeepPredictions
from suite.model.stages import decode_latents
from suite.model.timing import Clock, time_alternately
from suite.run.config import parse_sweep, resolve
from suite.run.folder import read_run
from suite.run.options import RunOptions
from suite.run.runner import image_generators, load_pipelines, to_uint8
from suite.toy.score import detect, score_prompt_image
from suite.toy.world import IMAGE_SIZE, parse_caption, sample_batch


@dataclass(frozen=True)
class Experiment:
    measure: Callable[..., dict[str, pd.DataFrame]]
    description: str


EXPERIMENTS: Registry[Experiment] = Registry("claim experiment")


def experiment(name: str, description: str):
    def register(function):
        EXPERIMENTS.register(name, Experiment(function, description))
        return function

    return register


# -- shared helpers -----------------------------------------------------------------------------------


def grid_of(config: ClaimConfig, options, key: str = "grid"):
    """The sweep in ``settings[key]`` (sampled here with step hooks rather than by ``run_sweep``)."""

    data = {"name": f"{config.name}-{key}", **config.settings[key]}
    return resolve(parse_sweep(data, f"{config.name}: settings.{key}"), options.claims_dir, config.name)


def hooked_samples(resolved, options, make_hooks: Callable) -> Iterator[tuple[Any, Any, np.ndarray, list]]:
    """Sample every work item of ``resolved`` with fresh hooks from ``make_hooks(item, pipeline)``.

    Yields (pipeline, item, uint8 images, hooks); the images are those ``run_sweep`` would write.
    """

    run_options = RunOptions(options.out / "runs", options.device, progress=False)
    for pipeline, items in load_pipelines(resolved, run_options):
        for item in items:
            hooks = make_hooks(item, pipeline)
            indices = list(range(len(item.images)))
            prompts = [spec.prompt for spec in item.images]
            recorders = [hook for hook in hooks if hasattr(hook, "__enter__")]  # active around the whole sampling
            step_hooks = [hook for hook in hooks if not hasattr(hook, "__enter__")]  # called after every step
            with contextlib.ExitStack() as active:
                for recorder in recorders:
                    active.enter_context(recorder)
                images, _ = pipeline.generate(
                    prompts, item.stages, image_generators(item, indices), Clock(pipeline.options.device), step_hooks
                )
            yield pipeline, item, to_uint8(images), hooks


def interval_row(prefix: str, interval: stats.Interval, value: float) -> dict[str, float]:
    return {prefix: value, f"{prefix}_low": interval.low, f"{prefix}_high": interval.high}


def proportion_row(prefix: str, values: np.ndarray) -> dict[str, float]:
    values = values[~np.isnan(values)]
    interval = stats.wilson_interval(int(values.sum()), len(values))
    return interval_row(prefix, interval, float(values.mean()) if len(values) else math.nan) | {
        f"{prefix}_n": len(values)
    }


def mean_row(prefix: str, values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    return interval_row(prefix, stats.mean_interval(values), float(np.nanmean(values)))


def median_row(prefix: str, values) -> dict[str, float]:
    """Median with a (bias-shifted percentile) bootstrap interval: for timings, whose outliers are the machine's."""
    values = np.asarray(values, dtype=np.float64)
    interval = stats.bootstrap_interval(lambda chosen: float(np.median(values[chosen])), len(values), stats.RESAMPLES)
    return interval_row(prefix, interval, float(np.median(values)))


def ratio_of_medians(numerator: np.ndarray, denominator: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict:
    """Median(numerator) / median(denominator) with a percentile bootstrap interval, each side resampled on its own."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    rng = np.random.default_rng(seed)
    ratios = [
        np.median(rng.choice(numerator, len(numerator))) / np.median(rng.choice(denominator, len(denominator)))
        for _ in range(resamples)
    ]
    low, high = np.quantile(ratios, [0.025, 0.975])
    return {
        "ratio": float(np.median(numerator) / np.median(denominator)),
        "ratio_low": float(low),
        "ratio_high": float(high),
    }


def family_of(preset: str) -> str:
    return "latent" if "latent" in preset else "cascaded"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)

    return f"{processor_name()}, {torch.get_num_threads()} threads"


def paired_tests(images: pd.DataFrame, reference: tuple, candidates: list[tuple], keys: list[str]) -> pd.DataFrame:
    """Paired tests of each candidate grid point against ``reference`` on exact match and CLIP score, Holm-adjusted.

    ``images`` holds per-image rows with columns ``keys`` + prompt_index, seed_index, toy_correct, clip_score.
    """
    indexed = images.set_index([*keys, "prompt_index", "seed_index"]).sort_index()
    base = indexed.loc[reference]
    rows = []
    for candidate in candidates:
        other = indexed.loc[candidate].reindex(base.index)
        exact = stats.mcnemar_exact(base["toy_correct"], other["toy_correct"])
        clip = stats.paired_permutation(base["clip_score"], other["clip_score"])
        rows.append(
            dict(zip(keys, candidate))
            | {
                "exact_difference": exact.difference,
                "exact_difference_low": exact.low,
                "exact_difference_high": exact.high,
                "exact_p": exact.p_value,
                "clip_difference": clip.difference,
                "clip_difference_low": clip.low,
                "clip_difference_high": clip.high,
                "clip_p": clip.p_value,
                "n_pairs": exact.n_pairs,
            }
        )
    table = pd.DataFrame(rows)
    if len(table):
        adjusted = stats.holm([*table["exact_p"], *table["clip_p"]])
        table["exact_p_holm"], table["clip_p_holm"] = adjusted[: len(table)], adjusted[len(table) :]
    return table


def point_quality(run_path: Path, keys: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-image answers and per-point quality (exact match, CLIP score, FID, FLOPs, seconds) of an evaluated run."""

    run = read_run(run_path)
    images = run.images()
    images["family"] = images["preset"].map(family_of)
    metrics = run.metrics.copy()
    metrics["family"] = metrics["preset"].map(family_of)
    columns = [
        *keys,
        "n_images",
        "toy_correct",
        "toy_correct_ci95_low",
        "toy_correct_ci95_high",
        "clip_score_mean",
        "clip_score_ci95_low",
        "clip_score_ci95_high",
        "fid",
        "fid_ci95_low",
        "fid_ci95_high",
        "gflops_per_image",
        "seconds_per_image_median",
    ]
    return images, metrics[[column for column in columns if column in metrics.columns]]


# -- claim 1: values per step -------------------------------------------------------------------------


@experiment(
    "values", "values per step and FLOPs from configs (suite profile), and measured time per step on the toy models"
)
def measure_values(config: ClaimConfig, runs: dict, options) -> dict[str, pd.DataFrame]:

    settings = config.settings
    profile = profile_presets(settings["profile_presets"], ProfileSettings())
    stages = profile.stages[["preset", "stage", "kind", "values_per_step", "tflops_per_step", "image"]].copy()
    resolved = grid_of(config, options)
    steps: dict[tuple[str, str], list[float]] = {}
    repeats = int(settings.get("repeats", 3))

    loaded = list(load_pipelines(resolved, RunOptions(options.out / "runs", options.device, progress=False)))
    for _ in range(repeats):  # alternate the families so drifts in machine speed hit both alike
        for pipeline, items in loaded:
            for item in items:
                indices = list(range(len(item.images)))
                _, timings = pipeline.generate(
                    [spec.prompt for spec in item.images],
                    item.stages,
                    image_generators(item, indices),
                    Clock(pipeline.options.device),
                )
                for stage, timing in zip(pipeline.stages, timings):
                    key = (pipeline.preset, stage.name)
                    steps.setdefault(key, []).extend(timing.step_seconds)
    values = {(row.preset, row.stage): int(row.values_per_step) for row in stages.itertuples()}
    device = device_name(loaded[0][0].options.device)
    batch = len(loaded[0][1][0].images)
    timing_rows = [
        {
            "preset": preset,
            "stage": stage,
            "values_per_image": values[(preset, stage)],
            "batch": batch,
            "steps_timed": len(seconds),
            **median_row("ms_per_step", np.asarray(seconds) * 1000),
            "device": device,
        }
        for (preset, stage), seconds in steps.items()
    ]
    latent_key, pixel_key = (tuple(pair) for pair in settings["time_ratio"])  # pixel stage over latent stage
    ratio = ratio_of_medians(np.asarray(steps[pixel_key]), np.asarray(steps[latent_key]))
    ratio_row = {
        "numerator": "/".join(pixel_key),
        "denominator": "/".join(latent_key),
        "values_ratio": values[pixel_key] / values[latent_key],
        **ratio,
        "device": device,
    }
    return {"profile": stages, "step_times": pd.DataFrame(timing_rows), "time_ratio": pd.DataFrame([ratio_row])}


# -- claim 2: when structure forms ------------------------------------------------------------------

ATTRIBUTES = ("count", "colour", "shape", "position")
POSITION_CELL = 16  # px at 64 px: a 4 x 4 grid of positions


def attributes(image: np.ndarray) -> dict[str, tuple]:
    """What the toy score sees in an image: object count, colours, shapes, and positions on a 4 x 4 grid."""

    objects = detect(image)
    return {
        "count": (len(objects),),
        "colour": tuple(sorted(found.colour for found in objects)),
        "shape": tuple(sorted(found.shape for found in objects)),
        "position": tuple(
            sorted((int(x // POSITION_CELL), int(y // POSITION_CELL)) for x, y in (o.centre for o in objects))
        ),
    }


def decode_x0(stage, x0: torch.Tensor, size: int) -> np.ndarray:
    """A step's x0 prediction as uint8 images at ``size`` px: VAE-decoded (latent) or clamped and upsampled (pixel)."""

    with torch.no_grad():
        if stage.vae is not None:
            pixels, _ = decode_latents(stage.vae, x0.to(stage.vae.device, stage.vae.dtype))
        else:
            pixels = x0
        pixels = pixels.float().cpu().clamp(-1, 1)
        if pixels.shape[-1] != size:  # the cascade's 16 px base, nearest-upsampled: flat colours stay flat
            pixels = torch.nn.functional.interpolate(pixels, size=(size, size), mode="nearest")
    return to_uint8(pixels / 2 + 0.5)


def settled_step(agree: np.ndarray, share: float) -> float:
    """First step from which at least ``share`` of images hold their final value at every later step.

    ``agree`` is (images, steps) of 0/1.
    """
    fractions = agree.mean(axis=0)
    below = np.nonzero(fractions < share)[0]
    return float(below[-1] + 1) if len(below) else 0.0


@experiment("trajectories", "x0 prediction at every step, decoded and scored: when each attribute settles")
def measure_trajectories(config: ClaimConfig, runs: dict, options) -> dict[str, pd.DataFrame]:
    from PIL import Image

    share = float(config.settings.get("settled_share", 0.9))
    strip_steps = config.settings.get("strip_steps", [0, 2, 5, 10, 20, 49])
    clip = CLIP_MODELS.get("toy-clip")(NetworkContext())
    per_step, settled, strips = [], [], {}
    resolved = grid_of(config, options)
    for pipeline, item, _, hooks in hooked_samples(resolved, options, lambda item, pipeline: [KeepPredictions()]):
        stage = pipeline.stages[0]  # the stage that lays out the image: the latent loop, or the cascade's base
        predictions = hooks[0].predictions[stage.name]
        decoded = [decode_x0(stage, x0, IMAGE_SIZE) for x0 in predictions]  # steps x (N, 64, 64, 3)
        final = decoded[-1]
        steps, count = len(decoded), len(final)
        final_attributes = [attributes(image) for image in final]
        final_embedding = torch.nn.functional.normalize(
            clip.image_embeddings(torch.from_numpy(final).permute(0, 3, 1, 2)), dim=-1
        )
        agree = {name: np.zeros((count, steps)) for name in ATTRIBUTES}
        correct = np.zeros((count, steps))
        similarity = np.zeros((count, steps))
        prompts = [spec.prompt for spec in item.images]
        for step, images in enumerate(decoded):
            embedding = torch.nn.functional.normalize(
                clip.image_embeddings(torch.from_numpy(images).permute(0, 3, 1, 2)), dim=-1
            )
            similarity[:, step] = (embedding * final_embedding).sum(dim=-1).numpy()
            for index, image in enumerate(images):
                seen = attributes(image)
                for name in ATTRIBUTES:
                    agree[name][index, step] = seen[name] == final_attributes[index][name]
                correct[index, step] = score_prompt_image(image, prompts[index])["correct"]
        family, sampler = family_of(item.preset), item.sampler
        for step in range(steps):
            row = {"family": family, "sampler": sampler, "step": step, "steps": steps, "images": count}
            for name in ATTRIBUTES:
                row |= proportion_row(f"{name}_final", agree[name][:, step])
            row |= proportion_row("exact_match", correct[:, step])
            row |= mean_row("clip_to_final", similarity[:, step])
            per_step.append(row)
        for name in ATTRIBUTES:
            value = settled_step(agree[name], share)
            interval = stats.bootstrap_interval(lambda chosen, a=agree[name]: settled_step(a[chosen], share), count)
            settled.append(
                {"family": family, "sampler": sampler, "attribute": name, "steps": steps, "share": share}
                | interval_row("settled_step", interval, value)
            )
        strip = np.concatenate([decoded[min(step, steps - 1)][0] for step in strip_steps], axis=1)
        strips[f"{family}-{sampler}"] = strip
    data = data_folder(config, options)
    for name, strip in strips.items():
        data.mkdir(parents=True, exist_ok=True)
        Image.fromarray(strip).save(data / f"x0-strip-{name}.png")
    return {"per_step": pd.DataFrame(per_step), "settled": pd.DataFrame(settled)}


def data_folder(config: ClaimConfig, options) -> Path:

    return data_dir(options.out, config)


# -- claim 3: steps and samplers --------------------------------------------------------------------


@experiment("steps", "quality against steps per sampler, paired against a 1000-step DDPM reference and 20 vs 50")
def measure_steps(config: ClaimConfig, runs: dict, options) -> dict[str, pd.DataFrame]:
    keys = ["family", "sampler", "num_inference_steps"]
    images, points = [], []
    for run in runs.values():
        run_images, run_points = point_quality(run, keys)
        images.append(run_images)
        points.append(run_points)
    images, points = pd.concat(images), pd.concat(points).sort_values(keys).reset_index(drop=True)
    reference = config.settings["reference"]
    short, long = config.settings.get("compare_steps", [20, 50])
    versus_reference, short_long = [], []
    for family, rows in points.groupby("family", sort=True):
        candidates = [
            (family, row.sampler, row.num_inference_steps)
            for row in rows.itertuples()
            if (row.sampler, row.num_inference_steps) != (reference["sampler"], reference["steps"])
        ]
        versus_reference.append(
            paired_tests(images, (family, reference["sampler"], reference["steps"]), candidates, keys)
        )
        for sampler in sorted(rows["sampler"].unique()):
            available = set(rows.loc[rows["sampler"] == sampler, "num_inference_steps"])
            if {short, long} <= available:
                table = paired_tests(images, (family, sampler, long), [(family, sampler, short)], keys)
                short_long.append(table.assign(versus=f"{sampler} {long} steps"))
    return {
        "points": points,
        "versus_reference": pd.concat(versus_reference, ignore_index=True),
        "short_vs_long": pd.concat(short_long, ignore_index=True),
    }


# -- claim 4: guidance --------------------------------------------------------------------------------


@experiment("guidance", "prompt following and oversaturation against the guidance scale, paired per image")
def measure_guidance(config: ClaimConfig, runs: dict, options) -> dict[str, pd.DataFrame]:
    from PIL import Image

    keys = ["family", "guidance_scale"]
    images, points = [], []
    for run in runs.values():  # the guidance scales, and guidance 0 (the unconditional model) as a baseline
        run_images, run_points = point_quality(run, [*keys, "preset"])
        images.append(run_images.assign(image_file=[str(run / path) for path in run_images["image_path"]]))
        points.append(run_points)
    images, points = pd.concat(images, ignore_index=True), pd.concat(points, ignore_index=True)
    saturation = pd.DataFrame(
        [saturation_scores(np.asarray(Image.open(path).convert("RGB"))) for path in images["image_file"]],
        index=images.index,
    )
    images = pd.concat([images, saturation], axis=1)
    for measure_name in MEASURES:
        summary = images.groupby(keys)[measure_name].apply(
            lambda values, name=measure_name: pd.Series(mean_row(name, values.to_numpy()))
        )
        points = points.merge(summary.unstack().reset_index(), on=keys, how="left")
    world, _ = sample_batch(seed=0, count=256)
    world_level = pd.DataFrame([saturation_scores(image) for image in world]).agg(["mean"]).T.reset_index()
    world_level.columns = ["measure", "toy_world_mean"]
    reference = float(config.settings.get("reference_guidance", 7.5))
    indexed = images.set_index([*keys, "prompt_index", "seed_index"]).sort_index()
    tests = []

    def prompt_following(name: str, base: pd.DataFrame, other: pd.DataFrame) -> dict[str, float]:
        other = other.reindex(base.index)
        exact = stats.mcnemar_exact(base["toy_correct"], other["toy_correct"])
        clip = stats.paired_permutation(base["clip_score"], other["clip_score"])
        return {
            f"exact_vs_{name}": exact.difference,
            f"exact_vs_{name}_low": exact.low,
            f"exact_vs_{name}_high": exact.high,
            f"exact_vs_{name}_p": exact.p_value,
            f"clip_vs_{name}": clip.difference,
            f"clip_vs_{name}_low": clip.low,
            f"clip_vs_{name}_high": clip.high,
            f"clip_vs_{name}_p": clip.p_value,
        }

    for family, rows in points.groupby("family", sort=True):
        scales = rows[rows["guidance_scale"] >= 1]  # guidance 0 is the unconditional baseline, not a candidate
        best = scales.sort_values(["toy_correct", "clip_score_mean"], ascending=False).iloc[0]["guidance_scale"]
        base_best = indexed.loc[(family, best)]
        base_reference = indexed.loc[(family, reference)]
        unconditional = indexed.loc[(family, 0.0)] if (rows["guidance_scale"] == 0).any() else None
        for guidance in sorted(rows["guidance_scale"]):
            other = indexed.loc[(family, guidance)]
            row = {"family": family, "guidance_scale": guidance, "best_guidance": best}
            row |= prompt_following("best", base_best, other)
            if unconditional is not None and guidance == 1.0:
                row |= prompt_following("unconditional", unconditional, other)
            for measure_name in MEASURES:
                test = stats.paired_permutation(
                    base_reference[measure_name], other.reindex(base_reference.index)[measure_name]
                )
                row |= {
                    f"{measure_name}_vs_reference": test.difference,
                    f"{measure_name}_vs_reference_low": test.low,
                    f"{measure_name}_vs_reference_high": test.high,
                    f"{measure_name}_vs_reference_p": test.p_value,
                }
            tests.append(row)
    tests = pd.DataFrame(tests)
    p_columns = [column for column in tests.columns if column.endswith("_p")]
    for _, rows in tests.groupby("family"):  # Holm across every test of a family (untested cells stay NaN)
        values = rows[p_columns].to_numpy(dtype=float).ravel()
        adjusted = np.full(values.shape, np.nan)
        adjusted[~np.isnan(values)] = stats.holm(values[~np.isnan(values)])
        adjusted = adjusted.reshape(len(rows), len(p_columns))
        for position, column in enumerate(p_columns):
            tests.loc[rows.index, f"{column}_holm"] = adjusted[:, position]
    examples = images[images["prompt_index"] == int(config.settings.get("example_prompt", 0))]
    data = data_folder(config, options)
    data.mkdir(parents=True, exist_ok=True)
    for family, rows in examples.groupby("family"):
        strip = np.concatenate(
            [
                np.asarray(Image.open(row.image_file).convert("RGB"))
                for row in rows.sort_values("guidance_scale").itertuples()
            ],
            axis=1,
        )
        Image.fromarray(strip).save(data / f"guidance-strip-{family}.png")
    return {"points": points, "tests": tests, "world_level": world_level}


# -- claim 5: same seed, same image -----------------------------------------------------------------


def _suite_sweep(sweep_file: Path, out: Path, device: str, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "suite",
        "sweep",
        str(sweep_file),
        "--out",
        str(out),
        "--quiet",
        "--device",
        device,
    ]
    return subprocess.Popen([*command, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


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


@experiment(
    "determinism", "the same sweep rerun, sharded, killed and resumed, and at another batch size: sha256 compared"
)
def measure_determinism(config: ClaimConfig, runs: dict, options) -> dict[str, pd.DataFrame]:
    import shutil

    import yaml

    work = options.out / "runs" / config.name
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

    here = device_name(torch.device("cuda" if device == "cuda" else "cpu"))
    variants = (
        ("rerun", "the same command in a new process", "again"),
        ("shards", "two processes at once, --shard 0/2 and 1/2, on one folder", "sharded"),
        ("resume", "killed (SIGKILL) after its first item, then the same command again", "resumed"),
        ("batch size", f"batch {sweep['batch_size']} vs {config.settings['other_batch_size']}", "batch"),
    )
    rows = [_diff_summary(name, how, diff_runs(work / "first", work / folder), here) for name, how, folder in variants]
    for entry in config.settings.get("device_diffs", []):  # measured elsewhere with `suite diff`, committed
        path = Path(entry["file"])
        if path.is_file():
            rows.append(_diff_summary(entry["comparison"], entry["how"], pd.read_csv(path), entry["device"]))
    return {"comparisons": pd.DataFrame(rows)}


# -- claim 6: cross-attention -----------------------------------------------------------------------


@experiment(
    "attention", "cross-attention maps per UNet resolution; colour-word attention on the wrong object vs binding"
)
def measure_attention(config: ClaimConfig, runs: dict, options) -> dict[str, pd.DataFrame]:
    from PIL import Image
    from scipy import stats as scipy_stats

    def recorders(item, pipeline):
        return [AttentionRecorder(pipeline.stages[0].unet, len(item.images))]

    per_image, example_maps = [], []
    data = data_folder(config, options)
    data.mkdir(parents=True, exist_ok=True)
    example_prompt = config.settings.get("example_prompt")
    for pipeline, item, images, (recorder,) in hooked_samples(grid_of(config, options), options, recorders):
        family = family_of(item.preset)
        stage = pipeline.stages[0]
        encoder = pipeline.text_encoders[stage.text_encoder]
        maps, mass = recorder.maps(), recorder.text_mass()
        for index, (spec, image) in enumerate(zip(item.images, images)):
            caption = parse_caption(spec.prompt)
            if caption is None or caption.relation is None or caption.things[0].colour == caption.things[1].colour:
                continue
            colours = [thing.colour for thing in caption.things]
            positions = token_positions(encoder.tokenizer, spec.prompt, colours, encoder.lowercase)
            masks = colour_masks(image, colours)
            binding = score_prompt_image(image, spec.prompt)["binding"]
            for side, side_maps in maps.items():
                coverage = {colour: downsample(masks[colour], side) for colour in colours}
                bleeds, chances = [], []
                for own, other in (colours, colours[::-1]):
                    attention = side_maps[index][..., positions[own]].sum(axis=-1)  # a word's pieces
                    bleeds.append(bleed(attention, coverage[own], coverage[other]))
                    chances.append(bleed(np.ones_like(attention), coverage[own], coverage[other]))
                per_image.append(
                    {
                        "family": family,
                        "side": side,
                        "prompt_index": spec.prompt_index,
                        "seed_index": spec.seed_index,
                        "bleed": float(np.mean(bleeds)),
                        "chance": float(np.mean(chances)),
                        "text_mass": float(mass[side][index].mean()),
                        "binding": binding,
                    }
                )
            if spec.prompt == example_prompt and spec.seed_index == 0:
                Image.fromarray(image).save(data / f"attention-example-{family}.png")
                for side, side_maps in maps.items():
                    for colour in colours:
                        for (y, x), value in np.ndenumerate(side_maps[index][..., positions[colour]].sum(axis=-1)):
                            example_maps.append(
                                {"family": family, "side": side, "word": colour, "y": y, "x": x, "attention": value}
                            )
    per_image = pd.DataFrame(per_image)
    summary = []
    for (family, side), rows in per_image.groupby(["family", "side"], sort=True):
        rows = rows.dropna(subset=["bleed", "chance"])
        versus_chance = stats.paired_permutation(rows["chance"], rows["bleed"])
        correct, wrong = rows.loc[rows["binding"] == 1, "bleed"], rows.loc[rows["binding"] == 0, "bleed"]
        row = {"family": family, "side": side, "images": len(rows)}
        row |= mean_row("bleed", rows["bleed"].to_numpy()) | mean_row("chance", rows["chance"].to_numpy())
        row |= {
            "bleed_minus_chance": versus_chance.difference,
            "bleed_minus_chance_low": versus_chance.low,
            "bleed_minus_chance_high": versus_chance.high,
            "bleed_minus_chance_p": versus_chance.p_value,
            "text_mass": float(rows["text_mass"].mean()),
            "binding_errors": len(wrong),
            **proportion_row("binding", rows["binding"].to_numpy(dtype=float)),
        }
        if len(correct) >= 2 and len(wrong) >= 2:
            test = scipy_stats.permutation_test(
                (wrong.to_numpy(), correct.to_numpy()),
                lambda a, b, axis: np.mean(a, axis=axis) - np.mean(b, axis=axis),
                n_resamples=stats.PERMUTATIONS,
                vectorized=True,
                random_state=np.random.default_rng(stats.SEED),
            )
            rng = np.random.default_rng(stats.SEED)
            resampled = [
                rng.choice(wrong.to_numpy(), len(wrong)).mean() - rng.choice(correct.to_numpy(), len(correct)).mean()
                for _ in range(stats.RESAMPLES)
            ]
            low, high = np.quantile(resampled, [0.025, 0.975])
            row |= {
                "bleed_errors_minus_correct": float(wrong.mean() - correct.mean()),
                "bleed_errors_minus_correct_low": float(low),
                "bleed_errors_minus_correct_high": float(high),
                "bleed_errors_minus_correct_p": float(test.pvalue),
            }
        summary.append(row)
    return {
        "per_image": per_image,
        "summary": pd.DataFrame(summary),
        "example_maps": pd.DataFrame(example_maps, columns=["family", "side", "word", "y", "x", "attention"]),
    }


# -- claim 7: cost at matched quality ---------------------------------------------------------------


def matched_points(points: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    """The weaker family's best point, and per family the cheapest point whose exact-match interval overlaps it."""
    best = points.loc[points.groupby("family")["toy_correct"].idxmax()]
    target = best.sort_values("toy_correct").iloc[0]

    def overlaps(row) -> bool:
        return (
            row.toy_correct_ci95_low <= target.toy_correct_ci95_high
            and row.toy_correct_ci95_high >= target.toy_correct_ci95_low
        )

    chosen = {}
    for family, rows in points.groupby("family"):
        matching = rows[rows.apply(overlaps, axis=1)]
        chosen[family] = matching.sort_values("seconds_per_image_median").iloc[0]
    return target, chosen["latent"], chosen["cascaded"]


@experiment(
    "cost", "seconds and FLOPs per image, latent vs cascaded, at matched quality; real architectures from configs"
)
def measure_cost(config: ClaimConfig, runs: dict, options) -> dict[str, pd.DataFrame]:

    settings = config.settings
    source = load_claim(options.claims_dir / f"{settings['quality_from']}.yaml")
    keys = ["family", "preset", "sampler", "num_inference_steps", "guidance_scale"]
    points = pd.concat(
        [point_quality(run, keys)[1] for run in run_claim_sweeps(source, options).values()], ignore_index=True
    )
    target, latent, cascaded = matched_points(points)

    batch, repeats = int(settings.get("timing_batch", 16)), int(settings.get("timing_repeats", 5))
    loaded = []
    for point in (latent, cascaded):
        sweep_data = next(data for data in source.sweeps.values() if point.sampler in data["samplers"])
        data = {
            **sweep_data,
            "name": f"{config.name}-{point.family}",
            "presets": [point.preset],
            "samplers": [point.sampler],
            "steps": [int(point.num_inference_steps)],
            "guidance": [float(point.guidance_scale)],
            "batch_size": batch,
            "prompts": {**sweep_data["prompts"], "limit": batch},
            "metrics": [],
            "stages": {key: value for key, value in sweep_data.get("stages", {}).items() if key == point.preset},
        }
        data.pop("evaluation", None)
        resolved = resolve(parse_sweep(data, config.name), options.claims_dir, config.name)
        loaded += list(load_pipelines(resolved, RunOptions(options.out / "runs", options.device, progress=False)))
    timed = time_alternately(loaded, batch, repeats)
    seconds = {family_of(preset): values for preset, values in timed.items()}
    device = device_name(loaded[0][0].options.device)
    matched = [
        {
            "role": point.family,
            **{key: point[key] for key in keys},
            "toy_correct": point.toy_correct,
            "toy_correct_low": point.toy_correct_ci95_low,
            "toy_correct_high": point.toy_correct_ci95_high,
            "gflops_per_image": point.gflops_per_image,
            **median_row("seconds_per_image", seconds[point.family]),
            "timing_repeats": repeats,
            "timing_batch": batch,
            "device": device,
        }
        for point in (latent, cascaded)
    ]
    ratio = ratio_of_medians(np.asarray(seconds["cascaded"]), np.asarray(seconds["latent"]))
    ratios = [
        {
            "measure": "seconds per image, toy (measured)",
            **ratio,
            "note": f"matched at exact match {target.toy_correct:.3f} ({target.family} {target.sampler} {int(target.num_inference_steps)} steps)",
        },
        {
            "measure": "FLOPs per image, toy (counted)",
            "ratio": cascaded.gflops_per_image / latent.gflops_per_image,
            "ratio_low": cascaded.gflops_per_image / latent.gflops_per_image,
            "ratio_high": cascaded.gflops_per_image / latent.gflops_per_image,
            "note": "exact count: no interval",
        },
    ]
    profile_settings = ProfileSettings(**settings.get("profile_settings", {}))
    real = profile_presets(settings["profile_presets"], profile_settings).pipelines
    base_row, other_row = real.iloc[0], real.iloc[1]
    ratios.append(
        {
            "measure": f"FLOPs per image, {other_row.preset} / {base_row.preset} (counted from configs)",
            "ratio": other_row.tflops_per_image / base_row.tflops_per_image,
            "ratio_low": other_row.tflops_per_image / base_row.tflops_per_image,
            "ratio_high": other_row.tflops_per_image / base_row.tflops_per_image,
            "note": f"{profile_settings.sampler} {profile_settings.num_inference_steps} steps, guidance {profile_settings.guidance_scale:g}; "
            f"{base_row.image} vs {other_row.image}",
        }
    )
    real_table = real[["preset", "image", "parameters", "tflops_per_image"]]
    return {"points": points, "matched": pd.DataFrame(matched), "ratios": pd.DataFrame(ratios), "real": real_table}


# -- claim 8: time per step on a GPU ----------------------------------------------------------------


@experiment("step-time", "ms per denoising step at 512 px from `suite bench` tables, where a GPU measured them")
def measure_step_time(config: ClaimConfig, runs: dict, options) -> dict[str, pd.DataFrame]:
    settings = config.settings
    rows = []
    for path in settings.get("bench_tables", []):
        path = Path(path)
        if not path.is_file():
            continue
        table = pd.read_csv(path)
        wanted = table[(table["preset"] == settings["preset"]) & (table["stage"] == settings["stage"])]
        rows.extend(
            {
                "source": path.as_posix(),
                "device_name": row.device_name,
                "dtype": row.dtype,
                "batch_size": row.batch_size,
                "compile": row.compile,
                "step_ms_median": row.step_ms_median,
                "step_ms_q1": row.step_ms_q1,
                "step_ms_q3": row.step_ms_q3,
                "consumer_gpu": any(marker in row.device_name for marker in settings.get("consumer_markers", [])),
            }
            for row in wanted.itertuples()
        )
    columns = [
        "source",
        "device_name",
        "dtype",
        "batch_size",
        "compile",
        "step_ms_median",
        "step_ms_q1",
        "step_ms_q3",
        "consumer_gpu",
    ]
    return {"bench": pd.DataFrame(rows, columns=columns)}
